//! The failover loop in-process: a scripted upstream, the in-memory store and
//! a manual clock, so every branch runs without a network, a file or a real
//! second. Each test is a table of cases.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;

use super::*;
use crate::quota::Failure;
use crate::store::memory::MemoryStore;
use crate::upstream::{AttemptError, Completion, RateHeaders, Target, Usage};

const T0: Millis = 1_795_000_000_000;

/// What the scripted upstream does with one call.
#[derive(Debug, Clone)]
enum Step {
    Answer(&'static str),
    Fail(Failure),
    /// Takes this long (the clock moves), then answers.
    Slow(Duration),
    /// Takes this long, then fails.
    SlowFail(Duration, Failure),
}

/// A provider that follows a script per base URL, then answers.
#[derive(Default)]
struct Scripted {
    steps: Mutex<HashMap<String, VecDeque<Step>>>,
    calls: Mutex<Vec<String>>,
    clock: Option<Arc<ManualClock>>,
}

impl Scripted {
    fn with_clock(clock: Arc<ManualClock>) -> Scripted {
        Scripted {
            clock: Some(clock),
            ..Default::default()
        }
    }

    fn script(&self, provider: &str, steps: impl IntoIterator<Item = Step>) {
        self.steps
            .lock()
            .unwrap()
            .entry(provider.into())
            .or_default()
            .extend(steps);
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Upstream for Scripted {
    fn call<'a>(
        &'a self,
        target: &'a Target<'a>,
        _req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, AttemptError>> {
        // Provider ids are the URLs' host part: https://ID.example/v1.
        let id = target
            .base_url
            .trim_start_matches("https://")
            .split('.')
            .next()
            .unwrap()
            .to_owned();
        self.calls
            .lock()
            .unwrap()
            .push(format!("{id}/{}", target.model));
        let step = self
            .steps
            .lock()
            .unwrap()
            .get_mut(&id)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Step::Answer("ok"));
        Box::pin(async move {
            let answer = |text: &str| {
                Ok(Completion {
                    text: format!("{text} from {id}"),
                    usage: Some(Usage {
                        prompt: 10,
                        completion: 5,
                    }),
                    served_model: None,
                    finish_reason: Some("stop".into()),
                    rate: RateHeaders::default(),
                })
            };
            match step {
                Step::Answer(t) => answer(t),
                Step::Slow(d) => {
                    if let Some(c) = &self.clock {
                        c.advance(d);
                    }
                    answer("slow")
                }
                Step::Fail(failure) => Err(AttemptError {
                    failure,
                    detail: String::new(),
                    rate: RateHeaders::default(),
                }),
                Step::SlowFail(d, failure) => {
                    if let Some(c) = &self.clock {
                        c.advance(d);
                    }
                    Err(AttemptError {
                        failure,
                        detail: String::new(),
                        rate: RateHeaders::default(),
                    })
                }
            }
        })
    }
}

/// Providers `pa` (preferred) and `pb`, one model `m` each, with these limits.
fn catalog(settings: &str, pa_limits: &str, pb_limits: &str) -> Catalog {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let provider = |id: &str, priority: i32, limits: &str| {
        format!(
            "[providers.{id}]\nbase_url = \"https://{id}.example/v1\"\nkey_env = [\"KEY_{id}\"]\npriority = {priority}\n[providers.{id}.models.m]\nfamily = \"fam\"\ncontext = 32000\nlimits = {{ {limits} }}\n"
        )
    };
    let text = format!(
        "[settings]\n{settings}\n{}{}",
        provider("pa", 10, pa_limits),
        provider("pb", 0, pb_limits)
    );
    std::fs::write(&path, text).unwrap();
    let mut cat = crate::config::load_from(Some(&path), &|n| {
        n.starts_with("KEY_").then(|| format!("secret-{n}"))
    });
    assert!(cat.problems.is_empty(), "{:?}", cat.problems);
    cat.providers.retain(|p| p.id == "pa" || p.id == "pb");
    cat
}

struct Rig {
    engine: Engine,
    store: MemoryStore,
    upstream: Arc<Scripted>,
    clock: Arc<ManualClock>,
    notes: Arc<Mutex<Vec<String>>>,
}

fn rig(cat: Catalog) -> Rig {
    let store = MemoryStore::default();
    let clock = Arc::new(ManualClock::new(T0));
    let upstream = Arc::new(Scripted::with_clock(clock.clone()));
    let engine = Engine::new(cat, std::env::temp_dir()).with_seams(
        Arc::new(store.clone()),
        upstream.clone(),
        clock.clone(),
    );
    Rig {
        engine,
        store,
        upstream,
        clock,
        notes: Arc::default(),
    }
}

impl Rig {
    async fn delegate(&self) -> Result<Served, Error> {
        let notes = self.notes.clone();
        let note = move |m: String| notes.lock().unwrap().push(m);
        let req = DelegateRequest {
            prompt: "convert this".into(),
            ..Default::default()
        };
        self.engine.delegate(req, &note).await
    }
}

/// Every failure class on the preferred provider: the call fails over to the
/// other one, the attempt line names the class, and what counts upstream is
/// counted (a connection that never opened is the only thing not counted).
#[tokio::test]
async fn each_failure_class_fails_over_and_counts_what_reached() {
    let limited = Failure::RateLimited {
        retry_after: Some(Duration::from_secs(17)),
        daily: false,
        learned: None,
    };
    let cases = [
        (limited, "429 rate limited (retry in 17s)", true),
        (Failure::Unauthorized, "401 key rejected", true),
        (Failure::PaymentRequired, "402 out of credit", true),
        (Failure::Forbidden, "403 not allowed for this key", true),
        (
            Failure::Gone { definite: true },
            "model gone upstream",
            true,
        ),
        (Failure::Gone { definite: false }, "model not found", true),
        (Failure::NotFound, "404 not found", true),
        (
            Failure::ContextTooLong,
            "prompt too long for the model",
            true,
        ),
        (Failure::Rejected(422), "422 request rejected", true),
        (Failure::Server(503), "503 server error", true),
        (
            Failure::FirstByteTimeout,
            "timeout waiting for the answer",
            true,
        ),
        (Failure::Stalled, "answer stalled", true),
        (Failure::Connect, "could not connect", false),
        (Failure::Broken, "connection broke", true),
        (Failure::BadBody, "unreadable answer", true),
        (Failure::Empty, "empty answer", true),
    ];
    for (failure, label, counted) in cases {
        let r = rig(catalog("", "", ""));
        r.upstream.script("pa", [Step::Fail(failure.clone())]);
        let s = r.delegate().await.unwrap();
        assert_eq!(s.text, "ok from pb", "{failure:?}");
        assert_eq!(s.attempts.len(), 2, "{failure:?}");
        assert_eq!(s.attempts[0].outcome, label);
        assert_eq!(r.store.requests("pa"), usize::from(counted), "{failure:?}");
        assert_eq!(r.store.open_leases(), 0, "{failure:?}: every lease settled");
        let notes = r.notes.lock().unwrap().clone();
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with("pa/m failed (") && n.ends_with("failing over")),
            "{notes:?}"
        );
    }
}

/// The loop's ends, as a table: (settings, limits of pa and pb, script, what happens).
#[tokio::test]
async fn every_way_a_call_can_end() {
    enum Want {
        Served(&'static str, usize),
        Exhausted { attempts: usize, timed_out: bool },
        NoCandidate(&'static str),
    }
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        Vec<(&'static str, Step)>,
        Want,
    );
    let fail = |f: Failure| Step::Fail(f);
    let cases: Vec<Case> = vec![
        ("", "", "", vec![], Want::Served("ok from pa", 1)),
        // Both fail, and two attempts are all that is allowed.
        (
            "max_attempts = 2",
            "",
            "",
            vec![
                ("pa", fail(Failure::Server(500))),
                ("pb", fail(Failure::Server(502))),
            ],
            Want::Exhausted {
                attempts: 2,
                timed_out: false,
            },
        ),
        // The first attempt uses up the call's time budget.
        (
            "call_timeout_secs = 10",
            "",
            "",
            vec![
                ("pa", Step::Slow(Duration::from_secs(11))),
                ("pa", fail(Failure::Server(500))),
            ],
            Want::Served("slow from pa", 1),
        ),
        (
            "call_timeout_secs = 10",
            "",
            "",
            vec![
                ("pa", fail(Failure::Stalled)),
                ("pb", Step::Slow(Duration::from_secs(11))),
            ],
            Want::Served("slow from pb", 2),
        ),
        // Both full, nothing returns in time, no waiting allowed: explained.
        (
            "max_wait_secs = 0",
            "rpm = 0",
            "rpm = 0",
            vec![],
            Want::NoCandidate("rpm of m used up (0/0)"),
        ),
    ];
    for (i, (settings, la, lb, script, want)) in cases.into_iter().enumerate() {
        let r = rig(catalog(settings, la, lb));
        for (p, step) in script {
            r.upstream.script(p, [step]);
        }
        match (r.delegate().await, want) {
            (Ok(s), Want::Served(text, attempts)) => {
                assert_eq!(
                    (s.text.as_str(), s.attempts.len()),
                    (text, attempts),
                    "case {i}"
                );
            }
            (
                Err(Error::Exhausted {
                    attempts,
                    timed_out,
                }),
                Want::Exhausted {
                    attempts: n,
                    timed_out: t,
                },
            ) => {
                assert_eq!((attempts.len(), timed_out), (n, t), "case {i}");
            }
            (Err(e @ Error::NoCandidate { .. }), Want::NoCandidate(text)) => {
                assert!(e.to_string().contains(text), "case {i}: {e}");
            }
            (got, _) => panic!("case {i}: unexpected {got:?}"),
        }
        assert_eq!(r.store.open_leases(), 0, "case {i}");
    }
}

/// The time budget ends a call whose attempts keep failing slowly.
#[tokio::test]
async fn the_time_budget_ends_a_call() {
    let r = rig(catalog("call_timeout_secs = 10\nmax_attempts = 9", "", ""));
    let slow_timeout = || Step::SlowFail(Duration::from_secs(6), Failure::FirstByteTimeout);
    r.upstream.script("pa", [slow_timeout()]);
    r.upstream.script("pb", [slow_timeout()]);
    match r.delegate().await {
        Err(Error::Exhausted {
            attempts,
            timed_out,
        }) => {
            assert!(timed_out);
            assert_eq!(attempts.len(), 2);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.upstream.calls(), ["pa/m", "pb/m"]);
}

/// Waiting for capacity: the only provider is full for a while; within
/// `max_wait` the call waits (saying until when) and then serves.
#[tokio::test]
async fn a_call_waits_for_capacity_that_returns_in_time() {
    let r = rig(catalog("max_wait_secs = 90", "rpm = 1", "rpm = 1"));
    for _ in 0..2 {
        r.delegate().await.unwrap();
    }
    // Both used their minute: the third call waits about a minute, then goes.
    let before = r.clock.now();
    let s = r.delegate().await.unwrap();
    let waited = r.clock.now() - before;
    assert!((55_000..=62_000).contains(&waited), "waited {waited} ms");
    assert_eq!(s.attempts.len(), 1);
    let notes = r.notes.lock().unwrap().clone();
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("no capacity now; waiting until")),
        "{notes:?}"
    );
    // With a shorter max_wait it does not wait at all: it explains.
    let r = rig(catalog("max_wait_secs = 30", "rpm = 1", "rpm = 1"));
    for _ in 0..2 {
        r.delegate().await.unwrap();
    }
    let before = r.clock.now();
    let e = r.delegate().await.unwrap_err();
    assert_eq!(
        r.clock.now(),
        before,
        "no wait when capacity returns too late"
    );
    assert!(e.to_string().contains("capacity returns first"), "{e}");
}

/// Another process takes the slot between snapshot and lease: the loop moves
/// to the next candidate, or tries again shortly, and says so when it must stop.
#[tokio::test]
async fn races_lost_between_snapshot_and_lease() {
    let r = rig(catalog("", "", ""));
    r.store.lose_races(1);
    let s = r.delegate().await.unwrap();
    assert_eq!(s.text, "ok from pb", "the next candidate serves");
    let r = rig(catalog("max_wait_secs = 5", "", ""));
    r.store.lose_races(2);
    let s = r.delegate().await.unwrap();
    assert_eq!(
        s.text, "ok from pa",
        "both lost: wait a moment and try again"
    );
    assert!(r.clock.now() > T0, "it waited");
    let r = rig(catalog("max_wait_secs = 0", "", ""));
    r.store.lose_races(2);
    let e = r.delegate().await.unwrap_err();
    assert!(e.to_string().contains("busy"), "{e}");
}

/// A call dropped mid-flight (the client cancelled) gives its lease back,
/// counted as a request made.
#[tokio::test]
async fn a_cancelled_call_releases_its_lease() {
    struct Hangs;
    impl Upstream for Hangs {
        fn call<'a>(
            &'a self,
            _t: &'a Target<'a>,
            _r: &'a ChatRequest,
        ) -> BoxFuture<'a, Result<Completion, AttemptError>> {
            Box::pin(std::future::pending())
        }
    }
    let store = MemoryStore::default();
    let engine = Engine::new(catalog("", "", ""), std::env::temp_dir()).with_seams(
        Arc::new(store.clone()),
        Arc::new(Hangs),
        Arc::new(ManualClock::new(T0)),
    );
    let req = DelegateRequest {
        prompt: "hang".into(),
        ..Default::default()
    };
    let mut call = Box::pin(engine.delegate(req, &|_| {}));
    let held = async {
        while store.leases_taken() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::select! {
        _ = &mut call => panic!("the call hangs"),
        () = held => {}
    }
    assert_eq!(store.open_leases(), 1, "it holds a lease");
    drop(call);
    // The guard's release runs on the runtime: let it.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(store.open_leases(), 0);
    assert_eq!(store.requests("pa"), 1, "counted as a request made");
}

/// A provider that counts max_tokens on arrival: the lease reserves all of
/// it in the minute window, and a max_tokens over the TPM limit is refused
/// by the capability gate with the reason.
#[tokio::test]
async fn max_tokens_counted_on_arrival_is_reserved_whole() {
    let r = rig(catalog("max_wait_secs = 0", "tpm = 12000", "tpm = 12000"));
    let req = |max_tokens| DelegateRequest {
        prompt: "convert this".into(),
        max_tokens: Some(max_tokens),
        ..Default::default()
    };
    // Each call counts ~4012 tokens on arrival: two fit in 12000 a minute,
    // a third would overshoot. So pa takes two, pb two, and the fifth is refused.
    let mut served = Vec::new();
    for _ in 0..4 {
        served.push(r.engine.delegate(req(4000), &|_| {}).await.unwrap().model);
    }
    assert_eq!(served, ["pa/m", "pa/m", "pb/m", "pb/m"]);
    let e = r.engine.delegate(req(4000), &|_| {}).await.unwrap_err();
    assert!(e.to_string().contains("tpm of m used up"), "{e}");
    assert_eq!(r.upstream.calls().len(), 4);
    let e = r.engine.delegate(req(20_000), &|_| {}).await.unwrap_err();
    assert!(e.to_string().contains("max_tokens counted whole"), "{e}");
}

/// A check that fails moves the call to another model; when every answer
/// fails, the error lists each attempt and why its answer was rejected.
#[tokio::test]
async fn a_failed_check_is_an_attempt_and_the_next_goes_elsewhere() {
    let r = rig(catalog("max_wait_secs = 0", "", ""));
    r.upstream.script("pa", [Step::Answer("not a date")]);
    let req = DelegateRequest {
        prompt: "When?".into(),
        expect: Some(crate::checks::Expect::Regex(r"^ok from pb$".into())),
        ..Default::default()
    };
    let s = r.engine.delegate(req.clone(), &|_| {}).await.unwrap();
    assert_eq!(s.text, "ok from pb");
    assert_eq!(s.attempts.len(), 2);
    assert_eq!(
        s.attempts[0].outcome,
        "failed check: does not match /^ok from pb$/"
    );
    assert_eq!(
        r.store.requests("pa"),
        1,
        "the rejected answer still counts upstream"
    );
    // Both fail: the error says each attempt and why.
    let strict = DelegateRequest {
        expect: Some(crate::checks::Expect::Regex(r"^never$".into())),
        ..req
    };
    match r.engine.delegate(strict, &|_| {}).await {
        Err(e @ Error::ChecksFailed { .. }) => {
            let text = e.to_string();
            assert!(
                text.starts_with("every answer failed its check (2 attempt(s))"),
                "{text}"
            );
            assert!(
                text.contains("pa/m: failed check: does not match /^never$/"),
                "{text}"
            );
            assert!(text.contains("pb/m: failed check"), "{text}");
        }
        other => panic!("{other:?}"),
    }
}

/// At most `max_check_retries` attempts follow a failed check.
#[tokio::test]
async fn check_retries_are_bounded() {
    let r = rig(catalog("max_check_retries = 0\nmax_wait_secs = 0", "", ""));
    let req = DelegateRequest {
        prompt: "x".into(),
        expect: Some(crate::checks::Expect::Code("rust".into())),
        ..Default::default()
    };
    match r.engine.delegate(req, &|_| {}).await {
        Err(Error::ChecksFailed { attempts }) => assert_eq!(attempts.len(), 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.upstream.calls().len(), 1);
}

/// A provider whose answers pass or fail a check at set rates (a seeded coin).
struct Coin {
    fail_rate: Mutex<HashMap<String, f64>>,
    seed: Mutex<u64>,
}

impl Coin {
    fn set(&self, provider: &str, rate: f64) {
        self.fail_rate.lock().unwrap().insert(provider.into(), rate);
    }
}

impl Upstream for Coin {
    fn call<'a>(
        &'a self,
        target: &'a Target<'a>,
        _req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, AttemptError>> {
        let id = target
            .base_url
            .trim_start_matches("https://")
            .split('.')
            .next()
            .unwrap();
        let rate = self.fail_rate.lock().unwrap()[id];
        let mut seed = self.seed.lock().unwrap();
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let roll = (*seed >> 11) as f64 / (1u64 << 53) as f64;
        let text = if roll < rate {
            "bad answer"
        } else {
            "good answer"
        };
        Box::pin(async move {
            Ok(Completion {
                text: text.into(),
                usage: None,
                served_model: None,
                finish_reason: None,
                rate: RateHeaders::default(),
            })
        })
    }
}

/// Two models of equal rank, one whose answers fail the check 80% of the
/// time and one 10%: after 40 calls the second is tried first for most of
/// them; with the rates swapped, the router comes back to the first.
#[tokio::test]
async fn the_router_learns_from_verdicts_and_recovers_when_they_change() {
    let mut cat = catalog("max_wait_secs = 0", "", "");
    for p in &mut cat.providers {
        p.priority = 0;
    }
    let store = MemoryStore::default();
    let coin = Arc::new(Coin {
        fail_rate: Mutex::default(),
        seed: Mutex::new(7),
    });
    coin.set("pa", 0.8);
    coin.set("pb", 0.1);
    let clock = Arc::new(ManualClock::new(T0));
    let engine = Engine::new(cat, std::env::temp_dir()).with_seams(
        Arc::new(store.clone()),
        coin.clone(),
        clock.clone(),
    );
    let req = DelegateRequest {
        prompt: "classify".into(),
        expect: Some(crate::checks::Expect::Regex("^good".into())),
        log: Some(LogFields {
            task_type: Some("classify".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut first_choices = Vec::new();
    for round in 0..80 {
        if round == 40 {
            coin.set("pa", 0.1);
            coin.set("pb", 0.8);
        }
        // A second apart, so rpm windows never get in the way.
        clock.advance(Duration::from_secs(1));
        let first = match engine.delegate(req.clone(), &|_| {}).await {
            Ok(s) => s.attempts[0].model.clone(),
            Err(e) => e.attempts()[0].model.clone(),
        };
        first_choices.push(first);
    }
    let tried_first = |range: std::ops::Range<usize>, model: &str| {
        first_choices[range].iter().filter(|m| *m == model).count()
    };
    assert!(
        tried_first(20..40, "pb/m") >= 16,
        "after learning, the good model is tried first: {:?}",
        &first_choices[20..40]
    );
    assert!(
        tried_first(60..80, "pa/m") >= 16,
        "after the swap, the router comes back: {:?}",
        &first_choices[60..80]
    );
}
