//! The one failover loop, shared by `delegate`, every `fanout` task and the CLI.
//!
//! Each round: snapshot the store, let the router rank the candidates, lease
//! the best one that still has room, send it upstream, commit what happened.
//! A failure excludes its scope for the rest of the call and the loop goes on
//! within the attempt and time budgets; when nothing can serve, it waits if
//! capacity returns soon enough, else explains per candidate.
//!
//! The loop touches the world only through its seams ([`Ctx`]): a store, an
//! upstream and a clock, so every branch runs in tests without a network,
//! a file or a real second.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;

use super::seams::{Clock, Upstream};
use super::{Attempt, Error, Served, Wrote};
use crate::config::{Catalog, Provider, Window};
use crate::gate;
use crate::quota::{self, Bench, Failure, GoneReport, Millis, Need};
use crate::router::{self, Candidate, Excluded, Rejection, Selector};
use crate::store::{AttemptRecord, Lease, SharedStore, Slot};
use crate::upstream::{ChatRequest, Completion, Target};

/// Longest answer returned, in characters.
pub(crate) const MAX_ANSWER_CHARS: usize = 80_000;

/// What the loop needs from the world.
pub(crate) struct Ctx<'a> {
    /// The catalog, keys resolved.
    pub(crate) catalog: Arc<Catalog>,
    /// The ledger.
    pub(crate) store: SharedStore,
    /// The provider call.
    pub(crate) upstream: &'a dyn Upstream,
    /// Time.
    pub(crate) clock: &'a dyn Clock,
    /// Turns so equal candidates share the load.
    pub(crate) rotation: &'a AtomicU64,
    /// Progress notes for whoever waits (attempt N, failing over, waiting).
    pub(crate) progress: &'a (dyn Fn(String) + Send + Sync),
    /// What an answer must pass before it is served, if anything.
    pub(crate) verify: Option<&'a dyn Verify>,
}

/// A check an answer must pass (see `checks`): its verdict, and the answer
/// to serve (a code block's inside, say), and where it was written when the
/// check needed the file written first.
pub(crate) trait Verify: Send + Sync {
    /// `Err` says briefly why the answer was rejected.
    fn verify<'a>(&'a self, answer: &'a str) -> BoxFuture<'a, Result<Verified, String>>;
}

/// An answer that passed its check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    /// What to serve.
    pub(crate) text: String,
    /// Where it was written, when writing was part of the check.
    pub(crate) wrote: Option<Wrote>,
}

/// One call, ready to route: what goes to the provider and what may serve it.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    /// The request as sent.
    pub(crate) chat: ChatRequest,
    /// Which models may serve it.
    pub(crate) selector: Selector,
    /// The task's type, for the verdicts (`any` when not given).
    pub(crate) task_type: String,
}

/// A lease that is given back if nobody commits it (the call was cancelled):
/// it then counts as a request made, since it most likely went out.
struct LeaseGuard {
    store: SharedStore,
    lease: Option<Lease>,
    now: Millis,
}

impl LeaseGuard {
    fn take(mut self) -> Lease {
        self.lease.take().unwrap_or(Lease {
            id: -1,
            provider: String::new(),
            model: String::new(),
            key_fp: String::new(),
        })
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        // Off this (possibly cancelled) task: the store may wait on a lock.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let store = self.store.clone();
            let now = self.now;
            handle.spawn(async move {
                if let Err(e) = store.release(lease, now).await {
                    tracing::warn!(
                        "could not release a lease; it will expire: {}",
                        super::texts::full(&e)
                    );
                }
            });
        }
    }
}

/// Runs one call through the pool.
#[allow(
    clippy::too_many_lines,
    reason = "the loop reads top to bottom as its steps; the steps that stand alone are functions"
)]
pub(crate) async fn run(ctx: &Ctx<'_>, call: &Call) -> Result<Served, Error> {
    let catalog = &ctx.catalog;
    let settings = &catalog.settings;
    let started = ctx.clock.now();
    let deadline = started + settings.call_timeout.as_millis() as i64;
    let mut rreq = router::Request {
        selector: call.selector.clone(),
        prompt_chars: call.chat.weight(),
        max_tokens: call.chat.max_tokens,
        output_reserve: settings.output_reserve,
        avoid_families: Vec::new(),
        task_type: call.task_type.clone(),
    };
    let mut checks_failed = 0u32;
    let usable: Vec<usize> = catalog
        .providers
        .iter()
        .enumerate()
        .filter(|(_, p)| router::is_usable(p))
        .map(|(i, _)| i)
        .collect();
    let mut excluded: Vec<Excluded> = Vec::new();
    let mut attempts: Vec<Attempt> = Vec::new();
    let mut idle_rounds = 0u32;
    loop {
        if attempts.len() as u32 >= settings.max_attempts {
            return Err(Error::Exhausted {
                attempts,
                timed_out: false,
            });
        }
        let now = ctx.clock.now();
        if now >= deadline {
            return Err(Error::Exhausted {
                attempts,
                timed_out: true,
            });
        }
        let snap = ctx
            .store
            .snapshot(catalog.clone(), usable.clone(), now)
            .await?;
        let rotation = ctx.rotation.fetch_add(1, Ordering::Relaxed);
        let plan = router::plan(catalog, &rreq, &snap, &excluded, rotation);
        let (leased, lost) = lease_first(ctx, &plan, now).await?;
        let Some((cand, guard)) = leased else {
            // Nothing free now. Wait if capacity returns soon enough, else explain.
            let now = ctx.clock.now();
            let limit = (now + settings.max_wait.as_millis() as i64).min(deadline);
            if idle_rounds < 400
                && let Some(until) = worth_waiting(&plan, now, limit)
            {
                idle_rounds += 1;
                let wait = (until - now).clamp(50, 5_000);
                if idle_rounds == 1 || wait >= 1_000 {
                    let when = super::texts::when(until, now);
                    (ctx.progress)(format!("no capacity now; waiting until {when}"));
                }
                ctx.clock.sleep(Duration::from_millis(wait as u64)).await;
                continue;
            }
            // Answers came but none passed: that is the story to tell.
            if checks_failed > 0 {
                return Err(Error::ChecksFailed { attempts });
            }
            let mut rejected = plan.rejected;
            rejected.extend(lost);
            let soonest = rejected.iter().filter_map(|r| r.frees_at).min();
            return Err(Error::NoCandidate {
                rejected,
                attempts,
                soonest,
                now,
            });
        };
        (ctx.progress)(format!("attempt {} on {}", attempts.len() + 1, cand.id()));
        let t0 = ctx.clock.now();
        let outcome = send(ctx, &call.chat, &cand, deadline - t0).await;
        let now = ctx.clock.now();
        let ms = (now - t0).max(0) as u64;
        match outcome {
            Ok(done) => {
                let (rec, prompt_tokens, completion_tokens, estimated) =
                    success_record(&cand, &done, rreq.prompt_chars);
                // The provider served: the request counts whatever the check says.
                commit(ctx, guard, rec, now).await;
                // A secret in the answer never reaches Claude, a check or a file.
                let (answer, redacted) = gate::redact(&done.text);
                if redacted > 0 {
                    tracing::warn!(model = %cand.id(), redacted, "secrets redacted from an answer");
                }
                let verified = match ctx.verify {
                    None => Ok(Verified {
                        text: answer,
                        wrote: None,
                    }),
                    Some(v) => {
                        let verdict = v.verify(&answer).await;
                        // The router learns which models pass this kind of check.
                        let (p, m) = (cand.provider.id.clone(), cand.model.id.clone());
                        let learned = ctx
                            .store
                            .record_verdict(
                                p,
                                m,
                                call.task_type.clone(),
                                verdict.is_ok(),
                                ctx.clock.now(),
                            )
                            .await;
                        if let Err(e) = learned {
                            tracing::warn!(
                                "could not record a verdict: {}",
                                super::texts::full(&e)
                            );
                        }
                        verdict
                    }
                };
                let verified = match verified {
                    Ok(v) => v,
                    Err(why) => {
                        // Rejected: another model, of another family if there is one.
                        (ctx.progress)(format!(
                            "{}'s answer failed its check ({why}); trying another model",
                            cand.id()
                        ));
                        attempts.push(Attempt {
                            model: cand.id(),
                            outcome: format!("failed check: {why}"),
                            ms,
                        });
                        excluded.push(Excluded {
                            scope: quota::Scope::model(&cand.provider.id, &cand.model.id),
                            reason: "its answer failed the check".into(),
                        });
                        rreq.avoid_families.push(cand.model.family.clone());
                        checks_failed += 1;
                        if checks_failed > settings.max_check_retries {
                            return Err(Error::ChecksFailed { attempts });
                        }
                        continue;
                    }
                };
                attempts.push(Attempt {
                    model: cand.id(),
                    outcome: "ok".into(),
                    ms,
                });
                let reported_model = done
                    .served_model
                    .filter(|m| m != &cand.model.id && !m.ends_with(&cand.model.id));
                return Ok(Served {
                    text: super::texts::cut(verified.text, MAX_ANSWER_CHARS, ""),
                    model: cand.id(),
                    reported_model,
                    prompt_tokens,
                    completion_tokens,
                    estimated,
                    latency_ms: (now - started).max(0) as u64,
                    attempts,
                    truncated: done.finish_reason.as_deref() == Some("length"),
                    trains_on_prompts: cand.provider.trains_on_prompts,
                    decision_id: None,
                    files: Vec::new(),
                    wrote: verified.wrote,
                    saved: 0,
                    redacted: Vec::new(),
                    flags: Vec::new(),
                });
            }
            Err(err) => {
                let failure = with_daily_reset(err.failure, cand.provider, now);
                tracing::info!(model = %cand.id(), outcome = %failure.label(), ms, "attempt failed");
                let (rec, exclusion) = failure_record(&cand, &failure, &err.detail);
                commit(ctx, guard, rec, now).await;
                let outcome = attempt_outcome(&failure, &err.detail);
                (ctx.progress)(format!("{} failed ({outcome}); failing over", cand.id()));
                attempts.push(Attempt {
                    model: cand.id(),
                    outcome,
                    ms,
                });
                excluded.push(exclusion);
                // Part of this answer already went to the caller: another
                // model's answer cannot follow it.
                if call.chat.stream.as_ref().is_some_and(|s| s.started()) {
                    return Err(Error::Exhausted {
                        attempts,
                        timed_out: false,
                    });
                }
            }
        }
    }
}

/// When to look again if nothing could be leased, or `None` to stop and
/// explain: capacity must return before `limit`. A candidate that was free
/// in the snapshot but lost to another process, or a provider busy with
/// requests in flight, is worth another look shortly.
fn worth_waiting(plan: &router::Plan<'_>, now: Millis, limit: Millis) -> Option<Millis> {
    let wake = if !plan.candidates.is_empty() || plan.has_busy() {
        Some(now + 200)
    } else {
        plan.soonest_free()
    };
    wake.filter(|t| (*t).max(now + 50) <= limit)
}

/// One attempt on a leased candidate, within what is left of the call's budget.
async fn send(
    ctx: &Ctx<'_>,
    chat: &ChatRequest,
    cand: &Candidate<'_>,
    left_ms: Millis,
) -> Result<Completion, crate::upstream::AttemptError> {
    let key = cand
        .key_index
        .and_then(|i| cand.provider.keys.get(i))
        .and_then(|k| k.key.as_ref());
    let left = Duration::from_millis(left_ms.max(0) as u64);
    let attempt_timeout = cand.provider.timeout.min(left);
    let target = Target {
        base_url: &cand.provider.base_url,
        model: &cand.model.id,
        key,
        headers: &cand.provider.headers,
        connect_timeout: cand.provider.connect_timeout.min(attempt_timeout),
        first_byte_timeout: cand.provider.first_byte_timeout.min(attempt_timeout),
        attempt_timeout,
    };
    tracing::info!(model = %cand.id(), key = %cand.key_fp, why = %cand.why(), "attempt");
    ctx.upstream.call(&target, chat).await
}

/// Leases the first candidate of `plan` that still has room. Candidates that
/// lost the room to another process since the snapshot come back with why.
async fn lease_first<'c>(
    ctx: &Ctx<'_>,
    plan: &router::Plan<'c>,
    now: Millis,
) -> Result<(Option<(Candidate<'c>, LeaseGuard)>, Vec<Rejection>), Error> {
    let mut lost = Vec::new();
    for cand in &plan.candidates {
        let slot = Slot {
            catalog: ctx.catalog.clone(),
            provider: cand.at.0,
            model: cand.at.1,
            key_fp: cand.key_fp.clone(),
        };
        match ctx.store.lease(slot, cand.need, now).await? {
            Ok(lease) => {
                let guard = LeaseGuard {
                    store: ctx.store.clone(),
                    lease: Some(lease),
                    now,
                };
                return Ok((Some((cand.clone(), guard)), lost));
            }
            Err(blocked) => lost.push(Rejection {
                id: cand.id(),
                frees_at: blocked.frees_at(),
                reason: router::Reason::Blocked(blocked),
            }),
        }
    }
    Ok((None, lost))
}

async fn commit(ctx: &Ctx<'_>, guard: LeaseGuard, rec: AttemptRecord, now: Millis) {
    let lease = guard.take();
    if let Err(e) = ctx.store.commit(lease, rec, now).await {
        tracing::warn!(
            "could not record an attempt in the ledger: {}",
            super::texts::full(&e)
        );
    }
}

/// What a successful attempt puts in the ledger, and the token counts to
/// report (`estimated` when the provider reported no usage).
fn success_record(
    cand: &Candidate<'_>,
    done: &Completion,
    prompt_chars: usize,
) -> (AttemptRecord, u64, u64, bool) {
    let (prompt_tokens, completion_tokens, estimated) = match done.usage {
        Some(u) if u.prompt + u.completion > 0 => (u.prompt, u.completion, false),
        _ => (
            cand.prompt_tokens,
            (done.text.chars().count() as u64).div_ceil(3),
            true,
        ),
    };
    let bench = done.rate.exhausted_for().map(|d| {
        // The answer says a window is now empty: trust it. Providers report
        // these per model (Groq, Cerebras), so bench that model for this key.
        Bench {
            scope: quota::Scope::model_key(&cand.provider.id, &cand.model.id, &cand.key_fp),
            reason: "provider window used up".to_owned(),
            backoff: quota::Backoff::Fixed(d.min(cap(cand.provider))),
            stated: true,
        }
    });
    let used = prompt_tokens + completion_tokens;
    let rec = AttemptRecord {
        reached: true,
        // The minute window keeps what the provider counted on arrival (the
        // lease's reservation) when that is more than what was used.
        need: Need {
            tokens: used,
            minute_tokens: used.max(cand.need.minute_tokens),
        },
        ok: true,
        calibration: (!estimated).then_some((prompt_chars, prompt_tokens)),
        bench,
        learned: None,
        gone: None,
    };
    (rec, prompt_tokens, completion_tokens, estimated)
}

/// The longest wait this provider may impose by its own word.
fn cap(provider: &Provider) -> Duration {
    quota::stated_wait_cap(quota::longest_window(provider))
}

/// What a failed attempt puts in the ledger (its bench, by the failure's
/// class) and what it rules out for the rest of the call.
fn failure_record(
    cand: &Candidate<'_>,
    failure: &Failure,
    detail: &str,
) -> (AttemptRecord, Excluded) {
    let (p, m, k) = (&cand.provider.id, &cand.model.id, &cand.key_fp);
    // A request the provider may have processed counts its prompt (and, in
    // the minute window, what the lease reserved: counted on arrival).
    let (tokens, minute_tokens) = if failure.read_prompt() {
        (
            cand.prompt_tokens,
            cand.need.minute_tokens.max(cand.prompt_tokens),
        )
    } else {
        (0, 0)
    };
    let learned = match failure {
        Failure::RateLimited { learned, .. } => *learned,
        _ => None,
    };
    let rec = AttemptRecord {
        reached: failure.reached(),
        need: Need {
            tokens,
            minute_tokens,
        },
        ok: false,
        calibration: None,
        bench: failure.bench(p, m, k, cap(cand.provider)),
        learned,
        gone: match failure {
            Failure::Gone { definite } => Some(GoneReport {
                scope: failure.scope(p, m, k),
                definite: *definite,
                words: gate::redact(detail).0,
                entry: quota::gone::entry_mark(cand.provider, cand.model),
            }),
            _ => None,
        },
    };
    let exclusion = Excluded {
        scope: failure.scope(p, m, k),
        reason: failure.label(),
    };
    (rec, exclusion)
}

/// An attempt line: the failure, the stated wait, and the provider's words.
fn attempt_outcome(failure: &Failure, detail: &str) -> String {
    let wait = match failure {
        Failure::RateLimited {
            retry_after: Some(d),
            ..
        } => format!(" (retry in {}s)", d.as_secs_f64().ceil() as u64),
        _ => String::new(),
    };
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    };
    format!("{}{wait}{detail}", failure.label())
}

/// A 429 that speaks of a daily quota but states no wait lasts until the
/// provider's day resets, when the catalog says when that is (a fixed midnight).
fn with_daily_reset(f: Failure, provider: &Provider, now: Millis) -> Failure {
    match f {
        Failure::RateLimited {
            retry_after: None,
            daily: true,
            learned,
        } => {
            let until = quota::next_reset(Window::Day, provider.day_reset, now);
            let retry_after = until.map(|t| Duration::from_millis((t - now).max(1000) as u64));
            Failure::RateLimited {
                retry_after,
                daily: true,
                learned,
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daily_quota_lasts_until_the_providers_midnight() {
        let cat = crate::config::load_from(None, &|_| None);
        let google = cat.provider("google").unwrap();
        // 2026-11-24T07:00:00Z is 23:00 in Los Angeles: an hour to the reset.
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-24T07:00:00Z")
            .unwrap()
            .timestamp_millis();
        let daily = || Failure::RateLimited {
            retry_after: None,
            daily: true,
            learned: None,
        };
        match with_daily_reset(daily(), google, now) {
            Failure::RateLimited {
                retry_after: Some(d),
                ..
            } => assert_eq!(d, Duration::from_secs(3600)),
            other => panic!("{other:?}"),
        }
        // A rolling provider keeps the guessed back-off.
        let groq = cat.provider("groq").unwrap();
        assert!(matches!(
            with_daily_reset(daily(), groq, now),
            Failure::RateLimited {
                retry_after: None,
                ..
            }
        ));
    }
}
