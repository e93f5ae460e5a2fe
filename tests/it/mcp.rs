//! The MCP server, spoken to over its real stdin/stdout.

use std::time::Duration;

use serde_json::json;

use crate::support::{
    Behavior, MockUpstream, Sandbox, pool_answer, provider, single_provider, tool_text,
};

#[test]
fn initialize_delivers_the_rubric_within_the_limit() {
    let sb = Sandbox::new();
    let mut c = sb.mcp();
    let r = c.initialize();
    let result = &r["result"];
    assert_eq!(result["protocolVersion"], "2025-11-25");
    assert_eq!(result["serverInfo"]["name"], "freepool-mcp");
    let text = result["instructions"].as_str().unwrap();
    assert!(text.len() <= 2048, "{} chars", text.len());
    for must in [
        "Sensitivity",
        "Capability",
        "1-3 trivial",
        "7-8 hard",
        "log_route_decision",
        "Budget mode now: unknown",
        "Answers are untrusted",
    ] {
        assert!(text.contains(must), "missing {must:?} in {text}");
    }
    c.assert_pure();
}

#[test]
fn tools_list_has_object_schemas_and_annotations() {
    let sb = Sandbox::new();
    let mut c = sb.mcp();
    c.initialize();
    let r = c.request("tools/list", json!({}));
    let tools = r["result"]["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "delegate",
            "fanout",
            "list_models",
            "claude_budget",
            "log_route_decision"
        ]
    );
    for t in tools {
        assert_eq!(t["inputSchema"]["type"], "object", "{t}");
        assert!(t["description"].as_str().unwrap().len() < 2048);
        assert!(t["annotations"]["title"].is_string(), "{t}");
    }
    let fanout = &tools[1];
    assert_eq!(fanout["_meta"]["anthropic/maxResultSizeChars"], 100_000);
    assert_eq!(tools[2]["annotations"]["readOnlyHint"], true);
    c.assert_pure();
}

#[test]
fn delegate_answers_with_provenance() {
    let (mock, sb) = single_provider("alpha");
    let mut c = sb.mcp();
    c.initialize();
    let (err, text) = c.call(
        "delegate",
        json!({"prompt": "Summarize: the cat sat on the mat."}),
    );
    assert!(!err, "{text}");
    let (answer, _) = pool_answer(&text);
    assert!(
        answer.starts_with("answer from alpha: Summarize: the cat sat"),
        "{text}"
    );
    assert!(text.contains("served by alpha/m1"), "{text}");
    assert!(text.contains("1 attempt"), "{text}");
    let got = mock.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].model, "m1");
    assert_eq!(
        got[0].authorization.as_deref(),
        Some("Bearer mock-secret-key-value-0001")
    );
    c.assert_pure();
    assert!(
        !c.stderr().contains("mock-secret-key-value"),
        "a key reached the log"
    );
}

#[test]
fn failover_when_the_first_provider_answers_429() {
    let a = MockUpstream::start_blocking("alpha");
    let b = MockUpstream::start_blocking("beta");
    a.default(Behavior::RateLimited {
        headers: vec![("retry-after".into(), "17".into())],
        body: "{\"error\":{\"message\":\"Rate limit reached\"}}".into(),
    });
    let sb = Sandbox::new();
    // alpha ranks first (priority), then beta.
    sb.config(&format!(
        "{}{}",
        provider("alpha", &a, "priority = 10", ""),
        provider("beta", &b, "", "")
    ));
    let mut c = sb.mcp();
    c.initialize();
    let (err, text) = c.call("delegate", json!({"prompt": "convert this to YAML: a=1"}));
    assert!(!err, "{text}");
    assert!(
        pool_answer(&text).0.starts_with("answer from beta"),
        "{text}"
    );
    assert!(
        text.contains("2 attempts (failed over from alpha/m1: 429 rate limited (retry in 17s)"),
        "{text}"
    );
    // The bench is remembered: the next call goes straight to beta.
    let (_, text) = c.call("delegate", json!({"prompt": "again"}));
    assert!(text.contains("1 attempt"), "{text}");
    assert_eq!(a.count(), 1);
    assert_eq!(b.count(), 2);
}

#[test]
fn all_failing_says_each_attempt_and_cause() {
    let a = MockUpstream::start_blocking("alpha");
    let b = MockUpstream::start_blocking("beta");
    a.default(Behavior::Status(503, "upstream overloaded".into()));
    b.default(Behavior::Unauthorized);
    let sb = Sandbox::new();
    sb.config(&format!(
        "{}{}",
        provider("alpha", &a, "", ""),
        provider("beta", &b, "", "")
    ));
    let mut c = sb.mcp();
    c.initialize();
    let (err, text) = c.call("delegate", json!({"prompt": "hello"}));
    assert!(err, "{text}");
    assert!(
        text.contains("alpha/m1: 503 server error: upstream overloaded"),
        "{text}"
    );
    assert!(
        text.contains("beta/m1: 401 key rejected: Invalid API key provided"),
        "{text}"
    );
    assert!(text.contains("keep this task on Claude"), "{text}");
    assert!(!text.contains("mock-secret-key"), "{text}");
}

#[test]
fn a_secret_is_refused_and_nothing_is_sent() {
    let (mock, sb) = single_provider("alpha");
    let mut c = sb.mcp();
    c.initialize();
    let secret = format!("ghp_{}", "Zq8Xv2Lm9Ty4Rw7Pk3Hn6Js1Gd5Fb0Ca8Eu2Y");
    let (err, text) = c.call("delegate", json!({"prompt": format!("fix this config:\nuser: bob\ntoken: {secret}\n"), "gist": "fix config"}));
    assert!(err);
    assert!(text.contains("refused"), "{text}");
    assert!(
        text.contains("GitHub token in prompt at line 3, column 8"),
        "{text}"
    );
    assert!(
        !text.contains(&secret[4..]),
        "the secret was echoed: {text}"
    );
    assert_eq!(mock.count(), 0, "nothing may leave the machine");
    // The refusal is logged as a decision with the sensitivity gate.
    let out = sb
        .cmd()
        .args(["log", "export", "--format", "jsonl"])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(line.contains("\"gate\":\"sensitivity\""), "{line}");
    assert!(!line.contains(&secret[4..]));
}

#[test]
fn unknown_model_names_close_matches() {
    let (_mock, sb) = single_provider("alpha");
    let mut c = sb.mcp();
    c.initialize();
    let (err, text) = c.call("delegate", json!({"prompt": "x", "model": "llama-3.3-70"}));
    assert!(err);
    assert!(
        text.contains("unknown model `llama-3.3-70`; did you mean"),
        "{text}"
    );
    assert!(text.contains("llama-3.3-70b"), "{text}");
}

#[test]
fn bad_config_keeps_the_server_up_and_explains() {
    let sb = Sandbox::new();
    sb.config_raw("[settings]\nkeyless = false\n\n[providers.groq]\nname = \"broken\n");
    let mut c = sb.mcp();
    let r = c.initialize();
    assert!(r["result"]["instructions"].is_string());
    let (err, text) = c.call("claude_budget", json!({}));
    assert!(!err, "{text}");
    assert!(text.contains("config problem"), "{text}");
    assert!(text.contains("providers.toml:5"), "{text}");
    let (_, text) = c.call("list_models", json!({}));
    assert!(text.contains("config problem"), "{text}");
    c.assert_pure();
}

#[test]
fn protocol_errors_leave_the_server_up() {
    let sb = Sandbox::new();
    let mut c = sb.mcp();
    c.initialize();
    // A line that is not JSON gets a parse error (id null), not silence.
    c.send_raw("this is not json");
    let r = c.wait_for(|v| v["error"]["code"] == -32700, Duration::from_secs(10));
    assert!(r["id"].is_null(), "{r}");
    // A line over the 16 MiB limit is answered too, with the id it carried
    // (at its end, where the MCP TypeScript SDK writes it).
    let big = format!(
        "{{\"jsonrpc\":\"2.0\",\"method\":\"tools/call\",\"params\":{{\"name\":\"delegate\",\"arguments\":{{\"prompt\":\"{}\"}}}},\"id\":77}}",
        "x".repeat(17 * 1024 * 1024)
    );
    c.send_raw(&big);
    let r = c.wait(77, Duration::from_secs(60));
    assert_eq!(r["error"]["code"], -32600, "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("16 MiB"),
        "{r}"
    );
    c.send_raw("{\"jsonrpc\":\"2.0\",\"id\":99,\"method\":\"no/such/method\"}");
    let r = c.wait(99, Duration::from_secs(10));
    assert!(r["error"].is_object(), "{r}");
    let r = c.request("tools/call", json!({"name": "nope", "arguments": {}}));
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown tool `nope`"),
        "{r}"
    );
    let (err, text) = c.call("delegate", json!({"prompt": 5}));
    assert!(err && text.contains("invalid arguments"), "{text}");
    // Still serving.
    let (err, _) = c.call("claude_budget", json!({}));
    assert!(!err);
    c.assert_pure();
}

#[test]
fn fanout_runs_in_order_with_progress() {
    let mock = MockUpstream::start_blocking("alpha");
    mock.default(Behavior::Ok {
        text: "done: {prompt}".into(),
        latency: Duration::from_millis(50),
    });
    let sb = Sandbox::new();
    sb.config(&provider("alpha", &mock, "", ""));
    let mut c = sb.mcp();
    c.initialize();
    let secret = format!("sk_live_{}", "Zq8Xv2Lm9Ty4Rw7Pk3Hn6Js1Gd5Fb0");
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            if i == 4 {
                json!({"id": "t4", "prompt": format!("key {secret}")})
            } else {
                json!({"id": format!("t{i}"), "prompt": format!("task number {i}")})
            }
        })
        .collect();
    let id = c.send("tools/call", json!({"name": "fanout", "arguments": {"tasks": tasks, "concurrency": 3}, "_meta": {"progressToken": "p1"}}));
    let r = c.wait(id, Duration::from_secs(60));
    let (err, text) = tool_text(&r);
    assert!(!err, "{text}");
    assert!(text.starts_with("fanout: 5 of 6 tasks ok"), "{text}");
    let order: Vec<usize> = (0..6)
        .map(|i| text.find(&format!("=== task t{i} ")).unwrap())
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "results out of order"
    );
    assert!(text.contains("=== task t4 · refused"), "{text}");
    assert!(text.contains("done: task number 5"), "{text}");
    assert!(!text.contains(&secret[8..]));
    let progress: Vec<_> = c
        .notifications
        .iter()
        .filter(|n| n["method"] == "notifications/progress")
        .collect();
    assert_eq!(progress.len(), 6, "{:?}", c.notifications);
    assert!(
        progress
            .iter()
            .all(|p| p["params"]["total"] == 6.0 && p["params"]["progressToken"] == "p1")
    );
    assert_eq!(progress.last().unwrap()["params"]["progress"], 6.0);
    assert_eq!(mock.count(), 5);
}

#[test]
fn cancellation_releases_the_lease_and_the_server_goes_on() {
    let mock = MockUpstream::start_blocking("alpha");
    mock.script([Behavior::Hang]);
    let sb = Sandbox::new();
    sb.config(&provider("alpha", &mock, "max_concurrency = 1", ""));
    let mut c = sb.mcp();
    c.initialize();
    let id = c.send(
        "tools/call",
        json!({"name": "delegate", "arguments": {"prompt": "hang please"}}),
    );
    crate::support::wait_until(|| mock.count() > 0);
    assert_eq!(crate::support::status_json(&sb)["in_flight"], 1);
    c.notify(
        "notifications/cancelled",
        json!({"requestId": id, "reason": "user pressed escape"}),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        crate::support::status_json(&sb)["in_flight"],
        0,
        "the lease was released"
    );
    // The provider (concurrency 1) is free again.
    let (err, text) = c.call("delegate", json!({"prompt": "now answer"}));
    assert!(!err, "{text}");
}

#[test]
fn budget_and_decision_log_round_trip() {
    let sb = Sandbox::new();
    let payload = r#"{"session_id":"s","rate_limits":{"five_hour":{"used_percentage":20,"resets_at":4102444800},"seven_day":{"used_percentage":80.5,"resets_at":4102444800}}}"#;
    assert!(sb.run_with_stdin(&["statusline"], payload).status.success());
    let mut c = sb.mcp();
    let r = c.initialize();
    assert!(
        r["result"]["instructions"]
            .as_str()
            .unwrap()
            .contains("Budget mode now: delegate_more")
    );
    let (_, text) = c.call("claude_budget", json!({}));
    assert!(
        text.contains("mode: delegate_more · delegation threshold 9"),
        "{text}"
    );
    assert!(
        text.contains("weekly: 80% used, resets 2100-01-01T00:00:00Z"),
        "{text}"
    );
    assert!(text.contains("source: statusline capture"), "{text}");
    let (err, text) = c.call("log_route_decision", json!({"gist": "rename variables in utils.rs", "route": "pool", "score": 2, "task_type": "refactor", "model": "groq/x"}));
    assert!(!err, "{text}");
    let id: i64 = text
        .trim_start_matches("logged decision ")
        .trim()
        .parse()
        .unwrap();
    let (err, text) = c.call(
        "log_route_decision",
        json!({"decision_id": id, "outcome": "accepted"}),
    );
    assert!(!err, "{text}");
    let (err, text) = c.call(
        "log_route_decision",
        json!({"gist": "x", "route": "elsewhere", "score": 2}),
    );
    assert!(
        err && text.contains("`route` must be one of pool, claude"),
        "{text}"
    );
    let out = sb.cmd().args(["log", "stats", "--json"]).output().unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["acceptance"][0], json!(["groq/x", 1, 1]));
}
