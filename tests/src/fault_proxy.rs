//! A fault-injecting HTTP proxy on loopback: the first requests it receives are answered
//! with a chosen status and Retry-After (429, 503, ...), the rest are passed to the real
//! server behind it. It counts requests by method, so tests can check that nothing was
//! written twice.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct State {
    /// Canned answers still to give: (status line, Retry-After).
    faults: VecDeque<(String, Option<String>)>,
    /// "METHOD path" of every request seen.
    seen: Vec<String>,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state: Arc<Mutex<State>> = Arc::default();
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, upstream, Arc::clone(&shared)));
            }
        });
        FaultProxy { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The next `n` requests get `status` (e.g. "503 Service Unavailable").
    pub fn fail_next(&self, n: usize, status: &str, retry_after: Option<&str>) {
        let mut s = self.state.lock().unwrap();
        for _ in 0..n {
            s.faults
                .push_back((status.to_owned(), retry_after.map(str::to_owned)));
        }
    }

    pub fn seen(&self) -> Vec<String> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn count(&self, method: &str) -> usize {
        self.seen()
            .iter()
            .filter(|r| r.starts_with(&format!("{method} ")))
            .count()
    }
}

/// Reads one request head and its Content-Length body.
async fn read_request(conn: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf)
}

/// One request per connection: faults are answered here, the rest forwarded on a fresh
/// upstream connection (Connection: close keeps the accounting per request).
async fn serve(mut conn: TcpStream, upstream: SocketAddr, state: Arc<Mutex<State>>) {
    if let Some(request) = read_request(&mut conn).await {
        let line = String::from_utf8_lossy(&request)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned();
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let fault = {
            let mut s = state.lock().unwrap();
            s.seen.push(format!("{method} {path}"));
            s.faults.pop_front()
        };
        if let Some((status, retry_after)) = fault {
            let mut resp =
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n");
            if let Some(r) = retry_after {
                resp.push_str(&format!("retry-after: {r}\r\n"));
            }
            resp.push_str("\r\n");
            let _ = conn.write_all(resp.as_bytes()).await;
            return;
        }
        let Ok(mut up) = TcpStream::connect(upstream).await else {
            return;
        };
        // Ask the server to close after answering, so its response ends at EOF.
        let text = String::from_utf8_lossy(&request);
        let head_end = text
            .find("\r\n\r\n")
            .map(|p| p + 4)
            .unwrap_or(request.len());
        let mut head: String = text[..head_end - 2]
            .lines()
            .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
            .map(|l| format!("{l}\r\n"))
            .collect();
        head.push_str("connection: close\r\n\r\n");
        if up.write_all(head.as_bytes()).await.is_err()
            || up.write_all(&request[head_end..]).await.is_err()
        {
            return;
        }
        let mut response = Vec::new();
        if up.read_to_end(&mut response).await.is_err() {
            return;
        }
        let _ = conn.write_all(&response).await;
    }
}
