//! freepool-mcp: a stdio MCP server that gives Claude Code a pool of free LLM tiers as a worker tier.
//!
//! A tool call flows through the modules in this order (see `docs/architecture.md`):
//!
//! - `mcp`: the rmcp server: the tools (one file each), the routing rubric in `instructions`.
//! - `dispatch`: the engine and the one failover loop over three seams (store, upstream, clock).
//! - [`gate`]: the credential scanner; a text carrying a secret never leaves.
//! - `router`: candidates, the capability gate and ranking over a usage snapshot (pure).
//! - `quota`: the pure core: windows, usage counts, the one quota rule, scopes, failure policy.
//! - `store`: the ledger seam and its SQLite backend, shared by every process.
//! - `upstream`: the OpenAI-compatible HTTP call and the classification of its answers.
//! - `decisions`: the routing-decision log, the dataset for a future classifier.
//!
//! Beside them: [`config`] (catalog, user file, keys), `budget` (Claude's own
//! usage windows to a routing mode), `status` (rendering what is left) and
//! [`cli`] (the commands). The public surface is what the binary, the
//! integration tests and the benchmarks need; everything else is crate-private.
#![warn(missing_docs)]
// Pedantic lints this crate keeps off, each on purpose:
#![allow(
    clippy::doc_markdown,
    reason = "prose names products (SQLite, OpenAI, Claude Code), not code"
)]
#![allow(
    clippy::must_use_candidate,
    reason = "crate-private functions whose callers all use the result"
)]
#![allow(
    clippy::items_after_statements,
    reason = "a lazily built static regex sits beside the one statement that uses it"
)]
#![allow(
    clippy::similar_names,
    reason = "provider, model and key are p, m and k throughout, by design"
)]
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_precision_loss,
    reason = "time is i64 milliseconds and counts are u64 (SQLite's integers); values from outside (providers, files) are checked and saturated where they enter, and ratios of counts need no 53-bit precision"
)]

mod budget;
mod checks;
pub mod cli;
pub mod config;
mod decisions;
mod dispatch;
pub mod gate;
mod mcp;
mod quota;
mod readonly;
mod router;
mod serve;
mod status;
mod store;
#[doc(hidden)]
pub mod testing;
mod upstream;
mod words;
mod workspace;
