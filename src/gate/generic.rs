//! Secrets found by context: a value assigned to a secret-sounding name, in
//! any of the syntaxes code and config use.
//!
//! One `memchr` pass finds the operators (`=`, `:`, `:=`, `=>`, `,` after a
//! quoted name); at each, the name before it is read backwards, and only a
//! name holding a secret word (`pass`, `secret`, `token`, `key`, ...) goes
//! on to its value, which `values` judges. No regex. (Flags and XML elements
//! have rules of their own in `rules`.)

use std::collections::HashSet;

use super::values::{
    is_placeholder, is_public_value, is_reference, looks_like_password, looks_random, public_name,
    says_not_real,
};

/// What a name says its value is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Family {
    Password,
    Secret,
    Token,
    Key,
}

fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

/// The name's words: `DB_PASSWORD` and `dbPassword` give `db`, `password`
/// (compared without regard to case; nothing allocated).
fn segments(name: &str) -> impl Iterator<Item = &str> {
    let b = name.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < b.len() && !b[i].is_ascii_alphanumeric() {
            i += 1;
        }
        if i >= b.len() {
            return None;
        }
        let start = i;
        i += 1;
        while i < b.len() && b[i].is_ascii_alphanumeric() {
            // A lower-case letter or digit then an upper-case one starts a new word.
            if b[i].is_ascii_uppercase() && !b[i - 1].is_ascii_uppercase() {
                break;
            }
            i += 1;
        }
        Some(&name[start..i])
    })
}

/// Words that, anywhere in a name, make its value something other than a secret.
const NOT_A_SECRET: &[&str] = &[
    "hash",
    "hashed",
    "digest",
    "policy",
    "length",
    "len",
    "min",
    "max",
    "field",
    "label",
    "prompt",
    "reset",
    "expiry",
    "expires",
    "expiration",
    "expired",
    "lifetime",
    "ttl",
    "changed",
    "updated",
    "required",
    "regex",
    "pattern",
    "hint",
    "strength",
    "file",
    "path",
    "dir",
    "command",
    "cmd",
    "env",
    "var",
    "name",
    "names",
    "id",
    "ids",
    "type",
    "types",
    "url",
    "uri",
    "endpoint",
    "input",
    "output",
    "selector",
    "placeholder",
    "count",
    "limit",
    "size",
    "usage",
    "budget",
    "num",
    "total",
    "completion",
    "field",
    "header",
    "param",
    "prefix",
    "kind",
    "format",
    "version",
    "scope",
    "scopes",
    "validity",
    "next",
    "page",
    "continuation",
    "pagination",
    "cursor",
    "sync",
    "csrf",
    "xsrf",
    "idempotency",
    "cancellation",
    "public",
    "pub",
    "publishable",
    "anon",
    "primary",
    "foreign",
    "sort",
    "partition",
    "cache",
    "routing",
    "lookup",
    "object",
    "row",
    "index",
    "map",
    "rate",
    "through",
    "fail",
    "manager",
    "store",
    "ref",
    "arn",
    "provider",
    "mount",
    "engine",
    "location",
    "source",
    "algorithm",
    "alg",
    "encoding",
    "mode",
    "enabled",
    "disabled",
    "rotation",
    "store",
    "vault",
    "template",
    "question",
    "generator",
    "validator",
    "fingerprint",
    "checksum",
    "bits",
    "alias",
    "label",
    "display",
    "title",
    "description",
    "help",
    "example",
    "sample",
    "test",
    "mock",
    "fake",
    "dummy",
];

const KEY_QUALIFIERS: &[&str] = &[
    "api",
    "access",
    "secret",
    "private",
    "priv",
    "auth",
    "app",
    "master",
    "encryption",
    "enc",
    "encrypt",
    "signing",
    "sign",
    "license",
    "licence",
    "client",
    "account",
    "subscription",
    "service",
    "server",
    "admin",
    "root",
    "session",
    "shared",
    "sas",
    "webhook",
    "hmac",
    "jwt",
    "aes",
    "crypto",
    "cipher",
    "consumer",
    "bot",
    "deploy",
    "live",
    "prod",
    "write",
    "ingest",
    "install",
    "integration",
    "management",
    "mgmt",
    "rest",
    "sdk",
    "personal",
    "storage",
    "x",
    "otp",
    "totp",
    "developer",
    "dev",
    "partner",
    "merchant",
    "security",
    "gateway",
    "proxy",
    "wallet",
    "openai",
    "anthropic",
    "stripe",
    "google",
    "gemini",
    "groq",
    "mistral",
    "cohere",
    "azure",
    "aws",
    "gcp",
    "firebase",
    "sendgrid",
    "mailgun",
    "twilio",
    "github",
    "slack",
    "algolia",
    "mapbox",
    "datadog",
    "sentry",
    "maps",
    "cloud",
    "paypal",
];

// What a name's word says, as bits.
const NOT: u8 = 1;
const PASSWORD: u8 = 2;
const SECRET: u8 = 4;
const TOKEN: u8 = 8;
const FUSED_KEY: u8 = 16;
const QUALIFIER: u8 = 32;
const KEY: u8 = 64;
const AUTH: u8 = 128;

/// The bits of one word of a name, any case.
fn word_bits(seg: &str) -> u8 {
    let mut buf = [0u8; 24];
    if seg.len() > buf.len() {
        return 0;
    }
    for (d, c) in buf.iter_mut().zip(seg.bytes()) {
        *d = c.to_ascii_lowercase();
    }
    let w = std::str::from_utf8(&buf[..seg.len()]).unwrap_or_default();
    static SETS: std::sync::OnceLock<(HashSet<&str>, HashSet<&str>)> = std::sync::OnceLock::new();
    let (not_a_secret, qualifiers) = SETS.get_or_init(|| {
        (
            NOT_A_SECRET.iter().copied().collect(),
            KEY_QUALIFIERS.iter().chain(PROVIDERS).copied().collect(),
        )
    });
    if not_a_secret.contains(w) {
        return NOT;
    }
    match w {
        "password" | "passwd" | "passphrase" | "pwd" | "pass" | "pw" | "passwort" | "pswd"
        | "dbpass" => PASSWORD,
        "secret" | "credential" | "credentials" | "creds" | "privatekey" | "secretkey"
        | "clientsecret" => SECRET,
        "token" | "accesstoken" | "authtoken" | "apitoken" => TOKEN,
        "apikey" | "accesskey" | "authkey" | "masterkey" | "licensekey" | "appkey"
        | "signingkey" | "encryptionkey" | "appid" | "subscriptionkey" => FUSED_KEY,
        "key" => KEY,
        "auth" => AUTH | QUALIFIER,
        _ if qualifiers.contains(w) => QUALIFIER,
        _ => 0,
    }
}

/// The family a name belongs to, if its value would be a secret.
pub(super) fn family(name: &str) -> Option<Family> {
    let (mut all, mut last, mut words) = (0u8, 0u8, 0usize);
    for seg in segments(name) {
        last = word_bits(seg);
        all |= last;
        words += 1;
        if last & NOT != 0 {
            return None;
        }
    }
    if all & PASSWORD != 0 {
        Some(Family::Password)
    } else if all & SECRET != 0 || last & AUTH != 0 {
        Some(Family::Secret)
    } else if all & TOKEN != 0 {
        Some(Family::Token)
    } else if all & FUSED_KEY != 0 || last & KEY != 0 && (words == 1 || all & QUALIFIER != 0) {
        Some(Family::Key)
    } else {
        None
    }
}

/// Every value assigned to a secret-sounding name that is a secret:
/// (start, end, family), in text order.
///
/// Driven by the operators (`=`, `:`, `,` after a quoted name), found with
/// `memchr`: at each, the name before it is read backwards, and only a name
/// holding a secret word (`pass`, `secret`, `token`, `key`, ...) goes on to
/// the value. Prose pays one byte test per `=`, `:` or `,`.
pub(super) fn assignments(text: &str) -> Vec<(usize, usize, Family, bool)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    for o in memchr::memchr3_iter(b'=', b':', b',', b) {
        let next = b.get(o + 1).copied();
        let prev = o.checked_sub(1).map(|i| b[i]);
        let value_at = match b[o] {
            b':' if next == Some(b'=') => o + 2,
            b':' if next == Some(b':') || prev == Some(b':') => continue,
            b'=' if next == Some(b'>') => o + 2,
            b'=' if matches!(next, Some(b'=' | b'~'))
                || matches!(
                    prev,
                    Some(
                        b'=' | b'!'
                            | b'<'
                            | b'>'
                            | b'+'
                            | b'-'
                            | b'*'
                            | b'/'
                            | b'%'
                            | b'&'
                            | b'|'
                            | b'^'
                            | b':'
                    )
                ) =>
            {
                continue;
            }
            b',' if !matches!(prev, Some(b'\'' | b'"')) => continue,
            _ => o + 1,
        };
        // The name, read backwards: spaces, a closing quote or bracket, the name.
        let mut p = o;
        while p > 0 && matches!(b[p - 1], b' ' | b'\t') {
            p -= 1;
        }
        if p > 0 && b[p - 1] == b']' {
            p -= 1;
        }
        let quoted_name = p > 0 && matches!(b[p - 1], b'\'' | b'"' | b'`');
        if quoted_name {
            p -= 1;
        } else if b[o] == b',' {
            continue;
        }
        let ne = p;
        let mut ns = p;
        while ns > 0 && ne - ns < 64 && name_byte(b[ns - 1]) {
            ns -= 1;
        }
        if ns == ne || !secret_word(&b[ns..ne]) && !b[ns..ne].eq_ignore_ascii_case(b"value") {
            continue;
        }
        // `<add key="ApiKey" value="…"/>`: the name is the key attribute's.
        let (ns, ne) = if b[ns..ne].eq_ignore_ascii_case(b"value") {
            match attribute_name(b, ns) {
                Some(span) => span,
                None => continue,
            }
        } else {
            (ns, ne)
        };
        let before = ns.checked_sub(1).map(|i| b[i]);
        // A name inside a path, URI or ARN (`…:secret:prod/db`) names nothing.
        if matches!(before, Some(b':' | b'/' | b'\\' | b'@' | b'%' | b'#')) {
            continue;
        }
        if let Some((start, end, family)) = judge(text, ns, ne, value_at) {
            let provider = end - start >= 20 && names_ai_provider(&text[ns..ne]);
            out.push((start, end, family, provider));
        }
    }
    // A literal handed to a credential-named call: `.bearer_auth("…")`,
    // `set_password('…')`, `Token("…")`.
    for o in memchr::memchr_iter(b'(', b) {
        if !matches!(b.get(o + 1), Some(b'\'' | b'"')) {
            continue;
        }
        let mut ns = o;
        while ns > 0 && o - ns < 64 && name_byte(b[ns - 1]) {
            ns -= 1;
        }
        if ns == o || !secret_word(&b[ns..o]) {
            continue;
        }
        // `get_secret("prod/db")`, `read_password("deploy")`: the literal names a secret.
        let verb = segments(&text[ns..o]).next().unwrap_or_default();
        if [
            "get", "read", "fetch", "load", "lookup", "resolve", "find", "has", "delete", "remove",
            "del", "exists", "require", "retrieve", "access", "expect", "parse", "validate",
        ]
        .iter()
        .any(|w| w.eq_ignore_ascii_case(verb))
        {
            continue;
        }
        if let Some((start, end, family)) = judge(text, ns, o, o + 1) {
            let provider = end - start >= 20 && names_ai_provider(&text[ns..o]);
            out.push((start, end, family, provider));
        }
    }
    out.sort_unstable_by_key(|f| f.0);
    out
}

const PROVIDERS: &[&str] = &[
    "openai",
    "anthropic",
    "claude",
    "groq",
    "gemini",
    "deepseek",
    "together",
    "fireworks",
    "perplexity",
    "pplx",
    "openrouter",
    "cerebras",
    "sambanova",
    "nvidia",
    "nim",
    "xai",
    "grok",
    "voyage",
    "deepinfra",
    "ai21",
    "moonshot",
    "kimi",
    "dashscope",
    "qwen",
    "zhipu",
    "glm",
    "siliconflow",
    "novita",
    "hyperbolic",
    "chutes",
    "ovh",
    "kilo",
    "opencode",
    "llm7",
    "deepgram",
    "assemblyai",
    "elevenlabs",
    "replicate",
    "huggingface",
    "hf",
    "jina",
    "exa",
    "tavily",
    "serpapi",
    "firecrawl",
    "scaleway",
    "nebius",
    "lambda",
    "featherless",
    "vertex",
    "bedrock",
    "llm",
    "wandb",
    "mistral",
    "cohere",
    "azureopenai",
    "githubmodels",
    "zai",
];

/// Whether a name names an AI provider: its key is one of the keys a
/// Claude Code user holds, with or without the provider's usual prefix.
fn names_ai_provider(name: &str) -> bool {
    segments(name).any(|s| PROVIDERS.iter().any(|p| p.eq_ignore_ascii_case(s)))
}

/// Whether a name holds a word that may name a secret.
fn secret_word(name: &[u8]) -> bool {
    const WORDS: &[&[u8]] = &[
        b"pass", b"pw", b"secret", b"cred", b"auth", b"token", b"key", b"appid",
    ];
    name.windows(2).enumerate().any(|(i, w)| {
        matches!(
            [w[0].to_ascii_lowercase(), w[1].to_ascii_lowercase()],
            [b'p', b'a' | b'w']
                | [b's', b'e']
                | [b'c', b'r']
                | [b'a', b'u' | b'p']
                | [b't', b'o']
                | [b'k', b'e']
        ) && WORDS.iter().any(|word| {
            name.len() >= i + word.len() && name[i..i + word.len()].eq_ignore_ascii_case(word)
        })
    })
}

/// For `key="ApiKey" value=`, the span of `ApiKey`, read back from `value`.
fn attribute_name(b: &[u8], value_start: usize) -> Option<(usize, usize)> {
    let mut p = value_start;
    while p > 0 && b[p - 1] == b' ' {
        p -= 1;
    }
    let q = *b.get(p.checked_sub(1)?)?;
    if !matches!(q, b'"' | b'\'') {
        return None;
    }
    let ne = p - 1;
    let ns = memchr::memrchr(q, &b[ne.saturating_sub(64)..ne])? + ne.saturating_sub(64) + 1;
    let attr = &b[ns.saturating_sub(5)..ns.saturating_sub(1)];
    (attr.eq_ignore_ascii_case(b"key=") || attr.eq_ignore_ascii_case(b"name=")).then_some((ns, ne))
}

/// Judges `name <op> value` with the name at `ns..ne` and the value from
/// `value_at`: the value's span and the name's family when it is a secret.
fn judge(text: &str, ns: usize, ne: usize, value_at: usize) -> Option<(usize, usize, Family)> {
    let b = text.as_bytes();
    let flag = b[ns..].starts_with(b"--");
    let name = text[ns..ne].trim_matches(['.', '-']);
    let want = family(name)?;
    let (line_start, line_end) = line_around(b, ns, ne);
    if !text.is_char_boundary(line_start) || !text.is_char_boundary(line_end) {
        return None;
    }
    let in_query = ns > 0 && matches!(b[ns - 1], b'?' | b'&');
    let lead = text[line_start..ns].trim();
    let first_on_line = matches!(
        lead,
        "" | "-" | "export" | "set" | "ENV" | "ARG" | "$" | "@"
    );

    let mut v = value_at;
    while v < line_end && matches!(b[v], b' ' | b'\t') {
        v += 1;
    }
    // A constructor around a literal: `SecretStr("…")`, `String::from("…")`.
    let call_len = b[v..line_end]
        .iter()
        .take_while(|&&c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
        .count();
    const WRAPPERS: &[&str] = &[
        "SecretStr",
        "SecretString",
        "Secret",
        "String",
        "str",
        "Some",
        "String::from",
        "SecretString::new",
        "SecretString::from",
        "Secret::new",
        "Sensitive",
        "Password",
    ];
    if call_len > 0
        && b.get(v + call_len) == Some(&b'(')
        && WRAPPERS.contains(&&text[v..v + call_len])
    {
        let q = v + call_len + 1;
        if matches!(b.get(q), Some(b'\'' | b'"')) {
            v = q;
        }
    }
    // String prefixes: b"", r"", f"", @"".
    if matches!(b.get(v), Some(b'b' | b'r' | b'u' | b'@'))
        && matches!(b.get(v + 1), Some(b'\'' | b'"'))
    {
        v += 1;
    }
    let (start, end, quoted) = match b.get(v) {
        Some(&q @ (b'\'' | b'"' | b'`')) => {
            let close = memchr::memchr(q, &b[v + 1..line_end])?;
            (v + 1, v + 1 + close, true)
        }
        Some(_) => {
            let len = b[v..line_end]
                .iter()
                .take_while(|&&c| {
                    !c.is_ascii_whitespace()
                        && !matches!(
                            c,
                            b'\'' | b'"' | b'`' | b',' | b';' | b')' | b'}' | b']' | b'<'
                        )
                })
                .count();
            (v, v + len, false)
        }
        None => return None,
    };
    let value = &text[start..end];
    if value.len() < 6 {
        return None;
    }
    // Unquoted code: a call, or a dotted path without a digit (`user.password`).
    if !quoted
        && (value.contains('(')
            || value.contains('.')
                && value
                    .bytes()
                    .all(|c| c.is_ascii_alphabetic() || c == b'.' || c == b'_'))
    {
        return None;
    }
    let ok = match want {
        Family::Password => looks_like_password(value, quoted || first_on_line || flag),
        // A bare `key` is a word in code; in a URL's query (`?key=`) it is a key.
        Family::Key if segments(name).count() == 1 && !in_query => {
            value.len() >= 20 && classes(value) >= 3 && looks_random(value)
        }
        _ => looks_random(value),
    };
    if !ok
        || is_reference(value)
        || is_placeholder(value, false)
        || is_public_value(value)
        || public_name(name)
        || says_not_real(
            &text[line_start..line_end],
            start - line_start,
            end - line_start,
        )
    {
        return None;
    }
    Some((start, end, want))
}

/// The line holding `ns..ne`, at most 1 KB before and 4 KB after it.
fn line_around(b: &[u8], ns: usize, ne: usize) -> (usize, usize) {
    let lo = ns.saturating_sub(1024);
    let start = memchr::memrchr(b'\n', &b[lo..ns]).map_or(lo, |i| lo + i + 1);
    let hi = (ne + 4096).min(b.len());
    let end = memchr::memchr(b'\n', &b[ne..hi]).map_or(hi, |i| ne + i);
    (start, end)
}

fn classes(v: &str) -> usize {
    [
        v.bytes().any(|c| c.is_ascii_lowercase()),
        v.bytes().any(|c| c.is_ascii_uppercase()),
        v.bytes().any(|c| c.is_ascii_digit()),
        v.bytes().any(|c| !c.is_ascii_alphanumeric()),
    ]
    .iter()
    .filter(|&&x| x)
    .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_families() {
        assert_eq!(family("DB_PASSWORD"), Some(Family::Password));
        assert_eq!(family("dbPassword"), Some(Family::Password));
        assert_eq!(family("password_hash"), None);
        assert_eq!(family("client_secret"), Some(Family::Secret));
        assert_eq!(family("GITHUB_TOKEN"), Some(Family::Token));
        assert_eq!(family("max_tokens"), None);
        assert_eq!(family("token_type"), None);
        assert_eq!(family("stripeApiKey"), Some(Family::Key));
        assert_eq!(family("cache_key"), None);
        assert_eq!(family("public_key"), None);
        assert_eq!(family("passenger"), None);
        assert_eq!(family("_auth"), Some(Family::Secret));
    }

    fn value<'a>(text: &'a str, _word: &str, fam: Family) -> Option<&'a str> {
        assignments(text)
            .into_iter()
            .find(|f| f.2 == fam)
            .map(|(a, b, _, _)| &text[a..b])
    }

    #[test]
    fn syntaxes() {
        let v = "Zq8Lm9Ty4Rw7Pk3Js1Gd5Fb0Ca8Eu2Yq";
        for line in [
            format!("API_KEY={v}"),
            format!("export API_KEY=\"{v}\""),
            format!("  api_key: {v}"),
            format!("{{\"api_key\": \"{v}\"}}"),
            format!("api_key = '{v}'"),
            format!("apiKey := \"{v}\""),
            format!("'api_key' => '{v}',"),
            format!("ENV['API_KEY'] = '{v}'"),
            format!("client.api_key = SecretStr(\"{v}\")"),
            format!("<add key=\"ApiKey\" value=\"{v}\" />"),
            format!("tool --api-key={v}"),
        ] {
            assert_eq!(value(&line, "key", Family::Key), Some(v), "{line}");
        }
        assert_eq!(
            value(
                "define( 'DB_PASSWORD', 'Xk9#mQ2!vL7p' );",
                "PASS",
                Family::Password
            ),
            Some("Xk9#mQ2!vL7p")
        );
        assert_eq!(value("if api_key == other_key {", "key", Family::Key), None);
        assert_eq!(
            value("password: ${DB_PASSWORD}", "pass", Family::Password),
            None
        );
        assert_eq!(
            value("password = user.password", "pass", Family::Password),
            None
        );
    }
}
