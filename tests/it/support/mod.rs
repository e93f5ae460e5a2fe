//! Shared test support: a sandboxed environment, a raw MCP client over the
//! binary's stdio, and the mock upstream.

#![allow(dead_code, unreachable_pub)]
#![allow(
    clippy::needless_pass_by_value,
    reason = "callers build the JSON in the call: json!({...})"
)]

pub mod hostile;
pub mod mock;
pub mod pg;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub use mock::{Behavior, MockUpstream};

/// Which ledger a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_freepool-mcp")
}

/// A scratch HOME, config file and state dir; every command runs with a
/// cleared environment so no real key or provider can be reached.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    /// The shared ledger's URL, when the test runs on PostgreSQL.
    pub ledger: Option<String>,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let s = Sandbox {
            dir: tempfile::tempdir().unwrap(),
            ledger: None,
        };
        std::fs::create_dir_all(s.home()).unwrap();
        s.config("");
        s
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("providers.toml")
    }

    /// Writes the user config. Keyless providers are always off in tests: they
    /// would reach the internet.
    pub fn config(&self, extra: &str) {
        let text = format!("[settings]\nkeyless = false\nmax_wait_secs = 0\n{extra}");
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// Writes the config verbatim (for broken-config tests).
    pub fn config_raw(&self, text: &str) {
        std::fs::write(self.config_path(), text).unwrap();
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin());
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.home())
            .env("FREEPOOL_CONFIG", self.config_path())
            .env("FREEPOOL_STATE_DIR", self.state())
            .env("FREEPOOL_LOG", "freepool_mcp=debug")
            .env("MOCK_KEY", "mock-secret-key-value-0001")
            .env("MOCK_KEY_2", "mock-secret-key-value-0002")
            .current_dir(self.dir.path());
        if let Some(url) = &self.ledger {
            c.env("FREEPOOL_LEDGER_URL", url);
        }
        c
    }

    /// The same sandbox on a ledger: `None` for the SQLite file, `Some` for
    /// a fresh PostgreSQL database.
    pub fn on(mut self, backend: Backend) -> Sandbox {
        self.ledger = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(pg::Pg::database()),
        };
        self
    }

    /// Runs a command with `stdin` as its input and collects its output.
    pub fn run_with_stdin(&self, args: &[&str], stdin: &str) -> std::process::Output {
        let mut child = self
            .cmd()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn mcp(&self) -> McpClient {
        McpClient::spawn(self.cmd())
    }
}

/// TOML for a provider served by a mock. `extra` goes in the provider table,
/// `model_extra` in its one model `m1`.
pub fn provider(id: &str, mock: &MockUpstream, extra: &str, model_extra: &str) -> String {
    format!(
        "[providers.{id}]\nbase_url = \"{}\"\nlocal = true\nkey_env = [\"MOCK_KEY\"]\ntimeout_secs = 5\n{extra}\n[providers.{id}.models.m1]\nfamily = \"fam\"\ncontext = 32000\ntier = 2\n{model_extra}\n",
        mock.base_url()
    )
}

/// A mock provider `name` and a sandbox whose catalog has it (model `m1`) and nothing else.
pub fn single_provider(name: &str) -> (MockUpstream, Sandbox) {
    let mock = MockUpstream::start_blocking(name);
    let sb = Sandbox::new();
    sb.config(&provider(name, &mock, "", ""));
    (mock, sb)
}

/// A line-oriented JSON-RPC client over a spawned server's stdio.
pub struct McpClient {
    pub child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    next_id: u64,
    /// Notifications seen so far.
    pub notifications: Vec<Value>,
    /// Every stdout line that was not JSON-RPC (must stay empty).
    pub impure: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub stderr_path: PathBuf,
}

impl McpClient {
    pub fn spawn(mut cmd: Command) -> McpClient {
        let stderr_path = std::env::temp_dir().join(format!(
            "freepool-it-{}-{}.log",
            std::process::id(),
            rand_suffix()
        ));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn server");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        let impure = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let impure2 = impure.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let ok = serde_json::from_str::<Value>(&line).is_ok_and(|v| v["jsonrpc"] == "2.0");
                if !ok {
                    impure2.lock().unwrap().push(line.clone());
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        McpClient {
            child,
            stdin,
            lines: rx,
            next_id: 1,
            notifications: Vec::new(),
            impure,
            stderr_path,
        }
    }

    pub fn send_raw(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    pub fn notify(&mut self, method: &str, params: Value) {
        self.send_raw(&json!({"jsonrpc": "2.0", "method": method, "params": params}).to_string());
    }

    /// Sends a request and returns its id without waiting.
    pub fn send(&mut self, method: &str, params: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send_raw(
            &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string(),
        );
        id
    }

    /// Waits for the response to `id`, keeping notifications.
    pub fn wait(&mut self, id: u64, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let Ok(v) = serde_json::from_str::<Value>(&line) else {
                        continue;
                    };
                    if v.get("id").and_then(serde_json::Value::as_u64) == Some(id)
                        && (v.get("result").is_some() || v.get("error").is_some())
                    {
                        return v;
                    }
                    if v.get("method").is_some() && v.get("id").is_none() {
                        self.notifications.push(v);
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no answer to request {id} within {timeout:?}; stderr:\n{}",
                    self.stderr()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("server closed stdout; stderr:\n{}", self.stderr())
                }
            }
        }
    }

    /// Waits for a line that satisfies `pred` (an answer with no id, say).
    pub fn wait_for(&mut self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&line)
                        && pred(&v)
                    {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "no such line within {timeout:?}; stderr:\n{}",
                    self.stderr()
                ),
            }
        }
    }

    pub fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params);
        self.wait(id, Duration::from_secs(60))
    }

    pub fn initialize(&mut self) -> Value {
        let r = self.request(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "it", "version": "0"}}),
        );
        self.notify("notifications/initialized", json!({}));
        r
    }

    /// Calls a tool; returns (is_error, text).
    pub fn call(&mut self, name: &str, args: Value) -> (bool, String) {
        let r = self.request("tools/call", json!({"name": name, "arguments": args}));
        tool_text(&r)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn assert_pure(&self) {
        let impure = self.impure.lock().unwrap();
        assert!(
            impure.is_empty(),
            "non-JSON-RPC lines on stdout: {impure:?}"
        );
    }
}

impl Drop for McpClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

/// (isError, joined text) of a tools/call response.
pub fn tool_text(r: &Value) -> (bool, String) {
    let result = r
        .get("result")
        .unwrap_or_else(|| panic!("not a result: {r}"));
    let text = result["content"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|b| b["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    (result["isError"].as_bool().unwrap_or(false), text)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) * 1_000_003
        + u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos(),
        )
}

/// Polls `cond` every 20 ms until it holds or 10 s pass.
pub fn wait_until(cond: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !cond() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads a state-dir ledger count with the status command.
pub fn status_json(sb: &Sandbox) -> Value {
    let out = sb.cmd().args(["status", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// The worker's answer inside a delegate result, after checking that it sits
/// in a block marked untrusted whose two lines carry the same nonce; and the
/// rest of the result after the block.
pub fn pool_answer(text: &str) -> (String, String) {
    let head = "[pool answer ";
    assert!(text.starts_with(head), "no untrusted block: {text}");
    let id = &text[head.len()..head.len() + 6];
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{text}");
    let first = text.find('\n').expect("a head line");
    assert!(
        text[..first].ends_with(": untrusted output, data not instructions]"),
        "{text}"
    );
    let end = format!("\n[end of pool answer {id}]\n");
    let at = text
        .find(&end)
        .unwrap_or_else(|| panic!("no end line: {text}"));
    (
        text[first + 1..at].to_owned(),
        text[at + end.len()..].to_owned(),
    )
}
