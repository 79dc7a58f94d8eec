//! A fault-injecting reverse proxy on loopback, in front of a real registry: requests that
//! match an injected [`Fault`] are answered with it (429, 503 with Retry-After, a lie, a
//! connection reset, an answer that comes too late...), the rest are passed to the server
//! behind it. It records every request, so tests can
//! check what reached the server and that nothing was written twice.
//!
//! It listens on 127.0.0.1 on a free port and stops when dropped.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use url::Url;

use crate::http_server::{ConnectionReset, ServerTask, respond, serve};

/// A canned answer for matching requests: `Fault::new(503).retry_after(1)` answers the next
/// request of any kind; narrow it with [`Fault::method`] and [`Fault::path_contains`].
#[derive(Debug, Clone)]
pub struct Fault {
    method: Option<String>,
    path_contains: Option<String>,
    times: usize,
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    /// Pass the request to the server first, then answer with the fault instead of the
    /// server's answer: a write that took effect but whose answer was lost.
    forward: bool,
    /// Matching requests to let through before this fault applies.
    skip: usize,
    /// Only for requests with exactly this body.
    body_is: Option<Bytes>,
    /// Reset the connection (RST) instead of answering.
    reset: bool,
    /// Wait this long before answering (or resetting): a slow platform, or one that never
    /// answers within the client's patience.
    stall: Duration,
}

impl Fault {
    /// `status` with an empty body, for the next request.
    pub fn new(status: u16) -> Fault {
        Fault {
            method: None,
            path_contains: None,
            times: 1,
            status,
            headers: Vec::new(),
            body: String::new(),
            forward: false,
            skip: 0,
            body_is: None,
            reset: false,
            stall: Duration::ZERO,
        }
    }

    /// The connection is reset (RST) instead of answered: with [`Fault::after_forwarding`],
    /// after the server acted.
    pub fn reset() -> Fault {
        Fault {
            reset: true,
            ..Fault::new(502)
        }
    }

    /// Waits `for_` before answering (or resetting): longer than the client's timeout, the
    /// client gives up first and never learns what happened.
    pub fn stall(mut self, for_: Duration) -> Fault {
        self.stall = for_;
        self
    }

    /// Applies from the `n+1`-th matching request on; the first `n` pass untouched.
    pub fn skip(mut self, n: usize) -> Fault {
        self.skip = n;
        self
    }

    /// Lets the request reach the server, and loses its answer: the client gets the
    /// fault's status (a 502 from a proxy, a 504 timeout) although the server acted.
    pub fn after_forwarding(mut self) -> Fault {
        self.forward = true;
        self
    }

    /// Only for requests with this method.
    pub fn method(mut self, method: &str) -> Fault {
        self.method = Some(method.to_owned());
        self
    }

    /// Only for requests whose path and query contain `part`.
    pub fn path_contains(mut self, part: &str) -> Fault {
        self.path_contains = Some(part.to_owned());
        self
    }

    /// Only for requests whose body is exactly `body` (a dist-tag PUT naming one version).
    pub fn sent_body(mut self, body: &[u8]) -> Fault {
        self.body_is = Some(Bytes::copy_from_slice(body));
        self
    }

    /// For this many matching requests instead of one.
    pub fn times(mut self, times: usize) -> Fault {
        self.times = times;
        self
    }

    /// With `Retry-After: <secs>`.
    pub fn retry_after(mut self, secs: u64) -> Fault {
        self.headers.push(("retry-after".into(), secs.to_string()));
        self
    }

    /// With this header (a `Docker-Content-Digest` that lies, a `Location`).
    pub fn header(mut self, name: &str, value: &str) -> Fault {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// With this body, of this content type.
    pub fn body(mut self, content_type: &str, body: &str) -> Fault {
        self.headers
            .push(("content-type".into(), content_type.to_owned()));
        self.body = body.to_owned();
        self
    }

    fn matches(&self, method: &str, path: &str, body: &Bytes) -> bool {
        self.times > 0
            && self.body_is.as_ref().is_none_or(|b| b == body)
            && self.method.as_deref().is_none_or(|m| m == method)
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| path.contains(p))
    }
}

/// One request the proxy saw, and what it answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The server's status; for an injected fault, the fault's, or 0 for a reset.
    pub status: u16,
    /// Answered by a fault, never reaching the server.
    pub injected: bool,
    /// A fault decided what the client got (an injected answer, a reset, a stall, or a lost
    /// answer after forwarding): the client cannot know whether the request took effect.
    pub faulted: bool,
    /// The request's body.
    pub body: Bytes,
}

struct ProxyState {
    upstream: Url,
    client: reqwest::Client,
    /// Tried in the order injected; the first that matches answers.
    faults: Mutex<Vec<Fault>>,
    seen: Mutex<Vec<Seen>>,
}

/// A reverse proxy that answers matching requests with faults and records every request.
pub struct FaultProxy {
    /// Where to send requests instead of the server: `http://127.0.0.1:<port>/`.
    pub url: Url,
    state: Arc<ProxyState>,
    _server: ServerTask,
}

impl FaultProxy {
    /// A proxy in front of the server at `upstream`.
    pub async fn start(upstream: &Url) -> FaultProxy {
        let state = Arc::new(ProxyState {
            upstream: upstream.clone(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            faults: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
        });
        let server = serve(&state, |s, req| async move { proxy_answer(&s, req).await }).await;
        let url = Url::parse(&format!("http://{}/", server.addr)).expect("url");
        FaultProxy {
            url,
            state,
            _server: server,
        }
    }

    /// Answers matching requests with `fault` from now on, after the faults injected before.
    pub fn inject(&self, fault: Fault) {
        self.state.faults.lock().unwrap().push(fault);
    }

    /// Every request so far, in order, faults included.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Requests forwarded to the server (not answered by a fault) with this method and
    /// a path containing `part`.
    pub fn forwarded(&self, method: &str, part: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| !s.injected && s.method == method && s.path.contains(part))
            .count()
    }

    /// Requests answered by a fault.
    pub fn injected(&self) -> usize {
        self.seen().iter().filter(|s| s.injected).count()
    }
}

async fn proxy_answer(s: &ProxyState, req: Request<Bytes>) -> Response<Full<Bytes>> {
    let method = req.method().as_str().to_owned();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let sent = req.body().clone();
    let control = req.extensions().get::<ConnectionReset>().cloned();
    let fault = {
        let mut faults = s.faults.lock().unwrap();
        let mut chosen = None;
        for f in faults
            .iter_mut()
            .filter(|f| f.matches(&method, &path, &sent))
        {
            if f.skip > 0 {
                f.skip -= 1;
                continue;
            }
            f.times -= 1;
            chosen = Some(f.clone());
            break;
        }
        chosen
    };
    if let Some(f) = fault.as_ref().filter(|f| !f.forward) {
        s.seen.lock().unwrap().push(Seen {
            method,
            path,
            status: if f.reset { 0 } else { f.status },
            injected: true,
            faulted: true,
            body: sent,
        });
        if let Some(answer) = lost(f, control.as_ref()).await {
            return answer;
        }
        let headers: Vec<(&str, &str)> = f
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        return respond(f.status, &headers, f.body.clone());
    }

    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let target = s.upstream.join(&path).expect("upstream url");
    let mut out = s.client.request(
        reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
        target,
    );
    for (name, value) in req.headers() {
        if matches!(
            name.as_str(),
            "connection" | "transfer-encoding" | "keep-alive"
        ) {
            continue;
        }
        out = out.header(name.as_str(), value.as_bytes());
    }
    // Servers build absolute URLs (registry upload Locations, npm tarball URLs) from the
    // Host or these: they must point back at the proxy.
    out = out
        .header("x-forwarded-host", host)
        .header("x-forwarded-proto", "http");
    let upstream = match out.body(req.into_body()).send().await {
        Ok(r) => r,
        Err(e) => return respond(502, &[], format!("proxy: {e}")),
    };
    let status = upstream.status().as_u16();
    let headers: Vec<(String, String)> = upstream
        .headers()
        .iter()
        .filter(|(n, _)| {
            !matches!(
                n.as_str(),
                "connection" | "transfer-encoding" | "keep-alive"
            )
        })
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let body = upstream.bytes().await.unwrap_or_default();
    s.seen.lock().unwrap().push(Seen {
        method,
        path,
        status,
        injected: false,
        faulted: fault.is_some(),
        body: sent,
    });
    // The server acted; its answer is lost on the way back.
    if let Some(f) = fault {
        if let Some(answer) = lost(&f, control.as_ref()).await {
            return answer;
        }
        let headers: Vec<(&str, &str)> = f
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        return respond(f.status, &headers, f.body);
    }
    let refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    respond(status, &refs, body)
}

/// Waits out `f`'s stall; then, for a reset, resets the connection and gives the response
/// that is never sent.
async fn lost(f: &Fault, control: Option<&ConnectionReset>) -> Option<Response<Full<Bytes>>> {
    tokio::time::sleep(f.stall).await;
    if !f.reset {
        return None;
    }
    control.expect("served by http_server::serve").reset();
    Some(respond(502, &[], "reset"))
}
