//! OpenAI's chat completions and model list, served by the pool.
//!
//! A request becomes a `DelegateRequest` (system messages joined, earlier
//! turns as history, the last user turn as the prompt) and runs through the
//! same gate, router, ledger and failover as `delegate`. Errors keep
//! OpenAI's shape (`{"error": {"message", "type", "code"}}`) so SDKs read
//! them; a refused prompt names the rule and where, never the value.
//! `stream: true` is answered as server-sent events in OpenAI's chunk
//! format: upstream calls are not streamed, so the answer comes as one
//! chunk, with keep-alive comments while the pool works.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use crate::dispatch::{self, DelegateRequest, Engine, Served, StreamSink, texts};
use crate::{gate, router};

/// An OpenAI-shaped error response.
pub(super) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let kind = match status.as_u16() {
        401 => "authentication_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    (
        status,
        axum::Json(
            json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
        ),
    )
        .into_response()
}

/// `GET /v1/models`: every model of a usable provider, as `provider/model`.
pub(super) async fn models(State(state): State<AppState>) -> Response {
    let catalog = state.engine.resolved_catalog().await;
    let data: Vec<Value> = catalog
        .providers
        .iter()
        .filter(|p| router::is_usable(p))
        .flat_map(|p| {
            p.models.iter().map(move |m| {
                json!({
                    "id": format!("{}/{}", p.id, m.id),
                    "object": "model",
                    "created": 0,
                    "owned_by": p.id,
                })
            })
        })
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// What a chat request asks beyond the delegate request.
struct Asked {
    stream: bool,
    include_usage: bool,
}

/// `POST /v1/chat/completions`.
pub(super) async fn chat_completions(State(state): State<AppState>, body: Bytes) -> Response {
    let (req, asked) = match parse(&body) {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, "invalid_request", &message),
    };
    if asked.stream {
        // The gate before the 200 goes out, so a refused prompt is still a
        // 400 (without streaming, `delegate`'s own scan gives the same 400).
        let findings = Engine::scan(&req, &[]);
        if !findings.is_empty() {
            let e = dispatch::Error::Refused { findings };
            return error(
                StatusCode::BAD_REQUEST,
                "credential_in_prompt",
                &texts::full(&e),
            );
        }
        return stream(state, req, asked.include_usage);
    }
    match state.engine.delegate(req, &|_| {}).await {
        Ok(served) => {
            let mut r = axum::Json(completion(&served)).into_response();
            provenance_headers(r.headers_mut(), &served);
            r
        }
        Err(e) => failure(&e),
    }
}

/// The answer as server-sent events: keep-alive comments while the pool
/// works, the answer's lines as the provider streams them (each redacted by
/// the gate before it leaves; a private key block is held until it ends),
/// or the whole answer as one chunk when the provider does not stream; then
/// the finish chunk, usage if asked, and `[DONE]`.
fn stream(state: AppState, mut req: DelegateRequest, include_usage: bool) -> Response {
    let (sink, mut lines) = StreamSink::new();
    req.stream = Some(sink);
    // Who serves is known at the end; chunks before say what was asked.
    let asked_model = req.model.clone().unwrap_or_else(|| "auto".into());
    let engine = state.engine.clone();
    let call = Aborting(tokio::spawn(
        async move { engine.delegate(req, &|_| {}).await },
    ));
    let (id, created) = (
        format!(
            "chatcmpl-fp-{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        ),
        now_secs(),
    );
    let chunk = move |model: &str, delta: Value, finish: Value| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    };
    let events = async_events(move |emit| async move {
        let mut held = String::new();
        let mut sent_any = false;
        let mut first = true;
        let text_chunk = |text: String, first: &mut bool| {
            let delta = if std::mem::take(first) {
                json!({"role": "assistant", "content": text})
            } else {
                json!({"content": text})
            };
            chunk(&asked_model, delta, Value::Null)
        };
        while let Some(line) = lines.recv().await {
            held.push_str(&line);
            // A private key block is redacted whole: hold it until it ends.
            if held.contains("-----BEGIN") && !held.contains("-----END") {
                continue;
            }
            let (clean, _) = gate::redact(&std::mem::take(&mut held));
            sent_any = true;
            emit(text_chunk(clean, &mut first).to_string());
        }
        let mut call = call;
        let result = match (&mut call.0).await {
            Ok(r) => r,
            Err(_) => Err(dispatch::Error::Invalid(
                "the call ended unexpectedly".into(),
            )),
        };
        if !held.is_empty() {
            let (clean, _) = gate::redact(&held);
            sent_any = true;
            emit(text_chunk(clean, &mut first).to_string());
        }
        match result {
            Ok(s) => {
                if !sent_any {
                    // The provider did not stream: the whole (redacted) answer at once.
                    emit(text_chunk(s.text.clone(), &mut first).to_string());
                }
                let mut last = chunk(&s.model, json!({}), json!(finish_reason(&s)));
                emit(last.to_string());
                if include_usage {
                    last["choices"] = json!([]);
                    last["usage"] = usage(&s);
                    emit(last.to_string());
                }
            }
            Err(e) => {
                let (status, code) = status_of(&e);
                let kind = if status == StatusCode::TOO_MANY_REQUESTS {
                    "rate_limit_error"
                } else {
                    "server_error"
                };
                emit(
                    json!({"error": {"message": texts::full(&e), "type": kind, "code": code}})
                        .to_string(),
                );
            }
        }
        emit("[DONE]".to_owned());
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response()
}

/// A spawned call aborted when the response is dropped (the client went
/// away): dropping the call releases its leases.
struct Aborting<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Aborting<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A stream of SSE data events produced by `body`, which calls `emit` for each.
fn async_events<F, Fut>(body: F) -> impl futures::Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(Box<dyn Fn(String) + Send + Sync>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let work = body(Box::new(move |data| {
        let _ = tx.send(data);
    }));
    let driver = Aborting(tokio::spawn(work));
    futures::stream::unfold((rx, driver), |(mut rx, driver)| async move {
        let data = rx.recv().await?;
        Some((Ok(Event::default().data(data)), (rx, driver)))
    })
}

/// Reads OpenAI's request shape, leniently where SDKs differ.
fn parse(body: &[u8]) -> Result<(DelegateRequest, Asked), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        format!("the body is not JSON ({e}); send OpenAI's chat completion request")
    })?;
    let messages = v
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or("`messages` is missing or empty")?;
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<(bool, String)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let text = content_text(m.get("content").unwrap_or(&Value::Null));
        match role {
            "system" | "developer" => system.push(text),
            "user" => turns.push((false, text)),
            "assistant" => turns.push((true, text)),
            // A tool's output is something the user's side supplies.
            "tool" | "function" => turns.push((false, format!("(tool result)\n{text}"))),
            other => {
                return Err(format!(
                    "messages[{i}].role `{other}` is not system, developer, user, assistant or tool"
                ));
            }
        }
    }
    let Some((false, prompt)) = turns.pop() else {
        return Err("the last message must be the user's (or a tool's) turn".into());
    };
    let model = v
        .get("model")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|m| !m.is_empty() && *m != "auto")
        .map(str::to_owned);
    let max_tokens = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_u64))
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    let temperature = v
        .get("temperature")
        .and_then(Value::as_f64)
        .map(|t| t.clamp(0.0, 2.0) as f32);
    let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = v
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let req = DelegateRequest {
        prompt,
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        history: turns,
        model,
        max_tokens,
        temperature,
        via: "http",
        ..Default::default()
    };
    Ok((
        req,
        Asked {
            stream,
            include_usage,
        },
    ))
}

/// A message's text: a string, or the text parts of a list of parts.
fn content_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.as_str().or_else(|| p.get("text").and_then(Value::as_str)))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn completion_id(s: &Served) -> String {
    match s.decision_id {
        Some(id) => format!("chatcmpl-fp-{id}"),
        None => format!(
            "chatcmpl-fp-{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        ),
    }
}

fn finish_reason(s: &Served) -> &'static str {
    if s.truncated { "length" } else { "stop" }
}

fn usage(s: &Served) -> Value {
    json!({
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "total_tokens": s.prompt_tokens + s.completion_tokens,
    })
}

/// OpenAI's `chat.completion` object.
fn completion(s: &Served) -> Value {
    json!({
        "id": completion_id(s),
        "object": "chat.completion",
        "created": now_secs(),
        "model": s.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": s.text},
            "finish_reason": finish_reason(s),
        }],
        "usage": usage(s),
    })
}

/// `x-freepool-model` (who served) and `x-freepool-attempts` (the failover trail).
fn provenance_headers(h: &mut HeaderMap, s: &Served) {
    let trail: Vec<String> = s
        .attempts
        .iter()
        .map(|a| format!("{} {} ({} ms)", a.model, a.outcome, a.ms))
        .collect();
    for (name, value) in [
        ("x-freepool-model", s.model.clone()),
        ("x-freepool-attempts", trail.join("; ")),
    ] {
        if let Ok(v) = HeaderValue::from_str(&header_safe(&value)) {
            h.insert(name, v);
        }
    }
}

/// Visible ASCII only, at most 1,000 characters: a header must not break.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(1000)
        .collect()
}

/// The status and code for a call that produced no answer.
fn status_of(e: &dispatch::Error) -> (StatusCode, &'static str) {
    match e {
        dispatch::Error::Refused { .. } => (StatusCode::BAD_REQUEST, "credential_in_prompt"),
        dispatch::Error::UnknownModel(_) => (StatusCode::NOT_FOUND, "model_not_found"),
        dispatch::Error::Invalid(_) | dispatch::Error::Files(_) => {
            (StatusCode::BAD_REQUEST, "invalid_request")
        }
        dispatch::Error::NoCandidate { .. } => (StatusCode::TOO_MANY_REQUESTS, "pool_exhausted"),
        dispatch::Error::Exhausted { .. } | dispatch::Error::ChecksFailed { .. } => {
            (StatusCode::BAD_GATEWAY, "upstream_failed")
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

/// A failed call as OpenAI's error, with `Retry-After` when capacity returns at a known time.
fn failure(e: &dispatch::Error) -> Response {
    let (status, code) = status_of(e);
    let mut r = error(status, code, &texts::full(e));
    if let dispatch::Error::NoCandidate {
        soonest: Some(t),
        now,
        ..
    } = e
    {
        let secs = ((t - now).max(0) + 999) / 1000;
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversation_becomes_system_history_and_prompt() {
        let body = br#"{"model":"auto","messages":[
            {"role":"system","content":"be brief"},
            {"role":"user","content":"hi"},
            {"role":"assistant","content":[{"type":"text","text":"hello"}]},
            {"role":"user","content":"sum 2+2"}],
            "max_tokens":50,"temperature":9,"stream":true,"stream_options":{"include_usage":true}}"#;
        let (req, asked) = parse(body).unwrap();
        assert_eq!(req.prompt, "sum 2+2");
        assert_eq!(req.system.as_deref(), Some("be brief"));
        assert_eq!(
            req.history,
            [(false, "hi".to_owned()), (true, "hello".to_owned())]
        );
        assert_eq!(req.model, None);
        assert_eq!((req.max_tokens, req.temperature), (Some(50), Some(2.0)));
        assert!(asked.stream && asked.include_usage);
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        for (body, want) in [
            (&b"nope"[..], "not JSON"),
            (br#"{"messages":[]}"#, "missing or empty"),
            (br#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}"#, "last message"),
            (br#"{"messages":[{"role":"wizard","content":"a"}]}"#, "messages[0].role `wizard`"),
        ] {
            let e = parse(body).err().unwrap();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn headers_stay_valid_whatever_the_text() {
        let s = header_safe("groq/m1 429 \"slow\"\r\nInjected: yes é");
        assert!(HeaderValue::from_str(&s).is_ok());
        assert!(!s.contains('\n'));
    }
}
