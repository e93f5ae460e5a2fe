//! Runs mock OpenAI-compatible providers on 127.0.0.1 until stdin closes.
//!
//! `cargo run --example mock_upstream -- alpha beta` prints one JSON line,
//! `{"alpha": "http://127.0.0.1:PORT/v1", ...}`, then serves. A name ending in
//! `-429` answers every request with 429 (for failover checks). Used by the
//! Python SDK check in CI and handy for trying the server by hand.

#[path = "../tests/it/support/mock.rs"]
mod mock;

use std::io::Read;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let names: Vec<String> = std::env::args().skip(1).collect();
    let names = if names.is_empty() {
        vec!["alpha".to_owned()]
    } else {
        names
    };
    let mut urls = serde_json::Map::new();
    let mut mocks = Vec::new();
    for name in &names {
        let m = mock::MockUpstream::start(name).await;
        if name.ends_with("-429") {
            m.default(mock::Behavior::RateLimited {
                headers: vec![("retry-after".into(), "30".into())],
                body: "{\"error\":{\"message\":\"rate limited\"}}".into(),
            });
        }
        urls.insert(name.clone(), serde_json::Value::String(m.base_url()));
        mocks.push(m);
    }
    // stdout carries the one line of addresses; the rest goes to stderr.
    #[allow(clippy::print_stdout)]
    {
        println!("{}", serde_json::Value::Object(urls));
    }
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await
    .ok();
    for m in &mocks {
        eprintln!("mock {}: {} request(s)", m.base_url(), m.count());
    }
}
