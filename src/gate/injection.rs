//! Text in a worker's answer aimed at the orchestrator rather than the task.
//!
//! Every answer comes from a third party and goes into Claude's context. A
//! worker can, by accident or by a poisoned input file, write text that reads
//! like instructions to Claude: "ignore your previous instructions", a claim
//! to be the system prompt, tool-call markup, tags that mimic the messages
//! Claude Code itself sends. Such text is flagged (its kind and line), never
//! blocked: code and docs legitimately talk about prompts, and Claude is the
//! judge. The answer is shown as data either way.
//!
//! One pass of a `RegexSet` finds which rules match; only those are located.

use std::sync::OnceLock;

use regex::{Regex, RegexSet};

/// A line of an answer that speaks to the orchestrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Flag {
    /// What kind of text it is.
    pub(crate) kind: &'static str,
    /// 1-based line.
    pub(crate) line: usize,
}

/// The kinds, as shown.
pub(crate) const OVERRIDE: &str = "instruction override";
pub(crate) const ROLE: &str = "role or system-prompt claim";
pub(crate) const TOOL: &str = "tool-call markup";
pub(crate) const MIMIC: &str = "text mimicking the client's own messages";
pub(crate) const EXFIL: &str = "request to send secrets out";

/// (kind, pattern). Case-insensitive unless the pattern says otherwise.
const RULES: &[(&str, &str)] = &[
    // Instruction overrides.
    (
        OVERRIDE,
        r"(?i)\b(?:ignore|disregard|forget|override|bypass|skip)\s+(?:all\s+|any\s+|the\s+|your\s+|every\s+|of\s+)*(?:previous|prior|above|earlier|preceding|original|former|system|safety|developer|user'?s?)\s+(?:instructions?|prompts?|messages?|rules|directives|guidelines|guardrails|constraints|context|orders)",
    ),
    (
        OVERRIDE,
        r"(?i)\b(?:new|updated|real|actual|hidden|secret)\s+(?:instructions?|directives|orders|task)(?:\s+for\s+(?:you|the\s+(?:assistant|ai|model|agent|orchestrator)))?\s*:",
    ),
    (
        OVERRIDE,
        r"(?i)\b(?:from\s+now\s+on|henceforth|for\s+the\s+rest\s+of\s+(?:this|the)\s+(?:conversation|session))\b[^.\n]{0,60}\byou\s+(?:are|will|must|shall|should)\b",
    ),
    (
        OVERRIDE,
        r"(?i)\byou\s+(?:must|should|will|are\s+(?:now\s+)?(?:required|instructed))\s+(?:now\s+)?(?:to\s+)?(?:ignore|disregard|stop\s+following|no\s+longer\s+follow)\b",
    ),
    (
        OVERRIDE,
        r"(?i)\b(?:do\s+not|don't|never)\s+(?:tell|inform|show|mention\s+(?:this\s+)?to|reveal\s+(?:this\s+)?to)\s+the\s+user\b",
    ),
    (
        OVERRIDE,
        r"(?i)\b(?:stop|abandon|abort)\s+(?:the|your)\s+(?:current\s+)?task\s+and\b",
    ),
    (
        OVERRIDE,
        r"(?i)\b(?:note|message|instructions?)\s+(?:to|for)\s+(?:the\s+)?(?:ai|assistant|claude|llm|language\s+model|orchestrator|agent)(?:\s+(?:assistant|agent|model)s?)?\s*(?:reading\s+this\s*)?:",
    ),
    (
        OVERRIDE,
        r"(?i)\bif\s+you\s+are\s+(?:an?\s+)?(?:ai|llm|language\s+model|assistant|claude)(?:\s+(?:reading|processing)\s+this)?[,:]?\s+(?:you\s+must|please|then|ignore|do\b)",
    ),
    // Role and system-prompt claims.
    (
        ROLE,
        r"(?im)^\s*(?:system|developer)\s*(?:message|prompt|note)?\s*:\s*(?:you\b|ignore|the\s+assistant|claude|from\s+now|new\s+instructions)",
    ),
    (
        ROLE,
        r"(?i)\byou\s+are\s+(?:now\s+)?(?:claude|chatgpt|gpt-\d|dan\b|an?\s+(?:unrestricted|jailbroken|unfiltered)\b|in\s+developer\s+mode)",
    ),
    (
        ROLE,
        r"(?i)\b(?:this\s+is|here\s+is|i\s+am|speaking\s+as)\s+(?:your|the)\s+(?:system\s+prompt|system\s+administrator|developer|operator|anthropic)\b",
    ),
    (
        ROLE,
        r"(?i)\b(?:your|the)\s+(?:real|true|actual|updated)\s+system\s+prompt\s+(?:is|says|reads)\b",
    ),
    (
        ROLE,
        r"(?:<\|im_start\|>\s*system|<\|system\|>|\[/?INST\]|<<SYS>>|<\|start_header_id\|>\s*system)",
    ),
    // Tool-call markup.
    (
        TOOL,
        r"(?:</?function_calls>|<invoke\s+name=|<parameter\s+name=|</?antml:|</?tool_use>|</?tool_call>|<\|tool_call\|>|<\|python_tag\|>|</?tool_result>)",
    ),
    (
        TOOL,
        r#"(?:"tool_calls"\s*:\s*\[\s*\{|"function_call"\s*:\s*\{\s*"name"|"type"\s*:\s*"tool_use"\s*,)"#,
    ),
    (TOOL, r"\bmcp__[a-z0-9_]+__[a-z_]+\b"),
    // Text mimicking the messages Claude Code itself sends.
    (
        MIMIC,
        r"(?i)(?:</?system-reminder>|</?system>|<command-(?:name|message|args)>|<local-command-std(?:out|err)>|<user-prompt-submit-hook>|</?human>|<\|endoftext\|>|<\|end\|>|<\|eot_id\|>)",
    ),
    (
        MIMIC,
        r"(?m)^\s*(?:Human|H):\s+\S.*\n(?:.*\n){0,6}?\s*(?:Assistant|A):\s",
    ),
    // Requests to send secrets out.
    (
        EXFIL,
        r"(?im)(?:^|[.!?:]\s+|\bplease\s+|\byou\s+(?:must|should)\s+(?:also\s+)?|\bnow\s+|\band\s+then\s+|\band\s+)(?:send|post|upload|paste|email|forward|exfiltrate|transmit)\b[^\n]{0,60}?(?:\b(?:api[\s_-]?keys?|credentials|secrets?|tokens?|passwords?|ssh\s+keys?|private\s+keys?|system\s+prompt|environment\s+variables)\b|\.env\b)[^.\n]{0,60}\b(?:to|at|into)\s+(?:https?://|www\.|the\s+(?:following|url|endpoint|server|webhook)|this\s+(?:url|endpoint|address)|[a-z0-9.-]+\.(?:com|net|io|org|xyz|ru|cn))",
    ),
];

struct Compiled {
    set: RegexSet,
    each: Vec<Regex>,
}

fn compiled() -> &'static Compiled {
    static C: OnceLock<Compiled> = OnceLock::new();
    C.get_or_init(|| {
        let patterns: Vec<&str> = RULES.iter().map(|(_, p)| *p).collect();
        Compiled {
            set: RegexSet::new(&patterns).expect("static injection rules"),
            each: patterns
                .iter()
                .map(|p| Regex::new(p).expect("static injection rule"))
                .collect(),
        }
    })
}

/// Every line of `text` that speaks to the orchestrator, one flag per kind
/// and line, in text order.
pub(crate) fn flags(text: &str) -> Vec<Flag> {
    let c = compiled();
    let mut out: Vec<Flag> = Vec::new();
    for i in c.set.matches(text).iter() {
        let kind = RULES[i].0;
        for m in c.each[i].find_iter(text) {
            let line = text[..m.start()].matches('\n').count() + 1;
            if !out.iter().any(|f| f.kind == kind && f.line == line) {
                out.push(Flag { kind, line });
            }
        }
    }
    out.sort_by_key(|f| (f.line, f.kind));
    out
}

#[cfg(test)]
mod tests;
