//! freepool-mcp: a stdio MCP server that gives Claude Code a pool of free LLM tiers as a worker tier.
//!
//! A tool call flows through the modules in this order (see `docs/architecture.md`):
//!
//! - [`mcp`]: the rmcp server: tools, schemas, the routing rubric in `instructions`.
//! - [`dispatch`]: the one failover loop; the only module that combines policy and IO.
//! - [`gate`]: the credential scanner; a prompt carrying a secret never leaves.
//! - [`router`]: candidates, the capability gate and ranking over a usage snapshot (pure).
//! - [`ledger`]: the SQLite usage ledger shared by every process: leases, events, cooldowns.
//! - [`upstream`]: the OpenAI-compatible HTTP call and the classification of its failures.
//! - [`decisions`]: the routing-decision log, the dataset for a future classifier.
//!
//! Beside them: [`config`] (catalog, user file, keys), [`budget`] (Claude's own
//! usage windows to a routing mode), [`status`] (rendering what is left) and
//! [`cli`] (the commands).
#![warn(missing_docs)]

pub mod budget;
pub mod cli;
pub mod config;
pub mod decisions;
pub mod dispatch;
pub mod gate;
pub mod ledger;
pub mod mcp;
pub mod router;
pub mod status;
pub mod upstream;
