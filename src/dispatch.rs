//! One request through the pool: the only place policy and IO meet.
//!
//! `Engine::delegate` runs the failover loop:
//! 1. `gate` scans the prompt and system prompt; a secret ends the call here.
//! 2. `router` ranks candidates over a `ledger` snapshot.
//! 3. `ledger` leases the best one (atomically re-checking every window).
//! 4. `upstream` sends it; its `Failure` says what to skip and how long to bench.
//! 5. `ledger` commits the attempt (usage, bench, learned limit).
//! 6. On failure, back to 2 with the skip added, within the attempt and time
//!    budgets; when nothing can serve, wait for capacity if it returns soon.
//! 7. `decisions` records the routing decision when the caller gave a gist.
//!
//! The engine owns the loaded catalog and opens the ledger and the decision
//! log lazily, so the MCP server answers `initialize` without touching disk.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use crate::budget::{self, Assessment};
use crate::config::{Catalog, Provider};
use crate::decisions::{self, Decision};
use crate::gate::{self, Finding};
use crate::ledger::{self, AttemptRecord, BenchFn, BenchScope, Ledger, Millis, now_ms};
use crate::router::{self, Exclusion, Rejection, UnknownModel};
use crate::upstream::{self, BenchSource, ChatRequest, Failure, Skip, Target};

/// Longest answer returned by `delegate`, in characters.
pub const MAX_ANSWER_CHARS: usize = 80_000;
/// Longest fanout result in all, in characters (Claude Code's token cap is ~25k tokens).
pub const MAX_FANOUT_CHARS: usize = 80_000;

/// A delegate call.
#[derive(Debug, Clone, Default)]
pub struct DelegateRequest {
    /// The prompt.
    pub prompt: String,
    /// Optional system prompt.
    pub system: Option<String>,
    /// `auto`, `provider/model` or a family.
    pub model: Option<String>,
    /// Completion cap.
    pub max_tokens: Option<u32>,
    /// Temperature.
    pub temperature: Option<f32>,
    /// Optional decision-log fields.
    pub log: Option<LogFields>,
}

/// What the caller tells us to log about the task (never the prompt).
#[derive(Debug, Clone, Default)]
pub struct LogFields {
    /// Short description.
    pub gist: Option<String>,
    /// Difficulty 1-10.
    pub score: Option<u8>,
    /// Task type.
    pub task_type: Option<String>,
}

/// One attempt of a call.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// `provider/model`.
    pub model: String,
    /// `ok` or the failure, with a short scrubbed detail.
    pub outcome: String,
    /// Milliseconds it took.
    pub ms: u64,
}

/// A served completion, with provenance.
#[derive(Debug, Clone, Serialize)]
pub struct Served {
    /// The answer (cut at `MAX_ANSWER_CHARS`).
    pub text: String,
    /// `provider/model` that served it.
    pub model: String,
    /// The model name the provider reported, when it differs.
    pub reported_model: Option<String>,
    /// Prompt tokens (reported, or estimated when `estimated`).
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Whether the counts are our estimate.
    pub estimated: bool,
    /// Whole-call latency.
    pub latency_ms: u64,
    /// Every attempt, the last one being the success.
    pub attempts: Vec<Attempt>,
    /// The answer stopped at the token cap.
    pub truncated: bool,
    /// Whether the provider's free tier may train on prompts (`None`: not stated).
    pub trains_on_prompts: Option<bool>,
    /// The decision logged for this call, if any.
    pub decision_id: Option<i64>,
}

/// Why a call did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The credential gate found secrets.
    #[error("{}", refusal_text(findings))]
    Refused {
        /// What was found (never the values).
        findings: Vec<(String, Finding)>,
    },
    /// The model name matches nothing.
    #[error(transparent)]
    UnknownModel(#[from] UnknownModel),
    /// Bad arguments.
    #[error("{0}")]
    Invalid(String),
    /// Nothing can serve now; says why per candidate and when capacity returns.
    #[error("{}", no_capacity_text(rejected, attempts, *soonest, *now))]
    NoCandidate {
        /// Candidates and why not.
        rejected: Vec<Rejection>,
        /// Attempts made before giving up.
        attempts: Vec<Attempt>,
        /// When the first candidate frees up.
        soonest: Option<Millis>,
        /// When this was decided.
        now: Millis,
    },
    /// The attempt or time budget ran out.
    #[error("{}", exhausted_text(attempts, *timed_out))]
    Exhausted {
        /// The attempts.
        attempts: Vec<Attempt>,
        /// True when the time budget ended it.
        timed_out: bool,
    },
    /// The state dir cannot be used.
    #[error("{0}")]
    State(String),
}

fn refusal_text(findings: &[(String, Finding)]) -> String {
    let list: Vec<String> = findings
        .iter()
        .take(8)
        .map(|(field, f)| {
            format!(
                "{} in {field} at line {}, column {}",
                f.kind, f.line, f.column
            )
        })
        .collect();
    let more = findings.len().saturating_sub(8);
    format!(
        "refused: the text carries a secret ({}{}). Nothing was sent. Keep this task on Claude, or remove the secret and delegate again.",
        list.join("; "),
        if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        }
    )
}

fn when(t: Millis, now: Millis) -> String {
    let secs = ((t - now) as f64 / 1000.0).ceil() as i64;
    format!("{} ({})", budget::iso(t / 1000), budget::relative(secs))
}

fn no_capacity_text(
    rejected: &[Rejection],
    attempts: &[Attempt],
    soonest: Option<Millis>,
    now: Millis,
) -> String {
    let sized: Vec<(u64, u32)> = rejected
        .iter()
        .filter_map(|r| match r.reason {
            router::Reason::TooBig { need, context } => Some((need, context)),
            _ => None,
        })
        .collect();
    let configured = rejected
        .iter()
        .filter(|r| {
            !matches!(
                r.reason,
                router::Reason::NoKey(_) | router::Reason::MissingVar(_)
            )
        })
        .count();
    if !sized.is_empty() && sized.len() == configured && attempts.is_empty() {
        // Every usable model is too small: the capability gate, said plainly.
        let need = sized.iter().map(|s| s.0).max().unwrap_or(0);
        let largest = sized.iter().map(|s| s.1).max().unwrap_or(0);
        return format!(
            "capability gate: this request needs ~{need} tokens, more than the largest usable context window ({largest} tokens). Keep this task on Claude, or split it into parts that fit."
        );
    }
    let mut out = String::from("no model can take this request now.");
    if rejected.is_empty() && attempts.is_empty() {
        out.push_str(
            "\nno provider is enabled (see the config problems below, or `freepool-mcp check`).",
        );
    }
    if !attempts.is_empty() {
        out.push_str(&format!("\nattempts:\n{}", attempt_lines(attempts)));
    }
    // Group "no key" and "missing var" by provider: 60 lines of the same reason help nobody.
    let mut grouped: Vec<(String, String, usize)> = Vec::new();
    let mut singles = Vec::new();
    for r in rejected {
        match &r.reason {
            router::Reason::NoKey(_) | router::Reason::MissingVar(_) => {
                let provider = r.id.split('/').next().unwrap_or("").to_owned();
                let reason = r.reason.to_string();
                match grouped
                    .iter_mut()
                    .find(|(p, why, _)| *p == provider && *why == reason)
                {
                    Some(g) => g.2 += 1,
                    None => grouped.push((provider, reason, 1)),
                }
            }
            _ => singles.push(r),
        }
    }
    if !singles.is_empty() {
        out.push_str("\nwhy each candidate cannot:");
        for r in singles.iter().take(15) {
            let back = r
                .frees_at
                .map(|t| format!("; room again {}", when(t, now)))
                .unwrap_or_default();
            out.push_str(&format!("\n- {}: {}{back}", r.id, r.reason));
        }
        if singles.len() > 15 {
            out.push_str(&format!("\n- and {} more", singles.len() - 15));
        }
    }
    if !grouped.is_empty() {
        out.push_str("\nnot configured:");
        for (p, why, n) in grouped.iter().take(20) {
            out.push_str(&format!(
                "\n- {p} ({n} model{}): {why}",
                if *n == 1 { "" } else { "s" }
            ));
        }
    }
    match soonest {
        Some(t) => out.push_str(&format!("\ncapacity returns first {}.", when(t, now))),
        None if rejected.iter().all(|r| matches!(r.reason, router::Reason::NoKey(_) | router::Reason::MissingVar(_))) => {
            out.push_str("\nadd a provider key (see `freepool-mcp models`), or enable the keyless providers.")
        }
        None => {}
    }
    out.push_str("\nkeep this task on Claude.");
    out
}

fn attempt_lines(attempts: &[Attempt]) -> String {
    attempts
        .iter()
        .enumerate()
        .map(|(i, a)| format!("  {}. {}: {} ({} ms)", i + 1, a.model, a.outcome, a.ms))
        .collect::<Vec<_>>()
        .join("\n")
}

fn exhausted_text(attempts: &[Attempt], timed_out: bool) -> String {
    let why = if timed_out {
        "the call's time budget ran out"
    } else {
        "every allowed attempt failed"
    };
    format!(
        "the pool could not answer: {why} after {} attempt(s):\n{}\nkeep this task on Claude or try again later.",
        attempts.len(),
        attempt_lines(attempts)
    )
}

/// One fanout task.
#[derive(Debug, Clone, Default)]
pub struct Task {
    /// Caller's id (defaults to the index).
    pub id: String,
    /// The request.
    pub request: DelegateRequest,
}

/// The result of one fanout task.
#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    /// The task id.
    pub id: String,
    /// `ok`, `refused` or `failed`.
    pub status: &'static str,
    /// The answer, when ok (cut to the per-task cap).
    pub text: Option<String>,
    /// Served model.
    pub model: Option<String>,
    /// Why, when not ok.
    pub reason: Option<String>,
    /// Tokens used (prompt + completion).
    pub tokens: Option<u64>,
    /// Attempts made.
    pub attempts: usize,
    /// Latency.
    pub latency_ms: u64,
}

/// Produces the catalog the first time it is needed.
type CatalogLoader = Box<dyn FnOnce() -> Catalog + Send>;

/// The engine: catalog, ledger, decision log, and the failover loop.
pub struct Engine {
    catalog: OnceLock<Arc<Catalog>>,
    // Taken once, by the first `catalog()` call.
    loader: std::sync::Mutex<Option<CatalogLoader>>,
    resolved: tokio::sync::OnceCell<Arc<Catalog>>,
    state_dir: PathBuf,
    ledger: OnceLock<Result<Ledger, String>>,
    log: OnceLock<Result<decisions::Log, String>>,
    rotation: AtomicU64,
    session: Option<String>,
    budget_env: Option<String>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("state_dir", &self.state_dir)
            .finish()
    }
}

impl Engine {
    /// An engine over a loaded catalog and a state dir. Nothing is opened yet.
    pub fn new(catalog: Catalog, state_dir: PathBuf) -> Engine {
        Engine::with_loader(Box::new(move || catalog), state_dir)
    }

    /// An engine whose catalog is still loading on another thread: the first
    /// use waits for it. The server starts this way so that the catalog loads
    /// while the MCP transport starts.
    pub fn loading(handle: std::thread::JoinHandle<Catalog>, state_dir: PathBuf) -> Engine {
        Engine::with_loader(
            Box::new(move || {
                handle.join().unwrap_or_else(|_| Catalog {
                    settings: crate::config::Settings::default(),
                    providers: Vec::new(),
                    user_file: None,
                    problems: vec![crate::config::ConfigError {
                        origin: "<catalog>".into(),
                        line: None,
                        message: "loading the catalog failed unexpectedly; no provider is enabled"
                            .into(),
                    }],
                    warnings: Vec::new(),
                })
            }),
            state_dir,
        )
    }

    fn with_loader(loader: CatalogLoader, state_dir: PathBuf) -> Engine {
        Engine {
            catalog: OnceLock::new(),
            loader: std::sync::Mutex::new(Some(loader)),
            resolved: tokio::sync::OnceCell::new(),
            state_dir,
            ledger: OnceLock::new(),
            log: OnceLock::new(),
            // Processes start at different points of the rotation, so equal
            // candidates share the load across sessions too.
            rotation: AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos() as u64)
                    ^ std::process::id() as u64,
            ),
            session: std::env::var(crate::config::env::SESSION_ID)
                .ok()
                .filter(|s| !s.is_empty()),
            budget_env: std::env::var(crate::config::env::BUDGET_MODE).ok(),
        }
    }

    /// The catalog as loaded (command keys possibly unresolved).
    pub fn catalog(&self) -> &Catalog {
        self.catalog_arc()
    }

    fn catalog_arc(&self) -> &Arc<Catalog> {
        self.catalog.get_or_init(|| {
            let loader = self.loader.lock().unwrap_or_else(|p| p.into_inner()).take();
            let catalog = loader
                .map(|f| f())
                .expect("the loader runs once, inside this init");
            for w in &catalog.warnings {
                tracing::warn!("{w}");
            }
            for p in &catalog.problems {
                tracing::error!("config problem: {p}");
            }
            Arc::new(catalog)
        })
    }

    /// The state dir.
    pub fn state_dir(&self) -> &std::path::Path {
        &self.state_dir
    }

    /// The catalog with key commands run (once per launch, off the async threads).
    pub async fn resolved_catalog(&self) -> Arc<Catalog> {
        self.resolved
            .get_or_init(|| async {
                let base = self.catalog_arc().clone();
                if !base.providers.iter().any(|p| {
                    p.keys
                        .iter()
                        .any(|k| matches!(k.source, crate::config::KeySource::Command(_)))
                }) {
                    return base;
                }
                let resolved = tokio::task::spawn_blocking(move || {
                    let mut cat = (*base).clone();
                    for p in &mut cat.providers {
                        for k in &mut p.keys {
                            k.resolve();
                            if let Some(problem) = &k.problem {
                                tracing::warn!(provider = %p.id, "{problem}");
                            }
                        }
                    }
                    Arc::new(cat)
                })
                .await;
                resolved.unwrap_or_else(|_| self.catalog_arc().clone())
            })
            .await
            .clone()
    }

    /// The ledger, opened on first use.
    pub fn ledger(&self) -> Result<&Ledger, Error> {
        self.ledger
            .get_or_init(|| Ledger::open(&self.state_dir).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Error::State(e.clone()))
    }

    /// The decision log, opened on first use.
    pub fn log(&self) -> Result<&decisions::Log, Error> {
        self.log
            .get_or_init(|| {
                decisions::Log::open(&self.state_dir, self.session.clone())
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Error::State(e.clone()))
    }

    /// Claude's budget, assessed now.
    pub fn budget(&self) -> Assessment {
        let pinned = budget::pinned_mode(
            self.budget_env.as_deref(),
            self.catalog().settings.budget_mode.as_deref(),
        );
        let snap = budget::load(&self.state_dir);
        let mut a = budget::assess(
            snap.as_ref(),
            pinned.clone().unwrap_or(None),
            now_ms() / 1000,
        );
        if let Err(problem) = pinned {
            a.advice = format!("{problem}; ignoring it. {}", a.advice);
        }
        a
    }

    /// Providers worth reading usage for: those that could serve at all.
    fn usable_providers(catalog: &Catalog) -> Vec<&Provider> {
        catalog
            .providers
            .iter()
            .filter(|p| router::is_usable(p))
            .collect()
    }

    /// A usage snapshot over the usable providers.
    pub async fn snapshot(&self, catalog: &Arc<Catalog>) -> Result<ledger::UsageSnapshot, Error> {
        let ledger = self.ledger()?.clone();
        // The blocking task shares the catalog rather than copying providers.
        let catalog = catalog.clone();
        let now = now_ms();
        tokio::task::spawn_blocking(move || ledger.snapshot(&Self::usable_providers(&catalog), now))
            .await
            .map_err(|e| Error::State(format!("ledger task failed: {e}")))?
            .map_err(|e| Error::State(format!("{e:#}")))
    }

    /// Scans every outgoing text; returns the findings with the field they were in.
    pub fn scan(fields: &[(&str, &str)]) -> Vec<(String, Finding)> {
        fields
            .iter()
            .flat_map(|(name, text)| {
                gate::scan(text)
                    .into_iter()
                    .map(move |f| (name.to_string(), f))
            })
            .collect()
    }

    /// Runs one completion through the pool.
    pub async fn delegate(&self, req: DelegateRequest) -> Result<Served, Error> {
        let findings = Self::scan(&[
            ("prompt", &req.prompt),
            ("system", req.system.as_deref().unwrap_or("")),
        ]);
        if !findings.is_empty() {
            let kinds: Vec<&str> = findings.iter().map(|(_, f)| f.rule).collect();
            self.record_refusal(req.log.as_ref(), &kinds, "delegate");
            return Err(Error::Refused { findings });
        }
        let result = self.run(&req).await;
        if let Some(fields) = req
            .log
            .as_ref()
            .filter(|l| l.gist.is_some() || l.score.is_some())
        {
            let (model, outcome) = match &result {
                Ok(s) => (Some(s.model.clone()), None),
                Err(_) => (None, Some("failed".to_owned())),
            };
            let id = self.record_pool_decision(fields, model, outcome, "delegate");
            return result.map(|mut s| {
                s.decision_id = id;
                s
            });
        }
        result
    }

    fn record_refusal(&self, fields: Option<&LogFields>, kinds: &[&str], via: &str) {
        let mut kinds = kinds.to_vec();
        kinds.dedup();
        let gist = fields
            .and_then(|f| f.gist.clone())
            .filter(|g| gate::scan(g).is_empty())
            .unwrap_or_else(|| format!("refused by the credential gate ({})", kinds.join(", ")));
        let d = Decision {
            gist,
            route: "claude".into(),
            score: fields.and_then(|f| f.score),
            task_type: fields.and_then(|f| f.task_type.clone()),
            gate: Some("sensitivity".into()),
            outcome: Some("refused".into()),
            via: via.into(),
            budget_mode: Some(self.budget().mode.as_str().into()),
            ..Default::default()
        };
        if let Err(e) = self.log().and_then(|l| {
            l.record(&d, now_ms())
                .map_err(|e| Error::State(e.to_string()))
        }) {
            tracing::warn!("could not log a refusal: {e}");
        }
    }

    fn record_pool_decision(
        &self,
        f: &LogFields,
        model: Option<String>,
        outcome: Option<String>,
        via: &str,
    ) -> Option<i64> {
        let gist = f.gist.clone().unwrap_or_default();
        let gist = if gate::scan(&gist).is_empty() {
            gist
        } else {
            "[gist withheld: it carried a secret]".into()
        };
        let d = Decision {
            gist,
            route: "pool".into(),
            score: f.score,
            task_type: f.task_type.clone(),
            gate: None,
            model,
            outcome,
            via: via.into(),
            budget_mode: Some(self.budget().mode.as_str().into()),
        };
        match self.log().and_then(|l| {
            l.record(&d, now_ms())
                .map_err(|e| Error::State(e.to_string()))
        }) {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!("could not log a decision: {e}");
                None
            }
        }
    }

    /// The failover loop (after the gate).
    async fn run(&self, req: &DelegateRequest) -> Result<Served, Error> {
        if req.prompt.trim().is_empty() {
            return Err(Error::Invalid("the prompt is empty".into()));
        }
        if let Some(t) = req.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(Error::Invalid(format!("temperature {t} is outside 0..2")));
        }
        let catalog = self.resolved_catalog().await;
        let selector = router::parse_selector(&catalog, req.model.as_deref())?;
        let settings = &catalog.settings;
        let ledger = self.ledger()?.clone();
        let started = Instant::now();
        let deadline = started + settings.call_timeout;
        let rreq = router::Request {
            selector,
            prompt_chars: token_weight(&req.prompt) + req.system.as_deref().map_or(0, token_weight),
            max_tokens: req.max_tokens,
            output_reserve: settings.output_reserve,
        };
        let chat = ChatRequest {
            system: req.system.clone(),
            prompt: req.prompt.clone(),
            max_tokens: req.max_tokens,
            temperature: req.temperature,
        };
        let mut excluded: Vec<Exclusion> = Vec::new();
        let mut attempts: Vec<Attempt> = Vec::new();
        let mut idle_rounds = 0u32;
        loop {
            if attempts.len() as u32 >= settings.max_attempts {
                return Err(Error::Exhausted {
                    attempts,
                    timed_out: false,
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::Exhausted {
                    attempts,
                    timed_out: true,
                });
            }
            let snap = self.snapshot(&catalog).await?;
            let rotation = self.rotation.fetch_add(1, Ordering::Relaxed);
            let plan = router::plan(&catalog, &rreq, &snap, &excluded, rotation);
            let (leased, lost) = lease_first(&ledger, &catalog, &plan).await?;
            let Some((cand, lease)) = leased else {
                // Nothing free now. Wait if capacity returns soon enough, else explain.
                let now = now_ms();
                let wake = if !plan.candidates.is_empty() || plan.has_busy() {
                    Some(now + 200) // lost a race or waiting on requests in flight
                } else {
                    plan.soonest_free()
                };
                let limit = Instant::now()
                    + settings
                        .max_wait
                        .min(deadline.saturating_duration_since(Instant::now()));
                let wait = wake.map(|t| Duration::from_millis((t - now).max(50) as u64));
                match wait {
                    Some(w) if Instant::now() + w <= limit && idle_rounds < 400 => {
                        idle_rounds += 1;
                        tokio::time::sleep(w.min(Duration::from_secs(5))).await;
                        continue;
                    }
                    _ => {
                        let mut rejected = plan.rejected;
                        rejected.extend(lost);
                        let soonest = rejected.iter().filter_map(|r| r.frees_at).min();
                        return Err(Error::NoCandidate {
                            rejected,
                            attempts,
                            soonest,
                            now,
                        });
                    }
                }
            };
            let key = cand
                .key_index
                .and_then(|i| cand.provider.keys[i].key.as_ref());
            let attempt_timeout = cand
                .provider
                .timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            let target = Target {
                base_url: &cand.provider.base_url,
                model: &cand.model.id,
                key,
                headers: &cand.provider.headers,
                first_byte_timeout: cand.provider.first_byte_timeout.min(attempt_timeout),
                attempt_timeout,
            };
            let t0 = Instant::now();
            tracing::info!(model = %cand.id(), key = %cand.key_fp, why = %cand.why(), "attempt");
            let outcome = upstream::call(&target, &chat).await;
            let ms = t0.elapsed().as_millis() as u64;
            let now = now_ms();
            match outcome {
                Ok(done) => {
                    let (rec, prompt_tokens, completion_tokens, estimated) =
                        success_record(&cand, &done, rreq.prompt_chars);
                    commit(&ledger, lease, rec, now).await;
                    attempts.push(Attempt {
                        model: cand.id(),
                        outcome: "ok".into(),
                        ms,
                    });
                    let text = cut(done.text, MAX_ANSWER_CHARS, "");
                    let reported_model = done
                        .served_model
                        .filter(|m| m != &cand.model.id && !m.ends_with(&cand.model.id));
                    return Ok(Served {
                        text,
                        model: cand.id(),
                        reported_model,
                        prompt_tokens,
                        completion_tokens,
                        estimated,
                        latency_ms: started.elapsed().as_millis() as u64,
                        attempts,
                        truncated: done.finish_reason.as_deref() == Some("length"),
                        trains_on_prompts: cand.provider.trains_on_prompts,
                        decision_id: None,
                    });
                }
                Err(err) => {
                    let failure = with_daily_reset(err.failure, cand.provider, now);
                    tracing::info!(model = %cand.id(), outcome = %failure.label(), ms, "attempt failed");
                    let (rec, exclusion) = failure_record(&cand, &failure);
                    commit(&ledger, lease, rec, now).await;
                    attempts.push(Attempt {
                        model: cand.id(),
                        outcome: attempt_outcome(&failure, &err.detail),
                        ms,
                    });
                    excluded.push(exclusion);
                }
            }
        }
    }

    /// Runs many tasks with bounded concurrency. Results come back in input
    /// order; `progress(done, total, message)` is called as each finishes.
    pub async fn fanout(
        &self,
        tasks: Vec<Task>,
        concurrency: usize,
        progress: impl Fn(usize, usize, String),
    ) -> Vec<TaskResult> {
        let total = tasks.len();
        // Share the result budget between tasks, never below a readable minimum.
        let per_task_cap = (MAX_FANOUT_CHARS / total.max(1))
            .min(self.catalog().settings.fanout_max_chars_per_task)
            .max(200);
        let mut results: Vec<Option<TaskResult>> = vec![None; total];
        let mut stream = futures::stream::iter(tasks.into_iter().enumerate())
            .map(|(i, task)| async move {
                let started = Instant::now();
                let out = self.fanout_one(task, per_task_cap, started).await;
                (i, out)
            })
            .buffer_unordered(concurrency.max(1));
        let mut done = 0;
        while let Some((i, r)) = stream.next().await {
            done += 1;
            let msg = match r.status {
                "ok" => format!(
                    "task {} done on {}",
                    r.id,
                    r.model.as_deref().unwrap_or("?")
                ),
                s => format!("task {} {s}", r.id),
            };
            progress(done, total, msg);
            results[i] = Some(r);
        }
        results
            .into_iter()
            .map(|r| r.expect("every task yields a result"))
            .collect()
    }

    async fn fanout_one(&self, task: Task, cap: usize, started: Instant) -> TaskResult {
        let id = task.id.clone();
        let mut req = task.request;
        if let Some(l) = req.log.as_mut() {
            l.gist.get_or_insert_with(|| format!("fanout task {id}"));
        }
        let log = req.log.clone();
        let findings = Self::scan(&[
            ("prompt", &req.prompt),
            ("system", req.system.as_deref().unwrap_or("")),
        ]);
        if !findings.is_empty() {
            let kinds: Vec<&str> = findings.iter().map(|(_, f)| f.rule).collect();
            self.record_refusal(log.as_ref(), &kinds, "fanout");
            let err = Error::Refused { findings };
            return TaskResult {
                id,
                status: "refused",
                text: None,
                model: None,
                reason: Some(err.to_string()),
                tokens: None,
                attempts: 0,
                latency_ms: 0,
            };
        }
        let result = self.run(&req).await;
        if let Some(f) = log.as_ref().filter(|l| l.score.is_some()) {
            let (model, outcome) = match &result {
                Ok(s) => (Some(s.model.clone()), None),
                Err(_) => (None, Some("failed".into())),
            };
            self.record_pool_decision(f, model, outcome, "fanout");
        }
        let latency_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(s) => {
                let text = cut(s.text, cap, "; use delegate for long answers");
                TaskResult {
                    id,
                    status: "ok",
                    text: Some(text),
                    model: Some(s.model),
                    reason: None,
                    tokens: Some(s.prompt_tokens + s.completion_tokens),
                    attempts: s.attempts.len(),
                    latency_ms,
                }
            }
            Err(e) => {
                let attempts = match &e {
                    Error::NoCandidate { attempts, .. } | Error::Exhausted { attempts, .. } => {
                        attempts.len()
                    }
                    _ => 0,
                };
                TaskResult {
                    id,
                    status: "failed",
                    text: None,
                    model: None,
                    reason: Some(e.to_string()),
                    tokens: None,
                    attempts,
                    latency_ms,
                }
            }
        }
    }
}

/// Leases the first candidate of `plan` that still has room. Candidates that
/// lost the room to another process since the snapshot come back with why.
async fn lease_first<'c>(
    ledger: &Ledger,
    catalog: &Arc<Catalog>,
    plan: &router::Plan<'c>,
) -> Result<
    (
        Option<(router::Candidate<'c>, ledger::Lease)>,
        Vec<Rejection>,
    ),
    Error,
> {
    let mut lost = Vec::new();
    for cand in &plan.candidates {
        let (l, cat, fp, tokens) = (
            ledger.clone(),
            catalog.clone(),
            cand.key_fp.clone(),
            cand.lease_tokens,
        );
        // Indices, not copies: the blocking task finds the candidate in the shared catalog.
        let (pi, mi) = position(catalog, cand);
        let got = tokio::task::spawn_blocking(move || {
            let p = &cat.providers[pi];
            l.lease(p, &p.models[mi], &fp, tokens, now_ms())
        })
        .await
        .map_err(|e| Error::State(format!("ledger task failed: {e}")))?
        .map_err(|e| Error::State(format!("{e:#}")))?;
        match got {
            Ok(lease) => return Ok((Some((cand.clone(), lease)), lost)),
            Err(blocked) => lost.push(Rejection {
                id: cand.id(),
                frees_at: blocked.frees_at(),
                reason: router::Reason::Blocked(blocked),
            }),
        }
    }
    Ok((None, lost))
}

/// Where a candidate sits in the catalog: (provider index, model index).
fn position(catalog: &Catalog, cand: &router::Candidate<'_>) -> (usize, usize) {
    let pi = catalog
        .providers
        .iter()
        .position(|p| std::ptr::eq(p, cand.provider))
        .expect("candidates come from this catalog");
    let mi = catalog.providers[pi]
        .models
        .iter()
        .position(|m| std::ptr::eq(m, cand.model))
        .expect("candidates come from this catalog");
    (pi, mi)
}

/// What a successful attempt puts in the ledger, and the token counts to report
/// (`estimated` when the provider reported no usage).
fn success_record(
    cand: &router::Candidate<'_>,
    done: &upstream::Completion,
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
        let f: BenchFn = Arc::new(move |_| Some((d, true)));
        let scope = BenchScope::model_key(&cand.provider.id, &cand.model.id, &cand.key_fp);
        (scope, "provider window used up".to_owned(), f)
    });
    let rec = AttemptRecord {
        reached: true,
        tokens: prompt_tokens + completion_tokens,
        outcome: "ok".into(),
        calibration: (!estimated).then_some((prompt_chars, prompt_tokens)),
        bench,
        learned: None,
    };
    (rec, prompt_tokens, completion_tokens, estimated)
}

/// What a failed attempt puts in the ledger (its bench, by the failure's
/// class) and what it rules out for the rest of the call.
fn failure_record(cand: &router::Candidate<'_>, failure: &Failure) -> (AttemptRecord, Exclusion) {
    let (p, m, k) = (&cand.provider.id, &cand.model.id, &cand.key_fp);
    let skip = failure.skip();
    let scope = match skip {
        Skip::Key => BenchScope::key(p, k),
        Skip::ModelForKey => BenchScope::model_key(p, m, k),
        Skip::Model => BenchScope::model(p, m),
        Skip::Provider => BenchScope::provider(p),
    };
    // Only a connection that never opened is certain not to count upstream;
    // a request that may have been processed counts its prompt too.
    let reached = !matches!(failure, Failure::Connect);
    let tokens = match failure {
        Failure::FirstByteTimeout
        | Failure::Stalled
        | Failure::Broken
        | Failure::BadBody
        | Failure::Empty => cand.prompt_tokens,
        _ => 0,
    };
    let learned = match failure {
        Failure::RateLimited { learned, .. } => *learned,
        _ => None,
    };
    let label = failure.label();
    let f = failure.clone();
    let bench: BenchFn = Arc::new(move |strikes| {
        f.bench(strikes)
            .map(|(d, src)| (d, src == BenchSource::Stated))
    });
    let rec = AttemptRecord {
        reached,
        tokens,
        outcome: label.clone(),
        calibration: None,
        bench: Some((scope, label.clone(), bench)),
        learned,
    };
    let exclusion = Exclusion {
        skip,
        provider: p.clone(),
        model: m.clone(),
        key_fp: k.clone(),
        reason: label,
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
            let until = ledger::next_reset(crate::config::Window::Day, provider.day_reset, now);
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

/// The length the token estimate works from: ASCII characters count once,
/// others three times. Tokenizers spend about a token per 3-4 ASCII
/// characters but often one or more per CJK character or emoji, so a plain
/// character count would under-reserve for those prompts.
fn token_weight(text: &str) -> usize {
    let ascii = text.bytes().filter(u8::is_ascii).count();
    ascii + 3 * (text.chars().count() - ascii)
}

/// Keeps the first `max` characters of `text`, saying how many were cut.
fn cut(text: String, max: usize, hint: &str) -> String {
    let total = text.chars().count();
    if total <= max {
        return text;
    }
    let mut kept: String = text.chars().take(max).collect();
    kept.push_str(&format!("\n[cut: {} more characters{hint}]", total - max));
    kept
}

async fn commit(ledger: &Ledger, lease: ledger::Lease, rec: AttemptRecord, now: Millis) {
    let l = ledger.clone();
    match tokio::task::spawn_blocking(move || l.commit(lease, rec, now)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("could not record an attempt in the ledger: {e:#}"),
        Err(e) => tracing::warn!("ledger task failed: {e}"),
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
        let f = Failure::RateLimited {
            retry_after: None,
            daily: true,
            learned: None,
        };
        match with_daily_reset(f, google, now) {
            Failure::RateLimited {
                retry_after: Some(d),
                ..
            } => assert_eq!(d, Duration::from_secs(3600)),
            other => panic!("{other:?}"),
        }
        // A rolling provider keeps the guessed back-off.
        let groq = cat.provider("groq").unwrap();
        let f = Failure::RateLimited {
            retry_after: None,
            daily: true,
            learned: None,
        };
        assert!(matches!(
            with_daily_reset(f, groq, now),
            Failure::RateLimited {
                retry_after: None,
                ..
            }
        ));
    }

    #[test]
    fn non_ascii_text_weighs_more_for_the_estimate() {
        assert_eq!(token_weight("hello"), 5);
        assert_eq!(token_weight("日本語"), 9, "about a token per character");
        assert_eq!(token_weight("a€"), 4);
    }

    #[test]
    fn cut_keeps_short_text_and_marks_long_text() {
        assert_eq!(cut("héllo".into(), 5, ""), "héllo");
        assert_eq!(
            cut("héllo world".into(), 5, "; see x"),
            "héllo\n[cut: 6 more characters; see x]"
        );
    }

    #[test]
    fn refusal_names_kind_and_place_never_the_value() {
        let secret = format!("ghp_{}", "Zq8Xv2Lm9Ty4Rw7Pk3Hn6Js1Gd5Fb0Ca8Eu2Y");
        let findings = Engine::scan(&[("prompt", &format!("a\nb {secret}")), ("system", "")]);
        let text = Error::Refused { findings }.to_string();
        assert!(
            text.contains("GitHub token in prompt at line 2, column 3"),
            "{text}"
        );
        assert!(!text.contains(&secret[4..]));
    }

    #[test]
    fn no_capacity_groups_missing_keys_and_says_when() {
        let rejected = vec![
            Rejection {
                id: "groq/a".into(),
                reason: router::Reason::NoKey("GROQ_API_KEY".into()),
                frees_at: None,
            },
            Rejection {
                id: "groq/b".into(),
                reason: router::Reason::NoKey("GROQ_API_KEY".into()),
                frees_at: None,
            },
            Rejection {
                id: "x/m".into(),
                reason: router::Reason::Blocked(ledger::Blocked::Benched {
                    reason: "429 rate limited".into(),
                    until: 61_000,
                }),
                frees_at: Some(61_000),
            },
        ];
        let text = no_capacity_text(&rejected, &[], Some(61_000), 1_000);
        assert!(text.contains("- x/m: cooling down after 429 rate limited; room again 1970-01-01T00:01:01Z (in 1m)"), "{text}");
        assert!(
            text.contains("- groq (2 models): no key (set GROQ_API_KEY)"),
            "{text}"
        );
        assert!(
            text.contains("capacity returns first 1970-01-01T00:01:01Z (in 1m)."),
            "{text}"
        );
    }
}
