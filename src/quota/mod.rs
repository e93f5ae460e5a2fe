//! The quota core: pure arithmetic over usage, with no IO and no clock.
//!
//! Everything that decides "may this candidate take a request now" lives
//! here, as plain data in and plain data out, so the store (SQLite or
//! PostgreSQL), the router and the status pages all apply the same rule:
//!
//! - window arithmetic: where a rolling or fixed window starts, when it resets;
//! - [`Counts`] and [`UsageSnapshot`]: use per window, as a store reads it;
//! - [`UsageSnapshot::check`]: the one quota rule, with [`Headroom`] or [`Blocked`];
//! - [`Scope`]: one type for everything that can be ruled out (a provider,
//!   a model, a key, a model for one key), for a call or for a while;
//! - [`failure`]: what a failed attempt rules out, and for how long.
//!
//! Time is always an argument (`now`, Unix milliseconds): callers own the clock.

mod failure;
pub(crate) mod gone;
mod scope;
mod verdict;

use std::collections::HashMap;

pub(crate) use failure::{Backoff, Bench, Failure, stated_wait_cap};
pub(crate) use gone::{GoneMark, GoneReport};
pub(crate) use scope::Scope;
pub(crate) use verdict::{Tally, prior_estimate};

use crate::config::{Axis, Limit, Model, Provider, Reset, Window, Zone};

/// Milliseconds since the Unix epoch.
pub(crate) type Millis = i64;

/// The four window lengths, in the order `Counts` keeps them.
pub(crate) const WINDOWS: [Window; 4] = [Window::Minute, Window::Hour, Window::Day, Window::Month];

/// Index of a window in `Counts`' arrays.
pub(crate) fn widx(w: Window) -> usize {
    match w {
        Window::Minute => 0,
        Window::Hour => 1,
        Window::Day => 2,
        Window::Month => 3,
    }
}

/// A window's nominal length (a rolling month is 30 days).
pub(crate) fn window_len(window: Window) -> Millis {
    match window {
        Window::Minute => 60_000,
        Window::Hour => 3_600_000,
        Window::Day => 86_400_000,
        Window::Month => 30 * 86_400_000,
    }
}

/// How a provider's window of this length resets (minutes and hours always roll).
pub(crate) fn reset_of(provider: &Provider, window: Window) -> Reset {
    match window {
        Window::Day => provider.day_reset,
        Window::Month => provider.month_reset,
        _ => Reset::Rolling,
    }
}

/// Start of the window that contains `now`.
pub(crate) fn window_start(window: Window, reset: Reset, now: Millis) -> Millis {
    match reset {
        Reset::Midnight(zone) if window >= Window::Day => {
            fixed_start(window, zone, now).unwrap_or(now - window_len(window))
        }
        _ => now - window_len(window),
    }
}

/// Midnight starting the day (or the 1st of the month) containing `now`, in `zone`.
/// jiff resolves a midnight that falls in a DST gap to the first valid instant.
fn fixed_start(window: Window, zone: Zone, now: Millis) -> Option<Millis> {
    let here = jiff::Timestamp::from_millisecond(now)
        .ok()?
        .to_zoned_datetime(zone.tz());
    let day = match window {
        Window::Month => here.first_of_month().ok()?,
        _ => here,
    };
    Some(day.start_of_day().ok()?.timestamp().as_millisecond())
}

/// When a fixed window that contains `now` ends (`None` for rolling windows).
pub(crate) fn next_reset(window: Window, reset: Reset, now: Millis) -> Option<Millis> {
    let Reset::Midnight(zone) = reset else {
        return None;
    };
    let start = jiff::Timestamp::from_millisecond(fixed_start(window, zone, now)?)
        .ok()?
        .to_zoned_datetime(zone.tz());
    let span = match window {
        Window::Day => jiff::Span::new().days(1),
        Window::Month => jiff::Span::new().months(1),
        _ => return None,
    };
    let next = start.checked_add(span).ok()?.start_of_day().ok()?;
    Some(next.timestamp().as_millisecond())
}

/// The longest window any limit of this provider uses (its models' and pools').
pub(crate) fn longest_window(provider: &Provider) -> Option<Window> {
    provider
        .models
        .iter()
        .flat_map(|m| m.limits.iter())
        .chain(provider.pools.iter().flat_map(|pl| pl.limits.iter()))
        .map(|l| l.window)
        .max()
}

/// Use by one (model, key) in each window of its provider, leases included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Requests per window (minute, hour, day, month).
    pub(crate) requests: [u64; 4],
    /// Tokens per window, as the provider counts them against that window.
    pub(crate) tokens: [u64; 4],
    /// When the oldest use still in each window leaves it (for "room again at").
    pub(crate) leaves_at: [Option<Millis>; 4],
    /// Leases in flight (already inside `requests`/`tokens`).
    pub(crate) in_flight: u64,
}

impl Counts {
    /// Adds another scope's use to this one.
    pub(crate) fn add(&mut self, o: &Counts) {
        for i in 0..4 {
            self.requests[i] += o.requests[i];
            self.tokens[i] += o.tokens[i];
            self.leaves_at[i] = match (self.leaves_at[i], o.leaves_at[i]) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        self.in_flight += o.in_flight;
    }

    /// Adds one request of `tokens` to every window (a lease or an event just made).
    pub(crate) fn add_request(&mut self, tokens: u64, leaves_at: [Option<Millis>; 4]) {
        self.add(&Counts {
            requests: [1; 4],
            tokens: [tokens; 4],
            leaves_at,
            in_flight: 0,
        });
    }
}

/// A bench in force.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cooldown {
    /// What it covers.
    pub(crate) scope: Scope,
    /// When it ends.
    pub(crate) until: Millis,
    /// `true` when the provider stated it.
    pub(crate) stated: bool,
    /// Why (a failure label, never provider text with secrets).
    pub(crate) reason: String,
    /// Consecutive failures behind it.
    pub(crate) strikes: u32,
}

/// Usage key: (provider, model, key fingerprint).
pub(crate) type UseKey = (String, String, String);

/// Everything the router needs to know about usage, read in one go.
#[derive(Debug, Clone, Default)]
pub(crate) struct UsageSnapshot {
    /// When it was taken.
    pub(crate) now: Millis,
    /// Use per (provider, model, key fingerprint).
    pub(crate) usage: HashMap<UseKey, Counts>,
    /// Benches in force.
    pub(crate) cooldowns: Vec<Cooldown>,
    /// Models gone upstream for a key, confirmed and heard on the current
    /// catalog entry (the store leaves out the rest).
    pub(crate) gone: Vec<GoneMark>,
    /// Limits learned from providers: (provider, model, limit key) -> max.
    pub(crate) learned: HashMap<UseKey, u64>,
    /// Tokens per character seen per provider.
    pub(crate) tokens_per_char: HashMap<String, f64>,
    /// Failures in the last hour per (provider, model), for ranking.
    pub(crate) recent_failures: HashMap<(String, String), u32>,
    /// How answers fared per (provider, model, task type): checks and Claude's outcomes.
    pub(crate) verdicts: HashMap<UseKey, Tally>,
}

/// Why a candidate cannot take a request right now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Blocked {
    /// A bench is in force.
    Benched {
        /// Why.
        reason: String,
        /// Until when.
        until: Millis,
    },
    /// A limit is used up (or would be by this request).
    Full {
        /// `rpd`, `tpm`, ... and whose (model or pool id).
        limit: String,
        /// Used in the window.
        used: u64,
        /// The limit.
        max: u64,
        /// Earliest time it has room again, when known.
        frees_at: Option<Millis>,
    },
    /// The provider said it no longer serves this model to this key.
    Gone {
        /// Since when.
        since: Millis,
        /// The provider's words, scrubbed.
        words: String,
    },
    /// The provider's concurrency cap is taken by requests in flight.
    Busy {
        /// In flight now.
        in_flight: u64,
    },
}

impl Blocked {
    /// When this candidate may work again, if known.
    pub(crate) fn frees_at(&self) -> Option<Millis> {
        match self {
            Blocked::Benched { until, .. } => Some(*until),
            Blocked::Full { frees_at, .. } => *frees_at,
            Blocked::Busy { .. } | Blocked::Gone { .. } => None,
        }
    }
}

/// Headroom of a candidate: the smallest fraction left over all its limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Headroom {
    /// 0.0 (nothing left) to 1.0 (untouched); 1.0 when there is no limit.
    pub(crate) fraction: f64,
    /// Requests left today: the tightest day (or month) request limit.
    pub(crate) requests_left_today: Option<u64>,
    /// Tokens left today, likewise.
    pub(crate) tokens_left_today: Option<u64>,
}

/// The tokens a request is counted for: what the day and month windows see,
/// and what per-minute token limits see (some providers count the whole
/// `max_tokens` when the request arrives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Need {
    /// Tokens against hour, day and month windows.
    pub(crate) tokens: u64,
    /// Tokens against the minute window.
    pub(crate) minute_tokens: u64,
}

impl Need {
    /// The same count for every window.
    pub(crate) fn flat(tokens: u64) -> Need {
        Need {
            tokens,
            minute_tokens: tokens,
        }
    }
}

/// One scope's limits and use, for `check`.
struct Limited<'a> {
    whose: String,
    limits: &'a [Limit],
    counts: Counts,
}

impl UsageSnapshot {
    /// Use of the (model, key) pair, summed over keys where keys share quota.
    pub(crate) fn model_use(&self, provider: &Provider, model: &str, key_fp: &str) -> Counts {
        self.scope_use(provider, |m| m == model, key_fp)
    }

    /// Use of every model `pick` selects, summed likewise (a pool's use).
    pub(crate) fn scope_use(
        &self,
        provider: &Provider,
        pick: impl Fn(&str) -> bool,
        key_fp: &str,
    ) -> Counts {
        let mut c = Counts::default();
        for ((p, m, k), counts) in &self.usage {
            if p == &provider.id && pick(m) && (!provider.keys_stack || k == key_fp) {
                c.add(counts);
            }
        }
        c
    }

    /// The bench covering a candidate, if any, the latest-ending one.
    pub(crate) fn bench_of(&self, provider: &str, model: &str, key_fp: &str) -> Option<&Cooldown> {
        self.cooldowns
            .iter()
            .filter(|c| c.until > self.now && c.scope.covers(provider, model, key_fp))
            .max_by_key(|c| c.until)
    }

    /// The gone mark covering a candidate, if any.
    pub(crate) fn gone_of(&self, provider: &str, model: &str, key_fp: &str) -> Option<&GoneMark> {
        self.gone
            .iter()
            .find(|g| g.confirmed && g.scope.covers(provider, model, key_fp))
    }

    /// The effective value of a limit: the catalog's, or lower if learned.
    pub(crate) fn effective(&self, provider: &str, model: &str, limit: &Limit) -> u64 {
        self.learned
            .get(&(
                provider.to_owned(),
                model.to_owned(),
                limit.key().to_owned(),
            ))
            .map_or(limit.max, |l| (*l).min(limit.max))
    }

    /// Requests in flight on a provider, all models and keys.
    fn in_flight(&self, provider: &str) -> u64 {
        self.usage
            .iter()
            .filter(|((p, _, _), _)| p == provider)
            .map(|(_, c)| c.in_flight)
            .sum()
    }

    /// Whether a request counted as `need` fits every limit of the candidate
    /// right now: the model's own, its pools', and the provider's concurrency
    /// cap. This is the one quota rule: the router ranks with it and every
    /// store enforces it inside its lease transaction.
    pub(crate) fn check(
        &self,
        provider: &Provider,
        model: &Model,
        key_fp: &str,
        need: Need,
    ) -> Result<Headroom, Blocked> {
        if let Some(c) = self.bench_of(&provider.id, &model.id, key_fp) {
            return Err(Blocked::Benched {
                reason: c.reason.clone(),
                until: c.until,
            });
        }
        if let Some(g) = self.gone_of(&provider.id, &model.id, key_fp) {
            return Err(Blocked::Gone {
                since: g.since,
                words: g.words.clone(),
            });
        }
        if let Some(cap) = provider.max_concurrency {
            let in_flight = self.in_flight(&provider.id);
            if in_flight >= u64::from(cap) {
                return Err(Blocked::Busy { in_flight });
            }
        }
        let mut head = Headroom {
            fraction: 1.0,
            requests_left_today: None,
            tokens_left_today: None,
        };
        let mut scopes = vec![Limited {
            whose: model.id.clone(),
            limits: &model.limits,
            counts: self.model_use(provider, &model.id, key_fp),
        }];
        for pool in provider.pools.iter().filter(|p| p.covers(&model.id)) {
            scopes.push(Limited {
                whose: format!("pool {}", pool.id),
                limits: &pool.limits,
                counts: self.scope_use(provider, |m| pool.covers(m), key_fp),
            });
        }
        for s in scopes {
            for limit in s.limits {
                let max = self.effective(&provider.id, &model.id, limit);
                let i = widx(limit.window);
                let (used, want) = match (limit.axis, limit.window) {
                    (Axis::Requests, _) => (s.counts.requests[i], 1),
                    (Axis::Tokens, Window::Minute) => (s.counts.tokens[i], need.minute_tokens),
                    (Axis::Tokens, _) => (s.counts.tokens[i], need.tokens),
                };
                if used.saturating_add(want) > max {
                    let frees_at = next_reset(limit.window, limit.reset, self.now)
                        .or(s.counts.leaves_at[i])
                        .or(Some(self.now + 1000));
                    return Err(Blocked::Full {
                        limit: format!("{} of {}", limit.key(), s.whose),
                        used,
                        max,
                        frees_at,
                    });
                }
                let left = max - used;
                head.fraction = head.fraction.min(left as f64 / max.max(1) as f64);
                // What is left "today" is bounded by the day's and the month's remainder;
                // minute and hour limits are rates, not a daily allowance.
                if limit.window >= Window::Day {
                    let slot = match limit.axis {
                        Axis::Requests => &mut head.requests_left_today,
                        Axis::Tokens => &mut head.tokens_left_today,
                    };
                    *slot = Some(slot.map_or(left, |s: u64| s.min(left)));
                }
            }
        }
        Ok(head)
    }

    /// The estimated share of good answers of a model for a task type (the
    /// prior when there is no record).
    pub(crate) fn quality(&self, provider: &str, model: &str, task_type: &str) -> f64 {
        self.verdicts
            .get(&(provider.to_owned(), model.to_owned(), task_type.to_owned()))
            .map_or_else(prior_estimate, |t| t.estimate(self.now))
    }

    /// How a model's answers fared over every task type: (good share, verdicts), if judged.
    pub(crate) fn judged(&self, provider: &str, model: &str) -> Option<(f64, f64)> {
        let mut all = Tally::default();
        for ((p, m, _), t) in &self.verdicts {
            if p == provider && m == model {
                let t = t.at(self.now);
                all.passes += t.passes;
                all.fails += t.fails;
            }
        }
        let weight = all.weight(self.now);
        (weight >= 0.5).then(|| (all.passes / weight, weight))
    }

    /// Conservative token estimate for a text of `chars` estimate units sent to `provider`.
    pub(crate) fn estimate_tokens(&self, provider: &str, chars: usize) -> u64 {
        // Default: one token per 3 characters (code runs denser than prose);
        // a provider's observed ratio, plus 15%, when higher.
        let seen = self.tokens_per_char.get(provider).copied().unwrap_or(0.0) * 1.15;
        let ratio = seen.max(1.0 / 3.0);
        (chars as f64 * ratio).ceil() as u64 + 8
    }
}

/// The length the token estimate works from: ASCII characters count once,
/// others three times. Tokenizers spend about a token per 3-4 ASCII
/// characters but often one or more per CJK character or emoji, so a plain
/// character count would under-reserve for those prompts.
pub(crate) fn token_weight(text: &str) -> usize {
    let ascii = text.bytes().filter(u8::is_ascii).count();
    ascii + 3 * (text.chars().count() - ascii)
}

/// The UTC date of an instant, `2026-12-02`.
pub(crate) fn day(t: Millis) -> String {
    let mut s = iso(t.div_euclid(1000));
    s.truncate(10);
    s
}

/// Unix seconds as ISO 8601 UTC, `2026-12-02T11:00:00Z`.
pub(crate) fn iso(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0).map_or_else(
        || secs.to_string(),
        |d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

/// A duration in seconds as "in 2h 5m" / "5m ago".
pub(crate) fn relative(secs: i64) -> String {
    let a = secs.unsigned_abs();
    let text = if a >= 86_400 {
        format!("{}d {}h", a / 86_400, (a % 86_400) / 3600)
    } else if a >= 3600 {
        format!("{}h {}m", a / 3600, (a % 3600) / 60)
    } else if a >= 60 {
        format!("{}m", a / 60)
    } else {
        format!("{a}s")
    };
    if secs >= 0 {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    pub(crate) fn ms(rfc3339: &str) -> Millis {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    fn provider(limits: &str, pool: &str) -> Provider {
        let text = format!(
            "[providers.p]\nbase_url = \"https://p.example/v1\"\n{pool}\n[providers.p.models.a]\ncontext = 8192\nlimits = {{ {limits} }}\n[providers.p.models.b]\ncontext = 8192\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let cat = config::load_from(Some(&path), &|_| None);
        assert!(cat.problems.is_empty(), "{:?}", cat.problems);
        cat.provider("p").unwrap().clone()
    }

    fn used(p: &str, m: &str, requests: u64, tokens: u64) -> (UseKey, Counts) {
        (
            (p.into(), m.into(), "k".into()),
            Counts {
                requests: [requests; 4],
                tokens: [tokens; 4],
                leaves_at: [Some(30_000); 4],
                in_flight: 0,
            },
        )
    }

    #[test]
    fn fixed_day_rolls_at_pacific_midnight() {
        let tz = Reset::Midnight(Zone::new("America/Los_Angeles").unwrap());
        // 07:59 UTC on 2026-11-24 is 23:59 PST on the 23rd.
        let before = ms("2026-11-24T07:59:00Z");
        assert_eq!(
            window_start(Window::Day, tz, before),
            ms("2026-11-23T08:00:00Z")
        );
        assert_eq!(
            next_reset(Window::Day, tz, before),
            Some(ms("2026-11-24T08:00:00Z"))
        );
        let after = ms("2026-11-24T08:00:00Z");
        assert_eq!(window_start(Window::Day, tz, after), after);
        let utc = Reset::Midnight(Zone::new("UTC").unwrap());
        assert_eq!(
            window_start(Window::Month, utc, ms("2026-12-31T23:00:00Z")),
            ms("2026-12-01T00:00:00Z")
        );
        assert_eq!(
            next_reset(Window::Month, utc, ms("2026-12-31T23:00:00Z")),
            Some(ms("2027-01-01T00:00:00Z"))
        );
        assert_eq!(
            window_start(Window::Day, Reset::Rolling, after),
            after - 86_400_000
        );
        // Minutes and hours never take a fixed reset.
        assert_eq!(window_start(Window::Minute, utc, after), after - 60_000);
    }

    /// The one rule, as a table: (limits, use of a, use of b, need) -> verdict.
    #[test]
    fn check_applies_every_limit_and_pool() {
        let pool = "[providers.p.pools.acct]\nlimits = { rpm = 3 }\n";
        type Case<'a> = (
            &'a str,
            &'a str,
            (u64, u64),
            (u64, u64),
            Need,
            Result<(), &'a str>,
        );
        let cases: [Case; 7] = [
            ("rpm = 2", "", (1, 0), (0, 0), Need::flat(1), Ok(())),
            (
                "rpm = 2",
                "",
                (2, 0),
                (0, 0),
                Need::flat(1),
                Err("rpm of a"),
            ),
            ("tpm = 1000", "", (1, 600), (0, 0), Need::flat(300), Ok(())),
            (
                "tpm = 1000",
                "",
                (1, 600),
                (0, 0),
                Need::flat(600),
                Err("tpm of a"),
            ),
            // A provider that counts max_tokens: the minute window sees more.
            (
                "tpm = 1000, tpd = 5000",
                "",
                (1, 600),
                (0, 0),
                Need {
                    tokens: 100,
                    minute_tokens: 500,
                },
                Err("tpm of a"),
            ),
            (
                "rpm = 100",
                pool,
                (2, 0),
                (1, 0),
                Need::flat(1),
                Err("rpm of pool acct"),
            ),
            ("rpm = 100", pool, (1, 0), (1, 0), Need::flat(1), Ok(())),
        ];
        for (limits, pool, (ar, at), (br, bt), need, want) in cases {
            let p = provider(limits, pool);
            let snap = UsageSnapshot {
                now: 1_000,
                usage: [used("p", "a", ar, at), used("p", "b", br, bt)]
                    .into_iter()
                    .collect(),
                ..Default::default()
            };
            let got = snap.check(&p, &p.models[0], "k", need);
            match (want, got) {
                (Ok(()), Ok(_)) => {}
                (
                    Err(whose),
                    Err(Blocked::Full {
                        limit, frees_at, ..
                    }),
                ) => {
                    assert_eq!(limit, whose, "{limits} {pool}");
                    assert_eq!(frees_at, Some(30_000), "when the oldest use leaves");
                }
                (want, got) => panic!("{limits} {pool}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn learned_limits_only_lower_and_benches_cover_their_scope() {
        let p = provider("tpm = 5000", "");
        let a = &p.models[0];
        let mut snap = UsageSnapshot::default();
        snap.learned
            .insert(("p".into(), "a".into(), "tpm".into()), 3000);
        assert!(snap.check(&p, a, "k", Need::flat(2900)).is_ok());
        assert!(matches!(
            snap.check(&p, a, "k", Need::flat(3100)),
            Err(Blocked::Full { max: 3000, .. })
        ));
        snap.learned
            .insert(("p".into(), "a".into(), "tpm".into()), 9000);
        assert!(matches!(
            snap.check(&p, a, "k", Need::flat(5100)),
            Err(Blocked::Full { max: 5000, .. })
        ));
        snap.cooldowns.push(Cooldown {
            scope: Scope::key("p", "k"),
            until: 5_000,
            stated: true,
            reason: "429 rate limited".into(),
            strikes: 1,
        });
        assert!(matches!(
            snap.check(&p, a, "k", Need::flat(1)),
            Err(Blocked::Benched { until: 5_000, .. })
        ));
        assert!(snap.check(&p, a, "other", Need::flat(1)).is_ok());
    }

    #[test]
    fn estimates_are_conservative_and_calibrate_upward() {
        let mut snap = UsageSnapshot::default();
        assert_eq!(snap.estimate_tokens("p", 3000), 1008);
        snap.tokens_per_char.insert("p".into(), 0.5);
        assert!(snap.estimate_tokens("p", 3000) > 1700);
        snap.tokens_per_char.insert("p".into(), 0.1);
        assert_eq!(
            snap.estimate_tokens("p", 3000),
            1008,
            "never below the default"
        );
    }

    #[test]
    fn non_ascii_text_weighs_more_for_the_estimate() {
        assert_eq!(token_weight("hello"), 5);
        assert_eq!(token_weight("日本語"), 9, "about a token per character");
        assert_eq!(token_weight("a€"), 4);
    }
}
