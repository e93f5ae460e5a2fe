//! The `freepool-mcp` binary: parse the command line, send logs to stderr, run, exit.
//!
//! stdout belongs to JSON-RPC in server mode, so tracing writes to stderr
//! without colour, and nothing here prints to stdout.

use clap::Parser;
use freepool_mcp::cli::{self, Cli};
use freepool_mcp::config::env;
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = Cli::parse();
    let preloaded = cli::preload(&cli);
    let default = if cli.command.is_none() {
        "freepool_mcp=info,rmcp=warn"
    } else {
        "freepool_mcp=warn,rmcp=warn"
    };
    let filter = EnvFilter::try_from_env(env::LOG).unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(filter)
        .init();
    // A panic's message can carry text from a provider's answer (and so a key
    // it echoed): log where it happened, never what it said.
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(at, "internal error (a bug; its message is not logged)");
    }));

    // One thread is enough: the work is waiting on providers and on stdio, SQLite
    // runs on the blocking pool, and a fanout is one task polling its calls.
    // It also starts sooner than a multi-threaded runtime (measured: 1.31x
    // against 1.37x of a minimal rmcp server to the initialize answer).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = match runtime.block_on(cli::run(cli, preloaded)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    };
    // Do not wait for blocked stdin readers or idle HTTP connections.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code);
}
