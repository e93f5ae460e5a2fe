//! The failure policy: what a failed attempt rules out, whether it counts
//! upstream, and how long it benches, as plain values.
//!
//! `upstream` classifies an answer into a [`Failure`]; the failover loop asks
//! it for the [`Scope`] to skip for the rest of the call and the [`Bench`] to
//! record; the store turns a bench's [`Backoff`] into a length from the
//! strikes it has seen, inside its own transaction. No closure crosses a
//! boundary: everything here is data.

use std::time::Duration;

use super::Scope;

/// How an attempt failed. Each variant knows its scope and bench.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Failure {
    /// 429 or an equivalent: slow down.
    RateLimited {
        /// Provider-stated wait (Retry-After, a reset header, a body hint).
        retry_after: Option<Duration>,
        /// The message speaks of a daily or free allocation.
        daily: bool,
        /// A limit the message states unambiguously: (limit key like "tpm", value).
        learned: Option<(&'static str, u64)>,
    },
    /// 401, or a 400 that says the key is invalid.
    Unauthorized,
    /// 402: out of credit.
    PaymentRequired,
    /// 403: this key may not use this model (tier, region).
    Forbidden,
    /// The provider says it no longer serves this model to this key (410,
    /// "decommissioned", "not in your subscription tier", 402 "no credits",
    /// a 404 naming the model): see `quota::gone`. Only a `definite` one
    /// marks it gone at once; another needs a second word.
    Gone {
        /// Definite on its own (everything but a 404-like "not found").
        definite: bool,
    },
    /// A 404 that names no model (a wrong path, a proxy's page).
    NotFound,
    /// 413 or a context-length message: the prompt is too big for this model.
    ContextTooLong,
    /// Another 4xx: the request is not acceptable to this model.
    Rejected(u16),
    /// 5xx.
    Server(u16),
    /// No response headers in time.
    FirstByteTimeout,
    /// The body stopped arriving, or the attempt ran out of time.
    Stalled,
    /// The connection never opened (refused, unreachable, connect timeout):
    /// the request was not sent, so the provider counted nothing.
    Connect,
    /// The connection broke after the request was sent (reset, a body cut
    /// short): the provider may have counted it.
    Broken,
    /// A 200 whose body is not a completion (HTML, cut-off JSON, an error object).
    BadBody,
    /// A completion with no text, or degenerate text.
    Empty,
}

/// How long a bench lasts, given how many times its scope failed recently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backoff {
    /// Always this long.
    Fixed(Duration),
    /// `base`, doubled per prior strike up to `max_doublings` times, never past `cap`.
    Doubling {
        /// The first bench.
        base: Duration,
        /// How many doublings at most.
        max_doublings: u32,
        /// The longest bench.
        cap: Duration,
    },
    /// No bench until the scope has failed `strikes` times before, then `len`.
    AfterStrikes {
        /// Prior strikes needed.
        strikes: u32,
        /// The bench then.
        len: Duration,
    },
}

impl Backoff {
    /// The bench's length after `strikes` recent failures of the same scope, if any.
    pub(crate) fn length(&self, strikes: u32) -> Option<Duration> {
        match *self {
            Backoff::Fixed(d) => Some(d),
            Backoff::Doubling {
                base,
                max_doublings,
                cap,
            } => Some(
                base.saturating_mul(1u32 << strikes.min(max_doublings).min(16))
                    .min(cap),
            ),
            Backoff::AfterStrikes { strikes: n, len } => (strikes >= n).then_some(len),
        }
    }
}

/// A bench to record: what, why, how long, and on whose word.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Bench {
    /// What it keeps out.
    pub(crate) scope: Scope,
    /// A short label (never provider text).
    pub(crate) reason: String,
    /// Its length by strikes.
    pub(crate) backoff: Backoff,
    /// The provider stated it (a success does not end it early).
    pub(crate) stated: bool,
}

const MIN: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

impl Failure {
    /// What to leave out for the rest of this call (and bench, when it benches).
    pub(crate) fn scope(&self, provider: &str, model: &str, key: &str) -> Scope {
        match self {
            Failure::RateLimited { .. } | Failure::Unauthorized | Failure::PaymentRequired => {
                Scope::key(provider, key)
            }
            Failure::Forbidden | Failure::Gone { .. } => Scope::model_key(provider, model, key),
            Failure::NotFound
            | Failure::ContextTooLong
            | Failure::Rejected(_)
            | Failure::BadBody
            | Failure::Empty => Scope::model(provider, model),
            Failure::Server(_)
            | Failure::FirstByteTimeout
            | Failure::Stalled
            | Failure::Connect
            | Failure::Broken => Scope::provider(provider),
        }
    }

    /// Whether the provider may have counted the request: everything but a
    /// connection that never opened. Such attempts are committed as requests.
    pub(crate) fn reached(&self) -> bool {
        !matches!(self, Failure::Connect)
    }

    /// Whether the provider may have processed the prompt (so its tokens count).
    pub(crate) fn read_prompt(&self) -> bool {
        matches!(
            self,
            Failure::FirstByteTimeout
                | Failure::Stalled
                | Failure::Broken
                | Failure::BadBody
                | Failure::Empty
        )
    }

    /// How long to keep its scope out of later calls, if at all. A wait the
    /// provider stated is trusted, but never past `cap` (see `stated_wait_cap`).
    pub(crate) fn backoff(&self, cap: Duration) -> Option<(Backoff, bool)> {
        let guessed = |b: Backoff| Some((b, false));
        match self {
            Failure::RateLimited {
                retry_after: Some(d),
                ..
            } => Some((
                Backoff::Fixed((*d).max(Duration::from_secs(1)).min(cap)),
                true,
            )),
            Failure::RateLimited { daily: true, .. } => guessed(Backoff::Fixed(60 * MIN)),
            // 90 s, doubling on repeats, capped at 10 minutes.
            Failure::RateLimited { .. } => guessed(Backoff::Doubling {
                base: Duration::from_secs(90),
                max_doublings: 3,
                cap: 10 * MIN,
            }),
            Failure::Unauthorized => guessed(Backoff::Fixed(10 * MIN)),
            Failure::PaymentRequired | Failure::Forbidden => guessed(Backoff::Fixed(DAY)),
            Failure::NotFound => guessed(Backoff::Doubling {
                base: 60 * MIN,
                max_doublings: 4,
                cap: DAY,
            }),
            Failure::Server(_) | Failure::Broken => guessed(Backoff::Doubling {
                base: Duration::from_secs(20),
                max_doublings: 4,
                cap: 10 * MIN,
            }),
            // A hang costs a whole first-byte budget each time it is met:
            // keep the provider out long enough that it is not met again
            // soon, longer on each repeat (5, 10, 20, 40 minutes).
            Failure::FirstByteTimeout | Failure::Stalled => guessed(Backoff::Doubling {
                base: 5 * MIN,
                max_doublings: 3,
                cap: 40 * MIN,
            }),
            // Down or firewalled: cheap to meet (the connect budget), but
            // unlikely to be back within seconds.
            Failure::Connect => guessed(Backoff::Doubling {
                base: 2 * MIN,
                max_doublings: 4,
                cap: 30 * MIN,
            }),
            Failure::Empty | Failure::BadBody => guessed(Backoff::AfterStrikes {
                strikes: 2,
                len: 5 * MIN,
            }),
            // Not a wait: a mark until the catalog changes (`quota::gone`).
            Failure::Gone { .. } | Failure::ContextTooLong | Failure::Rejected(_) => None,
        }
    }

    /// The bench this failure asks for on a candidate, if any.
    pub(crate) fn bench(
        &self,
        provider: &str,
        model: &str,
        key: &str,
        cap: Duration,
    ) -> Option<Bench> {
        let (backoff, stated) = self.backoff(cap)?;
        Some(Bench {
            scope: self.scope(provider, model, key),
            reason: self.label(),
            backoff,
            stated,
        })
    }

    /// A short label for logs and the ledger.
    pub(crate) fn label(&self) -> String {
        match self {
            Failure::RateLimited { daily: true, .. } => "429 daily quota".into(),
            Failure::RateLimited { .. } => "429 rate limited".into(),
            Failure::Unauthorized => "401 key rejected".into(),
            Failure::PaymentRequired => "402 out of credit".into(),
            Failure::Forbidden => "403 not allowed for this key".into(),
            Failure::Gone { definite: true } => "model gone upstream".into(),
            Failure::Gone { definite: false } => "model not found".into(),
            Failure::NotFound => "404 not found".into(),
            Failure::ContextTooLong => "prompt too long for the model".into(),
            Failure::Rejected(s) => format!("{s} request rejected"),
            Failure::Server(s) => format!("{s} server error"),
            Failure::FirstByteTimeout => "timeout waiting for the answer".into(),
            Failure::Stalled => "answer stalled".into(),
            Failure::Connect => "could not connect".into(),
            Failure::Broken => "connection broke".into(),
            Failure::BadBody => "unreadable answer".into(),
            Failure::Empty => "empty answer".into(),
        }
    }
}

/// The longest wait a provider may impose by its own word: its longest
/// window (at least a day, since daily quotas are common and not always in
/// the catalog), and never more than 31 days.
pub(crate) fn stated_wait_cap(longest: Option<crate::config::Window>) -> Duration {
    let longest = longest.map_or(0, super::window_len) as u64;
    Duration::from_millis(longest.clamp(86_400_000, 31 * 86_400_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each class, as a table: (failure, scope, bench for strikes 0, 3, 9, stated).
    #[test]
    fn every_class_has_its_scope_and_bench() {
        let secs = Duration::from_secs;
        let limited = |retry_after, daily| Failure::RateLimited {
            retry_after,
            daily,
            learned: None,
        };
        type Row = (Failure, &'static str, [Option<u64>; 3], bool);
        let rows: Vec<Row> = vec![
            (
                limited(Some(secs(17)), false),
                "p key k",
                [Some(17), Some(17), Some(17)],
                true,
            ),
            (
                limited(Some(secs(10_000_000)), false),
                "p key k",
                [Some(86_400); 3],
                true,
            ),
            (limited(None, true), "p key k", [Some(3600); 3], false),
            (
                limited(None, false),
                "p key k",
                [Some(90), Some(600), Some(600)],
                false,
            ),
            (Failure::Unauthorized, "p key k", [Some(600); 3], false),
            (
                Failure::PaymentRequired,
                "p key k",
                [Some(86_400); 3],
                false,
            ),
            (Failure::Forbidden, "p/m key k", [Some(86_400); 3], false),
            (
                Failure::Gone { definite: true },
                "p/m key k",
                [None; 3],
                false,
            ),
            (
                Failure::Gone { definite: false },
                "p/m key k",
                [None; 3],
                false,
            ),
            (
                Failure::NotFound,
                "p/m",
                [Some(3600), Some(28_800), Some(57_600)],
                false,
            ),
            (Failure::ContextTooLong, "p/m", [None; 3], false),
            (Failure::Rejected(422), "p/m", [None; 3], false),
            (
                Failure::Server(503),
                "p",
                [Some(20), Some(160), Some(320)],
                false,
            ),
            (
                Failure::Connect,
                "p",
                [Some(120), Some(960), Some(1800)],
                false,
            ),
            (
                Failure::FirstByteTimeout,
                "p",
                [Some(300), Some(2400), Some(2400)],
                false,
            ),
            (Failure::Empty, "p/m", [None, Some(300), Some(300)], false),
        ];
        let cap = stated_wait_cap(Some(crate::config::Window::Day));
        for (f, scope, lengths, stated) in rows {
            assert_eq!(f.scope("p", "m", "k").to_string(), scope, "{f:?}");
            for (strikes, want) in [0, 3, 9].into_iter().zip(lengths) {
                let got = f.backoff(cap).and_then(|(b, _)| b.length(strikes));
                assert_eq!(got.map(|d| d.as_secs()), want, "{f:?} at {strikes} strikes");
            }
            if let Some((_, s)) = f.backoff(cap) {
                assert_eq!(s, stated, "{f:?}");
            }
        }
        assert!(!Failure::Connect.reached() && Failure::Broken.reached());
    }

    #[test]
    fn a_stated_wait_is_capped_by_the_providers_longest_window() {
        use crate::config::Window;
        assert_eq!(stated_wait_cap(None).as_secs(), 86_400);
        assert_eq!(stated_wait_cap(Some(Window::Minute)).as_secs(), 86_400);
        assert_eq!(stated_wait_cap(Some(Window::Month)).as_secs(), 30 * 86_400);
    }
}
