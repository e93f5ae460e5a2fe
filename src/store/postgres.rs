//! The ledger on PostgreSQL, for keys used from several machines
//! (`[settings] ledger = "postgres://..."` or `$FREEPOOL_LEDGER_URL`).
//!
//! Same semantics as the SQLite file, one count for every machine:
//! - check and reserve in one transaction, serialized per provider by a
//!   transaction-scoped advisory lock (`pg_advisory_xact_lock` on the
//!   provider's id): every limit a lease checks (models, pools, the
//!   concurrency cap) belongs to one provider, so one lock per provider is
//!   exactly the scope, readers never wait, and nothing has to be retried as
//!   a serializable transaction would;
//! - time is the database's clock, so machines whose clocks disagree still
//!   agree on windows;
//! - a lease carries its host id and pid: this host's leases of dead
//!   processes are settled at once, other hosts' at their expiry (a pid on
//!   another machine cannot be probed), which is the lease's heartbeat;
//! - the schema is created on first use and versioned in `freepool_meta`.
//!
//! When the database cannot be reached every call fails closed: no lease,
//! so no request goes out uncounted.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::{Client, GenericClient, NoTls};

use super::sqlite::{ANY, GRAINS, KEEP, LEARNED_TTL, process_alive};
use super::{AttemptRecord, Error, Lease, Slot, Store, StoreFuture};
use crate::config::{Catalog, Provider};
use crate::quota::{
    Blocked, Cooldown, GoneMark, GoneReport, Millis, Need, Scope, Tally, UsageSnapshot, WINDOWS,
    gone, reset_of, window_len, window_start,
};

/// The schema version this build writes.
const VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS freepool_meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS freepool_usage (
    provider TEXT NOT NULL, grain INT NOT NULL, start BIGINT NOT NULL, model TEXT NOT NULL,
    key_fp TEXT NOT NULL, requests BIGINT NOT NULL, tokens BIGINT NOT NULL, failures BIGINT NOT NULL,
    PRIMARY KEY (provider, grain, start, model, key_fp));
CREATE INDEX IF NOT EXISTS freepool_usage_by_age ON freepool_usage (grain, start);
CREATE TABLE IF NOT EXISTS freepool_leases (
    id BIGSERIAL PRIMARY KEY, ts BIGINT NOT NULL, expires BIGINT NOT NULL, host TEXT NOT NULL,
    pid BIGINT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL, key_fp TEXT NOT NULL,
    tokens BIGINT NOT NULL, minute_tokens BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS freepool_cooldowns (
    provider TEXT NOT NULL, model TEXT NOT NULL, key_fp TEXT NOT NULL, until BIGINT NOT NULL,
    stated BOOLEAN NOT NULL, reason TEXT NOT NULL, strikes INT NOT NULL, set_at BIGINT NOT NULL,
    PRIMARY KEY (provider, model, key_fp));
CREATE TABLE IF NOT EXISTS freepool_learned (
    provider TEXT NOT NULL, model TEXT NOT NULL, limit_key TEXT NOT NULL, max BIGINT NOT NULL,
    confirmed_at BIGINT NOT NULL, PRIMARY KEY (provider, model, limit_key));
CREATE TABLE IF NOT EXISTS freepool_calibration (provider TEXT PRIMARY KEY, tokens_per_char DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS freepool_verdicts (
    provider TEXT NOT NULL, model TEXT NOT NULL, task_type TEXT NOT NULL, passes DOUBLE PRECISION NOT NULL,
    fails DOUBLE PRECISION NOT NULL, at BIGINT NOT NULL, PRIMARY KEY (provider, model, task_type));
CREATE TABLE IF NOT EXISTS freepool_gone (
    provider TEXT NOT NULL, model TEXT NOT NULL, key_fp TEXT NOT NULL, entry TEXT NOT NULL,
    since BIGINT NOT NULL, last BIGINT NOT NULL, confirmed BOOLEAN NOT NULL, words TEXT NOT NULL,
    PRIMARY KEY (provider, model, key_fp));
";

/// The database's clock, in Unix milliseconds.
const DB_NOW: &str = "SELECT (extract(epoch from clock_timestamp()) * 1000)::BIGINT";

/// The PostgreSQL ledger; cheap to clone.
#[derive(Clone)]
pub(crate) struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    shown: String,
    host: String,
    client: Mutex<Option<Client>>,
}

/// The URL with its password hidden, for `status` and errors.
pub(crate) fn shown_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "postgres://…".into();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some((auth, host)) => (Some(auth), host),
        None => (None, rest),
    };
    let mut out = format!("{scheme}://");
    if let Some(auth) = auth {
        let user = auth.split(':').next().unwrap_or("");
        let _ = write!(out, "{user}@");
    }
    // Query parameters may carry a password too.
    out.push_str(host.split('?').next().unwrap_or(host));
    out
}

/// TLS with rustls (ring), verified against the system's root certificates.
fn tls() -> tokio_postgres_rustls::MakeRustlsConnect {
    static CONFIG: std::sync::OnceLock<rustls::ClientConfig> = std::sync::OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_or_else(
                |_| rustls::ClientConfig::builder().with_root_certificates(roots.clone()),
                |b| b.with_root_certificates(roots.clone()),
            )
            .with_no_client_auth()
    });
    tokio_postgres_rustls::MakeRustlsConnect::new(config.clone())
}

/// The connection settings for `url`: a `password_command` query parameter
/// is run once (through `sh -c`) for the password; with no password either
/// way, `$PGPASSFILE` (else `~/.pgpass`) is read as libpq reads it.
fn connect_config(url: &str) -> Result<tokio_postgres::Config, String> {
    let (url, command) = take_param(url, "password_command");
    let mut cfg: tokio_postgres::Config = url
        .parse()
        .map_err(|_| "the ledger URL does not read as postgres://user@host:port/db".to_owned())?;
    if cfg.get_password().is_some() {
        return Ok(cfg);
    }
    if let Some(cmd) = command {
        let out = std::process::Command::new("sh")
            .args(["-c", &cmd])
            .stderr(std::process::Stdio::null())
            .output()
            .map_err(|e| {
                format!(
                    "the password command could not run: {}",
                    crate::words::io(e.kind())
                )
            })?;
        if !out.status.success() {
            return Err(format!(
                "the password command failed ({})",
                crate::words::exit(out.status)
            ));
        }
        let pw = String::from_utf8_lossy(&out.stdout)
            .trim_end_matches(['\r', '\n'])
            .to_owned();
        cfg.password(pw);
        return Ok(cfg);
    }
    let file = crate::config::env::var("PGPASSFILE")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            crate::config::env::var("HOME").map(|h| std::path::Path::new(&h).join(".pgpass"))
        });
    if let Some(text) = file.and_then(|f| std::fs::read_to_string(f).ok()) {
        let host = cfg
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(_) => "localhost".into(),
            })
            .next()
            .unwrap_or_else(|| "localhost".into());
        let port = cfg.get_ports().first().copied().unwrap_or(5432).to_string();
        let user = cfg.get_user().unwrap_or_default().to_owned();
        let db = cfg.get_dbname().map_or_else(|| user.clone(), str::to_owned);
        if let Some(pw) = pgpass_lookup(&text, [&host, &port, &db, &user]) {
            cfg.password(pw);
        }
    }
    Ok(cfg)
}

/// `url` without the query parameter `name`, and that parameter's value
/// (percent-decoded).
fn take_param(url: &str, name: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut value = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.split_once('=') {
            Some((k, v)) if k == name => {
                value = Some(percent_decode(v));
                false
            }
            _ => true,
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, value)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1..i + 3)) {
            (b'%', Some(h))
                if std::str::from_utf8(h).is_ok_and(|h| u8::from_str_radix(h, 16).is_ok()) =>
            {
                out.push(
                    u8::from_str_radix(std::str::from_utf8(h).unwrap_or("0"), 16).unwrap_or(0),
                );
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The password a `.pgpass` text gives for (host, port, database, user):
/// the first line whose four fields match (`*` matches anything; `\:` and
/// `\\` are a colon and a backslash).
fn pgpass_lookup(text: &str, want: [&str; 4]) -> Option<String> {
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut fields = Vec::new();
        let mut cur = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                }
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() == 5 && fields.iter().zip(want).all(|(f, w)| f == "*" || f == w) {
            return fields.pop();
        }
    }
    None
}

/// This machine's id for leases: `$FREEPOOL_HOST_ID`, else the machine id,
/// else the host name.
fn host_id() -> String {
    crate::config::env::var("FREEPOOL_HOST_ID")
        .or_else(|| {
            std::fs::read_to_string("/etc/machine-id")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown-host".into())
}

impl PostgresStore {
    /// Connects and creates the schema if needed.
    ///
    /// # Errors
    ///
    /// The database cannot be reached, refuses the login, or the schema
    /// cannot be created.
    pub(crate) async fn open(url: &str) -> Result<PostgresStore, Error> {
        let store = PostgresStore {
            inner: Arc::new(Inner {
                url: url.to_owned(),
                shown: shown_url(url),
                host: host_id(),
                client: Mutex::new(None),
            }),
        };
        store.with(|_| Box::pin(async { Ok(()) })).await?;
        Ok(store)
    }

    fn unreachable(&self, e: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::Unreachable {
            url: self.inner.shown.clone(),
            source: Box::new(e),
        }
    }

    /// Runs `f` on a live connection, connecting (and creating the schema)
    /// first when there is none or the last one died.
    async fn with<T, F>(&self, f: F) -> Result<T, Error>
    where
        F: for<'c> FnOnce(
            &'c mut Client,
        )
            -> futures::future::BoxFuture<'c, Result<T, tokio_postgres::Error>>,
    {
        let mut guard = self.inner.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            let cfg = connect_config(&self.inner.url).map_err(|why| Error::Unreachable {
                url: self.inner.shown.clone(),
                source: why.into(),
            })?;
            let timed_out = || self.unreachable(std::io::Error::from(std::io::ErrorKind::TimedOut));
            let client = if cfg.get_ssl_mode() == tokio_postgres::config::SslMode::Disable {
                let (client, conn) =
                    tokio::time::timeout(Duration::from_secs(5), cfg.connect(NoTls))
                        .await
                        .map_err(|_| timed_out())?
                        .map_err(|e| self.unreachable(e))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                client
            } else {
                // `prefer` (the default) and `require`: TLS when the server offers it.
                let (client, conn) =
                    tokio::time::timeout(Duration::from_secs(5), cfg.connect(tls()))
                        .await
                        .map_err(|_| timed_out())?
                        .map_err(|e| self.unreachable(e))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                client
            };
            migrate(&client).await.map_err(|e| self.db(e))?;
            *guard = Some(client);
        }
        let Some(client) = guard.as_mut() else {
            return Err(Error::Task);
        };
        let r = f(client).await;
        if r.is_err() && client.is_closed() {
            *guard = None;
        }
        r.map_err(|e| {
            if e.is_closed() {
                self.unreachable(e)
            } else {
                self.db(e)
            }
        })
    }

    fn db(&self, e: tokio_postgres::Error) -> Error {
        Error::Db {
            path: self.inner.shown.clone().into(),
            source: Box::new(e),
        }
    }
}

async fn migrate(client: &Client) -> Result<(), tokio_postgres::Error> {
    // One creator at a time, however many machines start together.
    client
        .batch_execute("SELECT pg_advisory_lock(7173001); ")
        .await?;
    let done = async {
        client.batch_execute(SCHEMA).await?;
        client
            .execute(
                "INSERT INTO freepool_meta (name, value) VALUES ('schema', $1) ON CONFLICT (name) DO NOTHING",
                &[&VERSION],
            )
            .await?;
        Ok::<_, tokio_postgres::Error>(())
    }
    .await;
    client
        .batch_execute("SELECT pg_advisory_unlock(7173001);")
        .await?;
    done
}

async fn db_now<C: GenericClient>(c: &C) -> Result<Millis, tokio_postgres::Error> {
    Ok(c.query_one(DB_NOW, &[]).await?.get(0))
}

async fn lock_provider<C: GenericClient>(
    c: &C,
    provider: &str,
) -> Result<(), tokio_postgres::Error> {
    c.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&provider])
        .await
        .map(|_| ())
}

async fn add_use<C: GenericClient>(
    c: &C,
    (p, m, k): (&str, &str, &str),
    ts: Millis,
    need: Need,
    failed: bool,
) -> Result<(), tokio_postgres::Error> {
    for (grain, size) in GRAINS.iter().enumerate() {
        let tokens = if grain == 0 {
            need.minute_tokens.max(need.tokens)
        } else {
            need.tokens
        };
        c.execute(
            "INSERT INTO freepool_usage (provider, grain, start, model, key_fp, requests, tokens, failures)
             VALUES ($1, $2, $3, $4, $5, 1, $6, $7)
             ON CONFLICT (provider, grain, start, model, key_fp) DO UPDATE SET
               requests = freepool_usage.requests + 1,
               tokens = freepool_usage.tokens + excluded.tokens,
               failures = freepool_usage.failures + excluded.failures",
            &[
                &p,
                &(grain as i32),
                &(ts.div_euclid(*size) * size),
                &m,
                &k,
                &(tokens.min(i64::MAX as u64) as i64),
                &i64::from(failed),
            ],
        )
        .await?;
    }
    Ok(())
}

/// Turns the leases picked by `cond` (with `$1`) into counted use, at the
/// time each was taken, and deletes them.
async fn settle<C: GenericClient>(
    c: &C,
    cond: &str,
    args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let rows = c
        .query(
            &format!(
                "DELETE FROM freepool_leases WHERE {cond} RETURNING provider, model, key_fp, ts, tokens, minute_tokens"
            ),
            args,
        )
        .await?;
    for r in &rows {
        let need = Need {
            tokens: r.get::<_, i64>(4).max(0) as u64,
            minute_tokens: r.get::<_, i64>(5).max(0) as u64,
        };
        add_use(c, (r.get(0), r.get(1), r.get(2)), r.get(3), need, false).await?;
    }
    Ok(rows.len() as u64)
}

/// Settles expired leases, and this host's leases whose process is gone.
async fn reap<C: GenericClient>(
    c: &C,
    host: &str,
    now: Millis,
) -> Result<(), tokio_postgres::Error> {
    let pids: Vec<i64> = c
        .query(
            "SELECT DISTINCT pid FROM freepool_leases WHERE host = $1",
            &[&host],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for pid in pids.into_iter().filter(|p| !process_alive(*p)) {
        settle(c, "host = $1 AND pid = $2", &[&host, &pid]).await?;
    }
    settle(c, "expires < $1", &[&now]).await?;
    Ok(())
}

async fn read_snapshot<C: GenericClient>(
    c: &C,
    host: &str,
    providers: &[&Provider],
    now: Millis,
) -> Result<UsageSnapshot, tokio_postgres::Error> {
    let mut snap = UsageSnapshot {
        now,
        ..Default::default()
    };
    for p in providers {
        let mut after = [0i64; 4];
        for (i, w) in WINDOWS.iter().enumerate() {
            after[i] = window_start(*w, reset_of(p, *w), now) - GRAINS[i];
        }
        let rows = c
            .query(
                "SELECT model, key_fp, grain, SUM(requests)::BIGINT, SUM(tokens)::BIGINT, MIN(start) FROM freepool_usage
                 WHERE provider = $1 AND ((grain = 0 AND start > $2) OR (grain = 1 AND start > $3)
                                          OR (grain = 2 AND start > $4) OR (grain = 3 AND start > $5))
                 GROUP BY model, key_fp, grain",
                &[&p.id, &after[0], &after[1], &after[2], &after[3]],
            )
            .await?;
        for r in rows {
            let g: i32 = r.get(2);
            let Some(g) = usize::try_from(g).ok().filter(|g| *g < 4) else {
                continue;
            };
            let cnt = snap
                .usage
                .entry((p.id.clone(), r.get(0), r.get(1)))
                .or_default();
            cnt.requests[g] += r.get::<_, i64>(3).max(0) as u64;
            cnt.tokens[g] += r.get::<_, i64>(4).max(0) as u64;
            let oldest: i64 = r.get(5);
            cnt.leaves_at[g] = Some(oldest.min(now) + GRAINS[g] + window_len(WINDOWS[g]));
        }
        let rows = c
            .query(
                "SELECT model, key_fp, host, pid, ts, tokens, minute_tokens, expires FROM freepool_leases WHERE provider = $1",
                &[&p.id],
            )
            .await?;
        for r in rows {
            let (lhost, pid, ts): (String, i64, i64) = (r.get(2), r.get(3), r.get(4));
            let (tokens, minute, expires): (i64, i64, i64) = (r.get(5), r.get(6), r.get(7));
            let cnt = snap
                .usage
                .entry((p.id.clone(), r.get(0), r.get(1)))
                .or_default();
            let leaves = WINDOWS.map(|w| Some(ts.min(now) + window_len(w)));
            cnt.add_request(tokens.max(0) as u64, leaves);
            cnt.tokens[0] += (minute.max(0) as u64).saturating_sub(tokens.max(0) as u64);
            let alive = if lhost == host {
                process_alive(pid)
            } else {
                expires > now
            };
            if alive {
                cnt.in_flight += 1;
            }
        }
    }
    read_rest(c, providers, &mut snap).await?;
    Ok(snap)
}

/// Benches, learned limits, calibration, recent failures, verdicts, gone marks.
async fn read_rest<C: GenericClient>(
    c: &C,
    providers: &[&Provider],
    snap: &mut UsageSnapshot,
) -> Result<(), tokio_postgres::Error> {
    let now = snap.now;
    let any = |v: String| (v != ANY).then_some(v);
    for r in c
        .query(
            "SELECT provider, model, key_fp, until, stated, reason, strikes FROM freepool_cooldowns WHERE until > $1",
            &[&now],
        )
        .await?
    {
        snap.cooldowns.push(Cooldown {
            scope: Scope {
                provider: r.get(0),
                model: any(r.get(1)),
                key: any(r.get(2)),
            },
            until: r.get(3),
            stated: r.get(4),
            reason: r.get(5),
            strikes: u32::try_from(r.get::<_, i32>(6)).unwrap_or(0),
        });
    }
    for r in c
        .query(
            "SELECT provider, model, limit_key, max FROM freepool_learned WHERE confirmed_at >= $1",
            &[&(now - LEARNED_TTL)],
        )
        .await?
    {
        snap.learned.insert(
            (r.get(0), r.get(1), r.get(2)),
            r.get::<_, i64>(3).max(0) as u64,
        );
    }
    for r in c
        .query(
            "SELECT provider, tokens_per_char FROM freepool_calibration",
            &[],
        )
        .await?
    {
        snap.tokens_per_char.insert(r.get(0), r.get(1));
    }
    for r in c
        .query(
            "SELECT provider, model, SUM(failures)::BIGINT FROM freepool_usage
             WHERE grain = 1 AND start > $1 AND failures > 0 GROUP BY provider, model",
            &[&(now - 3_600_000)],
        )
        .await?
    {
        snap.recent_failures.insert(
            (r.get(0), r.get(1)),
            r.get::<_, i64>(2).clamp(0, i64::from(u32::MAX)) as u32,
        );
    }
    for r in c
        .query(
            "SELECT provider, model, task_type, passes, fails, at FROM freepool_verdicts",
            &[],
        )
        .await?
    {
        snap.verdicts.insert(
            (r.get(0), r.get(1), r.get(2)),
            Tally {
                passes: r.get(3),
                fails: r.get(4),
                at: r.get(5),
            },
        );
    }
    for r in c
        .query(
            "SELECT provider, model, key_fp, entry, since, last, words FROM freepool_gone WHERE confirmed",
            &[],
        )
        .await?
    {
        let mark = GoneMark {
            scope: Scope {
                provider: r.get(0),
                model: any(r.get(1)),
                key: any(r.get(2)),
            },
            entry: r.get(3),
            since: r.get(4),
            last: r.get(5),
            confirmed: true,
            words: r.get(6),
        };
        if gone::heard_on_current_entry(&mark, providers) {
            snap.gone.push(mark);
        }
    }
    Ok(())
}

async fn mark_gone<C: GenericClient>(
    c: &C,
    report: &GoneReport,
    now: Millis,
) -> Result<(), tokio_postgres::Error> {
    let (p, m, k) = (
        report.scope.provider.as_str(),
        report.scope.model.as_deref().unwrap_or(ANY),
        report.scope.key.as_deref().unwrap_or(ANY),
    );
    let held = c
        .query_opt(
            "SELECT entry, since, last, confirmed, words FROM freepool_gone WHERE provider=$1 AND model=$2 AND key_fp=$3",
            &[&p, &m, &k],
        )
        .await?
        .map(|r| GoneMark {
            scope: report.scope.clone(),
            entry: r.get(0),
            since: r.get(1),
            last: r.get(2),
            confirmed: r.get(3),
            words: r.get(4),
        });
    let mark = GoneMark::fold(held.as_ref(), report, now);
    c.execute(
        "INSERT INTO freepool_gone (provider, model, key_fp, entry, since, last, confirmed, words)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (provider, model, key_fp) DO UPDATE SET entry = excluded.entry, since = excluded.since,
           last = excluded.last, confirmed = excluded.confirmed, words = excluded.words",
        &[&p, &m, &k, &mark.entry, &mark.since, &mark.last, &mark.confirmed, &mark.words],
    )
    .await?;
    Ok(())
}

async fn commit_record<C: GenericClient>(
    c: &C,
    lease: &Lease,
    rec: &AttemptRecord,
    now: Millis,
) -> Result<(), tokio_postgres::Error> {
    let (p, m, k) = (
        lease.provider.as_str(),
        lease.model.as_str(),
        lease.key_fp.as_str(),
    );
    let held = c
        .execute("DELETE FROM freepool_leases WHERE id = $1", &[&lease.id])
        .await?;
    let reaped = held == 0 && lease.id >= 0;
    if rec.reached && !reaped {
        add_use(c, (p, m, k), now, rec.need, !rec.ok).await?;
    }
    match &rec.bench {
        Some(bench) => {
            let (bp, bm, bk) = (
                bench.scope.provider.as_str(),
                bench.scope.model.as_deref().unwrap_or(ANY),
                bench.scope.key.as_deref().unwrap_or(ANY),
            );
            let strikes: i32 = c
                .query_opt(
                    "SELECT strikes FROM freepool_cooldowns WHERE provider=$1 AND model=$2 AND key_fp=$3 AND set_at > $4",
                    &[&bp, &bm, &bk, &(now - 3_600_000)],
                )
                .await?
                .map_or(0, |r| r.get(0));
            if let Some(len) = bench.backoff.length(u32::try_from(strikes).unwrap_or(0)) {
                let until = now.saturating_add(len.as_millis().min(i64::MAX as u128) as i64);
                c.execute(
                    "INSERT INTO freepool_cooldowns (provider, model, key_fp, until, stated, reason, strikes, set_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (provider, model, key_fp) DO UPDATE SET
                       until = GREATEST(excluded.until, CASE WHEN freepool_cooldowns.stated THEN freepool_cooldowns.until ELSE 0 END),
                       stated = excluded.stated, reason = excluded.reason,
                       strikes = excluded.strikes, set_at = excluded.set_at",
                    &[&bp, &bm, &bk, &until, &bench.stated, &bench.reason, &(strikes + 1), &now],
                )
                .await?;
            }
        }
        None if rec.ok => {
            c.execute(
                "DELETE FROM freepool_cooldowns WHERE provider=$1 AND NOT stated AND (model=$2 OR model='*') AND (key_fp=$3 OR key_fp='*')",
                &[&p, &m, &k],
            )
            .await?;
            c.execute(
                "DELETE FROM freepool_gone WHERE provider=$1 AND model=$2 AND key_fp=$3",
                &[&p, &m, &k],
            )
            .await?;
        }
        None => {}
    }
    if let Some(report) = &rec.gone {
        mark_gone(c, report, now).await?;
    }
    if let Some((key, value)) = rec.learned {
        c.execute(
            "INSERT INTO freepool_learned (provider, model, limit_key, max, confirmed_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (provider, model, limit_key) DO UPDATE SET
               max = CASE WHEN freepool_learned.confirmed_at < $5 - $6 THEN excluded.max
                          ELSE LEAST(freepool_learned.max, excluded.max) END,
               confirmed_at = excluded.confirmed_at",
            &[&p, &m, &key, &(value.min(i64::MAX as u64) as i64), &now, &LEARNED_TTL],
        )
        .await?;
    }
    if let Some((chars, tokens)) = rec.calibration
        && chars >= 200
        && tokens > 0
    {
        let ratio = tokens as f64 / chars as f64;
        c.execute(
            "INSERT INTO freepool_calibration (provider, tokens_per_char) VALUES ($1, $2)
             ON CONFLICT (provider) DO UPDATE SET
               tokens_per_char = 0.8 * freepool_calibration.tokens_per_char + 0.2 * excluded.tokens_per_char",
            &[&p, &ratio],
        )
        .await?;
    }
    Ok(())
}

/// Deletes what no window needs any more (run now and then by commits).
async fn prune<C: GenericClient>(c: &C, now: Millis) -> Result<(), tokio_postgres::Error> {
    for (grain, keep) in KEEP.iter().enumerate() {
        c.execute(
            "DELETE FROM freepool_usage WHERE grain = $1 AND start < $2",
            &[&(grain as i32), &(now - keep)],
        )
        .await?;
    }
    c.execute(
        "DELETE FROM freepool_cooldowns WHERE until < $1",
        &[&(now - 3_600_000)],
    )
    .await?;
    c.execute(
        "DELETE FROM freepool_gone WHERE NOT confirmed AND last < $1",
        &[&(now - gone::CONFIRM_WINDOW)],
    )
    .await?;
    Ok(())
}

impl PostgresStore {
    /// Adds what another ledger holds to this one, in one transaction: use
    /// adds to use already here; the rest is kept where this one has none.
    /// Returns the number of rows carried.
    ///
    /// # Errors
    ///
    /// The database cannot be reached or refuses a write.
    pub(crate) async fn import(&self, e: super::Export) -> Result<usize, Error> {
        self.with(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                let mut n = 0;
                for (p, g, start, m, k, req, tok, fail) in &e.usage {
                    n += tx.execute(
                        "INSERT INTO freepool_usage (provider, grain, start, model, key_fp, requests, tokens, failures)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                         ON CONFLICT (provider, grain, start, model, key_fp) DO UPDATE SET
                           requests = freepool_usage.requests + excluded.requests,
                           tokens = freepool_usage.tokens + excluded.tokens,
                           failures = freepool_usage.failures + excluded.failures",
                        &[p, g, start, m, k, req, tok, fail],
                    ).await?;
                }
                for (p, m, k, until, stated, reason, strikes, set_at) in &e.cooldowns {
                    n += tx.execute(
                        "INSERT INTO freepool_cooldowns (provider, model, key_fp, until, stated, reason, strikes, set_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                        &[p, m, k, until, stated, reason, strikes, set_at],
                    ).await?;
                }
                for (p, m, key, max, at) in &e.learned {
                    n += tx.execute(
                        "INSERT INTO freepool_learned (provider, model, limit_key, max, confirmed_at)
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                        &[p, m, key, max, at],
                    ).await?;
                }
                for (p, ratio) in &e.calibration {
                    n += tx.execute(
                        "INSERT INTO freepool_calibration (provider, tokens_per_char) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                        &[p, ratio],
                    ).await?;
                }
                for (p, m, t, passes, fails, at) in &e.verdicts {
                    n += tx.execute(
                        "INSERT INTO freepool_verdicts (provider, model, task_type, passes, fails, at)
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                        &[p, m, t, passes, fails, at],
                    ).await?;
                }
                for (p, m, k, entry, since, last, confirmed, words) in &e.gone {
                    n += tx.execute(
                        "INSERT INTO freepool_gone (provider, model, key_fp, entry, since, last, confirmed, words)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                        &[p, m, k, entry, since, last, confirmed, words],
                    ).await?;
                }
                tx.commit().await?;
                Ok(n as usize)
            })
        })
        .await
    }
}

impl Store for PostgresStore {
    fn snapshot(
        &self,
        catalog: Arc<Catalog>,
        providers: Vec<usize>,
        _now: Millis,
    ) -> StoreFuture<'_, UsageSnapshot> {
        let host = self.inner.host.clone();
        Box::pin(self.with(move |c| {
            Box::pin(async move {
                let ps: Vec<&Provider> = providers
                    .iter()
                    .filter_map(|&i| catalog.providers.get(i))
                    .collect();
                let now = db_now(c).await?;
                read_snapshot(c, &host, &ps, now).await
            })
        }))
    }

    fn lease(
        &self,
        slot: Slot,
        need: Need,
        _now: Millis,
    ) -> StoreFuture<'_, Result<Lease, Blocked>> {
        let host = self.inner.host.clone();
        Box::pin(self.with(move |c| {
            Box::pin(async move {
                let (provider, model) = (slot.provider(), slot.model());
                let tx = c.transaction().await?;
                lock_provider(&tx, &provider.id).await?;
                let now = db_now(&tx).await?;
                reap(&tx, &host, now).await?;
                let snap = read_snapshot(&tx, &host, &[provider], now).await?;
                if let Err(blocked) = snap.check(provider, model, &slot.key_fp, need) {
                    tx.commit().await?;
                    return Ok(Err(blocked));
                }
                let expires = now + provider.timeout.as_millis() as i64 + 60_000;
                let id: i64 = tx
                    .query_one(
                        "INSERT INTO freepool_leases (ts, expires, host, pid, provider, model, key_fp, tokens, minute_tokens)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                        &[
                            &now,
                            &expires,
                            &host,
                            &i64::from(std::process::id()),
                            &provider.id,
                            &model.id,
                            &slot.key_fp,
                            &(need.tokens.min(i64::MAX as u64) as i64),
                            &(need.minute_tokens.min(i64::MAX as u64) as i64),
                        ],
                    )
                    .await?
                    .get(0);
                tx.commit().await?;
                Ok(Ok(Lease {
                    id,
                    provider: provider.id.clone(),
                    model: model.id.clone(),
                    key_fp: slot.key_fp.clone(),
                }))
            })
        }))
    }

    fn commit(&self, lease: Lease, rec: AttemptRecord, _now: Millis) -> StoreFuture<'_, ()> {
        Box::pin(self.with(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                lock_provider(&tx, &lease.provider).await?;
                let now = db_now(&tx).await?;
                commit_record(&tx, &lease, &rec, now).await?;
                // About one commit in fifty also prunes.
                if lease.id.rem_euclid(50) == 0 {
                    prune(&tx, now).await?;
                }
                tx.commit().await
            })
        }))
    }

    fn release(&self, lease: Lease, _now: Millis) -> StoreFuture<'_, ()> {
        Box::pin(self.with(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                lock_provider(&tx, &lease.provider).await?;
                settle(&tx, "id = $1", &[&lease.id]).await?;
                tx.commit().await
            })
        }))
    }

    fn record_verdict(
        &self,
        provider: String,
        model: String,
        task_type: String,
        passed: bool,
        now: Millis,
    ) -> StoreFuture<'_, ()> {
        Box::pin(self.with(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                let old = tx
                    .query_opt(
                        "SELECT passes, fails, at FROM freepool_verdicts WHERE provider = $1 AND model = $2 AND task_type = $3 FOR UPDATE",
                        &[&provider, &model, &task_type],
                    )
                    .await?
                    .map(|r| Tally {
                        passes: r.get(0),
                        fails: r.get(1),
                        at: r.get(2),
                    });
                let t = old.unwrap_or_default().observe(passed, now);
                tx.execute(
                    "INSERT INTO freepool_verdicts (provider, model, task_type, passes, fails, at) VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (provider, model, task_type) DO UPDATE SET
                       passes = excluded.passes, fails = excluded.fails, at = excluded.at",
                    &[&provider, &model, &task_type, &t.passes, &t.fails, &t.at],
                )
                .await?;
                tx.commit().await
            })
        }))
    }

    fn clear_cooldowns(&self, provider: Option<String>) -> StoreFuture<'_, usize> {
        Box::pin(self.with(move |c| {
            Box::pin(async move {
                let mut n = 0;
                for table in ["freepool_cooldowns", "freepool_gone"] {
                    n += match &provider {
                        Some(p) => {
                            c.execute(&format!("DELETE FROM {table} WHERE provider = $1"), &[p])
                                .await?
                        }
                        None => c.execute(&format!("DELETE FROM {table}"), &[]).await?,
                    };
                }
                Ok(n as usize)
            })
        }))
    }

    fn location(&self) -> String {
        format!("{} (PostgreSQL, shared)", self.inner.shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_comes_from_a_command_or_a_pgpass_file() {
        let (url, cmd) = take_param(
            "postgres://fp@db:5432/l?sslmode=disable&password_command=pass%20show%20db",
            "password_command",
        );
        assert_eq!(url, "postgres://fp@db:5432/l?sslmode=disable");
        assert_eq!(cmd.as_deref(), Some("pass show db"));
        let cfg =
            connect_config("postgres://fp@db/l?password_command=printf%20%27s3cret%27").unwrap();
        assert_eq!(cfg.get_password(), Some(&b"s3cret"[..]));
        let err = connect_config("postgres://fp@db/l?password_command=exit%203").unwrap_err();
        assert!(
            err.contains("exit code 3") && !err.contains("exit 3"),
            "{err}"
        );
        let pgpass = "# comment\nother:5432:*:fp:nope\ndb:5432:l:fp:p\\:w\n*:*:*:*:fallback\n";
        assert_eq!(
            pgpass_lookup(pgpass, ["db", "5432", "l", "fp"]).as_deref(),
            Some("p:w")
        );
        assert_eq!(
            pgpass_lookup(pgpass, ["x", "1", "y", "z"]).as_deref(),
            Some("fallback")
        );
    }

    #[test]
    fn the_shown_url_never_carries_the_password() {
        for (url, want) in [
            (
                "postgres://fp:s3cret@db.example:5432/ledger",
                "postgres://fp@db.example:5432/ledger",
            ),
            (
                "postgresql://db/ledger?password=s3cret&sslmode=disable",
                "postgresql://db/ledger",
            ),
            ("postgres://fp:p@ss:w@rd@h/db", "postgres://fp@h/db"),
            ("host=db password=x", "postgres://…"),
        ] {
            assert_eq!(shown_url(url), want);
        }
    }
}
