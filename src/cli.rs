//! The command line: the server (no arguments) and the commands beside it.
//!
//! Each command is a thin shell over the library. Data goes to stdout, logs
//! and errors to stderr. `run` returns the exit code: 0 ok, 1 a user-facing
//! failure (bad config, a refused or failed delegate, secrets found by
//! `scan`), 2 something unexpected.
//!
//! Invariant: only this module and `main` know clap and anyhow.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{self, env};
use crate::dispatch::{DelegateRequest, Engine};
use crate::{budget, decisions, gate, ledger, mcp, status};

/// freepool-mcp: a pool of free LLM tiers as a worker tier for Claude Code.
///
/// With no command, runs the MCP server on stdin/stdout (this is what Claude
/// Code spawns). Register it with `claude mcp add freellmapi -- freepool-mcp`.
#[derive(Debug, Parser)]
#[command(name = "freepool-mcp", version, about, long_about)]
pub struct Cli {
    /// The user's catalog file (default: <config dir>/freepool/providers.toml).
    #[arg(long, global = true, env = env::CONFIG, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the ledger, decision log and budget snapshot live.
    #[arg(long, global = true, env = env::STATE_DIR, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The command (default: serve MCP on stdio).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the MCP server on stdin/stdout (the default).
    Serve,
    /// List the catalog: providers, models, limits and whether a key is set.
    Models,
    /// Run one prompt on the pool and print the answer (provenance on stderr).
    Delegate {
        /// The prompt, or `-` to read it from stdin.
        prompt: String,
        /// `auto`, `provider/model`, or a family name.
        #[arg(long, short)]
        model: Option<String>,
        /// A system prompt.
        #[arg(long)]
        system: Option<String>,
        /// Cap on the answer's tokens.
        #[arg(long)]
        max_tokens: Option<u32>,
    },
    /// Validate the configuration and keys. Sends nothing unless --probe.
    Check {
        /// Also send one tiny request to each usable provider (uses free quota).
        #[arg(long)]
        probe: bool,
    },
    /// What is left: use per window, cooldowns, keys by fingerprint, next reset.
    Status {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Clear cooldowns (all, or one provider's) before showing status.
        #[arg(long, value_name = "PROVIDER", num_args = 0..=1, default_missing_value = "*")]
        clear_cooldowns: Option<String>,
    },
    /// Scan a file (or `-` for stdin) for secrets; exits 1 when any is found.
    Scan {
        /// The file, or `-`.
        file: String,
    },
    /// Claude Code's statusLine command: stores the usage windows, prints a short line.
    Statusline {
        /// A previous statusLine command to run first with the same stdin.
        #[arg(long, value_name = "COMMAND")]
        then: Option<String>,
    },
    /// One-stop setup: config template, statusLine, registration, CLAUDE.md pointer.
    Init {
        /// Show what would change and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Register in ./.mcp.json and point ./CLAUDE.md, instead of user scope.
        #[arg(long)]
        project: bool,
    },
    /// The routing-decision log.
    Log {
        /// What to do with it.
        #[command(subcommand)]
        action: LogAction,
    },
}

/// `log` actions.
#[derive(Debug, Subcommand)]
pub enum LogAction {
    /// Decisions by route, score band, gate and task type; pool acceptance per model.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The labelled dataset (task, score, route, outcome).
    Export {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
    },
}

/// Export formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header.
    Csv,
}

/// Name the server registers under in Claude Code.
pub const SERVER_NAME: &str = "freellmapi";

fn out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to stdout"),
    }
}

fn load_quiet(config_file: Option<PathBuf>) -> config::Catalog {
    let user = config_file.or_else(config::user_config_path);
    let lookup = |name: &str| std::env::var(name).ok();
    config::load_from(user.as_deref(), &lookup)
}

fn load(cli: &Cli) -> (config::Catalog, PathBuf) {
    let catalog = load_quiet(cli.config.clone());
    for w in &catalog.warnings {
        tracing::warn!("{w}");
    }
    (catalog, state_of(cli))
}

fn state_of(cli: &Cli) -> PathBuf {
    cli.state_dir.clone().unwrap_or_else(config::state_dir)
}

/// The catalog being loaded ahead of time on its own thread.
pub type Preload = std::thread::JoinHandle<config::Catalog>;

/// For the server, starts loading the catalog at once on another thread, so
/// that it overlaps with setting up logging, the runtime and the MCP transport:
/// `initialize` is answered sooner. Other commands load when they need to.
pub fn preload(cli: &Cli) -> Option<Preload> {
    if !matches!(cli.command, None | Some(Command::Serve)) {
        return None;
    }
    let config_file = cli.config.clone();
    std::thread::Builder::new()
        .name("catalog".into())
        .spawn(move || load_quiet(config_file))
        .ok()
}

/// Runs the command; returns the exit code.
pub async fn run(cli: Cli, preloaded: Option<Preload>) -> anyhow::Result<i32> {
    match &cli.command {
        None | Some(Command::Serve) => {
            // The catalog may still be loading: the engine waits for it at first use.
            let engine = match preloaded {
                Some(handle) => Engine::loading(handle, state_of(&cli)),
                None => Engine::new(load_quiet(cli.config.clone()), state_of(&cli)),
            };
            mcp::serve(Arc::new(engine)).await?;
            Ok(0)
        }
        Some(Command::Models) => {
            let (catalog, _) = load(&cli);
            out(&status::catalog_table(&catalog))?;
            report_problems(&catalog);
            Ok(if catalog.problems.is_empty() { 0 } else { 1 })
        }
        Some(Command::Delegate {
            prompt,
            model,
            system,
            max_tokens,
        }) => {
            let prompt = if prompt == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("reading the prompt from stdin")?;
                s
            } else {
                prompt.clone()
            };
            let (catalog, state) = load(&cli);
            report_problems(&catalog);
            let engine = Engine::new(catalog, state);
            let req = DelegateRequest {
                prompt,
                system: system.clone(),
                model: model.clone(),
                max_tokens: *max_tokens,
                temperature: None,
                log: None,
            };
            match engine.delegate(req).await {
                Ok(s) => {
                    out(s.text.trim_end())?;
                    out("\n")?;
                    let rendered = mcp::render_served(&s);
                    let provenance = rendered.rsplit("\n---\n").next().unwrap_or("");
                    eprintln!("{provenance}");
                    Ok(0)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(1)
                }
            }
        }
        Some(Command::Check { probe }) => check(&cli, *probe).await,
        Some(Command::Status {
            json,
            clear_cooldowns,
        }) => {
            let (catalog, state) = load(&cli);
            let engine = Engine::new(catalog, state);
            let ledger = engine.ledger().map_err(|e| anyhow::anyhow!("{e}"))?;
            if let Some(which) = clear_cooldowns {
                let n = ledger.clear_cooldowns((which != "*").then_some(which.as_str()))?;
                eprintln!("cleared {n} cooldown(s)");
            }
            let catalog = engine.resolved_catalog().await;
            let snap = engine
                .snapshot(&catalog)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let report = status::report(&catalog, &snap, &ledger.path().display().to_string());
            if *json {
                out(&serde_json::to_string_pretty(&report)?)?;
                out("\n")?;
            } else {
                out(&status::report_text(&report))?;
            }
            Ok(0)
        }
        Some(Command::Scan { file }) => {
            let text = if file == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("reading stdin")?;
                s
            } else {
                let bytes = fs_err::read(file)?;
                String::from_utf8_lossy(&bytes).into_owned()
            };
            let findings = gate::scan(&text);
            let name = if file == "-" {
                "<stdin>"
            } else {
                file.as_str()
            };
            let mut report = String::new();
            for f in &findings {
                report.push_str(&format!(
                    "{name}:{}:{}: {} [{}] {}\n",
                    f.line, f.column, f.kind, f.rule, f.masked
                ));
            }
            out(&report)?;
            if findings.is_empty() {
                eprintln!("{name}: no secrets found ({} rules)", gate::rule_count());
                Ok(0)
            } else {
                eprintln!("{name}: {} secret(s) found", findings.len());
                Ok(1)
            }
        }
        Some(Command::Statusline { then }) => {
            statusline(&cli, then.as_deref());
            Ok(0)
        }
        Some(Command::Init { dry_run, project }) => init(&cli, *dry_run, *project),
        Some(Command::Log { action }) => {
            let state = cli.state_dir.clone().unwrap_or_else(config::state_dir);
            let log = decisions::Log::open(&state, None)?;
            let rows = log.all()?;
            match action {
                LogAction::Stats { json } => {
                    let s = decisions::stats(&rows);
                    if *json {
                        out(&serde_json::to_string_pretty(&s)?)?;
                        out("\n")?;
                    } else {
                        out(&stats_text(&s))?;
                    }
                }
                LogAction::Export { format } => match format {
                    Format::Csv => out(&decisions::to_csv(&rows))?,
                    Format::Jsonl => {
                        let mut s = String::new();
                        for e in decisions::examples(&rows) {
                            s.push_str(&serde_json::to_string(&e)?);
                            s.push('\n');
                        }
                        out(&s)?;
                    }
                },
            }
            Ok(0)
        }
    }
}

fn report_problems(catalog: &config::Catalog) {
    for p in &catalog.problems {
        eprintln!("error: {p}");
    }
}

fn stats_text(s: &decisions::Stats) -> String {
    let mut out = format!("{} decisions\n", s.total);
    let section = |title: &str, rows: &[(String, usize)]| {
        let mut t = format!("\n{title}:\n");
        for (k, n) in rows {
            t.push_str(&format!("  {k:<24} {n}\n"));
        }
        t
    };
    out.push_str(&section("by route", &s.by_route));
    out.push_str(&section("by score band", &s.by_band));
    out.push_str(&section("by gate", &s.by_gate));
    out.push_str(&section("by task type", &s.by_task_type));
    out.push_str("\npool acceptance per model (accepted / judged):\n");
    if s.acceptance.is_empty() {
        out.push_str("  no outcomes reported yet\n");
    }
    for (m, a, j) in &s.acceptance {
        out.push_str(&format!(
            "  {m:<52} {a}/{j} ({:.0}%)\n",
            100.0 * *a as f64 / (*j).max(1) as f64
        ));
    }
    out.push_str(&format!("\ncapability-gate hits: {}\n", s.capability_hits));
    out
}

async fn check(cli: &Cli, probe: bool) -> anyhow::Result<i32> {
    let (catalog, state) = load(cli);
    let mut code = 0;
    let mut text = String::new();
    match &catalog.user_file {
        Some(p) => text.push_str(&format!(
            "config: {} (over the built-in catalog)\n",
            p.display()
        )),
        None => text.push_str("config: built-in catalog only (no user file)\n"),
    }
    for p in &catalog.problems {
        text.push_str(&format!("error: {p}\n"));
        code = 1;
    }
    for w in &catalog.warnings {
        text.push_str(&format!("warning: {w}\n"));
    }
    let engine = Engine::new(catalog, state.clone());
    let catalog = engine.resolved_catalog().await;
    let mut usable = 0;
    for p in &catalog.providers {
        for k in &p.keys {
            if let Some(problem) = &k.problem
                && !matches!(k.source, config::KeySource::Env(_))
            {
                text.push_str(&format!("error: {}: {problem}\n", p.id));
                code = 1;
            }
        }
        if crate::router::is_usable(p) {
            usable += 1;
        }
    }
    text.push_str(&format!(
        "providers: {} enabled, {usable} usable now (keys or keyless)\n",
        catalog.providers.len()
    ));
    match engine.ledger() {
        Ok(l) => {
            text.push_str(&format!("state: {} (writable)\n", state.display()));
            if let Some(w) = &l.warning {
                text.push_str(&format!("warning: {w}\n"));
            }
        }
        Err(e) => {
            text.push_str(&format!("error: {e}\n"));
            code = 1;
        }
    }
    if let Err(e) = budget::pinned_mode(
        std::env::var(env::BUDGET_MODE).ok().as_deref(),
        catalog.settings.budget_mode.as_deref(),
    ) {
        text.push_str(&format!("error: {e}\n"));
        code = 1;
    }
    text.push_str(&format!("budget: {}\n", engine.budget().mode.as_str()));
    out(&text)?;
    if probe {
        out("\nprobing each usable provider with one tiny request (uses free quota):\n")?;
        for p in catalog
            .providers
            .iter()
            .filter(|p| crate::router::is_usable(p))
        {
            let Some(m) = p.models.first() else { continue };
            let req = DelegateRequest {
                prompt: "Reply with the single word OK.".into(),
                model: Some(format!("{}/{}", p.id, m.id)),
                max_tokens: Some(5),
                ..Default::default()
            };
            let line = match engine.delegate(req).await {
                Ok(s) => format!("  ok    {} ({} ms)\n", s.model, s.latency_ms),
                Err(e) => {
                    code = 1;
                    let first = e.to_string().lines().take(3).collect::<Vec<_>>().join(" ");
                    format!("  FAIL  {}/{}: {first}\n", p.id, m.id)
                }
            };
            out(&line)?;
        }
    }
    Ok(code)
}

/// The statusLine command. Never fails: whatever arrives, it prints a line and exits 0.
fn statusline(cli: &Cli, then: Option<&str>) {
    let mut input = String::new();
    let _ = std::io::stdin()
        .take(4 * 1024 * 1024)
        .read_to_string(&mut input);
    let mut line = String::new();
    if let Some(prev) = then.and_then(|cmd| run_previous(cmd, &input)) {
        line.push_str(prev.trim_end());
        line.push_str(" | ");
    }
    let state = cli.state_dir.clone().unwrap_or_else(config::state_dir);
    let now = ledger::now_ms() / 1000;
    let snap = budget::parse_statusline(&input, now);
    if let Err(e) = budget::store(&state, &snap) {
        tracing::debug!("could not store the budget snapshot: {e}");
    }
    let stored = budget::load(&state);
    let (catalog, _) = load(cli);
    let pinned = budget::pinned_mode(
        std::env::var(env::BUDGET_MODE).ok().as_deref(),
        catalog.settings.budget_mode.as_deref(),
    )
    .unwrap_or(None);
    let a = budget::assess(stored.as_ref(), pinned, now);
    let pct = |w: Option<budget::WindowState>| {
        w.map_or("?".to_owned(), |w| format!("{:.0}%", w.used_percentage))
    };
    line.push_str(&format!(
        "pool: {} · week {} · 5h {}",
        a.mode.as_str(),
        pct(a.weekly),
        pct(a.five_hour)
    ));
    // What the pool can take right now; left out if the ledger cannot be read.
    let usable: Vec<&config::Provider> = catalog
        .providers
        .iter()
        .filter(|p| crate::router::is_usable(p))
        .collect();
    if let Ok(snap) = ledger::Ledger::open(&state).and_then(|l| l.snapshot(&usable, now * 1000)) {
        line.push_str(&format!(
            " · {} models ready",
            status::ready_count(&catalog, &snap)
        ));
    }
    let _ = out(&format!("{line}\n"));
}

fn run_previous(cmd: &str, input: &str) -> Option<String> {
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let output = child.wait_with_output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let kept: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    (output.status.success() && !kept.is_empty()).then(|| kept.join(" "))
}

/// The commented template `init` writes when the user has no config file.
pub const CONFIG_TEMPLATE: &str = r#"# freepool-mcp user configuration. It overrides the built-in catalog by id,
# key by key; see `freepool-mcp models` for every provider and model.
#
# Keys: set the provider's environment variable (GROQ_API_KEY, GEMINI_API_KEY,
# ...), or give them here. A file with literal keys must be private (chmod 600).

[settings]
# keyless = false             # turn off the anonymous providers (kilo, llm7, pollinations)
# exclude_training = true     # skip providers whose free tier may train on prompts
# budget_mode = "delegate_more"   # pin a mode for headless runs
# max_attempts = 5
# call_timeout_secs = 300

# [providers.groq]
# keys = [{ env = "GROQ_API_KEY" }, { command = "pass show groq" }]

# [providers.cerebras]
# enabled = false

# [providers.openrouter.pools.account-daily]
# limits = { rpd = 1000 }     # you hold $10+ of credit

# [providers.local]
# enabled = true              # Ollama / LM Studio / llama.cpp on this machine
# [providers.local.models."qwen2.5-coder:7b"]
# context = 32768
"#;

const CLAUDE_MD_LINE: &str = "- Route work per the freellmapi MCP server's instructions: delegate mechanical tasks below the difficulty threshold to the free pool, keep secrets and hard reasoning on Claude, read every pool answer, and log each routing decision. <!-- freepool-mcp -->";

fn init(cli: &Cli, dry_run: bool, project: bool) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("finding this program's path")?;
    let exe_s = exe.display().to_string();
    let home = directories::BaseDirs::new()
        .map(|b| b.home_dir().to_path_buf())
        .context("finding the home directory")?;
    let mut changes: Vec<String> = Vec::new();
    let mut apply: Vec<Box<dyn FnOnce() -> anyhow::Result<()>>> = Vec::new();

    // 1. A commented config template.
    if let Some(path) = cli.config.clone().or_else(config::user_config_path) {
        if path.exists() {
            changes.push(format!("config: {} exists, left as is", path.display()));
        } else {
            changes.push(format!(
                "config: write a commented template to {}",
                path.display()
            ));
            apply.push(Box::new(move || {
                if let Some(dir) = path.parent() {
                    fs_err::create_dir_all(dir)?;
                }
                fs_err::write(&path, CONFIG_TEMPLATE)?;
                Ok(())
            }));
        }
    }

    // 2. The statusLine, keeping any previous command behind --then.
    let settings_path = home.join(".claude").join("settings.json");
    let mut settings: serde_json::Value = match fs_err::read_to_string(&settings_path) {
        Ok(t) => serde_json::from_str(&t).with_context(|| {
            format!(
                "{} is not valid JSON; fix it or move it aside",
                settings_path.display()
            )
        })?,
        Err(_) => serde_json::json!({}),
    };
    let current = settings
        .pointer("/statusLine/command")
        .and_then(|c| c.as_str())
        .map(str::to_owned);
    let ours = format!("{} statusline", shell_quote(&exe_s));
    match current {
        Some(c) if c.contains("freepool-mcp") && c.contains("statusline") => changes.push(format!(
            "statusLine: already set in {}",
            settings_path.display()
        )),
        other => {
            let command = match &other {
                Some(prev) => format!("{ours} --then {}", shell_quote(prev)),
                None => ours,
            };
            changes.push(format!(
                "statusLine: set to `{command}` in {}{}",
                settings_path.display(),
                if other.is_some() {
                    " (previous command kept behind --then, backup written)"
                } else {
                    ""
                }
            ));
            let obj = settings
                .as_object_mut()
                .context("settings.json must hold a JSON object")?;
            obj.insert(
                "statusLine".into(),
                serde_json::json!({"type": "command", "command": command, "padding": 0}),
            );
            let text = serde_json::to_string_pretty(&settings)?;
            let path = settings_path.clone();
            apply.push(Box::new(move || {
                fs_err::create_dir_all(path.parent().expect("has a parent"))?;
                if path.exists() {
                    let backup = path.with_extension(format!(
                        "json.freepool-backup-{}",
                        ledger::now_ms() / 1000
                    ));
                    fs_err::copy(&path, &backup)?;
                }
                write_atomic(&path, &text)
            }));
        }
    }

    // 3. Registration.
    if project {
        let path = PathBuf::from(".mcp.json");
        let mut doc: serde_json::Value = match fs_err::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t)
                .with_context(|| format!("{} is not valid JSON", path.display()))?,
            Err(_) => serde_json::json!({}),
        };
        if doc.pointer(&format!("/mcpServers/{SERVER_NAME}")).is_some() {
            changes.push(format!("register: {SERVER_NAME} already in .mcp.json"));
        } else {
            changes.push(format!("register: add {SERVER_NAME} to .mcp.json"));
            let servers = doc
                .as_object_mut()
                .context(".mcp.json must hold a JSON object")?
                .entry("mcpServers")
                .or_insert_with(|| serde_json::json!({}));
            servers
                .as_object_mut()
                .context("mcpServers must be an object")?
                .insert(
                    SERVER_NAME.into(),
                    serde_json::json!({"type": "stdio", "command": exe_s, "args": [], "env": {}}),
                );
            let text = serde_json::to_string_pretty(&doc)?;
            apply.push(Box::new(move || write_atomic(&path, &text)));
        }
    } else {
        let claude = which("claude");
        let registered = claude.as_ref().is_some_and(|c| {
            std::process::Command::new(c)
                .args(["mcp", "get", SERVER_NAME])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        let add = format!(
            "claude mcp add --scope user {SERVER_NAME} -- {}",
            shell_quote(&exe_s)
        );
        match (claude, registered) {
            (Some(_), true) => changes.push(format!(
                "register: {SERVER_NAME} already registered with Claude Code"
            )),
            (Some(c), false) => {
                changes.push(format!("register: run `{add}`"));
                let exe_s = exe_s.clone();
                apply.push(Box::new(move || {
                    let status = std::process::Command::new(c)
                        .args(["mcp", "add", "--scope", "user", SERVER_NAME, "--", &exe_s])
                        .stdout(std::process::Stdio::null())
                        .status()?;
                    if !status.success() {
                        bail!("`claude mcp add` failed ({status})");
                    }
                    Ok(())
                }));
            }
            (None, _) => changes.push(format!(
                "register: Claude Code is not on PATH; run this once it is: {add}"
            )),
        }
    }

    // 4. The rubric's pointer in CLAUDE.md.
    let md = if project {
        PathBuf::from("CLAUDE.md")
    } else {
        home.join(".claude").join("CLAUDE.md")
    };
    let existing = fs_err::read_to_string(&md).unwrap_or_default();
    if existing.contains("<!-- freepool-mcp -->") {
        changes.push(format!("CLAUDE.md: pointer already in {}", md.display()));
    } else {
        changes.push(format!("CLAUDE.md: add one line to {}", md.display()));
        apply.push(Box::new(move || {
            if let Some(dir) = md.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs_err::create_dir_all(dir)?;
            }
            let sep = if existing.is_empty() || existing.ends_with('\n') {
                ""
            } else {
                "\n"
            };
            write_atomic(&md, &format!("{existing}{sep}{CLAUDE_MD_LINE}\n"))
        }));
    }

    let mut text = String::new();
    for c in &changes {
        text.push_str(&format!("{}{c}\n", if dry_run { "would: " } else { "" }));
    }
    out(&text)?;
    if !dry_run {
        for a in apply {
            a()?;
        }
    }
    Ok(0)
}

fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("freepool-tmp");
    fs_err::write(&tmp, text)?;
    fs_err::rename(&tmp, path)?;
    Ok(())
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-=:".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn quoting_for_the_shell() {
        assert_eq!(
            shell_quote("/usr/bin/freepool-mcp"),
            "/usr/bin/freepool-mcp"
        );
        assert_eq!(shell_quote("echo 'hi' | x"), "'echo '\\''hi'\\'' | x'");
    }
}
