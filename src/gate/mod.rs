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

mod injection;

use std::sync::OnceLock;

pub(crate) use injection::{Flag, flags as injection_flags};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::Regex;

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

/// What a match must also satisfy.
#[derive(Clone, Copy)]
enum Check {
    /// The pattern is specific enough.
    Exact,
    /// The value must look random (generic assignments and headers).
    Random,
}

struct RuleDef {
    id: &'static str,
    kind: &'static str,
    /// Lower-case keywords; the rule runs only if one occurs (case-insensitive).
    keywords: &'static [&'static str],
    pattern: &'static str,
    /// Characters of the value that are a fixed, public prefix (shown in the mask).
    prefix: usize,
    check: Check,
}

const fn rule(
    id: &'static str,
    kind: &'static str,
    keywords: &'static [&'static str],
    pattern: &'static str,
    prefix: usize,
) -> RuleDef {
    RuleDef {
        id,
        kind,
        keywords,
        pattern,
        prefix,
        check: Check::Exact,
    }
}

const fn random(
    id: &'static str,
    kind: &'static str,
    keywords: &'static [&'static str],
    pattern: &'static str,
) -> RuleDef {
    RuleDef {
        id,
        kind,
        keywords,
        pattern,
        prefix: 0,
        check: Check::Random,
    }
}

/// Every rule. A capture group named `v` marks the secret; otherwise the whole match.
const RULES: &[RuleDef] = &[
    // LLM providers: the keys a Claude Code user actually holds.
    rule(
        "anthropic-api-key",
        "Anthropic API key",
        &["sk-ant-"],
        r"\bsk-ant-(?:api|admin)\d{2}-[A-Za-z0-9_\-]{40,}",
        7,
    ),
    rule(
        "claude-oauth-token",
        "Claude OAuth token",
        &["sk-ant-"],
        r"\bsk-ant-(?:oat|ort)\d{2}-[A-Za-z0-9_\-]{40,}",
        7,
    ),
    rule(
        "openai-project-key",
        "OpenAI project/service key",
        &["sk-proj-", "sk-svcacct-", "sk-admin-"],
        r"\bsk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{40,}",
        8,
    ),
    rule(
        "openai-legacy-key",
        "OpenAI API key",
        &["t3blbkfj"],
        r"\bsk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}\b",
        3,
    ),
    rule(
        "openai-style-key",
        "OpenAI-style API key (sk-)",
        &["sk-"],
        r"\bsk-(?:[A-Za-z0-9]{48}|[a-f0-9]{32})\b",
        3,
    ),
    rule(
        "openrouter-key",
        "OpenRouter API key",
        &["sk-or-"],
        r"\bsk-or-v1-[a-f0-9]{64}\b",
        9,
    ),
    rule(
        "groq-key",
        "Groq API key",
        &["gsk_"],
        r"\bgsk_[A-Za-z0-9]{48,}\b",
        4,
    ),
    rule(
        "cerebras-key",
        "Cerebras API key",
        &["csk-"],
        r"\bcsk-[a-z0-9]{40,}\b",
        4,
    ),
    rule(
        "nvidia-key",
        "NVIDIA API key",
        &["nvapi-"],
        r"\bnvapi-[A-Za-z0-9_\-]{60,}",
        6,
    ),
    rule(
        "xai-key",
        "xAI API key",
        &["xai-"],
        r"\bxai-[A-Za-z0-9]{70,}\b",
        4,
    ),
    rule(
        "huggingface-token",
        "Hugging Face token",
        &["hf_"],
        r"\bhf_[A-Za-z0-9]{34,}\b",
        3,
    ),
    rule(
        "google-api-key",
        "Google API key",
        &["aiza"],
        r"\bAIza[0-9A-Za-z_\-]{35}\b",
        4,
    ),
    rule(
        "perplexity-key",
        "Perplexity API key",
        &["pplx-"],
        r"\bpplx-[A-Za-z0-9]{48}\b",
        5,
    ),
    rule(
        "replicate-token",
        "Replicate API token",
        &["r8_"],
        r"\br8_[A-Za-z0-9]{37}\b",
        3,
    ),
    rule(
        "mistral-key",
        "Mistral API key",
        &["mistral"],
        r"(?i)mistral[\w\-]*\s*[:=]\s*['\x22]?(?P<v>[A-Za-z0-9]{32})\b",
        0,
    ),
    rule(
        "cohere-key",
        "Cohere API key",
        &["cohere", "co_api"],
        r"(?i)(?:cohere|co)[\w\-]*(?:key|token)['\x22]?\s*[:=]\s*['\x22]?(?P<v>[A-Za-z0-9]{40})\b",
        0,
    ),
    // Cloud.
    rule(
        "aws-access-key-id",
        "AWS access key id",
        &["akia", "asia", "abia", "acca"],
        r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b",
        4,
    ),
    rule(
        "aws-secret-key",
        "AWS secret access key",
        &["aws"],
        r"(?i)aws[\w\-.]{0,20}?(?:secret|access)[\w\-.]{0,20}?['\x22]?\s*[:=]\s*['\x22]?(?P<v>[A-Za-z0-9/+=]{40})(?:[^A-Za-z0-9/+=]|$)",
        0,
    ),
    rule(
        "aws-session-token",
        "AWS session token",
        &["session"],
        r"(?i)aws[\w\-.]{0,10}session[\w\-.]{0,10}token['\x22]?\s*[:=]\s*['\x22]?(?P<v>[A-Za-z0-9/+=]{100,})",
        0,
    ),
    rule(
        "gcp-service-account",
        "GCP service-account key",
        &["private_key_id"],
        r#""private_key_id"\s*:\s*"(?P<v>[a-f0-9]{40})""#,
        0,
    ),
    rule(
        "azure-storage-key",
        "Azure storage connection string",
        &["accountkey="],
        r"AccountKey=(?P<v>[A-Za-z0-9+/=]{60,})",
        0,
    ),
    rule(
        "azure-client-secret",
        "Azure client secret",
        &["q~"],
        r"\b(?P<v>[A-Za-z0-9_~.\-]{3}\dQ~[A-Za-z0-9_~.\-]{31,34})(?:[^A-Za-z0-9_~.\-]|$)",
        0,
    ),
    rule(
        "azure-sas-token",
        "Azure SAS signature",
        &["sig="],
        r"[?&]sv=\d{4}-\d{2}-\d{2}&[^\s'\x22]*?sig=(?P<v>[A-Za-z0-9%+/=]{40,})",
        0,
    ),
    // Code hosts and registries.
    rule(
        "github-token",
        "GitHub token",
        &["ghp_", "gho_", "ghu_", "ghs_", "ghr_"],
        r"\bgh[pousr]_[A-Za-z0-9]{36,}\b",
        4,
    ),
    rule(
        "github-fine-grained-token",
        "GitHub fine-grained token",
        &["github_pat_"],
        r"\bgithub_pat_[A-Za-z0-9_]{80,}\b",
        11,
    ),
    rule(
        "gitlab-token",
        "GitLab token",
        &["glpat-", "gldt-", "glrt-", "glptt-", "glsoat-"],
        r"\bgl(?:pat|dt|rt|ptt|soat)-[A-Za-z0-9_\-]{20,}",
        6,
    ),
    rule(
        "npm-token",
        "npm access token",
        &["npm_"],
        r"\bnpm_[A-Za-z0-9]{36}\b",
        4,
    ),
    rule(
        "pypi-token",
        "PyPI upload token",
        &["pypi-ageichlwas5vcmc"],
        r"\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_\-]{50,}",
        5,
    ),
    rule(
        "dockerhub-token",
        "Docker Hub access token",
        &["dckr_pat_"],
        r"\bdckr_pat_[A-Za-z0-9_\-]{27,}",
        9,
    ),
    // Payments.
    rule(
        "stripe-live-key",
        "Stripe live secret/restricted key",
        &["sk_live_", "rk_live_"],
        r"\b[sr]k_live_[A-Za-z0-9]{24,}\b",
        8,
    ),
    rule(
        "stripe-webhook-secret",
        "Stripe webhook secret",
        &["whsec_"],
        r"\bwhsec_[A-Za-z0-9]{32,}\b",
        6,
    ),
    // Chat.
    rule(
        "slack-token",
        "Slack token",
        &["xoxb-", "xoxa-", "xoxp-", "xoxr-", "xoxs-", "xoxe"],
        r"\bxox(?:[abprs]|e(?:\.xox[bp])?)-[A-Za-z0-9\-]{10,}",
        5,
    ),
    rule(
        "slack-app-token",
        "Slack app-level token",
        &["xapp-"],
        r"\bxapp-\d-[A-Z0-9]+-\d+-[a-f0-9]{20,}",
        5,
    ),
    rule(
        "slack-webhook",
        "Slack incoming webhook",
        &["hooks.slack.com"],
        r"https://hooks\.slack\.com/(?:services|workflows)/T[A-Z0-9]+/[A-Z0-9]+/[A-Za-z0-9]{20,}",
        0,
    ),
    rule(
        "discord-bot-token",
        "Discord bot token",
        &["."],
        r"\b[MNO][A-Za-z\d_\-]{23,25}\.[\w\-]{6}\.[\w\-]{27,38}\b",
        0,
    ),
    rule(
        "discord-webhook",
        "Discord webhook",
        &["discord"],
        r"https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/\d+/[\w\-]{60,}",
        0,
    ),
    rule(
        "telegram-bot-token",
        "Telegram bot token",
        &[":aa"],
        r"\b\d{8,10}:AA[A-Za-z0-9_\-]{33}\b",
        0,
    ),
    // SaaS.
    rule(
        "sendgrid-key",
        "SendGrid API key",
        &["sg."],
        r"\bSG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}\b",
        3,
    ),
    rule(
        "twilio-api-key",
        "Twilio API key",
        &["sk"],
        r"\bSK[0-9a-f]{32}\b",
        2,
    ),
    rule(
        "twilio-auth-token",
        "Twilio auth token",
        &["twilio"],
        r"(?i)twilio[\w\-.]{0,20}?(?:token|secret)['\x22]?\s*[:=]\s*['\x22]?(?P<v>[a-f0-9]{32})\b",
        0,
    ),
    rule(
        "mailgun-key",
        "Mailgun API key",
        &["key-"],
        r"\bkey-[0-9a-f]{32}\b",
        4,
    ),
    rule(
        "shopify-token",
        "Shopify access token",
        &["shpat_", "shpca_", "shppa_", "shpss_"],
        r"\bshp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}\b",
        6,
    ),
    rule(
        "linear-key",
        "Linear API key",
        &["lin_api_"],
        r"\blin_api_[A-Za-z0-9]{40}\b",
        8,
    ),
    rule(
        "notion-token",
        "Notion integration token",
        &["secret_", "ntn_"],
        r"\b(?:secret_[A-Za-z0-9]{43}|ntn_[A-Za-z0-9]{40,})\b",
        4,
    ),
    rule(
        "vault-token",
        "HashiCorp Vault token",
        &["hvs.", "hvb."],
        r"\bhv[sb]\.[A-Za-z0-9_\-]{24,}",
        4,
    ),
    rule(
        "terraform-cloud-token",
        "Terraform Cloud token",
        &["atlasv1"],
        r"\b[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_\-=]{60,}",
        0,
    ),
    rule(
        "digitalocean-token",
        "DigitalOcean token",
        &["dop_v1_", "doo_v1_", "dor_v1_"],
        r"\bdo[opr]_v1_[a-f0-9]{64}\b",
        7,
    ),
    rule(
        "databricks-token",
        "Databricks token",
        &["dapi"],
        r"\bdapi[a-f0-9]{32}(?:-\d)?\b",
        4,
    ),
    rule(
        "atlassian-token",
        "Atlassian API token",
        &["atatt3"],
        r"\bATATT3[A-Za-z0-9_\-=]{180,}",
        6,
    ),
    rule(
        "sentry-token",
        "Sentry auth token",
        &["sntrys_", "sntryu_"],
        r"\bsntry[su]_[A-Za-z0-9+/=_]{60,}",
        7,
    ),
    rule(
        "postman-key",
        "Postman API key",
        &["pmak-"],
        r"\bPMAK-[a-f0-9]{24}-[a-f0-9]{34}\b",
        5,
    ),
    rule(
        "newrelic-key",
        "New Relic user key",
        &["nrak-"],
        r"\bNRAK-[A-Z0-9]{27}\b",
        5,
    ),
    rule(
        "grafana-token",
        "Grafana token",
        &["glc_", "glsa_"],
        r"\b(?:glc_[A-Za-z0-9+/]{32,}={0,2}|glsa_[A-Za-z0-9]{32}_[a-f0-9]{8})",
        4,
    ),
    rule(
        "doppler-token",
        "Doppler token",
        &["dp.pt."],
        r"\bdp\.pt\.[A-Za-z0-9]{43}\b",
        6,
    ),
    rule(
        "supabase-token",
        "Supabase access token",
        &["sbp_"],
        r"\bsbp_[a-f0-9]{40}\b",
        4,
    ),
    rule(
        "cloudflare-token",
        "Cloudflare API token",
        &["cloudflare", "cf_api", "cf-api"],
        r"(?i)(?:cloudflare|cf)[_\-]?(?:api)?[_\-]?(?:token|key)['\x22]?\s*[:=]\s*['\x22]?(?P<v>[A-Za-z0-9_\-]{37,40})\b",
        0,
    ),
    // Private keys.
    rule(
        "private-key",
        "PEM private key",
        &["private key-----"],
        r"-----BEGIN (?:RSA |EC |DSA |ENCRYPTED |)PRIVATE KEY-----",
        0,
    ),
    rule(
        "openssh-private-key",
        "OpenSSH private key",
        &["openssh private key"],
        r"-----BEGIN OPENSSH PRIVATE KEY-----",
        0,
    ),
    rule(
        "pgp-private-key",
        "PGP private key block",
        &["pgp private key"],
        r"-----BEGIN PGP PRIVATE KEY BLOCK-----",
        0,
    ),
    rule(
        "putty-private-key",
        "PuTTY private key",
        &["putty-user-key-file-"],
        r"PuTTY-User-Key-File-\d: ",
        0,
    ),
    rule(
        "age-secret-key",
        "age secret key",
        &["age-secret-key-1"],
        r"\bAGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}\b",
        15,
    ),
    // Tokens by shape.
    rule(
        "jwt",
        "JSON Web Token",
        &["eyj"],
        r"\beyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}",
        3,
    ),
    // Passwords in URLs and connection strings.
    rule(
        "password-in-url",
        "password in a URL",
        &["://"],
        r"\b[a-zA-Z][a-zA-Z0-9+.\-]{1,20}://[^/\s:@'\x22]{1,64}:(?P<v>[^/\s:@'\x22]{3,128})@[A-Za-z0-9.\-\[\]]+",
        0,
    ),
    random(
        "connection-string-password",
        "password in a connection string",
        &["password=", "pwd="],
        r"(?i)(?:^|[;\s'\x22])(?:password|pwd)=(?P<v>[^;'\x22\s]{6,})",
    ),
    random(
        "authorization-header",
        "Authorization header credential",
        &["authorization", "bearer", "x-api-key", "api-key:"],
        r"(?i)(?:authorization['\x22]?\s*[:=]\s*['\x22]?(?:bearer|basic|token)\s+|\bbearer\s+|x-api-key['\x22]?\s*[:=]\s*['\x22]?|\bapi-key:\s*)(?P<v>[A-Za-z0-9._~+/=\-]{16,})",
    ),
    random(
        "generic-secret-assignment",
        "secret assigned in code or config",
        &[
            "key",
            "secret",
            "token",
            "passw",
            "pwd",
            "credential",
            "auth",
        ],
        r"(?i)(?:^|[^A-Za-z0-9])(?:[A-Za-z0-9]+[_\-.])*(?:api[_\-.]?key|apikey|secret|token|passwd|password|pwd|access[_\-.]?key|private[_\-.]?key|auth[_\-.]?key|credentials?)(?:[_\-.][A-Za-z0-9]+)*['\x22]?\s*(?::=|=>|[:=])\s*(?:[A-Za-z]+\()?['\x22`]?(?P<v>[^\s'\x22`,;)\]}]{8,})",
    ),
];

struct Scanner {
    prefilter: AhoCorasick,
    /// keyword index -> rule indexes
    keyword_rules: Vec<Vec<usize>>,
    regexes: Vec<Regex>,
}

fn scanner() -> &'static Scanner {
    static SCANNER: OnceLock<Scanner> = OnceLock::new();
    SCANNER.get_or_init(|| {
        let mut keywords = Vec::new();
        let mut keyword_rules: Vec<Vec<usize>> = Vec::new();
        for (i, r) in RULES.iter().enumerate() {
            for k in r.keywords {
                if let Some(j) = keywords.iter().position(|x| x == k) {
                    keyword_rules[j].push(i);
                } else {
                    keywords.push(*k);
                    keyword_rules.push(vec![i]);
                }
            }
        }
        let prefilter = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(&keywords)
            .expect("static keywords build");
        let regexes = RULES
            .iter()
            .map(|r| Regex::new(r.pattern).expect("static rule regex"))
            .collect();
        Scanner {
            prefilter,
            keyword_rules,
            regexes,
        }
    })
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

/// Where the secrets are: (start, end, rule), in text order, never overlapping.
fn spans(text: &str) -> Vec<(usize, usize, usize)> {
    let s = scanner();
    let mut active = vec![false; RULES.len()];
    let mut left = RULES.len();
    for m in s.prefilter.find_overlapping_iter(text) {
        for &r in &s.keyword_rules[m.pattern().as_usize()] {
            if !active[r] {
                active[r] = true;
                left -= 1;
            }
        }
        if left == 0 {
            break;
        }
    }
    let mut spans: Vec<(usize, usize, usize)> = Vec::new(); // (start, end, rule)
    for (i, rule) in RULES.iter().enumerate().filter(|(i, _)| active[*i]) {
        for caps in s.regexes[i].captures_iter(text) {
            let m = caps
                .name("v")
                .unwrap_or_else(|| caps.get(0).expect("group 0"));
            let value = m.as_str();
            if is_placeholder(value, matches!(rule.check, Check::Exact)) {
                continue;
            }
            if matches!(rule.check, Check::Random) && !looks_random(value) {
                continue;
            }
            // A specific rule already covering this span wins over generic ones.
            if spans.iter().any(|&(a, b, _)| a < m.end() && m.start() < b) {
                continue;
            }
            spans.push((m.start(), m.end(), i));
        }
    }
    spans.sort_unstable();
    spans
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

/// Placeholders and references, not secrets.
///
/// `strict` is for rules whose shape is specific (a `ghp_` token): only
/// markers a random token cannot plausibly contain count there (six letters or
/// more, or punctuation). Four-letter words like `todo` turn up by chance in
/// about one random 36-character token in 30,000, so only generic
/// assignments, which need more care against prose and code, use them.
fn is_placeholder(v: &str, strict: bool) -> bool {
    let l = v.to_lowercase();
    const STRONG: &[&str] = &[
        "xxxxxx",
        "example",
        "placeholder",
        "redacted",
        "changeme",
        "change_me",
        "sample",
        "<",
        ">",
        "${",
        "{{",
        "$(",
        "...",
        "…",
        "****",
        "insert",
        "replace",
        "abcdefgh",
        "12345678",
        "process.env",
        "os.environ",
        "getenv",
        "env[",
        "env.",
        "secrets.",
        "your_",
        "your-",
        "_here",
        "-here",
    ];
    const WEAK: &[&str] = &["your", "xxxx", "dummy", "todo", "fake"];
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

/// Shannon entropy in bits per character.
fn entropy(v: &str) -> f64 {
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

/// Whether a generic value is random enough to be a real secret rather than
/// an identifier, a reference, a hash, a UUID or a word.
fn looks_random(v: &str) -> bool {
    let v = v.trim_end_matches(['.', ':']);
    // Code, not a value: a call or an index expression.
    if v.len() < 10 || v.len() > 512 || v.contains('(') || v.contains('[') {
        return false;
    }
    let lower = v.chars().any(|c| c.is_ascii_lowercase());
    let upper = v.chars().any(|c| c.is_ascii_uppercase());
    let digit = v.chars().any(|c| c.is_ascii_digit());
    let symbol = v.chars().any(|c| !c.is_ascii_alphanumeric());
    let classes = [lower, upper, digit, symbol].iter().filter(|&&x| x).count();
    if classes < 2 {
        return false;
    }
    static SHAPES: OnceLock<Vec<Regex>> = OnceLock::new();
    let shapes = SHAPES.get_or_init(|| {
        [
            // UUIDs.
            r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
            // Git SHAs and SHA-256 digests.
            r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$",
            // Hash-prefixed digests (lockfiles, SRI).
            r"^(?:sha\d{1,3}|md5)[-:]",
            // Identifiers, dotted paths, calls and env-var names: references, not values.
            r"^[A-Za-z_$][A-Za-z0-9_$]*(?:(?:\.|::|->)[A-Za-z_$][A-Za-z0-9_$]*)*(?:\(\)?)?$",
            // File paths and URLs without credentials.
            r"^(?:\.{0,2}/|~/|[a-z]+://)[^@]*$",
            // Data URIs.
            r"^data:",
        ]
        .iter()
        .map(|p| Regex::new(p).expect("static shape"))
        .collect()
    });
    if shapes.iter().any(|re| re.is_match(v)) {
        // An identifier still counts when it mixes digits through it like a key does.
        let is_ident = shapes[3].is_match(v);
        if !(is_ident && digit && (upper && lower) && entropy(v) >= 4.0 && !v.contains('.')) {
            return false;
        }
    }
    entropy(v) >= 3.0
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
            "password-in-url",
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
            "authorization-header",
            &format!("curl -H 'x-api-key: {}'", r("", 40)),
        );
    }

    #[test]
    fn generic_assignments_in_every_syntax() {
        let v = r("", 32);
        hit("generic-secret-assignment", &format!("API_KEY={v}"));
        hit(
            "generic-secret-assignment",
            &format!("export MY_SERVICE_TOKEN=\"{v}\""),
        );
        hit(
            "generic-secret-assignment",
            &format!("  client_secret: {v}"),
        );
        hit(
            "generic-secret-assignment",
            &format!("{{\"apiKey\": \"{v}\"}}"),
        );
        hit(
            "generic-secret-assignment",
            &format!("const password = '{}';", "hX7#pQ2vL9!m"),
        );
        hit(
            "generic-secret-assignment",
            &format!("db.password := \"{v}\""),
        );
    }

    #[test]
    fn false_positives_pass() {
        clean("id = 3f2b9c1e-8a4d-4c7b-9e2f-1a2b3c4d5e6f");
        clean("commit 9fceb02d0ae598e95dc970b74767f19372d61af8");
        clean("token = 9fceb02d0ae598e95dc970b74767f19372d61af8");
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
    fn specific_rule_wins_over_generic() {
        let f = scan(&format!("GITHUB_TOKEN={}", r("ghp_", 36)));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].rule, "github-token");
    }
}
