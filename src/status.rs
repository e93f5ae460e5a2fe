//! What is left: the ledger's truth rendered for people (`status`, `models`) and for Claude (`list_models`, `claude_budget`).
//!
//! Pure rendering over a `Catalog`, a `UsageSnapshot` and a budget
//! `Assessment`; `StatusReport` is the same data as JSON for scripts.

use serde::Serialize;
use std::fmt::Write as _;

use crate::budget::{self, Assessment};
use crate::config::{Axis, Catalog, Limit, Model, Provider, Window};
use crate::quota::{
    self, Blocked, Counts, Headroom, Millis, Need, UsageSnapshot, next_reset, widx,
};
use crate::router::{self, ANON};

fn compact(n: u64) -> String {
    if n >= 10_000_000 {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000_000 {
        format!("{:.1}M", n as f64 / 1_000_000.0)
    } else if n >= 10_000 {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

fn key_fps(p: &Provider) -> Vec<String> {
    let fps: Vec<String> = p
        .usable_keys()
        .map(super::config::ApiKey::fingerprint)
        .collect();
    if fps.is_empty() && p.is_keyless() {
        vec![ANON.to_owned()]
    } else {
        fps
    }
}

fn until(t: Millis, now: Millis) -> String {
    format!(
        "{} ({})",
        quota::iso(t / 1000),
        quota::relative((t - now) / 1000)
    )
}

/// The tightest request rate of a model, its pools included: `30/min`, `200/hour`.
fn rate_of(p: &Provider, m: &crate::config::Model) -> Option<String> {
    let pools = p
        .pools
        .iter()
        .filter(|pl| pl.covers(&m.id))
        .flat_map(|pl| pl.limits.iter());
    m.limits
        .iter()
        .chain(pools)
        .filter(|l| l.axis == Axis::Requests && l.window < Window::Day)
        .min_by_key(|l| (l.window, l.max))
        .map(|l| format!("{}/{}", l.max, l.window.label()))
}

/// The `list_models` text: usable models, compact, one line each.
pub(crate) fn models_text(catalog: &Catalog, snap: &UsageSnapshot) -> String {
    let mut lines = Vec::new();
    let mut providers = 0;
    let mut unusable: Vec<String> = Vec::new();
    let mut benched: Vec<String> = Vec::new();
    for p in &catalog.providers {
        if !router::is_usable(p) {
            let why = if p.missing_vars.is_empty() {
                let vars: Vec<String> = p.keys.iter().map(|k| k.source.to_string()).collect();
                format!("no key ({})", vars.join(" or "))
            } else {
                format!("set {}", p.missing_vars.join(", "))
            };
            unusable.push(format!("{} {why}", p.id));
            continue;
        }
        let mut any = false;
        for m in &p.models {
            let mut best: Option<Headroom> = None;
            let mut block = None;
            for fp in key_fps(p) {
                match snap.check(p, m, &fp, Need::flat(1)) {
                    Ok(h) => {
                        best = Some(match best {
                            Some(b) if b.fraction >= h.fraction => b,
                            _ => h,
                        });
                    }
                    Err(b) => block = Some(b),
                }
            }
            let Some(h) = best else {
                if let Some(b) = block {
                    let back = b
                        .frees_at()
                        .map(|t| format!(" until {}", until(t, snap.now)))
                        .unwrap_or_default();
                    let why = match &b {
                        Blocked::Benched { reason, .. } => reason.clone(),
                        Blocked::Gone { since, words } => {
                            format!("gone upstream since {}: \"{words}\"", quota::day(*since))
                        }
                        Blocked::Full { limit, .. } => format!("{limit} used up"),
                        Blocked::Busy { .. } => "busy".into(),
                    };
                    benched.push(format!("{}/{} ({why}{back})", p.id, m.id));
                }
                continue;
            };
            any = true;
            lines.push(model_line(p, m, &h, snap));
        }
        if any {
            providers += 1;
        }
    }
    let ceiling = router::context_ceiling(catalog, snap, catalog.settings.output_reserve);
    let mut out = format!(
        "{} models usable now on {providers} providers.",
        lines.len()
    );
    match ceiling {
        Some((tokens, id)) => {
            let _ = write!(
                out,
                " Auto context ceiling: {} tokens (~{} characters), on {id}.",
                compact(tokens),
                compact(tokens * 3)
            );
        }
        None => out.push_str(" Nothing can be delegated until a provider key is set."),
    }
    out.push_str(" Tier 1 is the strongest, 4 the smallest. Pass an id or a [family] as delegate's model, or omit it.\n");
    for l in lines {
        out.push('\n');
        out.push_str(&l);
    }
    if !benched.is_empty() {
        let _ = write!(out, "\n\nnot available now: {}", benched.join("; "));
    }
    if !unusable.is_empty() {
        let _ = write!(out, "\n\nnot configured: {}", unusable.join("; "));
    }
    if !catalog.retired.is_empty() {
        let _ = write!(
            out,
            "\n\n{} catalog entries are off as gone upstream (`freepool-mcp models` says why).",
            catalog.retired.len()
        );
    }
    out
}

/// One usable model, as `list_models` shows it.
fn model_line(p: &Provider, m: &Model, h: &Headroom, snap: &UsageSnapshot) -> String {
    let mut left = match (h.requests_left_today, h.tokens_left_today) {
        (Some(req), Some(tok)) => {
            format!("{} req, {} tok left today", compact(req), compact(tok))
        }
        (Some(req), None) => format!("{} req left today", compact(req)),
        (None, Some(tok)) => format!("{} tok left today", compact(tok)),
        (None, None) => "no daily cap".into(),
    };
    if let Some(rate) = rate_of(p, m) {
        let _ = write!(left, " ({rate})");
    }
    let mut notes = Vec::new();
    if p.is_keyless() && p.usable_keys().next().is_none() {
        notes.push("keyless, anonymous");
    }
    match p.trains_on_prompts {
        Some(true) => notes.push("may train on prompts"),
        None => notes.push("training not stated"),
        Some(false) => {}
    }
    if m.vision {
        notes.push("vision");
    }
    let judged = snap.judged(&p.id, &m.id).map(|(share, n)| {
        format!(
            "{:.0}% of {:.0} answers judged good",
            share * 100.0,
            n.max(1.0)
        )
    });
    if let Some(j) = &judged {
        notes.push(j);
    }
    let family = if m.family == m.id.to_lowercase() {
        String::new()
    } else {
        format!(" [{}]", m.family)
    };
    let notes = if notes.is_empty() {
        String::new()
    } else {
        format!(" · {}", notes.join(", "))
    };
    format!(
        "{}/{}{family} · ctx {} · tier {} · {left}{notes}",
        p.id,
        m.id,
        compact(u64::from(m.context)),
        m.tier
    )
}

/// How many models could take a small request right now.
pub(crate) fn ready_count(catalog: &Catalog, snap: &UsageSnapshot) -> usize {
    catalog
        .models()
        .filter(|(p, m)| {
            router::is_usable(p)
                && key_fps(p)
                    .iter()
                    .any(|fp| snap.check(p, m, fp, Need::flat(1)).is_ok())
        })
        .count()
}

/// The `claude_budget` text.
pub(crate) fn budget_text(b: &Assessment, now: i64) -> String {
    let mut out = format!(
        "mode: {} · delegation threshold {} (tasks scoring {}+ stay on Claude)",
        b.mode.as_str(),
        b.threshold,
        b.threshold
    );
    for (name, w) in [("weekly", b.weekly), ("5-hour", b.five_hour)] {
        match w {
            Some(w) => {
                let reset = w
                    .resets_at
                    .map(|r| format!(", resets {} ({})", quota::iso(r), quota::relative(r - now)))
                    .unwrap_or_default();
                let _ = write!(
                    out,
                    "\n{name}: {} used{reset}",
                    budget::percent(w.used_percentage)
                );
            }
            None => {
                let _ = write!(out, "\n{name}: unknown");
            }
        }
    }
    let source = match &b.source {
        budget::Source::Statusline { age_secs } => format!("statusline capture, {} old", quota::relative(*age_secs).trim_start_matches("in ")),
        budget::Source::Pinned { by } => format!("pinned by {by} (captured figures, if any, are shown but do not decide the mode)"),
        budget::Source::None => "none (no statusline capture yet; run `freepool-mcp init` to wire it, or pin a mode for headless runs)".into(),
    };
    let _ = write!(out, "\nsource: {source}\nadvice: {}", b.advice);
    out
}

/// One limit's use, for `status`.
#[derive(Debug, Serialize)]
pub(crate) struct LimitUse {
    /// `rpd`, `tpm`, ...
    pub(crate) limit: &'static str,
    /// Used in the current window (leases included).
    pub(crate) used: u64,
    /// The limit.
    pub(crate) max: u64,
    /// Next fixed reset, ISO; `null` for rolling windows.
    pub(crate) resets_at: Option<String>,
}

/// A model's or pool's use.
#[derive(Debug, Serialize)]
pub(crate) struct ScopeUse {
    /// `provider/model` or `provider pool NAME`.
    pub(crate) scope: String,
    /// Key fingerprint (or `anon`, or `shared` when keys share quota).
    pub(crate) key: String,
    /// Each limit.
    pub(crate) limits: Vec<LimitUse>,
}

/// A bench in force, for `status`.
#[derive(Debug, Serialize)]
pub(crate) struct BenchView {
    /// What it covers.
    pub(crate) scope: String,
    /// Why.
    pub(crate) reason: String,
    /// Stated by the provider, or our guess.
    pub(crate) source: &'static str,
    /// Until when, RFC 3339.
    pub(crate) until: String,
    /// Seconds from now until then.
    pub(crate) seconds_left: i64,
}

/// One key a provider serves with, or has served with.
#[derive(Debug, Serialize)]
pub(crate) struct KeyView {
    /// The provider id.
    pub(crate) provider: String,
    /// SHA-256 fingerprint (12 hex digits), or `anon` for keyless use.
    pub(crate) key: String,
    /// Where this process found it (`$GROQ_API_KEY`), or `null` when it is
    /// only in the ledger: a key of another shell or an earlier session.
    pub(crate) source: Option<String>,
}

/// Everything `freepool-mcp status` shows; `--json` prints it as is (see
/// docs/status-json.md).
#[derive(Debug, Serialize)]
pub(crate) struct StatusReport {
    /// The ledger file.
    pub(crate) ledger: String,
    /// When the report was taken, RFC 3339.
    pub(crate) now: String,
    /// Keys, by provider, from this shell and from the ledger.
    pub(crate) keys: Vec<KeyView>,
    /// Use per scope, only scopes with some use.
    pub(crate) usage: Vec<ScopeUse>,
    /// Benches in force.
    pub(crate) cooldowns: Vec<BenchView>,
    /// Models a provider said it no longer serves, per key.
    pub(crate) gone: Vec<GoneView>,
    /// Limits a provider stated (headers, 429 bodies) below the catalog's.
    pub(crate) learned: Vec<LearnedView>,
    /// Requests in flight across all processes.
    pub(crate) in_flight: u64,
    /// The soonest fixed reset among used limits, RFC 3339.
    pub(crate) soonest_reset: Option<String>,
    /// How answers fared per model and task type (checks and Claude's outcomes).
    pub(crate) answers: Vec<JudgedView>,
}

/// A model gone upstream for one key: kept out until the catalog entry
/// changes or `status --clear-cooldowns`.
#[derive(Debug, Serialize)]
pub(crate) struct GoneView {
    /// `provider/model`.
    pub(crate) model: String,
    /// Key fingerprint, or `anon`.
    pub(crate) key: String,
    /// When the provider first said so, RFC 3339.
    pub(crate) since: String,
    /// The provider's words, scrubbed of keys and cut short.
    pub(crate) words: String,
}

/// A limit learned from a provider, beside the catalog's figure.
#[derive(Debug, Serialize)]
pub(crate) struct LearnedView {
    /// `provider/model`.
    pub(crate) model: String,
    /// `tpm`, `rpd`, ...
    pub(crate) limit: String,
    /// The catalog's figure, when it has one.
    pub(crate) catalog: Option<u64>,
    /// What the provider stated (the one in force when lower).
    pub(crate) learned: u64,
}

/// How one model's answers fared at one task type.
#[derive(Debug, Serialize)]
pub(crate) struct JudgedView {
    /// `provider/model`.
    pub(crate) model: String,
    /// The task type (`any` when none was given).
    pub(crate) task_type: String,
    /// The estimated share of good answers, the prior included (0..1).
    pub(crate) good_share: f64,
    /// How many verdicts it rests on, discounted by age.
    pub(crate) verdicts: f64,
}

/// Builds the status report from a snapshot. The ledger is read by key
/// fingerprint, so use made with keys this shell does not have still shows.
pub(crate) fn report(catalog: &Catalog, snap: &UsageSnapshot, ledger_path: &str) -> StatusReport {
    let now = snap.now;
    let mut usage = Vec::new();
    let mut soonest: Option<Millis> = None;
    let mut keys = Vec::new();
    for p in &catalog.providers {
        // Keys of this shell, then fingerprints only the ledger knows.
        let mut fps: Vec<(String, Option<String>)> = p
            .keys
            .iter()
            .filter_map(|k| {
                k.key
                    .as_ref()
                    .map(|key| (key.fingerprint(), Some(k.source.to_string())))
            })
            .collect();
        if fps.is_empty() && p.is_keyless() {
            fps.push((ANON.to_owned(), Some("keyless".to_owned())));
        }
        let mut seen: Vec<&str> = snap
            .usage
            .keys()
            .filter(|(pid, _, _)| pid == &p.id)
            .map(|(_, _, k)| k.as_str())
            .collect();
        seen.sort_unstable();
        seen.dedup();
        for k in seen {
            if !fps.iter().any(|(f, _)| f == k) {
                fps.push((k.to_owned(), None));
            }
        }
        for (key, source) in &fps {
            keys.push(KeyView {
                provider: p.id.clone(),
                key: key.clone(),
                source: source.clone(),
            });
        }
        // Keys that stack have a quota each; otherwise they share one.
        let groups: Vec<String> = if p.keys_stack {
            fps.iter().map(|(f, _)| f.clone()).collect()
        } else {
            vec![fps.first().map(|(f, _)| f.clone()).unwrap_or_default()]
        };
        for fp in &groups {
            let shown = if p.keys_stack || fp == ANON {
                fp.clone()
            } else {
                "shared".to_owned()
            };
            let mut scopes: Vec<(String, &[Limit], Counts)> = Vec::new();
            for m in &p.models {
                let c = snap.model_use(p, &m.id, fp);
                scopes.push((format!("{}/{}", p.id, m.id), &m.limits, c));
            }
            for pool in &p.pools {
                let c = snap.scope_use(p, |model| pool.covers(model), fp);
                scopes.push((format!("{} pool {}", p.id, pool.id), &pool.limits, c));
            }
            for (scope, limits, c) in scopes {
                if c.requests[3] == 0 && c.requests[2] == 0 && c.in_flight == 0 {
                    continue;
                }
                let mut lu = limit_uses(limits, &c, now);
                for r in limits
                    .iter()
                    .filter_map(|l| next_reset(l.window, l.reset, now))
                {
                    soonest = Some(soonest.map_or(r, |s| s.min(r)));
                }
                if lu.is_empty() {
                    lu.push(LimitUse {
                        limit: "requests today",
                        used: c.requests[2],
                        max: 0,
                        resets_at: None,
                    });
                }
                usage.push(ScopeUse {
                    scope,
                    key: shown.clone(),
                    limits: lu,
                });
            }
        }
    }
    let cooldowns = snap
        .cooldowns
        .iter()
        .filter(|c| c.until > now)
        .map(|c| BenchView {
            scope: c.scope.to_string(),
            reason: c.reason.clone(),
            source: if c.stated {
                "stated by provider"
            } else {
                "guessed back-off"
            },
            until: quota::iso(c.until / 1000),
            seconds_left: (c.until - now + 999) / 1000,
        })
        .collect();
    let mut gone: Vec<GoneView> = snap
        .gone
        .iter()
        .map(|g| GoneView {
            model: format!(
                "{}/{}",
                g.scope.provider,
                g.scope.model.as_deref().unwrap_or("*")
            ),
            key: g.scope.key.clone().unwrap_or_else(|| "*".into()),
            since: quota::iso(g.since / 1000),
            words: g.words.clone(),
        })
        .collect();
    gone.sort_by(|a, b| (&a.model, &a.key).cmp(&(&b.model, &b.key)));
    let mut learned: Vec<LearnedView> = snap
        .learned
        .iter()
        .map(|((p, m, key), max)| LearnedView {
            model: format!("{p}/{m}"),
            limit: key.clone(),
            catalog: catalog_figure(catalog, p, m, key),
            learned: *max,
        })
        .collect();
    learned.sort_by(|a, b| (&a.model, &a.limit).cmp(&(&b.model, &b.limit)));
    let in_flight = snap.usage.values().map(|c| c.in_flight).sum();
    let mut answers: Vec<JudgedView> = snap
        .verdicts
        .iter()
        .map(|((p, m, t), tally)| JudgedView {
            model: format!("{p}/{m}"),
            task_type: t.clone(),
            good_share: (tally.estimate(now) * 1000.0).round() / 1000.0,
            verdicts: (tally.weight(now) * 10.0).round() / 10.0,
        })
        .filter(|j| j.verdicts > 0.0)
        .collect();
    answers.sort_by(|a, b| (&a.model, &a.task_type).cmp(&(&b.model, &b.task_type)));
    StatusReport {
        ledger: ledger_path.to_owned(),
        now: quota::iso(now / 1000),
        keys,
        usage,
        cooldowns,
        gone,
        learned,
        in_flight,
        soonest_reset: soonest.map(|s| quota::iso(s / 1000)),
        answers,
    }
}

/// The catalog's figure for a limit of a model: its own, else its pools'.
fn catalog_figure(catalog: &Catalog, provider: &str, model: &str, key: &str) -> Option<u64> {
    let p = catalog.provider(provider)?;
    let own = p
        .models
        .iter()
        .filter(|m| m.id == model)
        .flat_map(|m| &m.limits);
    let pooled = p
        .pools
        .iter()
        .filter(|pool| pool.covers(model))
        .flat_map(|pool| &pool.limits);
    own.chain(pooled)
        .filter(|l| l.key() == key)
        .map(|l| l.max)
        .min()
}

/// Each limit of a scope with its use now.
fn limit_uses(limits: &[Limit], c: &Counts, now: Millis) -> Vec<LimitUse> {
    limits
        .iter()
        .map(|l| {
            let i = widx(l.window);
            LimitUse {
                limit: l.key(),
                used: match l.axis {
                    Axis::Requests => c.requests[i],
                    Axis::Tokens => c.tokens[i],
                },
                max: l.max,
                resets_at: next_reset(l.window, l.reset, now).map(|r| quota::iso(r / 1000)),
            }
        })
        .collect()
}

/// The status report as a table.
pub(crate) fn report_text(r: &StatusReport) -> String {
    let mut out = format!("ledger: {}\n", r.ledger);
    out.push_str("\nkeys:\n");
    if r.keys.is_empty() {
        out.push_str("  none set and none in the ledger (see `freepool-mcp models`)\n");
    }
    for k in &r.keys {
        let from = k.source.as_deref().map_or_else(
            || "in the ledger only (not set in this shell)".to_owned(),
            |s| format!("from {s}"),
        );
        let _ = writeln!(out, "  {:<14} {:<14} {from}", k.provider, k.key);
    }
    out.push_str("\nusage (used/limit per window; leases in flight included):\n");
    if r.usage.is_empty() {
        out.push_str("  nothing used in the current windows\n");
    }
    for u in &r.usage {
        let limits: Vec<String> = u
            .limits
            .iter()
            .map(|l| {
                if l.max == 0 {
                    format!("{} {}", l.used, l.limit)
                } else {
                    format!("{} {}/{}", l.limit, l.used, l.max)
                }
            })
            .collect();
        let _ = writeln!(out, "  {:<52} {:<14} {}", u.scope, u.key, limits.join("  "));
    }
    out.push_str("\ncooldowns:\n");
    if r.cooldowns.is_empty() {
        out.push_str("  none\n");
    }
    for c in &r.cooldowns {
        let _ = writeln!(
            out,
            "  {:<40} {} ({}) until {} ({})",
            c.scope,
            c.reason,
            c.source,
            c.until,
            quota::relative(c.seconds_left)
        );
    }
    if !r.gone.is_empty() {
        out.push_str("\ngone upstream (not tried again until the catalog entry changes or `status --clear-cooldowns`):\n");
        for g in &r.gone {
            let _ = writeln!(
                out,
                "  {:<52} {:<14} since {}: \"{}\"",
                g.model, g.key, g.since, g.words
            );
        }
    }
    if !r.learned.is_empty() {
        out.push_str("\nlimits stated by providers (the lower figure is in force):\n");
        for l in &r.learned {
            let catalog = l.catalog.map_or_else(
                || "not in the catalog".to_owned(),
                |c| format!("catalog {c}"),
            );
            let _ = writeln!(
                out,
                "  {:<52} {:<5} provider says {}, {catalog}",
                l.model, l.limit, l.learned
            );
        }
    }
    if !r.answers.is_empty() {
        out.push_str(
            "\nanswers judged (good share, prior included; verdicts, discounted by age):\n",
        );
        for j in &r.answers {
            let _ = writeln!(
                out,
                "  {:<52} {:<14} {:>4.0}%  {:.1}",
                j.model,
                j.task_type,
                j.good_share * 100.0,
                j.verdicts
            );
        }
    }
    let _ = write!(out, "\nin flight: {}\n", r.in_flight);
    if let Some(s) = &r.soonest_reset {
        let _ = writeln!(out, "soonest reset: {s}");
    }
    out
}

/// `freepool-mcp models`: the whole catalog with key status, no ledger needed.
pub(crate) fn catalog_table(catalog: &Catalog) -> String {
    let mut out = String::new();
    for p in &catalog.providers {
        let status = if !p.missing_vars.is_empty() {
            format!("needs {}", p.missing_vars.join(", "))
        } else if p.usable_keys().next().is_some() {
            let fps: Vec<String> = p
                .keys
                .iter()
                .filter_map(|k| {
                    k.key
                        .as_ref()
                        .map(|key| format!("{} ({})", key.fingerprint(), k.source))
                })
                .collect();
            format!("key {}", fps.join(", "))
        } else if p.is_keyless() {
            "keyless, anonymous (turn off: [settings] keyless = false)".into()
        } else if p.has_key_or_command() {
            "key from a command (run on first use)".into()
        } else {
            let vars: Vec<String> = p.keys.iter().map(|k| k.source.to_string()).collect();
            format!("no key: set {}", vars.join(" or "))
        };
        let training = match p.trains_on_prompts {
            Some(true) => " · free tier may train on prompts",
            Some(false) => "",
            None => " · data use not stated",
        };
        let _ = writeln!(out, "{} — {} · {}{training}", p.id, p.name, status);
        for pool in &p.pools {
            let limits: Vec<String> = pool
                .limits
                .iter()
                .map(|l| format!("{}={}", l.key(), l.max))
                .collect();
            let _ = writeln!(out, "    pool {}: {}", pool.id, limits.join(" "));
        }
        for m in &p.models {
            let limits: Vec<String> = m
                .limits
                .iter()
                .map(|l| format!("{}={}", l.key(), compact(l.max)))
                .collect();
            let _ = writeln!(
                out,
                "    {:<52} {:<26} ctx {:>6} tier {} {}",
                m.id,
                m.family,
                compact(u64::from(m.context)),
                m.tier,
                limits.join(" ")
            );
        }
    }
    let n_models: usize = catalog.providers.iter().map(|p| p.models.len()).sum();
    let usable = catalog
        .providers
        .iter()
        .filter(|p| router::is_usable(p))
        .count();
    let _ = write!(
        out,
        "\n{} providers, {n_models} models; {usable} providers usable now.\n",
        catalog.providers.len()
    );
    if !catalog.retired.is_empty() {
        out.push_str("\noff, gone upstream (turn one back on with enabled = true in your file):\n");
        for (id, why) in &catalog.retired {
            let _ = writeln!(out, "    {id:<52} {why}");
        }
    }
    if let Some(path) = &catalog.user_file {
        let _ = writeln!(out, "user file: {}", path.display());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stated_limit_shows_beside_the_catalog_figure_and_gone_models_with_their_words() {
        let cat =
            crate::config::load_from(None, &|n| (n == "GROQ_API_KEY").then(|| "k".to_owned()));
        let mut snap = UsageSnapshot {
            now: 1_764_662_400_000,
            ..Default::default()
        };
        let model = "openai/gpt-oss-120b";
        snap.learned
            .insert(("groq".into(), model.into(), "tpm".into()), 6000);
        snap.gone.push(crate::quota::GoneMark {
            scope: crate::quota::Scope::model_key("groq", "qwen/qwen3.8-27b", "abc"),
            entry: String::new(),
            since: 1_764_600_000_000,
            last: 1_764_600_000_000,
            confirmed: true,
            words: "The model does not exist".into(),
        });
        let r = report(&cat, &snap, "ledger");
        assert_eq!(r.learned.len(), 1);
        assert_eq!(
            (r.learned[0].catalog, r.learned[0].learned),
            (Some(8000), 6000)
        );
        let text = report_text(&r);
        assert!(
            text.contains("groq/openai/gpt-oss-120b")
                && text.contains("provider says 6000, catalog 8000"),
            "{text}"
        );
        assert!(
            text.contains("since 2025-12-01T14:40:00Z: \"The model does not exist\""),
            "{text}"
        );
    }

    #[test]
    fn models_text_is_compact_and_marks_keyless() {
        let cat =
            crate::config::load_from(None, &|n| (n == "GROQ_API_KEY").then(|| "k".to_owned()));
        let text = models_text(&cat, &UsageSnapshot::default());
        assert!(
            text.contains("groq/openai/gpt-oss-120b [gpt-oss-120b]"),
            "{text}"
        );
        assert!(text.contains("keyless, anonymous"), "{text}");
        assert!(text.contains("mistral no key ($MISTRAL_API_KEY)"), "{text}");
        assert!(text.contains("Auto context ceiling"), "{text}");
        // One line per usable model, none very long.
        assert!(
            text.lines().all(|l| l.len() < 400 || l.starts_with("not ")),
            "{text}"
        );
    }

    #[test]
    fn budget_text_says_source_and_threshold() {
        let a = budget::assess(
            None,
            Some((budget::Mode::DelegateMore, "FREEPOOL_BUDGET_MODE".into())),
            0,
        );
        let t = budget_text(&a, 0);
        assert!(
            t.contains("mode: delegate_more · delegation threshold 9"),
            "{t}"
        );
        assert!(t.contains("pinned by FREEPOOL_BUDGET_MODE"), "{t}");
    }
}
