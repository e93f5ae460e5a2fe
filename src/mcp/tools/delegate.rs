//! `delegate`: one task on a free model, answered with its provenance.

use schemars::JsonSchema;
use serde::Deserialize;

use super::LogArgs;
use crate::checks::Expect;
use crate::dispatch::{DelegateRequest, Engine, texts};
use crate::mcp::Progress;

pub(super) const DESCRIPTION: &str = "Run one task on a free LLM from the pool. Returns the answer with provenance (model, tokens, latency, attempts); with write_to, writes it to that file and returns only the path and a preview. \
Name project files in files (paths, globs, path:120-260) and the server reads them: never paste file contents into the prompt, you would pay for them as output. \
Omit model for auto-routing; failover across providers is automatic. \
Use for mechanical work scoring below the threshold (summarize, extract, convert, boilerplate, drafts). \
The prompt and files leave this machine: a text carrying a secret, and secret-bearing files (.env, keys), are refused and nothing is sent. \
Read the answer (or the written file) before using it; redo the task yourself if it is wrong. \
Optional gist/score/task_type log the routing decision in the same call.";

/// `delegate`'s arguments (also each `fanout` task's, beside its id).
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct Args {
    /// The complete, self-contained task. The worker sees nothing else.
    pub(super) prompt: String,
    /// Optional: "auto" (default), an exact "provider/model" id, or a family such as "gpt-oss-120b" (see list_models).
    pub(super) model: Option<String>,
    /// Optional system prompt.
    pub(super) system: Option<String>,
    /// Optional cap on the answer's length in tokens.
    #[schemars(range(min = 1))]
    pub(super) max_tokens: Option<u32>,
    /// Optional sampling temperature.
    #[schemars(range(min = 0, max = 2))]
    pub(super) temperature: Option<f32>,
    /// Project files the worker reads, instead of pasting them: paths, globs (src/**/*.rs) or ranges (src/a.rs:120-260), relative to the project root.
    #[schemars(length(max = 100))]
    #[serde(default)]
    pub(super) files: Vec<String>,
    /// Write the answer to this file (relative to the project root) instead of returning it; you get the path, a preview and the line count.
    pub(super) write_to: Option<String>,
    /// With write_to: replace the file if it exists (default false: an existing file is refused).
    #[serde(default)]
    pub(super) overwrite: bool,
    /// Optional: a shape the answer must have; a failing answer is retried on another model before you see it.
    pub(super) expect: Option<ExpectArg>,
    #[serde(flatten)]
    pub(super) log: LogArgs,
}

/// Exactly one of its fields.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct ExpectArg {
    /// The answer must be JSON valid against this JSON Schema.
    json_schema: Option<serde_json::Value>,
    /// The answer must match this regular expression.
    regex: Option<String>,
    /// The answer must be, or hold exactly one, fenced code block in this language; the block becomes the answer.
    code: Option<String>,
    /// With write_to: run the check of this name from the user's config ([checks]) on the written file.
    command: Option<String>,
}

impl ExpectArg {
    fn expect(self) -> Result<Expect, String> {
        let given = [
            self.json_schema.map(Expect::JsonSchema),
            self.regex.map(Expect::Regex),
            self.code.map(Expect::Code),
            self.command.map(Expect::Command),
        ];
        let mut given = given.into_iter().flatten();
        match (given.next(), given.next()) {
            (Some(e), None) => Ok(e),
            _ => Err("expect takes exactly one of json_schema, regex, code, command".into()),
        }
    }
}

impl Args {
    /// The request the engine runs.
    pub(super) fn request(self) -> Result<DelegateRequest, String> {
        let expect = self.expect.map(ExpectArg::expect).transpose()?;
        Ok(DelegateRequest {
            log: self.log.fields(),
            prompt: self.prompt,
            system: self.system,
            history: Vec::new(),
            model: self.model,
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            files: self.files,
            write_to: self.write_to,
            overwrite: self.overwrite,
            via: "delegate",
            expect,
            stream: None,
        })
    }
}

pub(super) async fn call(
    engine: &Engine,
    args: Args,
    progress: Option<Progress>,
) -> Result<String, String> {
    // Each note (attempt N, failing over, waiting for capacity) is one step.
    let step = std::sync::atomic::AtomicU32::new(0);
    let note = |msg: String| {
        if let Some(p) = &progress {
            let n = step.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            p(f64::from(n), None, msg);
        }
    };
    match engine.delegate(args.request()?, &note).await {
        Ok(s) => Ok(texts::served(&s)),
        Err(e) => Err(texts::full(&e)),
    }
}
