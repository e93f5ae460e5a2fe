//! The provider catalog: the built-in `providers.toml`, the user's file on top, and keys.
//!
//! Loading has two stages, as ripgrep does with its arguments. The raw stage
//! (`CatalogFile`) mirrors the TOML exactly, every field optional, so the
//! user's file can override any built-in entry key by key. The resolved stage
//! (`Catalog`) is validated domain data the rest of the crate trusts.
//!
//! Bad configuration never takes the server down: a user file that does not
//! parse is reported (file, line, key) and the built-in catalog is used; a
//! provider that does not validate is dropped with its own error. Every error
//! is kept in `Catalog::problems` so tools and `freepool-mcp check` can show it.
//!
//! Keys never leave this module in the clear except through `ApiKey::expose`,
//! which only `upstream` calls when it builds the `Authorization` header.

mod lenient;

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::map::Map;

/// The built-in catalog, compiled into the binary (what error locations point into).
pub const BUILTIN_CATALOG: &str = include_str!("../../providers.toml");

/// The same catalog as JSON, made by `build.rs`: five times faster to parse at start-up.
const BUILTIN_CATALOG_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/catalog.json"));
/// The whole tables of the built-in models kept off as gone (`build.rs`):
/// `catalog.json` holds only their `gone` line, and a user's file that names
/// one gets the rest from here.
const BUILTIN_RETIRED_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/catalog-retired.json"));

/// Puts back the whole built-in table of each retired model for which
/// `wanted(provider, model)` holds.
fn restore_retired(doc: &mut CatalogFile, wanted: &dyn Fn(&str, &str) -> bool) {
    // Most user files name no retired model: parse the blob only when one does.
    let any = doc.providers.iter().any(|(pid, p)| {
        p.get("models")
            .and_then(toml::Value::as_table)
            .is_some_and(|ms| {
                ms.iter().any(|(mid, m)| {
                    m.as_table()
                        .is_some_and(|t| t.len() == 1 && t.contains_key("gone"))
                        && wanted(pid, mid)
                })
            })
    });
    if !any {
        return;
    }
    let Ok(retired) = serde_json::from_str::<BTreeMap<String, toml::Table>>(BUILTIN_RETIRED_JSON)
    else {
        return;
    };
    for (pid, models) in retired {
        let Some(table) = doc
            .providers
            .get_mut(&pid)
            .and_then(|p| p.get_mut("models"))
            .and_then(toml::Value::as_table_mut)
        else {
            continue;
        };
        for (mid, full) in models {
            if wanted(&pid, &mid) {
                table.insert(mid, full);
            }
        }
    }
}

/// Environment variables the program reads, in one place.
pub mod env {
    /// Path of the user's catalog file (overrides the default location).
    pub const CONFIG: &str = "FREEPOOL_CONFIG";
    /// Directory for the ledger, the decision log and the budget snapshot.
    pub const STATE_DIR: &str = "FREEPOOL_STATE_DIR";
    /// The HTTP endpoint's bearer token (else the token file beside the config).
    pub const HTTP_TOKEN: &str = "FREEPOOL_HTTP_TOKEN";
    /// The shared ledger's URL (overrides `[settings] ledger`).
    pub const LEDGER_URL: &str = "FREEPOOL_LEDGER_URL";
    /// Pins the budget mode (`normal`, `prefer_sonnet`, `delegate_more`, `exhausted`).
    pub const BUDGET_MODE: &str = "FREEPOOL_BUDGET_MODE";
    /// Log filter for stderr, in `tracing_subscriber::EnvFilter` syntax.
    pub const LOG: &str = "FREEPOOL_LOG";
    /// Set by Claude Code for each session it spawns us in.
    pub const SESSION_ID: &str = "CLAUDE_CODE_SESSION_ID";
    /// Set by Claude Code: the project the session works in (the first root for files).
    pub const PROJECT_DIR: &str = "CLAUDE_PROJECT_DIR";

    /// A variable's value; set but empty (or blank) reads as unset, as a
    /// shell user means by `VAR=`.
    pub fn var(name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }
}

/// A configuration problem, located as precisely as the input allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", origin.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    /// The file (or `<built-in catalog>`).
    pub origin: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong, naming the key (`providers.groq.models."x".context`).
    pub message: String,
}

// ---------------------------------------------------------------------------
// Raw stage: the TOML as written.
// ---------------------------------------------------------------------------

/// The TOML document, as parsed, before merging and validation. Sections
/// stay raw tables so that each key is read, and can fail, on its own.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogFile {
    /// Format version; only 1 exists.
    pub schema: Option<u32>,
    /// Global settings (`SettingsFile` once read).
    #[serde(default)]
    pub settings: toml::Table,
    /// Providers by id, in file order.
    #[serde(default)]
    pub providers: Map<String, toml::Value>,
    /// Answer checks the user allows calls to name: `NAME = "command line"`.
    #[serde(default)]
    pub checks: toml::Table,
}

/// The top-level keys of a catalog file.
const TOP_LEVEL: [&str; 4] = ["schema", "settings", "providers", "checks"];

/// `[settings]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsFile {
    keyless: Option<bool>,
    exclude_training: Option<bool>,
    budget_mode: Option<String>,
    max_attempts: Option<u32>,
    call_timeout_secs: Option<u64>,
    output_reserve: Option<u32>,
    max_wait_secs: Option<u64>,
    fanout_concurrency: Option<u32>,
    fanout_max_concurrency: Option<u32>,
    fanout_max_chars_per_task: Option<usize>,
    project_roots: Option<Vec<String>>,
    max_file_bytes: Option<u64>,
    deny_files: Option<Vec<String>>,
    max_check_retries: Option<u32>,
    check_timeout_secs: Option<u64>,
    ledger: Option<String>,
    ledger_fallback: Option<String>,
}

/// `[providers.ID]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderFile {
    name: Option<String>,
    base_url: Option<String>,
    auth: Option<String>,
    key_env: Option<Vec<String>>,
    keys: Option<Vec<KeyFile>>,
    keys_stack: Option<bool>,
    trains_on_prompts: Option<Training>,
    gone: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    vars: Option<BTreeMap<String, String>>,
    local: Option<bool>,
    counts_max_tokens: Option<bool>,
    enabled: Option<bool>,
    timeout_secs: Option<u64>,
    connect_timeout_secs: Option<u64>,
    models_url: Option<String>,
    first_byte_timeout_secs: Option<u64>,
    max_concurrency: Option<u32>,
    priority: Option<i32>,
    day_reset: Option<String>,
    month_reset: Option<String>,
    source: Option<String>,
    #[serde(default)]
    pools: Map<String, toml::Value>,
    #[serde(default)]
    models: Map<String, toml::Value>,
}

/// `trains_on_prompts` as written: `true`, `false` or `"unknown"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Training {
    Stated(bool),
    Word(TrainingWord),
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum TrainingWord {
    Unknown,
}

/// One entry of `keys = [...]`: exactly one of `value`, `env`, `command`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    value: Option<String>,
    env: Option<String>,
    command: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolFile {
    limits: Option<LimitsFile>,
    models: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    name: Option<String>,
    /// Read from the raw table before typing (see `resolve_provider`).
    #[serde(rename = "gone")]
    _gone: Option<String>,
    family: Option<String>,
    context: Option<u32>,
    max_output: Option<u32>,
    tier: Option<u8>,
    tools: Option<bool>,
    vision: Option<bool>,
    enabled: Option<bool>,
    priority: Option<i32>,
    limits: Option<LimitsFile>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    rpm: Option<u64>,
    rph: Option<u64>,
    rpd: Option<u64>,
    rpmo: Option<u64>,
    tpm: Option<u64>,
    tph: Option<u64>,
    tpd: Option<u64>,
    tpmo: Option<u64>,
}

// ---------------------------------------------------------------------------
// Resolved stage.
// ---------------------------------------------------------------------------

/// Program-wide settings (`[settings]`), with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Use providers that need no key (kilo, llm7, pollinations). One line turns them off.
    pub keyless: bool,
    /// Skip providers whose free tier may train on prompts.
    pub exclude_training: bool,
    /// A pinned budget mode, as written (validated by `budget`).
    pub budget_mode: Option<String>,
    /// The shared ledger's URL (`postgres://...`); `None`: this machine's SQLite file.
    pub ledger: Option<String>,
    /// When the shared ledger cannot be reached at start: use this
    /// machine's ledger (`"local"`) instead of refusing every call.
    pub ledger_fallback_local: bool,
    /// Upper bound on provider attempts for one call.
    pub max_attempts: u32,
    /// Time budget for one whole call, all attempts included.
    pub call_timeout: Duration,
    /// Output tokens reserved when the caller gives no `max_tokens`.
    pub output_reserve: u32,
    /// Longest wait for capacity to free up before "no model can take this".
    pub max_wait: Duration,
    /// Default fanout concurrency.
    pub fanout_concurrency: u32,
    /// Largest fanout concurrency a caller may ask for.
    pub fanout_max_concurrency: u32,
    /// Answer text kept per fanout task (the rest is cut, with a marker).
    pub fanout_max_chars_per_task: usize,
    /// Folders besides the project directory whose files a call may read or write.
    pub project_roots: Vec<PathBuf>,
    /// The largest file a call may read.
    pub max_file_bytes: u64,
    /// File name patterns never read or written, beside the built-in deny list.
    pub deny_files: Vec<String>,
    /// Attempts on other models after answers fail their check.
    pub max_check_retries: u32,
    /// How long a check command may run.
    pub check_timeout: Duration,
    /// Check commands calls may name (`[checks]`), from the user's file only.
    pub checks: BTreeMap<String, String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            keyless: true,
            exclude_training: false,
            budget_mode: None,
            ledger: None,
            ledger_fallback_local: false,
            max_attempts: 5,
            call_timeout: Duration::from_secs(300),
            output_reserve: 2000,
            max_wait: Duration::from_secs(30),
            fanout_concurrency: 4,
            fanout_max_concurrency: 16,
            fanout_max_chars_per_task: 8000,
            project_roots: Vec::new(),
            max_file_bytes: 1_000_000,
            deny_files: Vec::new(),
            max_check_retries: 2,
            check_timeout: Duration::from_secs(120),
            checks: BTreeMap::new(),
        }
    }
}

/// How a provider authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer KEY`; unusable without a key.
    Bearer,
    /// Sends a key when one is configured, works anonymously otherwise.
    Optional,
    /// Never sends a key.
    None,
}

/// When a day or month window starts again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// A sliding window ending now (the safe default).
    Rolling,
    /// Fixed at midnight in this zone (months: the 1st at midnight).
    Midnight(Zone),
}

/// A time zone, by its IANA name, checked to exist when the catalog loads.
///
/// Zones are looked up in jiff's bundled time zone database (cached) when a
/// window is computed. Two other choices cost start-up time: chrono-tz's
/// compiled-in table of every zone (28,000 relocations, ~250 page faults), and
/// the system database, which jiff indexes by walking /usr/share/zoneinfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Zone(&'static str);

impl Zone {
    /// Looks a zone up by name.
    pub fn new(name: &str) -> Option<Zone> {
        jiff::tz::TimeZone::get(name).ok()?;
        // Catalogs name a handful of zones, once per load: interning by leaking is fine.
        static SEEN: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
        let mut seen = SEEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let name = if let Some(z) = seen.iter().find(|z| **z == name) {
            *z
        } else {
            let z: &'static str = Box::leak(name.to_owned().into_boxed_str());
            seen.push(z);
            z
        };
        Some(Zone(name))
    }

    /// The IANA name.
    pub fn name(self) -> &'static str {
        self.0
    }

    /// The zone's rules.
    pub fn tz(self) -> jiff::tz::TimeZone {
        // Checked in `new`; the database does not lose zones while we run.
        jiff::tz::TimeZone::get(self.0).unwrap_or(jiff::tz::TimeZone::UTC)
    }
}

/// The length of a limit's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Window {
    /// 60 seconds, rolling.
    Minute,
    /// 3600 seconds, rolling.
    Hour,
    /// A day, rolling or fixed.
    Day,
    /// A month (30 days rolling, or calendar month), rolling or fixed.
    Month,
}

impl Window {
    /// Short label used in tables and messages.
    pub fn label(self) -> &'static str {
        match self {
            Window::Minute => "min",
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Month => "month",
        }
    }
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Axis {
    /// Requests.
    Requests,
    /// Tokens, prompt and completion together.
    Tokens,
}

/// One numeric limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Requests or tokens.
    pub axis: Axis,
    /// Window length.
    pub window: Window,
    /// The most allowed in one window.
    pub max: u64,
    /// How the window resets.
    pub reset: Reset,
}

impl Limit {
    /// `rpm`, `tpd`, ... as written in TOML.
    pub fn key(&self) -> &'static str {
        match (self.axis, self.window) {
            (Axis::Requests, Window::Minute) => "rpm",
            (Axis::Requests, Window::Hour) => "rph",
            (Axis::Requests, Window::Day) => "rpd",
            (Axis::Requests, Window::Month) => "rpmo",
            (Axis::Tokens, Window::Minute) => "tpm",
            (Axis::Tokens, Window::Hour) => "tph",
            (Axis::Tokens, Window::Day) => "tpd",
            (Axis::Tokens, Window::Month) => "tpmo",
        }
    }
}

/// A limit shared by several models of one provider.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    /// Id, unique within the provider.
    pub id: String,
    /// The shared limits.
    pub limits: Vec<Limit>,
    /// The models drawing on it; `None` means all of the provider's models.
    pub models: Option<Vec<String>>,
}

impl Pool {
    /// Whether `model` draws on this pool.
    pub fn covers(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == model))
    }
}

/// One model as a provider serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// The id as the provider spells it.
    pub id: String,
    /// Display name.
    pub name: String,
    /// A name shared by every provider serving the same weights.
    pub family: String,
    /// Context window in tokens.
    pub context: u32,
    /// Largest completion the model produces.
    pub max_output: u32,
    /// Quality tier, 1 (frontier) to 4 (small).
    pub tier: u8,
    /// Supports tool calls.
    pub tools: bool,
    /// Accepts images.
    pub vision: bool,
    /// User priority; higher is tried first.
    pub priority: i32,
    /// Per-model limits.
    pub limits: Vec<Limit>,
}

/// Where a key came from; shown instead of the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// An environment variable.
    Env(String),
    /// Written in the user's file.
    Literal,
    /// The stdout of a command.
    Command(String),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Env(v) => write!(f, "${v}"),
            KeySource::Literal => f.write_str("config file"),
            KeySource::Command(c) => write!(f, "command `{c}`"),
        }
    }
}

/// A secret. `Debug` and `Display` show only its fingerprint.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key, trimming surrounding whitespace.
    pub fn new(raw: &str) -> Self {
        ApiKey(raw.trim().to_owned())
    }

    /// The key itself. Only `upstream` calls this, to build the request header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A short, stable, non-reversible id: the first 12 hex digits of SHA-256.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        digest[..6]
            .iter()
            .fold(String::with_capacity(12), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            })
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.fingerprint())
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key {}", self.fingerprint())
    }
}

/// A key slot: where to find the key, and, once resolved, the key.
#[derive(Debug, Clone)]
pub struct KeySlot {
    /// Where it comes from.
    pub source: KeySource,
    /// The key, if found (commands run lazily, see `KeySlot::resolve`).
    pub key: Option<ApiKey>,
    /// Why the key could not be found.
    pub problem: Option<String>,
}

impl KeySlot {
    /// Runs the command of a `Command` slot once (a no-op otherwise).
    ///
    /// Commands run at most once per launch, like git's credential helpers,
    /// and only when a provider is about to be used, so start-up stays fast.
    pub fn resolve(&mut self) {
        let KeySource::Command(cmd) = &self.source else {
            return;
        };
        if self.key.is_some() || self.problem.is_some() {
            return;
        }
        match run_key_command(cmd) {
            Ok(key) => self.key = Some(key),
            Err(e) => self.problem = Some(e),
        }
    }
}

fn run_key_command(cmd: &str) -> Result<ApiKey, String> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("key command `{cmd}` could not start: {e}"))?;
    if !out.status.success() {
        return Err(format!("key command `{cmd}` failed ({})", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or("").trim();
    if first.is_empty() {
        return Err(format!("key command `{cmd}` printed nothing"));
    }
    Ok(ApiKey::new(first))
}

/// One provider, validated.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Id (`groq`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Base URL with placeholders filled in (`.../chat/completions` is appended).
    pub base_url: String,
    /// Placeholders left unfilled (a missing `CLOUDFLARE_ACCOUNT_ID`, say).
    pub missing_vars: Vec<String>,
    /// How it authenticates.
    pub auth: Auth,
    /// Key slots, in the order they are tried.
    pub keys: Vec<KeySlot>,
    /// Whether several keys add quota (false where quota is per account or project).
    pub keys_stack: bool,
    /// Whether the free tier may train on prompts (`None`: not stated).
    pub trains_on_prompts: Option<bool>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Allowed to use plain http / loopback.
    pub local: bool,
    /// Counts a request's whole `max_tokens` against per-minute token limits
    /// when it arrives (OpenAI-style TPM), so a lease reserves all of it.
    pub counts_max_tokens: bool,
    /// Per-attempt time budget.
    pub timeout: Duration,
    /// Time allowed until the response headers arrive.
    pub first_byte_timeout: Duration,
    /// Time allowed to open a connection: seconds, since a provider that is
    /// down or firewalled should cost little.
    pub connect_timeout: Duration,
    /// Requests in flight at once from one process.
    pub max_concurrency: Option<u32>,
    /// User priority for all models of this provider.
    pub priority: i32,
    /// When its day windows reset.
    pub day_reset: Reset,
    /// When its month windows reset.
    pub month_reset: Reset,
    /// Shared limits.
    pub pools: Vec<Pool>,
    /// Models, enabled ones only, in file order.
    pub models: Vec<Model>,
    /// Where the numbers came from.
    pub source: String,
    /// Where the provider lists its models (`check --probe`): `base_url`
    /// plus `/models` unless the catalog names another address.
    pub models_url: String,
}

impl Provider {
    /// True when the provider can be called without a key.
    pub fn is_keyless(&self) -> bool {
        matches!(self.auth, Auth::None | Auth::Optional)
    }

    /// Keys present right now (command keys count once resolved).
    pub fn usable_keys(&self) -> impl Iterator<Item = &ApiKey> {
        self.keys.iter().filter_map(|k| k.key.as_ref())
    }

    /// Whether a key is, or may be (an unresolved command), available.
    pub fn has_key_or_command(&self) -> bool {
        self.keys.iter().any(|k| {
            k.key.is_some() || (matches!(k.source, KeySource::Command(_)) && k.problem.is_none())
        })
    }
}

/// The validated catalog and everything that went wrong loading it.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Global settings.
    pub settings: Settings,
    /// Enabled providers, in file order.
    pub providers: Vec<Provider>,
    /// The user file that was read, if any.
    pub user_file: Option<PathBuf>,
    /// Problems found; the catalog still works without the parts they name.
    pub problems: Vec<ConfigError>,
    /// Warnings (e.g. a key file readable by others).
    pub warnings: Vec<String>,
    /// Providers and models the catalog keeps off because they are gone
    /// upstream: (`provider` or `provider/model`, the dated reason).
    pub retired: Vec<(String, String)>,
}

impl Catalog {
    /// Finds a provider by id.
    pub fn provider(&self, id: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.id == id)
    }

    /// All (provider, model) pairs.
    pub fn models(&self) -> impl Iterator<Item = (&Provider, &Model)> {
        self.providers
            .iter()
            .flat_map(|p| p.models.iter().map(move |m| (p, m)))
    }
}

/// Where the user's file is by default: `<config dir>/freepool/providers.toml`.
pub fn default_config_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "freepool")
        .map(|d| d.config_dir().join("providers.toml"))
}

/// The one catalog loader: the built-in catalog, the user's file on top
/// (`file`, else the default place), keys from the environment (commands
/// wait until first use). An empty variable counts as unset.
pub fn load(file: Option<&Path>) -> Catalog {
    let (user, named) = match file {
        Some(f) => (Some(f.to_path_buf()), true),
        None => (default_config_path(), false),
    };
    load_located(user.as_deref(), named, &env::var)
}

/// `load` with the user file path and environment given, for tests.
pub fn load_from(user: Option<&Path>, env_lookup: &dyn Fn(&str) -> Option<String>) -> Catalog {
    load_located(user, true, env_lookup)
}

/// Loads with `user` as the user's file; a missing file is an error only when
/// the user named it (`named`), not when it is merely the default place.
fn load_located(
    user: Option<&Path>,
    named: bool,
    env_lookup: &dyn Fn(&str) -> Option<String>,
) -> Catalog {
    let builtin_origin = PathBuf::from("<built-in catalog>");
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut doc = match serde_json::from_str::<CatalogFile>(BUILTIN_CATALOG_JSON) {
        Ok(doc) => doc,
        // Only a catalog edited into an invalid shape gets here: report it as TOML.
        Err(_) => match parse_file(BUILTIN_CATALOG, &builtin_origin) {
            Ok((doc, found)) => {
                problems.extend(found);
                doc
            }
            Err(e) => {
                problems.push(e);
                CatalogFile::default()
            }
        },
    };
    // What the built-in catalog defines, to tell a typo from a new entry.
    let known: BTreeMap<String, Vec<String>> = doc
        .providers
        .iter()
        .map(|(id, p)| {
            let models = p
                .get("models")
                .and_then(toml::Value::as_table)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            (id.clone(), models)
        })
        .collect();
    let mut user_file = None;
    let mut user_text = String::new();
    if let Some(path) = user {
        match fs_err::read_to_string(path) {
            Ok(text) => {
                user_file = Some(path.to_path_buf());
                match parse_file(&text, path) {
                    Ok((overlay, found)) => {
                        problems.extend(found);
                        if file_has_literal_keys(&overlay) && is_readable_by_others(path) {
                            warnings.push(format!(
                                "{} holds API keys and is readable by other users; run: chmod 600 {}",
                                path.display(),
                                path.display()
                            ));
                        }
                        // A retired model the user's file names gets its whole
                        // built-in table first, so an `enabled = true` has
                        // everything the catalog knew.
                        let named = |p: &str, m: &str| {
                            overlay
                                .providers
                                .get(p)
                                .and_then(|v| v.get("models"))
                                .and_then(|ms| ms.get(m))
                                .is_some()
                        };
                        restore_retired(&mut doc, &named);
                        merge(&mut doc, overlay);
                        user_text = text;
                    }
                    Err(e) => {
                        // The user's wishes are unknown (a provider they turned off
                        // for privacy, say): enable nothing until the file is fixed.
                        doc.providers.clear();
                        problems.push(e);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named => {}
            Err(e) => problems.push(ConfigError {
                origin: path.to_path_buf(),
                line: None,
                message: format!("cannot read the file: {}", crate::words::io(e.kind())),
            }),
        }
    }
    let locate = |key_path: &str| -> (PathBuf, Option<usize>) {
        if let Some(path) = &user_file
            && let Some(line) = find_line(&user_text, key_path)
        {
            return (path.clone(), Some(line));
        }
        (builtin_origin.clone(), find_line(BUILTIN_CATALOG, key_path))
    };
    let mut settings = resolve_settings(std::mem::take(&mut doc.settings), &locate, &mut problems);
    settings.checks = resolve_checks(std::mem::take(&mut doc.checks), &locate, &mut problems);
    let mut providers = Vec::new();
    let retired = std::cell::RefCell::new(Vec::new());
    for (id, value) in doc.providers {
        let ctx = Resolving {
            settings: &settings,
            known: &known,
            env_lookup,
            locate: &locate,
            retired: &retired,
        };
        if let Some(p) = resolve_provider(&id, value, &ctx, &mut problems) {
            providers.push(p);
        }
    }
    let retired = retired.into_inner();
    // The user's file first, in its own order: that is how they will fix it.
    problems.sort_by_key(|p| (p.origin == builtin_origin, p.line));
    Catalog {
        settings,
        providers,
        user_file,
        problems,
        warnings,
        retired,
    }
}

/// Parses one TOML file into the raw form. A file that is not TOML, or is
/// of a schema this build cannot read, is an error; a section or top-level
/// key of the wrong shape is a problem that costs only itself.
///
/// # Errors
///
/// The file is not TOML or names a schema version this build cannot read;
/// the error names the file, line and key.
pub fn parse_file(
    text: &str,
    origin: &Path,
) -> Result<(CatalogFile, Vec<ConfigError>), ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        let key = e
            .span()
            .and_then(|s| enclosing_table(text, s.start))
            .map(|t| format!(" (in [{t}])"))
            .unwrap_or_default();
        ConfigError {
            origin: origin.to_path_buf(),
            line,
            message: format!("not valid TOML: {}{key}", e.message().trim_end()),
        }
    })?;
    let mut problems = Vec::new();
    let mut problem = |key: &str, message: String| {
        problems.push(ConfigError {
            origin: origin.to_path_buf(),
            line: find_line(text, key),
            message: format!("{key}: {message}"),
        });
    };
    let mut doc = CatalogFile::default();
    for (key, value) in table {
        match (key.as_str(), value) {
            ("schema", toml::Value::Integer(1)) => doc.schema = Some(1),
            ("schema", toml::Value::Integer(v)) => {
                return Err(ConfigError {
                    origin: origin.to_path_buf(),
                    line: find_line(text, "schema"),
                    message: format!("schema: version {v} is not supported (this build reads 1)"),
                });
            }
            ("settings", toml::Value::Table(t)) => doc.settings = t,
            ("providers", toml::Value::Table(t)) => doc.providers = t,
            ("checks", toml::Value::Table(t)) => doc.checks = t,
            ("schema", _) => problem(&key, "expected the number 1; ignored".into()),
            (section @ ("settings" | "providers" | "checks"), _) => {
                problem(&key, format!("expected a table ([{section}]); ignored"))
            }
            (other, _) => problem(
                other,
                format!(
                    "unknown top-level key{}; ignored",
                    close_matches(other, TOP_LEVEL.iter().copied())
                ),
            ),
        }
    }
    Ok((doc, problems))
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The `[table]` header above byte `offset`, without brackets.
fn enclosing_table(text: &str, offset: usize) -> Option<String> {
    text[..offset.min(text.len())]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').to_owned())
}

/// Best-effort line of a dotted key path (`providers.groq.models."x".context`):
/// the line of the deepest table header written for it, then the key inside.
fn find_line(text: &str, key_path: &str) -> Option<usize> {
    let whole = format!("[{key_path}]");
    if let Some(i) = text.lines().position(|l| l.trim() == whole) {
        return Some(i + 1);
    }
    let (table, key) = match key_path.rsplit_once('.') {
        Some((t, k)) if !k.ends_with('"') => (t, k),
        _ => (key_path, ""),
    };
    let mut prefix = table;
    loop {
        let header = format!("[{prefix}]");
        if let Some(start) = text.lines().position(|l| l.trim() == header) {
            if prefix == table && !key.is_empty() {
                for (i, l) in text.lines().enumerate().skip(start + 1) {
                    let t = l.trim_start();
                    if t.starts_with('[') {
                        break;
                    }
                    if t.starts_with(key) && t[key.len()..].trim_start().starts_with('=') {
                        return Some(i + 1);
                    }
                }
            }
            return Some(start + 1);
        }
        match prefix.rsplit_once('.') {
            Some((p, _)) => prefix = p,
            None => break,
        }
    }
    if table.is_empty() || !key_path.contains('.') {
        return text
            .lines()
            .position(|l| l.trim_start().starts_with(key_path))
            .map(|i| i + 1);
    }
    None
}

fn file_has_literal_keys(doc: &CatalogFile) -> bool {
    doc.providers.values().any(|p| {
        p.get("keys")
            .and_then(|k| k.as_array())
            .is_some_and(|keys| keys.iter().any(|k| k.get("value").is_some()))
    })
}

#[cfg(unix)]
fn is_readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs_err::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o044 != 0)
}

#[cfg(not(unix))]
fn is_readable_by_others(_path: &Path) -> bool {
    false
}

/// Overlays `top` onto `base`: tables merge key by key, anything else replaces.
pub fn merge(base: &mut CatalogFile, top: CatalogFile) {
    if top.schema.is_some() {
        base.schema = top.schema;
    }
    base.settings.extend(top.settings);
    base.checks.extend(top.checks);
    for (id, value) in top.providers {
        match base.providers.get_mut(&id) {
            Some(existing) => merge_value(existing, value),
            None => {
                base.providers.insert(id, value);
            }
        }
    }
}

fn merge_value(base: &mut toml::Value, top: toml::Value) {
    match (base, top) {
        (toml::Value::Table(b), toml::Value::Table(t)) => {
            for (k, v) in t {
                match b.get_mut(&k) {
                    Some(existing) => merge_value(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, t) => *b = t,
    }
}

/// `[settings]`, each key read on its own: a bad one falls back to its
/// default (or, for the keys that guard what is sent where, to the cautious
/// value) and says so.
fn resolve_settings(
    table: toml::Table,
    locate: &dyn Fn(&str) -> (PathBuf, Option<usize>),
    problems: &mut Vec<ConfigError>,
) -> Settings {
    let (s, bad_keys): (SettingsFile, _) = lenient::lenient(table);
    let d = Settings::default();
    for b in &bad_keys {
        let fallback = match b.key.as_str() {
            "keyless" => "; keyless providers stay off until this is fixed".to_owned(),
            "exclude_training" => {
                "; providers that may train on prompts stay off until this is fixed".to_owned()
            }
            key => match setting_default(&d, key) {
                Some(v) => format!("; using the default, {v}"),
                None => "; ignored".to_owned(),
            },
        };
        let (origin, line) = locate(&format!("settings.{}", b.key));
        problems.push(ConfigError {
            origin,
            line,
            message: format!("settings.{}: {}{fallback}", b.key, b.why),
        });
    }
    if let Some(v) = s
        .ledger_fallback
        .as_deref()
        .filter(|v| !["local", "none"].contains(v))
    {
        let (origin, line) = locate("settings.ledger_fallback");
        problems.push(ConfigError {
            origin,
            line,
            message: format!(
                "settings.ledger_fallback: expected \"local\" or \"none\", found \"{v}\"; using none (calls wait for the shared ledger)"
            ),
        });
    }
    let cautious = |key: &str| bad_keys.iter().any(|b| b.key == key);
    let mut out = Settings {
        keyless: s.keyless.unwrap_or(d.keyless) && !cautious("keyless"),
        exclude_training: s.exclude_training.unwrap_or(d.exclude_training)
            || cautious("exclude_training"),
        budget_mode: s.budget_mode.clone(),
        ledger: s.ledger.clone().filter(|l| !l.trim().is_empty()),
        ledger_fallback_local: s.ledger_fallback.as_deref() == Some("local"),
        max_attempts: s.max_attempts.unwrap_or(d.max_attempts),
        call_timeout: s
            .call_timeout_secs
            .map_or(d.call_timeout, Duration::from_secs),
        output_reserve: s.output_reserve.unwrap_or(d.output_reserve),
        max_wait: s.max_wait_secs.map_or(d.max_wait, Duration::from_secs),
        fanout_concurrency: s.fanout_concurrency.unwrap_or(d.fanout_concurrency),
        fanout_max_concurrency: s.fanout_max_concurrency.unwrap_or(d.fanout_max_concurrency),
        fanout_max_chars_per_task: s
            .fanout_max_chars_per_task
            .unwrap_or(d.fanout_max_chars_per_task),
        project_roots: s
            .project_roots
            .iter()
            .flatten()
            .map(|r| expand_home(r))
            .collect(),
        max_file_bytes: s.max_file_bytes.unwrap_or(d.max_file_bytes),
        deny_files: s.deny_files.clone().unwrap_or_default(),
        max_check_retries: s.max_check_retries.unwrap_or(d.max_check_retries),
        check_timeout: s
            .check_timeout_secs
            .map_or(d.check_timeout, Duration::from_secs),
        checks: BTreeMap::new(),
    };
    let mut bad = |key: &str, msg: &str| {
        let (origin, line) = locate(&format!("settings.{key}"));
        problems.push(ConfigError {
            origin,
            line,
            message: format!("settings.{key}: {msg}"),
        });
    };
    if out.max_attempts == 0 {
        bad("max_attempts", "must be at least 1; using 5");
        out.max_attempts = d.max_attempts;
    }
    if out.fanout_max_concurrency == 0 {
        bad("fanout_max_concurrency", "must be at least 1; using 16");
        out.fanout_max_concurrency = d.fanout_max_concurrency;
    }
    if out.fanout_concurrency == 0 || out.fanout_concurrency > out.fanout_max_concurrency {
        bad(
            "fanout_concurrency",
            "must be between 1 and fanout_max_concurrency; using 4",
        );
        out.fanout_concurrency = d.fanout_concurrency.min(out.fanout_max_concurrency);
    }
    out
}

/// A setting's default, as written in the file.
fn setting_default(d: &Settings, key: &str) -> Option<String> {
    Some(match key {
        "max_attempts" => d.max_attempts.to_string(),
        "call_timeout_secs" => d.call_timeout.as_secs().to_string(),
        "output_reserve" => d.output_reserve.to_string(),
        "max_wait_secs" => d.max_wait.as_secs().to_string(),
        "fanout_concurrency" => d.fanout_concurrency.to_string(),
        "fanout_max_concurrency" => d.fanout_max_concurrency.to_string(),
        "fanout_max_chars_per_task" => d.fanout_max_chars_per_task.to_string(),
        "max_file_bytes" => d.max_file_bytes.to_string(),
        "max_check_retries" => d.max_check_retries.to_string(),
        "check_timeout_secs" => d.check_timeout.as_secs().to_string(),
        "project_roots" | "deny_files" => "[]".to_owned(),
        "budget_mode" => "none (the statusLine decides)".to_owned(),
        _ => return None,
    })
}

/// `[checks]`: each a command line in quotes, or left out with a problem.
fn resolve_checks(
    table: toml::Table,
    locate: &dyn Fn(&str) -> (PathBuf, Option<usize>),
    problems: &mut Vec<ConfigError>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, value) in table {
        match value {
            toml::Value::String(line) if !line.trim().is_empty() => {
                out.insert(name, line);
            }
            _ => {
                let (origin, line) = locate(&format!("checks.{name}"));
                problems.push(ConfigError {
                    origin,
                    line,
                    message: format!(
                        "checks.{name}: expected a command line in quotes, like \"cargo check --quiet\"; this check is left out"
                    ),
                });
            }
        }
    }
    out
}

/// What resolving a provider needs besides its own table.
struct Resolving<'a> {
    settings: &'a Settings,
    /// Built-in provider ids, each with its model ids.
    known: &'a BTreeMap<String, Vec<String>>,
    env_lookup: &'a dyn Fn(&str) -> Option<String>,
    locate: &'a dyn Fn(&str) -> (PathBuf, Option<usize>),
    /// Entries kept off as gone upstream, with their reasons.
    retired: &'a std::cell::RefCell<Vec<(String, String)>>,
}

/// Validates one provider. A problem with the provider itself (its table,
/// id, URL or auth) disables it; a problem with one of its entries (a key
/// slot, a pool, a model, a reset) is reported and disables only that entry.
/// Every problem goes to `problems`, so one pass shows them all.
fn resolve_provider(
    id: &str,
    value: toml::Value,
    ctx: &Resolving<'_>,
    problems: &mut Vec<ConfigError>,
) -> Option<Provider> {
    let (settings, env_lookup, locate) = (ctx.settings, ctx.env_lookup, ctx.locate);
    let path = format!("providers.{id}");
    let err = |key: &str, message: String| {
        let full = if key.is_empty() {
            path.clone()
        } else {
            format!("{path}.{key}")
        };
        let (origin, line) = locate(&full);
        ConfigError {
            origin,
            line,
            message: format!("{full}: {message}"),
        }
    };
    let toml::Value::Table(table) = value else {
        problems.push(err(
            "",
            "expected a table ([providers.ID] with base_url, models...); ignored".into(),
        ));
        return None;
    };
    let (mut raw, bad_keys): (ProviderFile, _) = lenient::lenient(table);
    // A key that decides whether or where prompts go keeps the provider off
    // until it is fixed; any other bad key is ignored.
    let mut off = false;
    for b in &bad_keys {
        let vital = matches!(
            b.key.as_str(),
            "enabled" | "base_url" | "auth" | "local" | "pools" | "models" | "trains_on_prompts"
        );
        off |= vital;
        let then = if vital {
            "; the provider stays off until this is fixed"
        } else {
            "; ignored"
        };
        problems.push(err(&b.key, format!("{}{then}", b.why)));
    }
    if !is_valid_id(id) {
        problems.push(err(
            "",
            "ids may use letters, digits, '-' and '_' only".into(),
        ));
        return None;
    }
    let builtin_models = ctx.known.get(id);
    if builtin_models.is_none() && raw.base_url.is_none() && !off {
        // Most likely a typo for a built-in provider (`grok` for `groq`).
        problems.push(err(
            "",
            format!(
                "not a provider of the built-in catalog{}; a provider of your own needs base_url",
                close_matches(id, ctx.known.keys().map(String::as_str))
            ),
        ));
        return None;
    }
    if off || raw.enabled == Some(false) {
        return None;
    }
    // Gone upstream: off unless the user turns it back on (a trial credit, say).
    if let Some(why) = &raw.gone
        && raw.enabled != Some(true)
    {
        ctx.retired.borrow_mut().push((id.to_owned(), why.clone()));
        return None;
    }
    let Some(template) = raw.base_url.clone() else {
        problems.push(err(
            "base_url",
            "missing (an OpenAI-compatible URL ending before /chat/completions)".into(),
        ));
        return None;
    };
    let local = raw.local.unwrap_or(false);
    if let Err(m) = check_url(&template, local) {
        problems.push(err("base_url", m));
        return None;
    }
    if let Some(Err(m)) = raw.models_url.as_deref().map(|u| check_url(u, local)) {
        problems.push(err(
            "models_url",
            format!("{m}; `check --probe` will not list models"),
        ));
        raw.models_url = None;
    }
    let auth = match raw.auth.as_deref().unwrap_or("bearer") {
        "bearer" => Auth::Bearer,
        "optional" => Auth::Optional,
        "none" => Auth::None,
        other => {
            problems.push(err(
                "auth",
                format!("`{other}` is not one of bearer, optional, none"),
            ));
            return None;
        }
    };
    if auth != Auth::Bearer && !settings.keyless && !local {
        // `[settings] keyless = false` turns every anonymous provider off.
        return None;
    }
    let trains = match raw.trains_on_prompts {
        Some(Training::Stated(b)) => Some(b),
        Some(Training::Word(TrainingWord::Unknown)) | None => None,
    };
    // Fail closed: with exclude_training, a provider that does not say it
    // keeps prompts out of training is treated as one that may train.
    if settings.exclude_training && trains != Some(false) {
        return None;
    }
    let (base_url, missing_vars) = fill_vars(&template, raw.vars.as_ref(), env_lookup);
    let keys = key_slots(&raw, env_lookup, &err, problems);
    // A reset that does not parse falls back to rolling windows, the safe reading.
    let mut reset = |key: &str, value: Option<&str>| {
        parse_reset(value).unwrap_or_else(|m| {
            problems.push(err(key, format!("{m}; using rolling windows")));
            Reset::Rolling
        })
    };
    let day_reset = reset("day_reset", raw.day_reset.as_deref());
    let month_reset = reset("month_reset", raw.month_reset.as_deref());
    let model_ids: Vec<String> = raw.models.keys().cloned().collect();
    let mut pools = Vec::new();
    for (pid, pv) in std::mem::take(&mut raw.pools) {
        let pf: PoolFile = match pv.try_into() {
            Ok(pf) => pf,
            Err(e) => {
                // A shared limit we cannot read could be overshot: the
                // provider stays off until the pool is fixed.
                let e: toml::de::Error = e;
                problems.push(err(
                    &format!("pools.{pid}"),
                    format!(
                        "{}; the provider stays off until this is fixed",
                        e.message().trim()
                    ),
                ));
                return None;
            }
        };
        let limits = limits_of(pf.limits.unwrap_or_default(), day_reset, month_reset);
        if limits.is_empty() {
            problems.push(err(
                &format!("pools.{pid}.limits"),
                "a pool needs at least one limit; it is left out".into(),
            ));
            continue;
        }
        let mut covered = pf.models;
        if let Some(ms) = covered.as_mut() {
            for unknown in ms.iter().filter(|m| !model_ids.contains(m)) {
                problems.push(err(
                    &format!("pools.{pid}.models"),
                    format!(
                        "`{unknown}` is not a model of this provider{}",
                        close_matches(unknown, model_ids.iter().map(String::as_str))
                    ),
                ));
            }
            ms.retain(|m| model_ids.contains(m));
        }
        pools.push(Pool {
            id: pid.clone(),
            limits,
            models: covered,
        });
    }
    let mut models = Vec::new();
    for (mid, mv) in std::mem::take(&mut raw.models) {
        if let Some(builtin) = builtin_models
            && !builtin.contains(&mid)
            && mv.get("context").is_none()
        {
            problems.push(err(
                &format!("models.\"{mid}\""),
                format!(
                    "not a model of {id} in the built-in catalog{}; a model of your own needs context",
                    close_matches(&mid, builtin.iter().map(String::as_str))
                ),
            ));
            continue;
        }
        if let Some(why) = mv.get("gone").and_then(toml::Value::as_str)
            && mv.get("enabled").and_then(toml::Value::as_bool) != Some(true)
        {
            ctx.retired
                .borrow_mut()
                .push((format!("{id}/{mid}"), why.to_owned()));
            continue;
        }
        let mut ignored = Vec::new();
        let resolved = resolve_model(&mid, mv, day_reset, month_reset, &mut ignored);
        problems.extend(ignored.into_iter().map(|(key, message)| err(&key, message)));
        match resolved {
            Ok(Some(m)) => models.push(m),
            Ok(None) => {}
            Err((key, message)) => problems.push(err(&key, message)),
        }
    }
    if models.is_empty() {
        return None;
    }
    let timeout = Duration::from_secs(raw.timeout_secs.unwrap_or(90));
    let first_byte_timeout = raw
        .first_byte_timeout_secs
        .map_or(timeout, Duration::from_secs);
    let models_url = raw
        .models_url
        .clone()
        .unwrap_or_else(|| format!("{}/models", base_url.trim_end_matches('/')));
    Some(Provider {
        id: id.to_owned(),
        name: raw.name.unwrap_or_else(|| id.to_owned()),
        base_url,
        missing_vars,
        auth,
        keys,
        keys_stack: raw.keys_stack.unwrap_or(false),
        trains_on_prompts: trains,
        headers: raw.headers.unwrap_or_default().into_iter().collect(),
        local,
        // Every remote provider here speaks OpenAI's API, whose TPM counts max_tokens.
        counts_max_tokens: raw.counts_max_tokens.unwrap_or(!local),
        timeout,
        first_byte_timeout,
        connect_timeout: Duration::from_secs(raw.connect_timeout_secs.unwrap_or(5).max(1)),
        max_concurrency: raw.max_concurrency,
        priority: raw.priority.unwrap_or(0),
        day_reset,
        month_reset,
        pools,
        models,
        source: raw.source.unwrap_or_default(),
        models_url,
    })
}

/// " (did you mean `x`?)" for the closest of `known`, or nothing.
fn close_matches<'a>(asked: &str, known: impl Iterator<Item = &'a str>) -> String {
    let mut best: Vec<(f64, &str)> = known
        .map(|k| (strsim::jaro_winkler(asked, k), k))
        .filter(|(score, _)| *score > 0.8)
        .collect();
    best.sort_by(|a, b| b.0.total_cmp(&a.0));
    match best.first() {
        Some((_, k)) => format!(" (did you mean `{k}`?)"),
        None => String::new(),
    }
}

/// The provider's key slots, in the order they are tried: `keys` entries,
/// then `key_env` names. A bad entry is reported and left out.
fn key_slots(
    raw: &ProviderFile,
    env_lookup: &dyn Fn(&str) -> Option<String>,
    err: &dyn Fn(&str, String) -> ConfigError,
    problems: &mut Vec<ConfigError>,
) -> Vec<KeySlot> {
    let mut keys = Vec::new();
    for (i, k) in raw.keys.iter().flatten().enumerate() {
        let slot = match (&k.value, &k.env, &k.command) {
            (Some(v), None, None) => KeySlot {
                source: KeySource::Literal,
                key: Some(ApiKey::new(v)),
                problem: None,
            },
            (None, Some(var), None) => match check_var_name(var) {
                Ok(()) => env_slot(var, env_lookup),
                Err(why) => {
                    problems.push(err(&format!("keys[{i}].env"), why));
                    continue;
                }
            },
            (None, None, Some(cmd)) => KeySlot {
                source: KeySource::Command(cmd.clone()),
                key: None,
                problem: None,
            },
            _ => {
                problems.push(err(
                    &format!("keys[{i}]"),
                    "give exactly one of value, env, command".into(),
                ));
                continue;
            }
        };
        keys.push(slot);
    }
    for (i, var) in raw.key_env.iter().flatten().enumerate() {
        if let Err(why) = check_var_name(var) {
            problems.push(err(&format!("key_env[{i}]"), why));
            continue;
        }
        if !keys.iter().any(|k| k.source == KeySource::Env(var.clone())) {
            keys.push(env_slot(var, env_lookup));
        }
    }
    // Several env names for one provider are aliases (GEMINI_API_KEY and
    // GOOGLE_API_KEY): keep one slot per distinct key.
    let mut seen = Vec::new();
    keys.retain(|k| match &k.key {
        Some(key) if seen.contains(&key.fingerprint()) => false,
        Some(key) => {
            seen.push(key.fingerprint());
            true
        }
        None => true,
    });
    keys
}

/// Whether `var` can be the name of an environment variable, and is not a
/// key pasted where its variable's name belongs. The value is never echoed:
/// it may be the key itself.
fn check_var_name(var: &str) -> Result<(), String> {
    let is_name = !var.is_empty()
        && var.len() <= 128
        && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !var.starts_with(|c: char| c.is_ascii_digit());
    // Variable names are words in capitals (GROQ_API_KEY); keys are long runs
    // of mixed letters and digits (gsk_8Hq...). Lowercase with digits, long: a key.
    let lower = var.chars().filter(char::is_ascii_lowercase).count();
    let digits = var.chars().filter(char::is_ascii_digit).count();
    let looks_like_key = var.len() >= 20 && lower >= 4 && digits >= 2;
    if is_name && !looks_like_key {
        return Ok(());
    }
    Err(format!(
        "this is not the name of an environment variable{} (its value is not shown); put the key in the environment, e.g. `export GROQ_API_KEY=...`, and name the variable here, or write it as keys = [{{ value = \"...\" }}] in a file only you can read",
        if looks_like_key {
            ": it looks like a key itself"
        } else {
            ""
        }
    ))
}

/// Validates one model; `Ok(None)` when it is turned off. An error names the key.
fn resolve_model(
    mid: &str,
    mv: toml::Value,
    day_reset: Reset,
    month_reset: Reset,
    ignored: &mut Vec<(String, String)>,
) -> Result<Option<Model>, (String, String)> {
    let mpath = format!("models.\"{mid}\"");
    let bad = |key: &str, message: String| {
        let key = if key.is_empty() {
            mpath.clone()
        } else {
            format!("{mpath}.{key}")
        };
        (key, format!("{message}; the model is left out"))
    };
    let toml::Value::Table(table) = mv else {
        return Err(bad("", "expected a table".into()));
    };
    let (mf, bad_keys): (ModelFile, _) = lenient::lenient(table);
    for b in bad_keys {
        // A limit or size that cannot be read could be overshot: the model
        // stays out. Anything else is ignored, and said.
        if matches!(
            b.key.as_str(),
            "limits" | "enabled" | "context" | "max_output" | "tier"
        ) {
            return Err(bad(&b.key, b.why));
        }
        ignored.push((format!("{mpath}.{}", b.key), format!("{}; ignored", b.why)));
    }
    if mf.enabled == Some(false) {
        return Ok(None);
    }
    let context = mf
        .context
        .ok_or_else(|| bad("context", "missing (the context window in tokens)".into()))?;
    if context < 256 {
        return Err(bad(
            "context",
            format!("{context} tokens is too small to be real"),
        ));
    }
    let max_output = mf.max_output.unwrap_or((context / 4).min(8192));
    if max_output == 0 || max_output > context {
        return Err(bad(
            "max_output",
            format!("{max_output} must be between 1 and the context window ({context})"),
        ));
    }
    let tier = mf.tier.unwrap_or(3);
    if !(1..=4).contains(&tier) {
        return Err(bad("tier", format!("{tier} is not between 1 and 4")));
    }
    Ok(Some(Model {
        id: mid.to_owned(),
        name: mf.name.unwrap_or_else(|| mid.to_owned()),
        family: mf.family.unwrap_or_else(|| mid.to_lowercase()),
        context,
        max_output,
        tier,
        tools: mf.tools.unwrap_or(false),
        vision: mf.vision.unwrap_or(false),
        priority: mf.priority.unwrap_or(0),
        limits: limits_of(mf.limits.unwrap_or_default(), day_reset, month_reset),
    }))
}

fn env_slot(var: &str, env_lookup: &dyn Fn(&str) -> Option<String>) -> KeySlot {
    let key = env_lookup(var)
        .filter(|v| !v.trim().is_empty())
        .map(|v| ApiKey::new(&v));
    KeySlot {
        source: KeySource::Env(var.to_owned()),
        problem: key.is_none().then(|| format!("${var} is not set")),
        key,
    }
}

fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Remote providers must use https; plain http and loopback hosts need `local = true`.
fn check_url(url: &str, local: bool) -> Result<(), String> {
    let rest = if let Some(r) = url.strip_prefix("https://") {
        r
    } else if let Some(r) = url.strip_prefix("http://") {
        if !local {
            return Err(format!(
                "`{url}` is plain http; set `local = true` if it is a server on this machine"
            ));
        }
        r
    } else {
        return Err(format!(
            "`{url}` must start with https:// (or http:// with `local = true`)"
        ));
    };
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = host
        .rsplit_once('@')
        .map_or(host, |(_, h)| host_without_port(h));
    let host = host_without_port(host);
    let loopback =
        host == "localhost" || host.starts_with("127.") || host == "[::1]" || host == "0.0.0.0";
    if loopback && !local {
        return Err(format!(
            "`{url}` points at this machine; set `local = true` to allow it"
        ));
    }
    Ok(())
}

fn host_without_port(h: &str) -> &str {
    if h.starts_with('[') {
        return h.split_inclusive(']').next().unwrap_or(h);
    }
    h.rsplit_once(':').map_or(h, |(host, _)| host)
}

fn fill_vars(
    template: &str,
    vars: Option<&BTreeMap<String, String>>,
    env_lookup: &dyn Fn(&str) -> Option<String>,
) -> (String, Vec<String>) {
    let mut url = template.to_owned();
    let mut missing = Vec::new();
    for (name, var) in vars.into_iter().flatten() {
        let placeholder = format!("{{{name}}}");
        match env_lookup(var).filter(|v| !v.trim().is_empty()) {
            Some(v) => url = url.replace(&placeholder, v.trim()),
            None => missing.push(var.clone()),
        }
    }
    (url, missing)
}

fn parse_reset(s: Option<&str>) -> Result<Reset, String> {
    match s {
        None | Some("rolling") => Ok(Reset::Rolling),
        Some(tz) => Zone::new(tz).map(Reset::Midnight).ok_or_else(|| {
            format!("`{tz}` is neither \"rolling\" nor a time zone like \"UTC\" or \"America/Los_Angeles\"")
        }),
    }
}

fn limits_of(l: LimitsFile, day: Reset, month: Reset) -> Vec<Limit> {
    let entries = [
        (l.rpm, Axis::Requests, Window::Minute),
        (l.rph, Axis::Requests, Window::Hour),
        (l.rpd, Axis::Requests, Window::Day),
        (l.rpmo, Axis::Requests, Window::Month),
        (l.tpm, Axis::Tokens, Window::Minute),
        (l.tph, Axis::Tokens, Window::Hour),
        (l.tpd, Axis::Tokens, Window::Day),
        (l.tpmo, Axis::Tokens, Window::Month),
    ];
    entries
        .into_iter()
        .filter_map(|(max, axis, window)| {
            let reset = match window {
                Window::Minute | Window::Hour => Reset::Rolling,
                Window::Day => day,
                Window::Month => month,
            };
            max.map(|max| Limit {
                axis,
                window,
                max,
                reset,
            })
        })
        .collect()
}

/// A path from the config, with a leading `~/` read as the home directory.
fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), directories::BaseDirs::new()) {
        (Some(rest), Some(dirs)) => dirs.home_dir().join(rest),
        _ => PathBuf::from(p),
    }
}

/// Where state lives: `$FREEPOOL_STATE_DIR` (when not empty), else the platform data dir.
pub fn state_dir() -> PathBuf {
    if let Some(p) = env::var(env::STATE_DIR) {
        return PathBuf::from(p);
    }
    directories::ProjectDirs::from("", "", "freepool").map_or_else(
        || std::env::temp_dir().join("freepool"),
        |d| d.data_dir().to_path_buf(),
    )
}

/// Creates the state dir, private to the user (0700).
///
/// # Errors
///
/// The directory cannot be created or read.
pub fn ensure_state_dir(dir: &Path) -> std::io::Result<()> {
    fs_err::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs_err::metadata(dir)?;
        if meta.permissions().mode() & 0o077 != 0 {
            // Best effort: a dir we do not own keeps its mode.
            let _ = fs_err::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn load_user(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Catalog {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("providers.toml");
        std::fs::write(&path, text).unwrap();
        load_from(Some(&path), env)
    }

    #[test]
    fn builtin_catalog_is_clean_and_large() {
        let cat = load_from(None, &no_env);
        assert!(cat.problems.is_empty(), "{:?}", cat.problems);
        let live = cat.providers.iter().filter(|p| p.id != "local").count();
        assert!(live >= 14, "only {live} providers");
        assert!(cat.models().count() >= 60);
        assert!(
            cat.provider("local").is_none(),
            "local is off until enabled"
        );
        assert!(
            cat.provider("github").is_none(),
            "GitHub Models are gone upstream"
        );
    }

    /// The figures of the 2026-12-02 review that change what a user gets.
    #[test]
    fn catalog_review_pins_what_moved_upstream() {
        let cat = load_from(None, &no_env);
        let groq = cat.provider("groq").unwrap();
        for gone in ["llama-3.3-70b-versatile", "llama-3.1-8b-instant"] {
            assert!(!groq.models.iter().any(|m| m.id == gone), "{gone} is off");
            let id = format!("groq/{gone}");
            let (_, why) = cat.retired.iter().find(|(r, _)| *r == id).unwrap();
            assert!(why.starts_with("20"), "dated reason: {why}");
        }
        assert!(
            cat.provider("cerebras").is_none(),
            "Cerebras has no free tier"
        );
        assert!(cat.retired.iter().any(|(r, _)| r == "cerebras"));
        for p in ["kilo", "opencode"] {
            let p = cat.provider(p).unwrap_or_else(|| panic!("{p} on"));
            assert_eq!(p.trains_on_prompts, Some(true), "{}", p.id);
        }
        let ovh = cat
            .provider("ovhcloud")
            .expect("OVHcloud is on with no key");
        assert!(ovh.is_keyless());
        assert_eq!(ovh.trains_on_prompts, None, "not stated");
        assert!(ovh.models.len() >= 5);
        let keyless: Vec<_> = cat.providers.iter().filter(|p| p.is_keyless()).collect();
        assert!(keyless.len() >= 4, "{}", keyless.len());
        // Mistral's free mode is a monthly token pool.
        let mistral = cat.provider("mistral").unwrap();
        assert!(
            mistral
                .pools
                .iter()
                .flat_map(|p| &p.limits)
                .any(|l| l.key() == "tpmo" && l.max == 1_000_000_000)
        );
        let llm7 = cat.provider("llm7").unwrap();
        assert!(
            llm7.pools
                .iter()
                .flat_map(|p| &p.limits)
                .any(|l| l.key() == "rph" && l.max == 60)
        );
    }

    #[test]
    fn training_is_three_valued_and_unknown_fails_closed() {
        let text = "[settings]\nexclude_training = true\n\
                    [providers.groq]\ntrains_on_prompts = \"unknown\"\n";
        let cat = load_user(text, &|n| (n == "GROQ_API_KEY").then(|| "k".into()));
        assert!(cat.problems.is_empty(), "{:?}", cat.problems);
        assert!(cat.provider("groq").is_none(), "unknown counts as training");
        assert!(
            cat.provider("ovhcloud").is_none(),
            "unknown counts as training"
        );
        assert!(cat.provider("kilo").is_none(), "trains");
        let cat = load_user("[providers.groq]\ntrains_on_prompts = \"maybe\"\n", &no_env);
        let all: Vec<String> = cat.problems.iter().map(ToString::to_string).collect();
        assert!(
            all.iter()
                .any(|p| p.contains("providers.groq.trains_on_prompts")),
            "{all:?}"
        );
    }

    #[test]
    fn a_gone_entry_comes_back_only_when_the_user_says_so() {
        let cat = load_user(
            "[providers.groq.models.\"llama-3.3-70b-versatile\"]\nenabled = true\n",
            &|n| (n == "GROQ_API_KEY").then(|| "k".into()),
        );
        assert!(cat.problems.is_empty(), "{:?}", cat.problems);
        let groq = cat.provider("groq").unwrap();
        assert!(
            groq.models
                .iter()
                .any(|m| m.id == "llama-3.3-70b-versatile")
        );
        assert!(
            !cat.retired
                .iter()
                .any(|(r, _)| r.contains("llama-3.3-70b-v"))
        );
    }

    #[test]
    fn json_and_toml_forms_of_the_builtin_agree() {
        let (from_toml, problems) = parse_file(BUILTIN_CATALOG, Path::new("t")).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let mut from_json: CatalogFile = serde_json::from_str(BUILTIN_CATALOG_JSON).unwrap();
        let stubs = from_json
            .providers
            .values()
            .filter_map(|p| p.get("models").and_then(toml::Value::as_table))
            .flat_map(|ms| ms.values())
            .filter(|m| {
                m.as_table()
                    .is_some_and(|t| t.len() == 1 && t.contains_key("gone"))
            })
            .count();
        assert!(stubs >= 40, "retired models are stubs in the JSON: {stubs}");
        restore_retired(&mut from_json, &|_, _| true);
        assert_eq!(from_toml.providers, from_json.providers);
        assert_eq!(from_toml.settings, from_json.settings);
        let ids: Vec<_> = from_json.providers.keys().collect();
        assert_eq!(
            ids.first().map(|s| s.as_str()),
            Some("groq"),
            "file order is kept"
        );
    }

    #[test]
    fn family_is_shared_across_providers() {
        let cat = load_from(None, &no_env);
        let serving: Vec<_> = cat
            .models()
            .filter(|(_, m)| m.family == "gpt-oss-120b")
            .map(|(p, _)| p.id.as_str())
            .collect();
        assert!(serving.len() >= 3, "{serving:?}");
    }

    #[test]
    fn pools_and_fixed_resets_are_expressed() {
        let cat = load_from(None, &no_env);
        let or = cat.provider("openrouter").unwrap();
        assert_eq!(or.pools[0].limits[0].key(), "rpd");
        assert!(or.pools[0].covers("qwen/qwen3-coder:free"));
        let google = cat.provider("google").unwrap();
        let rpd = google.models[0]
            .limits
            .iter()
            .find(|l| l.key() == "rpd")
            .unwrap();
        assert_eq!(
            rpd.reset,
            Reset::Midnight(Zone::new("America/Los_Angeles").unwrap())
        );
        let rpm = google.models[0]
            .limits
            .iter()
            .find(|l| l.key() == "rpm")
            .unwrap();
        assert_eq!(rpm.reset, Reset::Rolling);
    }

    #[test]
    fn user_file_overrides_by_id_key_by_key() {
        let cat = load_user(
            r#"
[providers.groq.models."openai/gpt-oss-120b"]
limits = { rpd = 10 }

[providers.mistral]
enabled = false

[providers.groq.models."groq/compound"]
enabled = false
"#,
            &no_env,
        );
        assert!(cat.problems.is_empty(), "{:?}", cat.problems);
        assert!(cat.provider("mistral").is_none());
        let groq = cat.provider("groq").unwrap();
        assert!(!groq.models.iter().any(|m| m.id == "groq/compound"));
        let llama = groq
            .models
            .iter()
            .find(|m| m.id == "openai/gpt-oss-120b")
            .unwrap();
        let rpd = llama.limits.iter().find(|l| l.key() == "rpd").unwrap();
        assert_eq!(rpd.max, 10);
        // Untouched keys of the same table survive the merge.
        assert!(
            llama
                .limits
                .iter()
                .any(|l| l.key() == "tpm" && l.max == 8000)
        );
        assert_eq!(llama.context, 131_072);
    }

    #[test]
    fn keyless_line_turns_anonymous_providers_off() {
        let cat = load_user("[settings]\nkeyless = false\n", &no_env);
        assert!(cat.provider("kilo").is_none());
        assert!(cat.provider("llm7").is_none());
        let on = load_from(None, &no_env);
        assert!(on.provider("kilo").unwrap().is_keyless());
    }

    #[test]
    fn custom_provider_with_several_keys() {
        let env = |n: &str| (n == "MY_KEY").then(|| "env-secret-1".to_owned());
        let cat = load_user(
            r#"
[providers.mine]
base_url = "https://llm.example.com/v1"
keys = [{ value = "literal-secret" }, { env = "MY_KEY" }, { command = "echo cmd-secret" }]
[providers.mine.models.m1]
context = 8192
"#,
            &env,
        );
        assert!(cat.problems.is_empty(), "{:?}", cat.problems);
        let p = cat.provider("mine").unwrap();
        assert_eq!(p.keys.len(), 3);
        assert_eq!(
            p.usable_keys().count(),
            2,
            "the command waits until first use"
        );
        let mut slot = p.keys[2].clone();
        slot.resolve();
        assert_eq!(slot.key.unwrap().expose(), "cmd-secret");
    }

    #[test]
    fn syntax_error_names_file_and_line_and_enables_nothing() {
        let cat = load_user("[providers.groq]\nname = \"unterminated\n", &no_env);
        assert_eq!(cat.problems.len(), 1);
        let msg = cat.problems[0].to_string();
        assert!(msg.contains("providers.toml:2"), "{msg}");
        assert!(
            cat.providers.is_empty(),
            "nothing is sent while the user's file is unreadable"
        );
        assert!(cat.settings.keyless, "settings fall back to defaults");
    }

    #[test]
    fn unknown_key_is_named_with_its_line_and_costs_only_itself() {
        let cat = load_user(
            "\n\n[providers.groq.models.\"openai/gpt-oss-120b\"]\ncontxt = 5\n",
            &no_env,
        );
        assert_eq!(cat.problems.len(), 1, "{:?}", cat.problems);
        let msg = cat.problems[0].to_string();
        assert!(
            msg.ends_with(
                "providers.toml:4: providers.groq.models.\"openai/gpt-oss-120b\".contxt: unknown key (did you mean `context`?); ignored"
            ),
            "{msg}"
        );
        let groq = cat.provider("groq").expect("groq stays on");
        assert!(
            groq.models.iter().any(|m| m.id == "openai/gpt-oss-120b"),
            "the model keeps its built-in context"
        );
    }

    #[test]
    fn a_typo_in_an_id_is_an_error_with_the_close_match() {
        let cat = load_user(
            "[providers.grok]\nenabled = false\n\n[providers.groq.models.\"openai/gpt-oss-12\"]\nenabled = false\n",
            &no_env,
        );
        let all: Vec<String> = cat.problems.iter().map(ToString::to_string).collect();
        assert_eq!(all.len(), 2, "{all:#?}");
        assert!(
            all[0].ends_with("providers.toml:1: providers.grok: not a provider of the built-in catalog (did you mean `groq`?); a provider of your own needs base_url"),
            "{all:#?}"
        );
        assert!(
            all[1].contains("providers.toml:4: providers.groq.models.\"openai/gpt-oss-12\": not a model of groq in the built-in catalog (did you mean `openai/gpt-oss-120b`?)"),
            "{all:#?}"
        );
        let groq = cat
            .provider("groq")
            .expect("groq is still on: the typo turned nothing off");
        assert!(groq.models.iter().any(|m| m.id == "openai/gpt-oss-120b"));
    }

    #[test]
    fn a_bad_setting_falls_back_and_the_rest_of_the_file_still_counts() {
        let cat = load_user(
            "setings = 3\n[settings]\nmax_wait_secs = \"x\"\nbogus_setting = 1\nkeyless = \"no\"\nfanout_concurrency = 2\n\n[providers.groq]\npriority = 7\n",
            &no_env,
        );
        let all: Vec<String> = cat.problems.iter().map(ToString::to_string).collect();
        for want in [
            "providers.toml:1: setings: unknown top-level key (did you mean `settings`?); ignored",
            "providers.toml:3: settings.max_wait_secs: expected a whole number (0 or more), found the text \"x\"; using the default, 30",
            "providers.toml:4: settings.bogus_setting: unknown key; ignored",
            "providers.toml:5: settings.keyless: expected true or false, found the text \"no\"; keyless providers stay off until this is fixed",
        ] {
            assert!(
                all.iter().any(|p| p.ends_with(want)),
                "{want}\nnot in {all:#?}"
            );
        }
        assert_eq!(all.len(), 4, "{all:#?}");
        assert_eq!(cat.settings.max_wait, Duration::from_secs(30));
        assert_eq!(
            cat.settings.fanout_concurrency, 2,
            "good settings still apply"
        );
        assert!(
            !cat.settings.keyless,
            "a bad keyless takes the cautious reading"
        );
        assert_eq!(cat.provider("groq").map(|p| p.priority), Some(7));
        assert!(cat.providers.len() > 5, "providers stay on");
    }

    #[test]
    fn a_bad_vital_provider_key_keeps_only_that_provider_off() {
        let cat = load_user(
            "[providers.groq]\nenabled = \"nope\"\ntimeout_secs = \"long\"\n[providers.mistral]\ntimeout_secs = \"long\"\n",
            &no_env,
        );
        let all: Vec<String> = cat.problems.iter().map(ToString::to_string).collect();
        assert!(
            all.iter().any(|p| p.ends_with("providers.groq.enabled: expected true or false, found the text \"nope\"; the provider stays off until this is fixed")),
            "{all:#?}"
        );
        assert!(cat.provider("groq").is_none());
        assert!(
            cat.provider("mistral").is_some(),
            "a bad timeout is ignored: {all:#?}"
        );
        assert_eq!(all.len(), 3, "{all:#?}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            (
                "[providers.x]\nbase_url = \"ftp://a\"\n[providers.x.models.m]\ncontext = 4096\n",
                "providers.x.base_url",
            ),
            (
                "[providers.x]\nbase_url = \"http://127.0.0.1:9/v1\"\n[providers.x.models.m]\ncontext = 4096\n",
                "local = true",
            ),
            (
                "[providers.x]\nbase_url = \"https://a/v1\"\n[providers.x.models.m]\n",
                "models.\"m\".context",
            ),
            (
                "[providers.x]\nbase_url = \"https://a/v1\"\nday_reset = \"Mars/Base\"\n[providers.x.models.m]\ncontext = 4096\n",
                "day_reset",
            ),
            (
                "[providers.x]\nbase_url = \"https://a/v1\"\n[providers.x.models.m]\ncontext = 4096\ntier = 9\n",
                "tier",
            ),
        ];
        for (text, want) in cases {
            let cat = load_user(text, &no_env);
            let msg = cat
                .problems
                .first()
                .map(std::string::ToString::to_string)
                .unwrap_or_default();
            assert!(msg.contains(want), "{text:?}: {msg}");
            assert!(msg.contains("providers.toml:"), "{msg}");
        }
    }

    #[test]
    fn placeholders_fill_from_env_or_are_reported() {
        let env = |n: &str| (n == "CLOUDFLARE_ACCOUNT_ID").then(|| "acc123".to_owned());
        let cat = load_from(None, &env);
        assert!(
            cat.provider("cloudflare")
                .unwrap()
                .base_url
                .contains("/accounts/acc123/")
        );
        let cat = load_from(None, &no_env);
        assert_eq!(
            cat.provider("cloudflare").unwrap().missing_vars,
            vec!["CLOUDFLARE_ACCOUNT_ID"]
        );
    }

    #[test]
    fn a_key_pasted_into_key_env_is_refused_without_echo() {
        let key = "gsk_8Hq2mVb7Xz91LpQ4rT6nK3sW0yC5dF";
        let cat = load_user(
            &format!(
                "[providers.mine]\nbase_url = \"https://llm.example/v1\"\nkey_env = [\"{key}\", \"MINE_KEY\"]\n[providers.mine.models.m]\ncontext = 8192\n"
            ),
            &|n| (n == "MINE_KEY").then(|| "from-env".to_owned()),
        );
        assert_eq!(cat.problems.len(), 1, "{:?}", cat.problems);
        let msg = cat.problems[0].to_string();
        assert!(msg.contains("providers.mine.key_env[0]"), "{msg}");
        assert!(msg.contains("looks like a key itself"), "{msg}");
        assert!(!msg.contains(&key[4..]), "the value is echoed: {msg}");
        let mine = cat.provider("mine").unwrap();
        assert_eq!(mine.usable_keys().count(), 1, "the good slot still serves");
        // Names that are names pass, whatever their case.
        for name in ["GROQ_API_KEY", "my_key", "CLOUDFLARE_API_TOKEN_2"] {
            assert!(check_var_name(name).is_ok(), "{name}");
        }
        for bad in ["sk-abc", "has space", "1ABC", ""] {
            assert!(check_var_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_problem_is_reported_in_one_pass() {
        let cat = load_user(
            r#"
[providers.groq]
day_reset = "Mars/Base"
[providers.groq.models."openai/gpt-oss-120b"]
tier = 9
[providers.x]
base_url = "ftp://nowhere"
[providers.x.models.m]
context = 4096
[providers.y]
base_url = "https://y.example/v1"
[providers.y.pools.acct]
limits = { rpm = 3 }
models = ["m", "mm"]
[providers.y.models.m]
context = 4096
"#,
            &no_env,
        );
        let all: Vec<String> = cat.problems.iter().map(ToString::to_string).collect();
        for want in [
            "providers.groq.day_reset",
            "providers.groq.models.\"openai/gpt-oss-120b\".tier",
            "providers.x.base_url",
            "providers.y.pools.acct.models: `mm` is not a model of this provider (did you mean `m`?)",
        ] {
            assert!(
                all.iter().any(|p| p.contains(want)),
                "{want} not in {all:#?}"
            );
        }
        assert!(
            cat.provider("groq").is_some(),
            "groq keeps its other models"
        );
        assert!(cat.provider("x").is_none());
        assert_eq!(
            cat.provider("y").unwrap().pools[0].models,
            Some(vec!["m".to_owned()])
        );
    }

    #[test]
    fn key_debug_shows_only_fingerprint() {
        let k = ApiKey::new("sk-very-secret-value");
        assert!(!format!("{k:?} {k}").contains("secret"));
        assert_eq!(k.fingerprint().len(), 12);
    }

    #[cfg(unix)]
    #[test]
    fn literal_keys_in_a_readable_file_warn_and_state_dir_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("providers.toml");
        std::fs::write(
            &path,
            "[providers.groq]\nkeys = [{ value = \"gsk-literal\" }]\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cat = load_from(Some(&path), &no_env);
        assert!(
            cat.warnings.iter().any(|w| w.contains("chmod 600")),
            "{:?}",
            cat.warnings
        );
        assert!(!cat.warnings.iter().any(|w| w.contains("gsk-literal")));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load_from(Some(&path), &no_env).warnings.is_empty());
        let state = dir.path().join("state");
        ensure_state_dir(&state).unwrap();
        assert_eq!(
            std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn alias_env_vars_do_not_double_a_key() {
        let env =
            |n: &str| matches!(n, "GEMINI_API_KEY" | "GOOGLE_API_KEY").then(|| "same".to_owned());
        let cat = load_from(None, &env);
        assert_eq!(cat.provider("google").unwrap().usable_keys().count(), 1);
    }
}
