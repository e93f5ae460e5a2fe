//! Integration tests: one binary (`autotests = false`), black-box over the built program.
//!
//! - `architecture`: the house rules of docs/architecture.md, read from the sources.
//! - `mcp`: the server over stdio: handshake, schemas, delegate, failover, errors, purity.
//! - `checks`: answers checked before Claude sees them.
//! - `answers`: answers kept in their place: untrusted blocks, redaction, flags, fanout ids.
//! - `catalog`: models gone upstream, confirmed and left out; the probe against `/models`.
//! - `cli`: the commands beside the server.
//! - `ledger`: several processes sharing one state dir; crashes mid-request.
//! - `files`: files in (paths, globs, ranges) and out (write_to), and every refusal.
//! - `http`: `serve --port`: OpenAI-compatible and MCP over HTTP, the token, one shared ledger.
//! - `faults`: upstreams that hang, trickle, or answer garbage; broken state and config.
//! - `props`: property tests for the gate and config parsing.
//! - `shared_ledger`: the ledger on PostgreSQL across hosts, outages and the local fallback.
//! - `trouble`: hangs, black holes, config typos, empty variables, short failures, exit codes.

#![allow(
    clippy::cast_possible_wrap,
    clippy::cast_possible_truncation,
    reason = "pids go to libc::kill as pid_t; test figures are small"
)]
#![allow(
    clippy::too_many_lines,
    clippy::items_after_statements,
    reason = "a table test keeps its cases and their types where they are read"
)]

mod answers;
mod architecture;
mod catalog;
mod checks;
mod cli;
mod faults;
mod files;
mod gate;
mod http;
mod ledger;
mod mcp;
mod props;
mod shared_ledger;
mod support;
mod trouble;
