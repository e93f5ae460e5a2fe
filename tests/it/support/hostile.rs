//! A provider that misbehaves at the byte level, on 127.0.0.1: it reads the
//! whole request, counts it, and then answers in a way no well-behaved HTTP
//! server would (or not at all). Plain TCP, so nothing tidies its answers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What the provider does once it has read a request.
#[derive(Debug, Clone)]
pub enum Hostile {
    /// Close the connection without a byte of answer.
    CloseAfterRequest,
    /// `200` announcing more body than it sends, then close.
    ShortBody,
    /// Exactly these status, headers and body bytes.
    Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// A `502` HTML page that echoes the request's headers amid non-ASCII text.
    EchoHeaders,
}

/// A running hostile provider.
#[derive(Clone)]
pub struct HostileUpstream {
    pub addr: SocketAddr,
    count: Arc<AtomicUsize>,
    pub seen_headers: Arc<Mutex<Vec<String>>>,
}

impl HostileUpstream {
    pub fn start(behavior: Hostile) -> HostileUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let seen_headers = Arc::new(Mutex::new(Vec::new()));
        let (c, h) = (count.clone(), seen_headers.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (b, c, h) = (behavior.clone(), c.clone(), h.clone());
                std::thread::spawn(move || serve(stream, &b, &c, &h));
            }
        });
        HostileUpstream {
            addr,
            count,
            seen_headers,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Requests read in full (so they reached the provider).
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

fn serve(mut s: TcpStream, behavior: &Hostile, count: &AtomicUsize, seen: &Mutex<Vec<String>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    // Headers, then as much body as content-length says.
    let head_end = loop {
        let Ok(n) = s.read(&mut chunk) else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let Ok(n) = s.read(&mut chunk) else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    count.fetch_add(1, Ordering::SeqCst);
    seen.lock().unwrap().push(head.clone());
    let reply: Vec<u8> = match behavior {
        Hostile::CloseAfterRequest => return,
        Hostile::ShortBody => b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"choices\":[{\"message\":{\"content\":\"cut".to_vec(),
        Hostile::Answer {
            status,
            headers,
            body,
        } => {
            let mut r = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n", body.len()).into_bytes();
            for (k, v) in headers {
                r.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
            }
            r.extend_from_slice(b"\r\n");
            r.extend_from_slice(body);
            r
        }
        Hostile::EchoHeaders => {
            let page = format!(
                "<html><head><title>Fehler: Zugriff verweigert — ÄÖÜ İİİ</title></head><body><h1>Bad Gateway ñ</h1><pre>{head}</pre><p>éééé</p></body></html>"
            );
            let mut r = format!(
                "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                page.len()
            )
            .into_bytes();
            r.extend_from_slice(page.as_bytes());
            r
        }
    };
    let _ = s.write_all(&reply);
    let _ = s.flush();
}
