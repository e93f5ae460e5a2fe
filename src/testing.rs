//! Hooks for the benchmark suite, which runs the ledger the way sessions do.
//! Not an API: nothing here is stable.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::config;
use crate::quota::Need;
use crate::store::sqlite::SqliteStore;
use crate::store::{AttemptRecord, Slot};

/// The provider the benchmark leases on: limits on every window and a pool,
/// high enough never to refuse, so each lease runs the whole check.
const CATALOG: &str = r#"
[providers.bench]
base_url = "https://bench.example/v1"
key_env = ["BENCH_KEY"]
day_reset = "America/Los_Angeles"
[providers.bench.pools.acct]
limits = { rpd = 1000000000 }
[providers.bench.models.m]
context = 32000
limits = { rpm = 1000000000, rph = 1000000000, rpd = 1000000000, tpm = 1000000000000, tpd = 1000000000000, tpmo = 1000000000000 }
"#;

/// The catalog, from a file of this process's own (workers run side by side).
fn catalog(dir: &Path) -> Result<Arc<config::Catalog>, String> {
    let path = dir.join(format!("bench-catalog-{}.toml", std::process::id()));
    std::fs::write(&path, CATALOG).map_err(|e| e.to_string())?;
    let mut cat = config::load_from(Some(&path), &|_| Some("bench-key".into()));
    let _ = std::fs::remove_file(&path);
    cat.providers.retain(|p| p.id == "bench");
    if cat.providers.is_empty() {
        return Err(format!(
            "the bench catalog did not load: {:?}",
            cat.problems
        ));
    }
    Ok(Arc::new(cat))
}

/// What a served call commits: a request of 320 tokens.
fn served() -> AttemptRecord {
    AttemptRecord {
        reached: true,
        need: Need::flat(320),
        ok: true,
        calibration: None,
        bench: None,
        learned: None,
        gone: None,
    }
}

/// Writes `events` past requests spread over the last 30 days into the
/// ledger in `dir` (the state a month of use leaves behind).
pub fn seed_ledger(dir: &Path, events: u64) -> Result<(), String> {
    let now = chrono::Utc::now().timestamp_millis();
    let store = SqliteStore::open(dir, now).map_err(|e| e.to_string())?;
    let fp = config::ApiKey::new("bench-key").fingerprint();
    store
        .seed_history("bench", "m", &fp, events, now - 30 * 86_400_000, now)
        .map_err(|e| e.to_string())
}

/// One session: `calls` rounds of lease, an upstream call of `upstream`
/// (slept), then commit, on the ledger in `dir`, as a session's calls go.
/// Returns each lease's latency in microseconds (the check-and-reserve
/// transaction, waiting for other sessions included).
pub fn lease_worker(
    dir: &Path,
    calls: usize,
    upstream: std::time::Duration,
) -> Result<Vec<u64>, String> {
    let cat = catalog(dir)?;
    let now = || chrono::Utc::now().timestamp_millis();
    let store = SqliteStore::open(dir, now()).map_err(|e| e.to_string())?;
    let fp = config::ApiKey::new("bench-key").fingerprint();
    let slot = Slot {
        catalog: cat,
        provider: 0,
        model: 0,
        key_fp: fp,
    };
    let mut latencies = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t0 = Instant::now();
        let lease = store
            .lease_blocking(&slot, Need::flat(300), now())
            .map_err(|e| crate::dispatch::texts::full(&e))?
            .map_err(|b| format!("refused: {b:?}"))?;
        latencies.push(t0.elapsed().as_micros() as u64);
        std::thread::sleep(upstream);
        store
            .commit_blocking(&lease, &served(), now())
            .map_err(|e| crate::dispatch::texts::full(&e))?;
    }
    Ok(latencies)
}

/// `lease_worker` on the PostgreSQL ledger at `url`.
pub fn lease_worker_pg(
    url: &str,
    calls: usize,
    upstream: std::time::Duration,
) -> Result<Vec<u64>, String> {
    use crate::store::Store as _;
    let dir = std::env::temp_dir();
    let cat = catalog(&dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let store = crate::store::postgres::PostgresStore::open(url)
            .await
            .map_err(|e| crate::dispatch::texts::full(&e))?;
        let fp = config::ApiKey::new("bench-key").fingerprint();
        let slot = Slot {
            catalog: cat,
            provider: 0,
            model: 0,
            key_fp: fp,
        };
        let mut latencies = Vec::with_capacity(calls);
        for _ in 0..calls {
            let t0 = Instant::now();
            let lease = store
                .lease(slot.clone(), Need::flat(300), 0)
                .await
                .map_err(|e| crate::dispatch::texts::full(&e))?
                .map_err(|b| format!("refused: {b:?}"))?;
            latencies.push(t0.elapsed().as_micros() as u64);
            tokio::time::sleep(upstream).await;
            store
                .commit(lease, served(), 0)
                .await
                .map_err(|e| crate::dispatch::texts::full(&e))?;
        }
        Ok(latencies)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_worker_leases_on_a_seeded_ledger() {
        let dir = tempfile::tempdir().unwrap();
        super::seed_ledger(dir.path(), 1000).unwrap();
        let lat = super::lease_worker(dir.path(), 5, std::time::Duration::ZERO).unwrap();
        assert_eq!(lat.len(), 5);
    }
}
