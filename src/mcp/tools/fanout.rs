//! `fanout`: many independent tasks in parallel, results in input order.

use schemars::JsonSchema;
use serde::Deserialize;

use super::delegate;
use crate::dispatch::{Engine, Task, texts};
use crate::mcp::Progress;

pub(super) const DESCRIPTION: &str = "Run many independent tasks on the free pool in parallel (default concurrency 4) and return every result in input order, \
each marked ok, refused (it carried a secret) or failed, with the model that served it, any failed attempts, its decision id, and the reason when not ok. \
Each task takes what delegate takes: give each its files and, for results that belong in files, its own write_to (one task per output file, e.g. convert a folder file by file). \
One failed task never sinks the batch. Answers are cut per task to keep the whole result readable; use delegate or write_to for long ones.";

/// `fanout`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct Args {
    /// The tasks, each as for delegate, with an optional id.
    #[schemars(length(min = 1, max = 200))]
    tasks: Vec<TaskArgs>,
    /// Optional: tasks in flight at once (default 4; capped by settings.fanout_max_concurrency).
    #[schemars(range(min = 1))]
    concurrency: Option<u32>,
}

/// One task.
#[derive(Debug, Deserialize, JsonSchema)]
struct TaskArgs {
    /// Your id for the task (defaults to its index).
    id: Option<String>,
    #[serde(flatten)]
    call: delegate::Args,
}

pub(super) async fn call(
    engine: &Engine,
    args: Args,
    progress: Option<Progress>,
) -> Result<String, String> {
    let settings = &engine.catalog().settings;
    let concurrency = args
        .concurrency
        .unwrap_or(settings.fanout_concurrency)
        .clamp(1, settings.fanout_max_concurrency) as usize;
    let mut tasks = Vec::with_capacity(args.tasks.len());
    for (i, t) in args.tasks.into_iter().enumerate() {
        let id = t.id.unwrap_or_else(|| i.to_string());
        let request = t.call.request().map_err(|e| format!("task {id}: {e}"))?;
        tasks.push(Task { id, request });
    }
    let results = engine
        .fanout(tasks, concurrency, |done, total, msg| {
            if let Some(p) = &progress {
                p(done as f64, Some(total as f64), msg);
            }
        })
        .await;
    Ok(texts::fanout(&results, concurrency))
}
