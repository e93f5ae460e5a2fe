//! Many independent tasks through the one failover loop, with bounded concurrency.
//!
//! Results come back in input order whatever order they finish in; one failed
//! or refused task never sinks the batch; the whole result shares one size
//! budget so Claude Code shows it inline.

use futures::StreamExt;

use super::{DelegateRequest, Engine, Error, texts};

/// Longest fanout result in all, in characters (Claude Code's token cap is ~25k tokens).
pub(crate) const MAX_FANOUT_CHARS: usize = 80_000;

/// One fanout task.
#[derive(Debug, Clone, Default)]
pub(crate) struct Task {
    /// Caller's id (defaults to the index).
    pub(crate) id: String,
    /// The request.
    pub(crate) request: DelegateRequest,
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskStatus {
    /// Answered.
    Ok,
    /// The gate found a secret; nothing was sent.
    Refused,
    /// No answer.
    Failed,
}

impl TaskStatus {
    /// As shown.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Ok => "ok",
            TaskStatus::Refused => "refused",
            TaskStatus::Failed => "failed",
        }
    }
}

/// The result of one fanout task.
#[derive(Debug, Clone)]
pub(crate) struct TaskResult {
    /// The task id.
    pub(crate) id: String,
    /// How it ended.
    pub(crate) status: TaskStatus,
    /// The answer, when ok and not written to a file (cut to the per-task cap).
    pub(crate) text: Option<String>,
    /// Where the answer was written, when it was.
    pub(crate) wrote: Option<super::Wrote>,
    /// Served model.
    pub(crate) model: Option<String>,
    /// Why, when not ok.
    pub(crate) reason: Option<String>,
    /// Tokens used (prompt + completion).
    pub(crate) tokens: Option<u64>,
    /// Attempts made, the last the one that served when ok.
    pub(crate) attempts: Vec<super::Attempt>,
    /// The decision logged for the task's pool call.
    pub(crate) decision_id: Option<i64>,
    /// Secrets taken out of the answer.
    pub(crate) redacted: Vec<crate::gate::Redaction>,
    /// Lines of the answer aimed at the orchestrator.
    pub(crate) flags: Vec<crate::gate::Flag>,
    /// Latency.
    pub(crate) latency_ms: u64,
}

impl Engine {
    /// Runs many tasks with bounded concurrency. Results come back in input
    /// order; `progress(done, total, message)` is called as each finishes.
    pub(crate) async fn fanout(
        &self,
        tasks: Vec<Task>,
        concurrency: usize,
        progress: impl Fn(usize, usize, String),
    ) -> Vec<TaskResult> {
        let total = tasks.len();
        // Share the result budget between tasks, never below a readable minimum.
        let per_task_cap = (MAX_FANOUT_CHARS / total.max(1))
            .min(self.catalog().settings.fanout_max_chars_per_task)
            .max(200);
        let mut results: Vec<Option<TaskResult>> = vec![None; total];
        let mut stream = futures::stream::iter(tasks.into_iter().enumerate())
            .map(|(i, task)| async move { (i, self.fanout_one(task, per_task_cap).await) })
            .buffer_unordered(concurrency.max(1));
        let mut done = 0;
        while let Some((i, r)) = stream.next().await {
            done += 1;
            let msg = match r.status {
                TaskStatus::Ok => format!(
                    "task {} done on {}",
                    r.id,
                    r.model.as_deref().unwrap_or("?")
                ),
                s => format!("task {} {}", r.id, s.as_str()),
            };
            progress(done, total, msg);
            if let Some(slot) = results.get_mut(i) {
                *slot = Some(r);
            }
        }
        results.into_iter().flatten().collect()
    }

    /// One task, through the same path as `delegate` (files, gate, write,
    /// decision log), its result cut to the task's share of the whole.
    async fn fanout_one(&self, task: Task, cap: usize) -> TaskResult {
        let started = self.now();
        let id = task.id.clone();
        let mut req = task.request;
        req.via = "fanout";
        if let Some(l) = req.log.as_mut() {
            l.gist.get_or_insert_with(|| format!("fanout task {id}"));
        }
        let result = self.delegate(req, &|_| {}).await;
        let latency_ms = (self.now() - started).max(0) as u64;
        match result {
            Ok(s) => TaskResult {
                id,
                status: TaskStatus::Ok,
                text: match &s.wrote {
                    Some(_) => None,
                    None => Some(texts::cut(s.text, cap, "; use delegate for long answers")),
                },
                wrote: s.wrote,
                model: Some(s.model),
                reason: None,
                tokens: Some(s.prompt_tokens + s.completion_tokens),
                attempts: s.attempts,
                decision_id: s.decision_id,
                redacted: s.redacted,
                flags: s.flags,
                latency_ms,
            },
            Err(e @ Error::Refused { .. }) => TaskResult {
                id,
                status: TaskStatus::Refused,
                text: None,
                wrote: None,
                model: None,
                reason: Some(e.to_string()),
                tokens: None,
                attempts: Vec::new(),
                decision_id: None,
                redacted: Vec::new(),
                flags: Vec::new(),
                latency_ms: 0,
            },
            Err(e) => TaskResult {
                id,
                status: TaskStatus::Failed,
                text: None,
                wrote: None,
                model: None,
                attempts: e.attempts().to_vec(),
                decision_id: None,
                redacted: Vec::new(),
                flags: Vec::new(),
                reason: Some(texts::full(&e)),
                tokens: None,
                latency_ms,
            },
        }
    }
}
