//! The benchmark suite: `cargo bench` prints every figure, with its goal, in one run.
//!
//! Everything runs on this machine: mock providers on 127.0.0.1 (the test
//! mock), the release server binary over stdio, and a minimal rmcp stdio
//! server (this binary re-executed with `--minimal-server`) as the baseline
//! for cold start. Figures are ratios or medians measured side by side, so a
//! busy machine moves both sides of a comparison together.

// A benchmark's report is its stdout.
#![allow(clippy::print_stdout)]
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "figures are ratios and percentiles of counts far below 2^52"
)]
#![allow(
    clippy::too_many_lines,
    clippy::many_single_char_names,
    reason = "the suite is one script, section after section, filling one table"
)]

#[path = "../tests/it/support/mock.rs"]
mod mock;
#[path = "../tests/it/support/pg.rs"]
mod pg;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mock::{Behavior, MockUpstream};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const BIN: &str = env!("CARGO_BIN_EXE_freepool-mcp");

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--minimal-server") {
        minimal_server();
        return;
    }
    if args.iter().any(|a| a == "--gate-first-scan") {
        // The first scan of a fresh process: automata and regexes built then.
        let text = prompt_like(4096);
        let t0 = Instant::now();
        let found = freepool_mcp::gate::scan(&text[..4096]);
        println!("{:.0}", t0.elapsed().as_secs_f64() * 1e6);
        assert!(found.is_empty());
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--lease-worker-pg") {
        let upstream = Duration::from_millis(args[i + 3].parse().unwrap());
        print_latencies(freepool_mcp::testing::lease_worker_pg(
            &args[i + 1],
            args[i + 2].parse().unwrap(),
            upstream,
        ));
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--lease-worker") {
        lease_worker(
            &args[i + 1],
            args[i + 2].parse().unwrap(),
            args[i + 3].parse().unwrap(),
        );
        return;
    }
    // `cargo test --benches` runs this with `--test`-like flags: do nothing then.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

/// A minimal rmcp stdio server with one tool, built like ours: the cold-start baseline.
fn minimal_server() {
    use rmcp::model::{
        InitializeResult, ListToolsResult, PaginatedRequestParams, ServerCapabilities, Tool,
    };
    use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt, service::RequestContext};
    #[derive(Clone)]
    struct Minimal;
    impl ServerHandler for Minimal {
        fn get_info(&self) -> InitializeResult {
            InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
                .with_instructions("minimal")
        }
        async fn list_tools(
            &self,
            _r: Option<PaginatedRequestParams>,
            _c: RequestContext<RoleServer>,
        ) -> Result<ListToolsResult, ErrorData> {
            let schema = json!({"type": "object", "properties": {"x": {"type": "string"}}});
            let Value::Object(m) = schema else {
                unreachable!()
            };
            Ok(ListToolsResult::with_all_items(vec![Tool::new(
                "echo",
                "echo",
                Arc::new(m),
            )]))
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let running = Minimal.serve(rmcp::transport::stdio_pipes()).await.unwrap();
        let _ = running.waiting().await;
    });
}

struct Client {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
    next: u64,
}

impl Client {
    fn spawn(program: &str, args: &[&str], env: &[(&str, String)]) -> Client {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Client {
            child,
            stdin,
            lines,
            next: 1,
        }
    }

    async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
            .to_string()
            + "\n";
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        loop {
            let l = self
                .lines
                .next_line()
                .await
                .unwrap()
                .expect("server closed stdout");
            let v: Value = serde_json::from_str(&l).unwrap();
            if v["id"].as_u64() == Some(id) {
                return v;
            }
        }
    }

    async fn initialize(&mut self) -> Value {
        let r = self.request("initialize", json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}})).await;
        self.stdin
            .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n")
            .await
            .unwrap();
        r
    }

    fn rss_kb(&self, field: &str) -> u64 {
        let pid = self.child.id().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn p99(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// `serve --port 0` with a token; its address once it says where it listens.
async fn http_server(env: &[(&str, String)]) -> (Child, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--port", "0"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("FREEPOOL_HTTP_TOKEN", "bench-token");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some(rest) = line.split("serving on http://").nth(1) {
            let addr = rest.split(' ').next().unwrap().to_owned();
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return (child, addr);
        }
    }
    panic!("serve --port did not start");
}

/// Latencies (ms) of `calls` requests from each of `clients` concurrent
/// clients, each request built by `send`.
async fn concurrent_latencies<F, Fut>(clients: usize, calls: usize, send: F) -> Vec<f64>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut tasks = Vec::new();
    for c in 0..clients {
        let send = send.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(calls);
            for _ in 0..calls {
                let t0 = Instant::now();
                send(c).await;
                out.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn provider_toml(id: &str, mock: &MockUpstream, model_limits: &str) -> String {
    format!(
        "[providers.{id}]\nbase_url = \"{}\"\nlocal = true\nkey_env = [\"MOCK_KEY\"]\n[providers.{id}.models.m1]\nfamily = \"fam\"\ncontext = 32000\ntier = 2\n{model_limits}\n",
        mock.base_url()
    )
}

fn write_config(dir: &Path, providers: &str) -> std::path::PathBuf {
    let path = dir.join("providers.toml");
    std::fs::write(&path, format!("[settings]\nkeyless = false\nmax_wait_secs = 0\nfanout_max_concurrency = 32\n{providers}")).unwrap();
    path
}

fn server_env(dir: &Path, config: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("HOME", dir.display().to_string()),
        ("FREEPOOL_CONFIG", config.display().to_string()),
        (
            "FREEPOOL_STATE_DIR",
            dir.join("state").display().to_string(),
        ),
        ("FREEPOOL_LOG", "error".into()),
        ("MOCK_KEY", "bench-mock-key".into()),
    ]
}

struct Row {
    what: String,
    value: String,
    goal: String,
    met: Option<bool>,
}

async fn run() {
    let mut rows: Vec<Row> = Vec::new();
    let mut row = |what: &str, value: String, goal: &str, met: Option<bool>| {
        rows.push(Row {
            what: what.into(),
            value,
            goal: goal.into(),
            met,
        });
    };

    // `cargo bench --bench suite -- --only leases` runs one section.
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let want = |section: &str| only.as_deref().is_none_or(|o| o == section);
    let me = std::env::current_exe().unwrap().display().to_string();

    // 1. Cold start against a minimal rmcp server, interleaved so load hits both.
    if want("cold") {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), "");
        let env = server_env(dir.path(), &config);
        let (mut ours_init, mut ours_list, mut base_init, mut base_list) =
            (vec![], vec![], vec![], vec![]);
        let mut idle_rss = 0;
        for _ in 0..40 {
            for (program, args, init, list) in [
                (BIN, vec![], &mut ours_init, &mut ours_list),
                (
                    me.as_str(),
                    vec!["--minimal-server"],
                    &mut base_init,
                    &mut base_list,
                ),
            ] {
                let t0 = Instant::now();
                let mut c = Client::spawn(program, &args, &env);
                c.initialize().await;
                init.push(t0.elapsed().as_secs_f64() * 1000.0);
                c.request("tools/list", json!({})).await;
                list.push(t0.elapsed().as_secs_f64() * 1000.0);
                if program == BIN {
                    idle_rss = idle_rss.max(c.rss_kb("VmRSS"));
                }
            }
        }
        let (oi, bi, ol, bl) = (
            median(ours_init),
            median(base_init),
            median(ours_list),
            median(base_list),
        );
        row(
            "cold start to initialize answer (ms, ours / minimal rmcp)",
            format!("{oi:.1} / {bi:.1} = {:.2}x", oi / bi),
            "<= 1.5x",
            Some(oi / bi <= 1.5),
        );
        row(
            "cold start to tools/list answer (ms, ours / minimal rmcp)",
            format!("{ol:.1} / {bl:.1} = {:.2}x", ol / bl),
            "<= 1.5x",
            Some(ol / bl <= 1.5),
        );
        row(
            "idle RSS after initialize",
            format!("{:.1} MB", idle_rss as f64 / 1024.0),
            "-",
            None,
        );
    }

    // 2. Delegate overhead: through the server minus a direct HTTP call to the same mock.
    if want("delegate") {
        let fast = MockUpstream::start("fast").await;
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), &provider_toml("fast", &fast, ""));
        let mut c = Client::spawn(BIN, &[], &server_env(dir.path(), &config));
        c.initialize().await;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        let url = format!("{}/chat/completions", fast.base_url());
        let body = json!({"model": "m1", "messages": [{"role": "user", "content": "Summarize: a short sentence."}], "stream": false});
        // The first 20 rounds warm connections and caches; they are not counted.
        let (mut through, mut direct) = (vec![], vec![]);
        for round in 0..320 {
            let t0 = Instant::now();
            let r = c
            .request(
                "tools/call",
                json!({"name": "delegate", "arguments": {"prompt": "Summarize: a short sentence."}}),
            )
            .await;
            let server_ms = t0.elapsed().as_secs_f64() * 1000.0;
            assert!(r["result"]["isError"] != json!(true), "{r}");
            let t0 = Instant::now();
            let resp = http
                .post(&url)
                .bearer_auth("k")
                .json(&body)
                .send()
                .await
                .unwrap();
            resp.bytes().await.unwrap();
            let direct_ms = t0.elapsed().as_secs_f64() * 1000.0;
            if round >= 20 {
                through.push(server_ms);
                direct.push(direct_ms);
            }
        }
        let (mt, md) = (median(through), median(direct));
        row(
            "delegate overhead (median through server - direct HTTP)",
            format!("{mt:.2} - {md:.2} = {:.2} ms", mt - md),
            "<= 2 ms",
            Some(mt - md <= 2.0),
        );

        // 2b. The HTTP endpoint's added latency over a direct call, beside the
        // stdio delegate's, sequential and at 16 concurrent clients.
        let (_srv, addr) = http_server(&server_env(dir.path(), &config)).await;
        let endpoint = format!("http://{addr}/v1/chat/completions");
        let ask =
            json!({"messages": [{"role": "user", "content": "Summarize: a short sentence."}]});
        let (mut via_http, mut via_stdio, mut plain) = (vec![], vec![], vec![]);
        for round in 0..320 {
            let t0 = Instant::now();
            let r = http
                .post(&endpoint)
                .bearer_auth("bench-token")
                .json(&ask)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
            r.bytes().await.unwrap();
            let h = t0.elapsed().as_secs_f64() * 1000.0;
            let t0 = Instant::now();
            let r = c
                .request(
                    "tools/call",
                    json!({"name": "delegate", "arguments": {"prompt": "Summarize: a short sentence."}}),
                )
                .await;
            assert!(r["result"]["isError"] != json!(true), "{r}");
            let st = t0.elapsed().as_secs_f64() * 1000.0;
            let t0 = Instant::now();
            let r = http
                .post(&url)
                .bearer_auth("k")
                .json(&body)
                .send()
                .await
                .unwrap();
            r.bytes().await.unwrap();
            let d = t0.elapsed().as_secs_f64() * 1000.0;
            if round >= 20 {
                via_http.push(h - d);
                via_stdio.push(st - d);
                plain.push(d);
            }
        }
        row(
            "added latency, sequential: HTTP endpoint / stdio delegate, over a direct call (median; p99)",
            format!(
                "{:.2} / {:.2} ms; {:.2} / {:.2} ms",
                median(via_http.clone()),
                median(via_stdio.clone()),
                p99(via_http),
                p99(via_stdio)
            ),
            "",
            None,
        );
        // 16 clients at once: on the endpoint (one server), on 16 stdio
        // servers (16 sessions), and directly on the mock.
        let direct16 = {
            let (http, url, body) = (http.clone(), url.clone(), body.clone());
            concurrent_latencies(16, 40, move |_| {
                let (http, url, body) = (http.clone(), url.clone(), body.clone());
                async move {
                    let r = http
                        .post(&url)
                        .bearer_auth("k")
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    r.bytes().await.unwrap();
                }
            })
            .await
        };
        let http16 = {
            let (http, endpoint, ask) = (http.clone(), endpoint.clone(), ask.clone());
            concurrent_latencies(16, 40, move |_| {
                let (http, endpoint, ask) = (http.clone(), endpoint.clone(), ask.clone());
                async move {
                    let r = http
                        .post(&endpoint)
                        .bearer_auth("bench-token")
                        .json(&ask)
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status().is_success());
                    r.bytes().await.unwrap();
                }
            })
            .await
        };
        let mut sessions = Vec::new();
        for _ in 0..16 {
            let mut s = Client::spawn(BIN, &[], &server_env(dir.path(), &config));
            s.initialize().await;
            sessions.push(Arc::new(tokio::sync::Mutex::new(s)));
        }
        let stdio16 = {
            let sessions = sessions.clone();
            concurrent_latencies(16, 40, move |i| {
                let s = sessions[i].clone();
                async move {
                    let r = s
                        .lock()
                        .await
                        .request(
                            "tools/call",
                            json!({"name": "delegate", "arguments": {"prompt": "Summarize: a short sentence."}}),
                        )
                        .await;
                    assert!(r["result"]["isError"] != json!(true), "{r}");
                }
            })
            .await
        };
        drop(sessions);
        let (dm, dp) = (median(direct16.clone()), p99(direct16));
        row(
            "added latency, 16 concurrent: HTTP endpoint / 16 stdio sessions, over direct (median; p99)",
            format!(
                "{:.2} / {:.2} ms; {:.2} / {:.2} ms (direct {dm:.2}; {dp:.2} ms)",
                median(http16.clone()) - dm,
                median(stdio16.clone()) - dm,
                p99(http16) - dp,
                p99(stdio16) - dp
            ),
            "",
            None,
        );

        // 3. Fanout of 100 tasks at 200 ms latency, concurrency 8, through the server.
        let slow = MockUpstream::start("slow").await;
        slow.default(Behavior::Ok {
            text: "done {prompt}".into(),
            latency: Duration::from_millis(200),
        });
        let dir2 = tempfile::tempdir().unwrap();
        let config2 = write_config(dir2.path(), &provider_toml("slow", &slow, ""));
        let mut f = Client::spawn(BIN, &[], &server_env(dir2.path(), &config2));
        f.initialize().await;
        let tasks: Vec<Value> = (0..100)
            .map(|i| json!({"id": i.to_string(), "prompt": format!("convert item {i}")}))
            .collect();
        let t0 = Instant::now();
        let r = f
            .request(
                "tools/call",
                json!({"name": "fanout", "arguments": {"tasks": tasks, "concurrency": 8}}),
            )
            .await;
        let wall = t0.elapsed().as_secs_f64();
        let text = r["result"]["content"][0]["text"].as_str().unwrap_or("");
        assert!(
            text.starts_with("fanout: 100 of 100 tasks ok"),
            "{}",
            &text[..text.len().min(300)]
        );
        let ideal = (100f64 / 8.0).ceil() * 0.2;
        row(
            "fanout 100 x 200 ms at concurrency 8 (wall / ideal)",
            format!("{wall:.2} s / {ideal:.2} s = {:.3}", wall / ideal),
            "<= 1.10",
            Some(wall / ideal <= 1.10),
        );
        let peak = c.rss_kb("VmHWM").max(f.rss_kb("VmHWM"));
        row(
            "server peak RSS (after 320 delegates / a 100-task fanout)",
            format!("{:.1} MB", peak as f64 / 1024.0),
            "-",
            None,
        );
        drop(c);
        drop(f);
    }

    // 4. Quota use: three providers with enforced per-minute limits, four server
    //    processes (four Claude sessions) sharing one state dir, each running a
    //    fanout, together well past the providers' capacity.
    if want("quota") {
        let limits = [("qa", 20u64), ("qb", 15), ("qc", 10)];
        let dir3 = tempfile::tempdir().unwrap();
        let mut providers = String::new();
        let mut mocks = Vec::new();
        for (id, rpm) in limits {
            let m = MockUpstream::start(id).await;
            m.enforce(rpm, Duration::from_secs(60));
            m.default(Behavior::Ok {
                text: "ok".into(),
                latency: Duration::from_millis(30),
            });
            providers.push_str(&provider_toml(
                id,
                &m,
                &format!("limits = {{ rpm = {rpm} }}"),
            ));
            mocks.push(m);
        }
        let config3 = write_config(dir3.path(), &providers);
        let capacity: u64 = limits.iter().map(|(_, r)| r).sum();
        let (sessions, per_session) = (4, 23);
        let workload = sessions * per_session;
        let mut servers = Vec::new();
        for _ in 0..sessions {
            let mut s = Client::spawn(BIN, &[], &server_env(dir3.path(), &config3));
            s.initialize().await;
            servers.push(s);
        }
        let runs = servers.iter_mut().enumerate().map(|(n, s)| async move {
            let tasks: Vec<Value> = (0..per_session)
                .map(|i| json!({"prompt": format!("session {n} task {i}")}))
                .collect();
            let r = s
                .request(
                    "tools/call",
                    json!({"name": "fanout", "arguments": {"tasks": tasks, "concurrency": 8}}),
                )
                .await;
            let text = r["result"]["content"][0]["text"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            // "fanout: N of M tasks ok"
            text.split_whitespace()
                .nth(1)
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        });
        let served: u64 = futures::future::join_all(runs).await.into_iter().sum();
        drop(servers);
        let upstream: u64 = mocks.iter().map(|m| m.count() as u64).sum();
        let overshoots: u64 = mocks.iter().map(mock::MockUpstream::overshoots).sum();
        let share = served as f64 / capacity.min(workload) as f64;
        row(
            &format!(
                "quota use: served / free capacity ({sessions} servers, {workload} tasks, capacity {capacity}/min)"
            ),
            format!("{served} / {capacity} = {:.1}%", share * 100.0),
            ">= 95%",
            Some(share >= 0.95),
        );
        let r429 = overshoots as f64 / upstream.max(1) as f64;
        row(
            "quota use: upstream requests that met a 429",
            format!("{overshoots} / {upstream} = {:.1}%", r429 * 100.0),
            "<= 1%",
            Some(r429 <= 0.01),
        );
    }

    // 4b. What three file tasks cost Claude, three ways, measured from the
    //     actual tool calls and results through the release server.
    let savings = if want("savings") {
        savings_table().await
    } else {
        Vec::new()
    };

    // 5. The credential gate: code-like and prompt-like text, in-process and
    //    whole-process (`freepool-mcp scan FILE`), and one 4 KB prompt.
    if want("gate") {
        let code = code_like(8 * 1024 * 1024);
        let prompt = prompt_like(8 * 1024 * 1024);
        let _ = freepool_mcp::gate::scan(&code[..10_000]);
        let _ = freepool_mcp::gate::scan(&prompt[..10_000]);
        let in_process = |text: &str, scan: fn(&str) -> Vec<freepool_mcp::gate::Finding>| {
            let mut speeds = vec![];
            for _ in 0..5 {
                let t0 = Instant::now();
                let found = scan(text);
                speeds.push(text.len() as f64 / 1e6 / t0.elapsed().as_secs_f64());
                assert!(
                    found.is_empty(),
                    "false positives in the bench text: {:?}",
                    &found[..found.len().min(3)]
                );
            }
            median(speeds)
        };
        let one = freepool_mcp::gate::scan_on_one_thread;
        let (code_one, prompt_one) = (in_process(&code, one), in_process(&prompt, one));
        row(
            "gate throughput in-process, one thread: prompt-like | code-like",
            format!("{prompt_one:.0} | {code_one:.0} MB/s"),
            ">= 100 MB/s",
            Some(prompt_one >= 100.0 && code_one >= 100.0),
        );
        let all = freepool_mcp::gate::scan;
        let (code_all, prompt_all) = (in_process(&code, all), in_process(&prompt, all));
        row(
            "gate throughput in-process, 8 MB cut per core: prompt-like | code-like",
            format!("{prompt_all:.0} | {code_all:.0} MB/s"),
            ">= 100 MB/s",
            Some(prompt_all >= 100.0 && code_all >= 100.0),
        );
        let dir = tempfile::tempdir().unwrap();
        let whole = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let mut speeds = vec![];
            for _ in 0..5 {
                let t0 = Instant::now();
                let out = std::process::Command::new(BIN)
                    .arg("scan")
                    .arg(&path)
                    .output()
                    .unwrap();
                speeds.push(text.len() as f64 / 1e6 / t0.elapsed().as_secs_f64());
                assert_eq!(
                    out.status.code(),
                    Some(0),
                    "{}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
            median(speeds)
        };
        let (code_whole, prompt_whole) = (whole("code.txt", &code), whole("prompt.txt", &prompt));
        row(
            "gate throughput whole-process (`scan` of an 8 MB file): prompt-like | code-like",
            format!("{prompt_whole:.0} | {code_whole:.0} MB/s"),
            ">= 100 MB/s",
            Some(prompt_whole >= 100.0 && code_whole >= 100.0),
        );
        // A 4 KB prompt: the cost one delegate pays, warm, and the first
        // scan of a process (the keyword automata built, regexes compiled on use).
        let four = &prompt[..4096];
        let mut t = vec![];
        for _ in 0..200 {
            let t0 = Instant::now();
            freepool_mcp::gate::scan(four);
            t.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        let cold = {
            let out = std::process::Command::new(me.as_str())
                .args(["--gate-first-scan"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        row(
            "gate time for a 4 KB prompt: warm median | first scan in a process",
            format!("{:.0} µs | {cold} µs", median(t)),
            "-",
            None,
        );
    }

    // 5b. Lease latency on both ledgers, side by side.
    if want("backends") {
        for (sessions, sq, pgl) in backend_table(&me) {
            row(
                &format!("lease p50 / p99 at {sessions} sessions: SQLite file | PostgreSQL"),
                format!(
                    "{:.2} / {:.1} ms | {:.2} / {:.1} ms",
                    sq[0], sq[1], pgl[0], pgl[1]
                ),
                "",
                None,
            );
        }
    }

    // 6. Lease latency as the ledger fills: sessions (processes) leasing and
    //    committing on one ledger that holds a month of history.
    let leases = if want("leases") {
        lease_table(&me)
    } else {
        Vec::new()
    };
    if !leases.is_empty() {
        let at = |history: u64, sessions: usize| {
            leases
                .iter()
                .find(|(h, s, _, _)| *h == history && *s == sessions)
                .map_or(f64::NAN, |r| r.3)
        };
        let p99 = at(50_000, 32);
        row(
            "lease p99 at 32 sessions, 50k events in the ledger",
            format!("{p99:.1} ms"),
            "< 100 ms",
            Some(p99 < 100.0),
        );
        let growth = at(500_000, 32) / at(0, 32).max(0.01);
        row(
            "lease p99 at 32 sessions, 500k events / empty ledger",
            format!(
                "{:.1} / {:.1} ms = {growth:.2}x",
                at(500_000, 32),
                at(0, 32)
            ),
            "history-independent",
            None,
        );
    }

    println!(
        "\nfreepool-mcp benchmarks ({} cores)\n",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    let w = rows.iter().map(|r| r.what.len()).max().unwrap_or(10);
    for r in &rows {
        let verdict = match r.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "",
        };
        println!("{:<w$}  {:<36} {:<12} {verdict}", r.what, r.value, r.goal);
    }
    if !savings.is_empty() {
        println!(
            "\nClaude's cost of three tasks, in input-token equivalents (an output token counts {OUTPUT_WEIGHT}; 3.5 characters a token)\n"
        );
        println!(
            "{:<44} {:>14} {:>18} {:>14}",
            "task", "Claude alone", "delegate, pasted", "files in/out"
        );
        for (task, alone, pasted, files) in &savings {
            println!("{task:<44} {alone:>14} {pasted:>18} {files:>14}");
        }
    }
    if leases.is_empty() {
        return;
    }
    println!(
        "\nlease latency, p50 / p99 in ms (each session a process making 40 calls: lease, a {UPSTREAM_MS} ms upstream, commit)\n"
    );
    let sessions = [1, 8, 32, 64];
    print!("{:<26}", "events in the ledger");
    for s in sessions {
        print!(
            "{:>18}",
            format!("{s} session{}", if s == 1 { "" } else { "s" })
        );
    }
    println!();
    for history in [0u64, 50_000, 500_000] {
        print!("{history:<26}");
        for s in sessions {
            let (p50, p99) = leases
                .iter()
                .find(|(h, n, _, _)| *h == history && *n == s)
                .map_or((f64::NAN, f64::NAN), |r| (r.2, r.3));
            print!("{:>18}", format!("{p50:.2} / {p99:.1}"));
        }
        println!();
    }
}

/// One session of the lease benchmark: prints each lease's latency (µs).
fn lease_worker(dir: &str, calls: usize, upstream_ms: u64) {
    let upstream = Duration::from_millis(upstream_ms);
    print_latencies(freepool_mcp::testing::lease_worker(
        Path::new(dir),
        calls,
        upstream,
    ));
}

/// A lease worker's output: one latency (µs) a line, or exit 1 with why.
fn print_latencies(result: Result<Vec<u64>, String>) {
    match result {
        Ok(latencies) => {
            for l in latencies {
                println!("{l}");
            }
        }
        Err(e) => {
            eprintln!("lease worker: {e}");
            std::process::exit(1);
        }
    }
}

/// An output token costs Claude about this many input tokens.
const OUTPUT_WEIGHT: u64 = 5;

/// Claude tokens in `chars` characters (about 3.5 a token for code and prose).
fn claude_tokens(chars: usize) -> u64 {
    (chars as f64 / 3.5).round() as u64
}

/// Varied prose of about `chars` characters (a repeated string would read
/// as a broken generation and be refused).
fn prose(chars: usize) -> String {
    const WORDS: [&str; 16] = [
        "the",
        "handler",
        "returns",
        "a",
        "response",
        "when",
        "request",
        "is",
        "valid",
        "otherwise",
        "an",
        "error",
        "names",
        "field",
        "that",
        "failed",
    ];
    let (mut out, mut x) = (String::with_capacity(chars + 16), 12_345u64);
    while out.len() < chars {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        out.push_str(WORDS[(x >> 60) as usize]);
        out.push(if x % 11 == 0 { '\n' } else { ' ' });
    }
    out
}

/// One file task, with the sizes its answers have.
struct FileTask {
    name: &'static str,
    /// (path, content) of the input files.
    inputs: Vec<(String, String)>,
    /// The answer's length per call, in characters.
    answer_chars: usize,
    /// Whether the result belongs in files (one per input, or one in all).
    writes: bool,
}

/// (task, Claude alone, delegate with pasted content, files in/out), in
/// input-token equivalents. Reads and writes by Claude itself are counted
/// from the files' sizes (what its Read returns, what its Write sends);
/// tool calls and results are the JSON and text that actually crossed.
async fn savings_table() -> Vec<(String, u64, u64, u64)> {
    let line = "pub fn handle(request: &Request) -> Result<Response, Error> { todo!() }\n";
    let tasks = vec![
        FileTask {
            name: "summarize a 50 KB file",
            inputs: vec![("src/big.rs".into(), line.repeat(50_000 / line.len()))],
            answer_chars: 1_200,
            writes: false,
        },
        FileTask {
            name: "convert 20 files of 2 KB (one output each)",
            inputs: (0..20)
                .map(|i| {
                    (
                        format!("data/{i}.json"),
                        format!(
                            "{{\"record\": {i}, \"fields\": [{}]}}\n",
                            "\"a value\", ".repeat(180)
                        ),
                    )
                })
                .collect(),
            answer_chars: 2_000,
            writes: true,
        },
        FileTask {
            name: "draft a test file for a 10 KB module",
            inputs: vec![("src/module.rs".into(), line.repeat(10_000 / line.len()))],
            answer_chars: 6_000,
            writes: true,
        },
    ];
    let mut rows = Vec::new();
    for task in tasks {
        let mock = MockUpstream::start("sav").await;
        mock.default(Behavior::ok(&prose(task.answer_chars)));
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("project");
        for (path, content) in &task.inputs {
            let p = project.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        let config = write_config(dir.path(), &provider_toml("sav", &mock, ""));
        let mut env = server_env(dir.path(), &config);
        env.push(("CLAUDE_PROJECT_DIR", project.display().to_string()));
        let mut c = Client::spawn(BIN, &[], &env);
        c.initialize().await;
        let input_chars: usize = task.inputs.iter().map(|(_, t)| t.len()).sum();
        let answers_chars = task.answer_chars * if task.writes { task.inputs.len() } else { 1 };
        // Claude alone: read the inputs, write the result (as a file or as its reply).
        let alone = claude_tokens(input_chars) + OUTPUT_WEIGHT * claude_tokens(answers_chars);
        // Delegating by pasting: read the inputs, paste them into the call,
        // read the answers, and write them out when they belong in files.
        let (mut pasted_call, mut pasted_result) = (0, 0);
        // Files in/out: name the inputs, name the outputs.
        let (mut files_call, mut files_result) = (0, 0);
        let per_call: Vec<Vec<(String, String)>> = if task.inputs.len() > 1 {
            task.inputs.iter().map(|i| vec![i.clone()]).collect()
        } else {
            vec![task.inputs.clone()]
        };
        let fan = per_call.len() > 1;
        let (mut pasted_tasks, mut files_tasks) = (Vec::new(), Vec::new());
        for (i, inputs) in per_call.iter().enumerate() {
            let pasted: String = inputs
                .iter()
                .map(|(p, t)| format!("### {p}\n```\n{t}```\n"))
                .collect();
            pasted_tasks.push(json!({"prompt": format!("{} these.\n{pasted}", task.name)}));
            let mut f = json!({"prompt": format!("{} these.", task.name), "files": inputs.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>()});
            if task.writes {
                f["write_to"] = json!(format!("out/{i}.txt"));
            }
            files_tasks.push(f);
        }
        for (tasks, call, result) in [
            (pasted_tasks, &mut pasted_call, &mut pasted_result),
            (files_tasks, &mut files_call, &mut files_result),
        ] {
            let (name, args) = if fan {
                ("fanout", json!({"tasks": tasks, "concurrency": 8}))
            } else {
                ("delegate", tasks[0].clone())
            };
            let r = c
                .request("tools/call", json!({"name": name, "arguments": args}))
                .await;
            let text = r["result"]["content"][0]["text"].as_str().unwrap_or("");
            assert!(
                r["result"]["isError"] != json!(true),
                "{}: {text}",
                task.name
            );
            *call = json!({"name": name, "arguments": args}).to_string().len();
            *result = text.len();
        }
        let write_back = if task.writes {
            OUTPUT_WEIGHT * claude_tokens(answers_chars)
        } else {
            0
        };
        let pasted = claude_tokens(input_chars)
            + OUTPUT_WEIGHT * claude_tokens(pasted_call)
            + claude_tokens(pasted_result)
            + write_back;
        let files = OUTPUT_WEIGHT * claude_tokens(files_call) + claude_tokens(files_result);
        rows.push((task.name.to_owned(), alone, pasted, files));
    }
    rows
}

/// What each benchmark session's upstream call takes between lease and
/// commit: a fast provider (free tiers answer in 0.2-30 s).
const UPSTREAM_MS: u64 = 20;

/// Runs `sessions` lease-worker processes (`arg` names the ledger kind,
/// `target` the ledger) side by side; every lease latency in ms, sorted.
fn lease_sessions(me: &str, arg: &str, target: &str, sessions: usize) -> Vec<f64> {
    let children: Vec<_> = (0..sessions)
        .map(|_| {
            std::process::Command::new(me)
                .args([arg, target, "40", &UPSTREAM_MS.to_string()])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut all: Vec<f64> = Vec::new();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "a lease worker failed");
        all.extend(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.parse::<f64>().ok())
                .map(|us| us / 1000.0),
        );
    }
    all.sort_by(f64::total_cmp);
    all
}

/// Lease latency (p50, p99 ms) at 1, 8 and 32 sessions on an empty ledger:
/// the SQLite file, then PostgreSQL (a server started for the run).
fn backend_table(me: &str) -> Vec<(usize, [f64; 2], [f64; 2])> {
    let server = pg::Pg::private();
    let run = |arg: &str, target: &str, sessions: usize| -> [f64; 2] {
        let all = lease_sessions(me, arg, target, sessions);
        let pct = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
        [pct(0.50), pct(0.99)]
    };
    let mut out = Vec::new();
    for sessions in [1usize, 8, 32] {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = run(
            "--lease-worker",
            &dir.path().display().to_string(),
            sessions,
        );
        let url = server.new_database();
        let postgres = run("--lease-worker-pg", &url, sessions);
        out.push((sessions, sqlite, postgres));
    }
    out
}

/// (events, sessions, p50 ms, p99 ms) for every combination.
fn lease_table(me: &str) -> Vec<(u64, usize, f64, f64)> {
    let mut out = Vec::new();
    for history in [0u64, 50_000, 500_000] {
        let dir = tempfile::tempdir().unwrap();
        if history > 0 {
            freepool_mcp::testing::seed_ledger(dir.path(), history).unwrap();
        }
        for sessions in [1usize, 8, 32, 64] {
            let all = lease_sessions(
                me,
                "--lease-worker",
                &dir.path().display().to_string(),
                sessions,
            );
            let pct = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
            out.push((history, sessions, pct(0.50), pct(0.99)));
        }
    }
    out
}

/// Prompt-like text: what a delegate carries. Prose asking for work, code
/// and config that read secrets from somewhere else, headers with
/// placeholders, logs with ids and hashes: the secret-sounding words
/// everywhere, no secret anywhere.
fn prompt_like(size: usize) -> String {
    let blocks = [
        "Can you refactor the login handler? It reads the password from the form, checks the token against the session store, and issues a new API key when the secret rotates. Keep the auth middleware rejecting expired tokens.\n\n",
        "Summarize this incident: at 09:14 the token refresh job failed with 401 because the client secret had been rotated in the vault but the deployment still used the old credential. Request id 3f2b9c1e-8a4d-4c7b-9e2f-1a2b3c4d5e6f.\n\n",
        "```yaml\nservices:\n  api:\n    image: ghcr.io/acme/api:1.4.2\n    environment:\n      DATABASE_URL: postgres://app:${DB_PASSWORD}@db:5432/app\n      API_KEY: ${API_KEY}\n      JWT_SECRET: ${JWT_SECRET}\n```\n",
        "```python\ndef get_client():\n    api_key = os.environ[\"PAYMENTS_API_KEY\"]\n    token = auth.fetch_token(client_id=CLIENT_ID, client_secret=settings.CLIENT_SECRET)\n    return Client(api_key=api_key, token=token, timeout=30)\n```\n",
        "curl -s https://api.acme.io/v1/orders -H \"Authorization: Bearer $ACCESS_TOKEN\" -H \"X-API-Key: ${API_KEY}\" | jq '.items[] | {id, total}'\n",
        "Convert this .env.example to a TOML config:\nSECRET_KEY=change-me\nDB_PASSWORD=your-password-here\nSTRIPE_KEY=sk_test_...\nREDIS_URL=redis://localhost:6379/0\n\n",
        "fn sign(secret: &[u8], payload: &str) -> String {\n    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);\n    let tag = hmac::sign(&key, payload.as_bytes());\n    hex::encode(tag.as_ref())\n}\n",
        "The password policy needs at least 12 characters; tokens expire after 3600 seconds and the refresh token after 30 days. max_tokens is 4096 and the prompt used 1,832 input tokens.\n",
        "2026-11-30T09:14:02Z ERROR auth: token validation failed key_id=k-2026-11 kid=\"a1b2\" sha256=9f86d081884c7d659a2feaea0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a0 user=42\n",
        "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: app\n    env:\n    - name: API_TOKEN\n      valueFrom:\n        secretKeyRef:\n          name: app-secrets\n          key: api-token\n",
        "Write tests for `rotate_key(old_key, new_key)`: the secret store must keep both keys valid for an hour, and the audit log must record the key id, never the key.\n\n",
    ];
    let mut s = String::with_capacity(size + 1024);
    let mut i = 0;
    while s.len() < size {
        s.push_str(blocks[i % blocks.len()]);
        i += 1;
    }
    s
}

/// Code-like text with the words that wake the gate's generic rules, and no secrets.
fn code_like(size: usize) -> String {
    let blocks = [
        "fn load_config(path: &Path) -> Result<Config, Error> {\n    let text = fs::read_to_string(path)?;\n    let token = env::var(\"API_TOKEN\").ok();\n    Ok(Config { text, token })\n}\n",
        "def get_secret(name):\n    \"\"\"Return the secret named `name` from the vault.\"\"\"\n    return client.secrets.read(name)[\"data\"]\n\n",
        "{\"name\": \"demo\", \"version\": \"1.2.3\", \"integrity\": \"sha512-Kq5sNclPz7QV2+lfQIuN4qsmBRJjtK8mNKmYBh8FHPkDlGRmsqWKt/aa7G3ZAw5jmgLCRfgFJXvlSw98vPVk0Q==\"}\n",
        "database:\n  host: localhost\n  port: 5432\n  password: ${DB_PASSWORD}\n  pool_size: 10\n",
        "const apiKey = process.env.OPENAI_API_KEY; // never hard-code keys\nconst headers = { Authorization: `Bearer ${apiKey}` };\n",
        "// The request id is a UUID such as 3f2b9c1e-8a4d-4c7b-9e2f-1a2b3c4d5e6f and the commit 9fceb02d0ae598e95dc970b74767f19372d61af8.\n",
        "for (i, item) in items.iter().enumerate() {\n    if item.key == key { return Some(i); }\n}\n",
    ];
    let mut s = String::with_capacity(size + 512);
    let mut i = 0;
    while s.len() < size {
        s.push_str(blocks[i % blocks.len()]);
        i += 1;
    }
    s
}
