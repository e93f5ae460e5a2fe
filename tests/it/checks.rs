//! Answers checked before Claude sees them: each kind passing and failing,
//! the retry on another model, and the user's named commands.

use serde_json::json;

use crate::support::{Behavior, McpClient, MockUpstream, Sandbox, pool_answer, provider};

/// `alpha` (tried first) answers `bad`, `beta` answers `good`; the project
/// holds `notes.txt`; `[checks]` holds the user's named commands.
fn two(bad: &str, good: &str) -> (MockUpstream, MockUpstream, Sandbox, std::path::PathBuf) {
    let (a, b) = (
        MockUpstream::start_blocking("alpha"),
        MockUpstream::start_blocking("beta"),
    );
    a.default(Behavior::ok(bad));
    b.default(Behavior::ok(good));
    let sb = Sandbox::new();
    let mut cfg = format!(
        "{}{}",
        provider("alpha", &a, "priority = 5", "").replace("family = \"fam\"", "family = \"fa\""),
        provider("beta", &b, "", "").replace("family = \"fam\"", "family = \"fb\"")
    );
    cfg.push_str("\n[checks]\nmentions_good = \"grep -q good {file}\"\n");
    sb.config(&cfg);
    let p = sb.dir.path().join("project");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("notes.txt"), "the original notes\n").unwrap();
    (a, b, sb, p)
}

fn client(sb: &Sandbox, p: &std::path::Path) -> McpClient {
    let mut cmd = sb.cmd();
    cmd.env("CLAUDE_PROJECT_DIR", p);
    let mut c = McpClient::spawn(cmd);
    c.initialize();
    c
}

/// (expect, alpha's answer, beta's answer, who serves, the text served).
#[test]
fn each_kind_of_check_passes_or_moves_the_call_to_another_model() {
    let schema = json!({"type": "object", "required": ["name"]});
    let cases = [
        (
            json!({"json_schema": schema}),
            "Sure! {name: x}",
            "```json\n{\"name\": \"x\"}\n```",
            "beta",
            "{\"name\": \"x\"}",
        ),
        (
            json!({"json_schema": schema}),
            "{\"name\": \"first\"}",
            "{}",
            "alpha",
            "{\"name\": \"first\"}",
        ),
        (json!({"regex": "^\\d+$"}), "forty-two", "42", "beta", "42"),
        (
            json!({"code": "python"}),
            "```python\na\n```\n```python\nb\n```",
            "Here:\n```py\nprint(1)\n```",
            "beta",
            "print(1)",
        ),
    ];
    for (expect, bad, good, who, served) in cases {
        let (a, b, sb, p) = two(bad, good);
        let mut c = client(&sb, &p);
        let (err, text) = c.call("delegate", json!({"prompt": "do it", "expect": expect}));
        assert!(!err, "{expect}: {text}");
        let (answer, _) = pool_answer(&text);
        assert_eq!(answer, served, "{expect}: {text}");
        assert!(
            text.contains(&format!("served by {who}/m1")),
            "{expect}: {text}"
        );
        if who == "beta" {
            assert!(
                text.contains("failed over from alpha/m1: failed check:"),
                "{expect}: {text}"
            );
            assert_eq!((a.count(), b.count()), (1, 1));
        } else {
            assert_eq!(b.count(), 0, "a passing answer is served at once");
        }
    }
}

#[test]
fn a_named_command_checks_the_written_file_and_a_failure_restores_it() {
    let (a, b, sb, p) = two("bad content", "good content");
    let mut c = client(&sb, &p);
    let (err, text) = c.call(
        "delegate",
        json!({"prompt": "rewrite", "write_to": "notes.txt", "overwrite": true, "expect": {"command": "mentions_good"}}),
    );
    assert!(!err, "{text}");
    assert!(
        text.contains("failed check: mentions_good: the check failed (exit code 1)"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(p.join("notes.txt")).unwrap(),
        "good content\n"
    );
    assert_eq!((a.count(), b.count()), (1, 1));
    // Every answer fails: the file is back as it was.
    b.default(Behavior::ok("still bad"));
    std::fs::write(p.join("notes.txt"), "the original notes\n").unwrap();
    let (err, text) = c.call(
        "delegate",
        json!({"prompt": "rewrite", "write_to": "notes.txt", "overwrite": true, "expect": {"command": "mentions_good"}}),
    );
    assert!(
        err && text.starts_with("every answer failed its check"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(p.join("notes.txt")).unwrap(),
        "the original notes\n"
    );
    // A new file that fails its check is removed.
    let (err, _) = c.call(
        "delegate",
        json!({"prompt": "x", "write_to": "fresh.txt", "expect": {"command": "mentions_good"}}),
    );
    assert!(err);
    assert!(!p.join("fresh.txt").exists());
}

#[test]
fn a_call_can_name_a_check_but_never_give_a_command_line() {
    let (a, b, sb, p) = two("x", "y");
    let mut c = client(&sb, &p);
    let cases = [
        (
            json!({"prompt": "x", "write_to": "o.txt", "expect": {"command": "rm -rf ."}}),
            "no check named `rm -rf .` in your config's [checks] (defined: mentions_good); a call names a check, it never gives a command line",
        ),
        (
            json!({"prompt": "x", "expect": {"command": "mentions_good"}}),
            "needs write_to",
        ),
        (
            json!({"prompt": "x", "expect": {"regex": "a", "code": "rust"}}),
            "exactly one of json_schema, regex, code, command",
        ),
        (
            json!({"prompt": "x", "expect": {"regex": "("}}),
            "expect.regex does not compile",
        ),
    ];
    for (args, want) in cases {
        let (err, text) = c.call("delegate", args.clone());
        assert!(err && text.contains(want), "{args}: {text}");
    }
    assert_eq!(a.count() + b.count(), 0, "a refused check sends nothing");
    assert!(!p.join("o.txt").exists());
}
