//! When things go wrong: providers that hang or never accept, config typos,
//! empty variables, failure texts that stay short, `check`'s exit code,
//! `status` without the keys, `scan` of many files.

use std::io::Write as _;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

use crate::support::{Behavior, MockUpstream, Sandbox, pool_answer, provider, tool_text};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The progress messages the server sent so far.
fn progress_messages(c: &crate::support::McpClient) -> Vec<String> {
    c.notifications
        .iter()
        .filter(|n| n["method"] == "notifications/progress")
        .filter_map(|n| n["params"]["message"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_hanging_provider_is_paid_for_once_then_skipped_with_progress_said() {
    let (a, b) = (
        MockUpstream::start_blocking("alpha"),
        MockUpstream::start_blocking("beta"),
    );
    a.default(Behavior::Hang);
    let sb = Sandbox::new();
    sb.config(&format!(
        "{}{}",
        provider(
            "alpha",
            &a,
            "priority = 10\nfirst_byte_timeout_secs = 1",
            ""
        ),
        provider("beta", &b, "", "")
    ));
    let mut c = sb.mcp();
    c.initialize();
    let id = c.send(
        "tools/call",
        json!({"name": "delegate", "arguments": {"prompt": "first"}, "_meta": {"progressToken": "d1"}}),
    );
    let r = c.wait(id, Duration::from_secs(60));
    let (err, t) = tool_text(&r);
    assert!(!err, "{t}");
    assert!(
        t.contains("2 attempts (failed over from alpha/m1: timeout waiting for the answer"),
        "{t}"
    );
    let said = progress_messages(&c);
    assert!(
        said.iter().any(
            |m| m.starts_with("alpha/m1 failed (timeout waiting for the answer")
                && m.ends_with("failing over")
        ),
        "delegate tells its client as it fails over: {said:?}"
    );
    // The hang is not paid again: the second call goes to beta at once.
    let (err, t) = c.call("delegate", json!({"prompt": "second"}));
    assert!(!err, "{t}");
    assert!(
        t.contains("served by beta/m1") && t.contains("· 1 attempt"),
        "{t}"
    );
    assert_eq!(a.count(), 1, "alpha was asked once in two calls");
    let s = crate::support::status_json(&sb);
    let bench = &s["cooldowns"][0];
    assert_eq!(bench["scope"], "alpha", "{s}");
    assert!(bench["seconds_left"].as_i64().unwrap() > 240, "{s}");
}

/// A port that completes no connection: a listener with a zero backlog whose
/// queue is already full, so new connections are never accepted.
fn black_hole() -> (socket2::Socket, Vec<std::net::TcpStream>, u16) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    s.listen(0).unwrap();
    let port = s.local_addr().unwrap().as_socket().unwrap().port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let fill = (0..4)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        })
        .collect();
    (s, fill, port)
}

#[test]
fn a_port_that_never_accepts_costs_the_connect_budget_and_is_benched() {
    let (_listener, _fill, port) = black_hole();
    let b = MockUpstream::start_blocking("beta");
    let sb = Sandbox::new();
    sb.config(&format!(
        "[providers.dark]\nbase_url = \"http://127.0.0.1:{port}/v1\"\nlocal = true\nkey_env = [\"MOCK_KEY\"]\npriority = 10\nconnect_timeout_secs = 1\nfirst_byte_timeout_secs = 60\n[providers.dark.models.m1]\nfamily = \"fd\"\ncontext = 32000\n{}",
        provider("beta", &b, "", "")
    ));
    let mut c = sb.mcp();
    c.initialize();
    let (err, t) = c.call("delegate", json!({"prompt": "first"}));
    assert!(!err, "{t}");
    assert!(
        t.contains("failed over from dark/m1: could not connect: connect timed out"),
        "a connect time-out is named as such: {t}"
    );
    let (_, t) = c.call("delegate", json!({"prompt": "second"}));
    assert!(
        t.contains("· 1 attempt"),
        "the dark provider is benched: {t}"
    );
}

#[test]
fn config_typos_are_named_once_with_line_and_close_match() {
    let mock = MockUpstream::start_blocking("alpha");
    let sb = Sandbox::new();
    sb.config(&format!(
        "{}\n[providers.grok]\nenabled = false\n",
        provider("alpha", &mock, "", "")
    ));
    let mut c = sb.mcp();
    c.initialize();
    let (_, first) = c.call("delegate", json!({"prompt": "one"}));
    let want = "providers.grok: not a provider of the built-in catalog (did you mean `groq`?); a provider of your own needs base_url";
    let line = std::fs::read_to_string(sb.config_path())
        .unwrap()
        .lines()
        .position(|l| l == "[providers.grok]")
        .unwrap()
        + 1;
    assert!(
        first.contains(&format!(
            "config problem (the rest works): {}:{line}: {want}",
            sb.config_path().display()
        )),
        "{first}"
    );
    let (_, second) = c.call("delegate", json!({"prompt": "two"}));
    assert!(
        !second.contains("config problem"),
        "said once per session: {second}"
    );
    let (_, models) = c.call("list_models", json!({}));
    assert!(
        models.contains(want),
        "list_models always says it: {models}"
    );
    assert_eq!(
        c.stderr().matches("config problem").count(),
        1,
        "logged once: {}",
        c.stderr()
    );
    let out = sb.cmd().arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains(want), "{}", text(&out.stdout));
    assert_eq!(
        text(&out.stderr).matches("config problem").count(),
        0,
        "the CLI prints problems itself, not twice: {}",
        text(&out.stderr)
    );
}

#[test]
fn empty_variables_mean_unset() {
    let (mock, sb) = crate::support::single_provider("alpha");
    let mut cmd = sb.cmd();
    cmd.env("FREEPOOL_STATE_DIR", "")
        .env("FREEPOOL_BUDGET_MODE", "")
        .env("FREEPOOL_LOG", "");
    let mut c = crate::support::McpClient::spawn(cmd);
    c.initialize();
    let (err, t) = c.call("delegate", json!({"prompt": "hello"}));
    assert!(!err, "{t}");
    assert!(pool_answer(&t).0.starts_with("answer from alpha"), "{t}");
    assert_eq!(mock.count(), 1);
    // The ledger went to the platform's data dir under HOME, not to "".
    let mut found = false;
    let mut stack = vec![sb.home()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            found |= p.file_name().is_some_and(|n| n == "ledger.sqlite");
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    assert!(found, "no ledger under HOME");
}

#[test]
fn a_failure_with_eleven_unconfigured_providers_stays_short() {
    let sb = Sandbox::new();
    let mut c = sb.mcp();
    c.initialize();
    let (err, t) = c.call("delegate", json!({"prompt": "hello"}));
    assert!(err);
    assert!(
        t.contains("11 providers have no key or setting"),
        "counted once, not listed: {t}"
    );
    assert!(
        t.lines().count() <= 6 && t.len() < 600,
        "{} lines, {} chars: {t}",
        t.lines().count(),
        t.len()
    );
}

#[test]
fn fanout_with_ten_failed_tasks_says_the_shared_cause_once() {
    let mock = MockUpstream::start_blocking("alpha");
    mock.default(Behavior::Status(503, "overloaded".into()));
    let sb = Sandbox::new();
    sb.config(&provider("alpha", &mock, "", ""));
    let mut c = sb.mcp();
    c.initialize();
    let tasks: Vec<_> = (0..10)
        .map(|i| json!({"prompt": format!("task {i}")}))
        .collect();
    let (err, t) = c.call("fanout", json!({"tasks": tasks, "concurrency": 1}));
    assert!(!err, "{t}");
    assert!(t.starts_with("fanout: 0 of 10 tasks ok"), "{t}");
    assert!(t.len() < 3000, "{} characters: {t}", t.len());
    assert!(t.matches("same cause as task").count() >= 8, "{t}");
}

#[test]
fn status_reads_the_ledger_without_the_keys_in_the_shell() {
    let (_mock, sb) = crate::support::single_provider("alpha");
    let out = sb.cmd().args(["delegate", "hello"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = sb
        .cmd()
        .env_remove("MOCK_KEY")
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let used = s["usage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["scope"] == "alpha/m1")
        .unwrap_or_else(|| panic!("no alpha use: {s}"));
    assert!(used["limits"][0]["used"].as_u64().unwrap() >= 1, "{s}");
    let key = s["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["provider"] == "alpha")
        .unwrap();
    assert!(key["source"].is_null(), "known from the ledger only: {s}");
    assert_eq!(key["key"].as_str().unwrap().len(), 12, "{s}");
    assert!(s["now"].as_str().unwrap().ends_with('Z'), "{s}");
}

#[test]
fn scan_takes_many_files_reads_bytes_lossily_and_says_its_exit_codes() {
    let sb = Sandbox::new();
    let dir = sb.dir.path();
    let secret = format!("AKIA{}", "QWERTYUIOPASDFGH");
    std::fs::write(dir.join("a.txt"), "nothing here\n").unwrap();
    std::fs::write(dir.join("b.txt"), format!("x\naws = {secret}\n")).unwrap();
    let out = sb.cmd().args(["scan", "a.txt", "b.txt"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("b.txt:2:7: AWS access key id"),
        "{}",
        text(&out.stdout)
    );
    let out = sb.cmd().args(["scan", "a.txt"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let out = sb
        .cmd()
        .args(["scan", "a.txt", "missing.txt"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("error: missing.txt: cannot be read (not found)"),
        "{}",
        text(&out.stderr)
    );
    // Latin-1 bytes around a key on stdin: read as a file would be.
    let mut child = sb
        .cmd()
        .args(["scan", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut bytes = vec![0xe9, b' ', b'k', b'=', b' '];
    bytes.extend_from_slice(secret.as_bytes());
    bytes.push(b'\n');
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let help = sb.cmd().args(["scan", "--help"]).output().unwrap();
    assert!(
        text(&help.stdout).contains("Exit codes: 0 nothing found; 1 a secret found; 2"),
        "{}",
        text(&help.stdout)
    );
}

/// Names and modification times of the files in `dir`, SQLite's own
/// `-wal` and `-shm` aside (a reader may create them; they hold no data).
fn listing(dir: &std::path::Path) -> Vec<(String, std::time::SystemTime)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            !n.ends_with("-wal") && !n.ends_with("-shm")
        })
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().modified().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn read_only_commands_create_and_change_nothing() {
    let (_mock, sb) = crate::support::single_provider("alpha");
    // No state yet: each reads as empty and creates nothing.
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["log", "stats"],
        &["log", "export"],
    ] {
        let out = sb.cmd().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(!sb.state().exists(), "{args:?} created the state dir");
    }
    let out = sb.cmd().arg("status").output().unwrap();
    assert!(
        text(&out.stdout).contains("(none yet)"),
        "{}",
        text(&out.stdout)
    );
    // With state: read as it is, not a file touched.
    let out = sb.cmd().args(["delegate", "hello"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::thread::sleep(Duration::from_millis(20));
    let before = listing(&sb.state());
    for args in [
        &["status", "--json"][..],
        &["log", "stats"],
        &["log", "export"],
    ] {
        let out = sb.cmd().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
    assert_eq!(listing(&sb.state()), before);
    let s = crate::support::status_json(&sb);
    assert!(!s["usage"].as_array().unwrap().is_empty(), "{s}");
}
