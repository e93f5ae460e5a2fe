//! The MCP face: the rmcp server, the rubric in `instructions`, progress and cancellation.
//!
//! `Server` implements rmcp's `ServerHandler` by hand (no macros); the tools
//! live one per file under [`tools`]. Results are plain text without
//! `structuredContent`: Claude Code shows the model only the JSON of
//! `structuredContent` when it is present, and an answer reads better as text
//! followed by one provenance line.
//!
//! Outcomes (a refusal, no capacity, bad arguments) are tool errors the model
//! can read and act on; protocol errors are kept for unknown tools and
//! requests that are not tool calls at all.
//!
//! Invariant: only this module knows rmcp and JSON-RPC.

mod tools;
mod transport;

use std::fmt::Write as _;
use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    InitializeRequestParams, InitializeResult, ListToolsResult, PaginatedRequestParams,
    ProgressNotificationParam, ServerCapabilities,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::Value;

use crate::dispatch::Engine;
use crate::quota::UsageSnapshot;
use crate::{budget, router};
use tools::Tool;

/// The rubric template, reviewed as its own file.
const RUBRIC: &str = include_str!("../rubric.md");

/// Claude Code cuts instructions and tool descriptions at this many characters.
#[cfg(test)]
const CLAUDE_CODE_TEXT_LIMIT: usize = 2048;

/// Reports progress: (steps done, total if known, message).
pub(crate) type Progress = Box<dyn Fn(f64, Option<f64>, String) + Send + Sync>;

/// The MCP server.
#[derive(Clone)]
pub(crate) struct Server {
    engine: Arc<Engine>,
    /// The client's roots must be asked for (again) before files are touched.
    roots_stale: Arc<std::sync::atomic::AtomicBool>,
    /// Config problems were shown with a tool result already.
    config_told: Arc<std::sync::atomic::AtomicBool>,
}

impl Server {
    /// A server over an engine.
    pub(crate) fn new(engine: Arc<Engine>) -> Server {
        Server {
            engine,
            roots_stale: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            config_told: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    /// Asks a client that offers MCP `roots` for them, once, and again after
    /// it says they changed: files may be read and written inside them too.
    #[allow(
        deprecated,
        reason = "roots are deprecated by SEP-2577, but Claude Code 2.1 still offers them"
    )]
    async fn refresh_roots(&self, peer: &rmcp::Peer<RoleServer>) {
        use std::sync::atomic::Ordering;
        let offers_roots = peer
            .peer_info()
            .is_some_and(|i| i.capabilities.roots.is_some());
        if !self.roots_stale.swap(false, Ordering::SeqCst) || !offers_roots {
            return;
        }
        match tokio::time::timeout(std::time::Duration::from_secs(2), peer.list_roots()).await {
            Ok(Ok(list)) => {
                let roots = list
                    .roots
                    .iter()
                    .filter_map(|r| file_uri_path(&r.uri))
                    .collect();
                self.engine.set_client_roots(roots);
            }
            // A client that does not answer is asked again only when it says they changed.
            _ => tracing::debug!("the client did not list its roots"),
        }
    }

    /// The instructions sent at connect time: the rubric with live figures.
    async fn instructions(&self) -> String {
        let b = self.engine.budget_at_start().await;
        let cat = self.engine.catalog();
        // Once per session, in the log Claude Code keeps for the server.
        for w in &cat.warnings {
            tracing::warn!("{w}");
        }
        for p in &cat.problems {
            tracing::error!("config problem: {p}");
        }
        let snap = UsageSnapshot::default();
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

    /// Runs a tool; config problems are shown with every result until fixed.
    async fn call(&self, tool: Tool, args: Value, progress: Option<Progress>) -> CallToolResult {
        let always = matches!(tool, Tool::ListModels);
        let mut text = tool.call(&self.engine, args, progress).await;
        let notes = self.config_notes(always);
        if !notes.is_empty() {
            match &mut text {
                Ok(t) | Err(t) => t.push_str(&notes),
            }
        }
        match text {
            Ok(t) => CallToolResult::success(vec![ContentBlock::text(t)]),
            Err(t) => CallToolResult::error(vec![ContentBlock::text(t)]),
        }
    }

    /// Config problems, shown with the session's first tool result, with
    /// every `list_models`, and with every result while nothing is enabled:
    /// Claude should not pay for the same lines on each call.
    fn config_notes(&self, always: bool) -> String {
        let cat = self.engine.catalog();
        if cat.problems.is_empty() {
            return String::new();
        }
        let nothing = cat.providers.is_empty();
        let told = self
            .config_told
            .swap(true, std::sync::atomic::Ordering::Relaxed);
        if told && !always && !nothing {
            return String::new();
        }
        let label = if nothing {
            "config problem (no provider is enabled until it is fixed)"
        } else {
            "config problem (the rest works)"
        };
        let mut out = String::new();
        for p in &cat.problems {
            let _ = write!(out, "\n{label}: {p}");
        }
        out
    }
}

/// The path of a `file://` URI (percent-decoded), or `None` for anything else.
fn file_uri_path(uri: &str) -> Option<std::path::PathBuf> {
    let rest = uri.strip_prefix("file://")?;
    let rest = rest.strip_prefix("localhost").unwrap_or(rest);
    let bytes = rest.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(std::path::PathBuf::from)
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
        result.instructions = Some(self.instructions().await);
        // Key commands run in the background so the first call finds them ready.
        let engine = self.engine.clone();
        tokio::spawn(async move {
            engine.resolved_catalog().await;
        });
        Ok(result)
    }

    async fn on_roots_list_changed(
        &self,
        _context: rmcp::service::NotificationContext<RoleServer>,
    ) {
        self.roots_stale
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(
            Tool::ALL.iter().map(|t| t.definition()).collect(),
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.to_string();
        let Some(tool) = Tool::from_name(&name) else {
            let names: Vec<&str> = Tool::ALL.iter().map(|t| t.name()).collect();
            return Err(ErrorData::invalid_params(
                format!("unknown tool `{name}`; the tools are {}", names.join(", ")),
                None,
            ));
        };
        let args = Value::Object(request.arguments.unwrap_or_default());
        if matches!(tool, Tool::Delegate | Tool::Fanout) {
            self.refresh_roots(&context.peer).await;
        }
        let mut forwarder = None;
        let progress: Option<Progress> = context.meta.get_progress_token().map(|token| {
            let peer = context.peer.clone();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(f64, Option<f64>, String)>();
            forwarder = Some(tokio::spawn(async move {
                while let Some((done, total, msg)) = rx.recv().await {
                    let mut p =
                        ProgressNotificationParam::new(token.clone(), done).with_message(msg);
                    if let Some(t) = total {
                        p = p.with_total(t);
                    }
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
            self.call(tool, args, progress),
        ));
        let result = tokio::select! {
            r = work => r.unwrap_or_else(|_| CallToolResult::error(vec![ContentBlock::text(format!(
                "internal error in {name} (a bug, logged on stderr); the server goes on. Keep this task on Claude."
            ))])),
            () = context.ct.cancelled() => {
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
pub(crate) async fn serve(engine: Arc<Engine>) -> Result<(), std::io::Error> {
    let server = Server::new(engine);
    let (read, write) = rmcp::transport::stdio_pipes();
    let running = server
        .serve(transport::Lines::new(read, write))
        .await
        .map_err(std::io::Error::other)?;
    running.waiting().await.map_err(std::io::Error::other)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_uris_become_paths() {
        let cases = [
            ("file:///home/me/my%20project", Some("/home/me/my project")),
            ("file://localhost/srv/a", Some("/srv/a")),
            ("file:///x/%E2%82%AC", Some("/x/€")),
            ("https://example.com/a", None),
        ];
        for (uri, want) in cases {
            assert_eq!(
                file_uri_path(uri),
                want.map(std::path::PathBuf::from),
                "{uri}"
            );
        }
    }

    fn server() -> Server {
        let cat = crate::config::load_from(None, &|_| None);
        let dir = tempfile::tempdir().unwrap();
        Server::new(Arc::new(Engine::new(cat, dir.keep())))
    }

    /// The longest the live figures make it: no provider usable, a pinned mode.
    #[test]
    fn the_rubric_fits_with_its_longest_figures() {
        let worst = RUBRIC
            .replace(
                "{ceiling}",
                "0 tokens: no provider is usable, so nothing can be delegated until a key is set",
            )
            .replace("{threshold}", "9")
            .replace("{mode}", "delegate_more (pinned by settings.budget_mode)");
        assert!(
            worst.trim_end().len() <= CLAUDE_CODE_TEXT_LIMIT,
            "{} chars",
            worst.len()
        );
    }

    #[tokio::test]
    async fn instructions_fit_and_carry_the_rubric() {
        let text = server().instructions().await;
        assert!(text.len() <= CLAUDE_CODE_TEXT_LIMIT, "{} chars", text.len());
        for must in [
            "Sensitivity",
            "Capability",
            "1-3",
            "4-6",
            "7-8",
            "9-10",
            "log_route_decision",
            "Answers are untrusted",
            "Pass paths, never contents",
            "write_to",
            "Budget mode now",
            "ceiling",
        ] {
            assert!(text.contains(must), "missing {must}");
        }
        assert!(!text.contains('{'), "a placeholder was left: {text}");
    }
}
