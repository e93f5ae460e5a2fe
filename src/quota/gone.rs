//! Models a provider says it no longer serves, as plain values.
//!
//! A "gone" answer (410, "decommissioned", "not in your subscription tier",
//! 402 "no credits", a 404 naming the model) does not call for a back-off:
//! retrying later will not bring the model back. It marks the model, for
//! the key that heard it, as gone until the catalog entry changes (a new
//! catalog, or the user's edit) or the user clears it. A 404 can be a
//! provider's passing hiccup, so it needs a second word within
//! [`CONFIRM_WINDOW`]; the other answers are definite on their own.
//!
//! The store keeps the marks (shared by every process); this module says
//! what a report does to a mark, and what entry a mark belongs to.

use super::{Millis, Scope};
use crate::config::{Model, Provider};

/// How close together two unconfirmed answers must come to confirm each other.
pub(crate) const CONFIRM_WINDOW: Millis = 3_600_000;

/// The longest stretch of the provider's words a mark keeps.
pub(crate) const WORDS_MAX_CHARS: usize = 160;

/// What one gone answer reports, for the store to fold into its mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GoneReport {
    /// The model for the key that heard it.
    pub(crate) scope: Scope,
    /// The answer is definite on its own (410, "decommissioned", ...).
    pub(crate) definite: bool,
    /// The provider's words, scrubbed and short.
    pub(crate) words: String,
    /// The catalog entry it was heard on (see [`entry_mark`]).
    pub(crate) entry: String,
}

/// A mark as a store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GoneMark {
    /// The model for one key.
    pub(crate) scope: Scope,
    /// The catalog entry it was heard on.
    pub(crate) entry: String,
    /// When the first word came.
    pub(crate) since: Millis,
    /// When the latest word came.
    pub(crate) last: Millis,
    /// Whether it is in force (definite, or confirmed by a second word).
    pub(crate) confirmed: bool,
    /// The provider's latest words.
    pub(crate) words: String,
}

impl GoneMark {
    /// The mark after `report` arrives at `now`, given the mark held so far.
    /// A mark heard on another catalog entry is history, not a first word.
    pub(crate) fn fold(held: Option<&GoneMark>, report: &GoneReport, now: Millis) -> GoneMark {
        let held = held.filter(|h| h.entry == report.entry);
        let confirms = held.is_some_and(|h| h.confirmed || now - h.last <= CONFIRM_WINDOW);
        GoneMark {
            scope: report.scope.clone(),
            entry: report.entry.clone(),
            since: held.map_or(now, |h| h.since.min(now)),
            last: now,
            confirmed: report.definite || confirms,
            words: cut(&report.words),
        }
    }
}

/// A short, stable fingerprint of a model's catalog entry (where it is
/// sent, and everything the catalog says about it): when the catalog
/// changes the entry, marks heard on the old one no longer apply.
pub(crate) fn entry_mark(provider: &Provider, model: &Model) -> String {
    // FNV-1a, 64 bits: stable across runs and builds of the same catalog.
    let text = format!("{}\n{:?}", provider.base_url, model);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Whether `mark` was heard on the catalog entry its model has now among
/// `providers` (a mark for a provider or model not among them does not apply).
pub(crate) fn heard_on_current_entry(mark: &GoneMark, providers: &[&Provider]) -> bool {
    providers
        .iter()
        .find(|p| p.id == mark.scope.provider)
        .and_then(|p| {
            p.models
                .iter()
                .find(|m| Some(&m.id) == mark.scope.model.as_ref())
                .map(|m| entry_mark(p, m) == mark.entry)
        })
        .unwrap_or(false)
}

/// The words cut to [`WORDS_MAX_CHARS`] characters, on a character boundary.
fn cut(words: &str) -> String {
    let words = words.trim();
    match words.char_indices().nth(WORDS_MAX_CHARS) {
        Some((i, _)) => format!("{}…", &words[..i]),
        None => words.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(definite: bool, entry: &str) -> GoneReport {
        GoneReport {
            scope: Scope::model_key("p", "m", "k"),
            definite,
            words: "The model `m` does not exist".into(),
            entry: entry.into(),
        }
    }

    #[test]
    fn a_404_needs_a_second_word_within_the_window() {
        let first = GoneMark::fold(None, &report(false, "e1"), 1_000);
        assert!(!first.confirmed, "one 404 is not enough");

        let late = GoneMark::fold(
            Some(&first),
            &report(false, "e1"),
            1_000 + CONFIRM_WINDOW + 1,
        );
        assert!(!late.confirmed, "too far apart");
        let second = GoneMark::fold(Some(&late), &report(false, "e1"), 2_000 + CONFIRM_WINDOW);
        assert!(second.confirmed);
        assert_eq!(second.since, 1_000, "dated from the first word");
        assert!(second.scope.covers("p", "m", "k"));
        assert!(!second.scope.covers("p", "m", "other-key"), "one key only");
    }

    #[test]
    fn a_definite_answer_is_enough_and_a_new_entry_starts_over() {
        let gone = GoneMark::fold(None, &report(true, "e1"), 5);
        assert!(gone.confirmed);
        let again = GoneMark::fold(Some(&gone), &report(false, "e2"), 6);
        assert!(
            !again.confirmed,
            "a mark on another entry is not a first word"
        );
        assert_eq!(again.since, 6);
    }

    #[test]
    fn words_are_cut_on_a_character_boundary() {
        let mut r = report(true, "e");
        r.words = "é".repeat(400);
        let m = GoneMark::fold(None, &r, 0);
        assert_eq!(m.words.chars().count(), WORDS_MAX_CHARS + 1);
    }

    #[test]
    fn the_entry_mark_follows_the_entry() {
        let cat = crate::config::load_from(None, &|_| None);
        let p = cat.provider("kilo").unwrap();
        let (a, b) = (&p.models[0], &p.models[1]);
        assert_eq!(entry_mark(p, a), entry_mark(p, a));
        assert_ne!(entry_mark(p, a), entry_mark(p, b));
        let mut changed = a.clone();
        changed.context += 1;
        assert_ne!(entry_mark(p, a), entry_mark(p, &changed));
    }
}
