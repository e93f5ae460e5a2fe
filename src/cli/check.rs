//! `freepool-mcp check [--probe]`: the configuration, keys and state dir, and optionally one tiny request per provider.

use super::{Cli, load, out};
use crate::config::{self, env};
use crate::dispatch::{DelegateRequest, Engine, texts};
use crate::{budget, router};

pub(super) async fn run(cli: &Cli, probe: bool) -> anyhow::Result<i32> {
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
        if router::is_usable(p) {
            usable += 1;
        }
    }
    text.push_str(&format!(
        "providers: {} enabled, {usable} usable now (keys or keyless)\n",
        catalog.providers.len()
    ));
    match engine.store().await {
        Ok(store) => {
            text.push_str(&format!("state: {} (writable)\n", state.display()));
            if let Some(w) = store.warning() {
                text.push_str(&format!("warning: {w}\n"));
            }
        }
        Err(e) => {
            text.push_str(&format!("error: {}\n", texts::full(&e)));
            code = 1;
        }
    }
    if let Err(e) = budget::pinned_mode(
        env::var(env::BUDGET_MODE).as_deref(),
        catalog.settings.budget_mode.as_deref(),
    ) {
        text.push_str(&format!("error: {e}\n"));
        code = 1;
    }
    text.push_str(&format!(
        "budget: {}\n",
        engine.budget().await.mode.as_str()
    ));
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
    }
    Ok(code)
}
