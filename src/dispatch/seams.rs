//! The failover loop's two other seams: the provider call and the clock.
//!
//! The loop sees a provider only through [`Upstream`] and time only through
//! [`Clock`], so tests run it in-process with a scripted provider and a clock
//! whose sleeps advance instantly. The store is the third seam (`store::Store`).

#[cfg(test)]
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;

use crate::quota::Millis;
use crate::upstream::{self, AttemptError, ChatRequest, Completion, Target};

/// Sends one chat completion to a provider.
pub(crate) trait Upstream: Send + Sync {
    /// One attempt, classified.
    fn call<'a>(
        &'a self,
        target: &'a Target<'a>,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, AttemptError>>;
}

/// The real thing: HTTPS through `upstream`.
#[derive(Debug, Default)]
pub(crate) struct Http;

impl Upstream for Http {
    fn call<'a>(
        &'a self,
        target: &'a Target<'a>,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, AttemptError>> {
        Box::pin(upstream::call(target, req))
    }
}

/// Wall time and waiting.
pub(crate) trait Clock: Send + Sync {
    /// Unix milliseconds now.
    fn now(&self) -> Millis;
    /// Waits `d`.
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()>;
}

/// The system clock and tokio's timer.
#[derive(Debug, Default)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        now_ms()
    }

    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// Unix milliseconds now, from the system clock.
pub(crate) fn now_ms() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// A clock for tests: time stands still until a sleep moves it forward.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct ManualClock {
    now: AtomicI64,
}

#[cfg(test)]
impl ManualClock {
    /// A clock reading `now`.
    pub(crate) fn new(now: Millis) -> ManualClock {
        ManualClock {
            now: AtomicI64::new(now),
        }
    }

    /// Moves time forward.
    pub(crate) fn advance(&self, d: Duration) {
        self.now.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.now.load(Ordering::SeqCst)
    }

    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        self.advance(d);
        Box::pin(tokio::task::yield_now())
    }
}
