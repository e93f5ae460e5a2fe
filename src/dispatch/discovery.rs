//! What a provider's own model list says about the catalog: catalog models
//! it no longer lists, free models it lists that the catalog lacks, and an
//! override file that adopts both (`check --probe --write-overrides FILE`).
//!
//! `Engine::discover` reads the list (upstream IO); everything else here is
//! pure, so the comparison and the file it writes are tested without either.

use std::fmt::Write as _;

use super::Engine;
use crate::config::{Catalog, Provider};
use crate::router;
use crate::upstream::{self, Listed};

/// How many new models one provider may add to an override file: a
/// listing of hundreds is a catalog to review, not to adopt blindly.
const MAX_NEW_PER_PROVIDER: usize = 25;

/// The context written for a listed model whose listing gives none: the
/// catalog's safe low reading.
const DEFAULT_CONTEXT: u32 = 32_768;

/// One provider's list against the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Drift {
    /// Provider id.
    pub(crate) provider: String,
    /// How many models the provider listed.
    pub(crate) listed: usize,
    /// Enabled catalog models the list does not name.
    pub(crate) unlisted: Vec<String>,
    /// Free models it lists that the catalog lacks (gone entries aside).
    pub(crate) new_free: Vec<Listed>,
    /// Models it lists that the catalog keeps off as gone.
    pub(crate) listed_but_retired: Vec<String>,
}

impl Drift {
    /// Whether the list and the catalog agree.
    pub(crate) fn is_clean(&self) -> bool {
        self.unlisted.is_empty() && self.new_free.is_empty()
    }
}

/// Compares a provider's list with the catalog. A listed model counts as
/// free when its price is zero or its id says `:free`; when the list gives
/// no prices at all (most free-tier providers), everything listed is.
pub(crate) fn compare(catalog: &Catalog, p: &Provider, listed: &[Listed]) -> Drift {
    let priced = listed.iter().any(|l| l.free.is_some());
    let retired_ids: Vec<&str> = catalog
        .retired
        .iter()
        .filter_map(|(id, _)| id.strip_prefix(&format!("{}/", p.id)))
        .collect();
    let unlisted = p
        .models
        .iter()
        .filter(|m| !listed.iter().any(|l| l.id == m.id))
        .map(|m| m.id.clone())
        .collect();
    let mut new_free = Vec::new();
    let mut listed_but_retired = Vec::new();
    for l in listed {
        if p.models.iter().any(|m| m.id == l.id) {
            continue;
        }
        if retired_ids.contains(&l.id.as_str()) {
            listed_but_retired.push(l.id.clone());
        } else if l.free == Some(true) || (!priced && l.free.is_none()) {
            new_free.push(l.clone());
        }
    }
    new_free.sort_by(|a, b| a.id.cmp(&b.id));
    Drift {
        provider: p.id.clone(),
        listed: listed.len(),
        unlisted,
        new_free,
        listed_but_retired,
    }
}

/// The report lines for one provider: at most a handful of ids each.
pub(crate) fn report(d: &Drift) -> String {
    let names = |ids: &[String]| {
        let shown: Vec<&str> = ids.iter().take(8).map(String::as_str).collect();
        match ids.len().saturating_sub(8) {
            0 => shown.join(", "),
            more => format!("{} and {more} more", shown.join(", ")),
        }
    };
    let mut out = format!("  {}: {} listed", d.provider, d.listed);
    if d.is_clean() {
        out.push_str(", the catalog agrees");
    }
    out.push('\n');
    if !d.unlisted.is_empty() {
        let _ = writeln!(
            out,
            "    in the catalog, not listed: {}",
            names(&d.unlisted)
        );
    }
    if !d.new_free.is_empty() {
        let ids: Vec<String> = d.new_free.iter().map(|l| l.id.clone()).collect();
        let _ = writeln!(out, "    listed free, not in the catalog: {}", names(&ids));
    }
    if !d.listed_but_retired.is_empty() {
        let _ = writeln!(
            out,
            "    listed, but off in the catalog as gone: {}",
            names(&d.listed_but_retired)
        );
    }
    out
}

/// An override file adopting what the lists say: unlisted models turned
/// off, new free models added with conservative guessed limits. Valid
/// input for `check` as it stands (see the tests).
pub(crate) fn overrides(drifts: &[Drift], date: &str) -> String {
    let mut out = format!(
        "# Written by `freepool-mcp check --probe --write-overrides` on {date}, from\n\
         # each provider's own model list. Review it, then merge what you keep into\n\
         # your providers.toml. New models get a guessed, conservative limit and\n\
         # tier 3: set the provider's published figures when you know them.\n"
    );
    for d in drifts.iter().filter(|d| !d.is_clean()) {
        for id in &d.unlisted {
            let _ = write!(
                out,
                "\n[providers.{}.models.{}]\nenabled = false  # not in {}'s model list on {date}\n",
                d.provider,
                quoted(id),
                d.provider
            );
        }
        for l in d.new_free.iter().take(MAX_NEW_PER_PROVIDER) {
            let _ = write!(
                out,
                "\n[providers.{}.models.{}]\n# listed free by {} on {date}\ncontext = {}\ntier = 3\nlimits = {{ rpm = 5, rpd = 100 }}\n",
                d.provider,
                quoted(&l.id),
                d.provider,
                l.context.filter(|c| *c > 0).unwrap_or(DEFAULT_CONTEXT)
            );
        }
        let left = d.new_free.len().saturating_sub(MAX_NEW_PER_PROVIDER);
        if left > 0 {
            let _ = writeln!(
                out,
                "\n# {} lists {left} more free models; see `check --probe`.",
                d.provider
            );
        }
    }
    out
}

/// A TOML basic string.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Engine {
    /// Reads one usable provider's model list (its first key, or none).
    pub(crate) async fn discover(&self, p: &Provider) -> Result<Vec<Listed>, String> {
        if !router::is_usable(p) {
            return Err("not usable (no key or setting)".into());
        }
        let key = p.keys.iter().find_map(|k| k.key.as_ref());
        upstream::list_models(
            &p.models_url,
            key,
            &p.headers,
            p.connect_timeout,
            p.first_byte_timeout.min(std::time::Duration::from_secs(30)),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(id: &str, free: Option<bool>) -> Listed {
        Listed {
            id: id.into(),
            free,
            context: None,
        }
    }

    #[test]
    fn the_list_and_the_catalog_are_compared_both_ways() {
        let cat = crate::config::load_from(None, &|_| None);
        let groq = cat.provider("groq").unwrap();
        let mut list: Vec<Listed> = groq
            .models
            .iter()
            .skip(1)
            .map(|m| listed(&m.id, None))
            .collect();
        list.push(listed("brand/new-model", None));
        list.push(listed("llama-3.3-70b-versatile", None));
        let d = compare(&cat, groq, &list);
        assert_eq!(d.unlisted, [groq.models[0].id.clone()]);
        assert_eq!(d.new_free, [listed("brand/new-model", None)]);
        assert_eq!(d.listed_but_retired, ["llama-3.3-70b-versatile"]);
        let text = report(&d);
        assert!(text.contains("in the catalog, not listed"), "{text}");
        assert!(text.contains("listed free, not in the catalog: brand/new-model"));
    }

    #[test]
    fn a_priced_list_adds_only_free_models() {
        let cat = crate::config::load_from(None, &|_| None);
        let or = cat.provider("openrouter").unwrap();
        let list = [
            listed("paid/model", Some(false)),
            listed("free/model:free", Some(true)),
            listed("silent/model", None),
        ];
        let d = compare(&cat, or, &list);
        let ids: Vec<&str> = d.new_free.iter().map(|l| l.id.as_str()).collect();
        assert_eq!(ids, ["free/model:free"]);
    }

    #[test]
    fn the_override_file_quotes_ids_and_says_why() {
        let d = Drift {
            provider: "groq".into(),
            listed: 3,
            unlisted: vec!["old\"one".into()],
            new_free: vec![Listed {
                id: "new/one".into(),
                free: None,
                context: Some(131_072),
            }],
            listed_but_retired: Vec::new(),
        };
        let text = overrides(&[d], "2026-12-02");
        let doc: toml::Table = toml::from_str(&text).expect("valid TOML");
        let models = &doc["providers"]["groq"]["models"];
        assert_eq!(models["old\"one"]["enabled"].as_bool(), Some(false));
        assert_eq!(models["new/one"]["context"].as_integer(), Some(131_072));
        assert!(text.contains("not in groq's model list on 2026-12-02"));
    }
}
