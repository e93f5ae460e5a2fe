//! Several processes on one state dir, and processes that die mid-request.

use std::process::{Child, Stdio};
use std::time::Duration;

use crate::support::{Backend, Behavior, MockUpstream, Sandbox, provider, status_json};

/// Each test body runs twice: on the SQLite file and on PostgreSQL.
macro_rules! on_both_ledgers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                super::$name(super::Backend::Sqlite);
            }
            #[test]
            fn postgres() {
                super::$name(super::Backend::Postgres);
            }
        }
    )*};
}

on_both_ledgers!(
    many_processes_never_exceed_a_shared_limit,
    a_pool_shared_by_two_models_is_counted_once_across_processes,
    kill_9_mid_request_leaves_a_consistent_ledger,
    kill_9_during_a_fanout_then_the_next_launch_works,
    eight_servers_on_one_state_dir_share_the_cap,
);

/// A mock that enforces `max` requests a minute and answers after `latency`,
/// with a sandbox whose catalog gives it the same limit.
fn limited(max: u64, latency: Duration, backend: Backend) -> (MockUpstream, Sandbox) {
    let mock = MockUpstream::start_blocking("alpha");
    mock.enforce(max, Duration::from_secs(60));
    mock.default(Behavior::Ok {
        text: "ok {prompt}".into(),
        latency,
    });
    let sb = Sandbox::new().on(backend);
    sb.config(&provider(
        "alpha",
        &mock,
        "",
        &format!("limits = {{ rpm = {max} }}"),
    ));
    (mock, sb)
}

fn spawn_delegate(sb: &Sandbox, prompt: &str) -> Child {
    sb.cmd()
        .args(["delegate", prompt])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn many_processes_never_exceed_a_shared_limit(backend: Backend) {
    let (mock, sb) = limited(5, Duration::from_millis(100), backend);
    let children: Vec<Child> = (0..12)
        .map(|i| spawn_delegate(&sb, &format!("job {i}")))
        .collect();
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let ok = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(ok, 5, "exactly the limit is served");
    for o in outs.iter().filter(|o| !o.status.success()) {
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            e.contains("rpm of m1 used up (5/5)") && e.contains("room again"),
            "{e}"
        );
    }
    assert_eq!(
        mock.count(),
        5,
        "the provider saw only what the limit allows"
    );
    assert_eq!(mock.overshoots(), 0, "no 429 caused by our overshoot");
    // status shows the ledger's truth.
    let s = status_json(&sb);
    let usage = s["usage"].as_array().unwrap();
    let m1 = usage.iter().find(|u| u["scope"] == "alpha/m1").unwrap();
    assert_eq!(m1["limits"][0]["used"], 5);
    assert_eq!(m1["limits"][0]["max"], 5);
    assert_eq!(s["in_flight"], 0);
}

fn a_pool_shared_by_two_models_is_counted_once_across_processes(backend: Backend) {
    let mock = MockUpstream::start_blocking("alpha");
    mock.enforce(4, Duration::from_secs(60));
    let sb = Sandbox::new().on(backend);
    let mut cfg = provider(
        "alpha",
        &mock,
        "[providers.alpha.pools.acct]\nlimits = { rpm = 4 }",
        "",
    );
    cfg.push_str("[providers.alpha.models.m2]\nfamily = \"fam\"\ncontext = 32000\ntier = 2\n");
    sb.config(&cfg);
    // Half the processes ask for each model by name: the pool is what limits them.
    let children: Vec<Child> = (0..10)
        .map(|i| {
            let model = format!("alpha/m{}", 1 + i % 2);
            sb.cmd()
                .args(["delegate", "job", "--model", &model])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let ok = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(ok, 4);
    let refused = outs.iter().find(|o| !o.status.success()).unwrap();
    let e = String::from_utf8_lossy(&refused.stderr);
    assert!(e.contains("rpm of pool acct used up (4/4)"), "{e}");
    assert_eq!(mock.overshoots(), 0);
}

fn kill_9_mid_request_leaves_a_consistent_ledger(backend: Backend) {
    let mock = MockUpstream::start_blocking("alpha");
    mock.script([Behavior::Hang]);
    let sb = Sandbox::new().on(backend);
    sb.config(&provider("alpha", &mock, "max_concurrency = 1", ""));
    let mut victim = spawn_delegate(&sb, "hang");
    crate::support::wait_until(|| mock.count() > 0);
    assert_eq!(mock.count(), 1);
    unsafe {
        libc::kill(victim.id() as i32, libc::SIGKILL);
    }
    victim.wait().unwrap();
    // The dead process's lease is reaped; the provider (concurrency 1) serves again.
    let out = sb
        .cmd()
        .args(["delegate", "after the crash"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = status_json(&sb);
    assert_eq!(s["in_flight"], 0);
}

fn kill_9_during_a_fanout_then_the_next_launch_works(backend: Backend) {
    let mock = MockUpstream::start_blocking("alpha");
    mock.default(Behavior::Ok {
        text: "slow {prompt}".into(),
        latency: Duration::from_secs(30),
    });
    let sb = Sandbox::new().on(backend);
    sb.config(&provider(
        "alpha",
        &mock,
        "max_concurrency = 4",
        "limits = { rpm = 100 }",
    ));
    let mut c = sb.mcp();
    c.initialize();
    let tasks: Vec<_> = (0..8)
        .map(|i| serde_json::json!({"prompt": format!("task {i}")}))
        .collect();
    c.send(
        "tools/call",
        serde_json::json!({"name": "fanout", "arguments": {"tasks": tasks, "concurrency": 4}}),
    );
    crate::support::wait_until(|| mock.count() >= 4);
    assert_eq!(status_json(&sb)["in_flight"], 4);
    unsafe {
        libc::kill(c.child.id() as i32, libc::SIGKILL);
    }
    let _ = c.child.wait();
    let s = status_json(&sb);
    assert_eq!(
        s["in_flight"], 0,
        "the dead server's leases are not in flight"
    );
    let m1 = s["usage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["scope"] == "alpha/m1")
        .unwrap()
        .clone();
    assert_eq!(
        m1["limits"][0]["used"], 4,
        "but the four requests it sent are counted: {m1}"
    );
    // A new launch has the provider's whole concurrency cap again.
    mock.default(Behavior::ok("fresh {prompt}"));
    let mut c2 = sb.mcp();
    c2.initialize();
    let tasks: Vec<_> = (0..4)
        .map(|i| serde_json::json!({"prompt": format!("again {i}")}))
        .collect();
    let (err, text) = c2.call(
        "fanout",
        serde_json::json!({"tasks": tasks, "concurrency": 4}),
    );
    assert!(
        !err && text.starts_with("fanout: 4 of 4 tasks ok"),
        "{text}"
    );
}

fn eight_servers_on_one_state_dir_share_the_cap(backend: Backend) {
    let (mock, sb) = limited(6, Duration::from_millis(50), backend);
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let cmd = sb.cmd();
            std::thread::spawn(move || {
                let mut c = crate::support::McpClient::spawn(cmd);
                c.initialize();
                let (a, _) = c.call(
                    "delegate",
                    serde_json::json!({"prompt": format!("server {i} first")}),
                );
                let (b, _) = c.call(
                    "delegate",
                    serde_json::json!({"prompt": format!("server {i} second")}),
                );
                c.assert_pure();
                [a, b].iter().filter(|e| !**e).count()
            })
        })
        .collect();
    let served: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(served, 6);
    assert_eq!(mock.count(), 6);
    assert_eq!(mock.overshoots(), 0);
}
