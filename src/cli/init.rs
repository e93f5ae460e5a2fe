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

/// The tools that only read: allowed for good, so the first `claude_budget`
/// of a session does not stop to ask the user.
const READ_ONLY_TOOLS: [&str; 2] = ["list_models", "claude_budget"];

/// What `init` (or `init --undo`) will do: a line to show per step, and the
/// steps themselves, run only when it is not a dry run.
#[derive(Default)]
struct Plan {
    lines: Vec<String>,
    apply: Vec<Box<dyn FnOnce() -> anyhow::Result<()>>>,
    /// Something asked could not be done (shown, and the exit code is 1).
    incomplete: bool,
}

impl Plan {
    fn say(&mut self, line: String) {
        self.lines.push(line);
    }
    fn then(&mut self, line: String, f: impl FnOnce() -> anyhow::Result<()> + 'static) {
        self.lines.push(line);
        self.apply.push(Box::new(f));
    }
}

pub(super) fn run(cli: &Cli, dry_run: bool, project: bool, undo: bool) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("finding this program's path")?;
    let home = directories::BaseDirs::new()
        .map(|b| b.home_dir().to_path_buf())
        .context("finding the home directory")?;
    let mut plan = Plan::default();
    config_step(cli, undo, &mut plan);
    settings_step(&home, &exe, undo, &mut plan)?;
    if project {
        project_step(&exe, undo, &mut plan)?;
    } else {
        user_registration_step(&exe, undo, &mut plan);
    }
    claude_md_step(&home, project, undo, &mut plan);
    if undo {
        plan.say(format!(
            "state: {} left as is (the ledger and the decision log); remove it to forget them",
            config::state_dir().display()
        ));
    }
    let mut text = String::new();
    for l in &plan.lines {
        let _ = writeln!(text, "{}{l}", if dry_run { "would: " } else { "" });
    }
    out(&text)?;
    if !dry_run {
        for a in plan.apply {
            a()?;
        }
    }
    Ok(i32::from(plan.incomplete))
}

/// Step 1, a commented config template (never removed: it may hold the user's keys).
fn config_step(cli: &Cli, undo: bool, plan: &mut Plan) {
    let Some(path) = super::config_file(cli).or_else(config::default_config_path) else {
        return;
    };
    if undo {
        if path.exists() {
            plan.say(format!(
                "config: {} left as is (it is yours, and may hold keys)",
                path.display()
            ));
        }
    } else if path.exists() {
        plan.say(format!("config: {} exists, left as is", path.display()));
    } else {
        plan.then(
            format!("config: write a commented template to {}", path.display()),
            move || {
                if let Some(dir) = path.parent() {
                    fs_err::create_dir_all(dir)?;
                }
                fs_err::write(&path, CONFIG_TEMPLATE)?;
                Ok(())
            },
        );
    }
}

/// Step 2, `~/.claude/settings.json`: the statusLine (a previous command
/// kept behind `--then`) and the read-only tools allowed; one write, one backup.
fn settings_step(home: &Path, exe: &Path, undo: bool, plan: &mut Plan) -> anyhow::Result<()> {
    let path = home.join(".claude").join("settings.json");
    let mut settings: serde_json::Value = match fs_err::read_to_string(&path) {
        Ok(t) => serde_json::from_str(&t).with_context(|| {
            format!(
                "{} is not valid JSON; fix it or move it aside",
                path.display()
            )
        })?,
        Err(_) => serde_json::json!({}),
    };
    let obj = settings
        .as_object_mut()
        .context("settings.json must hold a JSON object")?;
    let mut changed = Vec::new();
    // The statusLine.
    let current = obj
        .get("statusLine")
        .and_then(|s| s.get("command"))
        .and_then(|c| c.as_str())
        .map(str::to_owned);
    let is_ours = |c: &str| c.contains("freepool-mcp") && c.contains(" statusline");
    let ours = format!("{} statusline", shell_quote(&exe.display().to_string()));
    match (undo, current) {
        (false, Some(c)) if is_ours(&c) => {
            plan.say(format!("statusLine: already set in {}", path.display()));
        }
        (false, other) => {
            let command = match &other {
                Some(prev) => format!("{ours} --then {}", shell_quote(prev)),
                None => ours,
            };
            changed.push(format!(
                "statusLine: set to `{command}`{}",
                if other.is_some() {
                    " (the previous command runs first, behind --then)"
                } else {
                    ""
                }
            ));
            obj.insert(
                "statusLine".into(),
                serde_json::json!({"type": "command", "command": command, "padding": 0}),
            );
        }
        (true, Some(c)) if is_ours(&c) => {
            match c
                .split_once(" --then ")
                .map(|(_, prev)| shell_unquote(prev))
            {
                Some(prev) => {
                    changed.push(format!("statusLine: put back `{prev}`"));
                    if let Some(line) = obj.get_mut("statusLine").and_then(|s| s.as_object_mut()) {
                        line.insert("command".into(), prev.into());
                    }
                }
                None => {
                    changed.push("statusLine: remove freepool's".into());
                    obj.remove("statusLine");
                }
            }
        }
        (true, _) => {}
    }
    // The read-only tools, allowed for good.
    let names: Vec<String> = READ_ONLY_TOOLS
        .iter()
        .map(|t| format!("mcp__{SERVER_NAME}__{t}"))
        .collect();
    let allow = obj
        .entry("permissions")
        .or_insert_with(|| serde_json::json!({}))
        .as_object_mut()
        .context("settings.json: permissions must be an object")?
        .entry("allow")
        .or_insert_with(|| serde_json::json!([]))
        .as_array_mut()
        .context("settings.json: permissions.allow must be a list")?;
    let had = allow.len();
    if undo {
        allow.retain(|v| !v.as_str().is_some_and(|s| names.iter().any(|n| n == s)));
        if allow.len() < had {
            changed.push(format!("permissions: remove {}", names.join(", ")));
        }
    } else {
        for n in &names {
            if !allow.iter().any(|v| v.as_str() == Some(n)) {
                allow.push(n.clone().into());
            }
        }
        if allow.len() > had {
            changed.push(format!(
                "permissions: allow the read-only tools for good ({})",
                names.join(", ")
            ));
        } else {
            plan.say("permissions: the read-only tools are already allowed".into());
        }
    }
    // Leave no empty tables behind an undo.
    if undo && let Some(perms) = obj.get_mut("permissions").and_then(|p| p.as_object_mut()) {
        if perms
            .get("allow")
            .and_then(|a| a.as_array())
            .is_some_and(Vec::is_empty)
        {
            perms.remove("allow");
        }
        if perms.is_empty() {
            obj.remove("permissions");
        }
    }
    if changed.is_empty() {
        return Ok(());
    }
    let text = serde_json::to_string_pretty(&settings)?;
    let line = format!(
        "{} in {} (backup written)",
        changed.join("; "),
        path.display()
    );
    plan.then(line, move || {
        fs_err::create_dir_all(path.parent().context("settings.json has a folder")?)?;
        if path.exists() {
            let backup = path.with_extension(format!("json.freepool-backup-{}", now_ms() / 1000));
            fs_err::copy(&path, &backup)?;
        }
        write_atomic(&path, &text)
    });
    Ok(())
}

/// The command `.mcp.json` should run: the bare name when this very binary
/// is what PATH finds (the file is shared; other machines install elsewhere),
/// else this machine's path.
fn project_command(exe: &Path) -> (String, bool) {
    let on_path = which("freepool-mcp").and_then(|p| std::fs::canonicalize(p).ok());
    let me = std::fs::canonicalize(exe).ok();
    if on_path.is_some() && on_path == me {
        ("freepool-mcp".to_owned(), true)
    } else {
        (exe.display().to_string(), false)
    }
}

/// Step 3, `./.mcp.json`, the project's shared server list.
fn project_step(exe: &Path, undo: bool, plan: &mut Plan) -> anyhow::Result<()> {
    let path = PathBuf::from(".mcp.json");
    let mut doc: serde_json::Value = match fs_err::read_to_string(&path) {
        Ok(t) => serde_json::from_str(&t)
            .with_context(|| format!("{} is not valid JSON", path.display()))?,
        Err(_) => serde_json::json!({}),
    };
    let present = doc.pointer(&format!("/mcpServers/{SERVER_NAME}")).is_some();
    if undo {
        if present {
            if let Some(servers) = doc.get_mut("mcpServers").and_then(|s| s.as_object_mut()) {
                servers.remove(SERVER_NAME);
            }
            let text = serde_json::to_string_pretty(&doc)?;
            plan.then(
                format!("register: remove {SERVER_NAME} from .mcp.json"),
                move || write_atomic(&path, &text),
            );
        }
        return Ok(());
    }
    if present {
        plan.say(format!("register: {SERVER_NAME} already in .mcp.json"));
        return Ok(());
    }
    let (command, bare) = project_command(exe);
    doc.as_object_mut()
        .context(".mcp.json must hold a JSON object")?
        .entry("mcpServers")
        .or_insert_with(|| serde_json::json!({}))
        .as_object_mut()
        .context("mcpServers must be an object")?
        .insert(
            SERVER_NAME.into(),
            serde_json::json!({"type": "stdio", "command": command, "args": [], "env": {}}),
        );
    let text = serde_json::to_string_pretty(&doc)?;
    let how = if bare {
        "as `freepool-mcp`, found on PATH"
    } else {
        "by this machine's path, since freepool-mcp is not on PATH: others need it installed and the path changed"
    };
    plan.then(
        format!("register: add {SERVER_NAME} to .mcp.json ({how})"),
        move || write_atomic(&path, &text),
    );
    plan.say(
        "note: Claude Code asks each person to approve a project's server the first time it starts (claude -p starts it without asking)".into(),
    );
    Ok(())
}

/// Step 3, user scope, through `claude mcp add` / `remove`.
fn user_registration_step(exe: &Path, undo: bool, plan: &mut Plan) {
    let exe_s = exe.display().to_string();
    let claude = which("claude");
    let registered = claude.as_ref().is_some_and(|c| {
        std::process::Command::new(c)
            .args(["mcp", "get", SERVER_NAME])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let (verb, args): (&str, Vec<String>) = if undo {
        (
            "remove",
            vec![
                "mcp".into(),
                "remove".into(),
                "--scope".into(),
                "user".into(),
                SERVER_NAME.into(),
            ],
        )
    } else {
        (
            "add",
            vec![
                "mcp".into(),
                "add".into(),
                "--scope".into(),
                "user".into(),
                SERVER_NAME.into(),
                "--".into(),
                exe_s.clone(),
            ],
        )
    };
    let shown = format!(
        "claude {}",
        args.iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    );
    match (claude, registered, undo) {
        (Some(_), true, false) => {
            plan.say(format!(
                "register: {SERVER_NAME} already registered with Claude Code"
            ));
        }
        (Some(_), false, true) => {}
        (Some(c), _, _) => plan.then(format!("register: run `{shown}`"), move || {
            let status = std::process::Command::new(c)
                .args(&args)
                .stdout(std::process::Stdio::null())
                .status()?;
            if !status.success() {
                bail!(
                    "`claude mcp {verb}` failed ({})",
                    crate::words::exit(status)
                );
            }
            Ok(())
        }),
        (None, _, _) => {
            plan.say(format!(
                "register: not done: Claude Code is not on PATH; run this once it is: {shown}"
            ));
            plan.incomplete = true;
        }
    }
}

/// Step 4, the rubric's one-line pointer in CLAUDE.md.
fn claude_md_step(home: &Path, project: bool, undo: bool, plan: &mut Plan) {
    let md = if project {
        PathBuf::from("CLAUDE.md")
    } else {
        home.join(".claude").join("CLAUDE.md")
    };
    let existing = fs_err::read_to_string(&md).unwrap_or_default();
    let ours = existing.contains("<!-- freepool-mcp -->");
    match (undo, ours) {
        (false, true) => plan.say(format!("CLAUDE.md: pointer already in {}", md.display())),
        (false, false) => plan.then(
            format!("CLAUDE.md: add one line to {}", md.display()),
            move || {
                if let Some(dir) = md.parent().filter(|d| !d.as_os_str().is_empty()) {
                    fs_err::create_dir_all(dir)?;
                }
                let sep = if existing.is_empty() || existing.ends_with('\n') {
                    ""
                } else {
                    "\n"
                };
                write_atomic(&md, &format!("{existing}{sep}{CLAUDE_MD_LINE}\n"))
            },
        ),
        (true, true) => plan.then(
            format!("CLAUDE.md: remove freepool's line from {}", md.display()),
            move || {
                let kept: String = existing
                    .split_inclusive('\n')
                    .filter(|l| !l.contains("<!-- freepool-mcp -->"))
                    .collect();
                write_atomic(&md, &kept)
            },
        ),
        (true, false) => {}
    }
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

/// Undoes `shell_quote`.
fn shell_unquote(s: &str) -> String {
    let s = s.trim();
    if !s.starts_with('\'') {
        return s.to_owned();
    }
    // 'a'\''b' -> a'b
    s.trim_matches('\'').replace("'\\''", "'")
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
        for s in ["~/bin/my-line", "echo 'hi' | x", "/usr/bin/a b"] {
            assert_eq!(shell_unquote(&shell_quote(s)), s);
        }
    }
}
