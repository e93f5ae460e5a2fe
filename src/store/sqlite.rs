//! The embedded ledger: one SQLite file in the state dir, shared by every
//! freepool-mcp process of the user.
//!
//! Use is kept as counters in time buckets, not as a list of events, so a
//! check reads a bounded number of rows however long the ledger has lived:
//!
//! | grain | bucket  | serves the      | kept   |
//! |-------|---------|-----------------|--------|
//! | 0     | second  | minute window   | 2 min  |
//! | 1     | minute  | hour window     | 2 h    |
//! | 2     | hour    | day window      | 2 days |
//! | 3     | day     | month window    | 32 days|
//!
//! A bucket that overlaps a window counts whole, so a window is never
//! under-counted; the excess is at most one bucket (a second of a minute, an
//! hour of a day). Fixed resets (midnight in a zone) start on hour and day
//! boundaries for whole-hour zones, so they are exact there. Grain 0 counts
//! the tokens per-minute limits see (the whole `max_tokens` for providers that
//! count it on arrival); the others count tokens as used.
//!
//! Concurrency: WAL, so readers never wait for the writer; `BEGIN IMMEDIATE`
//! for every write, so a lease's check and insert are one atomic step across
//! processes; a busy handler that sleeps a fraction of a millisecond at
//! first (a lease holds the lock for well under one), where SQLite's own
//! sleeps up to 100 ms per round and made a crowd's p99 seconds long.
//! Every call runs on tokio's blocking pool: SQLite may wait on a lock.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{AttemptRecord, Error, Lease, Slot, Store, StoreFuture};
use crate::config::{Catalog, Provider};
use crate::quota::{
    Blocked, Cooldown, GoneMark, GoneReport, Millis, Need, Scope, Tally, UsageSnapshot, WINDOWS,
    gone, reset_of, window_len, window_start,
};

/// Bucket length per grain.
pub(super) const GRAINS: [Millis; 4] = [1_000, 60_000, 3_600_000, 86_400_000];
/// How long buckets of each grain are kept.
pub(super) const KEEP: [Millis; 4] = [120_000, 2 * 3_600_000, 2 * 86_400_000, 32 * 86_400_000];
/// How long a writer waits for another process's transaction.
const BUSY: Duration = Duration::from_secs(10);
/// A learned limit not confirmed for this long is forgotten.
pub(super) const LEARNED_TTL: Millis = 7 * 86_400_000;
/// Stored for "any model" / "any key" in the cooldowns table.
pub(super) const ANY: &str = "*";
/// A process checkpoints the WAL after this many of its writes.
const CHECKPOINT_EVERY: u64 = 64;
/// Background pruning runs at most this often per process.
const PRUNE_EVERY: Millis = 60_000;
/// The schema this build writes (`PRAGMA user_version`).
const VERSION: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS usage (
    provider TEXT NOT NULL,
    grain INTEGER NOT NULL,
    start INTEGER NOT NULL,
    model TEXT NOT NULL,
    key_fp TEXT NOT NULL,
    requests INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    PRIMARY KEY (provider, grain, start, model, key_fp)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_by_age ON usage(grain, start);
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    key_fp TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    minute_tokens INTEGER NOT NULL DEFAULT 0
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
    confirmed_at INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (provider, model, limit_key)
);
CREATE TABLE IF NOT EXISTS calibration (
    provider TEXT PRIMARY KEY,
    tokens_per_char REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS verdicts (
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    task_type TEXT NOT NULL,
    passes REAL NOT NULL,
    fails REAL NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (provider, model, task_type)
);
CREATE TABLE IF NOT EXISTS gone (
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    key_fp TEXT NOT NULL,
    entry TEXT NOT NULL,
    since INTEGER NOT NULL,
    last INTEGER NOT NULL,
    confirmed INTEGER NOT NULL,
    words TEXT NOT NULL,
    PRIMARY KEY (provider, model, key_fp)
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
";

/// The SQLite ledger; cheap to clone.
#[derive(Clone)]
pub(crate) struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    path: PathBuf,
    warning: Option<String>,
    last_prune: AtomicI64,
    /// `ledger.lock`: writers queue on it in the kernel (see `WriterQueue`).
    queue: Option<WriterQueue>,
    /// Writes by this process, for checkpoints now and then.
    writes: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (or creates) `ledger.sqlite` in `dir`, migrating an older file.
    /// A corrupt file is moved aside with a warning and a fresh one started.
    /// Blocking: call it off the async threads.
    pub(crate) fn open(dir: &Path, now: Millis) -> Result<SqliteStore, Error> {
        let path = dir.join("ledger.sqlite");
        let unwritable = |e: Box<dyn std::error::Error + Send + Sync>| Error::Unwritable {
            path: path.clone(),
            source: e,
        };
        crate::config::ensure_state_dir(dir).map_err(|e| unwritable(Box::new(e)))?;
        let mut warning = None;
        let conn = match open_conn(&path, now) {
            Ok(c) => c,
            Err(e) if is_corrupt(&e) => {
                let aside = dir.join(format!("ledger.sqlite.corrupt-{now}"));
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
                open_conn(&path, now).map_err(|e| unwritable(Box::new(e)))?
            }
            Err(e) if is_busy(&e) => {
                return Err(Error::Busy {
                    path,
                    secs: BUSY.as_secs(),
                });
            }
            Err(e) => return Err(unwritable(Box::new(e))),
        };
        let queue = WriterQueue::open(&dir.join("ledger.lock"));
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                path,
                warning,
                last_prune: AtomicI64::new(now),
                queue,
                writes: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    /// Opens `ledger.sqlite` in `dir` to read only (`status`): nothing is
    /// created, migrated, locked or checkpointed, so a read-only state dir
    /// works; a write through this store fails. No file yet reads as an
    /// empty ledger.
    pub(crate) fn open_read_only(dir: &Path, now: Millis) -> Result<SqliteStore, Error> {
        let path = dir.join("ledger.sqlite");
        let db = |e: rusqlite::Error| Error::Db {
            path: path.clone(),
            source: Box::new(e),
        };
        let (conn, shown) = if path.exists() {
            let conn = crate::readonly::open(&path).map_err(db)?;
            conn.busy_handler(Some(wait_for_lock)).map_err(db)?;
            let version: i64 = conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(db)?;
            if version < VERSION {
                return Err(Error::Db {
                    path: path.clone(),
                    source: "it is of an older format; the next delegate call updates it".into(),
                });
            }
            (conn, path.clone())
        } else {
            let conn = Connection::open_in_memory().map_err(db)?;
            migrate(&conn, 0, now).map_err(db)?;
            (
                conn,
                PathBuf::from(format!("{} (none yet)", path.display())),
            )
        };
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                path: shown,
                warning: None,
                last_prune: AtomicI64::new(now),
                queue: None,
                writes: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    /// Runs a write `f` on the connection, on the blocking pool.
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        self.blocking(false, f)
    }

    fn blocking<T: Send + 'static>(
        &self,
        read: bool,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let path = inner.path.clone();
            tokio::task::spawn_blocking(move || if read { inner.read(f) } else { inner.with(f) })
                .await
                .map_err(|_| Error::Task)?
                .map_err(|e| sql_error(&path, e))
        })
    }

    /// Prunes old buckets and benches now and then, off the call's path.
    fn maybe_prune(&self, now: Millis) {
        let last = self.inner.last_prune.load(Ordering::Relaxed);
        if now - last < PRUNE_EVERY
            || self
                .inner
                .last_prune
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = inner.with(|c| prune(c, now)) {
                tracing::debug!("pruning the ledger failed (it will try again): {e}");
            }
        });
    }

    /// Leases in flight now, across every process (dead ones settled first).
    #[cfg(test)]
    async fn in_flight(&self, now: Millis) -> Result<u64, Error> {
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            reap(&tx, now)?;
            let n: i64 = tx.query_row("SELECT COUNT(*) FROM leases", [], |r| r.get(0))?;
            tx.commit()?;
            Ok(n.max(0) as u64)
        })
        .await
    }

    /// Synchronous lease, for benchmarks and tests that drive the store directly.
    #[doc(hidden)]
    pub(crate) fn lease_blocking(
        &self,
        slot: &Slot,
        need: Need,
        now: Millis,
    ) -> Result<Result<Lease, Blocked>, Error> {
        let path = self.inner.path.clone();
        self.inner
            .with(|c| lease(c, slot, need, now))
            .map_err(|e| sql_error(&path, e))
    }

    /// Synchronous commit, for benchmarks and tests.
    #[doc(hidden)]
    pub(crate) fn commit_blocking(
        &self,
        lease: &Lease,
        rec: &AttemptRecord,
        now: Millis,
    ) -> Result<(), Error> {
        let path = self.inner.path.clone();
        self.inner
            .with(|c| commit(c, lease, rec, now))
            .map_err(|e| sql_error(&path, e))
    }

    /// Writes `n` past requests of one (provider, model, key), spread evenly
    /// over `[from, to)`, in one transaction: a ledger with a history, for
    /// benchmarks. Buckets are what the store keeps, so that is what it writes.
    #[doc(hidden)]
    pub(crate) fn seed_history(
        &self,
        provider: &str,
        model: &str,
        key_fp: &str,
        n: u64,
        from: Millis,
        to: Millis,
    ) -> Result<(), Error> {
        let path = self.inner.path.clone();
        let (provider, model, key_fp) = (provider.to_owned(), model.to_owned(), key_fp.to_owned());
        self.inner
            .with(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let step = ((to - from) / n.max(1) as i64).max(1);
                for i in 0..n as i64 {
                    let ts = from + i * step;
                    add_use(&tx, &provider, &model, &key_fp, ts, Need::flat(50), false)?;
                }
                tx.commit()?;
                prune(c, to)
            })
            .map_err(|e| sql_error(&path, e))
    }
}

impl Inner {
    /// Runs a read: WAL readers never wait for writers, so no turn is taken.
    fn read<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let mut conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut conn)
    }

    /// Runs `f` with the connection, first taking this process's turn among
    /// the writers of every process (when the lock file could be opened).
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let mut conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let result = {
            let _turn = match &self.queue {
                Some(q) => Some(q.wait(BUSY).ok_or_else(|| {
                    rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                        Some("waited too long for the ledger".into()),
                    )
                })?),
                None => None,
            };
            f(&mut conn)
        };
        // The WAL is copied back into the file here, after the turn is given
        // back, never inside a writer's transaction (see `open_conn`).
        if self.writes.fetch_add(1, Ordering::Relaxed) % CHECKPOINT_EVERY == CHECKPOINT_EVERY - 1 {
            checkpoint(&conn);
        }
        result
    }
}

/// Writers of every process take turns through an exclusive `flock` on
/// `ledger.lock`, held around each call. A waiting process sleeps in the
/// kernel and is woken when the lock is free, where polling SQLite's lock
/// (every waiter waking every fraction of a millisecond) starved the
/// holder of CPU: 32 sessions on 2 cores saw a p99 of 130-300 ms that way.
/// SQLite's own locking stays in force underneath; the turn only orders
/// who tries first. The lock is the kernel's: a process that dies lets go.
struct WriterQueue {
    file: Arc<std::fs::File>,
}

/// A turn held; dropping it lets the next writer in.
struct Turn {
    file: Arc<std::fs::File>,
}

impl WriterQueue {
    fn open(path: &Path) -> Option<WriterQueue> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| tracing::debug!("no writer queue ({}): {e}", path.display()))
            .ok()?;
        Some(WriterQueue {
            file: Arc::new(file),
        })
    }

    /// Waits for this process's turn, at most `limit`.
    #[cfg(unix)]
    fn wait(&self, limit: Duration) -> Option<Turn> {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_raw_fd();
        // SAFETY: flock on a descriptor this struct owns; no memory is involved.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Some(Turn {
                file: self.file.clone(),
            });
        }
        // Contended: a helper thread blocks in the kernel's queue; this one
        // waits for it with a time limit. If the limit passes first, the
        // helper gives the lock back as soon as it gets it.
        let (tx, rx) = std::sync::mpsc::channel();
        let file = self.file.clone();
        std::thread::spawn(move || {
            // SAFETY: as above.
            let got = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0;
            if got && tx.send(()).is_err() {
                // SAFETY: as above; nobody waits for this turn any more.
                unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
            }
        });
        rx.recv_timeout(limit).ok().map(|()| Turn {
            file: self.file.clone(),
        })
    }

    #[cfg(not(unix))]
    fn wait(&self, _limit: Duration) -> Option<Turn> {
        Some(Turn {
            file: self.file.clone(),
        })
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: unlocking a descriptor this struct holds.
            unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
        }
    }
}

impl Store for SqliteStore {
    fn snapshot(
        &self,
        catalog: Arc<Catalog>,
        providers: Vec<usize>,
        now: Millis,
    ) -> StoreFuture<'_, UsageSnapshot> {
        self.blocking(true, move |c| {
            let ps: Vec<&Provider> = providers
                .iter()
                .filter_map(|&i| catalog.providers.get(i))
                .collect();
            read_snapshot(c, &ps, now)
        })
    }

    fn lease(
        &self,
        slot: Slot,
        need: Need,
        now: Millis,
    ) -> StoreFuture<'_, Result<Lease, Blocked>> {
        self.run(move |c| lease(c, &slot, need, now))
    }

    fn commit(&self, lease: Lease, rec: AttemptRecord, now: Millis) -> StoreFuture<'_, ()> {
        self.maybe_prune(now);
        self.run(move |c| commit(c, &lease, &rec, now))
    }

    fn release(&self, lease: Lease, now: Millis) -> StoreFuture<'_, ()> {
        // The lease is counted at the time it was taken, not at `now`.
        let _ = now;
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            settle_leases(&tx, "id = ?1", lease.id)?;
            tx.commit()
        })
    }

    fn record_verdict(
        &self,
        provider: String,
        model: String,
        task_type: String,
        passed: bool,
        now: Millis,
    ) -> StoreFuture<'_, ()> {
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let old: Option<Tally> = tx
                .query_row(
                    "SELECT passes, fails, at FROM verdicts WHERE provider = ?1 AND model = ?2 AND task_type = ?3",
                    params![provider, model, task_type],
                    |r| Ok(Tally { passes: r.get(0)?, fails: r.get(1)?, at: r.get(2)? }),
                )
                .optional()?;
            let t = old.unwrap_or_default().observe(passed, now);
            tx.execute(
                "INSERT INTO verdicts (provider, model, task_type, passes, fails, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (provider, model, task_type) DO UPDATE SET
                   passes = excluded.passes, fails = excluded.fails, at = excluded.at",
                params![provider, model, task_type, t.passes, t.fails, t.at],
            )?;
            tx.commit()
        })
    }

    fn clear_cooldowns(&self, provider: Option<String>) -> StoreFuture<'_, usize> {
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut n = 0;
            for table in ["cooldowns", "gone"] {
                n += match &provider {
                    Some(p) => {
                        tx.execute(&format!("DELETE FROM {table} WHERE provider = ?1"), [p])?
                    }
                    None => tx.execute(&format!("DELETE FROM {table}"), [])?,
                };
            }
            tx.commit()?;
            Ok(n)
        })
    }

    fn location(&self) -> String {
        self.inner.path.display().to_string()
    }

    fn warning(&self) -> Option<String> {
        self.inner.warning.clone()
    }
}

/// Waits for another process's transaction: short sleeps first (a lease
/// holds the lock for well under a millisecond), longer ones after, giving up
/// after about `BUSY` in all.
fn wait_for_lock(attempt: i32) -> bool {
    const QUICK: i32 = 200; // 200 x 0.25 ms = 50 ms
    let budget_ms = BUSY.as_millis() as i32;
    if attempt < QUICK {
        std::thread::sleep(Duration::from_micros(250));
        true
    } else if attempt < QUICK + (budget_ms - 50) / 2 {
        std::thread::sleep(Duration::from_millis(2));
        true
    } else {
        false
    }
}

fn open_conn(path: &Path, now: Millis) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_handler(Some(wait_for_lock))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // WAL + NORMAL: a commit survives a process crash; only power loss can
    // lose the last few, which costs at most a few uncounted requests.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // SQLite's automatic checkpoint runs inside the commit that crosses its
    // threshold, holding every other writer up while megabytes are copied:
    // that was the p99 of a crowd. Checkpoints run after a write instead
    // (PASSIVE: they never wait for, or block, a writer), and at open.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    checkpoint(&conn);
    let ok: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if ok != "ok" {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(ok),
        ));
    }
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version < VERSION {
        migrate(&conn, version, now)?;
    }
    Ok(conn)
}

/// Brings a file of an older schema up to this one, in one transaction.
/// Version 1 kept every event in `events`; its last month becomes buckets.
fn migrate(conn: &Connection, from: i64, now: Millis) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let done = (|| {
        let has = |table: &str| -> rusqlite::Result<bool> {
            conn.query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
        };
        let has_column = |table: &str, column: &str| -> rusqlite::Result<bool> {
            let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
            let names: Vec<String> = stmt
                .query_map([], |r| r.get(1))?
                .collect::<Result<_, _>>()?;
            Ok(names.iter().any(|n| n == column))
        };
        if from < 2 && has("leases")? && !has_column("leases", "minute_tokens")? {
            conn.execute_batch(
                "ALTER TABLE leases ADD COLUMN minute_tokens INTEGER NOT NULL DEFAULT 0",
            )?;
        }
        if from < 2 && has("learned")? && !has_column("learned", "confirmed_at")? {
            conn.execute_batch(
                "ALTER TABLE learned ADD COLUMN confirmed_at INTEGER NOT NULL DEFAULT 0",
            )?;
            conn.execute("UPDATE learned SET confirmed_at = ?1", [now])?;
        }
        conn.execute_batch(SCHEMA)?;
        if from < 2 && has("events")? {
            for (grain, (size, keep)) in GRAINS.iter().zip(KEEP).enumerate() {
                conn.execute(
                    "INSERT INTO usage (provider, grain, start, model, key_fp, requests, tokens, failures)
                     SELECT provider, ?1, (ts / ?2) * ?2 AS b, model, key_fp, SUM(requests), SUM(tokens),
                            SUM(CASE WHEN outcome IN ('ok', 'abandoned', 'cancelled') THEN 0 ELSE 1 END)
                     FROM events WHERE ts >= ?3 GROUP BY provider, b, model, key_fp
                     ON CONFLICT DO NOTHING",
                    params![grain as i64, size, now - keep],
                )?;
            }
            conn.execute_batch("DROP TABLE events")?;
        }
        conn.execute_batch(&format!("PRAGMA user_version = {VERSION}"))
    })();
    match done {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Copies what the WAL holds back into the database, without waiting for anyone.
fn checkpoint(conn: &Connection) {
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        tracing::debug!("checkpoint skipped: {e}");
    }
}

fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn sql_error(path: &Path, e: rusqlite::Error) -> Error {
    if is_busy(&e) {
        Error::Busy {
            path: path.to_path_buf(),
            secs: BUSY.as_secs(),
        }
    } else {
        Error::Db {
            path: path.to_path_buf(),
            source: Box::new(e),
        }
    }
}

/// Adds one request at `ts` to the buckets of every grain.
fn add_use(
    conn: &Connection,
    provider: &str,
    model: &str,
    key_fp: &str,
    ts: Millis,
    need: Need,
    failed: bool,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO usage (provider, grain, start, model, key_fp, requests, tokens, failures)
         VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?7)
         ON CONFLICT (provider, grain, start, model, key_fp) DO UPDATE SET
           requests = requests + 1, tokens = tokens + excluded.tokens, failures = failures + excluded.failures",
    )?;
    for (grain, size) in GRAINS.iter().enumerate() {
        let tokens = if grain == 0 {
            need.minute_tokens.max(need.tokens)
        } else {
            need.tokens
        };
        stmt.execute(params![
            provider,
            grain as i64,
            ts.div_euclid(*size) * size,
            model,
            key_fp,
            tokens.min(i64::MAX as u64) as i64,
            i64::from(failed)
        ])?;
    }
    Ok(())
}

/// Turns the leases matching `cond` (bound to `?1`) into counted use, at the
/// time each was taken and with the tokens it reserved, and deletes them:
/// the request most likely reached the provider, which counts it. One step,
/// so a crash can leave neither both nor none.
fn settle_leases(conn: &Connection, cond: &str, arg: i64) -> rusqlite::Result<usize> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT provider, model, key_fp, ts, tokens, minute_tokens FROM leases WHERE {cond}"
    ))?;
    let rows: Vec<(String, String, String, i64, i64, i64)> = stmt
        .query_map([arg], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    for (p, m, k, ts, tokens, minute) in &rows {
        let need = Need {
            tokens: (*tokens).max(0) as u64,
            minute_tokens: (*minute).max(0) as u64,
        };
        add_use(conn, p, m, k, *ts, need, false)?;
    }
    conn.execute(&format!("DELETE FROM leases WHERE {cond}"), [arg])?;
    Ok(rows.len())
}

/// Settles leases that expired or whose process is gone (crash, kill -9).
fn reap(conn: &Connection, now: Millis) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached("SELECT DISTINCT pid FROM leases")?;
    let pids: Vec<i64> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for pid in pids.into_iter().filter(|p| !process_alive(*p)) {
        settle_leases(conn, "pid = ?1", pid)?;
    }
    settle_leases(conn, "expires < ?1", now)?;
    Ok(())
}

/// A clock that went backwards leaves rows stamped in the future, which would
/// keep a window full until real time caught up. Writers move them to now.
fn restamp_future(conn: &Connection, now: Millis) -> rusqlite::Result<()> {
    let latest: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE name = 'latest'", [], |r| {
            r.get(0)
        })
        .optional()?;
    if latest.is_some_and(|l| l > now + 2_000) {
        tracing::warn!(
            "the clock went back since the ledger was last written; moving future stamps to now"
        );
        conn.execute(
            "INSERT INTO usage (provider, grain, start, model, key_fp, requests, tokens, failures)
             SELECT provider, grain,
                    (?1 / CASE grain WHEN 0 THEN 1000 WHEN 1 THEN 60000 WHEN 2 THEN 3600000 ELSE 86400000 END)
                      * CASE grain WHEN 0 THEN 1000 WHEN 1 THEN 60000 WHEN 2 THEN 3600000 ELSE 86400000 END,
                    model, key_fp, requests, tokens, failures
             FROM usage WHERE start > ?1
             ON CONFLICT (provider, grain, start, model, key_fp) DO UPDATE SET
               requests = requests + excluded.requests, tokens = tokens + excluded.tokens,
               failures = failures + excluded.failures",
            [now],
        )?;
        conn.execute("DELETE FROM usage WHERE start > ?1", [now])?;
        conn.execute("UPDATE leases SET ts = ?1 WHERE ts > ?1", [now])?;
        conn.execute("UPDATE cooldowns SET set_at = ?1 WHERE set_at > ?1", [now])?;
    }
    // Written at most once a second: it only has to notice a clock that jumped back.
    if latest.is_none_or(|l| now >= l + 1_000) {
        conn.execute(
            "INSERT INTO meta (name, value) VALUES ('latest', ?1)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            [now],
        )?;
    }
    Ok(())
}

fn lease(
    conn: &mut Connection,
    slot: &Slot,
    need: Need,
    now: Millis,
) -> rusqlite::Result<Result<Lease, Blocked>> {
    let (provider, model) = (slot.provider(), slot.model());
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    restamp_future(&tx, now)?;
    reap(&tx, now)?;
    let snap = read_snapshot(&tx, &[provider], now)?;
    if let Err(blocked) = snap.check(provider, model, &slot.key_fp, need) {
        // Keep what `reap` did even though nothing is leased.
        tx.commit()?;
        return Ok(Err(blocked));
    }
    let expires = now + provider.timeout.as_millis() as i64 + 60_000;
    tx.execute(
        "INSERT INTO leases (ts, expires, pid, provider, model, key_fp, tokens, minute_tokens)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            now,
            expires,
            std::process::id(),
            provider.id,
            model.id,
            slot.key_fp,
            need.tokens as i64,
            need.minute_tokens as i64
        ],
    )?;
    let id = tx.last_insert_rowid();
    tx.commit()?;
    Ok(Ok(Lease {
        id,
        provider: provider.id.clone(),
        model: model.id.clone(),
        key_fp: slot.key_fp.clone(),
    }))
}

fn commit(
    conn: &mut Connection,
    lease: &Lease,
    rec: &AttemptRecord,
    now: Millis,
) -> rusqlite::Result<()> {
    let (p, m, k) = (&lease.provider, &lease.model, &lease.key_fp);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    restamp_future(&tx, now)?;
    let held = tx.execute("DELETE FROM leases WHERE id = ?1", [lease.id])?;
    // A lease already reaped (it outlived its expiry) was counted then, with
    // what it reserved: counting the attempt again would count it twice.
    let reaped = held == 0 && lease.id >= 0;
    if rec.reached && !reaped {
        add_use(&tx, p, m, k, now, rec.need, !rec.ok)?;
    }
    match &rec.bench {
        Some(bench) => {
            let (bp, bm, bk) = (
                &bench.scope.provider,
                bench.scope.model.as_deref().unwrap_or(ANY),
                bench.scope.key.as_deref().unwrap_or(ANY),
            );
            let strikes: u32 = tx
                .query_row(
                    "SELECT strikes FROM cooldowns WHERE provider=?1 AND model=?2 AND key_fp=?3 AND set_at > ?4",
                    params![bp, bm, bk, now - 3_600_000],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            if let Some(len) = bench.backoff.length(strikes) {
                tx.execute(
                    "INSERT INTO cooldowns (provider, model, key_fp, until, stated, reason, strikes, set_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT(provider, model, key_fp) DO UPDATE SET
                       until = max(excluded.until, CASE WHEN cooldowns.stated = 1 THEN cooldowns.until ELSE 0 END),
                       stated = excluded.stated, reason = excluded.reason,
                       strikes = excluded.strikes, set_at = excluded.set_at",
                    params![
                        bp,
                        bm,
                        bk,
                        now.saturating_add(len.as_millis().min(i64::MAX as u128) as i64),
                        bench.stated,
                        bench.reason,
                        strikes + 1,
                        now
                    ],
                )?;
            }
        }
        None if rec.ok => {
            // A success ends our own guesses about this candidate early;
            // benches the provider stated stay. It also answers a lone "not found".
            tx.execute(
                "DELETE FROM cooldowns WHERE provider=?1 AND stated=0 AND (model=?2 OR model='*') AND (key_fp=?3 OR key_fp='*')",
                params![p, m, k],
            )?;
            tx.execute(
                "DELETE FROM gone WHERE provider=?1 AND model=?2 AND key_fp=?3",
                params![p, m, k],
            )?;
        }
        None => {}
    }
    if let Some(report) = &rec.gone {
        mark_gone(&tx, report, now)?;
    }
    if let Some((key, value)) = rec.learned {
        // Lower only, while confirmed; a value not confirmed for a week is
        // stale (the provider may have raised it) and the new one replaces it.
        tx.execute(
            "INSERT INTO learned (provider, model, limit_key, max, confirmed_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(provider, model, limit_key) DO UPDATE SET
               max = CASE WHEN learned.confirmed_at < ?5 - ?6 THEN excluded.max ELSE min(learned.max, excluded.max) END,
               confirmed_at = excluded.confirmed_at",
            params![p, m, key, value as i64, now, LEARNED_TTL],
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
}

/// Reads what `ledger migrate` carries over from the ledger file in `dir`.
///
/// # Errors
///
/// The file cannot be opened or read.
pub(crate) fn export(dir: &Path, now: Millis) -> Result<super::Export, Error> {
    let path = dir.join("ledger.sqlite");
    let db = |e: rusqlite::Error| Error::Db {
        path: path.clone(),
        source: Box::new(e),
    };
    let conn = crate::readonly::open(&path).map_err(db)?;
    let read = || -> rusqlite::Result<super::Export> {
        let mut out = super::Export::default();
        let mut st = conn.prepare(
            "SELECT provider, grain, start, model, key_fp, requests, tokens, failures FROM usage",
        )?;
        out.usage = st
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        // Leases of running processes become use, at the time each was taken.
        let mut st =
            conn.prepare("SELECT provider, model, key_fp, ts, tokens, minute_tokens FROM leases")?;
        let leases: Vec<(String, String, String, i64, i64, i64)> = st
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        for (p, m, k, ts, tokens, minute) in leases {
            for (grain, size) in GRAINS.iter().enumerate() {
                let t = if grain == 0 {
                    minute.max(tokens)
                } else {
                    tokens
                };
                out.usage.push((
                    p.clone(),
                    grain as i32,
                    ts.div_euclid(*size) * size,
                    m.clone(),
                    k.clone(),
                    1,
                    t,
                    0,
                ));
            }
        }
        let mut st = conn.prepare(
            "SELECT provider, model, key_fp, until, stated, reason, strikes, set_at FROM cooldowns WHERE until > ?1",
        )?;
        out.cooldowns = st
            .query_map([now], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        let mut st =
            conn.prepare("SELECT provider, model, limit_key, max, confirmed_at FROM learned")?;
        out.learned = st
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<Result<_, _>>()?;
        let mut st = conn.prepare("SELECT provider, tokens_per_char FROM calibration")?;
        out.calibration = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut st =
            conn.prepare("SELECT provider, model, task_type, passes, fails, at FROM verdicts")?;
        out.verdicts = st
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        let mut st = conn.prepare(
            "SELECT provider, model, key_fp, entry, since, last, confirmed, words FROM gone",
        )?;
        out.gone = st
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        Ok(out)
    };
    read().map_err(db)
}

/// Folds a gone report into the mark held for its model and key.
fn mark_gone(tx: &Connection, report: &GoneReport, now: Millis) -> rusqlite::Result<()> {
    let (p, m, k) = (
        &report.scope.provider,
        report.scope.model.as_deref().unwrap_or(ANY),
        report.scope.key.as_deref().unwrap_or(ANY),
    );
    let held = tx
        .query_row(
            "SELECT entry, since, last, confirmed, words FROM gone WHERE provider=?1 AND model=?2 AND key_fp=?3",
            params![p, m, k],
            |r| {
                Ok(GoneMark {
                    scope: report.scope.clone(),
                    entry: r.get(0)?,
                    since: r.get(1)?,
                    last: r.get(2)?,
                    confirmed: r.get(3)?,
                    words: r.get(4)?,
                })
            },
        )
        .optional()?;
    let mark = GoneMark::fold(held.as_ref(), report, now);
    tx.execute(
        "INSERT INTO gone (provider, model, key_fp, entry, since, last, confirmed, words)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT(provider, model, key_fp) DO UPDATE SET
           entry = excluded.entry, since = excluded.since, last = excluded.last,
           confirmed = excluded.confirmed, words = excluded.words",
        params![
            p,
            m,
            k,
            mark.entry,
            mark.since,
            mark.last,
            mark.confirmed,
            mark.words
        ],
    )?;
    Ok(())
}

/// Reads the confirmed gone marks of `providers` that were heard on the
/// catalog entry in use now (a changed entry lifts its marks).
fn read_gone(
    conn: &Connection,
    providers: &[&Provider],
    snap: &mut UsageSnapshot,
) -> rusqlite::Result<()> {
    let mut stmt = match conn.prepare_cached(
        "SELECT provider, model, key_fp, entry, since, last, words FROM gone WHERE confirmed = 1",
    ) {
        Ok(s) => s,
        // A file of an older schema opened read-only has no marks yet.
        Err(e) if e.to_string().contains("no such table") => return Ok(()),
        Err(e) => return Err(e),
    };
    let rows = stmt.query_map([], |r| {
        let any = |v: String| (v != ANY).then_some(v);
        Ok(GoneMark {
            scope: Scope {
                provider: r.get(0)?,
                model: any(r.get(1)?),
                key: any(r.get(2)?),
            },
            entry: r.get(3)?,
            since: r.get(4)?,
            last: r.get(5)?,
            confirmed: true,
            words: r.get(6)?,
        })
    })?;
    for mark in rows {
        let mark = mark?;
        if gone::heard_on_current_entry(&mark, providers) {
            snap.gone.push(mark);
        }
    }
    Ok(())
}

/// Deletes buckets past their grain's keep, benches an hour past their end,
/// and learned limits long unconfirmed.
fn prune(conn: &mut Connection, now: Millis) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for (grain, keep) in KEEP.iter().enumerate() {
        tx.execute(
            "DELETE FROM usage WHERE grain = ?1 AND start < ?2",
            params![grain as i64, now - keep],
        )?;
    }
    tx.execute("DELETE FROM cooldowns WHERE until < ?1", [now - 3_600_000])?;
    // A lone "not found" that nobody confirmed in time is forgotten.
    tx.execute(
        "DELETE FROM gone WHERE confirmed = 0 AND last < ?1",
        [now - gone::CONFIRM_WINDOW],
    )?;
    tx.execute(
        "DELETE FROM learned WHERE confirmed_at < ?1",
        [now - 4 * LEARNED_TTL],
    )?;
    tx.commit()
}

#[cfg(unix)]
pub(super) fn process_alive(pid: i64) -> bool {
    if pid == i64::from(std::process::id()) {
        return true;
    }
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // Signal 0 checks existence; EPERM means it exists but is not ours.
    // SAFETY: kill with signal 0 sends nothing; it only checks the pid.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(not(unix))]
pub(super) fn process_alive(_pid: i64) -> bool {
    true
}

/// Reads use per (model, key) for `providers`, and every bench, learned limit
/// and calibration, at `now`. Rows stamped after `now` (a clock that went
/// back) count as use made now.
fn read_snapshot(
    conn: &Connection,
    providers: &[&Provider],
    now: Millis,
) -> rusqlite::Result<UsageSnapshot> {
    let mut snap = UsageSnapshot {
        now,
        ..Default::default()
    };
    let mut buckets = conn.prepare_cached(
        "SELECT model, key_fp, grain, SUM(requests), SUM(tokens), MIN(start) FROM usage
         WHERE provider = ?1 AND ((grain = 0 AND start > ?2) OR (grain = 1 AND start > ?3)
                                  OR (grain = 2 AND start > ?4) OR (grain = 3 AND start > ?5))
         GROUP BY model, key_fp, grain",
    )?;
    let mut leases = conn.prepare_cached(
        "SELECT model, key_fp, pid, ts, tokens, minute_tokens FROM leases WHERE provider = ?1",
    )?;
    for p in providers {
        // A bucket overlaps a window when it ends after the window starts.
        let mut after = [0i64; 4];
        for (i, w) in WINDOWS.iter().enumerate() {
            after[i] = window_start(*w, reset_of(p, *w), now) - GRAINS[i];
        }
        let rows =
            buckets.query_map(params![p.id, after[0], after[1], after[2], after[3]], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })?;
        for row in rows {
            let (m, k, grain, requests, tokens, oldest) = row?;
            let Some(g) = usize::try_from(grain).ok().filter(|g| *g < 4) else {
                continue;
            };
            let c = snap.usage.entry((p.id.clone(), m, k)).or_default();
            c.requests[g] += requests.max(0) as u64;
            c.tokens[g] += tokens.max(0) as u64;
            // It leaves the (rolling) window when the bucket's end is a window behind now.
            c.leaves_at[g] = Some(oldest.min(now) + GRAINS[g] + window_len(WINDOWS[g]));
        }
        let rows = leases.query_map(params![p.id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        for row in rows {
            let (m, k, pid, ts, tokens, minute) = row?;
            // A lease whose process died (kill -9) still counts as use (the
            // next write settles it) but is not in flight.
            let c = snap.usage.entry((p.id.clone(), m, k)).or_default();
            let leaves = WINDOWS.map(|w| Some(ts.min(now) + window_len(w)));
            c.add_request(tokens.max(0) as u64, leaves);
            c.tokens[0] += (minute.max(0) as u64).saturating_sub(tokens.max(0) as u64);
            if process_alive(pid) {
                c.in_flight += 1;
            }
        }
    }
    read_benches(conn, &mut snap)?;
    read_gone(conn, providers, &mut snap)?;
    Ok(snap)
}

/// Reads what is not use into a snapshot: benches in force, learned limits
/// still confirmed, calibration, and recent failures per model.
fn read_benches(conn: &Connection, snap: &mut UsageSnapshot) -> rusqlite::Result<()> {
    let now = snap.now;
    let mut stmt = conn.prepare_cached(
        "SELECT provider, model, key_fp, until, stated, reason, strikes FROM cooldowns WHERE until > ?1",
    )?;
    let rows = stmt.query_map([now], |r| {
        let any = |v: String| (v != ANY).then_some(v);
        Ok(Cooldown {
            scope: Scope {
                provider: r.get(0)?,
                model: any(r.get(1)?),
                key: any(r.get(2)?),
            },
            until: r.get(3)?,
            stated: r.get(4)?,
            reason: r.get(5)?,
            strikes: r.get(6)?,
        })
    })?;
    snap.cooldowns = rows.collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare_cached(
        "SELECT provider, model, limit_key, max FROM learned WHERE confirmed_at >= ?1",
    )?;
    let rows = stmt.query_map([now - LEARNED_TTL], |r| {
        Ok((
            (r.get(0)?, r.get(1)?, r.get(2)?),
            r.get::<_, i64>(3)?.max(0) as u64,
        ))
    })?;
    snap.learned = rows.collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare_cached("SELECT provider, tokens_per_char FROM calibration")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    snap.tokens_per_char = rows.collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare_cached(
        "SELECT provider, model, SUM(failures) FROM usage
         WHERE grain = 1 AND start > ?1 AND failures > 0 GROUP BY provider, model",
    )?;
    let rows = stmt.query_map([now - 3_600_000], |r| {
        Ok((
            (r.get(0)?, r.get(1)?),
            r.get::<_, i64>(2)?.clamp(0, i64::from(u32::MAX)) as u32,
        ))
    })?;
    snap.recent_failures = rows.collect::<Result<_, _>>()?;
    let mut stmt =
        conn.prepare_cached("SELECT provider, model, task_type, passes, fails, at FROM verdicts")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            (r.get(0)?, r.get(1)?, r.get(2)?),
            Tally {
                passes: r.get(3)?,
                fails: r.get(4)?,
                at: r.get(5)?,
            },
        ))
    })?;
    snap.verdicts = rows.collect::<Result<_, _>>()?;
    Ok(())
}

/// Test support: a store in a fresh directory, and a catalog slot.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A fixed "now" for tests: 2026-11-19T08:26:40Z.
    pub(crate) const NOW: Millis = 1_795_000_000_000;

    /// A catalog of one provider `p` (day resets at Pacific midnight) with
    /// models `a` (its `limits`) and `b`, and `pool` added to the provider.
    pub(crate) fn catalog(limits: &str, pool: &str) -> Arc<Catalog> {
        let text = format!(
            "[providers.p]\nbase_url = \"https://p.example/v1\"\nday_reset = \"America/Los_Angeles\"\n{pool}\n[providers.p.models.a]\ncontext = 8192\nlimits = {{ {limits} }}\n[providers.p.models.b]\ncontext = 8192\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let mut cat = crate::config::load_from(Some(&path), &|_| None);
        assert!(cat.problems.is_empty(), "{:?}", cat.problems);
        cat.providers.retain(|p| p.id == "p");
        Arc::new(cat)
    }

    pub(crate) fn slot(cat: &Arc<Catalog>, model: usize, key: &str) -> Slot {
        Slot {
            catalog: cat.clone(),
            provider: 0,
            model,
            key_fp: key.into(),
        }
    }

    pub(crate) fn fresh() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), NOW).unwrap();
        (dir, store)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::quota::{Backoff, Bench};

    fn ms(rfc3339: &str) -> Millis {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    fn ok(tokens: u64) -> AttemptRecord {
        AttemptRecord {
            reached: true,
            need: Need::flat(tokens),
            ok: true,
            calibration: None,
            bench: None,
            learned: None,
            gone: None,
        }
    }

    /// A lease that reserved nothing (id -1), to commit outcomes directly.
    fn unreserved(model: &str, key: &str) -> Lease {
        Lease {
            id: -1,
            provider: "p".into(),
            model: model.into(),
            key_fp: key.into(),
        }
    }

    async fn snap(store: &SqliteStore, cat: &Arc<Catalog>, now: Millis) -> UsageSnapshot {
        store.snapshot(cat.clone(), vec![0], now).await.unwrap()
    }

    #[tokio::test]
    async fn lease_respects_every_window_and_rolls_over_at_midnight() {
        let (_dir, store) = fresh();
        let cat = catalog("rpd = 2", "");
        let t0 = ms("2026-11-24T07:58:00Z");
        for _ in 0..2 {
            let lease = store
                .lease(slot(&cat, 0, "k"), Need::flat(10), t0)
                .await
                .unwrap()
                .unwrap();
            store.commit(lease, ok(10), t0).await.unwrap();
        }
        match store
            .lease(slot(&cat, 0, "k"), Need::flat(10), t0)
            .await
            .unwrap()
        {
            Err(Blocked::Full {
                used: 2,
                max: 2,
                frees_at,
                ..
            }) => {
                assert_eq!(
                    frees_at,
                    Some(ms("2026-11-24T08:00:00Z")),
                    "Pacific midnight"
                );
            }
            other => panic!("{other:?}"),
        }
        // One millisecond after Pacific midnight the day is new.
        let after = ms("2026-11-24T08:00:00.001Z");
        assert!(
            store
                .lease(slot(&cat, 0, "k"), Need::flat(10), after)
                .await
                .unwrap()
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_minute_window_frees_a_minute_after_its_oldest_use() {
        let (_dir, store) = fresh();
        let cat = catalog("rpm = 1", "");
        let t0 = ms("2026-11-24T10:00:00.400Z");
        let lease = store
            .lease(slot(&cat, 0, "k"), Need::flat(1), t0)
            .await
            .unwrap()
            .unwrap();
        store.commit(lease, ok(1), t0).await.unwrap();
        let t1 = t0 + 30_000;
        let Err(Blocked::Full {
            frees_at: Some(at), ..
        }) = store
            .lease(slot(&cat, 0, "k"), Need::flat(1), t1)
            .await
            .unwrap()
        else {
            panic!("rpm 1 is used")
        };
        // The second bucket holding t0 counts whole: at most one second late.
        assert!(at > t0 + 60_000 && at <= t0 + 61_000, "{}", at - t0);
        assert!(
            store
                .lease(slot(&cat, 0, "k"), Need::flat(1), at)
                .await
                .unwrap()
                .is_ok()
        );
    }

    #[tokio::test]
    async fn leases_count_until_committed_or_released() {
        let (_dir, store) = fresh();
        let cat = catalog("rpm = 1", "");
        let now = NOW;
        let held = store
            .lease(slot(&cat, 0, "k"), Need::flat(1), now)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(
            store
                .lease(slot(&cat, 0, "k"), Need::flat(1), now)
                .await
                .unwrap(),
            Err(Blocked::Full { .. })
        ));
        store.release(held, now).await.unwrap();
        // A released (cancelled) lease counts as a request made: rpm 1 is used.
        assert!(matches!(
            store
                .lease(slot(&cat, 0, "k"), Need::flat(1), now)
                .await
                .unwrap(),
            Err(Blocked::Full { used: 1, .. })
        ));
        assert_eq!(
            store.in_flight(now).await.unwrap(),
            0,
            "but it is no longer in flight"
        );
    }

    #[tokio::test]
    async fn pools_are_counted_once_across_models() {
        let (_dir, store) = fresh();
        let cat = catalog(
            "rpm = 100",
            "[providers.p.pools.acct]\nlimits = { rpm = 3 }\n",
        );
        let now = NOW;
        for m in [0, 1, 0] {
            let l = store
                .lease(slot(&cat, m, "k"), Need::flat(1), now)
                .await
                .unwrap()
                .unwrap();
            store.commit(l, ok(1), now).await.unwrap();
        }
        let err = store
            .lease(slot(&cat, 1, "k"), Need::flat(1), now)
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(&err, Blocked::Full { limit, .. } if limit == "rpm of pool acct"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn the_minute_window_counts_what_the_provider_counts_on_arrival() {
        let (_dir, store) = fresh();
        let cat = catalog("tpm = 1000, tpd = 100000", "");
        let now = NOW;
        let need = Need {
            tokens: 100,
            minute_tokens: 900,
        };
        let l = store
            .lease(slot(&cat, 0, "k"), need, now)
            .await
            .unwrap()
            .unwrap();
        let rec = AttemptRecord { need, ..ok(100) };
        store.commit(l, rec, now).await.unwrap();
        let s = snap(&store, &cat, now).await;
        let c = s.usage[&("p".into(), "a".into(), "k".into())];
        assert_eq!((c.tokens[0], c.tokens[2]), (900, 100));
        assert!(
            store
                .lease(slot(&cat, 0, "k"), Need::flat(200), now)
                .await
                .unwrap()
                .is_err()
        );
    }

    #[tokio::test]
    async fn guessed_bench_ends_on_success_stated_one_stays() {
        let (_dir, store) = fresh();
        let cat = catalog("rpm = 100", "");
        let now = NOW;
        let bench = |scope: Scope, stated: bool| Bench {
            scope,
            reason: "500 server error".into(),
            backoff: Backoff::Fixed(Duration::from_secs(60)),
            stated,
        };
        let failed = |b: Bench| AttemptRecord {
            ok: false,
            bench: Some(b),
            ..ok(1)
        };
        store
            .commit(
                unreserved("a", "k"),
                failed(bench(Scope::model("p", "a"), false)),
                now,
            )
            .await
            .unwrap();
        assert!(matches!(
            store
                .lease(slot(&cat, 0, "k"), Need::flat(1), now)
                .await
                .unwrap(),
            Err(Blocked::Benched { .. })
        ));
        // A success on another model does not clear a's bench; one on a does.
        store
            .commit(unreserved("b", "k"), ok(1), now)
            .await
            .unwrap();
        assert!(
            store
                .lease(slot(&cat, 0, "k"), Need::flat(1), now)
                .await
                .unwrap()
                .is_err()
        );
        store
            .commit(unreserved("a", "k"), ok(1), now)
            .await
            .unwrap();
        assert!(
            store
                .lease(slot(&cat, 0, "k"), Need::flat(1), now)
                .await
                .unwrap()
                .is_ok()
        );
        store
            .commit(
                unreserved("a", "k"),
                failed(bench(Scope::key("p", "k"), true)),
                now,
            )
            .await
            .unwrap();
        store
            .commit(unreserved("a", "k"), ok(1), now)
            .await
            .unwrap();
        assert!(matches!(
            store
                .lease(slot(&cat, 0, "k"), Need::flat(1), now)
                .await
                .unwrap(),
            Err(Blocked::Benched { .. })
        ));
        assert!(
            store
                .lease(slot(&cat, 0, "other"), Need::flat(1), now)
                .await
                .unwrap()
                .is_ok(),
            "the bench is on one key"
        );
    }

    #[tokio::test]
    async fn strikes_escalate_guessed_benches() {
        let (_dir, store) = fresh();
        let cat = catalog("", "");
        let now = NOW;
        let rec = AttemptRecord {
            ok: false,
            bench: Some(Bench {
                scope: Scope::provider("p"),
                reason: "503".into(),
                backoff: Backoff::Doubling {
                    base: Duration::from_secs(10),
                    max_doublings: 4,
                    cap: Duration::from_secs(600),
                },
                stated: false,
            }),
            ..ok(1)
        };
        for _ in 0..3 {
            store
                .commit(unreserved("a", "k"), rec.clone(), now)
                .await
                .unwrap();
        }
        let s = snap(&store, &cat, now).await;
        let c = s.bench_of("p", "a", "k").unwrap();
        assert_eq!((c.strikes, c.until), (3, now + 40_000));
    }

    #[tokio::test]
    async fn learned_limits_lower_while_confirmed_and_expire_after_a_week() {
        let (_dir, store) = fresh();
        let cat = catalog("tpm = 5000", "");
        let now = NOW;
        let learn = |v| AttemptRecord {
            reached: false,
            learned: Some(("tpm", v)),
            ..ok(0)
        };
        for v in [3000, 9000] {
            store
                .commit(unreserved("a", "k"), learn(v), now)
                .await
                .unwrap();
        }
        let s = snap(&store, &cat, now).await;
        assert_eq!(s.learned[&("p".into(), "a".into(), "tpm".into())], 3000);
        // Unconfirmed for a week: forgotten when read, replaced when learned again.
        let later = now + LEARNED_TTL + 1;
        assert!(snap(&store, &cat, later).await.learned.is_empty());
        store
            .commit(unreserved("a", "k"), learn(4000), later)
            .await
            .unwrap();
        assert_eq!(
            snap(&store, &cat, later).await.learned[&("p".into(), "a".into(), "tpm".into())],
            4000
        );
    }

    #[tokio::test]
    async fn dead_process_leases_are_settled_once() {
        let (_dir, store) = fresh();
        let cat = catalog("rpm = 2", "");
        let now = NOW;
        store
            .run(move |c| {
                c.execute(
                    "INSERT INTO leases (ts, expires, pid, provider, model, key_fp, tokens) VALUES (?1, ?2, 999999999, 'p', 'a', 'k', 1)",
                    params![now, now + 600_000],
                )
            })
            .await
            .unwrap();
        let s = snap(&store, &cat, now).await;
        let c = s.usage[&("p".into(), "a".into(), "k".into())];
        assert_eq!(
            (c.requests[0], c.in_flight),
            (1, 0),
            "counted as use, not in flight"
        );
        // A lease of ours that expires before it is committed is settled by
        // the reaper; the late commit must not count it a second time.
        let mine = store
            .lease(slot(&cat, 0, "k"), Need::flat(1), now)
            .await
            .unwrap()
            .unwrap();
        let later = now + 10_000_000;
        assert_eq!(store.in_flight(later).await.unwrap(), 0);
        store.commit(mine, ok(1), later).await.unwrap();
        let s = snap(&store, &cat, later).await;
        assert_eq!(
            s.usage[&("p".into(), "a".into(), "k".into())].requests[3],
            2,
            "twice in the month, not three times"
        );
    }

    #[tokio::test]
    async fn future_stamps_from_a_clock_that_went_back_are_moved_to_now() {
        let (_dir, store) = fresh();
        let cat = catalog("rpm = 1", "");
        let future = NOW + 3_600_000;
        let l = store
            .lease(slot(&cat, 0, "k"), Need::flat(1), future)
            .await
            .unwrap()
            .unwrap();
        store.commit(l, ok(1), future).await.unwrap();
        // The clock is set back an hour: the future use counts as made now...
        let now = future - 3_600_000;
        let Err(Blocked::Full {
            frees_at: Some(at), ..
        }) = store
            .lease(slot(&cat, 0, "k"), Need::flat(1), now)
            .await
            .unwrap()
        else {
            panic!("the future request counts now")
        };
        assert!(
            at <= now + 61_000,
            "room again within a minute, not in an hour: {}",
            at - now
        );
        // ...and a minute later it is gone, not an hour later.
        assert!(
            store
                .lease(slot(&cat, 0, "k"), Need::flat(1), now + 62_000)
                .await
                .unwrap()
                .is_ok()
        );
    }

    #[test]
    fn a_version_1_file_is_migrated_with_its_last_month() {
        let dir = tempfile::tempdir().unwrap();
        let now = NOW;
        {
            let c = Connection::open(dir.path().join("ledger.sqlite")).unwrap();
            c.execute_batch(
                "CREATE TABLE events (id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL, key_fp TEXT NOT NULL, requests INTEGER NOT NULL, tokens INTEGER NOT NULL, outcome TEXT NOT NULL);
                 CREATE TABLE leases (id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, expires INTEGER NOT NULL, pid INTEGER NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL, key_fp TEXT NOT NULL, tokens INTEGER NOT NULL);
                 CREATE TABLE learned (provider TEXT NOT NULL, model TEXT NOT NULL, limit_key TEXT NOT NULL, max INTEGER NOT NULL, PRIMARY KEY (provider, model, limit_key));",
            )
            .unwrap();
            for (ts, outcome) in [
                (now - 10_000, "ok"),
                (now - 20_000, "500"),
                (now - 40 * 86_400_000, "ok"),
            ] {
                c.execute(
                    "INSERT INTO events (ts, provider, model, key_fp, requests, tokens, outcome) VALUES (?1, 'p', 'a', 'k', 1, 7, ?2)",
                    params![ts, outcome],
                )
                .unwrap();
            }
            c.execute("INSERT INTO learned VALUES ('p', 'a', 'tpm', 3000)", [])
                .unwrap();
        }
        let store = SqliteStore::open(dir.path(), now).unwrap();
        let cat = catalog("", "");
        let s = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(snap(&store, &cat, now));
        let c = s.usage[&("p".into(), "a".into(), "k".into())];
        assert_eq!(
            (c.requests[0], c.requests[3], c.tokens[3]),
            (2, 2, 14),
            "the 40-day-old event is past every window"
        );
        assert_eq!(s.recent_failures[&("p".into(), "a".into())], 1);
        assert_eq!(
            s.learned.len(),
            1,
            "learned limits carry over, confirmed at migration"
        );
    }

    #[test]
    fn corrupt_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ledger.sqlite"),
            b"this is not a database, just junk bytes that go on",
        )
        .unwrap();
        let store = SqliteStore::open(dir.path(), NOW).unwrap();
        assert!(store.warning().unwrap().contains("moved to"));
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(std::result::Result::ok)
            .any(|e| e.file_name().to_string_lossy().contains("corrupt"));
        assert!(aside);
    }

    /// A check reads a bounded number of rows: a month of history costs the
    /// same rows as a minute of it.
    #[test]
    fn history_does_not_grow_what_a_check_reads() {
        let (_dir, store) = fresh();
        let now = NOW;
        store
            .seed_history("p", "a", "k", 50_000, now - 30 * 86_400_000, now)
            .unwrap();
        let rows: i64 = store
            .inner
            .with(|c| c.query_row("SELECT COUNT(*) FROM usage", [], |r| r.get(0)))
            .unwrap();
        assert!(rows <= 120 + 120 + 48 + 32, "{rows} rows for 50k requests");
        let cat = catalog("rpd = 100000", "");
        let lease = store
            .lease_blocking(&slot(&cat, 0, "k"), Need::flat(1), now)
            .unwrap();
        assert!(lease.is_ok(), "{lease:?}");
    }
}
