//! How well a model's answers have done, per task type: the share that
//! passed their checks or that Claude accepted.
//!
//! A tally of passes and failures, where each new verdict discounts the old
//! ones (by `EACH`) and time halves them (every `HALF_LIFE`), so a model that
//! changes is noticed within a few calls and yesterday weighs little. The
//! estimate starts from a prior of two passes to one failure, so a model
//! with no record ranks above one that keeps failing and still gets tried.

use super::Millis;

/// What each new verdict leaves of the earlier ones.
const EACH: f64 = 0.9;
/// Verdicts lose half their weight in this long.
const HALF_LIFE: Millis = 3 * 86_400_000;
/// The prior: passes and failures a model starts with.
const PRIOR: (f64, f64) = (2.0, 1.0);

/// Passes and failures, discounted, as of `at`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Tally {
    /// Discounted passes.
    pub(crate) passes: f64,
    /// Discounted failures.
    pub(crate) fails: f64,
    /// When it was last updated.
    pub(crate) at: Millis,
}

impl Tally {
    /// The tally as of `now`: time's discount applied.
    pub(crate) fn at(self, now: Millis) -> Tally {
        let elapsed = (now - self.at).max(0) as f64;
        let keep = 0.5f64.powf(elapsed / HALF_LIFE as f64);
        Tally {
            passes: self.passes * keep,
            fails: self.fails * keep,
            at: now.max(self.at),
        }
    }

    /// The tally after one more verdict at `now`.
    pub(crate) fn observe(self, passed: bool, now: Millis) -> Tally {
        let t = self.at(now);
        Tally {
            passes: t.passes * EACH + f64::from(u8::from(passed)),
            fails: t.fails * EACH + f64::from(u8::from(!passed)),
            at: now,
        }
    }

    /// The estimated share of good answers, prior included.
    pub(crate) fn estimate(self, now: Millis) -> f64 {
        let t = self.at(now);
        (t.passes + PRIOR.0) / (t.passes + t.fails + PRIOR.0 + PRIOR.1)
    }

    /// How many verdicts it rests on, discounted (for display).
    pub(crate) fn weight(self, now: Millis) -> f64 {
        let t = self.at(now);
        t.passes + t.fails
    }
}

/// The estimate of a model with no record.
pub(crate) fn prior_estimate() -> f64 {
    PRIOR.0 / (PRIOR.0 + PRIOR.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_model_starts_at_the_prior_and_learns_both_ways() {
        let t = Tally::default();
        assert!((t.estimate(0) - prior_estimate()).abs() < 1e-9);
        let mut bad = t;
        let mut good = t;
        for i in 0..10 {
            bad = bad.observe(i % 5 == 0, 0);
            good = good.observe(i % 10 != 9, 0);
        }
        assert!(bad.estimate(0) < 0.4, "{}", bad.estimate(0));
        assert!(good.estimate(0) > 0.75, "{}", good.estimate(0));
        assert!(
            bad.estimate(0) < prior_estimate(),
            "a failing model ranks below an unknown one"
        );
        // A good model that turns bad falls below the prior within a few calls.
        let mut turned = good;
        let mut calls = 0;
        while turned.estimate(0) >= prior_estimate() {
            turned = turned.observe(false, 0);
            calls += 1;
        }
        assert!(calls <= 4, "{calls}");
    }

    #[test]
    fn time_halves_the_record() {
        let t = Tally::default().observe(false, 0).observe(false, 0);
        let later = t.at(HALF_LIFE);
        assert!((later.fails - t.fails / 2.0).abs() < 1e-9);
        assert!(
            t.estimate(10 * HALF_LIFE) > t.estimate(0),
            "old failures fade toward the prior"
        );
    }
}
