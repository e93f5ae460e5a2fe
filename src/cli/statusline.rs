//! `freepool-mcp statusline [--then CMD]`: Claude Code's statusLine command.
//!
//! It stores the usage windows Claude Code hands it and prints one short
//! line. Never fails: whatever arrives, it prints a line and exits 0.

use std::fmt::Write as _;
use std::io::{Read, Write};

use super::{Cli, load, out};
use crate::config::env;
use crate::dispatch::{Engine, now_ms};
use crate::{budget, status};

pub(super) async fn run(cli: &Cli, then: Option<&str>) {
    let mut input = String::new();
    let _ = std::io::stdin()
        .take(4 * 1024 * 1024)
        .read_to_string(&mut input);
    let mut line = String::new();
    if let Some(prev) = then.and_then(|cmd| run_previous(cmd, &input)) {
        line.push_str(prev.trim_end());
        line.push_str(" | ");
    }
    let (catalog, state) = load(cli);
    let now = now_ms() / 1000;
    let snap = budget::parse_statusline(&input, now);
    if let Err(e) = budget::store(&state, &snap) {
        tracing::debug!("could not store the budget snapshot: {e}");
    }
    let a = budget::assess_now(
        &state,
        env::var(env::BUDGET_MODE).as_deref(),
        catalog.settings.budget_mode.as_deref(),
        now,
    );
    let pct = |w: Option<budget::WindowState>| {
        w.map_or("?".to_owned(), |w| budget::percent(w.used_percentage))
    };
    let _ = write!(
        line,
        "pool: {} · week {} · 5h {}",
        a.mode.as_str(),
        pct(a.weekly),
        pct(a.five_hour)
    );
    // What the pool can take right now; left out if the ledger cannot be read.
    let engine = Engine::new(catalog, state);
    let catalog = engine.resolved_catalog().await;
    if let Ok(snap) = engine.snapshot(&catalog).await {
        let _ = write!(
            line,
            " · {} models ready",
            status::ready_count(&catalog, &snap)
        );
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
