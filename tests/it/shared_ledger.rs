//! The ledger on PostgreSQL across machines: two hosts of sixteen server
//! processes share one count; another host's dead processes free their
//! leases at expiry; a database that goes away fails closed and recovers;
//! the local fallback says what it is; the password never shows.

use std::time::Duration;

use serde_json::json;

use crate::support::pg::Pg;
use crate::support::{Behavior, McpClient, MockUpstream, Sandbox, provider, status_json};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A sandbox (its own state dir) on `url`, as host `host`.
fn host(url: &str, config: &str) -> Sandbox {
    let mut sb = Sandbox::new();
    sb.ledger = Some(url.to_owned());
    sb.config(config);
    sb
}

#[test]
fn two_hosts_of_sixteen_processes_share_one_count() {
    let (a, b) = (
        MockUpstream::start_blocking("alpha"),
        MockUpstream::start_blocking("beta"),
    );
    a.enforce(12, Duration::from_secs(60));
    b.enforce(8, Duration::from_secs(60));
    let config = format!(
        "{}{}",
        provider("alpha", &a, "", "limits = { rpm = 12 }"),
        provider("beta", &b, "", "limits = { rpm = 8 }")
    );
    let url = Pg::database();
    let hosts = [host(&url, &config), host(&url, &config)];
    let mut threads = Vec::new();
    for (h, sb) in hosts.iter().enumerate() {
        for i in 0..16 {
            let mut cmd = sb.cmd();
            cmd.env("FREEPOOL_HOST_ID", format!("host-{h}"));
            threads.push(std::thread::spawn(move || {
                let mut c = McpClient::spawn(cmd);
                c.initialize();
                (0..2)
                    .filter(|j| {
                        let (err, _) =
                            c.call("delegate", json!({"prompt": format!("h{h} p{i} call {j}")}));
                        !err
                    })
                    .count()
            }));
        }
    }
    let served: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(a.overshoots() + b.overshoots(), 0, "no upstream 429");
    assert_eq!(
        (a.count(), b.count()),
        (12, 8),
        "every free slot was used once"
    );
    assert_eq!(served, 20);
    // Both hosts' status read the same count.
    for sb in &hosts {
        let s = status_json(sb);
        let used: u64 = s["usage"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["limits"][0]["used"].as_u64().unwrap())
            .sum();
        assert_eq!(used, 20, "{s}");
    }
}

#[test]
fn another_hosts_dead_processes_free_their_leases_at_expiry() {
    let mock = MockUpstream::start_blocking("alpha");
    mock.default(Behavior::Hang);
    let url = Pg::database();
    // A lease outlives its call's timeout by a minute: 2 s + 60 s here.
    let config = provider("alpha", &mock, "", "").replace("timeout_secs = 5", "timeout_secs = 2");
    let (here, there) = (host(&url, &config), host(&url, &config));
    let victims: Vec<_> = (0..3)
        .map(|i| {
            let mut c = there.cmd();
            c.env("FREEPOOL_HOST_ID", "host-there")
                .args(["delegate", &format!("job {i}")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    crate::support::wait_until(|| mock.count() >= 3);
    assert_eq!(
        mock.count(),
        3,
        "each holds a lease, waiting on the provider"
    );
    for mut v in victims {
        // SAFETY: SIGKILL to a child this test spawned.
        unsafe { libc::kill(v.id() as i32, libc::SIGKILL) };
        v.wait().unwrap();
    }
    let status = |sb: &Sandbox| {
        let mut c = sb.cmd();
        c.env("FREEPOOL_HOST_ID", "host-here")
            .args(["status", "--json"]);
        let out = c.output().unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    // Here, another host's pids cannot be probed: its leases stay in flight...
    let s = status(&here);
    assert_eq!(s["in_flight"], 3, "{s}");
    std::thread::sleep(Duration::from_secs(63));
    // ...until they expire, and what they reserved still counts as use.
    let s = status(&here);
    assert_eq!(s["in_flight"], 0, "{s}");
    let used = s["usage"][0]["limits"][0]["used"].as_u64().unwrap();
    assert_eq!(used, 3, "{s}");
}

#[test]
fn a_database_that_goes_away_fails_closed_and_recovers() {
    let pg = Pg::private();
    let url = pg.new_database();
    let mock = MockUpstream::start_blocking("alpha");
    let sb = host(&url, &provider("alpha", &mock, "", ""));
    let mut c = McpClient::spawn(sb.cmd());
    c.initialize();
    let (err, _) = c.call("delegate", json!({"prompt": "before"}));
    assert!(!err);
    pg.stop();
    let (err, t) = c.call("delegate", json!({"prompt": "during"}));
    assert!(err, "{t}");
    assert!(
        t.contains("cannot be reached, so no request is sent"),
        "{t}"
    );
    assert!(!t.contains("password"), "{t}");
    assert_eq!(mock.count(), 1, "nothing went out uncounted");
    let out = sb.cmd().args(["delegate", "cli during"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot be reached"),
        "{}",
        text(&out.stderr)
    );
    pg.restart();
    let (err, t) = c.call("delegate", json!({"prompt": "after"}));
    assert!(!err, "the same server recovers: {t}");
    assert_eq!(mock.count(), 2);
}

#[test]
fn the_local_fallback_says_what_it_is_and_the_password_never_shows() {
    let pg = Pg::private();
    let url = pg
        .new_database()
        .replace("freepool@", "freepool:hunter2-secret@");
    let mock = MockUpstream::start_blocking("alpha");
    let sb = host(&url, &provider("alpha", &mock, "", ""));
    let out = sb.cmd().arg("status").output().unwrap();
    let o = text(&out.stdout);
    assert!(o.contains("(PostgreSQL, shared)"), "{o}");
    assert!(o.contains("postgres://freepool@127.0.0.1"), "{o}");
    assert!(!o.contains("hunter2"), "{o}");
    pg.stop();
    // Without the fallback: refused, and the URL shown without its password.
    let out = sb.cmd().args(["delegate", "x"]).output().unwrap();
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
    // With it: this machine's ledger, and every page says so.
    sb.config(&format!(
        "ledger_fallback = \"local\"\n{}",
        provider("alpha", &mock, "", "limits = { rpm = 4 }")
    ));
    // Each limit counts at half here: 2 of the 4 a minute.
    let outs: Vec<_> = (0..3)
        .map(|i| {
            sb.cmd()
                .args(["delegate", &format!("x{i}")])
                .output()
                .unwrap()
        })
        .collect();
    let served = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(served, 2, "{}", text(&outs[2].stderr));
    assert!(outs.iter().all(|o| !text(&o.stderr).contains("hunter2")));
    let out = sb.cmd().arg("status").output().unwrap();
    let o = text(&out.stdout);
    assert!(o.contains("standing in for the shared ledger"), "{o}");
    assert!(!o.contains("hunter2"), "{o}");
}

/// `ledger migrate --to` carries this machine's live windows over: the
/// shared ledger goes on counting from where the file was.
#[test]
fn migrating_carries_the_live_windows_over() {
    let mock = MockUpstream::start_blocking("alpha");
    mock.enforce(5, Duration::from_secs(60));
    let mut sb = Sandbox::new();
    sb.config(&provider("alpha", &mock, "", "limits = { rpm = 5 }"));
    for i in 0..3 {
        let out = sb
            .cmd()
            .args(["delegate", &format!("local {i}")])
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let url = Pg::database();
    let out = sb
        .cmd()
        .args(["ledger", "migrate", "--to", &url])
        .output()
        .unwrap();
    let o = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(o.contains("copied") && o.contains("ledger = "), "{o}");
    sb.ledger = Some(url);
    let s = status_json(&sb);
    assert_eq!(s["usage"][0]["limits"][0]["used"], 3, "{s}");
    let served = (0..4)
        .filter(|i| {
            sb.cmd()
                .args(["delegate", &format!("shared {i}")])
                .output()
                .unwrap()
                .status
                .success()
        })
        .count();
    assert_eq!(served, 2, "the shared ledger counts on from 3 of 5");
    assert_eq!(mock.overshoots(), 0);
}

/// `sslmode=require` goes through rustls: a server without TLS is refused,
/// not silently used in the clear.
#[test]
fn require_means_tls() {
    let url = format!("{}?sslmode=require", Pg::database());
    let mock = MockUpstream::start_blocking("alpha");
    let sb = host(&url, &provider("alpha", &mock, "", ""));
    let out = sb.cmd().args(["delegate", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot be reached"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(mock.count(), 0);
    let plain = url.replace("sslmode=require", "sslmode=prefer");
    let sb = host(&plain, &provider("alpha", &mock, "", ""));
    let out = sb.cmd().args(["delegate", "x"]).output().unwrap();
    assert!(
        out.status.success(),
        "prefer falls back: {}",
        text(&out.stderr)
    );
}
