//! What can be ruled out: a whole provider, one model, one key, or one model for one key.
//!
//! The same type names what a failed attempt excludes for the rest of a call
//! and what a bench keeps out of later calls, so the two can never disagree.

use std::fmt;

/// A provider, optionally narrowed to one model and/or one key fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Scope {
    /// Provider id.
    pub(crate) provider: String,
    /// One model, or every model of the provider.
    pub(crate) model: Option<String>,
    /// One key (by fingerprint), or every key.
    pub(crate) key: Option<String>,
}

impl Scope {
    /// The whole provider.
    pub(crate) fn provider(p: &str) -> Scope {
        Scope {
            provider: p.into(),
            model: None,
            key: None,
        }
    }

    /// One model, any key.
    pub(crate) fn model(p: &str, m: &str) -> Scope {
        Scope {
            model: Some(m.into()),
            ..Scope::provider(p)
        }
    }

    /// One key, any model.
    pub(crate) fn key(p: &str, k: &str) -> Scope {
        Scope {
            key: Some(k.into()),
            ..Scope::provider(p)
        }
    }

    /// One model with one key.
    pub(crate) fn model_key(p: &str, m: &str, k: &str) -> Scope {
        Scope {
            provider: p.into(),
            model: Some(m.into()),
            key: Some(k.into()),
        }
    }

    /// Whether this scope covers the candidate (provider, model, key).
    pub(crate) fn covers(&self, p: &str, m: &str, k: &str) -> bool {
        self.provider == p
            && self.model.as_deref().is_none_or(|x| x == m)
            && self.key.as_deref().is_none_or(|x| x == k)
    }
}

impl fmt::Display for Scope {
    /// `groq`, `groq/llama`, `groq key 1a2b3c`, `groq/llama key 1a2b3c`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.provider)?;
        if let Some(m) = &self.model {
            write!(f, "/{m}")?;
        }
        if let Some(k) = &self.key {
            write!(f, " key {k}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scope_covers_what_it_names() {
        let cases = [
            (Scope::provider("p"), [true, true, true, false]),
            (Scope::model("p", "a"), [true, true, false, false]),
            (Scope::key("p", "k"), [true, false, true, false]),
            (Scope::model_key("p", "a", "k"), [true, false, false, false]),
        ];
        let candidates = [
            ("p", "a", "k"),
            ("p", "a", "j"),
            ("p", "b", "k"),
            ("q", "a", "k"),
        ];
        for (scope, want) in cases {
            for ((p, m, k), w) in candidates.iter().zip(want) {
                assert_eq!(scope.covers(p, m, k), w, "{scope} over {p}/{m} {k}");
            }
        }
        assert_eq!(Scope::model_key("p", "a", "k").to_string(), "p/a key k");
    }
}
