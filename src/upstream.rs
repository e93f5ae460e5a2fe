//! The HTTP edge: one OpenAI-compatible `/chat/completions` call, and what its failure means.
//!
//! `call` sends one request with four time budgets (connect, first byte,
//! stall between body chunks, whole attempt) and a bounded body size. Every
//! way it can go wrong becomes a `quota::Failure`, whose policy (what to skip,
//! how long to bench) lives with the quota core, so nothing past this module
//! looks at HTTP again.
//!
//! Invariant: only this module knows reqwest. Keys reach the wire here and
//! nowhere else; error text kept from a response is cut short and scrubbed of
//! anything key-shaped before it leaves. Everything here reads provider data,
//! so it may not panic: no unwrap, no indexing, every number clamped.
#![deny(clippy::panic, clippy::unwrap_used, clippy::indexing_slicing)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use regex::Regex;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::config::ApiKey;
use crate::quota::Failure;

/// The largest response body read; beyond it the answer is refused.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Longest wait between two body chunks before the answer counts as stalled.
const STALL: Duration = Duration::from_secs(45);

/// A chat completion request, as this program sends it.
#[derive(Debug, Clone)]
pub(crate) struct ChatRequest {
    /// Optional system prompt.
    pub(crate) system: Option<String>,
    /// Earlier turns of a conversation, oldest first: (from the assistant, text).
    pub(crate) history: Vec<(bool, String)>,
    /// The user prompt.
    pub(crate) prompt: String,
    /// Completion token cap.
    pub(crate) max_tokens: Option<u32>,
    /// Sampling temperature.
    pub(crate) temperature: Option<f32>,
    /// Where to pass the answer on as it arrives, when the caller streams.
    pub(crate) stream: Option<StreamSink>,
}

/// The receiving end of a streamed answer: whole lines of text, as the
/// provider sends them, the key scrubbed. `started` tells the failover loop
/// that part of an answer has gone out, so another model must not follow it.
#[derive(Debug, Clone)]
pub(crate) struct StreamSink {
    tx: tokio::sync::mpsc::UnboundedSender<String>,
    started: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StreamSink {
    /// A sink and the receiver its lines arrive on.
    pub(crate) fn new() -> (StreamSink, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (
            StreamSink {
                tx,
                started: std::sync::Arc::default(),
            },
            rx,
        )
    }

    /// Whether any text has been passed on.
    pub(crate) fn started(&self) -> bool {
        self.started.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn send(&self, text: String) {
        if !text.is_empty() {
            self.started
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = self.tx.send(text);
        }
    }
}

impl ChatRequest {
    /// The size the token estimate works from (prompt and system prompt).
    pub(crate) fn weight(&self) -> usize {
        crate::quota::token_weight(&self.prompt)
            + self.system.as_deref().map_or(0, crate::quota::token_weight)
            + self
                .history
                .iter()
                .map(|(_, t)| crate::quota::token_weight(t))
                .sum::<usize>()
    }
}

/// Where and how to send it.
#[derive(Debug, Clone)]
pub(crate) struct Target<'a> {
    /// Base URL, without `/chat/completions`.
    pub(crate) base_url: &'a str,
    /// Model id as the provider spells it.
    pub(crate) model: &'a str,
    /// The key, or none for anonymous providers.
    pub(crate) key: Option<&'a ApiKey>,
    /// Extra headers.
    pub(crate) headers: &'a [(String, String)],
    /// Time allowed to open the connection (TCP and TLS).
    pub(crate) connect_timeout: Duration,
    /// Time allowed until response headers.
    pub(crate) first_byte_timeout: Duration,
    /// Time allowed for the whole attempt.
    pub(crate) attempt_timeout: Duration,
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: &'a str,
}

// The answer's fields are values, read leniently by `parse_completion`: a
// provider that writes a number as a string or content as a list of parts
// still gave an answer.
#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<serde_json::Value>,
    #[serde(default)]
    model: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    message: Option<WireMessageOut>,
    #[serde(default)]
    finish_reason: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WireMessageOut {
    #[serde(default)]
    content: serde_json::Value,
    // Some providers (Ollama, DeepSeek-style models) put the answer's thinking here.
    #[serde(default)]
    reasoning: serde_json::Value,
    #[serde(default)]
    reasoning_content: serde_json::Value,
}

/// Token counts reported by the provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Usage {
    /// Prompt tokens.
    pub(crate) prompt: u64,
    /// Completion tokens.
    pub(crate) completion: u64,
}

/// A successful completion.
#[derive(Debug, Clone)]
pub(crate) struct Completion {
    /// The answer text.
    pub(crate) text: String,
    /// Usage, when the provider reported it.
    pub(crate) usage: Option<Usage>,
    /// The model the provider says it served (may differ from the one asked).
    pub(crate) served_model: Option<String>,
    /// Why generation stopped (`stop`, `length`, ...).
    pub(crate) finish_reason: Option<String>,
    /// Rate-limit state read from the headers.
    pub(crate) rate: RateHeaders,
}

/// What `x-ratelimit-*` headers said.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RateHeaders {
    /// Requests left in the provider's window, and when it resets.
    pub(crate) requests: Option<(u64, Option<Duration>)>,
    /// Tokens left in the provider's window, and when it resets.
    pub(crate) tokens: Option<(u64, Option<Duration>)>,
}

impl RateHeaders {
    /// If a window is exhausted (remaining 0) with a stated reset, the wait.
    pub(crate) fn exhausted_for(&self) -> Option<Duration> {
        [self.requests, self.tokens]
            .into_iter()
            .flatten()
            .filter(|(left, _)| *left == 0)
            .filter_map(|(_, reset)| reset)
            .max()
    }
}

/// A failed attempt: the class and a short, scrubbed detail.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AttemptError {
    /// The classification.
    pub(crate) failure: Failure,
    /// At most ~160 characters of provider text, keys scrubbed.
    pub(crate) detail: String,
    /// Rate-limit headers seen on the failed answer.
    pub(crate) rate: RateHeaders,
}

/// The process-wide HTTP clients (rustls with ring, no OpenSSL), one per
/// connect budget in use (reqwest sets that budget per client): in practice
/// one or two, sharing nothing but their settings.
pub(crate) fn client(connect_timeout: Duration) -> reqwest::Client {
    static CLIENTS: OnceLock<std::sync::Mutex<Vec<(Duration, reqwest::Client)>>> = OnceLock::new();
    let clients = CLIENTS.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        std::sync::Mutex::new(Vec::new())
    });
    let mut clients = clients
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, c)) = clients.iter().find(|(d, _)| *d == connect_timeout) {
        return c.clone();
    }
    let c = reqwest::Client::builder()
        .user_agent(concat!("freepool-mcp/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new());
    clients.push((connect_timeout, c.clone()));
    c
}

/// Sends one chat completion and classifies the outcome.
pub(crate) async fn call(
    target: &Target<'_>,
    req: &ChatRequest,
) -> Result<Completion, AttemptError> {
    let started = Instant::now();
    let mut messages = Vec::with_capacity(2 + req.history.len());
    if let Some(system) = &req.system {
        messages.push(WireMessage {
            role: "system",
            content: system,
        });
    }
    for (assistant, text) in &req.history {
        messages.push(WireMessage {
            role: if *assistant { "assistant" } else { "user" },
            content: text,
        });
    }
    messages.push(WireMessage {
        role: "user",
        content: &req.prompt,
    });
    let body = WireRequest {
        model: target.model,
        messages,
        max_tokens: req.max_tokens,
        temperature: req.temperature,
        stream: req.stream.is_some(),
        stream_options: req
            .stream
            .as_ref()
            .map(|_| serde_json::json!({"include_usage": true})),
    };
    let url = format!("{}/chat/completions", target.base_url.trim_end_matches('/'));
    let mut builder = client(target.connect_timeout).post(&url).json(&body);
    if let Some(key) = target.key {
        builder = builder.bearer_auth(key.expose());
    }
    for (name, value) in target.headers {
        builder = builder.header(name, value);
    }
    let fail = |failure: Failure, detail: &str| AttemptError {
        failure,
        detail: detail.to_owned(),
        rate: RateHeaders::default(),
    };

    let response = match tokio::time::timeout(target.first_byte_timeout, builder.send()).await {
        // The connect phase has its own, shorter budget (the client's
        // `connect_timeout`), so running out here means the request was sent.
        Err(_) => return Err(fail(Failure::FirstByteTimeout, "")),
        // Connect first: reqwest marks a connect timeout as both.
        Ok(Err(e)) if e.is_connect() => {
            let detail = if e.is_timeout() {
                "connect timed out"
            } else {
                "connection refused or unreachable"
            };
            return Err(fail(Failure::Connect, detail));
        }
        Ok(Err(e)) if e.is_timeout() => return Err(fail(Failure::FirstByteTimeout, "")),
        Ok(Err(_)) => return Err(fail(Failure::Broken, "before the answer began")),
        Ok(Ok(r)) => r,
    };
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let remaining = target.attempt_timeout.saturating_sub(started.elapsed());
    if let Some(sink) = &req.stream
        && (200..300).contains(&status)
        && header_str(&headers, "content-type").is_some_and(|t| t.contains("text/event-stream"))
    {
        return read_stream(response, remaining, sink, target.key)
            .await
            .map_err(|(failure, detail)| AttemptError {
                failure,
                detail,
                rate: rate_headers(&headers),
            })
            .map(|mut c| {
                c.rate = rate_headers(&headers);
                c
            });
    }
    let bytes = match read_body(response, remaining).await {
        Ok(b) => b,
        Err(f) => {
            return Err(AttemptError {
                failure: f,
                detail: String::new(),
                rate: rate_headers(&headers),
            });
        }
    };
    interpret(status, &headers, &bytes, target.key)
}

/// What a whole answer means: a completion, or a classified failure with a
/// short, scrubbed detail. Pure and total: any status, headers and bytes.
pub(crate) fn interpret(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    key: Option<&ApiKey>,
) -> Result<Completion, AttemptError> {
    let rate = rate_headers(headers);
    let text = String::from_utf8_lossy(body);
    if !(200..300).contains(&status) {
        return Err(AttemptError {
            failure: classify_status(status, headers, &text),
            detail: excerpt(&text, key),
            rate,
        });
    }
    let mut done = parse_completion(&text, rate.clone()).map_err(|failure| AttemptError {
        failure,
        detail: excerpt(&text, key),
        rate,
    })?;
    // A provider that echoes the request's headers into its answer would hand
    // the key to the caller: the key never leaves this module.
    if let Some(key) = key.map(ApiKey::expose).filter(|k| !k.is_empty())
        && done.text.contains(key)
    {
        done.text = done.text.replace(key, "[key]");
    }
    Ok(done)
}

/// One model as a provider's listing gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    /// The id to send as `model`.
    pub(crate) id: String,
    /// Free to use: `Some(true)` for a zero price or a `:free` id,
    /// `Some(false)` for a price above zero, `None` when the listing is silent.
    pub(crate) free: Option<bool>,
    /// Its context window, when listed.
    pub(crate) context: Option<u32>,
}

/// Reads a provider's model listing (`GET models_url`): its ids, whether
/// each is free, and its context when the listing says. An error is a
/// short, scrubbed sentence.
pub(crate) async fn list_models(
    url: &str,
    key: Option<&ApiKey>,
    headers: &[(String, String)],
    connect_timeout: Duration,
    budget: Duration,
) -> Result<Vec<Listed>, String> {
    let mut builder = client(connect_timeout).get(url);
    if let Some(key) = key {
        builder = builder.bearer_auth(key.expose());
    }
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    let response = match tokio::time::timeout(budget, builder.send()).await {
        Err(_) => return Err("no answer in time".into()),
        Ok(Err(e)) if e.is_connect() => return Err("could not connect".into()),
        Ok(Err(_)) => return Err("the connection broke".into()),
        Ok(Ok(r)) => r,
    };
    let status = response.status().as_u16();
    let bytes = read_body(response, budget).await.map_err(|f| f.label())?;
    let text = String::from_utf8_lossy(&bytes);
    if !(200..300).contains(&status) {
        return Err(format!("{status}: {}", excerpt(&text, key)));
    }
    parse_listing(&text).ok_or_else(|| format!("not a model list: {}", excerpt(&text, key)))
}

/// A model listing: OpenAI's `{"data": [{"id": ...}]}`, a bare array, or
/// `{"models": [...]}` (ids under `id`, `name` or `model`). OpenRouter's
/// `pricing` and `context_length` are read when present.
pub(crate) fn parse_listing(text: &str) -> Option<Vec<Listed>> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let items = v
        .get("data")
        .or_else(|| v.get("models"))
        .unwrap_or(&v)
        .as_array()?;
    let price = |p: &serde_json::Value, field: &str| -> Option<f64> {
        let f = p.get(field)?;
        f.as_f64().or_else(|| f.as_str()?.trim().parse().ok())
    };
    let mut out = Vec::with_capacity(items.len().min(10_000));
    for item in items.iter().take(10_000) {
        let id = ["id", "name", "model"]
            .iter()
            .find_map(|k| item.get(*k).and_then(|v| v.as_str()))
            .or_else(|| item.as_str());
        let Some(id) = id
            .map(str::trim)
            .filter(|i| !i.is_empty() && i.len() <= 200)
        else {
            continue;
        };
        let free = if id.ends_with(":free") {
            Some(true)
        } else {
            item.get("pricing").and_then(|p| {
                let (a, b) = (price(p, "prompt")?, price(p, "completion")?);
                Some(a <= 0.0 && b <= 0.0)
            })
        };
        let context = ["context_length", "context_window", "max_context_length"]
            .iter()
            .find_map(|k| item.get(*k).and_then(serde_json::Value::as_u64))
            .map(|c| u32::try_from(c).unwrap_or(u32::MAX));
        out.push(Listed {
            id: id.to_owned(),
            free,
            context,
        });
    }
    Some(out)
}

/// Reads a streamed answer (server-sent events in OpenAI's chunk format),
/// passing each whole line of text on to `sink` as it completes, the key
/// scrubbed, and returns the whole completion at the end.
async fn read_stream(
    mut response: reqwest::Response,
    budget: Duration,
    sink: &StreamSink,
    key: Option<&ApiKey>,
) -> Result<Completion, (Failure, String)> {
    let deadline = tokio::time::Instant::now() + budget;
    let mut raw: Vec<u8> = Vec::new();
    let mut events = SseText::default();
    let mut total = 0usize;
    loop {
        let wait = STALL.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        let chunk = match tokio::time::timeout(wait, response.chunk()).await {
            Err(_) => return Err((Failure::Stalled, String::new())),
            Ok(Err(_)) => return Err((Failure::Broken, "the stream broke off".into())),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(c))) => c,
        };
        total = total.saturating_add(chunk.len());
        if total > MAX_BODY_BYTES {
            return Err((Failure::BadBody, "the stream is too long".into()));
        }
        raw.extend_from_slice(&chunk);
        // Whole SSE lines only; a line cut between chunks waits for its end.
        while let Some(end) = raw.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = raw.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            if let Err(detail) = events.line(line.trim_end_matches(['\r', '\n'])) {
                return Err((Failure::BadBody, excerpt(&detail, key)));
            }
            for out in events.take_lines() {
                sink.send(scrub(out, key));
            }
        }
        if events.done {
            break;
        }
    }
    sink.send(scrub(std::mem::take(&mut events.pending), key));
    let text = scrub(events.text, key);
    if text.trim().is_empty() || is_degenerate(&text) {
        return Err((Failure::Empty, String::new()));
    }
    Ok(Completion {
        text,
        usage: events.usage,
        served_model: events.model,
        finish_reason: events.finish,
        rate: RateHeaders::default(),
    })
}

fn scrub(text: String, key: Option<&ApiKey>) -> String {
    match key.map(ApiKey::expose).filter(|k| !k.is_empty()) {
        Some(k) if text.contains(k) => text.replace(k, "[key]"),
        _ => text,
    }
}

/// The text of an OpenAI chunk stream, line by line: what has come, the
/// whole lines not yet passed on, and what the last chunks said.
#[derive(Default)]
struct SseText {
    text: String,
    pending: String,
    ready: Vec<String>,
    usage: Option<Usage>,
    model: Option<String>,
    finish: Option<String>,
    done: bool,
}

impl SseText {
    /// One line of the event stream; `Err` with the provider's words for an error event.
    fn line(&mut self, line: &str) -> Result<(), String> {
        let Some(data) = line.strip_prefix("data:").map(str::trim) else {
            return Ok(());
        };
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
            return Ok(());
        };
        if v.get("error").is_some() {
            return Err(data.to_owned());
        }
        if let Some(m) = v.get("model").and_then(|m| m.as_str()) {
            self.model = Some(m.to_owned());
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            let n = |k: &str| u.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
            self.usage = Some(Usage {
                prompt: n("prompt_tokens"),
                completion: n("completion_tokens"),
            });
        }
        let choice = v.get("choices").and_then(|c| c.get(0));
        if let Some(f) = choice
            .and_then(|c| c.get("finish_reason"))
            .and_then(|f| f.as_str())
        {
            self.finish = Some(f.to_owned());
        }
        let delta = choice
            .and_then(|c| c.get("delta"))
            .and_then(|d| d.get("content"))
            .map(content_text)
            .unwrap_or_default();
        if !delta.is_empty() {
            self.text.push_str(&delta);
            self.pending.push_str(&delta);
            if let Some(end) = self.pending.rfind('\n') {
                let rest = self.pending.split_off(end + 1);
                self.ready.push(std::mem::replace(&mut self.pending, rest));
            }
        }
        Ok(())
    }

    fn take_lines(&mut self) -> Vec<String> {
        std::mem::take(&mut self.ready)
    }
}

async fn read_body(mut response: reqwest::Response, budget: Duration) -> Result<Vec<u8>, Failure> {
    let deadline = tokio::time::Instant::now() + budget;
    let mut body = Vec::new();
    loop {
        let wait = STALL.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, response.chunk()).await {
            Err(_) => return Err(Failure::Stalled),
            // The request went out and part of an answer came back: it counts upstream.
            Ok(Err(_)) => return Err(Failure::Broken),
            Ok(Ok(None)) => return Ok(body),
            Ok(Ok(Some(chunk))) => {
                if body.len().saturating_add(chunk.len()) > MAX_BODY_BYTES {
                    return Err(Failure::BadBody);
                }
                body.extend_from_slice(&chunk);
            }
        }
    }
}

/// Turns a 2xx body into a completion, or says why it is not one.
///
/// Read leniently: fields a provider fills oddly (content as a list of parts,
/// usage as floats or strings) are taken for what they say, not rejected.
fn parse_completion(text: &str, rate: RateHeaders) -> Result<Completion, Failure> {
    let wire: WireResponse = serde_json::from_str(text).map_err(|_| Failure::BadBody)?;
    if wire.error.is_some() && wire.choices.is_empty() {
        return Err(Failure::BadBody);
    }
    let choice = wire.choices.into_iter().next().ok_or(Failure::Empty)?;
    let message = choice.message.ok_or(Failure::Empty)?;
    let text = [
        &message.content,
        &message.reasoning,
        &message.reasoning_content,
    ]
    .into_iter()
    .map(content_text)
    .find(|c| !c.trim().is_empty())
    .ok_or(Failure::Empty)?;
    if is_degenerate(&text) {
        return Err(Failure::Empty);
    }
    let count = |v: Option<&serde_json::Value>| -> u64 {
        match v {
            Some(serde_json::Value::Number(n)) => n
                .as_u64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.is_finite() && *f >= 0.0)
                        .map(|f| f as u64)
                })
                .unwrap_or(0),
            Some(serde_json::Value::String(s)) => s.trim().parse().unwrap_or(0),
            _ => 0,
        }
    };
    let usage = wire
        .usage
        .as_ref()
        .filter(|u| u.is_object())
        .map(|u| Usage {
            prompt: count(u.get("prompt_tokens")),
            completion: count(u.get("completion_tokens")),
        });
    Ok(Completion {
        text,
        usage,
        served_model: wire.model.and_then(|m| m.as_str().map(str::to_owned)),
        finish_reason: choice
            .finish_reason
            .and_then(|f| f.as_str().map(str::to_owned)),
        rate,
    })
}

/// A message's text: a string, or the text parts of a list of parts.
fn content_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(parts) => parts
            .iter()
            .filter_map(|p| {
                p.as_str()
                    .or_else(|| p.get("text").and_then(|t| t.as_str()))
            })
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// One short string repeated over and over is a broken generation, not an answer:
/// the text (its first 4 KB) repeats with some period of at most 64 bytes.
fn is_degenerate(text: &str) -> bool {
    let b = text.trim().as_bytes();
    let b = b.get(..b.len().min(4096)).unwrap_or(b);
    if b.len() < 400 {
        return false;
    }
    (1..=64).any(|p| {
        let same = b
            .iter()
            .zip(b.iter().skip(p))
            .filter(|(x, y)| x == y)
            .count();
        same * 100 >= (b.len() - p) * 97
    })
}

/// Classifies a non-2xx answer.
pub(crate) fn classify_status(status: u16, headers: &HeaderMap, body: &str) -> Failure {
    let lower = body.to_lowercase();
    let context_msg = [
        "context length",
        "context_length",
        "maximum context",
        "too many tokens",
        "reduce the length",
        "prompt is too long",
    ]
    .iter()
    .any(|p| lower.contains(p));
    match status {
        429 => Failure::RateLimited {
            retry_after: retry_after(headers, body)
                .or_else(|| rate_headers(headers).exhausted_for()),
            daily: [
                "per day",
                "daily",
                "perday",
                "rpd",
                "tpd",
                "free allocation",
                "quota exceeded for quota metric",
            ]
            .iter()
            .any(|p| lower.contains(p)),
            learned: learned_limit(body),
        },
        401 => Failure::Unauthorized,
        400 if lower.contains("api_key_invalid") || lower.contains("api key not valid") => {
            Failure::Unauthorized
        }
        402 if says_no_credit(&lower) => Failure::Gone { definite: true },
        402 => Failure::PaymentRequired,
        403 if says_not_in_tier(&lower) => Failure::Gone { definite: true },
        403 => Failure::Forbidden,
        400 if lower.contains("failed_precondition") => Failure::Forbidden,
        410 => Failure::Gone { definite: true },
        400..=499 if says_retired(&lower) => Failure::Gone { definite: true },
        413 => Failure::ContextTooLong,
        400..=499 if context_msg => Failure::ContextTooLong,
        400..=499 if says_no_such_model(&lower, status == 404) => Failure::Gone { definite: false },
        404 => Failure::NotFound,
        400..=499 => Failure::Rejected(status),
        _ => Failure::Server(status),
    }
}

/// "decommissioned", "end of life", "the model ... is no longer
/// supported": the model is retired, and saying so is definite. The loose
/// phrases count only after the word "model" in the same sentence, so a
/// parameter that is "no longer supported" does not retire a model.
fn says_retired(lower: &str) -> bool {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"model[^.\n]{0,120}(no longer (supported|available|served|offered)|has been (deprecated|retired|removed)|was (deprecated|retired|removed))")
            .expect("static regex")
    });
    [
        "decommissioned",
        "end of life",
        "end-of-life",
        "model_deprecated",
        "discontinued",
    ]
    .iter()
    .any(|p| lower.contains(p))
        || re.is_match(lower)
}

/// A 403 that says the model is outside the key's plan, not that the key
/// is refused ("not in your subscription tier", Mistral).
fn says_not_in_tier(lower: &str) -> bool {
    [
        "subscription tier",
        "not in your subscription",
        "not available on your plan",
        "upgrade your plan",
    ]
    .iter()
    .any(|p| lower.contains(p))
}

/// A 402 that says the (free or trial) credit is spent.
fn says_no_credit(lower: &str) -> bool {
    lower.contains("credit")
}

/// A 4xx that names the model as unknown: Groq and OpenAI's
/// `model_not_found`, OpenRouter's "No endpoints found", Ollama's `model
/// "x" not found`, Google's "is not found for API version", NVIDIA's "Not
/// found for account", Mistral's "Invalid model", Cloudflare's "No such
/// model". A 404 may say it more loosely ("the model `x` does not exist").
fn says_no_such_model(lower: &str, is_404: bool) -> bool {
    let named = [
        "model_not_found",
        "model not found",
        "no endpoints found",
        "no such model",
        "invalid model",
        "unknown model",
        "not found for account",
        "is not found for api version",
        "does not exist or you do not have access",
    ]
    .iter()
    .any(|p| lower.contains(p));
    named
        || (is_404
            && lower.contains("model")
            && (lower.contains("does not exist") || lower.contains("not found")))
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The longest wait a provider may state: a month and a day. A longer one (or
/// `inf`, or a number past any clock) is a broken header, not a real wait.
pub(crate) const MAX_STATED_WAIT: Duration = Duration::from_secs(31 * 86_400);

/// Seconds as a duration, for numbers read from a provider: negative and NaN
/// are no wait at all, and anything longer than `MAX_STATED_WAIT` is cut to it.
pub(crate) fn stated_secs(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(secs.min(MAX_STATED_WAIT.as_secs_f64())).unwrap_or(MAX_STATED_WAIT)
}

/// The wait a 429 states: `retry-after` (seconds or HTTP date), else a body hint.
pub(crate) fn retry_after(headers: &HeaderMap, body: &str) -> Option<Duration> {
    header_str(headers, "retry-after")
        .and_then(parse_reset)
        .or_else(|| body_retry_hint(body))
}

/// `"retryDelay": "17s"` or "try again in 7.66s" in an error body.
pub(crate) fn body_retry_hint(body: &str) -> Option<Duration> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r#"(?i)(?:"retryDelay"\s*:\s*"|(?:try again|retry) (?:in|after) )(\d+(?:\.\d+)?)\s*(ms|s|sec|seconds|m|min|minutes)?\b"#)
            .expect("static regex")
    });
    let caps = re.captures(body)?;
    let n: f64 = caps.get(1)?.as_str().parse().ok()?;
    let secs = match caps.get(2).map(|m| m.as_str().to_lowercase()).as_deref() {
        Some("ms") => n / 1000.0,
        Some("m" | "min" | "minutes") => n * 60.0,
        _ => n,
    };
    Some(stated_secs(secs))
}

/// A limit stated unambiguously, e.g. "tokens per minute (TPM): Limit 30000".
fn learned_limit(body: &str) -> Option<(&'static str, u64)> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"(?i)(tokens|requests) per (minute|day) \((TPM|RPM|TPD|RPD)\):\s*Limit\s*(\d+)")
            .expect("static regex")
    });
    let caps = re.captures(body)?;
    let key = match caps.get(3)?.as_str().to_ascii_uppercase().as_str() {
        "TPM" => "tpm",
        "RPM" => "rpm",
        "TPD" => "tpd",
        _ => "rpd",
    };
    let value: u64 = caps.get(4)?.as_str().parse().ok()?;
    // A limit of zero would bench the model for good: not a limit we learn.
    (value > 0).then_some((key, value))
}

/// Reads `x-ratelimit-remaining-*` and `x-ratelimit-reset-*` (with Cerebras' `-day`/`-minute` variants).
pub(crate) fn rate_headers(headers: &HeaderMap) -> RateHeaders {
    let pair = |what: &str| -> Option<(u64, Option<Duration>)> {
        let mut best: Option<(u64, Option<Duration>)> = None;
        for suffix in ["", "-minute", "-day"] {
            let remaining = header_str(headers, &format!("x-ratelimit-remaining-{what}{suffix}"))
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite())
                .map(|v| v.max(0.0) as u64);
            let Some(remaining) = remaining else { continue };
            let reset = header_str(headers, &format!("x-ratelimit-reset-{what}{suffix}"))
                .and_then(parse_reset);
            // Keep the tightest window: an exhausted one wins.
            let better = match best {
                None => true,
                Some((r, _)) => remaining < r || (remaining == 0 && reset.is_some()),
            };
            if better {
                best = Some((remaining, reset));
            }
        }
        best
    };
    RateHeaders {
        requests: pair("requests"),
        tokens: pair("tokens"),
    }
}

/// Parses a reset value: seconds (`12`, `7.66`), a duration (`2m59.56s`, `120ms`,
/// `1h2m`), an epoch timestamp in seconds, or an HTTP date. Any value is
/// clamped to `MAX_STATED_WAIT`; what does not parse is `None`.
pub(crate) fn parse_reset(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(n) = v.parse::<f64>() {
        if n.is_nan() {
            return None;
        }
        if n > 1.0e9 && n.is_finite() {
            let now = Utc::now().timestamp() as f64;
            return Some(stated_secs(n - now));
        }
        return Some(stated_secs(n));
    }
    if let Ok(when) = DateTime::parse_from_rfc2822(v) {
        let ms = (when.with_timezone(&Utc) - Utc::now()).num_milliseconds();
        return Some(stated_secs(ms as f64 / 1000.0));
    }
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"(\d+(?:\.\d+)?)(ms|h|m|s)").expect("static regex"));
    let mut total = 0.0;
    let mut consumed = 0;
    for caps in re.captures_iter(v) {
        let n: f64 = caps.get(1)?.as_str().parse().ok()?;
        total += match caps.get(2)?.as_str() {
            "ms" => n / 1000.0,
            "h" => n * 3600.0,
            "m" => n * 60.0,
            _ => n,
        };
        consumed += caps.get(0)?.len();
    }
    (consumed == v.len() && consumed > 0).then(|| stated_secs(total))
}

/// The longest excerpt of provider text that leaves this module, in characters.
const EXCERPT_CHARS: usize = 160;

/// A short excerpt of an error body, safe to show: HTML reduced to its title,
/// anything key-shaped (and the key itself) replaced, cut on a character
/// boundary of the text itself.
pub(crate) fn excerpt(body: &str, key: Option<&ApiKey>) -> String {
    let trimmed = body.trim();
    let is_html = ["<!doctype", "<html"].iter().any(|tag| {
        trimmed
            .get(..tag.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(tag))
    });
    let mut text = if is_html {
        static TITLE: OnceLock<Regex> = OnceLock::new();
        let re = TITLE
            .get_or_init(|| Regex::new(r"(?is)<title[^>]*>(.*?)</title>").expect("static regex"));
        // Matched on the text itself, so every position is a boundary of it.
        let title = re
            .captures(trimmed)
            .and_then(|c| c.get(1))
            .map(|m| m.as_str().trim().to_owned());
        format!(
            "HTML page{}",
            title.map(|t| format!(" \"{t}\"")).unwrap_or_default()
        )
    } else {
        // Prefer the provider's own message when the body is an OpenAI-style error.
        serde_json::from_str::<serde_json::Value>(trimmed)
            .ok()
            .and_then(|v| {
                v.pointer("/error/message")
                    .or_else(|| v.pointer("/message"))
                    .or_else(|| v.pointer("/error"))
                    .and_then(|m| m.as_str().map(str::to_owned))
            })
            .unwrap_or_else(|| trimmed.to_owned())
    };
    if let Some(key) = key
        && !key.expose().is_empty()
    {
        text = text.replace(key.expose(), "[key]");
    }
    static KEYISH: OnceLock<Regex> = OnceLock::new();
    let re = KEYISH.get_or_init(|| Regex::new(r"[A-Za-z0-9_\-]{24,}").expect("static regex"));
    let text = re.replace_all(&text, "[redacted]");
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > EXCERPT_CHARS {
        let cut: String = flat.chars().take(EXCERPT_CHARS - 3).collect();
        format!("{cut}...")
    } else {
        flat
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn reset_values_in_every_spelling() {
        let cases = [
            ("12", Some(12.0)),
            ("7.66", Some(7.66)),
            ("2m59.56s", Some(179.56)),
            ("120ms", Some(0.12)),
            ("1h2m", Some(3720.0)),
            ("soon", None),
            ("5x", None),
        ];
        for (input, want) in cases {
            let got = parse_reset(input).map(|d| (d.as_secs_f64() * 100.0).round() / 100.0);
            assert_eq!(got, want, "{input}");
        }
        let date = (Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let d = parse_reset(&date).unwrap();
        assert!((25..=31).contains(&d.as_secs()), "{d:?}");
    }

    #[test]
    fn retry_after_header_then_body_hints() {
        assert_eq!(
            retry_after(&headers(&[("retry-after", "17")]), ""),
            Some(Duration::from_secs(17))
        );
        let body = r#"{"error":{"details":[{"retryDelay": "17s"}]}}"#;
        assert_eq!(
            retry_after(&HeaderMap::new(), body),
            Some(Duration::from_secs(17))
        );
        let body = "Rate limit reached. Please try again in 7.66s.";
        assert_eq!(
            retry_after(&HeaderMap::new(), body),
            Some(Duration::from_secs_f64(7.66))
        );
        assert_eq!(retry_after(&HeaderMap::new(), "slow down"), None);
    }

    #[test]
    fn a_chunk_stream_is_read_into_whole_lines() {
        let mut e = SseText::default();
        for line in [
            ": keep-alive",
            r#"data: {"model":"m","choices":[{"delta":{"content":"one\ntw"}}]}"#,
            r#"data: {"choices":[{"delta":{"content":"o"},"finish_reason":null}]}"#,
            r#"data: {"choices":[{"delta":{"content":"\nthree"},"finish_reason":"length"}]}"#,
            r#"data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
            "data: [DONE]",
        ] {
            e.line(line).unwrap();
        }
        assert_eq!(e.take_lines(), ["one\n", "two\n"]);
        assert_eq!(e.pending, "three");
        assert_eq!(e.text, "one\ntwo\nthree");
        assert_eq!(e.finish.as_deref(), Some("length"));
        assert_eq!(e.model.as_deref(), Some("m"));
        assert_eq!(
            e.usage,
            Some(Usage {
                prompt: 3,
                completion: 4
            })
        );
        assert!(e.done);
        let mut e = SseText::default();
        assert!(
            e.line(r#"data: {"error":{"message":"overloaded"}}"#)
                .is_err()
        );
        let key = ApiKey::new("sk-live-0123456789abcdef");
        assert_eq!(
            scrub("echo sk-live-0123456789abcdef\n".into(), Some(&key)),
            "echo [key]\n"
        );
    }

    #[test]
    fn listings_of_each_shape_are_read() {
        let openai =
            r#"{"object":"list","data":[{"id":"gpt-oss-120b","object":"model"},{"id":"x"}]}"#;
        let got = parse_listing(openai).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].id.as_str(), got[0].free), ("gpt-oss-120b", None));
        let openrouter = r#"{"data":[{"id":"a/b:free","context_length":131072,"pricing":{"prompt":"0","completion":"0"}},
            {"id":"c/d","pricing":{"prompt":"0.0000003","completion":"0.000001"}},
            {"id":"e/f","pricing":{"prompt":"0","completion":"0"},"context_length":1e40}]}"#;
        let got = parse_listing(openrouter).unwrap();
        assert_eq!(got[0].free, Some(true));
        assert_eq!(got[0].context, Some(131_072));
        assert_eq!(got[1].free, Some(false));
        assert_eq!((got[2].free, got[2].context), (Some(true), None));
        let bare = r#"[{"name":"m1"},"m2",{"nothing":1}]"#;
        let ids: Vec<String> = parse_listing(bare)
            .unwrap()
            .into_iter()
            .map(|l| l.id)
            .collect();
        assert_eq!(ids, ["m1", "m2"]);
        assert!(parse_listing("<html>").is_none());
        assert!(parse_listing(r#"{"error":"nope"}"#).is_none());
    }

    #[test]
    fn status_classes() {
        let h = HeaderMap::new();
        let cases: &[(u16, &str, Failure)] = &[
            (401, "", Failure::Unauthorized),
            (
                400,
                r#"{"error":{"status":"INVALID_ARGUMENT","details":[{"reason":"API_KEY_INVALID"}]}}"#,
                Failure::Unauthorized,
            ),
            (
                400,
                "FAILED_PRECONDITION: User location is not supported",
                Failure::Forbidden,
            ),
            (402, "", Failure::PaymentRequired),
            (403, "", Failure::Forbidden),
            (404, "", Failure::NotFound),
            (404, "<html><title>404 Not Found</title>", Failure::NotFound),
            (410, "", Failure::Gone { definite: true }),
            // Each provider's words for a model it no longer serves.
            (
                400,
                r#"{"error":{"message":"The model `llama-3.1-70b-versatile` has been decommissioned and is no longer supported.","type":"invalid_request_error","code":"model_decommissioned"}}"#,
                Failure::Gone { definite: true },
            ),
            (
                410,
                r#"{"type":"about:blank","status":410,"title":"Gone","detail":"The model 'minimaxai/minimax-m2.7' has reached its end of life."}"#,
                Failure::Gone { definite: true },
            ),
            (
                403,
                r#"{"object":"error","message":"The model mistral-large-latest is not in your subscription tier","type":"forbidden"}"#,
                Failure::Gone { definite: true },
            ),
            (
                402,
                r#"{"error":"You have no remaining credits for Inference Providers."}"#,
                Failure::Gone { definite: true },
            ),
            (
                404,
                r#"{"error":{"message":"The model `groq/compound` does not exist or you do not have access to it.","type":"invalid_request_error","code":"model_not_found"}}"#,
                Failure::Gone { definite: false },
            ),
            (
                404,
                r#"{"error":{"message":"No endpoints found for qwen/qwen3-coder:free.","code":404}}"#,
                Failure::Gone { definite: false },
            ),
            (
                404,
                r#"{"error":"model \"qwen3-coder:480b-cloud\" not found"}"#,
                Failure::Gone { definite: false },
            ),
            (
                404,
                r#"[{"error":{"code":404,"message":"models/gemini-1.5-flash is not found for API version v1beta","status":"NOT_FOUND"}}]"#,
                Failure::Gone { definite: false },
            ),
            (
                400,
                r#"{"object":"error","message":"Invalid model: magistral-medium-2509","type":"invalid_model","code":"1500"}"#,
                Failure::Gone { definite: false },
            ),
            // A parameter that is no longer supported retires no model.
            (
                400,
                r#"{"error":{"message":"'functions' is no longer supported; use 'tools'"}}"#,
                Failure::Rejected(400),
            ),
            (402, "Payment required", Failure::PaymentRequired),
            (413, "", Failure::ContextTooLong),
            (
                400,
                "This model's maximum context length is 8192 tokens",
                Failure::ContextTooLong,
            ),
            (422, "unknown field", Failure::Rejected(422)),
            (500, "", Failure::Server(500)),
            (503, "<html>", Failure::Server(503)),
        ];
        for (status, body, want) in cases {
            assert_eq!(&classify_status(*status, &h, body), want, "{status} {body}");
        }
    }

    #[test]
    fn rate_limit_details() {
        let f = classify_status(
            429,
            &headers(&[("retry-after", "3")]),
            "daily free allocation used up",
        );
        assert_eq!(
            f,
            Failure::RateLimited {
                retry_after: Some(Duration::from_secs(3)),
                daily: true,
                learned: None
            }
        );
        let f = classify_status(
            429,
            &HeaderMap::new(),
            "Limit reached on tokens per minute (TPM): Limit 30000, Used 29000, Requested 2000",
        );
        assert!(
            matches!(
                f,
                Failure::RateLimited {
                    learned: Some(("tpm", 30000)),
                    ..
                }
            ),
            "{f:?}"
        );
        let f = classify_status(
            429,
            &headers(&[
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "2m59.56s"),
            ]),
            "",
        );
        assert!(
            matches!(f, Failure::RateLimited { retry_after: Some(d), .. } if d.as_secs() == 179),
            "{f:?}"
        );
    }

    #[test]
    fn rate_headers_pick_the_exhausted_window() {
        let h = headers(&[
            ("x-ratelimit-remaining-requests-minute", "5"),
            ("x-ratelimit-remaining-requests-day", "0"),
            ("x-ratelimit-reset-requests-day", "3600"),
        ]);
        let r = rate_headers(&h);
        assert_eq!(r.requests, Some((0, Some(Duration::from_secs(3600)))));
        assert_eq!(r.exhausted_for(), Some(Duration::from_secs(3600)));
    }

    #[test]
    fn bodies_that_are_not_completions() {
        let ok = r#"{"choices":[{"message":{"content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1},"model":"m"}"#;
        let c = parse_completion(ok, RateHeaders::default()).unwrap();
        assert_eq!(c.text, "hi");
        assert_eq!(
            c.usage,
            Some(Usage {
                prompt: 3,
                completion: 1
            })
        );
        let reasoning = r#"{"choices":[{"message":{"content":"","reasoning":"thought"}}]}"#;
        assert_eq!(
            parse_completion(reasoning, RateHeaders::default())
                .unwrap()
                .text,
            "thought"
        );
        let cases = [
            (r#"{"choices":[]}"#, Failure::Empty),
            (
                r#"{"choices":[{"message":{"content":"  "}}]}"#,
                Failure::Empty,
            ),
            (
                r#"{"choices":[{"message":{"content":"hi"}"#,
                Failure::BadBody,
            ),
            ("<html><body>Bad gateway</body></html>", Failure::BadBody),
            (r#"{"error":{"message":"overloaded"}}"#, Failure::BadBody),
        ];
        for (body, want) in cases {
            assert_eq!(
                parse_completion(body, RateHeaders::default()).unwrap_err(),
                want,
                "{body}"
            );
        }
        let loop_text = "the same the same ".repeat(60);
        let body = serde_json::json!({"choices":[{"message":{"content": loop_text}}]}).to_string();
        assert_eq!(
            parse_completion(&body, RateHeaders::default()).unwrap_err(),
            Failure::Empty
        );
    }

    #[test]
    fn excerpts_hide_keys_and_html() {
        let key = ApiKey::new("gsk_live_secret_value_1234567890");
        let body =
            r#"{"error":{"message":"Invalid API Key gsk_live_secret_value_1234567890 provided"}}"#;
        let e = excerpt(body, Some(&key));
        assert!(!e.contains("secret"), "{e}");
        assert!(e.contains("Invalid API Key"), "{e}");
        let e = excerpt(
            "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>...</body></html>",
            None,
        );
        assert_eq!(e, "HTML page \"502 Bad Gateway\"");
        let e = excerpt(&"x ".repeat(500), None);
        assert!(e.len() <= 163);
        let e = excerpt("token sk-proj-abcdefghijklmnopqrstuvwxyz0123 leaked", None);
        assert!(!e.contains("abcdefghijkl"), "{e}");
    }

    /// Every hostile input the issue reproduced: each one is an answer or a
    /// classified failure, never a panic.
    #[test]
    fn hostile_answers_are_classified_not_panics() {
        let html = format!(
            "<html>{}<title>{}</title></html>",
            "İ".repeat(40),
            "é".repeat(300)
        );
        let e = excerpt(&html, None);
        assert!(e.starts_with("HTML page \"éé"), "{e}");
        assert!(e.chars().count() <= EXCERPT_CHARS);
        let e = excerpt("<HTML><TITLE>ÉÉ Bad Gateway</TITLE>", None);
        assert_eq!(e, "HTML page \"ÉÉ Bad Gateway\"");
        for v in [
            "inf",
            "-inf",
            "NaN",
            "1e30",
            "-5",
            "99999999999999999999999s",
            "1e400",
        ] {
            let d = parse_reset(v);
            assert!(d.is_none_or(|d| d <= MAX_STATED_WAIT), "{v}: {d:?}");
            let f = classify_status(429, &headers(&[("retry-after", v)]), "");
            assert!(matches!(f, Failure::RateLimited { .. }), "{v}");
            // The same values on a 200's reset headers.
            let h = headers(&[
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", v),
            ]);
            let ok = br#"{"choices":[{"message":{"content":"hi"}}]}"#;
            let done = interpret(200, &h, ok, None).unwrap();
            assert!(
                done.rate
                    .exhausted_for()
                    .is_none_or(|d| d <= MAX_STATED_WAIT)
            );
        }
        let body = "try again in 99999999999999999999999 minutes";
        assert_eq!(body_retry_hint(body), Some(MAX_STATED_WAIT));
        let nan = headers(&[("x-ratelimit-remaining-requests", "NaN")]);
        assert_eq!(
            rate_headers(&nan).requests,
            None,
            "NaN is no reading, not zero"
        );
    }

    #[test]
    fn answers_read_leniently() {
        let parts = br#"{"choices":[{"message":{"content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}}],"usage":{"prompt_tokens":"7","completion_tokens":2.0}}"#;
        let c = interpret(200, &HeaderMap::new(), parts, None).unwrap();
        assert_eq!(c.text, "ab");
        assert_eq!(
            c.usage,
            Some(Usage {
                prompt: 7,
                completion: 2
            })
        );
        let odd = br#"{"choices":[{"message":{"content":"ok"},"finish_reason":7}],"usage":{"prompt_tokens":-3},"model":5}"#;
        let c = interpret(200, &HeaderMap::new(), odd, None).unwrap();
        assert_eq!(
            (c.usage.unwrap().prompt, c.finish_reason, c.served_model),
            (0, None, None)
        );
        let cut = &br#"{"choices":[{"message":{"content":"\xc3"#[..];
        assert_eq!(
            interpret(200, &HeaderMap::new(), cut, None)
                .unwrap_err()
                .failure,
            Failure::BadBody
        );
    }

    #[test]
    fn an_echoed_key_never_comes_back() {
        let key = ApiKey::new("mock-secret-key-value-0001");
        let page = "<html><head><title>502 Bad Gateway</title></head><body>authorization: Bearer mock-secret-key-value-0001 ÄÖÜ</body></html>";
        let e = interpret(502, &HeaderMap::new(), page.as_bytes(), Some(&key)).unwrap_err();
        assert_eq!(e.detail, "HTML page \"502 Bad Gateway\"");
        let echo = br#"{"choices":[{"message":{"content":"you sent Bearer mock-secret-key-value-0001"}}]}"#;
        let c = interpret(200, &HeaderMap::new(), echo, Some(&key)).unwrap();
        assert_eq!(c.text, "you sent Bearer [key]");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

        /// Any status, headers and body bytes: `interpret` answers (never
        /// panics) and no text it returns holds the request's key.
        #[test]
        fn interpreting_any_answer_is_total_and_keeps_the_key(
            status in 0u16..1000,
            key in "[A-Za-z0-9_.-]{12,40}",
            header_values in proptest::collection::vec("\\PC{0,30}|inf|-inf|NaN|1e30|[0-9]{18,30}(ms|s|m|h)?|-?[0-9]{1,5}(\\.[0-9]+)?", 6),
            before in "\\PC{0,200}",
            after in "\\PC{0,200}",
            shape in 0usize..5,
            cut in 0usize..400,
            extra in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        ) {
            let names = [
                "retry-after",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
                "x-ratelimit-remaining-tokens-day",
                "x-ratelimit-reset-tokens-day",
                "x-ratelimit-reset-tokens",
            ];
            let mut h = HeaderMap::new();
            for (name, value) in names.iter().zip(&header_values) {
                if let Ok(v) = HeaderValue::from_bytes(value.as_bytes()) {
                    h.insert(*name, v);
                }
            }
            let body = match shape {
                0 => format!("{before}{key}{after}"),
                1 => serde_json::json!({"error": {"message": format!("{before} {key} {after}")}}).to_string(),
                2 => format!("<!DOCTYPE html><html><title>{before}{key}</title><body>authorization: Bearer {key}{after}</body>"),
                3 => serde_json::json!({"choices": [{"message": {"content": format!("{before}{key}{after}")}}], "usage": {"prompt_tokens": after.len()}}).to_string(),
                _ => format!("{before} try again in {after} minutes {key}"),
            };
            let mut bytes = body.into_bytes();
            bytes.truncate(bytes.len().saturating_sub(cut % 7));
            bytes.extend_from_slice(&extra);
            let api_key = ApiKey::new(&key);
            let shown = match interpret(status, &h, &bytes, Some(&api_key)) {
                Ok(c) => c.text,
                Err(e) => {
                    if let Failure::RateLimited { retry_after: Some(d), .. } = e.failure {
                        proptest::prop_assert!(d <= MAX_STATED_WAIT);
                    }
                    e.detail
                }
            };
            proptest::prop_assert!(!shown.contains(api_key.expose()), "{}", shown);
        }
    }
}
