//! JSON-RPC over stdio, one message per line, with an answer for every bad line.
//!
//! rmcp's own line transport drops a line that is not JSON and one longer
//! than its limit without a word, so a client waits forever for the answer
//! to that request. This one answers: a line that is not JSON gets a parse
//! error (id null, as JSON-RPC says); a line over `MAX_LINE` gets an
//! invalid-request error carrying the line's `id` when it has one, found by
//! a streaming scan that never holds the line in memory (clients may write
//! `id` after a huge `params`). rmcp's messages and these answers go
//! through one writer, so lines never interleave.

use std::sync::Arc;

use rmcp::RoleServer;
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;

/// The longest message accepted: 16 MiB, as rmcp's own transports.
pub(crate) const MAX_LINE: usize = 16 * 1024 * 1024;

/// The line transport.
pub(crate) struct Lines<R, W> {
    read: BufReader<R>,
    /// The line read so far (kept across cancelled reads).
    line: Vec<u8>,
    /// Set while skipping the rest of an over-long line.
    skipping: Option<IdScan>,
    write: Arc<Mutex<W>>,
    max: usize,
}

impl<R, W> Lines<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    /// A transport over a reader and a writer.
    pub(crate) fn new(read: R, write: W) -> Self {
        Lines {
            read: BufReader::new(read),
            line: Vec::new(),
            skipping: None,
            write: Arc::new(Mutex::new(write)),
            max: MAX_LINE,
        }
    }

    #[cfg(test)]
    fn with_max(mut self, max: usize) -> Self {
        self.max = max;
        self
    }

    /// Writes one JSON line under the writer's lock.
    async fn answer(write: &Mutex<W>, v: &Value) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(v)?;
        line.push(b'\n');
        let mut w = write.lock().await;
        w.write_all(&line).await?;
        w.flush().await
    }

    /// Reads until a whole line is in `self.line` (`Some(true)`), an
    /// over-long line has been skipped (`Some(false)`, id scan done), or the
    /// stream ends (`None`). Cancel-safe: what was read stays in `self`.
    async fn next_line(&mut self) -> Option<bool> {
        loop {
            let (used, done) = {
                let buf = match self.read.fill_buf().await {
                    Ok([]) => return None,
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!("reading stdin: {e}");
                        return None;
                    }
                };
                let newline = buf.iter().position(|b| *b == b'\n');
                let chunk = &buf[..newline.map_or(buf.len(), |i| i + 1)];
                match self.skipping.as_mut() {
                    Some(scan) => scan.feed(chunk),
                    None if self.line.len() + chunk.len() > self.max => {
                        let mut scan = IdScan::default();
                        scan.feed(&self.line);
                        scan.feed(chunk);
                        self.line.clear();
                        self.skipping = Some(scan);
                    }
                    None => self.line.extend_from_slice(chunk),
                }
                (chunk.len(), newline.is_some())
            };
            self.read.consume(used);
            if done {
                return Some(self.skipping.is_none());
            }
        }
    }
}

impl<R, W> Transport<RoleServer> for Lines<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let write = self.write.clone();
        async move {
            let v = serde_json::to_value(&item)?;
            Self::answer(&write, &v).await
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            let whole = self.next_line().await?;
            if !whole {
                let scan = self.skipping.take().unwrap_or_default();
                tracing::warn!(
                    bytes = scan.length,
                    "a message over the size limit was refused"
                );
                if let Some(id) = scan.id() {
                    let mib = self.max / (1024 * 1024);
                    let reply = json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32600,
                        "message": format!("the message is over {mib} MiB, the most this server reads; send less (for files, pass their paths)")}});
                    if Self::answer(&self.write, &reply).await.is_err() {
                        return None;
                    }
                }
                continue;
            }
            let line = std::mem::take(&mut self.line);
            let text = line.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&line);
            let text = text.strip_suffix(b"\n").unwrap_or(text);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let value: Value = match serde_json::from_slice(text) {
                Ok(v) => v,
                Err(e) => {
                    let reply = json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700,
                        "message": format!("parse error: the line is not JSON ({e})")}});
                    if Self::answer(&self.write, &reply).await.is_err() {
                        return None;
                    }
                    continue;
                }
            };
            match serde_json::from_value::<RxJsonRpcMessage<RoleServer>>(value.clone()) {
                Ok(msg) => return Some(msg),
                // Notifications nobody needs to hear about (another protocol's,
                // a newer MCP's) are let go, as the other SDKs do.
                Err(_) if value.get("id").is_none() => continue,
                Err(e) => {
                    let reply = json!({"jsonrpc": "2.0", "id": value["id"], "error": {"code": -32600,
                        "message": format!("invalid request: {e}")}});
                    if Self::answer(&self.write, &reply).await.is_err() {
                        return None;
                    }
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.write.lock().await.shutdown().await
    }
}

/// Finds the top-level `"id"` of a JSON object fed in pieces, holding only
/// the id's own bytes: depth, string and escape state, the key being read.
#[derive(Debug, Default)]
struct IdScan {
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// At depth 1, the next string is a key.
    want_key: bool,
    /// The key being read (its first bytes), or just read.
    key: Vec<u8>,
    reading_key: bool,
    /// Capturing the value of `"id"`.
    capturing: bool,
    value: Vec<u8>,
    found: Option<Vec<u8>>,
    /// Bytes seen.
    length: usize,
}

impl IdScan {
    fn feed(&mut self, bytes: &[u8]) {
        self.length += bytes.len();
        for &b in bytes {
            if self.found.is_some() {
                return;
            }
            if self.capturing {
                let ends = !self.in_string && self.depth == 1 && (b == b',' || b == b'}');
                if ends {
                    self.found = Some(std::mem::take(&mut self.value));
                    self.capturing = false;
                    return;
                }
                if self.value.len() < 256 {
                    self.value.push(b);
                }
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                    if self.reading_key {
                        self.reading_key = false;
                    }
                } else if self.reading_key && self.key.len() < 8 {
                    self.key.push(b);
                }
                continue;
            }
            match b {
                b'"' => {
                    self.in_string = true;
                    if self.depth == 1 && self.want_key {
                        self.want_key = false;
                        self.reading_key = true;
                        self.key.clear();
                    }
                }
                b'{' | b'[' => {
                    self.depth += 1;
                    if self.depth == 1 {
                        self.want_key = true;
                    }
                }
                b'}' | b']' => self.depth = self.depth.saturating_sub(1),
                b',' if self.depth == 1 => self.want_key = true,
                b':' if self.depth == 1 && self.key == b"id" => {
                    self.capturing = true;
                    self.value.clear();
                }
                _ => {}
            }
        }
    }

    /// The id, when it was found and is a number or a string.
    fn id(&self) -> Option<Value> {
        let raw = self.found.as_ref()?;
        match serde_json::from_slice::<Value>(raw) {
            Ok(v @ (Value::Number(_) | Value::String(_))) => Some(v),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn the_id_is_found_wherever_it_sits() {
        let cases = [
            (
                r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"a":"b"}}"#,
                Some(json!(7)),
            ),
            (
                r#"{"method":"x","params":{"id":1,"s":"\"id\":2"},"jsonrpc":"2.0","id":"req-9"}"#,
                Some(json!("req-9")),
            ),
            (r#"{"params":[{"id":3}],"id" : 12 }"#, Some(json!(12))),
            (r#"{"method":"notifications/x","params":{}}"#, None),
            (r#"{"id":{"nested":true}}"#, None),
        ];
        for (text, want) in cases {
            for split in [1, 3, 7, text.len()] {
                let mut scan = IdScan::default();
                for piece in text.as_bytes().chunks(split) {
                    scan.feed(piece);
                }
                assert_eq!(scan.id(), want, "{text} in pieces of {split}");
            }
        }
    }

    /// Lines over the limit, lines that are not JSON, and then a good request:
    /// each bad line is answered and the good one comes through.
    #[tokio::test]
    async fn every_bad_line_is_answered_and_the_session_goes_on() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (server_read, server_write) = tokio::io::split(server);
        let mut t = Lines::new(server_read, server_write).with_max(1024);
        let big = format!(
            "{{\"jsonrpc\":\"2.0\",\"method\":\"tools/call\",\"params\":{{\"x\":\"{}\"}},\"id\":41}}\n",
            "é".repeat(4000)
        );
        let writer = tokio::spawn(async move {
            client.write_all(big.as_bytes()).await.unwrap();
            client.write_all(b"this is not json\n").await.unwrap();
            client
                .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"ping\"}\n")
                .await
                .unwrap();
            let mut out = vec![0u8; 4096];
            let mut got = Vec::new();
            while got.iter().filter(|b| **b == b'\n').count() < 2 {
                let n = client.read(&mut out).await.unwrap();
                got.extend_from_slice(&out[..n]);
            }
            String::from_utf8(got).unwrap()
        });
        let msg = t.receive().await.expect("the good request comes through");
        assert!(serde_json::to_string(&msg).unwrap().contains("ping"));
        let replies = writer.await.unwrap();
        let lines: Vec<Value> = replies
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["id"], 41);
        assert_eq!(lines[0]["error"]["code"], -32600);
        assert_eq!(lines[1]["id"], Value::Null);
        assert_eq!(lines[1]["error"]["code"], -32700);
    }
}
