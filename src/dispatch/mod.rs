//! One request through the pool: the only place where policy and IO meet.
//!
//! The [`Engine`] owns what a session shares: the loaded catalog, the ledger
//! (a [`Store`]), the decision log, and the two other seams of the failover
//! loop (an [`Upstream`] and a [`Clock`]). A call goes:
//!
//! 1. `gate` scans every text that would leave; a secret ends the call here;
//! 2. `router` reads the model selector;
//! 3. [`failover::run`]: snapshot, rank, lease, send, commit, until served or out of budget;
//! 4. `decisions` records the routing decision when the caller gave a gist or score.
//!
//! Nothing here blocks the runtime thread: the ledger and the decision log
//! are SQLite and run on the blocking pool, and both are opened on first use
//! (a failed open is tried again on the next call, never cached).

mod answer;
pub(crate) mod discovery;
pub(crate) use crate::store::postgres::shown_url;
pub(crate) use crate::upstream::StreamSink;
pub(crate) mod failover;
mod fanout;
mod savings;
mod seams;
pub(crate) mod texts;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

pub(crate) use fanout::{Task, TaskResult, TaskStatus};
#[cfg(test)]
pub(crate) use seams::ManualClock;
pub(crate) use seams::{Clock, Http, SystemClock, Upstream, now_ms};

use crate::budget::{self, Assessment};
use crate::config::{Catalog, KeySource, Settings};
use crate::decisions::{self, Decision};
use crate::gate::{self, Finding};
use crate::quota::{Millis, UsageSnapshot};
use crate::router::{self, Rejection, UnknownModel};
use crate::store::{self, SharedStore, sqlite::SqliteStore};
use crate::upstream::ChatRequest;
use crate::workspace::{self, Chunk, Refusal, Workspace};

/// A delegate call, as a face hands it over.
#[derive(Debug, Clone, Default)]
pub(crate) struct DelegateRequest {
    /// The prompt.
    pub(crate) prompt: String,
    /// Optional system prompt.
    pub(crate) system: Option<String>,
    /// Earlier turns of a conversation (the HTTP endpoint), oldest first:
    /// (from the assistant, text). The prompt is the last user turn.
    pub(crate) history: Vec<(bool, String)>,
    /// `auto`, `provider/model` or a family.
    pub(crate) model: Option<String>,
    /// Completion cap.
    pub(crate) max_tokens: Option<u32>,
    /// Temperature.
    pub(crate) temperature: Option<f32>,
    /// Optional decision-log fields.
    pub(crate) log: Option<LogFields>,
    /// Project files to send with the prompt: paths, globs, `path:first-last`.
    pub(crate) files: Vec<String>,
    /// Where to write the answer, relative to the project root.
    pub(crate) write_to: Option<String>,
    /// Whether `write_to` may replace an existing file.
    pub(crate) overwrite: bool,
    /// Who asked: `delegate`, `fanout` or `cli` (the decision log's `via`).
    pub(crate) via: &'static str,
    /// What the answer must pass before it is served.
    pub(crate) expect: Option<crate::checks::Expect>,
    /// Where to pass the answer on as it arrives (the HTTP endpoint's
    /// `stream: true`); once any of it has gone, no other model follows.
    pub(crate) stream: Option<crate::upstream::StreamSink>,
}

/// Where an answer went, when it went to a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Wrote {
    /// The path relative to the project root.
    pub(crate) path: String,
    /// Bytes written.
    pub(crate) bytes: usize,
    /// Lines written.
    pub(crate) lines: usize,
    /// Whether it replaced a file.
    pub(crate) replaced: bool,
}

/// What the caller tells us to log about the task (never the prompt).
#[derive(Debug, Clone, Default)]
pub(crate) struct LogFields {
    /// Short description.
    pub(crate) gist: Option<String>,
    /// Difficulty 1-10.
    pub(crate) score: Option<u8>,
    /// Task type.
    pub(crate) task_type: Option<String>,
}

/// One attempt of a call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Attempt {
    /// `provider/model`.
    pub(crate) model: String,
    /// `ok` or the failure, with a short scrubbed detail.
    pub(crate) outcome: String,
    /// Milliseconds it took.
    pub(crate) ms: u64,
}

/// A served completion, with provenance.
#[derive(Debug, Clone)]
pub(crate) struct Served {
    /// The answer (cut at `failover::MAX_ANSWER_CHARS`).
    pub(crate) text: String,
    /// `provider/model` that served it.
    pub(crate) model: String,
    /// The model name the provider reported, when it differs.
    pub(crate) reported_model: Option<String>,
    /// Prompt tokens (reported, or estimated when `estimated`).
    pub(crate) prompt_tokens: u64,
    /// Completion tokens.
    pub(crate) completion_tokens: u64,
    /// Whether the counts are our estimate.
    pub(crate) estimated: bool,
    /// Whole-call latency.
    pub(crate) latency_ms: u64,
    /// Every attempt, the last one being the success.
    pub(crate) attempts: Vec<Attempt>,
    /// The answer stopped at the token cap.
    pub(crate) truncated: bool,
    /// Whether the provider's free tier may train on prompts (`None`: not stated).
    pub(crate) trains_on_prompts: Option<bool>,
    /// The decision logged for this call, if any.
    pub(crate) decision_id: Option<i64>,
    /// The files sent with the prompt, as labelled for the worker.
    pub(crate) files: Vec<String>,
    /// Where the answer was written, if it was.
    pub(crate) wrote: Option<Wrote>,
    /// Claude tokens this call saved (see `savings`).
    pub(crate) saved: i64,
    /// Secrets taken out of the answer, where they were in what is shown.
    pub(crate) redacted: Vec<gate::Redaction>,
    /// Lines of the answer that speak to the orchestrator rather than the task.
    pub(crate) flags: Vec<gate::Flag>,
}

/// Why a call did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The credential gate found secrets.
    #[error("{}", texts::refusal(findings))]
    Refused {
        /// What was found (never the values), and in which field.
        findings: Vec<(String, Finding)>,
    },
    /// The model name matches nothing.
    #[error(transparent)]
    UnknownModel(#[from] UnknownModel),
    /// A file could not be read, or the answer could not be written there.
    #[error("files: {0}")]
    Files(#[from] Refusal),
    /// The answer came, but writing it failed: it is handed back whole.
    #[error("{}", texts::write_failed(refusal, answer, model))]
    WriteFailed {
        /// Why.
        refusal: Refusal,
        /// The answer.
        answer: String,
        /// Who wrote it.
        model: String,
    },
    /// Bad arguments.
    #[error("{0}")]
    Invalid(String),
    /// Nothing can serve now; says why per candidate and when capacity returns.
    #[error("{}", texts::no_capacity(rejected, attempts, *soonest, *now))]
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
    /// Every answer failed its check.
    #[error("{}", texts::checks_failed(attempts))]
    ChecksFailed {
        /// The attempts, each with why its answer was rejected.
        attempts: Vec<Attempt>,
    },
    /// The attempt or time budget ran out.
    #[error("{}", texts::exhausted(attempts, *timed_out))]
    Exhausted {
        /// The attempts.
        attempts: Vec<Attempt>,
        /// True when the time budget ended it.
        timed_out: bool,
    },
    /// The ledger cannot be used.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The decision log cannot be used.
    #[error(transparent)]
    Log(#[from] decisions::Error),
}

impl Error {
    /// The attempts made before the call failed (none for a refusal).
    pub(crate) fn attempts(&self) -> &[Attempt] {
        match self {
            Error::NoCandidate { attempts, .. }
            | Error::Exhausted { attempts, .. }
            | Error::ChecksFailed { attempts } => attempts,
            _ => &[],
        }
    }
}

/// Produces the catalog the first time it is needed.
type CatalogLoader = Box<dyn FnOnce() -> Catalog + Send>;
/// Opens the ledger (blocking; runs on the blocking pool).
type StoreOpener = Arc<dyn Fn(&Path, Millis) -> Result<SharedStore, store::Error> + Send + Sync>;

/// The engine: catalog, ledger, decision log, seams, and the failover loop.
pub(crate) struct Engine {
    catalog: OnceLock<Arc<Catalog>>,
    // Taken once, by the first `catalog()` call.
    loader: std::sync::Mutex<Option<CatalogLoader>>,
    resolved: tokio::sync::OnceCell<Arc<Catalog>>,
    state_dir: PathBuf,
    store: tokio::sync::Mutex<Option<SharedStore>>,
    opener: StoreOpener,
    log: tokio::sync::Mutex<Option<decisions::Log>>,
    /// Opens the state to read only (see `read_only`).
    read_only: bool,
    upstream: Arc<dyn Upstream>,
    clock: Arc<dyn Clock>,
    rotation: AtomicU64,
    session: Option<String>,
    budget_env: Option<String>,
    /// The project directory (Claude Code's `CLAUDE_PROJECT_DIR`, else where we started).
    project_dir: Option<PathBuf>,
    /// Roots the client named (MCP `roots`), beside the project and the config's.
    client_roots: std::sync::Mutex<Vec<PathBuf>>,
    /// The workspace over all roots, built on first use.
    workspace: std::sync::Mutex<Option<Arc<Workspace>>>,
    /// The budget snapshot read while the catalog loaded, for the first assessment.
    first_budget: Arc<std::sync::Mutex<Option<Option<budget::Snapshot>>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

/// The catalog the engine uses when loading it failed outright (a bug).
fn failed_catalog() -> Catalog {
    Catalog {
        settings: Settings::default(),
        providers: Vec::new(),
        user_file: None,
        problems: vec![crate::config::ConfigError {
            origin: "<catalog>".into(),
            line: None,
            message: "loading the catalog failed unexpectedly; no provider is enabled".into(),
        }],
        warnings: Vec::new(),
        retired: Vec::new(),
    }
}

impl Engine {
    /// An engine over a loaded catalog and a state dir. Nothing is opened yet.
    pub(crate) fn new(catalog: Catalog, state_dir: PathBuf) -> Engine {
        Engine::with_loader(Box::new(move || catalog), state_dir)
    }

    /// An engine whose catalog (and budget snapshot) is still loading on
    /// another thread: the first use waits for it. The server starts this way
    /// so that the catalog loads while the MCP transport starts.
    pub(crate) fn loading(
        handle: std::thread::JoinHandle<(Catalog, Option<budget::Snapshot>)>,
        state_dir: PathBuf,
    ) -> Engine {
        let first_budget = Arc::new(std::sync::Mutex::new(None));
        let slot = first_budget.clone();
        let mut engine = Engine::with_loader(
            Box::new(move || match handle.join() {
                Ok((catalog, budget)) => {
                    *slot
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(budget);
                    catalog
                }
                Err(_) => failed_catalog(),
            }),
            state_dir,
        );
        engine.first_budget = first_budget;
        engine
    }

    fn with_loader(loader: CatalogLoader, state_dir: PathBuf) -> Engine {
        Engine {
            catalog: OnceLock::new(),
            loader: std::sync::Mutex::new(Some(loader)),
            resolved: tokio::sync::OnceCell::new(),
            state_dir,
            store: tokio::sync::Mutex::new(None),
            opener: Arc::new(|dir, now| Ok(Arc::new(SqliteStore::open(dir, now)?) as SharedStore)),
            read_only: false,
            log: tokio::sync::Mutex::new(None),
            upstream: Arc::new(Http),
            clock: Arc::new(SystemClock),
            // Processes start at different points of the rotation, so equal
            // candidates share the load across sessions too.
            rotation: AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::from(d.subsec_nanos()))
                    ^ u64::from(std::process::id()),
            ),
            session: crate::config::env::var(crate::config::env::SESSION_ID),
            budget_env: crate::config::env::var(crate::config::env::BUDGET_MODE),
            project_dir: crate::config::env::var(crate::config::env::PROJECT_DIR)
                .map(PathBuf::from)
                .or_else(|| std::env::current_dir().ok()),
            client_roots: std::sync::Mutex::default(),
            workspace: std::sync::Mutex::default(),
            first_budget: Arc::default(),
        }
    }

    /// Replaces the seams (tests run the whole engine in-process this way).
    #[cfg(test)]
    pub(crate) fn with_seams(
        mut self,
        store: SharedStore,
        upstream: Arc<dyn Upstream>,
        clock: Arc<dyn Clock>,
    ) -> Engine {
        self.opener = Arc::new(move |_, _| Ok(store.clone()));
        self.upstream = upstream;
        self.clock = clock;
        self
    }

    /// An engine that only reads the state dir (`status`, `log`): the ledger
    /// and the decision log are opened read-only, nothing is created.
    pub(crate) fn read_only(mut self) -> Engine {
        self.opener =
            Arc::new(
                |dir, now| Ok(Arc::new(SqliteStore::open_read_only(dir, now)?) as SharedStore),
            );
        self.read_only = true;
        self
    }

    /// The catalog as loaded (command keys possibly unresolved).
    pub(crate) fn catalog(&self) -> &Catalog {
        self.catalog_arc()
    }

    fn catalog_arc(&self) -> &Arc<Catalog> {
        self.catalog.get_or_init(|| {
            let loader = self
                .loader
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            // Problems and warnings are the face's to show, once (see `mcp`, `cli`).
            let catalog = loader.map_or_else(failed_catalog, |f| f());
            Arc::new(catalog)
        })
    }

    /// The clock's now.
    pub(crate) fn now(&self) -> Millis {
        self.clock.now()
    }

    /// The catalog with key commands run (once per launch, off the async threads).
    pub(crate) async fn resolved_catalog(&self) -> Arc<Catalog> {
        self.resolved
            .get_or_init(|| async {
                let base = self.catalog_arc().clone();
                if !base.providers.iter().any(|p| {
                    p.keys
                        .iter()
                        .any(|k| matches!(k.source, KeySource::Command(_)))
                }) {
                    return base;
                }
                let fallback = base.clone();
                let resolved = tokio::task::spawn_blocking(move || {
                    let mut cat = (*base).clone();
                    for p in &mut cat.providers {
                        for k in &mut p.keys {
                            k.resolve();
                            // Only a command that failed is news; an unset
                            // variable is the normal state of most providers.
                            if let (KeySource::Command(_), Some(problem)) = (&k.source, &k.problem)
                            {
                                tracing::warn!(provider = %p.id, "{problem}");
                            }
                        }
                    }
                    Arc::new(cat)
                })
                .await;
                resolved.unwrap_or(fallback)
            })
            .await
            .clone()
    }

    /// The ledger, opened on first use, off the runtime thread. A failed open
    /// is not remembered: the next call tries again, and says why if it fails.
    pub(crate) async fn store(&self) -> Result<SharedStore, Error> {
        let mut slot = self.store.lock().await;
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let settings = &self.catalog_arc().settings;
        let shared = crate::config::env::var(crate::config::env::LEDGER_URL)
            .or_else(|| settings.ledger.clone());
        let mut fell_back = None;
        if let Some(url) = shared {
            match store::postgres::PostgresStore::open(&url).await {
                Ok(s) => {
                    let s: SharedStore = Arc::new(s);
                    *slot = Some(s.clone());
                    return Ok(s);
                }
                // With the fallback, this machine's ledger, said everywhere;
                // without it, nothing is sent (and the next call tries again).
                Err(e @ store::Error::Unreachable { .. }) if settings.ledger_fallback_local => {
                    fell_back = Some(format!(
                        "{}; using this machine's ledger instead (ledger_fallback = \"local\"), where each limit counts at half: use from other machines is not counted meanwhile",
                        texts::full(&e).split(';').next().unwrap_or_default()
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let (opener, dir, now) = (self.opener.clone(), self.state_dir.clone(), self.now());
        let opened = tokio::task::spawn_blocking(move || opener(&dir, now))
            .await
            .map_err(|_| store::Error::Task)??;
        let opened = match fell_back {
            Some(w) => Arc::new(store::Annotated::new(opened, w)) as SharedStore,
            None => opened,
        };
        if let Some(w) = opened.warning() {
            tracing::warn!("{w}");
        }
        *slot = Some(opened.clone());
        Ok(opened)
    }

    /// Copies this machine's ledger file into the shared ledger at `url`
    /// (`ledger migrate`); returns the rows carried and where they went.
    pub(crate) async fn migrate_ledger(&self, url: &str) -> Result<(usize, String), Error> {
        let (dir, now) = (self.state_dir.clone(), self.now());
        let export = tokio::task::spawn_blocking(move || store::sqlite::export(&dir, now))
            .await
            .map_err(|_| store::Error::Task)??;
        let shared = store::postgres::PostgresStore::open(url).await?;
        let n = shared.import(export).await?;
        Ok((n, store::Store::location(&shared)))
    }

    /// The decision log, opened on first use (off the runtime thread, retried likewise).
    pub(crate) async fn log(&self) -> Result<decisions::Log, Error> {
        let mut slot = self.log.lock().await;
        if let Some(l) = slot.as_ref() {
            return Ok(l.clone());
        }
        let (dir, session, read_only) =
            (self.state_dir.clone(), self.session.clone(), self.read_only);
        let opened = tokio::task::spawn_blocking(move || {
            if read_only {
                decisions::Log::open_read_only(&dir)
            } else {
                decisions::Log::open(&dir, session)
            }
        })
        .await
        .map_err(|_| decisions::Error::Task)??;
        *slot = Some(opened.clone());
        Ok(opened)
    }

    /// Runs `f` on the decision log, on the blocking pool.
    pub(crate) async fn with_log<T: Send + 'static>(
        &self,
        f: impl FnOnce(&decisions::Log) -> Result<T, decisions::Error> + Send + 'static,
    ) -> Result<T, Error> {
        let log = self.log().await?;
        Ok(tokio::task::spawn_blocking(move || f(&log))
            .await
            .map_err(|_| decisions::Error::Task)??)
    }

    /// Claude's budget, assessed now (the snapshot file is read off the runtime thread).
    pub(crate) async fn budget(&self) -> Assessment {
        let (dir, env, pinned) = (
            self.state_dir.clone(),
            self.budget_env.clone(),
            self.catalog().settings.budget_mode.clone(),
        );
        let now = self.now() / 1000;
        let read = move || budget::assess_now(&dir, env.as_deref(), pinned.as_deref(), now);
        match tokio::task::spawn_blocking(read.clone()).await {
            Ok(a) => a,
            Err(_) => read(),
        }
    }

    /// The budget at start: from the snapshot read while the catalog loaded
    /// when there is one (no file read on the runtime thread before
    /// `initialize` is answered), else as `budget`.
    pub(crate) async fn budget_at_start(&self) -> Assessment {
        let pinned = self.catalog().settings.budget_mode.clone();
        let preloaded = self
            .first_budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match preloaded {
            Some(snap) => budget::assess_with(
                snap.as_ref(),
                self.budget_env.as_deref(),
                pinned.as_deref(),
                self.now() / 1000,
            ),
            None => self.budget().await,
        }
    }

    /// Sets the outcome Claude reported for a decision, and lets the router
    /// learn from it: an accepted answer counts for its model on that task
    /// type, a redone or failed one against it.
    pub(crate) async fn report_outcome(&self, id: i64, outcome: &'static str) -> Result<(), Error> {
        let (model, task_type) = self
            .with_log(move |l| {
                l.set_outcome(id, outcome)?;
                l.routed(id)
            })
            .await?;
        if let Some((p, m)) = model.as_deref().and_then(|m| m.split_once('/')) {
            let task = task_type.map_or_else(|| "any".to_owned(), |t| t.trim().to_lowercase());
            let store = self.store().await?;
            store
                .record_verdict(
                    p.to_owned(),
                    m.to_owned(),
                    task,
                    outcome == "accepted",
                    self.now(),
                )
                .await?;
        }
        Ok(())
    }

    /// A usage snapshot over the usable providers.
    pub(crate) async fn snapshot(&self, catalog: &Arc<Catalog>) -> Result<UsageSnapshot, Error> {
        let store = self.store().await?;
        let usable = catalog
            .providers
            .iter()
            .enumerate()
            .filter(|(_, p)| router::is_usable(p))
            .map(|(i, _)| i)
            .collect();
        Ok(store.snapshot(catalog.clone(), usable, self.now()).await?)
    }

    /// The ledger's view of every enabled provider, usable here or not
    /// (`status` shows use made with keys this shell does not have).
    pub(crate) async fn snapshot_all(
        &self,
        catalog: &Arc<Catalog>,
    ) -> Result<UsageSnapshot, Error> {
        let store = self.store().await?;
        let all = (0..catalog.providers.len()).collect();
        Ok(store.snapshot(catalog.clone(), all, self.now()).await?)
    }

    /// Scans every outgoing text: the prompt, the system prompt and each
    /// file; returns the findings with where they were (a file's own line).
    pub(crate) fn scan(req: &DelegateRequest, chunks: &[Chunk]) -> Vec<(String, Finding)> {
        let fields = [("prompt".to_owned(), req.prompt.as_str(), 0)]
            .into_iter()
            .chain(req.system.as_deref().map(|s| ("system".to_owned(), s, 0)))
            .chain(
                req.history
                    .iter()
                    .enumerate()
                    .map(|(i, (_, t))| (format!("messages[{i}]"), t.as_str(), 0)),
            )
            .chain(chunks.iter().map(|c| {
                let offset = c.lines.map_or(0, |(first, _)| first - 1);
                (c.path.clone(), c.text.as_str(), offset)
            }));
        fields
            .flat_map(|(name, text, offset)| {
                gate::scan(text).into_iter().map(move |mut f| {
                    f.line += offset;
                    (name.clone(), f)
                })
            })
            .collect()
    }

    /// Tells the engine the roots the client named (MCP `roots`).
    pub(crate) fn set_client_roots(&self, roots: Vec<PathBuf>) {
        *self
            .client_roots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = roots;
        *self
            .workspace
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// The workspace: the project dir, the config's roots, the client's.
    fn workspace(&self) -> Arc<Workspace> {
        let mut slot = self
            .workspace
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(w) = slot.as_ref() {
            return w.clone();
        }
        let settings = &self.catalog().settings;
        let roots: Vec<PathBuf> = self
            .project_dir
            .iter()
            .cloned()
            .chain(settings.project_roots.iter().cloned())
            .chain(
                self.client_roots
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .iter()
                    .cloned(),
            )
            .collect();
        let w = Arc::new(Workspace::new(
            &roots,
            settings.max_file_bytes,
            &settings.deny_files,
        ));
        *slot = Some(w.clone());
        w
    }

    /// Runs `f` on the workspace, on the blocking pool.
    async fn on_files<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Workspace) -> Result<T, Refusal> + Send + 'static,
    ) -> Result<T, Error> {
        let ws = self.workspace();
        tokio::task::spawn_blocking(move || f(&ws))
            .await
            .map_err(|_| Error::Invalid("reading the project files stopped unexpectedly".into()))?
            .map_err(Error::Files)
    }

    /// Runs one task through the pool: reads its files, gates every text,
    /// runs the failover loop, writes the answer where asked, and logs the
    /// pool call with what it saved.
    pub(crate) async fn delegate(
        &self,
        req: DelegateRequest,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<Served, Error> {
        let chunks = if req.files.is_empty() {
            Vec::new()
        } else {
            let specs = req.files.clone();
            self.on_files(move |w| w.read(&specs)).await?
        };
        let findings = Self::scan(&req, &chunks);
        if !findings.is_empty() {
            let kinds: Vec<&str> = findings.iter().map(|(_, f)| f.rule).collect();
            self.record_refusal(req.log.as_ref(), &kinds, req.via).await;
            return Err(Error::Refused { findings });
        }
        // A destination that would be refused, or a check that cannot run,
        // is refused before any quota is spent.
        if let Some(path) = req.write_to.clone() {
            let overwrite = req.overwrite;
            self.on_files(move |w| w.check_target(&path, overwrite))
                .await?;
        }
        let check = match &req.expect {
            Some(e) => {
                let settings = &self.catalog().settings;
                let check = crate::checks::Check::new(e, &settings.checks, req.write_to.is_some())
                    .map_err(Error::Invalid)?;
                Some(answer::AnswerCheck {
                    write: req.write_to.clone().map(|p| (p, req.overwrite)),
                    workspace: self.workspace(),
                    timeout: settings.check_timeout,
                    check,
                })
            }
            None => None,
        };
        let prompt = workspace::prompt_with(&req.prompt, &chunks);
        let verify = check.as_ref().map(|c| c as &dyn failover::Verify);
        let mut result = self.run(&req, prompt, progress, verify).await;
        // A command check wrote the file already.
        if let (Ok(s), Some(path)) = (&mut result, req.write_to.clone())
            && s.wrote.is_none()
        {
            match self.write_answer(s, path, req.overwrite).await {
                Ok(wrote) => s.wrote = Some(wrote),
                Err(e) => result = Err(e),
            }
        }
        if let Ok(s) = &mut result {
            // What Claude will read: the file's text when written, else the answer.
            let shown = match &s.wrote {
                Some(_) => workspace::unfence(&s.text),
                None => s.text.clone(),
            };
            s.redacted = gate::redactions(&shown);
            s.flags = gate::injection_flags(&shown);
            s.files = chunks.iter().map(Chunk::label).collect();
            let written = s.wrote.is_some().then(|| {
                let inline = Served {
                    wrote: None,
                    ..s.clone()
                };
                savings::Written {
                    result_chars: texts::served(s).chars().count(),
                    inline_chars: texts::served(&inline).chars().count(),
                }
            });
            s.saved = savings::saved(savings::Measured {
                file_chars: chunks.iter().map(|c| c.text.chars().count()).sum(),
                path_chars: req.files.iter().map(|f| f.chars().count() + 3).sum(),
                answer_chars: s.text.chars().count(),
                written,
            });
        }
        let id = self.record_pool_call(&req, &chunks, &result).await;
        result.map(|mut s| {
            // Claude is asked to report on what it logged; fanout tasks
            // always carry their id, so each can be reported on.
            s.decision_id = id.filter(|_| req.log.is_some() || req.via == "fanout");
            s
        })
    }

    /// Writes a served answer (unfenced) to `path`.
    async fn write_answer(
        &self,
        s: &Served,
        path: String,
        overwrite: bool,
    ) -> Result<Wrote, Error> {
        let text = workspace::unfence(&s.text);
        let answer = s.text.clone();
        let model = s.model.clone();
        let written = self
            .on_files(move |w| w.write(&path, &text, overwrite))
            .await;
        match written {
            Ok(w) => Ok(Wrote {
                path: w.path,
                bytes: w.bytes,
                lines: w.lines,
                replaced: w.previous.is_some(),
            }),
            Err(Error::Files(refusal)) => Err(Error::WriteFailed {
                refusal,
                answer,
                model,
            }),
            Err(e) => Err(e),
        }
    }

    /// The failover loop, after the gate.
    async fn run(
        &self,
        req: &DelegateRequest,
        prompt: String,
        progress: &(dyn Fn(String) + Send + Sync),
        verify: Option<&dyn failover::Verify>,
    ) -> Result<Served, Error> {
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
        let store = self.store().await?;
        let ctx = failover::Ctx {
            catalog,
            store,
            upstream: self.upstream.as_ref(),
            clock: self.clock.as_ref(),
            rotation: &self.rotation,
            progress,
            verify,
        };
        let task_type = req
            .log
            .as_ref()
            .and_then(|l| l.task_type.as_deref())
            .map_or_else(|| "any".to_owned(), |t| t.trim().to_lowercase());
        let call = failover::Call {
            task_type,
            chat: ChatRequest {
                system: req.system.clone(),
                history: req.history.clone(),
                prompt,
                max_tokens: req.max_tokens,
                temperature: req.temperature,
                stream: req.stream.clone(),
            },
            selector,
        };
        failover::run(&ctx, &call).await
    }

    async fn record(&self, d: Decision) -> Result<i64, Error> {
        let now = self.now();
        self.with_log(move |l| l.record(&d, now)).await
    }

    async fn record_refusal(&self, fields: Option<&LogFields>, kinds: &[&str], via: &str) {
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
            budget_mode: Some(self.budget().await.mode.as_str().into()),
            ..Default::default()
        };
        if let Err(e) = self.record(d).await {
            tracing::warn!("could not log a refusal: {}", texts::full(&e));
        }
    }

    /// Logs a pool call (every one: the savings and the dataset need them),
    /// with the caller's gist and score when given, never any content.
    async fn record_pool_call(
        &self,
        req: &DelegateRequest,
        chunks: &[Chunk],
        result: &Result<Served, Error>,
    ) -> Option<i64> {
        let f = req.log.clone().unwrap_or_default();
        let gist = f.gist.clone().unwrap_or_default();
        let gist = if gate::scan(&gist).is_empty() {
            gist
        } else {
            "[gist withheld: it carried a secret]".into()
        };
        let file_chars: usize = chunks.iter().map(|c| c.text.chars().count()).sum();
        let mut d = Decision {
            gist,
            route: "pool".into(),
            score: f.score,
            task_type: f.task_type.clone(),
            via: req.via.into(),
            budget_mode: Some(self.budget().await.mode.as_str().into()),
            files_tokens: (file_chars > 0).then(|| savings::tokens(file_chars)),
            prompt_tokens: Some(savings::tokens(req.prompt.chars().count())),
            ..Decision::default()
        };
        match result {
            Ok(s) => {
                d.model = Some(s.model.clone());
                d.pool_tokens = Some((s.prompt_tokens + s.completion_tokens) as i64);
                d.answer_tokens = Some(s.completion_tokens as i64);
                d.bytes_written = s.wrote.as_ref().map(|w| w.bytes as i64);
                d.saved_tokens = Some(s.saved);
            }
            Err(_) => d.outcome = Some("failed".into()),
        }
        match self.record(d).await {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!("could not log a decision: {}", texts::full(&e));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
