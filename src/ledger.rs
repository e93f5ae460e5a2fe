//! The usage ledger: what every process on this machine has spent, is spending, and may not touch.
//!
//! One SQLite file in the state dir, shared by every freepool-mcp process
//! (one per Claude Code session). It holds
//! - `events`: every attempt that reached a provider, with requests and tokens
//!   (failed attempts too: providers count them);
//! - `leases`: attempts in flight, reserved before sending so that two
//!   processes cannot both take the last free slot;
//! - `cooldowns`: keys, models and providers benched, with the source of the
//!   bench (stated by the provider, or our guess);
//! - `learned`: limits lowered from unambiguous provider messages;
//! - `calibration`: tokens per character seen per provider, for estimates.
//!
//! Concurrency: WAL mode so readers never block the writer, `busy_timeout` so
//! writers queue instead of failing, and `BEGIN IMMEDIATE` for the lease, so
//! the check of every window and the insert of the lease are one atomic step
//! across processes. Leases of crashed processes are turned (dead pid, or
//! expired) into events: the provider most likely counted those requests.
//! Each call runs on the blocking pool: SQLite may wait on a lock.
//!
//! Invariant: no key is stored here, only its fingerprint. The quota
//! arithmetic itself (`UsageSnapshot::check`) is pure and shared with `router`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use rusqlite::{Connection, OptionalExtension, params};

use crate::config::{Axis, Limit, Model, Provider, Reset, Window, Zone};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The current time. Every function that depends on time takes it as an
/// argument, so tests set the clock by passing their own `now`.
pub fn now_ms() -> Millis {
    Utc::now().timestamp_millis()
}

/// Events older than this are pruned: the longest window is a month.
const RETENTION_MS: Millis = 32 * 86_400_000;

/// Ledger errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state dir or file cannot be written.
    #[error(
        "the usage ledger at {path} cannot be opened for writing ({reason}); set FREEPOOL_STATE_DIR to a writable directory"
    )]
    Unwritable {
        /// The file.
        path: PathBuf,
        /// Why, in a few words.
        reason: String,
    },
    /// SQLite failed.
    #[error("usage ledger error")]
    Sql(#[from] rusqlite::Error),
}

/// Start of the window that contains `now`.
pub fn window_start(window: Window, reset: Reset, now: Millis) -> Millis {
    match (window, reset) {
        (Window::Minute, _) => now - 60_000,
        (Window::Hour, _) => now - 3_600_000,
        (Window::Day, Reset::Rolling) => now - 86_400_000,
        (Window::Month, Reset::Rolling) => now - 30 * 86_400_000,
        (Window::Day | Window::Month, Reset::Midnight(zone)) => {
            fixed_start(window, zone, now).unwrap_or(now - window_len(window))
        }
    }
}

/// Midnight starting the day (or the 1st of the month) containing `now`, in `zone`.
/// jiff resolves a midnight that falls in a DST gap to the first valid instant.
fn fixed_start(window: Window, zone: Zone, now: Millis) -> Option<Millis> {
    let here = jiff::Timestamp::from_millisecond(now)
        .ok()?
        .to_zoned_datetime(zone.tz());
    let day = match window {
        Window::Month => here.first_of_month().ok()?,
        _ => here,
    };
    Some(day.start_of_day().ok()?.timestamp().as_millisecond())
}

/// When a fixed window that contains `now` ends (`None` for rolling windows).
pub fn next_reset(window: Window, reset: Reset, now: Millis) -> Option<Millis> {
    let Reset::Midnight(zone) = reset else {
        return None;
    };
    let start = jiff::Timestamp::from_millisecond(fixed_start(window, zone, now)?)
        .ok()?
        .to_zoned_datetime(zone.tz());
    let span = match window {
        Window::Day => jiff::Span::new().days(1),
        Window::Month => jiff::Span::new().months(1),
        _ => return None,
    };
    let next = start.checked_add(span).ok()?.start_of_day().ok()?;
    Some(next.timestamp().as_millisecond())
}

fn window_len(window: Window) -> Millis {
    match window {
        Window::Minute => 60_000,
        Window::Hour => 3_600_000,
        Window::Day => 86_400_000,
        Window::Month => 30 * 86_400_000,
    }
}

const WINDOWS: [Window; 4] = [Window::Minute, Window::Hour, Window::Day, Window::Month];

fn widx(w: Window) -> usize {
    match w {
        Window::Minute => 0,
        Window::Hour => 1,
        Window::Day => 2,
        Window::Month => 3,
    }
}

/// Use by one (model, key) in each window of its provider, leases included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests per window (minute, hour, day, month).
    pub requests: [u64; 4],
    /// Tokens per window.
    pub tokens: [u64; 4],
    /// Oldest event in each window (for "when does it free up").
    pub oldest: [Option<Millis>; 4],
    /// Leases in flight (already inside `requests`/`tokens`).
    pub in_flight: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        for i in 0..4 {
            self.requests[i] += o.requests[i];
            self.tokens[i] += o.tokens[i];
            self.oldest[i] = match (self.oldest[i], o.oldest[i]) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        self.in_flight += o.in_flight;
    }
}

/// What is benched.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BenchScope {
    /// Provider id.
    pub provider: String,
    /// Model id, or `*` for all.
    pub model: String,
    /// Key fingerprint, or `*` for all.
    pub key_fp: String,
}

impl BenchScope {
    /// The whole provider.
    pub fn provider(p: &str) -> Self {
        BenchScope {
            provider: p.into(),
            model: "*".into(),
            key_fp: "*".into(),
        }
    }
    /// One model, any key.
    pub fn model(p: &str, m: &str) -> Self {
        BenchScope {
            provider: p.into(),
            model: m.into(),
            key_fp: "*".into(),
        }
    }
    /// One key, any model.
    pub fn key(p: &str, k: &str) -> Self {
        BenchScope {
            provider: p.into(),
            model: "*".into(),
            key_fp: k.into(),
        }
    }
    /// One model with one key.
    pub fn model_key(p: &str, m: &str, k: &str) -> Self {
        BenchScope {
            provider: p.into(),
            model: m.into(),
            key_fp: k.into(),
        }
    }
    /// Whether this bench covers a (provider, model, key) candidate.
    pub fn covers(&self, p: &str, m: &str, k: &str) -> bool {
        self.provider == p
            && (self.model == "*" || self.model == m)
            && (self.key_fp == "*" || self.key_fp == k)
    }
}

/// A bench in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Cooldown {
    /// What it covers.
    pub scope: BenchScope,
    /// When it ends.
    pub until: Millis,
    /// `true` when the provider stated it.
    pub stated: bool,
    /// Why (a failure label, never provider text with secrets).
    pub reason: String,
    /// Consecutive failures behind it.
    pub strikes: u32,
}

/// Everything the router needs to know about usage, read in one go.
#[derive(Debug, Clone, Default)]
pub struct UsageSnapshot {
    /// When it was taken.
    pub now: Millis,
    /// Use per (provider, model, key fingerprint).
    pub usage: HashMap<(String, String, String), Counts>,
    /// Benches in force.
    pub cooldowns: Vec<Cooldown>,
    /// Limits learned from providers: (provider, model, limit key) -> max.
    pub learned: HashMap<(String, String, String), u64>,
    /// Tokens per character seen per provider.
    pub tokens_per_char: HashMap<String, f64>,
    /// Failures in the last hour per (provider, model), for ranking.
    pub recent_failures: HashMap<(String, String), u32>,
}

/// Why a candidate cannot take a request right now.
#[derive(Debug, Clone, PartialEq)]
pub enum Blocked {
    /// A bench is in force.
    Benched {
        /// Why.
        reason: String,
        /// Until when.
        until: Millis,
    },
    /// A limit is used up (or would be by this request).
    Full {
        /// `rpd`, `tpm`, ... and whose (model or pool id).
        limit: String,
        /// Used in the window.
        used: u64,
        /// The limit.
        max: u64,
        /// Earliest time it has room again, when known.
        frees_at: Option<Millis>,
    },
    /// The provider's concurrency cap is taken by requests in flight.
    Busy {
        /// In flight now.
        in_flight: u64,
    },
}

impl Blocked {
    /// When this candidate may work again, if known.
    pub fn frees_at(&self) -> Option<Millis> {
        match self {
            Blocked::Benched { until, .. } => Some(*until),
            Blocked::Full { frees_at, .. } => *frees_at,
            Blocked::Busy { .. } => None,
        }
    }
}

/// Headroom of a candidate: the smallest fraction left over all its limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Headroom {
    /// 0.0 (nothing left) to 1.0 (untouched); 1.0 when there is no limit.
    pub fraction: f64,
    /// Requests left today: the tightest day (or month) request limit.
    pub requests_left_today: Option<u64>,
    /// Tokens left today, likewise.
    pub tokens_left_today: Option<u64>,
}

impl UsageSnapshot {
    /// Use of a (model, key) pair, keys summed when they share quota.
    fn model_use(&self, provider: &Provider, model: &str, key_fp: &str) -> Counts {
        let mut c = Counts::default();
        for ((p, m, k), counts) in &self.usage {
            if p == &provider.id && m == model && (!provider.keys_stack || k == key_fp) {
                c.add(counts);
            }
        }
        c
    }

    fn pool_use(&self, provider: &Provider, pool: &crate::config::Pool, key_fp: &str) -> Counts {
        let mut c = Counts::default();
        for ((p, m, k), counts) in &self.usage {
            if p == &provider.id && pool.covers(m) && (!provider.keys_stack || k == key_fp) {
                c.add(counts);
            }
        }
        c
    }

    /// The bench covering a candidate, if any, the latest-ending one.
    pub fn bench_of(&self, provider: &str, model: &str, key_fp: &str) -> Option<&Cooldown> {
        self.cooldowns
            .iter()
            .filter(|c| c.until > self.now && c.scope.covers(provider, model, key_fp))
            .max_by_key(|c| c.until)
    }

    /// The effective value of a limit: the catalog's, or lower if learned.
    fn effective(&self, provider: &str, model: &str, limit: &Limit) -> u64 {
        self.learned
            .get(&(
                provider.to_owned(),
                model.to_owned(),
                limit.key().to_owned(),
            ))
            .map_or(limit.max, |l| (*l).min(limit.max))
    }

    /// Whether a request of `tokens` (estimated) fits every limit of the
    /// candidate right now: the model's own, its pools', and the provider's
    /// concurrency cap. This is the one quota rule; the router ranks with it
    /// and the ledger enforces it inside the lease transaction.
    pub fn check(
        &self,
        provider: &Provider,
        model: &Model,
        key_fp: &str,
        tokens: u64,
    ) -> Result<Headroom, Blocked> {
        if let Some(c) = self.bench_of(&provider.id, &model.id, key_fp) {
            return Err(Blocked::Benched {
                reason: c.reason.clone(),
                until: c.until,
            });
        }
        if let Some(cap) = provider.max_concurrency {
            let in_flight: u64 = self
                .usage
                .iter()
                .filter(|((p, _, _), _)| p == &provider.id)
                .map(|(_, c)| c.in_flight)
                .sum();
            if in_flight >= cap as u64 {
                return Err(Blocked::Busy { in_flight });
            }
        }
        let mut head = Headroom {
            fraction: 1.0,
            requests_left_today: None,
            tokens_left_today: None,
        };
        let model_counts = self.model_use(provider, &model.id, key_fp);
        let mut scopes: Vec<(String, &[Limit], Counts)> =
            vec![(model.id.clone(), &model.limits, model_counts)];
        for pool in provider.pools.iter().filter(|p| p.covers(&model.id)) {
            scopes.push((
                format!("pool {}", pool.id),
                &pool.limits,
                self.pool_use(provider, pool, key_fp),
            ));
        }
        for (whose, limits, counts) in scopes {
            for limit in limits {
                let max = self.effective(&provider.id, &model.id, limit);
                let i = widx(limit.window);
                let (used, need) = match limit.axis {
                    Axis::Requests => (counts.requests[i], 1),
                    Axis::Tokens => (counts.tokens[i], tokens),
                };
                if used + need > max {
                    let frees_at = next_reset(limit.window, limit.reset, self.now).or_else(|| {
                        // Rolling: the oldest use in the window ages out first.
                        counts.oldest[i]
                            .map(|t| t + window_len(limit.window))
                            .or(Some(self.now + 1000))
                    });
                    return Err(Blocked::Full {
                        limit: format!("{} of {whose}", limit.key()),
                        used,
                        max,
                        frees_at,
                    });
                }
                let left = max - used;
                head.fraction = head.fraction.min(left as f64 / max.max(1) as f64);
                // What is left "today" is bounded by the day's and the month's remainder;
                // minute and hour limits are rates, not a daily allowance.
                if limit.window >= Window::Day {
                    let slot = match limit.axis {
                        Axis::Requests => &mut head.requests_left_today,
                        Axis::Tokens => &mut head.tokens_left_today,
                    };
                    *slot = Some(slot.map_or(left, |s: u64| s.min(left)));
                }
            }
        }
        Ok(head)
    }

    /// Conservative token estimate for a text sent to `provider`.
    pub fn estimate_tokens(&self, provider: &str, chars: usize) -> u64 {
        // Default: one token per 3 characters (code runs denser than prose);
        // a provider's observed ratio, plus 15%, when higher.
        let seen = self.tokens_per_char.get(provider).copied().unwrap_or(0.0) * 1.15;
        let ratio = seen.max(1.0 / 3.0);
        (chars as f64 * ratio).ceil() as u64 + 8
    }
}

/// A lease in flight: dropping it without `commit` releases it.
#[derive(Debug)]
pub struct Lease {
    id: i64,
    ledger: Ledger,
    provider: String,
    model: String,
    key_fp: String,
    committed: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.committed {
            // Cancelled mid-call: free the slot now rather than at expiry, and
            // count the request (it most likely reached the provider). A short
            // synchronous write is fine here.
            self.ledger.release(self.id);
        }
    }
}

/// What an attempt came to, for `Ledger::commit`.
#[derive(Clone)]
pub struct AttemptRecord {
    /// Whether the request reached the provider (and so counts against quota).
    pub reached: bool,
    /// Tokens to count (reported usage, else the estimate).
    pub tokens: u64,
    /// `ok` or a failure label.
    pub outcome: String,
    /// On success: prompt characters and reported prompt tokens, for calibration.
    pub calibration: Option<(usize, u64)>,
    /// A bench to set: the scope, a reason, and how long given prior strikes.
    pub bench: Option<(BenchScope, String, BenchFn)>,
    /// A limit learned from the answer: (limit key, value).
    pub learned: Option<(&'static str, u64)>,
}

/// Computes a bench from the number of prior strikes: (length, stated by the provider).
pub type BenchFn = Arc<dyn Fn(u32) -> Option<(Duration, bool)> + Send + Sync>;

/// Handle to the ledger file; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    commits: Arc<std::sync::atomic::AtomicU64>,
    /// Warning to surface (the store was corrupt and moved aside).
    pub warning: Option<String>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("path", &self.path).finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    key_fp TEXT NOT NULL,
    requests INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    outcome TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_provider ON events(provider, ts);
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    key_fp TEXT NOT NULL,
    tokens INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cooldowns (
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    key_fp TEXT NOT NULL,
    until INTEGER NOT NULL,
    stated INTEGER NOT NULL,
    reason TEXT NOT NULL,
    strikes INTEGER NOT NULL,
    set_at INTEGER NOT NULL,
    PRIMARY KEY (provider, model, key_fp)
);
CREATE TABLE IF NOT EXISTS learned (
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    limit_key TEXT NOT NULL,
    max INTEGER NOT NULL,
    PRIMARY KEY (provider, model, limit_key)
);
CREATE TABLE IF NOT EXISTS calibration (
    provider TEXT PRIMARY KEY,
    tokens_per_char REAL NOT NULL
);
";

impl Ledger {
    /// Opens (or creates) `ledger.sqlite` in `dir`. A corrupt file is moved
    /// aside with a warning and a fresh one started.
    pub fn open(dir: &Path) -> Result<Ledger, Error> {
        let path = dir.join("ledger.sqlite");
        let unwritable = |reason: String| Error::Unwritable {
            path: path.clone(),
            reason,
        };
        crate::config::ensure_state_dir(dir).map_err(|e| unwritable(e.kind().to_string()))?;
        let mut warning = None;
        let conn = match Self::open_conn(&path) {
            Ok(c) => c,
            Err(e) if is_corrupt(&e) => {
                let aside = dir.join(format!("ledger.sqlite.corrupt-{}", now_ms()));
                let _ = fs_err::rename(&path, &aside);
                for ext in ["-wal", "-shm"] {
                    let _ = fs_err::remove_file(dir.join(format!("ledger.sqlite{ext}")));
                }
                let msg = format!(
                    "the usage ledger was unreadable and was moved to {}; counting starts afresh",
                    aside.display()
                );
                tracing::warn!("{msg}");
                warning = Some(msg);
                Self::open_conn(&path).map_err(|e| unwritable(e.to_string()))?
            }
            Err(e) => return Err(unwritable(short_sql_reason(&e))),
        };
        let ledger = Ledger {
            conn: Arc::new(Mutex::new(conn)),
            path,
            commits: Arc::default(),
            warning,
        };
        ledger.prune(now_ms())?;
        Ok(ledger)
    }

    fn open_conn(path: &Path) -> Result<Connection, rusqlite::Error> {
        let conn = Connection::open(path)?;
        // Many processes: wait for the lock rather than fail (up to 10 s).
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // WAL + NORMAL: a commit survives a process crash; only power loss can
        // lose the last few, which costs at most a few uncounted requests.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let ok: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if ok != "ok" {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(ok),
            ));
        }
        conn.execute_batch(SCHEMA)?;
        Ok(conn)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, Error> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f(&mut conn)?)
    }

    /// Reads usage for `providers` at `now`.
    pub fn snapshot(&self, providers: &[&Provider], now: Millis) -> Result<UsageSnapshot, Error> {
        self.with(|conn| read_snapshot(conn, providers, now))
    }

    /// Reserves one request of `tokens` on a candidate if every limit has room,
    /// atomically with respect to every other process.
    pub fn lease(
        &self,
        provider: &Provider,
        model: &Model,
        key_fp: &str,
        tokens: u64,
        now: Millis,
    ) -> Result<Result<Lease, Blocked>, Error> {
        let expires = now + (provider.timeout.as_millis() as i64) + 60_000;
        let id = self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            reap(&tx, now)?;
            let snap = read_snapshot(&tx, &[provider], now)?;
            if let Err(blocked) = snap.check(provider, model, key_fp, tokens) {
                // Keep what `reap` did even though nothing is leased.
                tx.commit()?;
                return Ok(Err(blocked));
            }
            tx.execute(
                "INSERT INTO leases (ts, expires, pid, provider, model, key_fp, tokens) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![now, expires, std::process::id(), provider.id, model.id, key_fp, tokens as i64],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(Ok(id))
        })?;
        Ok(id.map(|id| Lease {
            id,
            ledger: self.clone(),
            provider: provider.id.clone(),
            model: model.id.clone(),
            key_fp: key_fp.to_owned(),
            committed: false,
        }))
    }

    fn release(&self, lease_id: i64) {
        let done = self.with(|c| {
            c.execute(
                "INSERT INTO events (ts, provider, model, key_fp, requests, tokens, outcome) SELECT ts, provider, model, key_fp, 1, tokens, 'cancelled' FROM leases WHERE id = ?1",
                [lease_id],
            )?;
            c.execute("DELETE FROM leases WHERE id = ?1", [lease_id])
        });
        if let Err(e) = done {
            tracing::warn!(error = %e, "could not release a lease; it will expire");
        }
    }

    /// Turns a lease into an event, and sets or clears benches, in one transaction.
    pub fn commit(&self, mut lease: Lease, rec: AttemptRecord, now: Millis) -> Result<(), Error> {
        lease.committed = true;
        let (p, m, k) = (
            lease.provider.clone(),
            lease.model.clone(),
            lease.key_fp.clone(),
        );
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute("DELETE FROM leases WHERE id = ?1", [lease.id])?;
            if rec.reached {
                tx.execute(
                    "INSERT INTO events (ts, provider, model, key_fp, requests, tokens, outcome) VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6)",
                    params![now, p, m, k, rec.tokens as i64, rec.outcome],
                )?;
            }
            match &rec.bench {
                Some((scope, reason, f)) => {
                    let strikes: u32 = tx
                        .query_row(
                            "SELECT strikes FROM cooldowns WHERE provider=?1 AND model=?2 AND key_fp=?3 AND set_at > ?4",
                            params![scope.provider, scope.model, scope.key_fp, now - 3_600_000],
                            |r| r.get(0),
                        )
                        .optional()?
                        .unwrap_or(0);
                    if let Some((len, stated)) = f(strikes) {
                        tx.execute(
                            "INSERT INTO cooldowns (provider, model, key_fp, until, stated, reason, strikes, set_at)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                             ON CONFLICT(provider, model, key_fp) DO UPDATE SET
                               until = max(excluded.until, CASE WHEN cooldowns.stated = 1 THEN cooldowns.until ELSE 0 END),
                               stated = excluded.stated, reason = excluded.reason,
                               strikes = excluded.strikes, set_at = excluded.set_at",
                            params![
                                scope.provider,
                                scope.model,
                                scope.key_fp,
                                now + len.as_millis() as i64,
                                stated,
                                reason,
                                strikes + 1,
                                now
                            ],
                        )?;
                    }
                }
                None if rec.outcome == "ok" => {
                    // A success ends our own guesses about this candidate early;
                    // benches the provider stated stay.
                    tx.execute(
                        "DELETE FROM cooldowns WHERE provider=?1 AND stated=0 AND (model=?2 OR model='*') AND (key_fp=?3 OR key_fp='*')",
                        params![p, m, k],
                    )?;
                }
                None => {}
            }
            if let Some((key, value)) = rec.learned {
                tx.execute(
                    "INSERT INTO learned (provider, model, limit_key, max) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(provider, model, limit_key) DO UPDATE SET max = min(max, excluded.max)",
                    params![p, m, key, value as i64],
                )?;
            }
            if let Some((chars, tokens)) = rec.calibration
                && chars >= 200
                && tokens > 0
            {
                let ratio = tokens as f64 / chars as f64;
                tx.execute(
                    "INSERT INTO calibration (provider, tokens_per_char) VALUES (?1, ?2)
                     ON CONFLICT(provider) DO UPDATE SET tokens_per_char = 0.8 * tokens_per_char + 0.2 * excluded.tokens_per_char",
                    params![p, ratio],
                )?;
            }
            tx.commit()
        })?;
        // Prune now and then, not on every commit.
        if self
            .commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % 500
            == 499
        {
            self.prune(now)?;
        }
        Ok(())
    }

    /// Clears benches: all, or those of one provider (`freepool-mcp status --clear`).
    pub fn clear_cooldowns(&self, provider: Option<&str>) -> Result<usize, Error> {
        self.with(|c| match provider {
            Some(p) => c.execute("DELETE FROM cooldowns WHERE provider = ?1", [p]),
            None => c.execute("DELETE FROM cooldowns", []),
        })
    }

    /// Deletes events past the longest window and expired benches.
    pub fn prune(&self, now: Millis) -> Result<(), Error> {
        self.with(|c| {
            c.execute("DELETE FROM events WHERE ts < ?1", [now - RETENTION_MS])?;
            c.execute("DELETE FROM cooldowns WHERE until < ?1", [now - 3_600_000])?;
            Ok(())
        })
    }

    /// Leases in flight now (after reaping dead ones), for status and tests.
    pub fn leases_in_flight(&self, now: Millis) -> Result<u64, Error> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            reap(&tx, now)?;
            let n: i64 = tx.query_row("SELECT COUNT(*) FROM leases", [], |r| r.get(0))?;
            tx.commit()?;
            Ok(n as u64)
        })
    }

    /// Counts events per provider since `since` (tests and benchmarks).
    pub fn events_since(&self, provider: &str, since: Millis) -> Result<u64, Error> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM events WHERE provider = ?1 AND ts >= ?2",
                params![provider, since],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
        })
    }
}

fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

fn short_sql_reason(e: &rusqlite::Error) -> String {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ReadOnly) => "read-only".into(),
        Some(rusqlite::ErrorCode::CannotOpen) => "cannot open the file".into(),
        Some(rusqlite::ErrorCode::PermissionDenied) => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Turns leases that expired or whose process is gone (crash, kill -9) into
/// events: the request most likely reached the provider, which counts it, so
/// we count it too (with the tokens reserved for it).
fn reap(conn: &Connection, now: Millis) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached("SELECT DISTINCT pid FROM leases")?;
    let pids: Vec<i64> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let dead: Vec<i64> = pids.into_iter().filter(|p| !process_alive(*p)).collect();
    for pid in dead.iter().copied().map(Some).chain([None]) {
        let (cond, arg) = match pid {
            Some(p) => ("pid = ?1", p),
            None => ("expires < ?1", now),
        };
        conn.execute(
            &format!("INSERT INTO events (ts, provider, model, key_fp, requests, tokens, outcome) SELECT ts, provider, model, key_fp, 1, tokens, 'abandoned' FROM leases WHERE {cond}"),
            [arg],
        )?;
        conn.execute(&format!("DELETE FROM leases WHERE {cond}"), [arg])?;
    }
    Ok(())
}

#[cfg(unix)]
fn process_alive(pid: i64) -> bool {
    if pid == std::process::id() as i64 {
        return true;
    }
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // Signal 0 checks existence; EPERM means it exists but is not ours.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(not(unix))]
fn process_alive(_pid: i64) -> bool {
    true
}

fn read_snapshot(
    conn: &Connection,
    providers: &[&Provider],
    now: Millis,
) -> rusqlite::Result<UsageSnapshot> {
    let mut snap = UsageSnapshot {
        now,
        ..Default::default()
    };
    let mut events = conn.prepare_cached(
        "SELECT model, key_fp,
            SUM(CASE WHEN ts >= ?1 THEN requests ELSE 0 END), SUM(CASE WHEN ts >= ?1 THEN tokens ELSE 0 END), MIN(CASE WHEN ts >= ?1 THEN ts END),
            SUM(CASE WHEN ts >= ?2 THEN requests ELSE 0 END), SUM(CASE WHEN ts >= ?2 THEN tokens ELSE 0 END), MIN(CASE WHEN ts >= ?2 THEN ts END),
            SUM(CASE WHEN ts >= ?3 THEN requests ELSE 0 END), SUM(CASE WHEN ts >= ?3 THEN tokens ELSE 0 END), MIN(CASE WHEN ts >= ?3 THEN ts END),
            SUM(CASE WHEN ts >= ?4 THEN requests ELSE 0 END), SUM(CASE WHEN ts >= ?4 THEN tokens ELSE 0 END), MIN(CASE WHEN ts >= ?4 THEN ts END)
         FROM events WHERE provider = ?5 AND ts >= ?6 GROUP BY model, key_fp",
    )?;
    let mut leases =
        conn.prepare_cached("SELECT model, key_fp, pid, tokens FROM leases WHERE provider = ?1")?;
    for p in providers {
        let starts: Vec<Millis> = WINDOWS
            .iter()
            .map(|w| {
                let reset = match w {
                    Window::Day => p.day_reset,
                    Window::Month => p.month_reset,
                    _ => Reset::Rolling,
                };
                window_start(*w, reset, now)
            })
            .collect();
        // Read only as far back as the provider's longest limit needs.
        let longest = p
            .models
            .iter()
            .flat_map(|m| m.limits.iter())
            .chain(p.pools.iter().flat_map(|pl| pl.limits.iter()))
            .map(|l| widx(l.window))
            .max()
            .unwrap_or(0);
        let since = starts[..=longest].iter().copied().min().unwrap_or(now);
        let rows = events.query_map(
            params![starts[0], starts[1], starts[2], starts[3], p.id, since],
            |r| {
                let mut c = Counts::default();
                for i in 0..4 {
                    c.requests[i] = r.get::<_, Option<i64>>(2 + i * 3)?.unwrap_or(0) as u64;
                    c.tokens[i] = r.get::<_, Option<i64>>(3 + i * 3)?.unwrap_or(0) as u64;
                    c.oldest[i] = r.get(4 + i * 3)?;
                }
                Ok(((r.get::<_, String>(0)?, r.get::<_, String>(1)?), c))
            },
        )?;
        for row in rows {
            let ((m, k), c) = row?;
            snap.usage.insert((p.id.clone(), m, k), c);
        }
        let rows = leases.query_map(params![p.id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        for row in rows {
            let (m, k, pid, tokens) = row?;
            // A lease whose process died (kill -9) still counts as use (the
            // next lease transaction turns it into an event) but is not in flight.
            let c = snap.usage.entry((p.id.clone(), m, k)).or_default();
            for i in 0..4 {
                c.requests[i] += 1;
                c.tokens[i] += tokens as u64;
            }
            if process_alive(pid) {
                c.in_flight += 1;
            }
        }
    }
    let mut stmt = conn.prepare_cached(
        "SELECT provider, model, key_fp, until, stated, reason, strikes FROM cooldowns WHERE until > ?1",
    )?;
    let rows = stmt.query_map([now], |r| {
        Ok(Cooldown {
            scope: BenchScope {
                provider: r.get(0)?,
                model: r.get(1)?,
                key_fp: r.get(2)?,
            },
            until: r.get(3)?,
            stated: r.get(4)?,
            reason: r.get(5)?,
            strikes: r.get(6)?,
        })
    })?;
    snap.cooldowns = rows.collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare_cached("SELECT provider, model, limit_key, max FROM learned")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            (r.get(0)?, r.get(1)?, r.get(2)?),
            r.get::<_, i64>(3)? as u64,
        ))
    })?;
    snap.learned = rows.collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare_cached("SELECT provider, tokens_per_char FROM calibration")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    snap.tokens_per_char = rows.collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare_cached(
        "SELECT provider, model, COUNT(*) FROM events WHERE ts >= ?1 AND outcome != 'ok' GROUP BY provider, model",
    )?;
    let rows = stmt.query_map([now - 3_600_000], |r| {
        Ok(((r.get(0)?, r.get(1)?), r.get::<_, i64>(2)? as u32))
    })?;
    snap.recent_failures = rows.collect::<Result<_, _>>()?;
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn provider(limits: &str, pool: &str) -> Provider {
        let text = format!(
            "[providers.p]\nbase_url = \"https://p.example/v1\"\nday_reset = \"America/Los_Angeles\"\n{pool}\n[providers.p.models.a]\ncontext = 8192\nlimits = {{ {limits} }}\n[providers.p.models.b]\ncontext = 8192\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let cat = config::load_from(Some(&path), &|_| None);
        assert!(cat.problems.is_empty(), "{:?}", cat.problems);
        cat.provider("p").unwrap().clone()
    }

    /// A ledger in a fresh temporary directory (kept alive by the guard).
    fn fresh() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        (dir, ledger)
    }

    /// A lease on p/a/k that reserved nothing, to commit outcomes directly.
    fn unreserved(ledger: &Ledger) -> Lease {
        Lease {
            id: -1,
            ledger: ledger.clone(),
            provider: "p".into(),
            model: "a".into(),
            key_fp: "k".into(),
            committed: false,
        }
    }

    fn ms(rfc3339: &str) -> Millis {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    fn record(tokens: u64) -> AttemptRecord {
        AttemptRecord {
            reached: true,
            tokens,
            outcome: "ok".into(),
            calibration: None,
            bench: None,
            learned: None,
        }
    }

    #[test]
    fn fixed_day_rolls_at_pacific_midnight() {
        let tz = Reset::Midnight(Zone::new("America/Los_Angeles").unwrap());
        // 07:59 UTC on 2026-11-24 is 23:59 PST on the 23rd.
        let before = ms("2026-11-24T07:59:00Z");
        assert_eq!(
            window_start(Window::Day, tz, before),
            ms("2026-11-23T08:00:00Z")
        );
        assert_eq!(
            next_reset(Window::Day, tz, before),
            Some(ms("2026-11-24T08:00:00Z"))
        );
        let after = ms("2026-11-24T08:00:00Z");
        assert_eq!(window_start(Window::Day, tz, after), after);
        let utc = Reset::Midnight(Zone::new("UTC").unwrap());
        assert_eq!(
            window_start(Window::Month, utc, ms("2026-12-31T23:00:00Z")),
            ms("2026-12-01T00:00:00Z")
        );
        assert_eq!(
            next_reset(Window::Month, utc, ms("2026-12-31T23:00:00Z")),
            Some(ms("2027-01-01T00:00:00Z"))
        );
        assert_eq!(
            window_start(Window::Day, Reset::Rolling, after),
            after - 86_400_000
        );
    }

    #[test]
    fn lease_respects_every_window_and_rolls_over() {
        let (_dir, ledger) = fresh();
        let p = provider("rpd = 2", "");
        let a = &p.models[0];
        let t0 = ms("2026-11-24T07:58:00Z");
        for _ in 0..2 {
            let lease = ledger.lease(&p, a, "k", 10, t0).unwrap().unwrap();
            ledger.commit(lease, record(10), t0).unwrap();
        }
        let blocked = ledger.lease(&p, a, "k", 10, t0).unwrap().unwrap_err();
        match blocked {
            Blocked::Full {
                used: 2,
                max: 2,
                frees_at,
                ..
            } => {
                assert_eq!(
                    frees_at,
                    Some(ms("2026-11-24T08:00:00Z")),
                    "Pacific midnight"
                )
            }
            other => panic!("{other:?}"),
        }
        // One millisecond after Pacific midnight the day is new.
        assert!(
            ledger
                .lease(&p, a, "k", 10, ms("2026-11-24T08:00:00.001Z"))
                .unwrap()
                .is_ok()
        );
    }

    #[test]
    fn leases_count_until_committed_or_dropped() {
        let (_dir, ledger) = fresh();
        let p = provider("rpm = 1", "");
        let a = &p.models[0];
        let now = now_ms();
        let held = ledger.lease(&p, a, "k", 1, now).unwrap().unwrap();
        assert!(matches!(
            ledger.lease(&p, a, "k", 1, now).unwrap(),
            Err(Blocked::Full { .. })
        ));
        drop(held);
        // A dropped (cancelled) lease counts as a request made: rpm 1 is used.
        assert!(matches!(
            ledger.lease(&p, a, "k", 1, now).unwrap(),
            Err(Blocked::Full { used: 1, .. })
        ));
        assert_eq!(
            ledger.leases_in_flight(now).unwrap(),
            0,
            "but it is no longer in flight"
        );
    }

    #[test]
    fn pools_are_counted_once_across_models() {
        let (_dir, ledger) = fresh();
        let p = provider(
            "rpm = 100",
            "[providers.p.pools.acct]\nlimits = { rpm = 3 }\n",
        );
        let now = now_ms();
        for m in [&p.models[0], &p.models[1], &p.models[0]] {
            let l = ledger.lease(&p, m, "k", 1, now).unwrap().unwrap();
            ledger.commit(l, record(1), now).unwrap();
        }
        let err = ledger
            .lease(&p, &p.models[1], "k", 1, now)
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(&err, Blocked::Full { limit, .. } if limit == "rpm of pool acct"),
            "{err:?}"
        );
    }

    #[test]
    fn token_limits_count_the_estimate() {
        let (_dir, ledger) = fresh();
        let p = provider("tpm = 1000", "");
        let a = &p.models[0];
        let now = now_ms();
        let l = ledger.lease(&p, a, "k", 600, now).unwrap().unwrap();
        assert!(matches!(
            ledger.lease(&p, a, "k", 600, now).unwrap(),
            Err(Blocked::Full { .. })
        ));
        assert!(ledger.lease(&p, a, "k", 300, now).unwrap().is_ok());
        drop(l);
    }

    #[test]
    fn guessed_bench_ends_on_success_stated_one_stays() {
        let (_dir, ledger) = fresh();
        let p = provider("rpm = 100", "");
        let a = &p.models[0];
        let now = now_ms();
        let guessed: BenchFn = Arc::new(|_| Some((Duration::from_secs(60), false)));
        let l = ledger.lease(&p, a, "k", 1, now).unwrap().unwrap();
        let rec = AttemptRecord {
            bench: Some((
                BenchScope::model("p", "a"),
                "500 server error".into(),
                guessed,
            )),
            outcome: "500".into(),
            ..record(1)
        };
        ledger.commit(l, rec, now).unwrap();
        let blocked = ledger.lease(&p, a, "k", 1, now).unwrap().unwrap_err();
        assert!(matches!(blocked, Blocked::Benched { .. }));
        // Model b is a different scope; a success there... does not clear a's bench.
        let l = ledger
            .lease(&p, &p.models[1], "k", 1, now)
            .unwrap()
            .unwrap();
        ledger.commit(l, record(1), now).unwrap();
        assert!(ledger.lease(&p, a, "k", 1, now).unwrap().is_err());
        // A success on a itself (say, another process got through) ends the guess.
        let l = unreserved(&ledger);
        ledger.commit(l, record(1), now).unwrap();
        assert!(ledger.lease(&p, a, "k", 1, now).unwrap().is_ok());

        let stated: BenchFn = Arc::new(|_| Some((Duration::from_secs(60), true)));
        let l = ledger.lease(&p, a, "k", 1, now).unwrap().unwrap();
        let rec = AttemptRecord {
            bench: Some((BenchScope::key("p", "k"), "429 rate limited".into(), stated)),
            outcome: "429".into(),
            ..record(1)
        };
        ledger.commit(l, rec, now).unwrap();
        let l = unreserved(&ledger);
        ledger.commit(l, record(1), now).unwrap();
        assert!(matches!(
            ledger.lease(&p, a, "k", 1, now).unwrap(),
            Err(Blocked::Benched { .. })
        ));
        assert!(
            ledger.lease(&p, a, "other-key", 1, now).unwrap().is_ok(),
            "the bench is on one key"
        );
    }

    #[test]
    fn strikes_escalate_guessed_benches() {
        let (_dir, ledger) = fresh();
        let p = provider("", "");
        let a = &p.models[0];
        let now = now_ms();
        let f: BenchFn = Arc::new(|strikes| Some((Duration::from_secs(10 << strikes), false)));
        for _ in 0..3 {
            let l = unreserved(&ledger);
            let rec = AttemptRecord {
                bench: Some((BenchScope::provider("p"), "503".into(), f.clone())),
                outcome: "503".into(),
                ..record(1)
            };
            ledger.commit(l, rec, now).unwrap();
        }
        let snap = ledger.snapshot(&[&p], now).unwrap();
        let c = snap.bench_of("p", "a", "k").unwrap();
        assert_eq!(c.strikes, 3);
        assert_eq!(c.until, now + 40_000);
        let _ = a;
    }

    #[test]
    fn learned_limits_only_lower() {
        let (_dir, ledger) = fresh();
        let p = provider("tpm = 5000", "");
        let a = &p.models[0];
        let now = now_ms();
        for learned in [3000, 9000] {
            let l = unreserved(&ledger);
            ledger
                .commit(
                    l,
                    AttemptRecord {
                        reached: false,
                        learned: Some(("tpm", learned)),
                        ..record(0)
                    },
                    now,
                )
                .unwrap();
        }
        let snap = ledger.snapshot(&[&p], now).unwrap();
        assert!(snap.check(&p, a, "k", 2900).is_ok());
        assert!(matches!(
            snap.check(&p, a, "k", 3100),
            Err(Blocked::Full { max: 3000, .. })
        ));
    }

    #[test]
    fn dead_process_leases_are_reaped() {
        let (_dir, ledger) = fresh();
        let p = provider("rpm = 1", "");
        let now = now_ms();
        // A lease left by a process that no longer exists.
        ledger
            .with(|c| {
                c.execute(
                    "INSERT INTO leases (ts, expires, pid, provider, model, key_fp, tokens) VALUES (?1, ?2, 999999999, 'p', 'a', 'k', 1)",
                    params![now, now + 600_000],
                )
            })
            .unwrap();
        let snap = ledger.snapshot(&[&p], now).unwrap();
        let c = snap.usage[&("p".to_owned(), "a".to_owned(), "k".to_owned())];
        assert_eq!(
            (c.requests[0], c.in_flight),
            (1, 0),
            "counted as use, not in flight"
        );
        assert!(matches!(
            ledger.lease(&p, &p.models[0], "k", 1, now).unwrap(),
            Err(Blocked::Full { .. })
        ));
        assert_eq!(
            ledger.events_since("p", 0).unwrap(),
            1,
            "the abandoned lease became an event"
        );
        assert_eq!(ledger.leases_in_flight(now).unwrap(), 0);
    }

    #[test]
    fn corrupt_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ledger.sqlite"),
            b"this is not a database, just junk bytes that go on",
        )
        .unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        assert!(ledger.warning.as_deref().unwrap().contains("moved to"));
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains("corrupt"));
        assert!(aside);
    }

    #[test]
    fn estimates_are_conservative_and_calibrate_upward() {
        let mut snap = UsageSnapshot::default();
        assert_eq!(snap.estimate_tokens("p", 3000), 1008);
        snap.tokens_per_char.insert("p".into(), 0.5);
        assert!(snap.estimate_tokens("p", 3000) > 1700);
        snap.tokens_per_char.insert("p".into(), 0.1);
        assert_eq!(
            snap.estimate_tokens("p", 3000),
            1008,
            "never below the default"
        );
    }
}
