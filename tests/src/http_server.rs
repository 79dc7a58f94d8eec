//! A tiny HTTP/1 server on loopback for the test doubles (the OCI token realm, the fault
//! proxy): each request is read whole and answered by one handler.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

type Handler =
    Arc<dyn Fn(Request<Bytes>) -> BoxFuture<'static, Response<Full<Bytes>>> + Send + Sync>;

/// A server task; dropping it stops the listener and every open connection.
pub(crate) struct ServerTask {
    pub(crate) addr: SocketAddr,
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Serves on 127.0.0.1, on a free port: each request is answered by `answer(state, request)`.
pub(crate) async fn serve<S, F, Fut>(state: &Arc<S>, answer: F) -> ServerTask
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, Request<Bytes>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let state = Arc::clone(state);
    let handler: Handler = Arc::new(move |req| Box::pin(answer(Arc::clone(&state), req)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let handle = tokio::spawn(async move {
        // Connections live in the set, so aborting this task closes them too.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            while connections.try_join_next().is_some() {}
            let handler = Arc::clone(&handler);
            let control = ConnectionReset::default();
            let io = Resettable {
                inner: stream,
                reset: Arc::clone(&control.0),
            };
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let handler = Arc::clone(&handler);
                    let control = control.clone();
                    async move {
                        let (mut parts, body) = req.into_parts();
                        parts.extensions.insert(control);
                        let body = body
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        Ok::<_, Infallible>(handler(Request::from_parts(parts, body)).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                    .await;
            });
        }
    });
    ServerTask { addr, handle }
}

/// A response with `status`, `headers` and `body`.
pub(crate) fn respond(
    status: u16,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = StatusCode::from_u16(status).expect("status");
    for (name, value) in headers {
        resp.headers_mut().append(
            hyper::header::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            hyper::header::HeaderValue::from_str(value).expect("header value"),
        );
    }
    resp
}

/// In a request's extensions: resets the connection the request came on instead of
/// answering it. A handler calls [`ConnectionReset::reset`] and returns any response; the
/// response is never sent, and the client sees its connection reset (RST).
#[derive(Clone, Default)]
pub(crate) struct ConnectionReset(Arc<AtomicBool>);

impl ConnectionReset {
    pub(crate) fn reset(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A server connection that fails every read and write once its [`ConnectionReset`] fired,
/// so that hyper drops it; with SO_LINGER 0 the close is a reset, not a FIN.
struct Resettable {
    inner: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Resettable {
    fn check(&self) -> std::io::Result<()> {
        if !self.reset.load(Ordering::SeqCst) {
            return Ok(());
        }
        // SO_LINGER 0: close() sends RST and drops what is unsent; it never blocks.
        let _ = self.inner.set_zero_linger();
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset by an injected fault",
        ))
    }
}

impl AsyncRead for Resettable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Resettable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
