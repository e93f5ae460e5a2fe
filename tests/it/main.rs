//! Integration tests: one binary (`autotests = false`), black-box over the built program.
//!
//! - `architecture`: the house rules of docs/architecture.md, read from the sources.
//! - `mcp`: the server over stdio: handshake, schemas, delegate, failover, errors, purity.
//! - `cli`: the commands beside the server.
//! - `ledger`: several processes sharing one state dir; crashes mid-request.
//! - `faults`: upstreams that hang, trickle, or answer garbage; broken state and config.
//! - `props`: property tests for the gate and config parsing.

mod architecture;
mod cli;
mod faults;
mod ledger;
mod mcp;
mod props;
mod support;
