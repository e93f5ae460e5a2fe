//! A mock OpenAI-compatible upstream on 127.0.0.1, for tests, benchmarks and the SDK check.
//!
//! Each `MockUpstream` is one provider: it answers `POST /v1/chat/completions`
//! with a scripted queue of behaviours (then a default one), records what it
//! received (model, authorization fingerprint, prompt), and can enforce a
//! request limit per rolling window, answering 429 past it and counting
//! every such overshoot, which is what the ledger must prevent.

#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// What the mock does with one request.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// 200 with a completion; `{prompt}` in the text is replaced by the prompt's start.
    Ok { text: String, latency: Duration },
    /// 429 with headers and a body.
    RateLimited {
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Any status with a body.
    Status(u16, String),
    /// Accept the connection and never answer.
    Hang,
    /// 200 whose body arrives a few bytes at a time, `gap` apart.
    Trickle { gap: Duration },
    /// A 502 HTML error page.
    Html,
    /// 200 with half a JSON body.
    Truncated,
    /// 200 with no choices.
    EmptyChoices,
    /// 401 invalid key.
    Unauthorized,
}

impl Behavior {
    /// A plain answer with no delay.
    pub fn ok(text: &str) -> Behavior {
        Behavior::Ok {
            text: text.to_owned(),
            latency: Duration::ZERO,
        }
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub model: String,
    pub authorization: Option<String>,
    pub prompt: String,
    pub at: Instant,
}

struct MockState {
    name: String,
    script: VecDeque<Behavior>,
    default: Behavior,
    received: Vec<Received>,
    limit: Option<(u64, Duration)>,
    window: VecDeque<Instant>,
    overshoots: u64,
    listing: Option<Value>,
    listed: usize,
    streams: bool,
}

/// A running mock provider.
#[derive(Clone)]
pub struct MockUpstream {
    pub addr: SocketAddr,
    state: Arc<Mutex<MockState>>,
}

impl MockUpstream {
    /// Starts a mock named `name` on 127.0.0.1 (a free port) on the current runtime.
    pub async fn start(name: &str) -> MockUpstream {
        let state = Arc::new(Mutex::new(MockState {
            name: name.to_owned(),
            script: VecDeque::new(),
            default: Behavior::ok("answer from {name}: {prompt}"),
            received: Vec::new(),
            limit: None,
            window: VecDeque::new(),
            overshoots: 0,
            listing: None,
            listed: 0,
            streams: false,
        }));
        let app = Router::new()
            .route("/v1/chat/completions", post(handle))
            .route("/v1/models", axum::routing::get(list_models))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        MockUpstream { addr, state }
    }

    /// Starts a mock on its own thread and runtime, for synchronous tests.
    pub fn start_blocking(name: &str) -> MockUpstream {
        let (tx, rx) = std::sync::mpsc::channel();
        let name = name.to_owned();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                tx.send(MockUpstream::start(&name).await).unwrap();
                std::future::pending::<()>().await;
            });
        });
        rx.recv().unwrap()
    }

    /// The base URL to put in a catalog.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues behaviours for the next requests.
    pub fn script(&self, behaviors: impl IntoIterator<Item = Behavior>) -> &Self {
        self.state.lock().unwrap().script.extend(behaviors);
        self
    }

    /// Sets what happens once the script is used up.
    pub fn default(&self, b: Behavior) -> &Self {
        self.state.lock().unwrap().default = b;
        self
    }

    /// Enforces at most `max` requests per rolling `window`; past it, 429.
    pub fn enforce(&self, max: u64, window: Duration) -> &Self {
        self.state.lock().unwrap().limit = Some((max, window));
        self
    }

    /// Requests received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Answers `GET /v1/models` with this body (else 404).
    pub fn listing(&self, body: Value) -> &Self {
        self.state.lock().unwrap().listing = Some(body);
        self
    }

    /// Answers `stream: true` requests as OpenAI chunk streams (else as one JSON body).
    pub fn streaming(&self) -> &Self {
        self.state.lock().unwrap().streams = true;
        self
    }

    /// `GET /v1/models` requests received.
    pub fn listed(&self) -> usize {
        self.state.lock().unwrap().listed
    }

    /// Number of requests received.
    pub fn count(&self) -> usize {
        self.state.lock().unwrap().received.len()
    }

    /// 429s sent because the enforced limit was exceeded.
    pub fn overshoots(&self) -> u64 {
        self.state.lock().unwrap().overshoots
    }

    /// The most requests seen in any window of the enforced length.
    pub fn max_in_any_window(&self, window: Duration) -> usize {
        let times: Vec<Instant> = self.received().iter().map(|r| r.at).collect();
        let mut best = 0;
        for (i, t) in times.iter().enumerate() {
            let n = times[i..]
                .iter()
                .take_while(|u| u.duration_since(*t) < window)
                .count();
            best = best.max(n);
        }
        best
    }
}

fn completion(text: &str, model: &str, prompt_tokens: u64) -> Value {
    let completion_tokens = (text.len() as u64).div_ceil(4);
    json!({
        "id": "mock-1",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
    })
}

/// An OpenAI chunk stream of `text`, a few characters per event, 5 ms apart.
fn chunk_stream(text: &str, model: &str, prompt_tokens: u64) -> Response {
    let chars: Vec<char> = text.chars().collect();
    let mut events: Vec<String> = chars
        .chunks(4)
        .map(|c| {
            let piece: String = c.iter().collect();
            json!({"id": "mock-s", "object": "chat.completion.chunk", "model": model,
                   "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]})
            .to_string()
        })
        .collect();
    events.push(
        json!({"id": "mock-s", "object": "chat.completion.chunk", "model": model,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        .to_string(),
    );
    let completion_tokens = (text.len() as u64).div_ceil(4);
    events.push(
        json!({"id": "mock-s", "object": "chat.completion.chunk", "model": model, "choices": [],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens}})
        .to_string(),
    );
    events.push("[DONE]".into());
    let stream = futures::stream::unfold(events.into_iter(), |mut it| async move {
        let e = it.next()?;
        tokio::time::sleep(Duration::from_millis(5)).await;
        Some((Ok::<_, std::io::Error>(format!("data: {e}\n\n")), it))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    resp
}

async fn list_models(State(state): State<Arc<Mutex<MockState>>>) -> Response {
    let mut s = state.lock().unwrap();
    s.listed += 1;
    match &s.listing {
        Some(v) => axum::Json(v.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, "404 page not found").into_response(),
    }
}

async fn handle(
    State(state): State<Arc<Mutex<MockState>>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let req: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let wants_stream = req["stream"] == true;
    let model = req["model"].as_str().unwrap_or("").to_owned();
    let prompt = req["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_owned();
    let now = Instant::now();
    let (behavior, name, over) = {
        let mut s = state.lock().unwrap();
        s.received.push(Received {
            model: model.clone(),
            authorization: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            prompt: prompt.clone(),
            at: now,
        });
        let mut over = false;
        if let Some((max, window)) = s.limit {
            while s
                .window
                .front()
                .is_some_and(|t| now.duration_since(*t) >= window)
            {
                s.window.pop_front();
            }
            if s.window.len() as u64 >= max {
                over = true;
                s.overshoots += 1;
            } else {
                s.window.push_back(now);
            }
        }
        let b = s.script.pop_front().unwrap_or_else(|| s.default.clone());
        (b, s.name.clone(), over)
    };
    if over {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "30")],
            r#"{"error":{"message":"rate limit exceeded (mock enforcement)"}}"#,
        )
            .into_response();
    }
    let prompt_tokens = (prompt.len() as u64).div_ceil(4);
    match behavior {
        Behavior::Ok { text, latency } => {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            let start: String = prompt.chars().take(60).collect();
            let text = text.replace("{name}", &name).replace("{prompt}", &start);
            if wants_stream && state.lock().unwrap().streams {
                return chunk_stream(&text, &model, prompt_tokens);
            }
            (StatusCode::OK, axum::Json(completion(&text, &model, prompt_tokens))).into_response()
        }
        Behavior::RateLimited { headers: hs, body } => {
            let mut resp = (StatusCode::TOO_MANY_REQUESTS, body).into_response();
            for (k, v) in hs {
                resp.headers_mut().insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(&v).unwrap());
            }
            resp
        }
        Behavior::Status(code, body) => (StatusCode::from_u16(code).unwrap(), body).into_response(),
        Behavior::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Behavior::Trickle { gap } => {
            let full = completion("trickled", &model, prompt_tokens).to_string().into_bytes();
            let stream = futures::stream::unfold(0usize, move |i| {
                let full = full.clone();
                async move {
                    if i >= full.len() {
                        return None;
                    }
                    tokio::time::sleep(gap).await;
                    let end = (i + 4).min(full.len());
                    Some((Ok::<_, std::io::Error>(full[i..end].to_vec()), end))
                }
            });
            Response::builder().status(200).header("content-type", "application/json").body(Body::from_stream(stream)).unwrap()
        }
        Behavior::Html => (
            StatusCode::BAD_GATEWAY,
            [("content-type", "text/html")],
            "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>",
        )
            .into_response(),
        Behavior::Truncated => (StatusCode::OK, [("content-type", "application/json")], r#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"hal"#).into_response(),
        Behavior::EmptyChoices => (StatusCode::OK, axum::Json(json!({"id": "x", "choices": []}))).into_response(),
        Behavior::Unauthorized => (StatusCode::UNAUTHORIZED, r#"{"error":{"message":"Invalid API key provided"}}"#).into_response(),
    }
}
