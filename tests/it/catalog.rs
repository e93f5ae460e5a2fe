//! A catalog that heals itself: models a provider says are gone are left
//! out after confirmation, in every later process, until the catalog entry
//! changes or the user clears them; `check --probe` compares the catalog
//! with each provider's model list.

use serde_json::json;

use crate::support::{Behavior, MockUpstream, Sandbox, provider, status_json};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `alpha` (preferred) answers with `status` and `body`; `beta` serves.
fn gone_setup(status: u16, body: &str) -> (MockUpstream, MockUpstream, Sandbox) {
    let (a, b) = (
        MockUpstream::start_blocking("alpha"),
        MockUpstream::start_blocking("beta"),
    );
    a.default(Behavior::Status(status, body.to_owned()));
    let sb = Sandbox::new();
    sb.config(&format!(
        "{}{}",
        provider("alpha", &a, "priority = 10", ""),
        provider("beta", &b, "", "")
    ));
    (a, b, sb)
}

/// One CLI process: `delegate hello`, which beta serves.
fn delegate(sb: &Sandbox) {
    let out = sb.cmd().args(["delegate", "hello"]).output().unwrap();
    assert!(out.status.success(), "beta serves: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("answer from beta"));
}

/// Each provider's real words for a model it no longer serves: a definite
/// answer marks it gone at once, a 404 after a second one; either way no
/// later process sends it another request.
#[test]
fn gone_models_are_never_tried_again_in_later_processes() {
    let cases: &[(u16, &str, usize)] = &[
        // Groq, OpenAI: 404 model_not_found (needs confirming).
        (
            404,
            r#"{"error":{"message":"The model `m1` does not exist or you do not have access to it.","type":"invalid_request_error","code":"model_not_found"}}"#,
            2,
        ),
        // OpenRouter: a free id that moved.
        (
            404,
            r#"{"error":{"message":"No endpoints found for m1:free.","code":404}}"#,
            2,
        ),
        // NVIDIA: 410 end of life.
        (
            410,
            r#"{"type":"about:blank","status":410,"title":"Gone","detail":"The model 'm1' has reached its end of life."}"#,
            1,
        ),
        // Groq: decommissioned (a 400).
        (
            400,
            r#"{"error":{"message":"The model `m1` has been decommissioned and is no longer supported.","type":"invalid_request_error","code":"model_decommissioned"}}"#,
            1,
        ),
        // Mistral: outside the key's tier.
        (
            403,
            r#"{"object":"error","message":"The model m1 is not in your subscription tier","type":"forbidden","code":"3051"}"#,
            1,
        ),
        // Hugging Face, Cerebras: the credit is spent.
        (
            402,
            r#"{"error":"You have no remaining credits for Inference Providers. Purchase credits to continue."}"#,
            1,
        ),
    ];
    for (status, body, heard) in cases {
        let (a, b, sb) = gone_setup(*status, body);
        for _ in 0..4 {
            delegate(&sb);
        }
        assert_eq!(
            a.count(),
            *heard,
            "{status}: asked {heard} time(s), then never again"
        );
        assert_eq!(b.count(), 4);
        let s = status_json(&sb);
        let gone = s["gone"].as_array().unwrap();
        assert_eq!(gone.len(), 1, "{status}: {s}");
        assert_eq!(gone[0]["model"], "alpha/m1");
        assert!(gone[0]["since"].as_str().unwrap().starts_with("20"));
        let words = gone[0]["words"].as_str().unwrap();
        let start: String = words.chars().take(24).collect();
        assert!(
            words.len() > 20 && body.contains(&start),
            "the provider's words: {words}"
        );
    }
}

#[test]
fn a_lone_404_then_a_success_is_forgotten() {
    let (a, _b, sb) = gone_setup(200, "");
    a.script([Behavior::Status(
        404,
        r#"{"error":{"message":"The model `m1` does not exist","code":"model_not_found"}}"#.into(),
    )]);
    a.default(Behavior::ok("alpha is back"));
    delegate(&sb);
    let out = sb.cmd().args(["delegate", "hello"]).output().unwrap();
    assert!(text(&out.stdout).contains("alpha is back"));
    // A third call a while later: a new 404 is a first word again.
    a.script([Behavior::Status(
        404,
        r#"{"error":{"message":"model not found"}}"#.into(),
    )]);
    delegate(&sb);
    let out = sb.cmd().args(["delegate", "hello"]).output().unwrap();
    assert!(text(&out.stdout).contains("alpha is back"), "not gone yet");
    assert_eq!(a.count(), 4);
    assert_eq!(status_json(&sb)["gone"], json!([]));
}

#[test]
fn gone_shows_everywhere_and_lifts_on_a_catalog_change_or_a_clear() {
    let (a, b, sb) = gone_setup(
        410,
        r#"{"status":410,"title":"Gone","detail":"The model 'm1' has reached its end of life. Bearer mock-secret-key-value-0001"}"#,
    );
    delegate(&sb);
    assert_eq!(a.count(), 1);
    // status (text), check and list_models name it, with the date and the
    // provider's words, never the key it echoed.
    let out = sb.cmd().arg("status").output().unwrap();
    let o = text(&out.stdout);
    assert!(o.contains("gone upstream"), "{o}");
    assert!(o.contains("alpha/m1") && o.contains("end of life"), "{o}");
    assert!(!o.contains("mock-secret-key-value-0001"), "{o}");
    let out = sb.cmd().arg("check").output().unwrap();
    let o = text(&out.stdout);
    assert!(o.contains("gone upstream") && o.contains("alpha/m1"), "{o}");
    assert!(!o.contains("mock-secret-key-value-0001"), "{o}");
    let mut c = sb.mcp();
    c.initialize();
    let (_, t) = c.call("list_models", json!({}));
    assert!(t.contains("alpha/m1 (gone upstream since 20"), "{t}");
    assert!(!t.contains("mock-secret-key-value-0001"), "{t}");
    drop(c);
    for f in std::fs::read_dir(sb.state()).unwrap().flatten() {
        let bytes = std::fs::read(f.path()).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("mock-secret-key-value-0001"),
            "{} holds the key",
            f.path().display()
        );
    }
    // Naming it explicitly explains why it is not tried.
    let out = sb
        .cmd()
        .args(["delegate", "hello", "--model", "alpha/m1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("gone upstream since"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(a.count(), 1);

    // Clearing brings it back for one more try.
    let out = sb
        .cmd()
        .args(["status", "--clear-cooldowns", "alpha"])
        .output()
        .unwrap();
    assert!(out.status.success());
    delegate(&sb);
    assert_eq!(a.count(), 2, "tried again after the clear, gone again");
    delegate(&sb);
    assert_eq!(a.count(), 2);

    // A changed catalog entry (the user's edit, or a new catalog) lifts it.
    sb.config(&format!(
        "{}{}",
        provider("alpha", &a, "priority = 10", "max_output = 1000"),
        provider("beta", &b, "", "")
    ));
    delegate(&sb);
    assert_eq!(a.count(), 3, "the changed entry is tried");
}

/// `check --probe` reads each provider's `/models`, reports both kinds of
/// difference, and writes an override file that `check` then accepts, and
/// that takes effect: the unlisted model is off, the new one is usable.
/// Groq is the built-in entry, pointed at a mock.
#[test]
fn the_probe_compares_model_lists_and_writes_overrides_check_accepts() {
    let a = MockUpstream::start_blocking("groq");
    a.listing(json!({"object": "list", "data": [
        {"id": "openai/gpt-oss-20b", "object": "model"},
        {"id": "openai/gpt-oss-safeguard-20b", "object": "model"},
        {"id": "qwen/qwen3.8-27b", "object": "model"},
        {"id": "llama-3.3-70b-versatile", "object": "model"},
        {"id": "fresh/one", "object": "model", "context_length": 65536},
    ]}));
    let b = MockUpstream::start_blocking("beta");
    b.listing(json!({"data": [
        {"id": "m1", "pricing": {"prompt": "0", "completion": "0"}},
        {"id": "paid/big", "pricing": {"prompt": "0.000002", "completion": "0.000008"}},
        {"id": "gift/small:free", "pricing": {"prompt": "0", "completion": "0"}},
    ]}));
    let sb = Sandbox::new();
    let base = format!(
        "[providers.groq]\nbase_url = \"{}\"\nlocal = true\nkey_env = [\"MOCK_KEY\"]\n{}",
        a.base_url(),
        provider("beta", &b, "", "")
    );
    sb.config(&base);
    let file = sb.dir.path().join("overrides.toml");
    let out = sb
        .cmd()
        .args(["check", "--probe", "--write-overrides"])
        .arg(&file)
        .output()
        .unwrap();
    let o = text(&out.stdout);
    assert_eq!((a.listed(), b.listed()), (1, 1), "{o}");
    assert!(o.contains("model lists against the catalog"), "{o}");
    assert!(o.contains("groq: 5 listed"), "{o}");
    assert!(
        o.contains("in the catalog, not listed: openai/gpt-oss-120b\n"),
        "{o}"
    );
    assert!(
        o.contains("listed free, not in the catalog: fresh/one\n"),
        "{o}"
    );
    assert!(
        o.contains("listed, but off in the catalog as gone: llama-3.3-70b-versatile"),
        "{o}"
    );
    assert!(o.contains("beta: 3 listed"), "{o}");
    assert!(
        o.contains("listed free, not in the catalog: gift/small:free"),
        "{o}"
    );
    assert!(
        !o.contains("paid/big"),
        "priced models are not proposed: {o}"
    );
    assert!(o.contains("wrote "), "{o}");
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(
        written.contains("[providers.groq.models.\"openai/gpt-oss-120b\"]\nenabled = false"),
        "{written}"
    );
    assert!(
        written.contains("[providers.groq.models.\"fresh/one\"]"),
        "{written}"
    );
    assert!(written.contains("context = 65536"), "{written}");

    // Adopted: check accepts it whole, and it takes effect.
    sb.config(&format!("{base}\n{written}"));
    let out = sb.cmd().arg("check").output().unwrap();
    let o = text(&out.stdout);
    assert!(!o.contains("error"), "{o}");
    assert_eq!(out.status.code(), Some(0), "{o}");
    let out = sb.cmd().arg("models").output().unwrap();
    let o = text(&out.stdout);
    assert!(
        o.contains("fresh/one") && o.contains("gift/small:free"),
        "{o}"
    );
    let groq: Vec<&str> = o
        .lines()
        .skip_while(|l| !l.starts_with("groq —"))
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .collect();
    assert_eq!(groq.len(), 4, "{groq:?}");
    assert!(
        !groq.iter().any(|l| l.contains("openai/gpt-oss-120b")),
        "turned off: {groq:?}"
    );
    let out = sb
        .cmd()
        .args(["delegate", "hi", "--model", "groq/fresh/one"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(a.received().last().unwrap().model, "fresh/one");

    // The file is never overwritten.
    let out = sb
        .cmd()
        .args(["check", "--probe", "--write-overrides"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written);
}
