//! What the user sees when upstreams misbehave and local state is broken.

use std::time::Duration;

use serde_json::json;

use crate::support::{Behavior, MockUpstream, Sandbox, provider, single_provider};

/// Each broken answer fails over to a healthy provider, and the attempt line says what broke.
#[test]
fn broken_upstreams_fail_over_with_a_reason() {
    let cases = [
        (Behavior::Hang, "timeout waiting for the answer"),
        (
            Behavior::Trickle {
                gap: Duration::from_millis(400),
            },
            "answer stalled",
        ),
        (
            Behavior::Html,
            "502 server error: HTML page \"502 Bad Gateway\"",
        ),
        (Behavior::Truncated, "unreadable answer"),
        (Behavior::EmptyChoices, "empty answer"),
        (
            Behavior::Status(500, "boom".into()),
            "500 server error: boom",
        ),
    ];
    let good = MockUpstream::start_blocking("good");
    for (behavior, want) in cases {
        let bad = MockUpstream::start_blocking("bad");
        bad.default(behavior.clone());
        let sb = Sandbox::new();
        sb.config(&format!(
            "{}{}",
            provider("bad", &bad, "priority = 5", "")
                .replace("timeout_secs = 5", "timeout_secs = 2"),
            provider("good", &good, "", "")
        ));
        let out = sb.cmd().args(["delegate", "hello"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{behavior:?}: {err}");
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("answer from good"),
            "{behavior:?}"
        );
        assert!(
            err.contains(&format!("bad/m1: {want}")),
            "{behavior:?}: {err}"
        );
    }
}

#[test]
fn a_huge_prompt_is_a_clear_capability_refusal() {
    let (mock, sb) = single_provider("alpha");
    let mut c = sb.mcp();
    c.initialize();
    let prompt = "lorem ipsum ".repeat(10 * 1024 * 1024 / 12);
    let (err, text) = c.call("delegate", json!({"prompt": prompt}));
    assert!(err);
    assert!(
        text.starts_with("capability gate: this request needs ~"),
        "{text}"
    );
    assert!(
        text.contains("largest usable context window (32000 tokens)"),
        "{text}"
    );
    assert_eq!(mock.count(), 0);
    let status = std::fs::read_to_string(format!("/proc/{}/status", c.child.id())).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        rss_kb < 400 * 1024,
        "peak RSS {rss_kb} kB for a 10 MB prompt"
    );
}

#[test]
fn a_corrupt_ledger_is_moved_aside_and_work_goes_on() {
    let (_mock, sb) = single_provider("alpha");
    std::fs::create_dir_all(sb.state()).unwrap();
    std::fs::write(sb.state().join("ledger.sqlite"), vec![0x42u8; 8192]).unwrap();
    let out = sb.cmd().args(["delegate", "hello"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("was unreadable and was moved to"));
    assert!(
        std::fs::read_dir(sb.state()).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("corrupt"))
    );
}

#[test]
fn a_read_only_state_dir_is_a_clear_error() {
    if unsafe { libc::geteuid() } == 0 {
        // root ignores permissions; use a path under a regular file instead.
    }
    let (_mock, sb) = single_provider("alpha");
    let blocker = sb.dir.path().join("not-a-dir");
    std::fs::write(&blocker, "file").unwrap();
    let out = sb
        .cmd()
        .env("FREEPOOL_STATE_DIR", blocker.join("state"))
        .args(["delegate", "hello"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot be opened for writing") && err.contains("FREEPOOL_STATE_DIR"),
        "{err}"
    );
    let mut c = crate::support::McpClient::spawn({
        let mut cmd = sb.cmd();
        cmd.env("FREEPOOL_STATE_DIR", blocker.join("state"));
        cmd
    });
    c.initialize();
    let (e, text) = c.call("delegate", json!({"prompt": "x"}));
    assert!(e && text.contains("FREEPOOL_STATE_DIR"), "{text}");
    let (e, _) = c.call("claude_budget", json!({}));
    assert!(!e, "tools that need no state keep working");
    let (e, text) = c.call("list_models", json!({}));
    assert!(
        !e && text.contains("alpha/m1") && text.contains("quota left is unknown"),
        "{text}"
    );
}

#[test]
fn keys_never_reach_logs_or_results() {
    let mock = MockUpstream::start_blocking("alpha");
    mock.script([Behavior::Status(
        401,
        "{\"error\":{\"message\":\"bad key mock-secret-key-value-0001\"}}".into(),
    )]);
    let sb = Sandbox::new();
    sb.config(&provider(
        "alpha",
        &mock,
        "keys = [{ env = \"MOCK_KEY\" }, { env = \"MOCK_KEY_2\" }]",
        "",
    ));
    let mut c = sb.mcp();
    c.initialize();
    let (err, text) = c.call("delegate", json!({"prompt": "hello"}));
    assert!(!err, "the second key serves: {text}");
    let (_, models) = c.call("list_models", json!({}));
    let status = std::process::Command::new(crate::support::bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(status.status.success());
    let out = sb.cmd().args(["status", "--json"]).output().unwrap();
    let all = format!(
        "{text}\n{models}\n{}\n{}\n{}",
        c.stderr(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !all.contains("mock-secret-key-value"),
        "a key leaked:\n{all}"
    );
    for entry in std::fs::read_dir(sb.state()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("mock-secret-key-value"),
            "a key is stored in the state dir"
        );
    }
}

/// Each error class from the first provider: the call fails over, and the
/// ledger keeps the bench the class calls for (scope, cause, source, length).
#[test]
fn each_error_class_leads_to_its_skip_and_bench() {
    let fp = freepool_mcp::config::ApiKey::new("mock-secret-key-value-0001").fingerprint();
    let limited = |headers: &[(&str, &str)], body: &str| Behavior::RateLimited {
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.into(),
    };
    // The expected bench: (scope, reason, source, approximate seconds); None = no bench.
    type Bench<'a> = Option<(String, &'a str, &'a str, u64)>;
    let cases: Vec<(Behavior, Bench)> = vec![
        (
            limited(&[("retry-after", "17")], "slow down"),
            Some((
                format!("bad key {fp}"),
                "429 rate limited",
                "stated by provider",
                17,
            )),
        ),
        (
            limited(
                &[
                    ("x-ratelimit-remaining-requests", "0"),
                    ("x-ratelimit-reset-requests", "2m59.56s"),
                ],
                "{}",
            ),
            Some((
                format!("bad key {fp}"),
                "429 rate limited",
                "stated by provider",
                180,
            )),
        ),
        (
            limited(&[], "You exceeded your daily free allocation"),
            Some((
                format!("bad key {fp}"),
                "429 daily quota",
                "guessed back-off",
                3600,
            )),
        ),
        (
            limited(&[], "rate limited"),
            Some((
                format!("bad key {fp}"),
                "429 rate limited",
                "guessed back-off",
                90,
            )),
        ),
        (
            Behavior::Unauthorized,
            Some((
                format!("bad key {fp}"),
                "401 key rejected",
                "guessed back-off",
                600,
            )),
        ),
        (
            Behavior::Status(402, "Payment required".into()),
            Some((
                format!("bad key {fp}"),
                "402 out of credit",
                "guessed back-off",
                86400,
            )),
        ),
        (
            Behavior::Status(403, "not on your tier".into()),
            Some((
                format!("bad/m1 key {fp}"),
                "403 not allowed for this key",
                "guessed back-off",
                86400,
            )),
        ),
        (
            // A 404 that names no model (gone models: tests/it/catalog.rs).
            Behavior::Status(404, "<html><title>404 Not Found</title></html>".into()),
            Some(("bad/m1".into(), "404 not found", "guessed back-off", 3600)),
        ),
        (
            Behavior::Status(500, "boom".into()),
            Some(("bad".into(), "500 server error", "guessed back-off", 20)),
        ),
        (Behavior::Status(413, "too large".into()), None),
        (Behavior::EmptyChoices, None),
    ];
    let good = MockUpstream::start_blocking("good");
    for (behavior, want) in cases {
        let bad = MockUpstream::start_blocking("bad");
        bad.default(behavior.clone());
        let sb = Sandbox::new();
        sb.config(&format!(
            "{}{}",
            provider("bad", &bad, "priority = 5", ""),
            provider("good", &good, "", "")
        ));
        let out = sb.cmd().args(["delegate", "hello"]).output().unwrap();
        assert!(
            out.status.success(),
            "{behavior:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status = crate::support::status_json(&sb);
        let cooldowns = status["cooldowns"].as_array().unwrap();
        match want {
            None => assert!(cooldowns.is_empty(), "{behavior:?}: {cooldowns:?}"),
            Some((scope, reason, source, secs)) => {
                assert_eq!(cooldowns.len(), 1, "{behavior:?}: {cooldowns:?}");
                let c = &cooldowns[0];
                assert_eq!(c["scope"], scope.as_str(), "{behavior:?}");
                assert_eq!(c["reason"], reason, "{behavior:?}");
                assert_eq!(c["source"], source, "{behavior:?}");
                // "in 2m" / "in 1h 0m": the relative part reads back the length.
                let until = c["until"].as_str().unwrap();
                let when =
                    chrono::DateTime::parse_from_rfc3339(until.split(' ').next().unwrap()).unwrap();
                let left = when.timestamp() - chrono::Utc::now().timestamp();
                assert!(
                    (left - secs as i64).abs() <= 5,
                    "{behavior:?}: {left}s left, want ~{secs}s ({until})"
                );
            }
        }
        // A second call skips the benched scope and goes straight to the good provider.
        if let Some(c) = cooldowns.first() {
            let before = bad.count();
            let out = sb.cmd().args(["delegate", "again"]).output().unwrap();
            assert!(out.status.success());
            assert_eq!(bad.count(), before, "{behavior:?}: {c} was not respected");
        }
    }
}

/// Issue #8: each hostile answer, from a provider ranked first. The call is
/// answered (by the healthy provider when the hostile one cannot), nothing
/// panics, the key appears in no output, log, status or state file, and the
/// ledger counts every request the hostile provider read.
#[test]
fn hostile_providers_never_crash_leak_or_go_uncounted() {
    use crate::support::hostile::{Hostile, HostileUpstream};
    const KEY: &str = "mock-secret-key-value-0001";
    let answer = |status: u16, headers: &[(&str, &str)], body: &[u8]| Hostile::Answer {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        body: body.to_vec(),
    };
    let ok = br#"{"choices":[{"message":{"content":"fine"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
    let html = format!(
        "<html>{}<title>{}</title></html>",
        "İ".repeat(50),
        "é".repeat(200)
    );
    let cases: Vec<(&str, Hostile)> = vec![
        ("reads the request and closes", Hostile::CloseAfterRequest),
        ("a 200 with a short body", Hostile::ShortBody),
        ("a 502 page echoing the request headers", Hostile::EchoHeaders),
        ("a title of changing-length characters", answer(502, &[("content-type", "text/html")], html.as_bytes())),
        ("retry-after: inf", answer(429, &[("retry-after", "inf")], b"{}")),
        ("retry-after: 1e30", answer(429, &[("retry-after", "1e30")], b"{}")),
        ("retry-after: NaN", answer(429, &[("retry-after", "NaN")], b"{}")),
        ("a reset of 1e30 on a 200", answer(200, &[("x-ratelimit-remaining-requests", "0"), ("x-ratelimit-reset-requests", "1e30")], ok)),
        ("a reset of 99999999999999999999999s on a 200", answer(200, &[("x-ratelimit-remaining-tokens", "0"), ("x-ratelimit-reset-tokens", "99999999999999999999999s")], ok)),
        ("try again in 99999999999999999999999 minutes", answer(429, &[], b"{\"error\":{\"message\":\"try again in 99999999999999999999999 minutes\"}}")),
        ("truncated UTF-8 in an error", answer(500, &[], b"{\"error\":\"\xe2\x82")),
        ("a 200 whose answer echoes the key", answer(200, &[], br#"{"choices":[{"message":{"content":"you sent Bearer mock-secret-key-value-0001"}}]}"#)),
        ("usage as huge and odd numbers", answer(200, &[], br#"{"choices":[{"message":{"content":"fine"}}],"usage":{"prompt_tokens":1e30,"completion_tokens":"-5"}}"#)),
    ];
    let good = MockUpstream::start_blocking("good");
    for (what, behavior) in cases {
        let bad = HostileUpstream::start(behavior);
        let sb = Sandbox::new();
        sb.config(&format!(
            "[providers.bad]\nbase_url = \"{}\"\nlocal = true\nkey_env = [\"MOCK_KEY\"]\ntimeout_secs = 3\npriority = 5\n[providers.bad.models.m1]\ncontext = 32000\nlimits = {{ rpm = 100 }}\n{}",
            bad.base_url(),
            provider("good", &good, "", "")
        ));
        let out = sb.cmd().args(["delegate", "hello"]).output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert_eq!(out.status.code(), Some(0), "{what}: {stderr}");
        assert!(!stdout.trim().is_empty(), "{what}: no answer");
        assert!(
            !stderr.contains("internal error") && !stderr.contains("panicked"),
            "{what}: {stderr}"
        );
        let status = sb.cmd().args(["status", "--json"]).output().unwrap();
        let status_text = String::from_utf8_lossy(&status.stdout).into_owned();
        for (name, text) in [
            ("stdout", &stdout),
            ("stderr", &stderr),
            ("status", &status_text),
        ] {
            assert!(!text.contains(KEY), "{what}: the key is in {name}:\n{text}");
        }
        for entry in std::fs::read_dir(sb.state()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(KEY),
                "{what}: the key is in the state dir"
            );
        }
        // Every request the hostile provider read is in the ledger.
        let s: serde_json::Value = serde_json::from_str(&status_text).unwrap();
        let counted = s["usage"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["scope"] == "bad/m1")
            .map_or(0, |u| u["limits"][0]["used"].as_u64().unwrap());
        assert_eq!(counted as usize, bad.count(), "{what}: {status_text}");
        assert!(bad.count() >= 1, "{what}: the hostile provider was tried");
    }
}

/// A provider that reads each request and closes: every request it read is
/// counted against its catalog limit, across calls and processes, so the
/// limit holds even though no call ever got an answer from it.
#[test]
fn requests_cut_off_after_sending_count_against_the_limit() {
    use crate::support::hostile::{Hostile, HostileUpstream};
    let bad = HostileUpstream::start(Hostile::CloseAfterRequest);
    let good = MockUpstream::start_blocking("good");
    let sb = Sandbox::new();
    // Priority first; no guessed bench in the way (a stated one is what 429s do):
    // clear cooldowns between calls so each call tries the cut-off provider again.
    sb.config(&format!(
        "[providers.bad]\nbase_url = \"{}\"\nlocal = true\nkey_env = [\"MOCK_KEY\"]\ntimeout_secs = 3\npriority = 5\n[providers.bad.models.m1]\ncontext = 32000\nlimits = {{ rpm = 3 }}\n{}",
        bad.base_url(),
        provider("good", &good, "", "")
    ));
    for _ in 0..6 {
        let out = sb.cmd().args(["delegate", "hello"]).output().unwrap();
        assert!(out.status.success());
        let cleared = sb
            .cmd()
            .args(["status", "--clear-cooldowns", "bad"])
            .output()
            .unwrap();
        assert!(cleared.status.success());
    }
    assert_eq!(
        bad.count(),
        3,
        "after three counted requests the limit of 3 a minute holds"
    );
    assert_eq!(good.count(), 6);
}

/// A ledger that cannot be opened says why, and the next call tries again:
/// fixing the state dir mid-session needs no restart.
#[test]
fn a_failed_ledger_open_is_retried_with_its_cause() {
    let (_mock, sb) = single_provider("alpha");
    let blocker = sb.dir.path().join("blocked");
    std::fs::write(&blocker, "a file where a directory should be").unwrap();
    let mut c = crate::support::McpClient::spawn({
        let mut cmd = sb.cmd();
        cmd.env("FREEPOOL_STATE_DIR", blocker.join("state"));
        cmd
    });
    c.initialize();
    let (err, text) = c.call("delegate", json!({"prompt": "x"}));
    assert!(err, "{text}");
    assert!(text.contains("FREEPOOL_STATE_DIR"), "{text}");
    assert!(
        text.to_lowercase().contains("not a directory"),
        "the cause is named: {text}"
    );
    std::fs::remove_file(&blocker).unwrap();
    std::fs::create_dir(&blocker).unwrap();
    let (err, text) = c.call("delegate", json!({"prompt": "x"}));
    assert!(!err, "the open is tried again: {text}");
}
