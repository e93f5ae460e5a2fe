//! The ledger seam: where usage, leases, benches and learned limits are kept,
//! shared by every process that uses the same keys.
//!
//! [`Store`] is what the failover loop needs of a ledger, and nothing more:
//! read a [`UsageSnapshot`], take a lease (the check of every window and the
//! reservation in one atomic step), commit what an attempt came to, release a
//! lease nobody will commit. Backends implement it: [`sqlite`] (the embedded
//! default, one file shared by the processes of one machine). The quota rule
//! itself is not here: every backend calls `quota::UsageSnapshot::check`
//! inside its own transaction.
//!
//! Invariant: no key is stored, only fingerprints; every check-and-reserve
//! is one transaction.

#[cfg(test)]
pub(crate) mod memory;
pub(crate) mod postgres;
pub(crate) mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::config::{Catalog, Model, Provider};
use crate::quota::{Bench, Blocked, GoneReport, Millis, Need, UsageSnapshot};

/// What a store call returns.
pub(crate) type StoreFuture<'a, T> = BoxFuture<'a, Result<T, Error>>;

/// Why the ledger could not be used. The cause is kept as a source, so the
/// message a user reads ends with it ("... : database is locked").
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The state dir or file cannot be opened for writing.
    #[error(
        "the usage ledger at {} cannot be opened for writing; set FREEPOOL_STATE_DIR to a writable directory",
        path.display()
    )]
    Unwritable {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Another process held the ledger past the busy timeout.
    #[error("the usage ledger at {} stayed locked by another process past {secs} s; try again", path.display())]
    Busy {
        /// The file.
        path: PathBuf,
        /// The timeout.
        secs: u64,
    },
    /// The database failed.
    #[error("the usage ledger at {}", path.display())]
    Db {
        /// The file (or URL, credentials hidden).
        path: PathBuf,
        /// What the database said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The shared ledger's database cannot be reached: nothing is sent.
    #[error(
        "the shared usage ledger at {url} cannot be reached, so no request is sent (none would be counted); \
         check the database, or set `ledger_fallback = \"local\"` to use this machine's ledger meanwhile"
    )]
    Unreachable {
        /// The URL, password hidden.
        url: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The blocking task running a ledger call ended abnormally.
    #[error("the usage ledger task stopped unexpectedly")]
    Task,
}

/// One candidate, by position in a shared catalog: no provider is copied on
/// the per-request path, and the slot moves into blocking tasks as it is.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    /// The catalog the indices point into.
    pub(crate) catalog: Arc<Catalog>,
    /// Provider index.
    pub(crate) provider: usize,
    /// Model index within the provider.
    pub(crate) model: usize,
    /// Key fingerprint (or `anon`).
    pub(crate) key_fp: String,
}

impl Slot {
    /// The provider.
    pub(crate) fn provider(&self) -> &Provider {
        &self.catalog.providers[self.provider]
    }

    /// The model.
    pub(crate) fn model(&self) -> &Model {
        &self.provider().models[self.model]
    }
}

/// A lease held: the store's id for it and whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lease {
    /// The store's id.
    pub(crate) id: i64,
    /// Provider id.
    pub(crate) provider: String,
    /// Model id.
    pub(crate) model: String,
    /// Key fingerprint.
    pub(crate) key_fp: String,
}

/// What an attempt came to, for `Store::commit`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AttemptRecord {
    /// Whether the request reached the provider (and so counts against quota).
    pub(crate) reached: bool,
    /// Tokens to count (reported usage, else the estimate), per window kind.
    pub(crate) need: Need,
    /// Whether the attempt served an answer.
    pub(crate) ok: bool,
    /// On success: prompt characters and reported prompt tokens, for calibration.
    pub(crate) calibration: Option<(usize, u64)>,
    /// A bench to set (its length comes from the strikes the store has seen).
    pub(crate) bench: Option<Bench>,
    /// A limit learned from the answer: (limit key, value).
    pub(crate) learned: Option<(&'static str, u64)>,
    /// The provider said the model is gone for this key.
    pub(crate) gone: Option<GoneReport>,
}

/// The ledger, as the failover loop and the status pages use it.
pub(crate) trait Store: Send + Sync {
    /// Reads usage, benches, learned limits and calibration for the given providers.
    fn snapshot(
        &self,
        catalog: Arc<Catalog>,
        providers: Vec<usize>,
        now: Millis,
    ) -> StoreFuture<'_, UsageSnapshot>;

    /// Reserves one request counted as `need` on a candidate if every limit
    /// has room, atomically with respect to every other user of the ledger.
    fn lease(&self, slot: Slot, need: Need, now: Millis)
    -> StoreFuture<'_, Result<Lease, Blocked>>;

    /// Turns a lease into counted use, and sets or clears benches, in one transaction.
    fn commit(&self, lease: Lease, rec: AttemptRecord, now: Millis) -> StoreFuture<'_, ()>;

    /// Gives up a lease nobody will commit (a cancelled call): it counts as a
    /// request made, with the tokens it reserved, since it most likely went out.
    fn release(&self, lease: Lease, now: Millis) -> StoreFuture<'_, ()>;

    /// Records how an answer fared (a check, or the outcome Claude reported)
    /// for a model and a task type.
    fn record_verdict(
        &self,
        provider: String,
        model: String,
        task_type: String,
        passed: bool,
        now: Millis,
    ) -> StoreFuture<'_, ()>;

    /// Clears benches and gone marks: all, or one provider's.
    fn clear_cooldowns(&self, provider: Option<String>) -> StoreFuture<'_, usize>;

    /// Where it lives, for people (`status`, `check`): a path, or a URL without credentials.
    fn location(&self) -> String;

    /// A warning to show once (the file was corrupt and moved aside).
    fn warning(&self) -> Option<String> {
        None
    }
}

/// A shared handle to whichever store is in use.
pub(crate) type SharedStore = Arc<dyn Store>;

/// What `ledger migrate` carries from the SQLite file to PostgreSQL: the
/// rows that still matter (usage buckets the windows read, benches in force,
/// learned limits, calibration, verdicts, gone marks), as plain values.
#[derive(Debug, Default)]
pub(crate) struct Export {
    /// (provider, grain, start, model, key, requests, tokens, failures).
    pub(crate) usage: Vec<UsageRow>,
    /// (provider, model, key, until, stated, reason, strikes, set_at).
    pub(crate) cooldowns: Vec<CooldownRow>,
    /// (provider, model, limit key, max, confirmed at).
    pub(crate) learned: Vec<(String, String, String, i64, i64)>,
    /// (provider, tokens per character).
    pub(crate) calibration: Vec<(String, f64)>,
    /// (provider, model, task type, passes, fails, at).
    pub(crate) verdicts: Vec<(String, String, String, f64, f64, i64)>,
    /// (provider, model, key, entry, since, last, confirmed, words).
    pub(crate) gone: Vec<GoneRow>,
}

/// A usage bucket row: (provider, grain, start, model, key, requests, tokens, failures).
pub(crate) type UsageRow = (String, i32, i64, String, String, i64, i64, i64);
/// A bench row: (provider, model, key, until, stated, reason, strikes, set_at).
pub(crate) type CooldownRow = (String, String, String, i64, bool, String, i32, i64);
/// A gone-mark row: (provider, model, key, entry, since, last, confirmed, words).
pub(crate) type GoneRow = (String, String, String, String, i64, i64, bool, String);

/// This machine's ledger standing in for an unreachable shared one: every
/// limit counts at [`STAND_IN_SHARE`] here (other machines spend from the
/// same caps meanwhile), and the warning says so everywhere.
pub(crate) struct Annotated {
    inner: SharedStore,
    warning: String,
    /// The catalog leases are checked against: the caller's with every
    /// limit cut to its share (keyed by the caller's catalog's address).
    reduced: std::sync::Mutex<Option<(usize, Arc<Catalog>)>>,
}

/// The share of each limit a stand-in ledger lets this machine use.
pub(crate) const STAND_IN_SHARE: (u64, u64) = (1, 2);

impl Annotated {
    /// `inner`, announced by `warning` in `status`, `check` and the logs.
    pub(crate) fn new(inner: SharedStore, warning: String) -> Annotated {
        Annotated {
            inner,
            warning,
            reduced: std::sync::Mutex::new(None),
        }
    }

    fn reduced(&self, catalog: &Arc<Catalog>) -> Arc<Catalog> {
        let key = Arc::as_ptr(catalog) as usize;
        let mut slot = self
            .reduced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((k, c)) = slot.as_ref()
            && *k == key
        {
            return c.clone();
        }
        let mut cut = (**catalog).clone();
        let share = |max: u64| (max * STAND_IN_SHARE.0 / STAND_IN_SHARE.1).max(1);
        for p in &mut cut.providers {
            for m in &mut p.models {
                for l in &mut m.limits {
                    l.max = share(l.max);
                }
            }
            for pool in &mut p.pools {
                for l in &mut pool.limits {
                    l.max = share(l.max);
                }
            }
        }
        let cut = Arc::new(cut);
        *slot = Some((key, cut.clone()));
        cut
    }
}

impl Store for Annotated {
    fn snapshot(
        &self,
        catalog: Arc<Catalog>,
        providers: Vec<usize>,
        now: Millis,
    ) -> StoreFuture<'_, UsageSnapshot> {
        self.inner.snapshot(catalog, providers, now)
    }
    fn lease(
        &self,
        mut slot: Slot,
        need: Need,
        now: Millis,
    ) -> StoreFuture<'_, Result<Lease, Blocked>> {
        slot.catalog = self.reduced(&slot.catalog);
        self.inner.lease(slot, need, now)
    }
    fn commit(&self, lease: Lease, rec: AttemptRecord, now: Millis) -> StoreFuture<'_, ()> {
        self.inner.commit(lease, rec, now)
    }
    fn release(&self, lease: Lease, now: Millis) -> StoreFuture<'_, ()> {
        self.inner.release(lease, now)
    }
    fn record_verdict(
        &self,
        provider: String,
        model: String,
        task_type: String,
        passed: bool,
        now: Millis,
    ) -> StoreFuture<'_, ()> {
        self.inner
            .record_verdict(provider, model, task_type, passed, now)
    }
    fn clear_cooldowns(&self, provider: Option<String>) -> StoreFuture<'_, usize> {
        self.inner.clear_cooldowns(provider)
    }
    fn location(&self) -> String {
        format!(
            "{} (standing in for the shared ledger)",
            self.inner.location()
        )
    }
    fn warning(&self) -> Option<String> {
        Some(self.warning.clone())
    }
}
