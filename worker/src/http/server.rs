//! Connections of the HTTP server: how many may be open, and how long each may take.
//!
//! `axum::serve` sets neither a header timer nor a connection limit, so a client that never
//! finishes its headers held a connection (and a file descriptor) for ever, and a flood of
//! such clients took the process to its file limit, where the worker's own files (the SQLite
//! database, revisions) could no longer be opened. Here every connection has
//!
//! - a header-read timeout (hyper's own timer): the request head must arrive within it,
//!   counted from when the server starts waiting for it, so it also bounds how long an idle
//!   keep-alive connection stays open;
//! - an idle timeout: a connection on which no byte moves in either direction for that long
//!   (a stalled upload, a client that stops reading its response) is closed;
//! - a place under a cap. At the cap a new connection takes the place of the open one that is
//!   not serving a request and has been quiet longest; when every connection is serving a
//!   request, the new one is closed at once. A flood of idle connections therefore cannot
//!   lock out a health check or an operator, and the cap is kept below the file limit (see
//!   `crate::fd_limit`) so the worker's files always have descriptors left.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

/// How long requests in flight get to finish once shutdown is asked for; connections still
/// open after it are closed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// At most one warning about shed connections or accept errors per this period, so that a
/// flood does not become a flood of log lines too.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The limits every connection is held to (`[http]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// One open connection, as the cap sees it.
struct Slot {
    /// Milliseconds since the server started, when a byte last moved.
    last_activity: AtomicU64,
    /// Requests being served: read, handled, or with their response still being written.
    in_flight: AtomicUsize,
    /// Cancelled when the connection must make room for a newer one.
    evicted: CancellationToken,
}

/// The open connections.
struct Registry {
    epoch: Instant,
    cap: usize,
    next_id: AtomicU64,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
}

/// What the registry decided for a new connection.
enum Admission {
    Admitted(u64, Arc<Slot>),
    /// At the cap, and every open connection is serving a request.
    Full,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn admit(&self) -> (Admission, bool) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut evicted_one = false;
        if slots.len() >= self.cap {
            let quietest = slots
                .iter()
                .filter(|(_, slot)| slot.in_flight.load(Ordering::Acquire) == 0)
                .min_by_key(|(_, slot)| slot.last_activity.load(Ordering::Acquire))
                .map(|(id, _)| *id);
            let Some(id) = quietest else {
                return (Admission::Full, false);
            };
            if let Some(slot) = slots.remove(&id) {
                slot.evicted.cancel();
                evicted_one = true;
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            last_activity: AtomicU64::new(self.now_ms()),
            in_flight: AtomicUsize::new(0),
            evicted: CancellationToken::new(),
        });
        slots.insert(id, Arc::clone(&slot));
        (Admission::Admitted(id, slot), evicted_one)
    }

    fn release(&self, id: u64) {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    fn touch(&self, slot: &Slot) {
        slot.last_activity.store(self.now_ms(), Ordering::Release);
    }
}

/// Counts shed connections and accept errors, and says so now and then.
struct Warnings {
    last: Option<Instant>,
    shed: u64,
    evicted: u64,
}

impl Warnings {
    fn due(&mut self) -> bool {
        let due = self.last.is_none_or(|at| at.elapsed() >= WARN_EVERY);
        if due {
            self.last = Some(Instant::now());
        }
        due
    }

    fn note(&mut self, evicted: bool, shed: bool, cap: usize) {
        self.evicted += u64::from(evicted);
        self.shed += u64::from(shed);
        if (evicted || shed) && self.due() {
            tracing::warn!(
                max_connections = cap,
                closed_idle = self.evicted,
                refused = self.shed,
                "HTTP connections at http.max_connections: closing the quietest idle ones to make room, refusing new ones when all are busy"
            );
            self.evicted = 0;
            self.shed = 0;
        }
    }
}

/// Serves `router` on `listener` under `limits` until `shutdown` is cancelled, then lets the
/// requests in flight finish (for at most `SHUTDOWN_GRACE`).
pub async fn run(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let registry = Arc::new(Registry {
        epoch: Instant::now(),
        cap: limits.max_connections.max(1),
        next_id: AtomicU64::new(0),
        slots: Mutex::new(HashMap::new()),
    });
    let mut connections = JoinSet::new();
    let mut warnings = Warnings {
        last: None,
        shed: 0,
        evicted: 0,
    };
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        while connections.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Most likely EMFILE: the process is at its file limit. Waiting lets
                // connections (and the worker's files) close before trying again.
                if warnings.due() {
                    tracing::error!(error = %e, "accept error; waiting before accepting again");
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
                continue;
            }
        };
        let (admission, evicted) = registry.admit();
        let (id, slot) = match admission {
            Admission::Admitted(id, slot) => (id, slot),
            Admission::Full => {
                warnings.note(false, true, registry.cap);
                // Dropping the stream closes it: the client sees the connection end at once.
                drop(stream);
                continue;
            }
        };
        warnings.note(evicted, false, registry.cap);
        let registry = Arc::clone(&registry);
        let router = router.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            serve_connection(stream, &registry, &slot, router, limits, shutdown).await;
            registry.release(id);
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            open = connections.len(),
            "closing the HTTP connections still open after the shutdown grace period"
        );
    }
    // Dropping the set aborts whatever is left.
    Ok(())
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn serve_connection(
    stream: TcpStream,
    registry: &Arc<Registry>,
    slot: &Arc<Slot>,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let io = TokioIo::new(Watched {
        stream,
        registry: Arc::clone(registry),
        slot: Arc::clone(slot),
    });
    let service = {
        let registry = Arc::clone(registry);
        let slot = Arc::clone(slot);
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let busy = Busy::start(&registry, &slot);
            let mut router = router.clone();
            async move {
                let response: Response = match router.call(req.map(Body::new)).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(response.map(|body| Body::new(Tracked { body, _busy: busy })))
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            // Dropping the connection closes the socket.
            () = slot.evicted.cancelled() => return,
            () = idle(registry, slot, limits.idle_timeout) => {
                tracing::debug!("closing an HTTP connection idle for http.idle_timeout_secs");
                return;
            }
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Resolves once nothing has moved on the connection for `timeout`.
async fn idle(registry: &Registry, slot: &Slot, timeout: Duration) {
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    loop {
        let last = slot.last_activity.load(Ordering::Acquire);
        let quiet_for = registry.now_ms().saturating_sub(last);
        if quiet_for >= timeout_ms {
            return;
        }
        tokio::time::sleep(Duration::from_millis(timeout_ms - quiet_for)).await;
    }
}

/// Marks a connection as serving a request from its head until its response body is done
/// (or dropped), so the cap never closes it mid-request.
struct Busy {
    registry: Arc<Registry>,
    slot: Arc<Slot>,
}

impl Busy {
    fn start(registry: &Arc<Registry>, slot: &Arc<Slot>) -> Busy {
        slot.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy {
            registry: Arc::clone(registry),
            slot: Arc::clone(slot),
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.registry.touch(&self.slot);
        self.slot.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection marked busy until it is written or dropped.
struct Tracked {
    body: Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket, noting when a byte moves for the idle timeout and the cap's choice.
struct Watched {
    stream: TcpStream,
    registry: Arc<Registry>,
    slot: Arc<Slot>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.registry.touch(&this.slot);
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.registry.touch(&this.slot);
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.registry.touch(&this.slot);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(cap: usize) -> Registry {
        Registry {
            epoch: Instant::now(),
            cap,
            next_id: AtomicU64::new(0),
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn admitted(r: &Registry) -> (u64, Arc<Slot>, bool) {
        match r.admit() {
            (Admission::Admitted(id, slot), evicted) => (id, slot, evicted),
            (Admission::Full, _) => panic!("refused below the cap or with an idle connection"),
        }
    }

    #[test]
    fn at_the_cap_the_quietest_idle_connection_makes_room_and_busy_ones_stay() {
        let r = registry(2);
        let (_, first, evicted) = admitted(&r);
        assert!(!evicted);
        let (_, second, _) = admitted(&r);
        // The first is serving a request, the second is idle: the second goes.
        first.in_flight.store(1, Ordering::Release);
        first.last_activity.store(0, Ordering::Release);
        second.last_activity.store(5, Ordering::Release);
        let (_, third, evicted) = admitted(&r);
        assert!(evicted);
        assert!(second.evicted.is_cancelled());
        assert!(!first.evicted.is_cancelled());
        // Among idle ones, the one quiet longest goes.
        third.last_activity.store(7, Ordering::Release);
        first.in_flight.store(0, Ordering::Release);
        let (_, fourth, _) = admitted(&r);
        assert!(first.evicted.is_cancelled() && !third.evicted.is_cancelled());
        // Everyone busy: the newcomer is refused and nobody is closed.
        third.in_flight.store(1, Ordering::Release);
        fourth.in_flight.store(1, Ordering::Release);
        assert!(matches!(r.admit(), (Admission::Full, false)));
        assert!(!third.evicted.is_cancelled() && !fourth.evicted.is_cancelled());
        assert_eq!(r.slots.lock().unwrap().len(), 2);
    }
}
