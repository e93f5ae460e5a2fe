//! Judging a candidate value: a secret, or a placeholder, a reference, an
//! identifier, a hash, a documented example?
//!
//! Pure functions of the value (and, for `says_not_real`, its line). The
//! rules find where a value sits; these decide whether it is one.

use std::sync::OnceLock;

use regex::Regex;

/// Values published in vendors' documentation as examples: never real.
const DOCUMENTED_EXAMPLES: &[&str] = &[
    // AWS's documented key pair.
    "AKIAIOSFODNN7EXAMPLE",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    // jwt.io's example signature.
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    // Stripe's documented test-mode keys.
    "4eC39HqLyjWDarjtT1zdp7dc",
    "TYooMQauvdEDq54NiTphI7jx",
    // Telegram's documented bot token.
    "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11",
    // GitHub's documented token example.
    "16C7e42F292c6912E7710c838347Ae178B4a",
    // The Google Cloud SDK's public OAuth client secret.
    "d-FL95Q19q7MQmFpd7hHD0Ty",
];

/// Placeholders and references, not secrets.
///
/// `strict` is for rules whose shape is specific (a `ghp_` token): only
/// markers a random token cannot plausibly contain count there (six letters or
/// more, or punctuation). Four-letter words like `todo` turn up by chance in
/// about one random 36-character token in 30,000, so only generic
/// assignments, which need more care against prose and code, use them.
pub(super) fn is_placeholder(v: &str, strict: bool) -> bool {
    if DOCUMENTED_EXAMPLES.iter().any(|e| v.contains(e)) {
        return true;
    }
    let l = v.to_lowercase();
    const STRONG: &[&str] = &[
        "xxxxxx",
        "example",
        "placeholder",
        "redacted",
        "changeme",
        "change_me",
        "change-me",
        "sample",
        "<",
        ">",
        "${",
        "{{",
        "$(",
        "%(",
        "...",
        "…",
        "****",
        "••••",
        "insert",
        "replace",
        "abcdefgh",
        "12345678",
        "process.env",
        "os.environ",
        "getenv",
        "env[",
        "env.",
        "env:",
        "secrets.",
        "secretkeyref",
        "your_",
        "your-",
        "_here",
        "-here",
        "notreal",
        "not_real",
        "not-a-real",
    ];
    const WEAK: &[&str] = &["your", "xxxx", "dummy", "todo", "fake", "0000"];
    if STRONG.iter().any(|m| l.contains(m)) || (!strict && WEAK.iter().any(|m| l.contains(m))) {
        return true;
    }
    let mut chars = v.chars().filter(char::is_ascii_alphanumeric);
    if let Some(first) = chars.next()
        && chars.all(|c| c == first)
    {
        return true;
    }
    false
}

/// A reference to where a secret is kept, not the secret: a variable, a
/// template, a secret manager's path, a file.
pub(super) fn is_reference(v: &str) -> bool {
    let l = v.to_ascii_lowercase();
    let b = v.as_bytes();
    let ident =
        |s: &[u8]| !s.is_empty() && s.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
    match b.first() {
        // `$VAR`, `${VAR}`, `$(cmd)`; `$2b$…` is a bcrypt hash, judged elsewhere.
        Some(b'$')
            if b.get(1)
                .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, b'{' | b'(' | b'_')) =>
        {
            return true;
        }
        // `%VAR%`, `%(name)s`, `%s`.
        Some(b'%') if v.len() > 2 && v.ends_with('%') && ident(&b[1..b.len() - 1]) => return true,
        Some(b'%') if matches!(b.get(1), Some(b'(' | b's' | b'd')) => return true,
        // `{name}`, `{{ name }}`.
        Some(b'{') if v.ends_with('}') => return true,
        _ => {}
    }
    const STARTS: &[&str] = &[
        "@microsoft.keyvault",
        "arn:aws:secretsmanager",
        "arn:aws:ssm",
        "vault:",
        "vault://",
        "op://",
        "sm://",
        "ssm:",
        "awssm:",
        "gcp:",
        "azurekeyvault",
        "secret://",
        "file:",
        "keyring:",
        "!ref",
        "!sub",
        "!getatt",
        "projects/",
        "/run/secrets",
        "/var/run/secrets",
        "/etc/",
        "~/",
        "./",
        "../",
        "enc(",
        "env(",
        "ref+",
        "valuefrom",
    ];
    if STARTS.iter().any(|s| l.starts_with(s)) {
        return true;
    }
    const ANYWHERE: &[&str] = &[
        "secretkeyref",
        "secretsmanager",
        "/secrets/",
        "keyvault",
        "{{resolve:",
    ];
    ANYWHERE.iter().any(|s| l.contains(s))
}

/// Keys made to be public: publishable and client-side tokens.
pub(super) fn is_public_value(v: &str) -> bool {
    [
        "pk_live_",
        "pk_test_",
        "pk.eyJ",
        "sb_publishable_",
        "FLWPUBK",
        "sq0idp-",
        "xpub",
        "tpub",
    ]
    .iter()
    .any(|p| v.starts_with(p))
}

/// Words that sit in config and docs where a value would be: types, defaults,
/// booleans, documentation's stand-ins.
pub(super) fn is_stand_in_word(v: &str) -> bool {
    const WORDS: &[&str] = &[
        "password",
        "passwd",
        "pass",
        "secret",
        "token",
        "apikey",
        "api_key",
        "admin",
        "root",
        "guest",
        "postgres",
        "mysql",
        "test",
        "testing",
        "default",
        "none",
        "null",
        "nil",
        "true",
        "false",
        "yes",
        "no",
        "required",
        "optional",
        "string",
        "str",
        "int",
        "bool",
        "bytes",
        "secretstr",
        "undefined",
        "empty",
        "hidden",
        "masked",
        "mysecretpassword",
        "supersecret",
        "secretpassword",
        "letmein",
        "qwerty",
        "hunter2",
        "p@ssw0rd",
        "passw0rd",
        "password1",
        "password123",
        "pa$$word",
        "s3cr3t",
        "user",
        "username",
    ];
    let l = v.to_ascii_lowercase();
    WORDS.contains(&l.as_str())
}

/// Shannon entropy in bits per character.
pub(super) fn entropy(v: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in v.bytes() {
        counts[b as usize] += 1;
    }
    let n = v.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

fn shapes() -> &'static [Regex] {
    static SHAPES: OnceLock<Vec<Regex>> = OnceLock::new();
    SHAPES.get_or_init(|| {
        [
            // 0. Identifiers, dotted paths, calls and env-var names: references, not values.
            r"^[A-Za-z_$][A-Za-z0-9_$]*(?:(?:\.|::|->)[A-Za-z_$][A-Za-z0-9_$]*)*(?:\(\)?)?$",
            // 1. UUIDs.
            r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
            // 2. Hash-prefixed digests (lockfiles, SRI), crypt(3) and bcrypt hashes.
            r"^(?:sha\d{1,3}|md5|blake2b?)[-:=]|^\$(?:2[abxy]?|5|6|argon2(?:id|i|d)|scrypt|pbkdf2[\w-]*)\$",
            // 3. File paths and URLs without credentials.
            r"^(?:\.{0,2}/|~/|[a-z]+://)[^@]*$",
            // 4. Data URIs.
            r"^data:",
            // 5. Dates, times, versions, numbers with units.
            r"^v?\d+(?:[.:\-/]\d+)+[a-zA-Z]*$",
            // 6. Words joined by separators: `refresh-token-expired`, `user_access_token`.
            r"^[a-zA-Z]+(?:[_\-. ][a-zA-Z]+)*$",
            // 7. Lower-case paths: a secret manager's key, a file (`prod/db/password`).
            r"^[a-z0-9_.\-]+(?:/[a-z0-9_.\-]+)+$",
        ]
        .iter()
        .map(|p| Regex::new(p).expect("static shape"))
        .collect()
    })
}

/// Whether a generic value is random enough to be a real secret rather than
/// an identifier, a reference, a hash, a UUID or a word.
pub(super) fn looks_random(v: &str) -> bool {
    let v = v.trim_end_matches(['.', ':']);
    // Code, not a value: a call or an index expression.
    if v.len() < 10 || v.len() > 1024 || v.contains('(') || v.contains('[') {
        return false;
    }
    let lower = v.bytes().any(|c| c.is_ascii_lowercase());
    let upper = v.bytes().any(|c| c.is_ascii_uppercase());
    let digit = v.bytes().any(|c| c.is_ascii_digit());
    let symbol = v.bytes().any(|c| !c.is_ascii_alphanumeric());
    let classes = [lower, upper, digit, symbol].iter().filter(|&&x| x).count();
    if classes < 2 || is_reference(v) {
        return false;
    }
    let shapes = shapes();
    if shapes[1..].iter().any(|re| re.is_match(v)) {
        return false;
    }
    let e = entropy(v);
    if shapes[0].is_match(v) {
        // An identifier still counts when it mixes digits through it like a
        // key does; a dotted one when a part is long and random (a token's
        // dot-separated parts start with letters by chance).
        let random_part = |p: &str| {
            p.len() >= 16
                && p.bytes().any(|c| c.is_ascii_digit())
                && p.bytes().any(|c| c.is_ascii_uppercase())
                && p.bytes().any(|c| c.is_ascii_lowercase())
        };
        // Digits strewn through letters also read as a key (`d41d8cd98f00…`,
        // a lower-case session id), not as a name.
        let digits = v.bytes().filter(u8::is_ascii_digit).count();
        let letters = v.bytes().filter(u8::is_ascii_alphabetic).count();
        let strewn = v.len() >= 16 && digits >= 4 && letters >= 4 && e >= 3.5 && !v.contains('_');
        return (digit && upper && lower && e >= 4.0 || strewn)
            && (!v.contains('.') || v.split('.').any(random_part));
    }
    e >= 3.0
}

/// Whether a value assigned to a password-like name is a real password:
/// more lenient than `looks_random` (people pick words), but never a
/// reference, a stand-in word or code.
pub(super) fn looks_like_password(v: &str, quoted: bool) -> bool {
    let v = v.trim_end_matches([';', ',']);
    if v.len() < 6 || v.len() > 256 || !quoted && (v.contains('(') || v.contains('[')) {
        return false;
    }
    if is_reference(v) || is_stand_in_word(v) || is_placeholder(v, false) {
        return false;
    }
    let l = v.to_ascii_lowercase();
    if ["password", "passwd", "secret", "pass123", "123456"]
        .iter()
        .any(|w| l.contains(w))
        && v.len() < 20
    {
        return false;
    }
    let shapes = shapes();
    if shapes[2].is_match(v) || shapes[3].is_match(v) || shapes[4].is_match(v) {
        return false;
    }
    if !quoted {
        // Unquoted code: `password = user.password`, `pwd = get()`.
        if v.contains('(') || shapes[0].is_match(v) && !v.bytes().any(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    let digit = v.bytes().any(|c| c.is_ascii_digit());
    let symbol = v.bytes().any(|c| !c.is_ascii_alphanumeric());
    let mixed =
        v.bytes().any(|c| c.is_ascii_uppercase()) && v.bytes().any(|c| c.is_ascii_lowercase());
    // Letters alone pass when long (a passphrase); a sentence does not.
    (digit || symbol || mixed) && !v.contains("  ") && !(v.contains(' ') && v.len() < 12)
        || (v.len() >= 12 && v.bytes().all(|b| b.is_ascii_alphabetic()))
}

/// A line that says its value (at `start..end` in it) is not real: test
/// fixtures that say so. The value itself is not read: a random token may
/// hold "Fake" by chance.
pub(super) fn says_not_real(line: &str, start: usize, end: usize) -> bool {
    let says = |part: &str| {
        let l = part.to_ascii_lowercase();
        ["not a real", "not real", "fake", "dummy", "fixture"]
            .iter()
            .any(|m| l.contains(m))
    };
    says(&line[..start]) || says(&line[end..])
}

/// Whether the name a value is assigned to marks it public: publishable keys,
/// anon keys, client-side config (`NEXT_PUBLIC_…`).
pub(super) fn public_name(name: &str) -> bool {
    let l = name.to_ascii_lowercase();
    ["public", "publishable", "anon"]
        .iter()
        .any(|m| l.contains(m))
}

/// Decodes standard or URL-safe base64, ignoring padding; `None` if it is not.
pub(super) fn base64_decode(v: &str) -> Option<Vec<u8>> {
    let v = v.trim_end_matches('=');
    let mut out = Vec::with_capacity(v.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for b in v.bytes() {
        let x = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(x);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// A base64 value that decodes to `user:password` with a real password.
pub(super) fn is_user_pass_pair(v: &str) -> bool {
    let Some(bytes) = base64_decode(v) else {
        return false;
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return false;
    };
    match text.split_once(':') {
        Some((user, pass)) => {
            !user.contains(char::is_control)
                && !pass.contains(char::is_control)
                && pass.len() >= 4
                && !is_placeholder(pass, false)
                && !is_stand_in_word(pass)
                && !is_stand_in_word(user.trim()) | (pass.len() >= 8)
        }
        None => false,
    }
}

/// A seed phrase: 12 to 24 lowercase words of 3 to 8 letters, not a sentence.
pub(super) fn is_seed_phrase(v: &str) -> bool {
    let words: Vec<&str> = v.split_whitespace().collect();
    if ![12, 15, 18, 21, 24].contains(&words.len()) {
        return false;
    }
    const PROSE: &[&str] = &[
        "the", "and", "you", "your", "with", "that", "this", "from", "for", "are", "into", "word",
        "words", "phrase", "seed",
    ];
    let prose = words.iter().filter(|w| PROSE.contains(w)).count();
    let distinct: std::collections::HashSet<&&str> = words.iter().collect();
    prose <= 1
        && distinct.len() * 10 >= words.len() * 9
        && words
            .iter()
            .all(|w| (3..=8).contains(&w.len()) && w.bytes().all(|b| b.is_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_pairs() {
        // "deploy:Xk9#mQ2!vL7p"
        assert!(is_user_pass_pair("ZGVwbG95OlhrOSNtUTIhdkw3cA=="));
        // "user:password" is a stand-in.
        assert!(!is_user_pass_pair("dXNlcjpwYXNzd29yZA=="));
        // Not base64 of a pair.
        assert!(!is_user_pass_pair("aGVsbG8gd29ybGQ="));
        assert!(!is_user_pass_pair("not base64!"));
    }

    #[test]
    fn passwords_and_stand_ins() {
        assert!(looks_like_password("Tr0ub4dor&3", true));
        assert!(looks_like_password("correcthorsebatterystaple", true));
        assert!(!looks_like_password("password", true));
        assert!(!looks_like_password("${DB_PASSWORD}", false));
        assert!(!looks_like_password("user.password", false));
        assert!(!looks_like_password("get_password()", false));
        assert!(!looks_like_password(
            "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
            true
        ));
    }

    #[test]
    fn seed_phrases() {
        assert!(is_seed_phrase(
            "abandon ability able about above absent absorb abstract absurd abuse access accident"
        ));
        assert!(!is_seed_phrase(
            "write the twelve words down on paper and keep them somewhere safe ok"
        ));
    }
}
