//! The commands beside the server, run as a user would.

use std::process::Stdio;

use crate::support::{Sandbox, single_provider};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_for_every_command() {
    let sb = Sandbox::new();
    for cmd in [
        vec!["--help"],
        vec!["models", "--help"],
        vec!["delegate", "--help"],
        vec!["check", "--help"],
        vec!["status", "--help"],
        vec!["scan", "--help"],
        vec!["statusline", "--help"],
        vec!["init", "--help"],
        vec!["log", "--help"],
        vec!["log", "export", "--help"],
    ] {
        let out = sb.cmd().args(&cmd).output().unwrap();
        assert!(out.status.success(), "{cmd:?}");
        assert!(text(&out.stdout).contains("Usage: freepool-mcp"), "{cmd:?}");
    }
}

#[test]
fn delegate_prints_the_answer_and_provenance_on_stderr() {
    let (_mock, sb) = single_provider("alpha");
    let out = sb.cmd().args(["delegate", "say hi"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "answer from alpha: say hi\n");
    assert!(text(&out.stderr).contains("served by alpha/m1"));
    // Exact ids and stdin prompts work too.
    let out = sb.run_with_stdin(&["delegate", "-", "--model", "alpha/m1"], "from stdin");
    assert_eq!(text(&out.stdout), "answer from alpha: from stdin\n");
}

#[test]
fn delegate_with_no_provider_says_what_to_set() {
    let sb = Sandbox::new();
    let out = sb.cmd().args(["delegate", "hello"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("no model can take this request now"), "{err}");
    // Eleven unconfigured providers are one line, not eleven.
    assert!(
        err.contains("\n11 providers have no key or setting (list_models, or `freepool-mcp models`, names them).\n"),
        "{err}"
    );
    assert!(err.lines().count() <= 5, "{err}");
}

#[test]
fn scan_reports_and_exits_one() {
    let sb = Sandbox::new();
    let secret = format!("AKIA{}", "QWERTYUIOPASDFGH");
    let out = sb.run_with_stdin(&["scan", "-"], &format!("ok line\naws = {secret}\n"));
    assert_eq!(out.status.code(), Some(1));
    let o = text(&out.stdout);
    assert!(
        o.starts_with("<stdin>:2:7: AWS access key id [aws-access-key-id] AKIA…[20 chars]"),
        "{o}"
    );
    assert!(!o.contains("QWERTY"));
    let out = sb.run_with_stdin(&["scan", "-"], "just prose about a password policy\n");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn statusline_always_prints_a_line_and_exits_zero() {
    let sb = Sandbox::new();
    for input in ["", "garbage", "{\"rate_limits\": null}", "[]"] {
        let out = sb.run_with_stdin(&["statusline"], input);
        assert!(out.status.success());
        assert!(
            text(&out.stdout).starts_with("pool: unknown"),
            "{}",
            text(&out.stdout)
        );
    }
    let real = r#"{"session_id":"a","model":{"id":"m","display_name":"Opus"},"rate_limits":{"five_hour":{"used_percentage":42,"resets_at":4102444800},"seven_day":{"used_percentage":61.2,"resets_at":4102444800}}}"#;
    let out = sb.run_with_stdin(
        &["statusline", "--then", "read x; echo previous line"],
        real,
    );
    assert_eq!(
        text(&out.stdout),
        "previous line | pool: prefer_sonnet · week 61% · 5h 42% · 0 models ready\n"
    );
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sb.state().join("budget.json")).unwrap())
            .unwrap();
    assert_eq!(stored["seven_day"]["used_percentage"], 61.2);
    // A pinned mode wins.
    let out = sb
        .cmd()
        .env("FREEPOOL_BUDGET_MODE", "exhausted")
        .arg("statusline")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        text(&out.stdout).starts_with("pool: exhausted"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn init_is_idempotent_and_keeps_the_old_statusline() {
    let sb = Sandbox::new();
    std::fs::remove_file(sb.config_path()).unwrap();
    let claude = sb.home().join(".claude");
    std::fs::create_dir_all(&claude).unwrap();
    std::fs::write(
        claude.join("settings.json"),
        r#"{"theme":"dark","statusLine":{"type":"command","command":"~/bin/my-line"}}"#,
    )
    .unwrap();
    // No `claude` on PATH here: registration is printed, not run.
    let dry = sb
        .cmd()
        .env("PATH", "/usr/bin:/bin")
        .args(["init", "--dry-run"])
        .output()
        .unwrap();
    assert_eq!(
        dry.status.code(),
        Some(1),
        "registration would not be possible"
    );
    assert!(
        text(&dry.stdout).contains("would: statusLine"),
        "{}",
        text(&dry.stdout)
    );
    assert!(!sb.config_path().exists(), "dry run changed nothing");
    let first = sb
        .cmd()
        .env("PATH", "/usr/bin:/bin")
        .arg("init")
        .output()
        .unwrap();
    // Everything but the registration was done; that it was not is an error.
    assert_eq!(first.status.code(), Some(1), "{}", text(&first.stderr));
    assert!(
        text(&first.stdout).contains("register: not done: Claude Code is not on PATH"),
        "{}",
        text(&first.stdout)
    );
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(claude.join("settings.json")).unwrap())
            .unwrap();
    let cmd = settings["statusLine"]["command"].as_str().unwrap();
    assert!(cmd.contains("statusline --then '~/bin/my-line'"), "{cmd}");
    assert_eq!(settings["theme"], "dark");
    assert_eq!(
        settings["permissions"]["allow"],
        serde_json::json!([
            "mcp__freellmapi__list_models",
            "mcp__freellmapi__claude_budget"
        ]),
        "the read-only tools are allowed for good"
    );
    let raw = std::fs::read_to_string(claude.join("settings.json")).unwrap();
    assert!(
        raw.find("\"theme\"") < raw.find("\"statusLine\""),
        "the user's key order is kept: {raw}"
    );
    assert!(std::fs::read_dir(&claude).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .contains("freepool-backup")
    }));
    assert!(
        std::fs::read_to_string(claude.join("CLAUDE.md"))
            .unwrap()
            .contains("freellmapi")
    );
    assert!(
        std::fs::read_to_string(sb.config_path())
            .unwrap()
            .contains("[settings]")
    );
    assert!(text(&first.stdout).contains("claude mcp add --scope user freellmapi"));
    let second = sb
        .cmd()
        .env("PATH", "/usr/bin:/bin")
        .arg("init")
        .output()
        .unwrap();
    let o = text(&second.stdout);
    assert!(
        o.contains("config: ") && o.contains("exists, left as is"),
        "{o}"
    );
    assert!(o.contains("statusLine: already set"), "{o}");
    assert!(o.contains("CLAUDE.md: pointer already in"), "{o}");
    let md = std::fs::read_to_string(claude.join("CLAUDE.md")).unwrap();
    assert_eq!(md.matches("freepool-mcp -->").count(), 1);
    // --project writes .mcp.json, once.
    for _ in 0..2 {
        assert!(
            sb.cmd()
                .args(["init", "--project"])
                .output()
                .unwrap()
                .status
                .success()
        );
    }
    let mcp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sb.dir.path().join(".mcp.json")).unwrap())
            .unwrap();
    assert_eq!(mcp["mcpServers"]["freellmapi"]["type"], "stdio");
    // Not on PATH here: this machine's path, said as such.
    assert!(
        mcp["mcpServers"]["freellmapi"]["command"]
            .as_str()
            .unwrap()
            .starts_with('/')
    );

    // --undo takes back what init added and leaves the user's own things.
    let undo = sb
        .cmd()
        .env("PATH", "/usr/bin:/bin")
        .args(["init", "--undo"])
        .output()
        .unwrap();
    let o = text(&undo.stdout);
    assert!(o.contains("statusLine: put back `~/bin/my-line`"), "{o}");
    assert!(o.contains("left as is (it is yours"), "{o}");
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(claude.join("settings.json")).unwrap())
            .unwrap();
    assert_eq!(
        settings,
        serde_json::json!({"theme": "dark", "statusLine": {"type": "command", "command": "~/bin/my-line", "padding": 0}})
    );
    assert!(
        !std::fs::read_to_string(claude.join("CLAUDE.md"))
            .unwrap()
            .contains("freepool-mcp -->")
    );
    assert!(sb.config_path().exists());
    let undo = sb
        .cmd()
        .args(["init", "--project", "--undo"])
        .output()
        .unwrap();
    assert!(undo.status.success(), "{}", text(&undo.stdout));
    let mcp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sb.dir.path().join(".mcp.json")).unwrap())
            .unwrap();
    assert!(mcp["mcpServers"].get("freellmapi").is_none(), "{mcp}");
}

#[test]
fn init_project_names_the_bare_command_when_it_is_on_path() {
    let sb = Sandbox::new();
    let bin_dir = std::path::Path::new(crate::support::bin())
        .parent()
        .unwrap();
    let out = sb
        .cmd()
        .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
        .args(["init", "--project"])
        .output()
        .unwrap();
    let o = text(&out.stdout);
    assert!(o.contains("(as `freepool-mcp`, found on PATH)"), "{o}");
    assert!(
        o.contains("note: Claude Code asks each person to approve"),
        "{o}"
    );
    let mcp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sb.dir.path().join(".mcp.json")).unwrap())
            .unwrap();
    assert_eq!(mcp["mcpServers"]["freellmapi"]["command"], "freepool-mcp");
}

#[test]
fn check_names_file_line_and_key() {
    let sb = Sandbox::new();
    sb.config("[providers.groq.models.\"openai/gpt-oss-120b\"]\ncontext = \"big\"\n");
    let out = sb.cmd().arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let o = text(&out.stdout);
    assert!(
        o.contains("providers.toml:5: providers.groq.models.\"openai/gpt-oss-120b\".context: expected a whole number (0 or more), found the text \"big\"; the model is left out"),
        "{o}"
    );
    // No usable provider at all: non-zero, and each enabled one says what it lacks.
    let sb = Sandbox::new();
    let out = sb.cmd().arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let o = text(&out.stdout);
    assert!(o.contains("  groq: no key (set GROQ_API_KEY)\n"), "{o}");
    assert!(o.contains("error: no provider is usable"), "{o}");
    assert!(o.contains("(writable)"));
    // A usable provider: zero.
    let (_mock, sb) = crate::support::single_provider("alpha");
    let out = sb.cmd().arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

#[test]
fn models_lists_the_catalog_with_key_status() {
    let sb = Sandbox::new();
    let out = sb
        .cmd()
        .env("GROQ_API_KEY", "gsk-test-value")
        .arg("models")
        .output()
        .unwrap();
    let o = text(&out.stdout);
    assert!(o.contains("groq — Groq · key "), "{o}");
    assert!(
        o.contains("mistral — Mistral (La Plateforme, Experiment) · no key: set $MISTRAL_API_KEY"),
        "{o}"
    );
    assert!(!o.contains("gsk-test-value"));
    let models = o
        .lines()
        .filter(|l| l.starts_with("    ") && !l.trim_start().starts_with("pool "))
        .count();
    assert!(models >= 60, "{models}");
}
