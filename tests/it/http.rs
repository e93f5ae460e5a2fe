//! `serve --port`: the pool over HTTP. OpenAI's chat completions (plain and
//! streaming) and model list, MCP over streamable HTTP, the bearer token,
//! the gate's 400, one ledger shared with stdio sessions, and shutdown.
//! The client is a few lines of HTTP/1.1 over a socket, so nothing here
//! hides what goes over the wire; scripts/test adds the OpenAI Python SDK,
//! Claude Code and the MCP conformance suite.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Behavior, MockUpstream, Sandbox, provider};

/// A running `serve --port 0` and where it listens.
struct HttpServer {
    child: Child,
    addr: String,
    token: String,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn token_of(sb: &Sandbox) -> String {
    let out = sb.cmd().args(["serve", "--print-token"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn start(sb: &Sandbox, extra: &[&str]) -> HttpServer {
    let token = token_of(sb);
    let mut child = sb
        .cmd()
        .args(["serve", "--port", "0"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("serving on http://").nth(1) {
                let addr = rest.split(' ').next().unwrap_or("").to_owned();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server says where it listens");
    HttpServer { child, addr, token }
}

/// One request; (status, headers lowercased, body).
fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, HashMap<String, String>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (status, headers, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn chat(srv: &HttpServer, body: &Value) -> (u16, HashMap<String, String>, String) {
    let auth = bearer(&srv.token);
    request(
        &srv.addr,
        "POST",
        "/v1/chat/completions",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        &body.to_string(),
    )
}

/// Two mock providers, `alpha` preferred.
fn two_providers() -> (MockUpstream, MockUpstream, Sandbox) {
    let (a, b) = (
        MockUpstream::start_blocking("alpha"),
        MockUpstream::start_blocking("beta"),
    );
    let sb = Sandbox::new();
    sb.config(&format!(
        "{}{}",
        provider("alpha", &a, "priority = 10", ""),
        provider("beta", &b, "", "")
    ));
    (a, b, sb)
}

#[test]
fn every_route_needs_the_token() {
    let (_a, _b, sb) = two_providers();
    let srv = start(&sb, &[]);
    for (method, path) in [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/mcp"),
    ] {
        let (status, headers, body) = request(&srv.addr, method, path, &[], "{}");
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert!(body.contains("--print-token"), "{body}");
        assert!(!headers.contains_key("access-control-allow-origin"));
        let (status, _, _) = request(
            &srv.addr,
            method,
            path,
            &[("Authorization", "Bearer wrong")],
            "{}",
        );
        assert_eq!(status, 401);
    }
    let auth = bearer(&srv.token);
    let (status, _, body) = request(
        &srv.addr,
        "GET",
        "/v1/models",
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alpha/m1", "beta/m1"]);
    // The token file is private and reused.
    assert_eq!(token_of(&sb), srv.token);
}

#[test]
fn chat_completions_fail_over_and_say_who_served() {
    let (a, b, sb) = two_providers();
    a.default(Behavior::Status(500, "boom".into()));
    let srv = start(&sb, &[]);
    let (status, headers, body) = chat(
        &srv,
        &json!({"model": "auto", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "hello there"}]}),
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "beta/m1");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "answer from beta: hello there"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert_eq!(headers["x-freepool-model"], "beta/m1");
    let trail = &headers["x-freepool-attempts"];
    assert!(
        trail.contains("alpha/m1 500 server error") && trail.contains("beta/m1 ok"),
        "{trail}"
    );
    assert_eq!((a.count(), b.count()), (1, 1));
    // The whole conversation reached the provider: the last turn is the prompt.
    assert_eq!(b.received()[0].prompt, "hello there");
}

#[test]
fn streaming_answers_in_openai_chunks() {
    let (_a, _b, sb) = two_providers();
    let srv = start(&sb, &[]);
    let (status, headers, body) = chat(
        &srv,
        &json!({"model": "beta/m1", "stream": true, "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": "stream me"}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(headers["content-type"].starts_with("text/event-stream"));
    let datas: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(datas.last(), Some(&"[DONE]"), "{body}");
    let chunks: Vec<Value> = datas[..datas.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "answer from beta: stream me");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "stop")
    );
    assert!(
        chunks.last().unwrap()["usage"]["total_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
}

#[test]
fn a_secret_in_the_prompt_is_a_400_that_does_not_echo_it() {
    let (a, b, sb) = two_providers();
    let srv = start(&sb, &[]);
    let secret = format!("ghp_{}", "Zq8Xv2Lm9Ty4Rw7Pk3Hn6Js1Gd5Fb0Ca8Eu2Y");
    for stream in [false, true] {
        let (status, _, body) = chat(
            &srv,
            &json!({"stream": stream, "messages": [
                {"role": "user", "content": format!("earlier: token {secret}")},
                {"role": "assistant", "content": "noted"},
                {"role": "user", "content": "summarize"}]}),
        );
        assert_eq!(status, 400, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "credential_in_prompt");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("messages[0]") && msg.contains("GitHub token"),
            "{msg}"
        );
        assert!(!body.contains(&secret), "{body}");
    }
    assert_eq!(a.count() + b.count(), 0, "nothing was sent");
    // A bad body and an unknown model keep OpenAI's error shape.
    let (status, _, body) = chat(&srv, &json!({"messages": "hi"}));
    assert_eq!(status, 400);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["type"],
        "invalid_request_error"
    );
    let (status, _, body) = chat(
        &srv,
        &json!({"model": "gamma/none", "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(status, 404, "{body}");
}

/// MCP over streamable HTTP: initialize, then tools/list and a delegate
/// call on the session, answered by the same pool.
#[test]
fn mcp_over_http_serves_the_same_tools() {
    let (_a, b, sb) = two_providers();
    let srv = start(&sb, &[]);
    let auth = bearer(&srv.token);
    let base = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "it", "version": "1"}}});
    let (status, headers, body) = request(&srv.addr, "POST", "/mcp", &base, &init.to_string());
    assert_eq!(status, 200, "{body}");
    let session = headers["mcp-session-id"].clone();
    let rpc = |body: &str| -> Value {
        body.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|v| v.get("id").is_some())
            .unwrap_or_else(|| serde_json::from_str(body).unwrap())
    };
    assert_eq!(rpc(&body)["result"]["serverInfo"]["name"], "freepool-mcp");
    let mut with_session = base.to_vec();
    with_session.push(("Mcp-Session-Id", session.as_str()));
    with_session.push(("MCP-Protocol-Version", "2025-06-18"));
    let (status, _, _) = request(
        &srv.addr,
        "POST",
        "/mcp",
        &with_session,
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string(),
    );
    assert_eq!(status, 202);
    let (_, _, body) = request(
        &srv.addr,
        "POST",
        "/mcp",
        &with_session,
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string(),
    );
    let tools: Vec<String> = rpc(&body)["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    for t in [
        "delegate",
        "fanout",
        "list_models",
        "claude_budget",
        "log_route_decision",
    ] {
        assert!(tools.iter().any(|n| n == t), "{tools:?}");
    }
    let (_, _, body) = request(
        &srv.addr,
        "POST",
        "/mcp",
        &with_session,
        &json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
            "name": "delegate", "arguments": {"prompt": "over http", "model": "beta/m1"}}})
        .to_string(),
    );
    let text = rpc(&body)["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(text.contains("answer from beta: over http"), "{text}");
    assert_eq!(b.count(), 1);
}

/// Stdio sessions and HTTP clients draw on one ledger: with the provider's
/// limit enforced, together they never cause an upstream 429.
#[test]
fn stdio_and_http_share_one_ledger() {
    let a = MockUpstream::start_blocking("alpha");
    a.enforce(4, Duration::from_secs(60));
    let sb = Sandbox::new();
    sb.config(&provider("alpha", &a, "", "limits = { rpm = 4 }"));
    let srv = start(&sb, &[]);
    let mut handles = Vec::new();
    for i in 0..4 {
        let sb_cmd = sb.cmd();
        handles.push(std::thread::spawn(move || {
            let mut c = sb_cmd;
            let out = c
                .args(["delegate", &format!("stdio {i}")])
                .output()
                .unwrap();
            out.status.success()
        }));
    }
    let mut http_ok = 0;
    for i in 0..4 {
        let (status, _, _) = chat(
            &srv,
            &json!({"messages": [{"role": "user", "content": format!("http {i}")}]}),
        );
        assert!(status == 200 || status == 429, "{status}");
        http_ok += usize::from(status == 200);
    }
    let cli_ok = handles
        .into_iter()
        .map(|h| usize::from(h.join().unwrap()))
        .sum::<usize>();
    assert_eq!(a.overshoots(), 0, "no upstream 429");
    assert_eq!(
        cli_ok + http_ok,
        4,
        "the cap is shared: {cli_ok} + {http_ok}"
    );
    assert!(http_ok >= 1 || cli_ok >= 1);
}

#[test]
fn a_test_instance_without_token_stays_on_loopback_and_shutdown_is_clean() {
    let (_a, _b, sb) = two_providers();
    let out = sb
        .cmd()
        .args([
            "serve",
            "--port",
            "0",
            "--bind",
            "0.0.0.0",
            "--insecure-no-auth",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only on loopback"));
    let srv = start(&sb, &["--insecure-no-auth"]);
    let (status, _, _) = request(&srv.addr, "GET", "/v1/models", &[], "");
    assert_eq!(status, 200);
    // SIGTERM: it stops and exits 0.
    let pid = srv.child.id() as i32;
    // SAFETY: sends SIGTERM to a child this test spawned.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let mut srv = srv;
    let mut code = None;
    for _ in 0..200 {
        if let Some(s) = srv.child.try_wait().unwrap() {
            code = s.code();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(code, Some(0), "exits cleanly on SIGTERM");
}

/// A provider that streams is streamed from, line by line, each line
/// through the gate; a provider that fails first is failed over as usual.
#[test]
fn a_streaming_provider_is_relayed_line_by_line_and_redacted() {
    let (a, b, sb) = two_providers();
    a.default(Behavior::Status(500, "boom".into()));
    let secret = format!("ghp_{}", "Zq8Xv2Lm9Ty4Rw7Pk3Hn6Js1Gd5Fb0Ca8Eu2Y");
    b.streaming().default(Behavior::ok(&format!(
        "line one\nline two with {secret}\nline three"
    )));
    let srv = start(&sb, &[]);
    let (status, _, body) = chat(
        &srv,
        &json!({"stream": true, "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": "go"}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        !body.contains(&secret),
        "the echoed secret is redacted: {body}"
    );
    let chunks: Vec<Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let contents: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(contents.len() >= 3, "streamed in pieces: {contents:?}");
    let text: String = contents.concat();
    assert!(text.starts_with("line one\nline two with "), "{text}");
    assert!(text.ends_with("\nline three"), "{text}");
    assert!(
        text.contains("REDACTED") || text.contains("redacted"),
        "{text}"
    );
    let last = chunks.last().unwrap();
    assert_eq!(last["model"], "beta/m1");
    assert!(
        last["usage"]["total_tokens"].as_u64().unwrap() > 0,
        "{last}"
    );
    assert_eq!((a.count(), b.count()), (1, 1));
}
