//! The pool over HTTP, for every tool: `freepool-mcp serve --port 3733`.
//!
//! One axum server on the process's runtime and engine, so HTTP clients
//! and Claude sessions share one ledger (and so one set of caps):
//! - `POST /v1/chat/completions` and `GET /v1/models`: OpenAI's shapes
//!   (`openai.rs`);
//! - `/mcp`: the same MCP server as stdio, over MCP's streamable HTTP
//!   transport (rmcp's);
//! - a bearer token on every route (`token.rs`), compared in constant time;
//!   no CORS headers; a body size limit; loopback unless `--bind` says
//!   otherwise;
//! - SIGINT/SIGTERM: stop accepting, let requests in flight finish for a
//!   while, then drop them (which releases their leases).

mod openai;
pub(crate) mod token;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::dispatch::Engine;

/// The largest request body accepted: a prompt with files inlined by a
/// client fits; anything larger is a mistake or an attack.
pub(crate) const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// How long requests in flight may run on after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(30);

/// How to serve.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Address to bind (loopback unless the user says otherwise).
    pub(crate) bind: IpAddr,
    /// Port (0: any free one).
    pub(crate) port: u16,
    /// The bearer token every request must carry; `None` only for a
    /// loopback test instance (`--insecure-no-auth`).
    pub(crate) token: Option<String>,
}

#[derive(Clone)]
struct AppState {
    engine: Arc<Engine>,
    token: Option<Arc<str>>,
}

/// Serves until SIGINT or SIGTERM. Says where on stderr, once bound.
///
/// # Errors
///
/// The address cannot be bound.
pub(crate) async fn run(engine: Arc<Engine>, opts: Options) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(opts.bind, opts.port)).await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let app = app(engine, &opts, addr, stop.clone());
    eprintln!(
        "freepool-mcp: serving on http://{addr} (OpenAI-compatible: /v1, MCP: /mcp){}",
        if opts.token.is_none() {
            "; no token required (test instance)"
        } else {
            ""
        }
    );
    if !opts.bind.is_loopback() {
        tracing::warn!(
            %addr,
            "listening beyond this machine: anyone who can reach it and has the token spends your free quota"
        );
    }
    let shutdown = {
        let stop = stop.clone();
        async move {
            signal().await;
            tracing::info!("shutting down: finishing requests in flight");
            // MCP sessions hold streams open: end them so the drain can finish.
            stop.cancel();
        }
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown);
    let drained = async {
        stop.cancelled().await;
        tokio::time::sleep(DRAIN).await;
    };
    tokio::select! {
        r = server => r,
        () = drained => {
            tracing::warn!("requests still in flight after {}s were dropped (their leases are released)", DRAIN.as_secs());
            Ok(())
        }
    }
}

/// The routes, behind the token check, the body limit and the headers every answer gets.
fn app(engine: Arc<Engine>, opts: &Options, addr: SocketAddr, stop: CancellationToken) -> Router {
    let state = AppState {
        engine: engine.clone(),
        token: opts.token.as_deref().map(Arc::from),
    };
    let mut config = StreamableHttpServerConfig::default();
    config.cancellation_token = stop;
    config.max_request_body_bytes = MAX_BODY_BYTES;
    if !opts.bind.is_loopback() {
        // The Host check guards a loopback server against DNS rebinding; a
        // server bound wider on purpose is reached by other names.
        config = config.disable_allowed_hosts();
    } else {
        let port = addr.port();
        config = config.with_allowed_hosts([
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ]);
    }
    let mcp = StreamableHttpService::new(
        move || Ok(crate::mcp::Server::new(engine.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    Router::new()
        .route(
            "/v1/chat/completions",
            axum::routing::post(openai::chat_completions),
        )
        .route("/v1/models", axum::routing::get(openai::models))
        .nest_service("/mcp", mcp)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

async fn not_found() -> Response {
    openai::error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route: the OpenAI-compatible API is under /v1 (chat/completions, models), MCP at /mcp",
    )
}

/// Every route needs `Authorization: Bearer <token>`.
async fn authorize(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(want) = &state.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .unwrap_or("");
        if !token::matches(given.trim(), want) {
            let mut r = openai::error(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "missing or wrong bearer token: `freepool-mcp serve --print-token` prints it",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(req).await.into_response()
}

/// Resolves on SIGINT or (on Unix) SIGTERM.
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
