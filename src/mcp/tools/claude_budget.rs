//! `claude_budget`: Claude's own weekly and 5-hour use, as a routing mode.

use crate::dispatch::Engine;
use crate::status;

pub(super) const DESCRIPTION: &str = "Report Claude's own usage: weekly and 5-hour windows with reset times, the routing mode (normal, prefer_sonnet, delegate_more, exhausted, unknown), \
the delegation threshold it implies, where the figures came from (statusline capture and its age, a pinned mode, or none) and one line of advice.";

pub(super) async fn call(engine: &Engine) -> String {
    let b = engine.budget().await;
    status::budget_text(&b, engine.now() / 1000)
}
