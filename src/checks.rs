//! Answer checks: whether a worker's answer has the shape the task asked for.
//!
//! Free models are uneven; an off-format answer that reaches Claude costs it
//! a redo, the most expensive outcome. A call may say what it expects, and
//! the answer is checked before Claude sees it; a failed check is an attempt
//! like any failure, and the next goes to another model.
//!
//! - `json_schema`: the answer (one surrounding fence removed) is JSON valid
//!   against the schema;
//! - `regex`: the answer matches;
//! - `code`: the answer is, or holds exactly one, fenced code block (of that
//!   language, or untagged); the block is the answer;
//! - `command`: with `write_to`, a check the user named in their own config
//!   (`[checks] NAME = "cargo check --quiet"`) runs after the file is
//!   written. A call names a check; it can never give a command line. The
//!   command itself runs in `workspace`, which owns the project's files.
//!
//! Pure: the answer in, a verdict out.

use serde_json::Value;

/// What a call expects of its answer, as given.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expect {
    /// JSON valid against this schema.
    JsonSchema(Value),
    /// Text matching this regular expression.
    Regex(String),
    /// One fenced code block of this language.
    Code(String),
    /// A check command named in the user's config.
    Command(String),
}

/// An expectation made ready: a schema compiled, a regex built, a command found.
#[derive(Debug)]
pub(crate) enum Check {
    /// A compiled schema.
    Json(Box<jsonschema::Validator>),
    /// A compiled regex.
    Regex(regex::Regex),
    /// A language, lowercase (empty: any).
    Code(String),
    /// A named check and its command line, from the user's config.
    Command {
        /// Its name.
        name: String,
        /// Its command line (`{file}` stands for the written file).
        line: String,
    },
}

impl Check {
    /// Readies an expectation; `commands` are the user's `[checks]`. A bad
    /// schema or regex, or a name not in the config, is refused here, before
    /// any quota is spent.
    pub(crate) fn new(
        expect: &Expect,
        commands: &std::collections::BTreeMap<String, String>,
        has_write_to: bool,
    ) -> Result<Check, String> {
        match expect {
            Expect::JsonSchema(schema) => jsonschema::validator_for(schema)
                .map(|v| Check::Json(Box::new(v)))
                .map_err(|e| format!("expect.json_schema is not a valid JSON Schema: {e}")),
            Expect::Regex(re) => regex::RegexBuilder::new(re)
                .size_limit(1 << 20)
                .build()
                .map(Check::Regex)
                .map_err(|e| format!("expect.regex does not compile: {e}")),
            Expect::Code(lang) => Ok(Check::Code(lang.trim().to_lowercase())),
            Expect::Command(name) => {
                if !has_write_to {
                    return Err(
                        "expect.command needs write_to: the check runs on the written file".into(),
                    );
                }
                commands
                    .get(name)
                    .map(|line| Check::Command {
                        name: name.clone(),
                        line: line.clone(),
                    })
                    .ok_or_else(|| {
                        let known: Vec<&str> = commands.keys().map(String::as_str).collect();
                        format!(
                            "expect.command: no check named `{name}` in your config's [checks] ({}); a call names a check, it never gives a command line",
                            if known.is_empty() {
                                "none is defined".to_owned()
                            } else {
                                format!("defined: {}", known.join(", "))
                            }
                        )
                    })
            }
        }
    }

    /// Checks an answer. `Ok` is the answer to use (a code block's inside,
    /// unfenced JSON); `Err` says briefly why it was rejected. A command
    /// check passes here: it runs once the answer is written.
    pub(crate) fn verify(&self, answer: &str) -> Result<String, String> {
        match self {
            Check::Json(v) => {
                let text = strip_fence(answer);
                let value: Value =
                    serde_json::from_str(text.trim()).map_err(|e| format!("not JSON ({e})"))?;
                if let Some(e) = v.iter_errors(&value).next() {
                    let at = e.instance_path().to_string();
                    let at = if at.is_empty() {
                        "the top".to_owned()
                    } else {
                        at
                    };
                    let why = cut(&e.to_string(), 120);
                    return Err(format!("JSON off the schema at {at}: {why}"));
                }
                Ok(text.trim().to_owned() + "\n")
            }
            Check::Regex(re) => {
                if re.is_match(answer) {
                    Ok(answer.to_owned())
                } else {
                    Err(format!("does not match /{}/", cut(re.as_str(), 60)))
                }
            }
            Check::Code(lang) => {
                let blocks = code_blocks(answer);
                match blocks.as_slice() {
                    [] => Err("holds no fenced code block".into()),
                    [(info, body)] => {
                        let tag = info.split_whitespace().next().unwrap_or("").to_lowercase();
                        if lang.is_empty() || tag.is_empty() || same_language(&tag, lang) {
                            Ok(body.clone())
                        } else {
                            Err(format!("the code block is {tag}, not {lang}"))
                        }
                    }
                    more => Err(format!("holds {} code blocks, not exactly one", more.len())),
                }
            }
            Check::Command { .. } => Ok(answer.to_owned()),
        }
    }

    /// The named command, when this is a command check.
    pub(crate) fn command(&self) -> Option<(&str, &str)> {
        match self {
            Check::Command { name, line } => Some((name, line)),
            _ => None,
        }
    }
}

fn cut(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        flat.chars().take(max).collect::<String>() + "..."
    }
}

/// The answer without one surrounding code fence, if it has one.
fn strip_fence(answer: &str) -> &str {
    let t = answer.trim();
    let ticks = t.chars().take_while(|c| *c == '`').count();
    if ticks < 3 {
        return t;
    }
    let fence = &t[..ticks];
    match t
        .strip_suffix(fence)
        .and_then(|r| r[ticks..].split_once('\n'))
    {
        Some((_, inner)) => inner,
        None => t,
    }
}

/// Fenced code blocks: (info string, body with a final newline).
fn code_blocks(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        let ticks = trimmed.chars().take_while(|c| *c == '`').count();
        if ticks < 3 {
            continue;
        }
        let info = trimmed[ticks..].trim().to_owned();
        let fence = &trimmed[..ticks];
        let mut body = String::new();
        let mut closed = false;
        for l in lines.by_ref() {
            if l.trim_start().starts_with(fence) && l.trim().chars().all(|c| c == '`') {
                closed = true;
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        if closed {
            out.push((info, body));
        }
    }
    out
}

/// Whether two language names mean the same language (`rs` and `rust`).
fn same_language(a: &str, b: &str) -> bool {
    const ALIASES: &[&[&str]] = &[
        &["rust", "rs"],
        &["python", "py", "python3"],
        &["javascript", "js", "node"],
        &["typescript", "ts"],
        &["shell", "sh", "bash", "zsh"],
        &["yaml", "yml"],
        &["markdown", "md"],
        &["c++", "cpp", "cc", "cxx"],
        &["csharp", "cs", "c#"],
        &["golang", "go"],
        &["kotlin", "kt"],
        &["dockerfile", "docker"],
    ];
    a == b
        || ALIASES
            .iter()
            .any(|group| group.contains(&a) && group.contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(expect: Expect) -> Check {
        let commands = [("build".to_owned(), "cargo check".to_owned())].into();
        Check::new(&expect, &commands, true).unwrap()
    }

    /// Each kind, passing and failing, as a table: (expectation, answer, verdict).
    #[test]
    fn each_kind_passes_and_fails() {
        let schema = json!({"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "n": {"type": "integer"}}});
        let cases: Vec<(Expect, &str, Result<&str, &str>)> = vec![
            (
                Expect::JsonSchema(schema.clone()),
                "{\"name\": \"x\", \"n\": 2}",
                Ok("{\"name\": \"x\", \"n\": 2}\n"),
            ),
            (
                Expect::JsonSchema(schema.clone()),
                "```json\n{\"name\": \"x\"}\n```",
                Ok("{\"name\": \"x\"}\n"),
            ),
            (
                Expect::JsonSchema(schema.clone()),
                "{\"n\": 2}",
                Err("JSON off the schema at the top"),
            ),
            (
                Expect::JsonSchema(schema.clone()),
                "{\"name\": 5}",
                Err("JSON off the schema at /name"),
            ),
            (
                Expect::JsonSchema(schema),
                "Sure! Here is the JSON: {",
                Err("not JSON"),
            ),
            (
                Expect::Regex(r"^\d{4}-\d{2}-\d{2}$".into()),
                "2026-12-02",
                Ok("2026-12-02"),
            ),
            (
                Expect::Regex(r"^\d{4}-\d{2}-\d{2}$".into()),
                "December 2nd",
                Err("does not match /^\\d{4}"),
            ),
            (
                Expect::Code("rust".into()),
                "```rust\nfn a() {}\n```",
                Ok("fn a() {}\n"),
            ),
            (
                Expect::Code("rust".into()),
                "Here:\n```rs\nfn a() {}\n```\nDone.",
                Ok("fn a() {}\n"),
            ),
            (
                Expect::Code("rust".into()),
                "```\nfn a() {}\n```",
                Ok("fn a() {}\n"),
            ),
            (
                Expect::Code("rust".into()),
                "```python\ndef a(): pass\n```",
                Err("the code block is python, not rust"),
            ),
            (
                Expect::Code("rust".into()),
                "```rust\na\n```\n```rust\nb\n```",
                Err("holds 2 code blocks"),
            ),
            (
                Expect::Code("rust".into()),
                "fn a() {}",
                Err("holds no fenced code block"),
            ),
            (Expect::Command("build".into()), "anything", Ok("anything")),
        ];
        for (expect, answer, want) in cases {
            let got = check(expect.clone()).verify(answer);
            match (&got, want) {
                (Ok(text), Ok(w)) => assert_eq!(text, w, "{expect:?}"),
                (Err(why), Err(w)) => assert!(why.starts_with(w), "{expect:?}: {why}"),
                _ => panic!("{expect:?} on {answer:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn a_call_names_a_check_and_never_gives_a_command_line() {
        let commands = [("build".to_owned(), "cargo check".to_owned())].into();
        let err = Check::new(&Expect::Command("cargo check".into()), &commands, true).unwrap_err();
        assert!(
            err.contains("no check named `cargo check`") && err.contains("defined: build"),
            "{err}"
        );
        let err = Check::new(&Expect::Command("build".into()), &commands, false).unwrap_err();
        assert!(err.contains("needs write_to"), "{err}");
        let err = Check::new(&Expect::Regex("(".into()), &commands, false).unwrap_err();
        assert!(err.contains("does not compile"), "{err}");
        let err =
            Check::new(&Expect::JsonSchema(json!({"type": 5})), &commands, false).unwrap_err();
        assert!(err.contains("not a valid JSON Schema"), "{err}");
    }
}
