//! The credential gate: finds secrets in text that is about to leave the machine.
//!
//! Pure and synchronous. One pass of an Aho-Corasick automaton over the text
//! finds the keywords (literal prefixes like `ghp_`, or words like `secret`)
//! that can start a finding; only the rules whose keywords occur then run
//! their regex. Generic rules (a `password = ...` assignment, a bearer
//! header) also require the value to look random, and every rule drops
//! placeholders (`YOUR_API_KEY`, `sk-...`, `${TOKEN}`, `<token>`).
//!
//! Invariant: a `Finding` never holds the secret. It names the rule, the
//! line and column, and a mask that shows at most a known literal prefix.

mod generic;
mod injection;
mod rules;
mod values;

use std::sync::OnceLock;

pub(crate) use injection::{Flag, flags as injection_flags};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use regex::bytes::{Regex, RegexBuilder};

use rules::{Check, How, RULES, RuleDef};
use values::{
    is_placeholder, is_public_value, is_seed_phrase, is_user_pass_pair, looks_like_password,
    looks_random, public_name, says_not_real,
};

/// One secret found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Rule id (`github-token`).
    pub rule: &'static str,
    /// What kind of secret, in words.
    pub kind: &'static str,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// The value masked: a known prefix at most, then its length.
    pub masked: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at line {}, column {} ({})",
            self.kind, self.line, self.column, self.masked
        )
    }
}

const KEYWORD_BYTES: usize = 16;

struct Scanner {
    /// Every keyword, any case, in one automaton: one pass over the text.
    automaton: AhoCorasick,
    /// pattern index -> (rule, the exact form when the keyword is a
    /// case-sensitive token prefix like `ghp_` or `AKIA`)
    rules: Vec<Vec<(usize, Option<&'static str>)>>,
    /// Compiled on first use: a text that wakes no rule pays for none.
    regexes: Vec<OnceLock<Regex>>,
}

fn scanner() -> &'static Scanner {
    static SCANNER: OnceLock<Scanner> = OnceLock::new();
    SCANNER.get_or_init(|| {
        let mut keywords: Vec<String> = Vec::new();
        let mut rules: Vec<Vec<(usize, Option<&'static str>)>> = Vec::new();
        for (i, r) in RULES.iter().enumerate() {
            for k in r.keywords {
                // Sixteen bytes say enough to wake a rule, whose regex says the
                // rest; short keywords keep the automaton small and in cache.
                let k = &k[..k.len().min(KEYWORD_BYTES)];
                let entry = (i, (!r.fold).then_some(k));
                let lower = k.to_ascii_lowercase();
                if let Some(j) = keywords.iter().position(|x| *x == lower) {
                    if !rules[j].contains(&entry) {
                        rules[j].push(entry);
                    }
                } else {
                    keywords.push(lower);
                    rules.push(vec![entry]);
                }
            }
        }
        // Matches do not overlap, so a keyword also wakes the rules of every
        // keyword inside it (`sk-ant-` those of `sk-`); an exact form is
        // then looked for around the hit.
        let own = rules.clone();
        for (j, k) in keywords.iter().enumerate() {
            for (i, other) in keywords.iter().enumerate() {
                if i != j && k.contains(other.as_str()) {
                    for e in &own[i] {
                        if !rules[j].contains(e) {
                            rules[j].push(*e);
                        }
                    }
                }
            }
        }
        let automaton = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(AhoCorasickKind::DFA))
            .build(&keywords)
            .expect("static keywords build");
        Scanner {
            automaton,
            rules,
            regexes: RULES.iter().map(|_| OnceLock::new()).collect(),
        }
    })
}

fn regex_of<'a>(s: &'a Scanner, r: usize, pattern: &str) -> &'a Regex {
    // ASCII classes: the shapes are ASCII, and Unicode `\w` or `(?i)` would
    // make each regex many times larger to build and to run.
    s.regexes[r].get_or_init(|| {
        RegexBuilder::new(pattern)
            .unicode(false)
            .build()
            .expect("static rule regex")
    })
}

/// Each rule's id and kind, in priority order.
pub fn kinds() -> impl Iterator<Item = (&'static str, &'static str)> {
    RULES.iter().map(|r| (r.id, r.kind))
}

/// Number of secret kinds the gate knows.
pub fn rule_count() -> usize {
    RULES.len()
}

/// Scans `text` and returns every finding, in text order.
///
/// # Panics
///
/// Never for any text; only if a built-in rule did not compile, which the
/// unit tests rule out.
pub fn scan(text: &str) -> Vec<Finding> {
    findings(text, &spans(text))
}

/// The text with every secret replaced by `[redacted: KIND]`, and how many
/// were. For answers coming back: a worker may echo a secret it was shown or
/// invent one that is real. Where each one was is read off the text that is
/// finally shown (`redactions`), since a check may cut the answer down.
pub(crate) fn redact(text: &str) -> (String, usize) {
    let spans = spans(text);
    if spans.is_empty() {
        return (text.to_owned(), 0);
    }
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for &(start, end, r) in &spans {
        if start < pos {
            continue; // inside a key block already taken out
        }
        let end = if text[start..end].starts_with("-----BEGIN") {
            block_end(text, end)
        } else {
            end
        };
        out.push_str(&text[pos..start]);
        out.push_str(REDACTED_OPEN);
        out.push_str(RULES[r].kind);
        out.push(']');
        pos = end;
    }
    out.push_str(&text[pos..]);
    (out, spans.len())
}

const REDACTED_OPEN: &str = "[redacted: ";

/// Where a key block whose header ends at `from` ends: after its `-----END`
/// line, or else after the run of base64 lines that follows the header (the
/// rules match the header alone; the body is the secret).
fn block_end(text: &str, from: usize) -> usize {
    let rest = &text[from..];
    if let Some(at) = rest.find("-----END ") {
        let after = &rest[at + 9..];
        if let Some(close) = after.find("-----") {
            return from + at + 9 + close + 5;
        }
    }
    let mut lines = rest.split_inclusive('\n');
    // What is left of the header line, then the body.
    let mut end = from + lines.next().map_or(0, str::len);
    for line in lines {
        let body = line.trim_end();
        let base64 = !body.is_empty()
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
        let header = ["Proc-Type:", "DEK-Info:", "Comment:"]
            .iter()
            .any(|h| body.starts_with(h));
        if !(base64 || header) {
            break;
        }
        end += line.len();
    }
    // Keep the newline that ended the block, so lines after keep their places.
    if text[..end].ends_with('\n') && end > from {
        end - 1
    } else {
        end
    }
}

/// A secret `redact` took out of a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Redaction {
    /// What kind of secret (`GitHub token`).
    pub(crate) kind: String,
    /// 1-based line in the text as shown.
    pub(crate) line: usize,
}

/// Where `redact` left its marks in `text`, in text order.
pub(crate) fn redactions(text: &str) -> Vec<Redaction> {
    let kinds: std::collections::HashSet<&str> = RULES.iter().map(|r| r.kind).collect();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find(REDACTED_OPEN) {
            rest = &rest[at + REDACTED_OPEN.len()..];
            if let Some(end) = rest.find(']')
                && kinds.contains(&rest[..end])
            {
                out.push(Redaction {
                    kind: rest[..end].to_owned(),
                    line: i + 1,
                });
            }
        }
    }
    out
}

/// How far around a keyword a rule's regex looks: its line, at most this far.
const BEFORE: usize = 512;
const AFTER: usize = 2048;

/// Texts this large are scanned in pieces, one per core.
const PARALLEL_FROM: usize = 1 << 20;

/// Where the secrets are: (start, end, rule), in text order, never overlapping.
///
/// Every rule reads within a line, so a large text (a whole file) is cut at
/// line breaks into one piece per core, each piece starting at its `\n`.
fn spans(text: &str) -> Vec<(usize, usize, usize)> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    spans_on(
        text,
        if text.len() >= PARALLEL_FROM {
            cores.min(8)
        } else {
            1
        },
    )
}

fn spans_on(text: &str, threads: usize) -> Vec<(usize, usize, usize)> {
    let mut cuts = vec![0];
    for i in 1..threads {
        let target = (text.len() * i / threads).max(*cuts.last().unwrap_or(&0));
        if let Some(j) = memchr::memchr(b'\n', &text.as_bytes()[target..]) {
            cuts.push(target + j);
        }
    }
    cuts.push(text.len());
    cuts.dedup();
    if cuts.len() <= 2 {
        return spans_in(text);
    }
    std::thread::scope(|scope| {
        let pieces: Vec<_> = cuts
            .windows(2)
            .map(|w| {
                let (a, b) = (w[0], w[1]);
                scope.spawn(move || {
                    let mut found = spans_in(&text[a..b]);
                    for s in &mut found {
                        s.0 += a;
                        s.1 += a;
                    }
                    found
                })
            })
            .collect();
        pieces
            .into_iter()
            // A piece that panicked must not pass as clean: the panic goes on.
            .flat_map(|p| p.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// `scan` on one thread whatever the text's size: for the benchmark's
/// single-thread figure.
#[doc(hidden)]
pub fn scan_on_one_thread(text: &str) -> Vec<Finding> {
    findings(text, &spans_on(text, 1))
}

/// The spans of one piece.
///
/// One pass of the keyword automaton; each hit runs only its own rules, and
/// only over the hit's line (regex rules, once per line and rule) or from the
/// hit itself (the assignment reader). Overlaps go to the earlier rule.
fn spans_in(text: &str) -> Vec<(usize, usize, usize)> {
    let s = scanner();
    let mut done = vec![0usize; RULES.len()];
    let mut found: Vec<(usize, usize, usize)> = Vec::new(); // (rule, start, end)
    // Shapes a rule matched and then judged not a secret (a stand-in
    // password, a documented example): later rules may not claim them.
    let mut vetoed: Vec<(usize, usize, usize)> = Vec::new();
    for m in s.automaton.find_iter(text) {
        let (hs, he) = (m.start(), m.end());
        for &(r, exact) in &s.rules[m.pattern().as_usize()] {
            if let Some(form) = exact
                && !text.as_bytes()[hs..he]
                    .windows(form.len())
                    .any(|w| w == form.as_bytes())
            {
                continue;
            }
            run(text, s, r, (hs, he), &mut done, &mut found, &mut vetoed);
        }
    }
    for (a, b, family, provider) in generic::assignments(text) {
        if let Some(r) = RULES.iter().position(|r| match r.how {
            How::Provider => provider,
            How::Assign(f) => f == family,
            How::Regex(_) => false,
        }) {
            found.push((r, a, b));
        }
    }
    found.sort_unstable();
    found.dedup();
    let mut spans: Vec<(usize, usize, usize)> = Vec::with_capacity(found.len());
    for (r, a, b) in found {
        // An earlier (more specific) rule already covering this span wins,
        // and one that judged it harmless keeps later ones off it.
        if spans.iter().any(|&(x, y, _)| x < b && a < y)
            || vetoed.iter().any(|&(v, x, y)| v < r && x < b && a < y)
        {
            continue;
        }
        spans.push((a, b, r));
    }
    spans.sort_unstable();
    spans
}

/// Runs rule `r` for a keyword hit at `hs..he`.
fn run(
    text: &str,
    s: &Scanner,
    r: usize,
    (hs, he): (usize, usize),
    done: &mut [usize],
    found: &mut Vec<(usize, usize, usize)>,
    vetoed: &mut Vec<(usize, usize, usize)>,
) {
    let rule = &RULES[r];
    match rule.how {
        How::Assign(_) | How::Provider => {}
        How::Regex(pattern) => {
            if hs < done[r] {
                return;
            }
            let (ws, we) = window(text, hs, he);
            done[r] = we;
            let re = regex_of(s, r, pattern);
            let hay = &text.as_bytes()[ws..we];
            let mut judge = |a: usize, b: usize| {
                if !text.is_char_boundary(ws + a) || !text.is_char_boundary(ws + b) {
                    return;
                }
                match accept(text, rule, ws + a, ws + b) {
                    Verdict::Secret => found.push((r, ws + a, ws + b)),
                    Verdict::Harmless => vetoed.push((r, ws + a, ws + b)),
                    Verdict::SaysNotReal => {}
                }
            };
            if re.captures_len() == 1 {
                for m in re.find_iter(hay) {
                    judge(m.start(), m.end());
                }
            } else {
                for caps in re.captures_iter(hay) {
                    if let Some(m) = ["v", "q", "d"]
                        .iter()
                        .find_map(|g| caps.name(g))
                        .or_else(|| caps.get(0))
                    {
                        judge(m.start(), m.end());
                    }
                }
            }
        }
    }
}

/// The hit's line, cut to `BEFORE` and `AFTER` bytes around it.
fn window(text: &str, hs: usize, he: usize) -> (usize, usize) {
    let b = text.as_bytes();
    let lo = hs.saturating_sub(BEFORE);
    let ws = memchr::memrchr(b'\n', &b[lo..hs]).map_or(lo, |i| lo + i + 1);
    let hi = (he + AFTER).min(b.len());
    let we = memchr::memchr(b'\n', &b[he..hi]).map_or(hi, |i| he + i);
    (floor_char(text, ws), floor_char(text, we))
}

fn floor_char(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

enum Verdict {
    Secret,
    /// The value is a placeholder, a stand-in or public.
    Harmless,
    /// Its line says it is not real (a test fixture).
    SaysNotReal,
}

/// Whether a regex match is a secret by its rule's check and its line.
fn accept(text: &str, rule: &RuleDef, start: usize, end: usize) -> Verdict {
    let value = &text[start..end];
    let ok = match rule.check {
        Check::Exact => !is_placeholder(value, true),
        Check::Random => !is_placeholder(value, false) && looks_random(value),
        Check::Password => looks_like_password(value, true),
        Check::UserPass => is_user_pass_pair(value),
        Check::Seed => is_seed_phrase(value),
    };
    let ls = text[..start].rfind('\n').map_or(0, |i| i + 1);
    if !ok || is_public_value(value) || assigned_name(&text[ls..start]).is_some_and(public_name) {
        return Verdict::Harmless;
    }
    let le = text[end..].find('\n').map_or(text.len(), |i| end + i);
    if says_not_real(&text[ls..le], start - ls, end - ls) {
        Verdict::SaysNotReal
    } else {
        Verdict::Secret
    }
}

/// The name a value is assigned to, read backwards from the value.
fn assigned_name(before: &str) -> Option<&str> {
    let t = before.trim_end_matches(['\'', '"', '`', ' ']);
    let t2 = t.trim_end_matches(['=', ':', '>', ' ', '\'', '"']);
    if t2.len() == t.len() {
        return None;
    }
    let start = t2
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'))
        .map_or(0, |i| i + 1);
    Some(&t2[start..])
}

/// The findings of spans: rule, line, column and a mask.
fn findings(text: &str, spans: &[(usize, usize, usize)]) -> Vec<Finding> {
    let mut findings = Vec::with_capacity(spans.len());
    let mut line = 1;
    let mut line_start = 0;
    let mut pos = 0;
    for &(start, end, r) in spans {
        for (off, b) in text[pos..start].bytes().enumerate() {
            if b == b'\n' {
                line += 1;
                line_start = pos + off + 1;
            }
        }
        pos = start;
        let column = text[line_start..start].chars().count() + 1;
        let rule = &RULES[r];
        findings.push(Finding {
            rule: rule.id,
            kind: rule.kind,
            line,
            column,
            masked: mask(&text[start..end], rule.prefix),
        });
    }
    findings
}

fn mask(value: &str, prefix: usize) -> String {
    let shown: String = value.chars().take(prefix.min(12)).collect();
    format!("{shown}…[{} chars]", value.chars().count())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts that `text` yields exactly one finding of `rule`.
    fn hit(rule: &str, text: &str) {
        let f = scan(text);
        assert!(
            f.iter().any(|f| f.rule == rule),
            "{rule} missed in {text:?}: {f:?}"
        );
    }

    fn clean(text: &str) {
        let f = scan(text);
        assert!(f.is_empty(), "false positive in {text:?}: {f:?}");
    }

    // Built at run time so the source holds no literal key-shaped strings.
    fn r(prefix: &str, n: usize) -> String {
        let alphabet = b"aB3dE5fG7hJ9kLmN2pQ4rS6tU8vWxYz";
        let tail: String = (0..n)
            .map(|i| alphabet[(i * 7 + 3) % alphabet.len()] as char)
            .collect();
        format!("{prefix}{tail}")
    }

    fn hex(n: usize) -> String {
        (0..n)
            .map(|i| b"0123456789abcdef"[(i * 5 + 1) % 16] as char)
            .collect()
    }

    #[test]
    fn knows_at_least_45_kinds() {
        assert!(rule_count() >= 45, "{}", rule_count());
    }

    #[test]
    fn llm_provider_keys() {
        hit(
            "anthropic-api-key",
            &format!("ANTHROPIC_API_KEY={}", r("sk-ant-api03-", 90)),
        );
        hit("claude-oauth-token", &r("token: sk-ant-oat01-", 80));
        hit(
            "openai-project-key",
            &format!("key = \"{}\"", r("sk-proj-", 120)),
        );
        hit(
            "openai-legacy-key",
            &format!("{}T3BlbkFJ{}", r("sk-", 20), r("", 20)),
        );
        hit("openai-style-key", &format!("deepseek: sk-{}", hex(32)));
        hit("openrouter-key", &format!("sk-or-v1-{}", hex(64)));
        hit("groq-key", &r("gsk_", 52));
        hit("cerebras-key", &format!("csk-{}", r("", 48).to_lowercase()));
        hit("nvidia-key", &r("nvapi-", 64));
        hit("xai-key", &r("xai-", 80));
        hit("huggingface-token", &r("hf_", 34));
        hit("google-api-key", &r("AIza", 35));
        hit("perplexity-key", &r("pplx-", 48));
        hit("replicate-token", &r("r8_", 37));
        hit("mistral-key", &format!("MISTRAL_API_KEY={}", r("", 32)));
        hit("cohere-key", &format!("cohere_api_key: {}", r("", 40)));
    }

    #[test]
    fn cloud_credentials() {
        hit("aws-access-key-id", "AKIAQWERTYUIOPASDFGH");
        hit(
            "aws-secret-key",
            &format!("aws_secret_access_key = {}", r("", 40)),
        );
        hit(
            "aws-session-token",
            &format!("AWS_SESSION_TOKEN={}", r("", 160)),
        );
        hit(
            "gcp-service-account",
            &format!(
                "{{\"type\": \"service_account\", \"private_key_id\": \"{}\"}}",
                hex(40)
            ),
        );
        hit(
            "azure-storage-key",
            &format!(
                "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={}==",
                r("", 86)
            ),
        );
        hit(
            "azure-client-secret",
            &format!("secret: {}", r("Ab18Q~", 34)),
        );
        hit(
            "azure-sas-token",
            &format!(
                "https://a.blob.core.windows.net/c?sv=2022-11-02&ss=b&sig={}%3D",
                r("", 44)
            ),
        );
    }

    #[test]
    fn code_hosts_registries_payments_chat() {
        hit("github-token", &r("ghp_", 36));
        hit("github-token", &r("ghs_", 36));
        hit("github-fine-grained-token", &r("github_pat_", 82));
        hit("gitlab-token", &r("glpat-", 20));
        hit(
            "npm-token",
            &format!("//registry.npmjs.org/:_authToken={}", r("npm_", 36)),
        );
        hit("pypi-token", &r("pypi-AgEIcHlwaS5vcmc", 60));
        hit("dockerhub-token", &r("dckr_pat_", 27));
        hit("stripe-live-key", &r("sk_live_", 24));
        hit("stripe-live-key", &r("rk_live_", 30));
        hit("stripe-webhook-secret", &r("whsec_", 32));
        hit(
            "slack-token",
            &format!("xoxb-{}-{}", "2087153964", r("", 24)),
        );
        hit(
            "slack-app-token",
            &format!("xapp-1-A0123ABCDEF-2087153964-{}", hex(64)),
        );
        hit(
            "slack-webhook",
            &format!(
                "https://hooks.slack.com/services/T0123ABCD/B0123ABCD/{}",
                r("", 24)
            ),
        );
        hit(
            "discord-bot-token",
            &format!("{}.{}.{}", r("MT", 24), r("", 6), r("", 27)),
        );
        hit(
            "discord-webhook",
            &format!(
                "https://discord.com/api/webhooks/1187342059918273645/{}",
                r("", 68)
            ),
        );
        hit("telegram-bot-token", &format!("708215396:AA{}", r("", 33)));
    }

    #[test]
    fn saas_tokens() {
        hit("sendgrid-key", &format!("SG.{}.{}", r("", 22), r("", 43)));
        hit("twilio-api-key", &format!("SK{}", hex(32)));
        hit(
            "twilio-auth-token",
            &format!("TWILIO_AUTH_TOKEN={}", hex(32)),
        );
        hit("mailgun-key", &format!("key-{}", hex(32)));
        hit("shopify-token", &format!("shpat_{}", hex(32)));
        hit("linear-key", &r("lin_api_", 40));
        hit("notion-token", &r("ntn_", 46));
        hit("vault-token", &r("hvs.", 90));
        hit(
            "terraform-cloud-token",
            &format!("{}.atlasv1.{}", r("", 14), r("", 67)),
        );
        hit("digitalocean-token", &format!("dop_v1_{}", hex(64)));
        hit("databricks-token", &format!("dapi{}", hex(32)));
        hit("atlassian-token", &r("ATATT3", 186));
        hit("sentry-token", &r("sntrys_", 70));
        hit("postman-key", &format!("PMAK-{}-{}", hex(24), hex(34)));
        hit(
            "newrelic-key",
            &format!("NRAK-{}", r("", 27).to_uppercase()),
        );
        hit("grafana-token", &r("glc_", 40));
        hit("doppler-token", &r("dp.pt.", 43));
        hit("supabase-token", &format!("sbp_{}", hex(40)));
        hit(
            "cloudflare-token",
            &format!("CLOUDFLARE_API_TOKEN={}", r("", 40)),
        );
    }

    #[test]
    fn private_keys_jwts_urls_headers() {
        hit("private-key", "-----BEGIN RSA PRIVATE KEY-----\nMIIE...");
        hit("private-key", "-----BEGIN PRIVATE KEY-----\nMIIE...");
        hit("private-key", "-----BEGIN EC PRIVATE KEY-----");
        hit(
            "openssh-private-key",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn",
        );
        hit("pgp-private-key", "-----BEGIN PGP PRIVATE KEY BLOCK-----");
        hit("putty-private-key", "PuTTY-User-Key-File-3: ssh-ed25519");
        hit(
            "age-secret-key",
            &format!(
                "AGE-SECRET-KEY-1{}",
                "QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L".repeat(2)[..58].to_owned()
            ),
        );
        hit(
            "jwt",
            &format!("eyJ{}.eyJ{}.{}", r("", 20), r("", 30), r("", 43)),
        );
        hit(
            "postgres-url",
            "postgres://admin:Tr0ub4dor&3x@db.internal:5432/app",
        );
        hit(
            "connection-string-password",
            "Server=db;User Id=sa;Password=Xk9#mQ2!vL7p;",
        );
        hit(
            "authorization-header",
            &format!("Authorization: Bearer {}", r("", 40)),
        );
        hit(
            "api-key-header",
            &format!("curl -H 'x-api-key: {}'", r("", 40)),
        );
    }

    #[test]
    fn generic_assignments_in_every_syntax() {
        let v = r("", 32);
        hit("generic-api-key", &format!("API_KEY={v}"));
        hit("generic-token", &format!("export MY_SERVICE_TOKEN=\"{v}\""));
        hit("generic-secret", &format!("  client_secret: {v}"));
        hit("generic-api-key", &format!("{{\"apiKey\": \"{v}\"}}"));
        hit("generic-password", "const password = 'hX7#pQ2vL9!m';");
        hit("generic-password", &format!("db.password := \"{v}\""));
    }

    #[test]
    fn false_positives_pass() {
        clean("id = 3f2b9c1e-8a4d-4c7b-9e2f-1a2b3c4d5e6f");
        clean("commit 9fceb02d0ae598e95dc970b74767f19372d61af8");
        clean("commit_sha = 9fceb02d0ae598e95dc970b74767f19372d61af8");
        clean(
            "\"integrity\": \"sha512-Kq5sNclPz7QV2+lfQIuN4qsmBRJjtK8mNKmYBh8FHPkDlGRmsqWKt/aa7G3ZAw5jmgLCRfgFJXvlSw98vPVk0Q==\"",
        );
        clean("checksum = \"b1f1d3e5a7c9e1f3a5b7c9d1e3f5a7b9c1d3e5f7a9b1c3d5e7f9a1b3c5d7e9f1\"");
        clean(
            "<img src=\"data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==\">",
        );
        clean("OPENAI_API_KEY=sk-...");
        clean("api_key = \"YOUR_API_KEY\"");
        clean("token: ${GITHUB_TOKEN}");
        clean("Authorization: Bearer <token>");
        clean("api_key = os.environ[\"OPENAI_API_KEY\"]");
        clean("const token = process.env.SLACK_BOT_TOKEN;");
        clean("password = getpass.getpass()");
        clean("secret_key = settings.SECRET_KEY");
        clean("-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA");
        clean(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl user@host",
        );
        clean("Never paste your API key or password into a chat; rotate the token if it leaks.");
        clean("The secret to good code is small functions. Set the token in your environment.");
        clean("let key = cache_key(user_id);");
        clean("https://user@example.com/path and git@github.com:owner/repo.git");
        clean("password_hash = bcrypt.hash(password)");
        clean("AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE");
    }

    #[test]
    fn findings_locate_and_mask() {
        let key = r("ghp_", 36);
        let text = format!("line one\n  héllo {key} tail\n");
        let f = scan(&text);
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].line, f[0].column), (2, 9));
        assert_eq!(f[0].masked, "ghp_…[40 chars]");
        assert!(!f[0].to_string().contains(&key[4..]));
    }

    #[test]
    fn redaction_takes_the_value_out_and_is_found_again_by_line() {
        let key = r("ghp_", 36);
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7x9Qm2Lk4Zt8Rv3Wp6Ys1Hd5Fb0Ca8Eu2Yq8Xv2Lm9Ty4Rw7Pk3\n-----END RSA PRIVATE KEY-----";
        let text = format!("one\ntoken {key} here\n{pem}\nlast [redacted: not a kind]");
        let (shown, n) = redact(&text);
        assert_eq!(n, 2, "{shown}");
        assert!(!shown.contains(&key[4..]), "{shown}");
        assert!(!shown.contains("MIIEow"), "{shown}");
        let marks = redactions(&shown);
        let lines: Vec<usize> = marks.iter().map(|m| m.line).collect();
        // The key block spanned three lines; the mark takes one.
        assert_eq!(lines, vec![2, 3], "{shown}");
        assert_eq!(marks[0].kind, "GitHub token");
        assert_eq!(redact("nothing here"), ("nothing here".to_owned(), 0));
        // A block cut before its END line loses its body all the same.
        let cut = "key:\n-----BEGIN PRIVATE KEY-----\nMIIEowIBAAKCAQEA7x9Qm2Lk4Zt8Rv3Wp6Ys1Hd\nYq8Xv2Lm9Ty4Rw7Pk3==\n\nDone.";
        let (shown, n) = redact(cut);
        assert_eq!(n, 1);
        assert_eq!(shown, "key:\n[redacted: PEM private key]\n\nDone.");
    }

    #[test]
    fn specific_shapes_ignore_short_words_that_occur_by_chance() {
        // "todo" and "Fake" inside a random token body are chance, not a placeholder.
        hit("github-token", "ghp_Zq8todoLm9Ty4Rw7Pk3FakeJs1Gd5Fb0Ca8E");
        // A generic assignment with the same words is a placeholder.
        clean("api_token = \"todo-fill-in-Zq8Lm9Ty4\"");
        // Strong markers hold for every rule.
        clean("GITHUB_TOKEN=ghp_your-token-here-xxxxxxxxxxxxxxxxxxxx");
    }

    #[test]
    fn a_large_text_scanned_in_pieces_finds_what_one_thread_finds() {
        let mut text = String::new();
        let mut i = 0;
        while text.len() < 3 << 20 {
            text.push_str("ordinary prose about a token and a key: nothing here\n");
            if i % 5000 == 0 {
                text.push_str(&format!(
                    "machine h{i} login u\n  password {}\n",
                    r("Xk9#", 12)
                ));
                text.push_str(&format!("GITHUB_TOKEN={}\n", r("ghp_", 36)));
            }
            i += 1;
        }
        let one = scan_on_one_thread(&text);
        assert!(one.len() >= 2 * (i / 5000), "{}", one.len());
        for threads in [2, 3, 7] {
            let spans = spans_on(&text, threads);
            assert_eq!(findings(&text, &spans), one, "{threads} pieces");
        }
    }

    #[test]
    fn specific_rule_wins_over_generic() {
        let f = scan(&format!("GITHUB_TOKEN={}", r("ghp_", 36)));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].rule, "github-token");
    }
}
