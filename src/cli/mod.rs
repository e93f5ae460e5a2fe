//! The command line: the server (no arguments) and the commands beside it.
//!
//! Each command is a thin shell over the library. Data goes to stdout, logs
//! and errors to stderr. `run` returns the exit code: 0 ok, 1 a user-facing
//! failure (bad config, a refused or failed delegate, secrets found by
//! `scan`), 2 something unexpected.
//!
//! Invariant: only this module and `main` know clap and anyhow.

mod check;
mod init;
mod statusline;

use std::fmt::Write as _;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{self, env};
use crate::dispatch::{self, DelegateRequest, Engine, texts};
use crate::{decisions, gate, mcp, status};

/// freepool-mcp: a pool of free LLM tiers as a worker tier for Claude Code.
///
/// With no command, runs the MCP server on stdin/stdout (this is what Claude
/// Code spawns). Register it with `claude mcp add freellmapi -- freepool-mcp`.
#[derive(Debug, Parser)]
#[command(name = "freepool-mcp", version, about, long_about)]
pub struct Cli {
    /// The user's catalog file [env: FREEPOOL_CONFIG; default: <config dir>/freepool/providers.toml].
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the ledger, decision log and budget snapshot live [env: FREEPOOL_STATE_DIR].
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The command (default: serve MCP on stdio).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the MCP server on stdin/stdout (the default), or with --port the
    /// pool over HTTP: OpenAI-compatible at /v1, MCP at /mcp.
    Serve {
        /// Serve HTTP on this port (0: any free one) instead of stdio.
        #[arg(long)]
        port: Option<u16>,
        /// The address to listen on; anything but loopback reaches beyond
        /// this machine (a warning says so).
        #[arg(long, default_value = "127.0.0.1", requires = "port")]
        bind: std::net::IpAddr,
        /// Print the bearer token HTTP clients must send (made on first use) and exit.
        #[arg(long, conflicts_with = "port")]
        print_token: bool,
        /// Accept requests without the token: for a test instance on loopback only.
        #[arg(long, requires = "port")]
        insecure_no_auth: bool,
    },
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
        /// A project file to send along: a path, a glob or path:first-last (repeatable).
        #[arg(long = "file", short = 'f', value_name = "SPEC")]
        files: Vec<String>,
        /// Write the answer to this file instead of printing it.
        #[arg(long, value_name = "PATH")]
        write_to: Option<String>,
        /// With --write-to, replace the file if it exists.
        #[arg(long, requires = "write_to")]
        overwrite: bool,
    },
    /// Validate the configuration and keys. Sends nothing unless --probe.
    Check {
        /// Also send one tiny request to each usable provider (uses free
        /// quota) and compare its model list with the catalog.
        #[arg(long)]
        probe: bool,
        /// With --probe: write what the model lists say as an override file
        /// to review and merge into your providers.toml (never overwrites).
        #[arg(long, value_name = "FILE", requires = "probe")]
        write_overrides: Option<std::path::PathBuf>,
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
    /// Scan files (or `-` for stdin) for secrets, as the gate does before sending.
    ///
    /// Exit codes: 0 nothing found; 1 a secret found; 2 a file could not be
    /// read (the others are still scanned). Bytes that are not UTF-8 are read
    /// lossily, as the gate reads project files, so a pre-commit hook can
    /// pass any file.
    Scan {
        /// The files; `-` reads stdin.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<String>,
    },
    /// Claude Code's statusLine command: stores the usage windows, prints a short line.
    Statusline {
        /// A previous statusLine command to run first with the same stdin.
        #[arg(long, value_name = "COMMAND")]
        then: Option<String>,
    },
    /// One-stop setup: config template, statusLine, permissions for the
    /// read-only tools, registration, CLAUDE.md pointer. Exits 1 when a step
    /// could not be done (Claude Code not on PATH).
    Init {
        /// Show what would change and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Register in ./.mcp.json and point ./CLAUDE.md, instead of user scope.
        #[arg(long)]
        project: bool,
        /// Remove what init added (the config file and the state stay).
        #[arg(long)]
        undo: bool,
    },
    /// The routing-decision log.
    Log {
        /// What to do with it.
        #[command(subcommand)]
        action: LogAction,
    },
    /// The usage ledger: move this machine's into a shared one.
    Ledger {
        /// What to do with it.
        #[command(subcommand)]
        action: LedgerAction,
    },
}

/// `ledger` actions.
#[derive(Debug, Subcommand)]
pub enum LedgerAction {
    /// Copy this machine's ledger (use in the live windows, leases, benches,
    /// learned limits, verdicts) into a PostgreSQL ledger; then set
    /// `[settings] ledger` to its URL.
    Migrate {
        /// The shared ledger, `postgres://user@host/db`.
        #[arg(long, value_name = "URL")]
        to: String,
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
pub(crate) const SERVER_NAME: &str = "freellmapi";

fn out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to stdout"),
    }
}

/// The user's config file: `--config`, else `$FREEPOOL_CONFIG`, else the default place.
fn config_file(cli: &Cli) -> Option<PathBuf> {
    cli.config
        .clone()
        .or_else(|| env::var(env::CONFIG).map(PathBuf::from))
}

/// The HTTP bearer token: `$FREEPOOL_HTTP_TOKEN`, else the token file
/// beside the config (made on first use).
fn http_token(cli: &Cli) -> anyhow::Result<String> {
    if let Some(t) = env::var(env::HTTP_TOKEN) {
        return Ok(t);
    }
    let file = config_file(cli)
        .or_else(config::default_config_path)
        .ok_or_else(|| anyhow::anyhow!("no config dir on this system: set FREEPOOL_HTTP_TOKEN"))?;
    let path = crate::serve::token::path_for(&file);
    crate::serve::token::load_or_create(&path).map_err(|e| {
        anyhow::anyhow!(
            "the token file {}: {}",
            path.display(),
            crate::words::io(e.kind())
        )
    })
}

fn load(cli: &Cli) -> (config::Catalog, PathBuf) {
    let catalog = config::load(config_file(cli).as_deref());
    for w in &catalog.warnings {
        tracing::warn!("{w}");
    }
    (catalog, state_of(cli))
}

/// The state dir: `--state-dir`, else `$FREEPOOL_STATE_DIR`, else the platform's data dir.
fn state_of(cli: &Cli) -> PathBuf {
    cli.state_dir.clone().unwrap_or_else(config::state_dir)
}

/// The catalog (and the budget snapshot) being loaded ahead of time on its own thread.
pub struct Preload(std::thread::JoinHandle<(config::Catalog, Option<crate::budget::Snapshot>)>);

/// For the server, starts loading the catalog at once on another thread, so
/// that it overlaps with setting up logging, the runtime and the MCP transport:
/// `initialize` is answered sooner. Other commands load when they need to.
pub fn preload(cli: &Cli) -> Option<Preload> {
    if !matches!(
        cli.command,
        None | Some(Command::Serve {
            print_token: false,
            ..
        })
    ) {
        return None;
    }
    let file = config_file(cli);
    let state = state_of(cli);
    std::thread::Builder::new()
        .name("catalog".into())
        .spawn(move || {
            let catalog = config::load(file.as_deref());
            let budget = crate::budget::load(&state);
            (catalog, budget)
        })
        .ok()
        .map(Preload)
}

/// Runs the command; returns the exit code.
///
/// # Errors
///
/// What the command could not do for a reason outside it (stdout closed,
/// a file that cannot be read); the binary prints it and exits 2.
pub async fn run(cli: Cli, preloaded: Option<Preload>) -> anyhow::Result<i32> {
    match &cli.command {
        None
        | Some(Command::Serve {
            port: None,
            print_token: false,
            ..
        }) => {
            // The catalog may still be loading: the engine waits for it at first use.
            let engine = match preloaded {
                Some(Preload(handle)) => Engine::loading(handle, state_of(&cli)),
                None => Engine::new(config::load(config_file(&cli).as_deref()), state_of(&cli)),
            };
            mcp::serve(Arc::new(engine)).await?;
            Ok(0)
        }
        Some(Command::Serve {
            print_token: true, ..
        }) => {
            let token = http_token(&cli)?;
            out(&format!("{token}\n"))?;
            Ok(0)
        }
        Some(Command::Serve {
            port: Some(port),
            bind,
            insecure_no_auth,
            ..
        }) => {
            if *insecure_no_auth && !bind.is_loopback() {
                eprintln!(
                    "error: --insecure-no-auth serves only on loopback; {bind} is not (drop --bind, or drop --insecure-no-auth)"
                );
                return Ok(2);
            }
            let token = if *insecure_no_auth {
                None
            } else {
                Some(http_token(&cli)?)
            };
            let engine = match preloaded {
                Some(Preload(handle)) => Engine::loading(handle, state_of(&cli)),
                None => Engine::new(config::load(config_file(&cli).as_deref()), state_of(&cli)),
            };
            let opts = crate::serve::Options {
                bind: *bind,
                port: *port,
                token,
            };
            if let Err(e) = crate::serve::run(Arc::new(engine), opts).await {
                eprintln!(
                    "error: cannot serve on {bind}:{port}: {}",
                    crate::words::io(e.kind())
                );
                return Ok(2);
            }
            Ok(0)
        }
        Some(Command::Models) => {
            let (catalog, _) = load(&cli);
            out(&status::catalog_table(&catalog))?;
            report_problems(&catalog);
            Ok(i32::from(!catalog.problems.is_empty()))
        }
        Some(Command::Delegate {
            prompt,
            model,
            system,
            max_tokens,
            files,
            write_to,
            overwrite,
        }) => {
            let req = DelegateRequest {
                prompt: prompt.clone(),
                system: system.clone(),
                model: model.clone(),
                max_tokens: *max_tokens,
                files: files.clone(),
                write_to: write_to.clone(),
                overwrite: *overwrite,
                via: "cli",
                ..DelegateRequest::default()
            };
            delegate(&cli, req).await
        }
        Some(Command::Check {
            probe,
            write_overrides,
        }) => check::run(&cli, *probe, write_overrides.as_deref()).await,
        Some(Command::Status {
            json,
            clear_cooldowns,
        }) => status(&cli, *json, clear_cooldowns.as_deref()).await,
        Some(Command::Scan { files }) => scan(files),
        Some(Command::Statusline { then }) => {
            statusline::run(&cli, then.as_deref()).await;
            Ok(0)
        }
        Some(Command::Init {
            dry_run,
            project,
            undo,
        }) => init::run(&cli, *dry_run, *project, *undo),
        Some(Command::Log { action }) => log(&cli, action).await,
        Some(Command::Ledger {
            action: LedgerAction::Migrate { to },
        }) => {
            let (catalog, state) = load(&cli);
            let engine = Engine::new(catalog, state.clone());
            match engine.migrate_ledger(to).await {
                Ok((rows, at)) => {
                    out(&format!(
                        "copied {rows} rows from {} to {at}; now set `ledger = \"{}\"` under [settings] (or FREEPOOL_LEDGER_URL) on every machine that uses these keys\n",
                        state.join("ledger.sqlite").display(),
                        crate::dispatch::shown_url(to)
                    ))?;
                    Ok(0)
                }
                Err(e) => {
                    eprintln!("error: {}", texts::full(&e));
                    Ok(1)
                }
            }
        }
    }
}

/// `delegate`: the answer on stdout, provenance (and, at a terminal, each attempt) on stderr.
async fn delegate(cli: &Cli, mut req: DelegateRequest) -> anyhow::Result<i32> {
    if req.prompt == "-" {
        req.prompt.clear();
        std::io::stdin()
            .read_to_string(&mut req.prompt)
            .context("reading the prompt from stdin")?;
    }
    let (catalog, state) = load(cli);
    report_problems(&catalog);
    let engine = Engine::new(catalog, state);
    // A person at a terminal sees the attempts as they happen.
    let tty = std::io::stderr().is_terminal();
    let note = move |msg: String| {
        if tty {
            eprintln!("freepool: {msg}");
        }
    };
    match engine.delegate(req, &note).await {
        Ok(s) => {
            match &s.wrote {
                Some(w) => eprintln!("{}", texts::wrote_line(w)),
                None => {
                    out(s.text.trim_end())?;
                    out("\n")?;
                }
            }
            eprintln!("{}", texts::provenance(&s));
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: {}", texts::full(&e));
            Ok(1)
        }
    }
}

/// `status`: what is left, as a table or JSON; optionally clearing cooldowns first.
async fn status(cli: &Cli, json: bool, clear: Option<&str>) -> anyhow::Result<i32> {
    let (catalog, state) = load(cli);
    // Clearing cooldowns writes; showing only reads, so a read-only state works.
    let engine = if clear.is_some() {
        Engine::new(catalog, state)
    } else {
        Engine::new(catalog, state).read_only()
    };
    let failed = |e: dispatch::Error| anyhow::anyhow!(texts::full(&e));
    let store = engine.store().await.map_err(failed)?;
    if let Some(which) = clear {
        let n = store
            .clear_cooldowns((which != "*").then(|| which.to_owned()))
            .await
            .map_err(|e| failed(e.into()))?;
        eprintln!("cleared {n} cooldown(s)");
    }
    let catalog = engine.resolved_catalog().await;
    let snap = engine.snapshot_all(&catalog).await.map_err(failed)?;
    let report = status::report(&catalog, &snap, &store.location());
    // What delegation did today and overall, from the decision log.
    let stats = engine
        .with_log(|l| l.all())
        .await
        .map(|rows| decisions::stats(&rows))
        .ok();
    let today = crate::quota::iso(engine.now() / 1000)
        .chars()
        .take(10)
        .collect::<String>();
    let delegation = stats.as_ref().map(|s| {
        let day = s
            .days
            .iter()
            .find(|(d, _)| *d == today)
            .map(|(_, t)| *t)
            .unwrap_or_default();
        serde_json::json!({"today": day, "overall": s.overall})
    });
    if json {
        let mut v = serde_json::to_value(&report)?;
        v["delegation"] = delegation.unwrap_or(serde_json::Value::Null);
        out(&serde_json::to_string_pretty(&v)?)?;
        out("\n")?;
    } else {
        out(&status::report_text(&report))?;
        if let Some(s) = &stats {
            let today_row: Vec<(String, decisions::Totals)> = s
                .days
                .iter()
                .filter(|(d, _)| *d == today)
                .cloned()
                .collect();
            out(&delegation_text(&s.overall, &today_row))?;
        }
    }
    Ok(0)
}

/// `scan`: the credential gate over a file or stdin; 1 when anything is found.
fn scan(files: &[String]) -> anyhow::Result<i32> {
    let mut found = 0;
    let mut unreadable = 0;
    let mut report = String::new();
    for file in files {
        let (name, bytes) = if file == "-" {
            let mut b = Vec::new();
            let read = std::io::stdin().read_to_end(&mut b);
            ("<stdin>", read.map(|_| b))
        } else {
            (file.as_str(), std::fs::read(file))
        };
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => {
                eprintln!(
                    "error: {name}: cannot be read ({})",
                    crate::words::io(e.kind())
                );
                unreadable += 1;
                continue;
            }
        };
        // Valid UTF-8 (nearly always) is checked by the fast path and borrowed.
        let text = match std::str::from_utf8(&bytes) {
            Ok(t) => std::borrow::Cow::Borrowed(t),
            Err(_) => String::from_utf8_lossy(&bytes),
        };
        let findings = gate::scan(&text);
        for f in &findings {
            let _ = writeln!(
                report,
                "{name}:{}:{}: {} [{}] {}",
                f.line, f.column, f.kind, f.rule, f.masked
            );
        }
        found += findings.len();
    }
    out(&report)?;
    let scanned = files.len() - unreadable;
    let files_word = |n: usize| if n == 1 { "file" } else { "files" };
    if found == 0 {
        eprintln!(
            "{scanned} {} scanned: no secrets found ({} rules)",
            files_word(scanned),
            gate::rule_count()
        );
    } else {
        eprintln!(
            "{scanned} {} scanned: {found} secret(s) found",
            files_word(scanned)
        );
    }
    Ok(if unreadable > 0 {
        2
    } else {
        i32::from(found > 0)
    })
}

async fn log(cli: &Cli, action: &LogAction) -> anyhow::Result<i32> {
    let (catalog, state) = load(cli);
    let engine = Engine::new(catalog, state).read_only();
    let rows = engine
        .with_log(super::decisions::Log::all)
        .await
        .map_err(|e| anyhow::anyhow!(texts::full(&e)))?;
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

/// Config problems and warnings on stderr, once per command.
fn report_problems(catalog: &config::Catalog) {
    for p in &catalog.problems {
        eprintln!("error: {p}");
    }
    for w in &catalog.warnings {
        eprintln!("warning: {w}");
    }
}

fn stats_text(s: &decisions::Stats) -> String {
    let mut out = format!("{} decisions\n", s.total);
    let section = |title: &str, rows: &[(String, usize)]| {
        let mut t = format!("\n{title}:\n");
        for (k, n) in rows {
            let _ = writeln!(t, "  {k:<24} {n}");
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
        let _ = writeln!(
            out,
            "  {m:<52} {a}/{j} ({:.0}%)",
            100.0 * *a as f64 / (*j).max(1) as f64
        );
    }
    let _ = writeln!(out, "\ncapability-gate hits: {}", s.capability_hits);
    out.push_str(&delegation_text(&s.overall, &s.days));
    out
}

/// What delegation did: per day (the last 14) and overall.
fn delegation_text(overall: &decisions::Totals, days: &[(String, decisions::Totals)]) -> String {
    let mut out = String::from(
        "\ndelegation (tokens the pool processed; Claude tokens saved, input-token equivalents):\n",
    );
    let _ = writeln!(
        out,
        "  {:<12} {:>9} {:>7} {:>13} {:>13} {:>9} {:>7}",
        "day", "delegated", "failed", "pool tokens", "Claude saved", "accepted", "redone"
    );
    let row = |label: &str, t: &decisions::Totals| {
        format!(
            "  {label:<12} {:>9} {:>7} {:>13} {:>13} {:>9} {:>7}\n",
            t.delegated, t.failed, t.pool_tokens, t.claude_tokens_saved, t.accepted, t.redone
        )
    };
    for (day, t) in days.iter().rev().take(14).rev() {
        out.push_str(&row(day, t));
    }
    out.push_str(&row("overall", overall));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
