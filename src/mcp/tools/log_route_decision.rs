//! `log_route_decision`: one routing decision for the audit trail, or the outcome of an earlier one.

use schemars::JsonSchema;
use serde::Deserialize;

use crate::decisions::{self, Decision};
use crate::dispatch::{Engine, texts};
use crate::gate;

pub(super) const DESCRIPTION: &str = "Record one routing decision (both routes: pool and claude) for the audit trail and a future routing classifier. \
gist is a short description of the task, never the prompt. Returns the decision id. \
To report how a pool answer turned out later, call again with decision_id and outcome (accepted, redone or failed).";

/// Which side did the task.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Route {
    Pool,
    Claude,
}

/// The veto gate that fired, if any.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Gate {
    Sensitivity,
    Capability,
    None,
}

/// How a pool answer turned out.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Outcome {
    Accepted,
    Redone,
    Failed,
}

impl Outcome {
    fn as_str(&self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Redone => "redone",
            Outcome::Failed => "failed",
        }
    }
}

/// `log_route_decision`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct Args {
    /// Short description of the task (at most 200 characters, never the prompt).
    #[schemars(length(max = 200))]
    gist: Option<String>,
    route: Option<Route>,
    #[schemars(range(min = 1, max = 10))]
    score: Option<u8>,
    task_type: Option<String>,
    /// The veto gate that fired, if any.
    gate: Option<Gate>,
    /// provider/model that served it, for route pool.
    model: Option<String>,
    outcome: Option<Outcome>,
    /// Set the outcome of an earlier decision instead of logging a new one.
    decision_id: Option<i64>,
}

pub(super) async fn call(engine: &Engine, a: Args) -> Result<String, String> {
    if let Some(id) = a.decision_id {
        let Some(outcome) = a.outcome else {
            return Err("with decision_id, give the outcome (accepted, redone or failed)".into());
        };
        let o = outcome.as_str();
        engine
            .report_outcome(id, o)
            .await
            .map_err(|e| texts::full(&e))?;
        return Ok(format!("decision {id}: outcome set to {o}"));
    }
    let gist = a.gist.unwrap_or_default();
    if gist.trim().is_empty() {
        return Err("gist is required: a short description of the task (never the prompt)".into());
    }
    if let Some(f) = gate::scan(&gist).first() {
        return Err(format!(
            "refused: the gist carries a secret ({} at line {}, column {}); the log must never hold one. Describe the task without it.",
            f.kind, f.line, f.column
        ));
    }
    let route = match a.route {
        Some(Route::Pool) => "pool",
        Some(Route::Claude) => "claude",
        None => return Err("route is required: pool or claude".into()),
    };
    let gate_name = match a.gate {
        Some(Gate::Sensitivity) => Some("sensitivity".to_owned()),
        Some(Gate::Capability) => Some("capability".to_owned()),
        Some(Gate::None) | None => None,
    };
    let d = Decision {
        gist: gist.chars().take(decisions::MAX_GIST).collect(),
        route: route.into(),
        score: a.score,
        task_type: a.task_type,
        gate: gate_name,
        model: a.model,
        outcome: a.outcome.map(|o| o.as_str().to_owned()),
        via: "claude".into(),
        budget_mode: Some(engine.budget().await.mode.as_str().into()),
        ..Decision::default()
    };
    let now = engine.now();
    let id = engine
        .with_log(move |l| l.record(&d, now))
        .await
        .map_err(|e| texts::full(&e))?;
    Ok(format!("logged decision {id}"))
}
