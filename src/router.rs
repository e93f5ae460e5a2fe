//! Which (provider, model, key) should take a request, in order, and why the others cannot.
//!
//! Pure policy over plain data: a `Catalog`, a `UsageSnapshot` from the
//! ledger and the exclusions of the call in progress go in; a `Plan` comes
//! out, with every rejected candidate and its reason. No IO, no clock.
//!
//! Ranking is deterministic and explainable, in this order: user priority,
//! quality tier, remaining headroom (in quarters, so near-equals tie), recent
//! failures, then rotation, so that equal candidates share the load.

use crate::config::{Auth, Catalog, Limit, Model, Provider};
use crate::quota::{Blocked, Headroom, Millis, Need, Scope, UsageSnapshot};

/// Fingerprint used for anonymous (keyless) calls.
pub(crate) const ANON: &str = "anon";

/// What the caller asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Selector {
    /// The router picks.
    Auto,
    /// Exactly this provider's model.
    Exact {
        /// Provider id.
        provider: String,
        /// Model id.
        model: String,
    },
    /// Any provider serving this family.
    Family(String),
}

/// A model name that matches nothing, with the closest names that do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown model `{asked}`{}", if suggestions.is_empty() { String::new() } else { format!("; did you mean {}?", suggestions.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")) })]
pub(crate) struct UnknownModel {
    /// What was asked.
    pub(crate) asked: String,
    /// Up to five close matches.
    pub(crate) suggestions: Vec<String>,
}

/// Parses `auto`, `provider/model`, a family, or a bare model id.
pub(crate) fn parse_selector(
    catalog: &Catalog,
    asked: Option<&str>,
) -> Result<Selector, UnknownModel> {
    let Some(asked) = asked
        .map(str::trim)
        .filter(|s| !s.is_empty() && !s.eq_ignore_ascii_case("auto"))
    else {
        return Ok(Selector::Auto);
    };
    if let Some((p, m)) = asked.split_once('/')
        && catalog
            .provider(p)
            .is_some_and(|prov| prov.models.iter().any(|x| x.id == m))
    {
        return Ok(Selector::Exact {
            provider: p.to_owned(),
            model: m.to_owned(),
        });
    }
    let lower = asked.to_lowercase();
    if catalog.models().any(|(_, m)| m.family == lower) {
        return Ok(Selector::Family(lower));
    }
    // A bare model id that one provider serves.
    let matching: Vec<_> = catalog.models().filter(|(_, m)| m.id == asked).collect();
    if let [(p, m)] = matching[..] {
        return Ok(Selector::Exact {
            provider: p.id.clone(),
            model: m.id.clone(),
        });
    }
    if let Some((_, m)) = matching.first() {
        return Ok(Selector::Family(m.family.clone()));
    }
    Err(UnknownModel {
        asked: asked.to_owned(),
        suggestions: suggestions(catalog, asked),
    })
}

fn suggestions(catalog: &Catalog, asked: &str) -> Vec<String> {
    let lower = asked.to_lowercase();
    let mut names: Vec<String> = catalog
        .models()
        .map(|(p, m)| format!("{}/{}", p.id, m.id))
        .collect();
    names.extend(catalog.models().map(|(_, m)| m.family.clone()));
    names.sort();
    names.dedup();
    let mut scored: Vec<(f64, String)> = names
        .into_iter()
        .map(|n| {
            let l = n.to_lowercase();
            let tail = l.rsplit('/').next().unwrap_or(&l).to_owned();
            let mut score =
                strsim::jaro_winkler(&lower, &l).max(strsim::jaro_winkler(&lower, &tail));
            if l.contains(&lower) || lower.contains(&tail) {
                score += 0.2;
            }
            (score, n)
        })
        .filter(|(s, _)| *s > 0.75)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    scored.into_iter().take(5).map(|(_, n)| n).collect()
}

/// A request, as far as routing cares.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    /// Which models may serve it.
    pub(crate) selector: Selector,
    /// Length of prompt and system prompt together, in estimate units
    /// (characters, non-ASCII ones weighted up; see `dispatch`).
    pub(crate) prompt_chars: usize,
    /// Completion cap asked for.
    pub(crate) max_tokens: Option<u32>,
    /// Output tokens assumed when `max_tokens` is absent.
    pub(crate) output_reserve: u32,
    /// Families whose answers failed this call's check: ranked after the others.
    pub(crate) avoid_families: Vec<String>,
    /// The task's type (`any` when not given): answers are judged per type.
    pub(crate) task_type: String,
}

/// Something this call already ruled out, and why (a failure label).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Excluded {
    /// What it covers.
    pub(crate) scope: Scope,
    /// Why.
    pub(crate) reason: String,
}

/// A candidate that can take the request now.
#[derive(Debug, Clone)]
pub(crate) struct Candidate<'c> {
    /// Where it sits in the catalog: (provider index, model index).
    pub(crate) at: (usize, usize),
    /// Provider.
    pub(crate) provider: &'c Provider,
    /// Model.
    pub(crate) model: &'c Model,
    /// Index into `provider.keys`, or `None` for an anonymous call.
    pub(crate) key_index: Option<usize>,
    /// Key fingerprint (or `anon`).
    pub(crate) key_fp: String,
    /// Estimated prompt tokens.
    pub(crate) prompt_tokens: u64,
    /// What to reserve against quota: prompt and capped output, and for the
    /// minute window what the provider counts when the request arrives.
    pub(crate) need: Need,
    /// Room left.
    pub(crate) headroom: Headroom,
}

impl Candidate<'_> {
    /// `provider/model`.
    pub(crate) fn id(&self) -> String {
        format!("{}/{}", self.provider.id, self.model.id)
    }

    /// Why it ranks where it does, in the ranking's own terms.
    pub(crate) fn why(&self) -> String {
        format!(
            "priority {}, tier {}, {:.0}% headroom left",
            self.provider.priority + self.model.priority,
            self.model.tier,
            self.headroom.fraction * 100.0
        )
    }
}

/// Why a candidate cannot take the request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reason {
    /// Needs a key that is not set.
    NoKey(String),
    /// A URL placeholder is not set.
    MissingVar(String),
    /// The prompt and output do not fit the context window.
    TooBig {
        /// Tokens needed.
        need: u64,
        /// Context window.
        context: u32,
    },
    /// The request alone exceeds a per-minute token limit.
    OverTokenLimit {
        /// Tokens needed.
        need: u64,
        /// The limit (`tpm`).
        max: u64,
        /// The provider counts `max_tokens` whole when the request arrives,
        /// and `max_tokens` is what does not fit.
        max_tokens_counted: bool,
    },
    /// Ruled out earlier in this call.
    Failed(String),
    /// Benched, full or busy.
    Blocked(Blocked),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::NoKey(v) => write!(f, "no key (set {v})"),
            Reason::MissingVar(v) => write!(f, "{v} is not set"),
            Reason::TooBig { need, context } => {
                write!(f, "needs ~{need} tokens, context is {context}")
            }
            Reason::OverTokenLimit {
                need,
                max,
                max_tokens_counted: true,
            } => write!(
                f,
                "needs ~{need} tokens with max_tokens counted whole (the provider counts it on arrival), per-minute limit is {max}; ask for a smaller max_tokens"
            ),
            Reason::OverTokenLimit { need, max, .. } => {
                write!(f, "needs ~{need} tokens, per-minute limit is {max}")
            }
            Reason::Failed(why) => write!(f, "failed in this call: {why}"),
            Reason::Blocked(Blocked::Benched { reason, .. }) => {
                write!(f, "cooling down after {reason}")
            }
            Reason::Blocked(Blocked::Gone { since, words }) => {
                write!(
                    f,
                    "gone upstream since {}: \"{words}\"",
                    crate::quota::day(*since)
                )
            }
            Reason::Blocked(Blocked::Full {
                limit, used, max, ..
            }) => write!(f, "{limit} used up ({used}/{max})"),
            Reason::Blocked(Blocked::Busy { in_flight }) => {
                write!(f, "busy ({in_flight} in flight, at its concurrency cap)")
            }
        }
    }
}

/// A candidate that cannot take the request, and when that may change.
#[derive(Debug, Clone)]
pub(crate) struct Rejection {
    /// `provider/model`.
    pub(crate) id: String,
    /// Why not.
    pub(crate) reason: Reason,
    /// When it may have room again, if known.
    pub(crate) frees_at: Option<Millis>,
}

/// The outcome of routing.
#[derive(Debug, Clone)]
pub(crate) struct Plan<'c> {
    /// Candidates, best first.
    pub(crate) candidates: Vec<Candidate<'c>>,
    /// The others, with reasons.
    pub(crate) rejected: Vec<Rejection>,
}

impl Plan<'_> {
    /// The soonest time a rejected candidate frees up, if any will.
    pub(crate) fn soonest_free(&self) -> Option<Millis> {
        self.rejected.iter().filter_map(|r| r.frees_at).min()
    }

    /// Whether some rejected candidate is only waiting on requests in flight.
    pub(crate) fn has_busy(&self) -> bool {
        self.rejected
            .iter()
            .any(|r| matches!(r.reason, Reason::Blocked(Blocked::Busy { .. })))
    }
}

fn selected(sel: &Selector, p: &Provider, m: &Model) -> bool {
    match sel {
        Selector::Auto => true,
        Selector::Exact { provider, model } => &p.id == provider && &m.id == model,
        Selector::Family(f) => &m.family == f,
    }
}

/// Key slots to try for a provider: (index, fingerprint), or one anonymous slot.
fn key_slots(p: &Provider) -> Result<Vec<(Option<usize>, String)>, Reason> {
    if !p.missing_vars.is_empty() {
        return Err(Reason::MissingVar(p.missing_vars.join(", ")));
    }
    let keyed: Vec<_> = p
        .keys
        .iter()
        .enumerate()
        .filter_map(|(i, k)| k.key.as_ref().map(|key| (Some(i), key.fingerprint())))
        .collect();
    match p.auth {
        Auth::None => Ok(vec![(None, ANON.to_owned())]),
        Auth::Optional if keyed.is_empty() => Ok(vec![(None, ANON.to_owned())]),
        _ if keyed.is_empty() => {
            let vars: Vec<String> = p
                .keys
                .iter()
                .map(|k| match &k.source {
                    crate::config::KeySource::Env(v) => v.clone(),
                    other => other.to_string(),
                })
                .collect();
            Err(Reason::NoKey(if vars.is_empty() {
                "a key in your config".into()
            } else {
                vars.join(" or ")
            }))
        }
        _ => Ok(keyed),
    }
}

fn tpm_of(limits: &[Limit]) -> Option<u64> {
    limits
        .iter()
        .filter(|l| l.key() == "tpm")
        .map(|l| l.max)
        .min()
}

/// The capability gate for one model: whether the request fits its context
/// window and its per-minute token limits, and if so what to reserve.
fn capability(p: &Provider, m: &Model, req: &Request, prompt_tokens: u64) -> Result<Need, Reason> {
    let output = u64::from(
        req.max_tokens
            .unwrap_or(req.output_reserve)
            .min(m.max_output),
    );
    if prompt_tokens + output > u64::from(m.context) {
        return Err(Reason::TooBig {
            need: prompt_tokens + output,
            context: m.context,
        });
    }
    // Reserve at most `output_reserve` for the answer against quota: reserving
    // a full max_tokens makes small per-minute limits look full for nothing.
    // But a provider that counts max_tokens whole when the request arrives
    // (OpenAI-style TPM) sees all of it in its minute window.
    let tokens = prompt_tokens + output.min(u64::from(req.output_reserve));
    let counted = req.max_tokens.filter(|_| p.counts_max_tokens);
    let need = Need {
        tokens,
        // What is sent is what the provider counts.
        minute_tokens: counted.map_or(tokens, |max| prompt_tokens + u64::from(max)),
    };
    let pool_tpm = p
        .pools
        .iter()
        .filter(|pl| pl.covers(&m.id))
        .filter_map(|pl| tpm_of(&pl.limits))
        .min();
    match tpm_of(&m.limits).into_iter().chain(pool_tpm).min() {
        Some(max) if need.minute_tokens > max => Err(Reason::OverTokenLimit {
            need: need.minute_tokens,
            max,
            max_tokens_counted: counted.is_some() && tokens <= max,
        }),
        _ => Ok(need),
    }
}

/// Ranks every candidate for `req`. `rotation` varies between calls to spread load.
pub(crate) fn plan<'c>(
    catalog: &'c Catalog,
    req: &Request,
    snap: &UsageSnapshot,
    excluded: &[Excluded],
    rotation: u64,
) -> Plan<'c> {
    let mut candidates = Vec::new();
    let mut rejected = Vec::new();
    let indexed = catalog.providers.iter().enumerate().flat_map(|(pi, p)| {
        p.models
            .iter()
            .enumerate()
            .map(move |(mi, m)| ((pi, mi), p, m))
    });
    for (at, p, m) in indexed.filter(|(_, p, m)| selected(&req.selector, p, m)) {
        let id = format!("{}/{}", p.id, m.id);
        let reject = |reason: Reason, frees_at: Option<Millis>| Rejection {
            id: id.clone(),
            reason,
            frees_at,
        };
        let slots = match key_slots(p) {
            Ok(s) => s,
            Err(reason) => {
                rejected.push(reject(reason, None));
                continue;
            }
        };
        let prompt_tokens = snap.estimate_tokens(&p.id, req.prompt_chars);
        let need = match capability(p, m, req, prompt_tokens) {
            Ok(need) => need,
            Err(reason) => {
                rejected.push(reject(reason, None));
                continue;
            }
        };
        let mut last_block = None;
        let mut found = false;
        for (key_index, key_fp) in &slots {
            if let Some(ex) = excluded
                .iter()
                .find(|e| e.scope.covers(&p.id, &m.id, key_fp))
            {
                last_block = Some((Reason::Failed(ex.reason.clone()), None));
                continue;
            }
            match snap.check(p, m, key_fp, need) {
                Ok(headroom) => {
                    candidates.push(Candidate {
                        at,
                        provider: p,
                        model: m,
                        key_index: *key_index,
                        key_fp: key_fp.clone(),
                        prompt_tokens,
                        need,
                        headroom,
                    });
                    found = true;
                }
                Err(b) => {
                    let frees = b.frees_at();
                    last_block = Some((Reason::Blocked(b), frees));
                }
            }
        }
        if !found && let Some((reason, frees)) = last_block {
            rejected.push(reject(reason, frees));
        }
    }
    rank(&mut candidates, req, snap, rotation);
    Plan {
        candidates,
        rejected,
    }
}

fn rank(cands: &mut [Candidate<'_>], req: &Request, snap: &UsageSnapshot, rotation: u64) {
    let n = cands.len().max(1) as u64;
    let mut keyed: Vec<_> = cands
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let priority = c.provider.priority + c.model.priority;
            let quarter = (c.headroom.fraction * 4.0).ceil() as i64;
            let failures = snap
                .recent_failures
                .get(&(c.provider.id.clone(), c.model.id.clone()))
                .copied()
                .unwrap_or(0);
            let turn = (i as u64 + n - rotation % n) % n;
            // After a failed check, another family first, then a stronger tier.
            let avoided = req.avoid_families.contains(&c.model.family);
            // Models whose answers did well at this kind of task first, in tenths.
            let quality =
                (snap.quality(&c.provider.id, &c.model.id, &req.task_type) * 10.0).round() as i64;
            (
                (
                    -i64::from(priority),
                    avoided,
                    -quality,
                    c.model.tier,
                    -quarter,
                    failures.min(3),
                    turn,
                ),
                i,
            )
        })
        .collect();
    keyed.sort_unstable();
    let order: Vec<usize> = keyed.into_iter().map(|(_, i)| i).collect();
    let sorted: Vec<Candidate<'_>> = order.iter().map(|&i| cands[i].clone()).collect();
    cands.clone_from_slice(&sorted);
}

/// The largest prompt (in tokens) auto-routing can take now, and the model behind it.
pub(crate) fn context_ceiling(
    catalog: &Catalog,
    snap: &UsageSnapshot,
    output_reserve: u32,
) -> Option<(u64, String)> {
    catalog
        .models()
        .filter(|(p, m)| {
            key_slots(p).is_ok_and(|slots| {
                slots
                    .iter()
                    .any(|(_, fp)| snap.bench_of(&p.id, &m.id, fp).is_none())
            })
        })
        .map(|(p, m)| {
            let room =
                u64::from(m.context).saturating_sub(u64::from(output_reserve.min(m.max_output)));
            (room, format!("{}/{}", p.id, m.id))
        })
        .max_by_key(|(room, _)| *room)
}

/// Whether a provider could be used at all (key present or keyless, vars set).
pub(crate) fn is_usable(p: &Provider) -> bool {
    key_slots(p).is_ok()
}

/// Why an enabled provider cannot be used at all (no key, a missing
/// setting), or `None` when it can.
pub(crate) fn unusable(p: &Provider) -> Option<Reason> {
    key_slots(p).err()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::quota::{Cooldown, Counts};

    fn catalog(text: &str) -> Catalog {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let env = |n: &str| n.starts_with("KEY_").then(|| format!("secret-{n}"));
        let mut cat = config::load_from(Some(&path), &env);
        assert!(cat.problems.is_empty(), "{:?}", cat.problems);
        // Only the providers of the test file.
        cat.providers.retain(|p| p.id.starts_with('t'));
        cat
    }

    const TWO: &str = r#"
[providers.ta]
base_url = "https://a.example/v1"
key_env = ["KEY_A"]
[providers.ta.models.big]
family = "fam"
context = 32000
tier = 1
limits = { rpm = 10 }
[providers.ta.models.small]
context = 4096
tier = 4
[providers.tb]
base_url = "https://b.example/v1"
key_env = ["KEY_B"]
[providers.tb.models.big2]
family = "fam"
context = 128000
tier = 1
limits = { rpm = 10, tpm = 3000 }
[providers.tnokey]
base_url = "https://c.example/v1"
key_env = ["NOT_SET"]
[providers.tnokey.models.x]
context = 8000
"#;

    fn req(selector: Selector, chars: usize) -> Request {
        Request {
            selector,
            prompt_chars: chars,
            max_tokens: None,
            output_reserve: 500,
            avoid_families: Vec::new(),
            task_type: "any".into(),
        }
    }

    fn ids(plan: &Plan<'_>) -> Vec<String> {
        plan.candidates.iter().map(super::Candidate::id).collect()
    }

    #[test]
    fn selectors_and_close_matches() {
        let cat = catalog(TWO);
        assert_eq!(parse_selector(&cat, None).unwrap(), Selector::Auto);
        assert_eq!(parse_selector(&cat, Some("auto")).unwrap(), Selector::Auto);
        assert_eq!(
            parse_selector(&cat, Some("ta/small")).unwrap(),
            Selector::Exact {
                provider: "ta".into(),
                model: "small".into()
            }
        );
        assert_eq!(
            parse_selector(&cat, Some("fam")).unwrap(),
            Selector::Family("fam".into())
        );
        assert_eq!(
            parse_selector(&cat, Some("big2")).unwrap(),
            Selector::Exact {
                provider: "tb".into(),
                model: "big2".into()
            }
        );
        let err = parse_selector(&cat, Some("ta/smal")).unwrap_err();
        assert!(err.suggestions.contains(&"ta/small".to_owned()), "{err}");
        assert!(err.to_string().contains("did you mean"), "{err}");
    }

    #[test]
    fn ranks_by_tier_and_explains_rejections() {
        let cat = catalog(TWO);
        let snap = UsageSnapshot::default();
        let plan = plan(&cat, &req(Selector::Auto, 300), &snap, &[], 0);
        assert_eq!(
            plan.candidates.last().unwrap().id(),
            "ta/small",
            "tier 4 comes last"
        );
        let nokey = plan.rejected.iter().find(|r| r.id == "tnokey/x").unwrap();
        assert_eq!(nokey.reason.to_string(), "no key (set NOT_SET)");
    }

    #[test]
    fn rotation_spreads_equal_candidates() {
        let cat = catalog(TWO);
        let snap = UsageSnapshot::default();
        let r = req(Selector::Family("fam".into()), 300);
        let first: Vec<String> = (0..4)
            .map(|rot| ids(&plan(&cat, &r, &snap, &[], rot))[0].clone())
            .collect();
        assert!(
            first.contains(&"ta/big".to_owned()) && first.contains(&"tb/big2".to_owned()),
            "{first:?}"
        );
    }

    #[test]
    fn capability_gate_uses_context_and_tpm() {
        let cat = catalog(TWO);
        let snap = UsageSnapshot::default();
        // ~10k tokens: too big for ta/small (4096) and over tb's 3000 TPM.
        let plan = plan(&cat, &req(Selector::Auto, 30_000), &snap, &[], 0);
        assert_eq!(ids(&plan), vec!["ta/big"]);
        let small = plan.rejected.iter().find(|r| r.id == "ta/small").unwrap();
        assert!(matches!(small.reason, Reason::TooBig { context: 4096, .. }));
        let b = plan.rejected.iter().find(|r| r.id == "tb/big2").unwrap();
        assert!(matches!(b.reason, Reason::OverTokenLimit { max: 3000, .. }));
    }

    #[test]
    fn full_and_benched_candidates_say_when_they_return() {
        let cat = catalog(TWO);
        let mut snap = UsageSnapshot {
            now: 1_000_000,
            ..Default::default()
        };
        let fp_a = cat.provider("ta").unwrap().keys[0]
            .key
            .as_ref()
            .unwrap()
            .fingerprint();
        let fp_b = cat.provider("tb").unwrap().keys[0]
            .key
            .as_ref()
            .unwrap()
            .fingerprint();
        let counts = Counts {
            requests: [10, 10, 10, 10],
            leaves_at: [Some(1_050_000); 4],
            ..Default::default()
        };
        snap.usage.insert(("ta".into(), "big".into(), fp_a), counts);
        snap.cooldowns.push(Cooldown {
            scope: Scope::key("tb", &fp_b),
            until: 1_030_000,
            stated: true,
            reason: "429 rate limited".into(),
            strikes: 1,
        });
        let plan = plan(
            &cat,
            &req(Selector::Family("fam".into()), 300),
            &snap,
            &[],
            0,
        );
        assert!(plan.candidates.is_empty());
        let a = plan.rejected.iter().find(|r| r.id == "ta/big").unwrap();
        assert_eq!(a.frees_at, Some(1_050_000), "oldest request + 60 s");
        assert_eq!(a.reason.to_string(), "rpm of big used up (10/10)");
        let b = plan.rejected.iter().find(|r| r.id == "tb/big2").unwrap();
        assert_eq!(b.frees_at, Some(1_030_000));
        assert_eq!(plan.soonest_free(), Some(1_030_000));
    }

    #[test]
    fn exclusions_follow_their_scope() {
        let cat = catalog(TWO);
        let snap = UsageSnapshot::default();
        let ex = Excluded {
            scope: Scope::provider("ta"),
            reason: "503 server error".into(),
        };
        let plan = plan(&cat, &req(Selector::Auto, 300), &snap, &[ex], 0);
        assert_eq!(ids(&plan), vec!["tb/big2"]);
        assert!(
            plan.rejected
                .iter()
                .any(|r| r.id == "ta/small" && r.reason.to_string().contains("503"))
        );
    }

    #[test]
    fn ceiling_is_the_largest_usable_window() {
        let cat = catalog(TWO);
        let (room, id) = context_ceiling(&cat, &UsageSnapshot::default(), 500).unwrap();
        assert_eq!((room, id.as_str()), (127_500, "tb/big2"));
    }
}
