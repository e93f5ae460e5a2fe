//! `freepool-mcp check [--probe [--write-overrides FILE]]`: the configuration,
//! keys and state dir; optionally one tiny request per provider and its
//! model list against the catalog, written as an override file if asked.

use super::{Cli, load, out};
use crate::config::{self, env};
use crate::dispatch::{DelegateRequest, Engine, discovery, texts};
use crate::{budget, router};
use std::fmt::Write as _;

pub(super) async fn run(
    cli: &Cli,
    probe: bool,
    write_overrides: Option<&std::path::Path>,
) -> anyhow::Result<i32> {
    let (catalog, state) = load(cli);
    let mut code = 0;
    let mut text = String::new();
    match &catalog.user_file {
        Some(p) => {
            let _ = writeln!(text, "config: {} (over the built-in catalog)", p.display());
        }
        None => text.push_str("config: built-in catalog only (no user file)\n"),
    }
    for p in &catalog.problems {
        let _ = writeln!(text, "error: {p}");
        code = 1;
    }
    for w in &catalog.warnings {
        let _ = writeln!(text, "warning: {w}");
    }
    let engine = Engine::new(catalog, state.clone());
    let catalog = engine.resolved_catalog().await;
    let mut usable = 0;
    let mut idle = Vec::new();
    for p in &catalog.providers {
        for k in &p.keys {
            if let Some(problem) = &k.problem
                && !matches!(k.source, config::KeySource::Env(_))
            {
                let _ = writeln!(text, "error: {}: {problem}", p.id);
                code = 1;
            }
        }
        match router::unusable(p) {
            None => usable += 1,
            Some(why) => idle.push(format!("  {}: {why}", p.id)),
        }
    }
    let _ = writeln!(
        text,
        "providers: {} enabled, {usable} usable now (keys or keyless)",
        catalog.providers.len()
    );
    if !idle.is_empty() {
        let _ = writeln!(
            text,
            "enabled but not usable until set up:\n{}",
            idle.join("\n")
        );
    }
    if usable == 0 {
        let _ = writeln!(
            text,
            "error: no provider is usable, so nothing can be delegated: set one of the keys above"
        );
        code = 1;
    }
    match engine.store().await {
        Ok(store) => {
            let _ = writeln!(text, "state: {} (writable)", state.display());
            let _ = writeln!(text, "ledger: {}", store.location());
            if let Some(w) = store.warning() {
                let _ = writeln!(text, "warning: {w}");
            }
            if let Ok(snap) = engine.snapshot_all(&catalog).await
                && !snap.gone.is_empty()
            {
                let _ = writeln!(
                    text,
                    "gone upstream (left out until the catalog entry changes or `freepool-mcp status --clear-cooldowns`):"
                );
                for g in &snap.gone {
                    let _ = writeln!(
                        text,
                        "  {} key {}: since {}: \"{}\"",
                        g.scope.provider.clone() + "/" + g.scope.model.as_deref().unwrap_or("*"),
                        g.scope.key.as_deref().unwrap_or("*"),
                        crate::quota::day(g.since),
                        g.words
                    );
                }
            }
        }
        Err(e) => {
            let _ = writeln!(text, "error: {}", texts::full(&e));
            code = 1;
        }
    }
    if let Err(e) = budget::pinned_mode(
        env::var(env::BUDGET_MODE).as_deref(),
        catalog.settings.budget_mode.as_deref(),
    ) {
        let _ = writeln!(text, "error: {e}");
        code = 1;
    }
    let _ = writeln!(text, "budget: {}", engine.budget().await.mode.as_str());
    out(&text)?;
    if probe {
        out("\nprobing each usable provider with one tiny request (uses free quota):\n")?;
        for p in catalog.providers.iter().filter(|p| router::is_usable(p)) {
            let Some(m) = p.models.first() else { continue };
            let req = DelegateRequest {
                prompt: "Reply with the single word OK.".into(),
                model: Some(format!("{}/{}", p.id, m.id)),
                max_tokens: Some(5),
                ..Default::default()
            };
            let line = match engine.delegate(req, &|_| {}).await {
                Ok(s) => format!("  ok    {} ({} ms)\n", s.model, s.latency_ms),
                Err(e) => {
                    code = 1;
                    let first = texts::full(&e)
                        .lines()
                        .take(3)
                        .collect::<Vec<_>>()
                        .join(" ");
                    format!("  FAIL  {}/{}: {first}\n", p.id, m.id)
                }
            };
            out(&line)?;
        }
        code = code.max(compare_lists(&engine, &catalog, write_overrides).await?);
    }
    Ok(code)
}

/// Writes a new file whole or not at all, and never over an existing one
/// (it may hold the user's edits): a temporary file beside it, then a hard
/// link, which fails if the name is taken.
fn write_new(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = dir.join(format!(".freepool-overrides-{}.tmp", std::process::id()));
    let written = std::fs::write(&tmp, text).and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    written
}

/// Reads each usable provider's model list, says where it and the catalog
/// disagree, and writes the override file when asked.
async fn compare_lists(
    engine: &Engine,
    catalog: &config::Catalog,
    write_overrides: Option<&std::path::Path>,
) -> anyhow::Result<i32> {
    out("\nmodel lists against the catalog:\n")?;
    let mut drifts = Vec::new();
    let mut code = 0;
    for p in catalog.providers.iter().filter(|p| router::is_usable(p)) {
        match engine.discover(p).await {
            Ok(listed) => {
                let d = discovery::compare(catalog, p, &listed);
                out(&discovery::report(&d))?;
                drifts.push(d);
            }
            Err(why) => out(&format!("  {}: no model list ({why})\n", p.id))?,
        }
    }
    let Some(path) = write_overrides else {
        return Ok(code);
    };
    let text = discovery::overrides(&drifts, &crate::quota::day(engine.now()));
    let changes = drifts.iter().filter(|d| !d.is_clean()).count();
    match write_new(path, &text) {
        Ok(()) => out(&format!(
            "\nwrote {} ({changes} providers differ); review it, then merge it into your providers.toml\n",
            path.display()
        ))?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            eprintln!(
                "error: {} already exists; it is left as it was (name a new file)",
                path.display()
            );
            code = 1;
        }
        Err(e) => {
            eprintln!(
                "error: could not write {}: {}",
                path.display(),
                crate::words::io(e.kind())
            );
            code = 1;
        }
    }
    Ok(code)
}
