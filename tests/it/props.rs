//! Property tests for the two parsers that take untrusted input: the gate and the config.

use freepool_mcp::{config, gate};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any text: no panic, positions inside the text, masks that never carry the text.
    #[test]
    fn gate_is_total_and_locates_inside_the_text(text in "\\PC{0,400}") {
        let lines = text.split('\n').count();
        for f in gate::scan(&text) {
            prop_assert!(f.line >= 1 && f.line <= lines);
            prop_assert!(f.column >= 1);
            prop_assert!(f.masked.contains("chars]"));
        }
    }

    /// A real-shaped token anywhere in surrounding prose is found at its exact
    /// position, and nothing past its public prefix is echoed.
    #[test]
    fn gate_finds_tokens_wherever_they_sit(
        before in "[a-z ,.\n]{0,80}",
        body in "[A-Za-z0-9]{36}",
        after in "[a-z ,.\n]{0,80}",
    ) {
        // Skip bodies that read as placeholders (all one character, a run of 12345678).
        let lower = body.to_lowercase();
        prop_assume!(!["12345678", "abcdefgh", "xxxxxx"].iter().any(|m| lower.contains(m)));
        prop_assume!(body.chars().any(|c| c != body.chars().next().unwrap()));
        let token = format!("ghp_{body}");
        let text = format!("{before} {token} {after}");
        let findings = gate::scan(&text);
        let f = findings.iter().find(|f| f.rule == "github-token");
        prop_assert!(f.is_some(), "missed in {:?}: {:?}", text, findings);
        let f = f.unwrap();
        let start = text.find(&token).unwrap();
        let line = text[..start].matches('\n').count() + 1;
        let col = text[..start].rsplit('\n').next().unwrap().chars().count() + 1;
        prop_assert_eq!((f.line, f.column), (line, col));
        for shown in findings.iter().map(std::string::ToString::to_string) {
            prop_assert!(!shown.contains(&body[..12]), "{}", shown);
        }
    }

    /// Any user file: loading never panics, and a file that is not valid TOML
    /// is reported with its path and enables nothing.
    #[test]
    fn config_loading_is_total(text in "\\PC{0,300}") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("providers.toml");
        std::fs::write(&path, &text).unwrap();
        let cat = config::load_from(Some(&path), &|_| None);
        if toml::from_str::<toml::Table>(&text).is_err() {
            prop_assert!(cat.providers.is_empty());
            prop_assert!(cat.problems.iter().any(|p| p.to_string().contains("providers.toml")));
        }
    }

    /// Overriding one limit changes that limit and nothing else of the model.
    #[test]
    fn overriding_one_limit_changes_only_it(rpd in 1u64..100_000) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("providers.toml");
        std::fs::write(&path, format!("[providers.groq.models.\"openai/gpt-oss-120b\"]\nlimits = {{ rpd = {rpd} }}\n")).unwrap();
        let cat = config::load_from(Some(&path), &|_| None);
        let base = config::load_from(None, &|_| None);
        let m = |c: &config::Catalog| c.provider("groq").unwrap().models.iter().find(|m| m.id == "openai/gpt-oss-120b").unwrap().clone();
        let (new, old) = (m(&cat), m(&base));
        for (a, b) in new.limits.iter().zip(old.limits.iter()) {
            if a.key() == "rpd" { prop_assert_eq!(a.max, rpd); } else { prop_assert_eq!(a, b); }
        }
        prop_assert_eq!(new.context, old.context);
    }
}
