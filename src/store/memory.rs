//! An in-memory ledger for tests of the failover loop: exact events, the
//! same quota rule, and a switch to lose lease races on purpose.

use std::sync::{Arc, Mutex};

use super::{AttemptRecord, Lease, Slot, Store, StoreFuture};
use crate::config::Catalog;
use crate::quota::{
    Blocked, Cooldown, GoneMark, Millis, Need, UsageSnapshot, WINDOWS, gone, reset_of, window_len,
    window_start,
};

#[derive(Debug, Clone)]
struct Event {
    ts: Millis,
    provider: String,
    model: String,
    key: String,
    need: Need,
}

#[derive(Debug, Default)]
struct State {
    events: Vec<Event>,
    leases: Vec<(i64, Event)>,
    next: i64,
    cooldowns: Vec<Cooldown>,
    gone: Vec<GoneMark>,
    strikes: Vec<(crate::quota::Scope, u32)>,
    lose_races: u32,
    leases_taken: u32,
    verdicts: std::collections::HashMap<crate::quota::UseKey, crate::quota::Tally>,
}

/// The in-memory ledger.
#[derive(Debug, Clone, Default)]
pub(crate) struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl MemoryStore {
    /// The next `n` leases fail as if another process took the last slot
    /// between the snapshot and the lease.
    pub(crate) fn lose_races(&self, n: u32) {
        self.lock().lose_races = n;
    }

    /// Requests counted so far (events), per provider.
    pub(crate) fn requests(&self, provider: &str) -> usize {
        self.lock()
            .events
            .iter()
            .filter(|e| e.provider == provider)
            .count()
    }

    /// Leases granted so far.
    pub(crate) fn leases_taken(&self) -> u32 {
        self.lock().leases_taken
    }

    /// Leases not yet committed or released.
    pub(crate) fn open_leases(&self) -> usize {
        self.lock().leases.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn snapshot_of(
    state: &State,
    catalog: &Catalog,
    providers: &[usize],
    now: Millis,
) -> UsageSnapshot {
    let mut snap = UsageSnapshot {
        now,
        cooldowns: state.cooldowns.clone(),
        verdicts: state.verdicts.clone(),
        ..Default::default()
    };
    for p in providers.iter().filter_map(|&i| catalog.providers.get(i)) {
        snap.gone.extend(
            state
                .gone
                .iter()
                .filter(|g| g.confirmed && gone::heard_on_current_entry(g, &[p]))
                .cloned(),
        );
        let events = state.events.iter().map(|e| (e, false));
        let leases = state.leases.iter().map(|(_, e)| (e, true));
        for (e, leased) in events.chain(leases).filter(|(e, _)| e.provider == p.id) {
            let c = snap
                .usage
                .entry((e.provider.clone(), e.model.clone(), e.key.clone()))
                .or_default();
            for (i, w) in WINDOWS.iter().enumerate() {
                if e.ts > window_start(*w, reset_of(p, *w), now) {
                    c.requests[i] += 1;
                    c.tokens[i] += if i == 0 {
                        e.need.minute_tokens
                    } else {
                        e.need.tokens
                    };
                    let leaves = e.ts + window_len(*w);
                    c.leaves_at[i] = Some(c.leaves_at[i].map_or(leaves, |l| l.min(leaves)));
                }
            }
            c.in_flight += u64::from(leased);
        }
    }
    snap
}

impl Store for MemoryStore {
    fn snapshot(
        &self,
        catalog: Arc<Catalog>,
        providers: Vec<usize>,
        now: Millis,
    ) -> StoreFuture<'_, UsageSnapshot> {
        let snap = snapshot_of(&self.lock(), &catalog, &providers, now);
        Box::pin(async move { Ok(snap) })
    }

    fn lease(
        &self,
        slot: Slot,
        need: Need,
        now: Millis,
    ) -> StoreFuture<'_, Result<Lease, Blocked>> {
        let mut s = self.lock();
        let result = if s.lose_races > 0 {
            s.lose_races -= 1;
            Err(Blocked::Busy { in_flight: 1 })
        } else {
            let snap = snapshot_of(&s, &slot.catalog, &[slot.provider], now);
            snap.check(slot.provider(), slot.model(), &slot.key_fp, need)
                .map(|_| {
                    s.next += 1;
                    s.leases_taken += 1;
                    let e = Event {
                        ts: now,
                        provider: slot.provider().id.clone(),
                        model: slot.model().id.clone(),
                        key: slot.key_fp.clone(),
                        need,
                    };
                    let id = s.next;
                    s.leases.push((id, e));
                    Lease {
                        id,
                        provider: slot.provider().id.clone(),
                        model: slot.model().id.clone(),
                        key_fp: slot.key_fp.clone(),
                    }
                })
        };
        Box::pin(async move { Ok(result) })
    }

    fn commit(&self, lease: Lease, rec: AttemptRecord, now: Millis) -> StoreFuture<'_, ()> {
        let mut s = self.lock();
        s.leases.retain(|(id, _)| *id != lease.id);
        if rec.reached {
            s.events.push(Event {
                ts: now,
                provider: lease.provider.clone(),
                model: lease.model.clone(),
                key: lease.key_fp.clone(),
                need: rec.need,
            });
        }
        if rec.ok {
            s.gone
                .retain(|g| !g.scope.covers(&lease.provider, &lease.model, &lease.key_fp));
        }
        if let Some(report) = &rec.gone {
            let pos = s.gone.iter().position(|g| g.scope == report.scope);
            let held = pos.map(|i| s.gone.remove(i));
            s.gone.push(GoneMark::fold(held.as_ref(), report, now));
        }
        if let Some(b) = rec.bench {
            let strikes = s
                .strikes
                .iter()
                .find(|(scope, _)| *scope == b.scope)
                .map_or(0, |(_, n)| *n);
            if let Some(len) = b.backoff.length(strikes) {
                s.cooldowns.retain(|c| c.scope != b.scope);
                s.cooldowns.push(Cooldown {
                    scope: b.scope.clone(),
                    until: now + len.as_millis() as i64,
                    stated: b.stated,
                    reason: b.reason,
                    strikes: strikes + 1,
                });
            }
            s.strikes.retain(|(scope, _)| *scope != b.scope);
            s.strikes.push((b.scope, strikes + 1));
        }
        Box::pin(async { Ok(()) })
    }

    fn release(&self, lease: Lease, _now: Millis) -> StoreFuture<'_, ()> {
        let mut s = self.lock();
        if let Some(pos) = s.leases.iter().position(|(id, _)| *id == lease.id) {
            let (_, e) = s.leases.remove(pos);
            s.events.push(e);
        }
        Box::pin(async { Ok(()) })
    }

    fn record_verdict(
        &self,
        provider: String,
        model: String,
        task_type: String,
        passed: bool,
        now: Millis,
    ) -> StoreFuture<'_, ()> {
        let mut s = self.lock();
        let t = s.verdicts.entry((provider, model, task_type)).or_default();
        *t = t.observe(passed, now);
        Box::pin(async { Ok(()) })
    }

    fn clear_cooldowns(&self, provider: Option<String>) -> StoreFuture<'_, usize> {
        let mut s = self.lock();
        let before = s.cooldowns.len();
        s.cooldowns
            .retain(|c| provider.as_ref().is_some_and(|p| *p != c.scope.provider));
        let gone = s.gone.len();
        s.gone
            .retain(|g| provider.as_ref().is_some_and(|p| *p != g.scope.provider));
        let n = before - s.cooldowns.len() + gone - s.gone.len();
        Box::pin(async move { Ok(n) })
    }

    fn location(&self) -> String {
        "memory".into()
    }
}
