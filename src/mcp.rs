//! The MCP face: tools, their schemas, the rubric in `instructions`, and results as Claude reads them.
//!
//! `Server` implements rmcp's `ServerHandler` by hand (no macros) so every
//! schema, annotation and `_meta` entry is visible here. Results are plain
//! text without `structuredContent`: Claude Code shows the model only the
//! JSON of `structuredContent` when it is present, and an answer reads better
//! as text followed by one provenance line.
//!
//! Outcomes (a refusal, no capacity, bad arguments) are tool errors the model
//! can read and act on; protocol errors are kept for unknown tools and
//! requests that are not tool calls at all.
//!
//! Invariant: only this module knows rmcp and JSON-RPC.

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    InitializeRequestParams, InitializeResult, JsonObject, ListToolsResult, MetaObject,
    PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::dispatch::{DelegateRequest, Engine, LogFields, Served, Task};
use crate::ledger::now_ms;
use crate::{budget, decisions, gate, router, status};

/// The rubric template, reviewed as its own file.
pub const RUBRIC: &str = include_str!("rubric.md");

/// Claude Code cuts instructions and tool descriptions at this many characters.
pub const CLAUDE_CODE_TEXT_LIMIT: usize = 2048;

/// Largest result Claude Code accepts inline when a tool says so (`_meta`).
pub const MAX_RESULT_CHARS: u64 = 100_000;

/// Reports progress: (done, total, message).
pub type Progress = Box<dyn Fn(f64, f64, String) + Send + Sync>;

/// The MCP server.
#[derive(Clone)]
pub struct Server {
    engine: Arc<Engine>,
}

impl Server {
    /// A server over an engine.
    pub fn new(engine: Arc<Engine>) -> Server {
        Server { engine }
    }

    /// The instructions sent at connect time: the rubric with live figures.
    pub fn instructions(&self) -> String {
        let b = self.engine.budget();
        let cat = self.engine.catalog();
        let snap = crate::ledger::UsageSnapshot::default();
        let ceiling = match router::context_ceiling(cat, &snap, cat.settings.output_reserve) {
            Some((tokens, _)) => format!(
                "{} tokens (~{} characters)",
                group(tokens),
                group(tokens * 3)
            ),
            None => {
                "0 tokens: no provider is usable, so nothing can be delegated until a key is set"
                    .into()
            }
        };
        let mode = match &b.source {
            budget::Source::Pinned { by } => format!("{} (pinned by {by})", b.mode.as_str()),
            _ => b.mode.as_str().to_owned(),
        };
        RUBRIC
            .replace("{ceiling}", &ceiling)
            .replace("{threshold}", &b.threshold.to_string())
            .replace("{mode}", &mode)
            .trim_end()
            .to_owned()
    }

    /// Every tool, with schema, annotations and description.
    pub fn tools() -> Vec<Tool> {
        let object = |v: Value| -> Arc<JsonObject> {
            match v {
                Value::Object(m) => Arc::new(m),
                _ => unreachable!("schemas are objects"),
            }
        };
        let log_props = json!({
            "gist": {"type": "string", "maxLength": 200, "description": "Optional: a short description of the task for the decision log (never the prompt itself)."},
            "score": {"type": "integer", "minimum": 1, "maximum": 10, "description": "Optional: the difficulty score you gave the task."},
            "task_type": {"type": "string", "description": "Optional: summarize, extract, convert, codegen, draft, refactor, ..."}
        });
        let mut delegate_props = json!({
            "prompt": {"type": "string", "description": "The complete, self-contained task. The worker sees nothing else."},
            "model": {"type": "string", "description": "Optional: \"auto\" (default), an exact \"provider/model\" id, or a family such as \"llama-3.3-70b\" (see list_models)."},
            "system": {"type": "string", "description": "Optional system prompt."},
            "max_tokens": {"type": "integer", "minimum": 1, "description": "Optional cap on the answer's length in tokens."},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2, "description": "Optional sampling temperature."}
        });
        merge(&mut delegate_props, &log_props);
        let mut task_props = json!({
            "id": {"type": "string", "description": "Your id for the task (defaults to its index)."},
            "prompt": {"type": "string", "description": "The complete, self-contained task."},
            "model": {"type": "string", "description": "Optional model, as for delegate."},
            "system": {"type": "string"},
            "max_tokens": {"type": "integer", "minimum": 1}
        });
        merge(&mut task_props, &log_props);
        let read_only = |title: &str| {
            ToolAnnotations::with_title(title)
                .read_only(true)
                .destructive(false)
                .idempotent(true)
                .open_world(false)
        };
        let pool_call = |title: &str| {
            ToolAnnotations::with_title(title)
                .read_only(false)
                .destructive(false)
                .idempotent(false)
                .open_world(true)
        };
        let mut size_meta = MetaObject::new();
        size_meta.insert(
            "anthropic/maxResultSizeChars".into(),
            json!(MAX_RESULT_CHARS),
        );
        vec![
            Tool::new(
                "delegate",
                "Run one task on a free LLM from the pool and return its answer with provenance (provider/model, tokens, latency, attempts). \
                 Omit model for auto-routing; failover across providers is automatic. \
                 Use for mechanical work scoring below the threshold (summarize, extract, convert, boilerplate, drafts). \
                 The prompt leaves this machine: anything carrying a secret or credential is refused and nothing is sent. \
                 Read the answer before using it; redo the task yourself if it is wrong. \
                 Optional gist/score/task_type log the routing decision in the same call.",
                object(json!({"type": "object", "properties": delegate_props, "required": ["prompt"], "additionalProperties": false})),
            )
            .with_annotations(pool_call("Delegate to the free pool"))
            .with_meta(size_meta.clone()),
            Tool::new(
                "fanout",
                "Run many independent tasks on the free pool in parallel (default concurrency 4) and return every result in input order, \
                 each marked ok, refused (it carried a secret) or failed, with the model that served it and the reason when not ok. \
                 One failed task never sinks the batch. Answers are cut per task to keep the whole result readable; use delegate for long answers. \
                 Each task is self-contained: the worker sees only its prompt.",
                object(json!({
                    "type": "object",
                    "properties": {
                        "tasks": {"type": "array", "minItems": 1, "maxItems": 200, "items": {"type": "object", "properties": task_props, "required": ["prompt"], "additionalProperties": false}},
                        "concurrency": {"type": "integer", "minimum": 1, "description": "Optional: tasks in flight at once (default 4; capped by settings.fanout_max_concurrency)."}
                    },
                    "required": ["tasks"],
                    "additionalProperties": false
                })),
            )
            .with_annotations(pool_call("Fan out to the free pool"))
            .with_meta(size_meta),
            Tool::new(
                "list_models",
                "List the free models usable right now (key present, not cooling down): provider/model id, family, context window, quality tier \
                 and the free quota left today. Also gives the auto context ceiling: the largest prompt auto-routing can take now. \
                 Lists providers that are not usable and why (no key, benched).",
                object(json!({"type": "object", "properties": {}, "additionalProperties": false})),
            )
            .with_annotations(read_only("List free models")),
            Tool::new(
                "claude_budget",
                "Report Claude's own usage: weekly and 5-hour windows with reset times, the routing mode (normal, prefer_sonnet, delegate_more, exhausted, unknown), \
                 the delegation threshold it implies, where the figures came from (statusline capture and its age, a pinned mode, or none) and one line of advice.",
                object(json!({"type": "object", "properties": {}, "additionalProperties": false})),
            )
            .with_annotations(read_only("Claude budget")),
            Tool::new(
                "log_route_decision",
                "Record one routing decision (both routes: pool and claude) for the audit trail and a future routing classifier. \
                 gist is a short description of the task, never the prompt. Returns the decision id. \
                 To report how a pool answer turned out later, call again with decision_id and outcome (accepted, redone or failed).",
                object(json!({
                    "type": "object",
                    "properties": {
                        "gist": {"type": "string", "maxLength": 200, "description": "Short description of the task (at most 200 characters, never the prompt)."},
                        "route": {"type": "string", "enum": ["pool", "claude"]},
                        "score": {"type": "integer", "minimum": 1, "maximum": 10},
                        "task_type": {"type": "string"},
                        "gate": {"type": "string", "enum": ["sensitivity", "capability", "none"], "description": "The veto gate that fired, if any."},
                        "model": {"type": "string", "description": "provider/model that served it, for route pool."},
                        "outcome": {"type": "string", "enum": ["accepted", "redone", "failed"]},
                        "decision_id": {"type": "integer", "description": "Set the outcome of an earlier decision instead of logging a new one."}
                    },
                    "additionalProperties": false
                })),
            )
            .with_annotations(ToolAnnotations::with_title("Log a routing decision").read_only(false).destructive(false).idempotent(false).open_world(false)),
        ]
    }

    /// Runs a tool by name; `None` for an unknown tool.
    pub async fn call(
        &self,
        name: &str,
        args: Value,
        progress: Option<Progress>,
    ) -> Option<CallToolResult> {
        let result = match name {
            "delegate" => self.delegate(args).await,
            "fanout" => self.fanout(args, progress).await,
            "list_models" => self.list_models().await,
            "claude_budget" => Ok(self.claude_budget()),
            "log_route_decision" => self.log_route_decision(args),
            _ => return None,
        };
        let mut text = result;
        // Config problems are shown with every result until fixed.
        let notes = self.config_notes();
        if !notes.is_empty() {
            match &mut text {
                Ok(t) | Err(t) => t.push_str(&notes),
            }
        }
        Some(match text {
            Ok(t) => CallToolResult::success(vec![ContentBlock::text(t)]),
            Err(t) => CallToolResult::error(vec![ContentBlock::text(t)]),
        })
    }

    fn config_notes(&self) -> String {
        let cat = self.engine.catalog();
        let mut out = String::new();
        for p in &cat.problems {
            out.push_str(&format!("\nconfig problem (the rest works): {p}"));
        }
        out
    }

    async fn delegate(&self, args: Value) -> Result<String, String> {
        let a: DelegateArgs = parse_args(args)?;
        let log = a.log_fields();
        let req = DelegateRequest {
            prompt: a.prompt,
            system: a.system,
            model: a.model,
            max_tokens: a.max_tokens,
            temperature: a.temperature,
            log,
        };
        match self.engine.delegate(req).await {
            Ok(s) => Ok(render_served(&s)),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn fanout(&self, args: Value, progress: Option<Progress>) -> Result<String, String> {
        let a: FanoutArgs = parse_args(args)?;
        if a.tasks.is_empty() {
            return Err("fanout needs at least one task".into());
        }
        let settings = &self.engine.catalog().settings;
        let concurrency = a
            .concurrency
            .unwrap_or(settings.fanout_concurrency)
            .clamp(1, settings.fanout_max_concurrency) as usize;
        let tasks: Vec<Task> = a
            .tasks
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                let log = t.log_fields();
                Task {
                    id: t.id.unwrap_or_else(|| i.to_string()),
                    request: DelegateRequest {
                        prompt: t.prompt,
                        system: t.system,
                        model: t.model,
                        max_tokens: t.max_tokens,
                        temperature: None,
                        log,
                    },
                }
            })
            .collect();
        let results = self
            .engine
            .fanout(tasks, concurrency, |done, total, msg| {
                if let Some(p) = &progress {
                    p(done as f64, total as f64, msg);
                }
            })
            .await;
        let ok = results.iter().filter(|r| r.status == "ok").count();
        let mut out = format!(
            "fanout: {ok} of {} tasks ok (concurrency {concurrency})\n",
            results.len()
        );
        for r in &results {
            out.push_str(&format!("\n=== task {} · {}", r.id, r.status));
            if let Some(m) = &r.model {
                out.push_str(&format!(" · {m}"));
            }
            if let Some(t) = r.tokens {
                out.push_str(&format!(" · {t} tokens"));
            }
            out.push_str(&format!(" · {} ms ===\n", r.latency_ms));
            match (&r.text, &r.reason) {
                (Some(t), _) => out.push_str(t.trim_end()),
                (None, Some(reason)) => out.push_str(reason.trim_end()),
                _ => {}
            }
            out.push('\n');
        }
        Ok(out)
    }

    async fn list_models(&self) -> Result<String, String> {
        let catalog = self.engine.resolved_catalog().await;
        match self.engine.snapshot(&catalog).await {
            Ok(snap) => Ok(status::models_text(&catalog, &snap)),
            // The catalog is still worth showing when the ledger is not.
            Err(e) => Ok(format!(
                "{}\n\nnote: quota left is unknown: {e}",
                status::models_text(&catalog, &crate::ledger::UsageSnapshot::default())
            )),
        }
    }

    fn claude_budget(&self) -> String {
        let b = self.engine.budget();
        status::budget_text(&b, now_ms() / 1000)
    }

    fn log_route_decision(&self, args: Value) -> Result<String, String> {
        let a: LogArgs = parse_args(args)?;
        let log = self.engine.log().map_err(|e| e.to_string())?;
        if let Some(outcome) = &a.outcome
            && !["accepted", "redone", "failed"].contains(&outcome.as_str())
        {
            return Err(format!(
                "outcome `{outcome}` must be accepted, redone or failed"
            ));
        }
        if let Some(id) = a.decision_id {
            let Some(outcome) = &a.outcome else {
                return Err(
                    "with decision_id, give the outcome (accepted, redone or failed)".into(),
                );
            };
            log.set_outcome(id, outcome).map_err(|e| e.to_string())?;
            return Ok(format!("decision {id}: outcome set to {outcome}"));
        }
        let gist = a.gist.unwrap_or_default();
        if gist.trim().is_empty() {
            return Err(
                "gist is required: a short description of the task (never the prompt)".into(),
            );
        }
        let findings = gate::scan(&gist);
        if let Some(f) = findings.first() {
            return Err(format!(
                "refused: the gist carries a secret ({} at line {}, column {}); the log must never hold one. Describe the task without it.",
                f.kind, f.line, f.column
            ));
        }
        let route = a.route.ok_or("route is required: pool or claude")?;
        if route != "pool" && route != "claude" {
            return Err(format!("route `{route}` must be pool or claude"));
        }
        if let Some(s) = a.score
            && !(1..=10).contains(&s)
        {
            return Err(format!("score {s} must be between 1 and 10"));
        }
        let gate_name = match a.gate.as_deref() {
            None | Some("none") | Some("") => None,
            Some(g @ ("sensitivity" | "capability")) => Some(g.to_owned()),
            Some(other) => {
                return Err(format!(
                    "gate `{other}` must be sensitivity, capability or none"
                ));
            }
        };
        let d = decisions::Decision {
            gist: gist.chars().take(decisions::MAX_GIST).collect(),
            route,
            score: a.score,
            task_type: a.task_type,
            gate: gate_name,
            model: a.model,
            outcome: a.outcome,
            via: "claude".into(),
            budget_mode: Some(self.engine.budget().mode.as_str().into()),
        };
        let id = log.record(&d, now_ms()).map_err(|e| e.to_string())?;
        let cut = if gist.chars().count() > decisions::MAX_GIST {
            " (gist cut to 200 characters)"
        } else {
            ""
        };
        Ok(format!("logged decision {id}{cut}"))
    }
}

fn merge(target: &mut Value, extra: &Value) {
    if let (Some(t), Some(e)) = (target.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            t.insert(k.clone(), v.clone());
        }
    }
}

fn parse_args<T: for<'de> Deserialize<'de>>(args: Value) -> Result<T, String> {
    let args = if args.is_null() { json!({}) } else { args };
    serde_json::from_value(args).map_err(|e| format!("invalid arguments: {e}"))
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// An answer followed by its provenance, as the model reads it.
pub fn render_served(s: &Served) -> String {
    let mut out = s.text.trim_end().to_owned();
    out.push_str("\n\n---\nserved by ");
    out.push_str(&s.model);
    if let Some(r) = &s.reported_model {
        out.push_str(&format!(" (reported as {r})"));
    }
    let est = if s.estimated { " (estimated)" } else { "" };
    out.push_str(&format!(
        " · {} prompt + {} completion tokens{est} · {} ms",
        s.prompt_tokens, s.completion_tokens, s.latency_ms
    ));
    let n = s.attempts.len();
    if n > 1 {
        let failed: Vec<String> = s.attempts[..n - 1]
            .iter()
            .map(|a| format!("{}: {}", a.model, a.outcome))
            .collect();
        out.push_str(&format!(
            " · {n} attempts (failed over from {})",
            failed.join("; ")
        ));
    } else {
        out.push_str(" · 1 attempt");
    }
    if s.truncated {
        out.push_str("\nthe answer stopped at max_tokens: it may be cut short.");
    }
    if s.trains_on_prompts == Some(true) {
        out.push_str("\nnote: this provider's free tier may train on prompts.");
    }
    if let Some(id) = s.decision_id {
        out.push_str(&format!("\ndecision {id} logged; report the outcome with log_route_decision(decision_id={id}, outcome=accepted|redone)."));
    }
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DelegateArgs {
    prompt: String,
    model: Option<String>,
    system: Option<String>,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    gist: Option<String>,
    score: Option<u8>,
    task_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskArgs {
    id: Option<String>,
    prompt: String,
    model: Option<String>,
    system: Option<String>,
    max_tokens: Option<u32>,
    gist: Option<String>,
    score: Option<u8>,
    task_type: Option<String>,
}

macro_rules! log_fields {
    ($t:ty) => {
        impl $t {
            fn log_fields(&self) -> Option<LogFields> {
                (self.gist.is_some() || self.score.is_some() || self.task_type.is_some()).then(
                    || LogFields {
                        gist: self.gist.clone(),
                        score: self.score.filter(|s| (1..=10).contains(s)),
                        task_type: self.task_type.clone(),
                    },
                )
            }
        }
    };
}
log_fields!(DelegateArgs);
log_fields!(TaskArgs);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FanoutArgs {
    tasks: Vec<TaskArgs>,
    concurrency: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogArgs {
    gist: Option<String>,
    route: Option<String>,
    score: Option<u8>,
    task_type: Option<String>,
    gate: Option<String>,
    model: Option<String>,
    outcome: Option<String>,
    decision_id: Option<i64>,
}

impl ServerHandler for Server {
    fn get_info(&self) -> InitializeResult {
        let mut info = InitializeResult::new(ServerCapabilities::builder().enable_tools().build());
        info.server_info = Implementation::new("freepool-mcp", env!("CARGO_PKG_VERSION"));
        info
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        context.peer.set_peer_info(request.clone());
        let mut result = self.negotiate_initialize(&request)?;
        result.instructions = Some(self.instructions());
        // Key commands run in the background so the first call finds them ready.
        let engine = self.engine.clone();
        tokio::spawn(async move {
            engine.resolved_catalog().await;
        });
        Ok(result)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(Self::tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.to_string();
        if !Self::tools().iter().any(|t| t.name == name) {
            return Err(ErrorData::invalid_params(
                format!(
                    "unknown tool `{name}`; the tools are delegate, fanout, list_models, claude_budget, log_route_decision"
                ),
                None,
            ));
        }
        let args = Value::Object(request.arguments.unwrap_or_default());
        let mut forwarder = None;
        let progress: Option<Progress> = context.meta.get_progress_token().map(|token| {
            let peer = context.peer.clone();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(f64, f64, String)>();
            forwarder = Some(tokio::spawn(async move {
                while let Some((done, total, msg)) = rx.recv().await {
                    let p = ProgressNotificationParam::new(token.clone(), done)
                        .with_total(total)
                        .with_message(msg);
                    if peer.notify_progress(p).await.is_err() {
                        break;
                    }
                }
            }));
            Box::new(move |d, t, m| {
                let _ = tx.send((d, t, m));
            }) as Progress
        });
        // A bug must not leave the client waiting for an answer that never comes.
        let work = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
            self.call(&name, args, progress),
        ));
        let result = tokio::select! {
            r = work => match r {
                Ok(Some(r)) => r,
                Ok(None) => return Err(ErrorData::invalid_params(format!("unknown tool `{name}`"), None)),
                Err(_) => CallToolResult::error(vec![ContentBlock::text(format!(
                    "internal error in {name} (a bug, logged on stderr); the server goes on. Keep this task on Claude."
                ))]),
            },
            _ = context.ct.cancelled() => {
                // Dropping `work` aborts in-flight HTTP calls and releases their leases.
                tracing::info!(tool = %name, "cancelled by the client");
                return Err(ErrorData::internal_error("cancelled by the client", None));
            }
        };
        // Every progress notification goes out before the result does.
        if let Some(f) = forwarder {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), f).await;
        }
        Ok(result.into())
    }
}

/// Serves MCP on stdin/stdout until the client goes away.
pub async fn serve(engine: Arc<Engine>) -> anyhow::Result<()> {
    let server = Server::new(engine);
    let running = server.serve(rmcp::transport::stdio_pipes()).await?;
    running.waiting().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> Server {
        let cat = crate::config::load_from(None, &|_| None);
        let dir = tempfile::tempdir().unwrap();
        Server::new(Arc::new(Engine::new(cat, dir.keep())))
    }

    #[test]
    fn instructions_fit_and_carry_the_rubric() {
        let text = server().instructions();
        assert!(text.len() <= CLAUDE_CODE_TEXT_LIMIT, "{} chars", text.len());
        for must in [
            "Sensitivity",
            "Capability",
            "1-3",
            "4-6",
            "7-8",
            "9-10",
            "log_route_decision",
            "Read every pool answer",
            "Budget mode now",
            "ceiling",
        ] {
            assert!(text.contains(must), "missing {must}");
        }
        assert!(!text.contains('{'), "a placeholder was left: {text}");
    }

    #[test]
    fn tool_schemas_are_objects_and_descriptions_fit() {
        let tools = Server::tools();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(
            names,
            [
                "delegate",
                "fanout",
                "list_models",
                "claude_budget",
                "log_route_decision"
            ]
        );
        for t in &tools {
            assert_eq!(
                t.input_schema.get("type"),
                Some(&json!("object")),
                "{}",
                t.name
            );
            assert!(
                t.description.as_ref().unwrap().len() < CLAUDE_CODE_TEXT_LIMIT,
                "{}",
                t.name
            );
            assert!(t.annotations.is_some(), "{}", t.name);
        }
    }

    #[test]
    fn every_schema_property_is_accepted_by_its_parser() {
        for t in Server::tools() {
            let props = t
                .input_schema
                .get("properties")
                .and_then(|p| p.as_object())
                .unwrap();
            let mut example = serde_json::Map::new();
            for (k, v) in props {
                let value = match v.get("type").and_then(|t| t.as_str()) {
                    Some("integer") => json!(2),
                    Some("number") => json!(0.5),
                    Some("array") => {
                        json!([{"prompt": "p", "id": "a", "model": "auto", "system": "s", "max_tokens": 5, "gist": "g", "score": 2, "task_type": "x"}])
                    }
                    _ => v
                        .get("enum")
                        .and_then(|e| e.get(0))
                        .cloned()
                        .unwrap_or(json!("text")),
                };
                example.insert(k.clone(), value);
            }
            let v = Value::Object(example);
            let ok = match t.name.as_ref() {
                "delegate" => parse_args::<DelegateArgs>(v).map(|_| ()),
                "fanout" => parse_args::<FanoutArgs>(v).map(|_| ()),
                "log_route_decision" => parse_args::<LogArgs>(v).map(|_| ()),
                _ => Ok(()),
            };
            assert!(ok.is_ok(), "{}: {ok:?}", t.name);
        }
    }

    #[test]
    fn served_renders_answer_then_provenance() {
        let s = Served {
            text: "the answer\n".into(),
            model: "groq/llama".into(),
            reported_model: None,
            prompt_tokens: 12,
            completion_tokens: 3,
            estimated: false,
            latency_ms: 40,
            attempts: vec![
                crate::dispatch::Attempt {
                    model: "cerebras/x".into(),
                    outcome: "429 rate limited".into(),
                    ms: 5,
                },
                crate::dispatch::Attempt {
                    model: "groq/llama".into(),
                    outcome: "ok".into(),
                    ms: 30,
                },
            ],
            truncated: false,
            trains_on_prompts: None,
            decision_id: Some(7),
        };
        let text = render_served(&s);
        assert!(
            text.starts_with("the answer\n\n---\nserved by groq/llama"),
            "{text}"
        );
        assert!(
            text.contains("2 attempts (failed over from cerebras/x: 429 rate limited)"),
            "{text}"
        );
        assert!(text.contains("decision_id=7"), "{text}");
    }
}
