//! `freepool-mcp init [--project] [--dry-run]`: the one-stop setup.
//!
//! A config template, the statusLine, the registration with Claude Code and
//! a one-line pointer in CLAUDE.md. It shows what it changes, is idempotent,
//! and keeps a backup of any settings file it edits.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::{Cli, SERVER_NAME, out};
use crate::config;
use crate::dispatch::now_ms;

/// The commented template `init` writes when the user has no config file.
const CONFIG_TEMPLATE: &str = r#"# freepool-mcp user configuration. It overrides the built-in catalog by id,
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

#[allow(
    clippy::too_many_lines,
    reason = "four independent steps in the order they are shown; each is commented"
)]
pub(super) fn run(cli: &Cli, dry_run: bool, project: bool) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("finding this program's path")?;
    let exe_s = exe.display().to_string();
    let home = directories::BaseDirs::new()
        .map(|b| b.home_dir().to_path_buf())
        .context("finding the home directory")?;
    let mut changes: Vec<String> = Vec::new();
    let mut apply: Vec<Box<dyn FnOnce() -> anyhow::Result<()>>> = Vec::new();

    // 1. A commented config template.
    if let Some(path) = super::config_file(cli).or_else(config::default_config_path) {
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
                    let backup =
                        path.with_extension(format!("json.freepool-backup-{}", now_ms() / 1000));
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
                        bail!("`claude mcp add` failed ({})", crate::words::exit(status));
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
        let _ = writeln!(text, "{}{c}", if dry_run { "would: " } else { "" });
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

    #[test]
    fn quoting_for_the_shell() {
        assert_eq!(
            shell_quote("/usr/bin/freepool-mcp"),
            "/usr/bin/freepool-mcp"
        );
        assert_eq!(shell_quote("echo 'hi' | x"), "'echo '\\''hi'\\'' | x'");
    }
}
