//! A fault-injecting TCP proxy on loopback, in front of a database or any other TCP server:
//! it forwards bytes both ways until [`TcpProxy::cut`] is called, which resets every live
//! connection and refuses (or blackholes) new ones until [`TcpProxy::restore`]. With
//! [`TcpProxy::delay_requests`] it holds what clients send for a while before passing it
//! on, in order: a slow link, between whose requests a test can act on the server.
//!
//! It listens on 127.0.0.1 on a free port, forwards to one address on loopback, and stops
//! (closing every connection) when dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the proxy does with a connection that arrives during a cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutMode {
    /// Accept it and reset it at once: the client sees "connection reset" right away, as
    /// from a server that is down.
    Refuse,
    /// Accept it and never answer: the client waits for its own timeout, as when a network
    /// drops packets on the floor. Held until the cut ends, then reset.
    Blackhole,
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Open,
    Cut(CutMode),
}

struct State {
    mode: Mode,
    /// Cancelled by a cut: every connection forwarded before it holds a child of this.
    generation: CancellationToken,
    /// Connections reset by cuts, and connections refused or blackholed during them.
    resets: usize,
    refused: usize,
    forwarded: usize,
    /// How long each chunk from a client is held before it is passed on.
    delay: Duration,
}

/// The proxy. Dropping it stops the listener and resets every connection.
pub struct TcpProxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

impl TcpProxy {
    /// A proxy forwarding to `upstream` (which must be on loopback: tests talk to nothing
    /// else).
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        assert!(
            upstream.ip().is_loopback(),
            "the proxy forwards to loopback only"
        );
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let stop = CancellationToken::new();
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Open,
            generation: stop.child_token(),
            resets: 0,
            refused: 0,
            forwarded: 0,
            delay: Duration::ZERO,
        }));
        tokio::spawn(accept_loop(
            listener,
            upstream,
            Arc::clone(&state),
            stop.clone(),
        ));
        TcpProxy { addr, state, stop }
    }

    /// Resets every live connection, and treats new ones as `mode` says until
    /// [`TcpProxy::restore`].
    pub fn cut(&self, mode: CutMode) {
        let mut s = self.state.lock().unwrap();
        s.mode = Mode::Cut(mode);
        s.generation.cancel();
        s.generation = self.stop.child_token();
    }

    /// Forwards new connections again; connections blackholed during the cut are reset.
    pub fn restore(&self) {
        let mut s = self.state.lock().unwrap();
        s.mode = Mode::Open;
        // Blackholed connections wait on this generation's token.
        s.generation.cancel();
        s.generation = self.stop.child_token();
    }

    /// Holds every chunk a client sends from now on for `delay` before passing it on (zero:
    /// none). Chunks of one connection stay in order, each held in turn.
    pub fn delay_requests(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    /// Connections forwarded so far.
    pub fn forwarded(&self) -> usize {
        self.state.lock().unwrap().forwarded
    }

    /// Live connections reset by cuts.
    pub fn resets(&self) -> usize {
        self.state.lock().unwrap().resets
    }

    /// Connections refused or blackholed during cuts.
    pub fn refused(&self) -> usize {
        self.state.lock().unwrap().refused
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Closes `stream` with a TCP reset (RST) rather than an orderly FIN: what a client sees
/// when a server or a middlebox drops its connection.
fn reset(stream: TcpStream) {
    // SO_LINGER 0 makes close() send RST and discard what is unsent; it cannot block.
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((client, _)) = accepted else {
            continue;
        };
        let (mode, generation) = {
            let s = state.lock().unwrap();
            (s.mode, s.generation.clone())
        };
        match mode {
            Mode::Cut(CutMode::Refuse) => {
                state.lock().unwrap().refused += 1;
                reset(client);
            }
            Mode::Cut(CutMode::Blackhole) => {
                state.lock().unwrap().refused += 1;
                tokio::spawn(async move {
                    generation.cancelled().await;
                    reset(client);
                });
            }
            Mode::Open => {
                state.lock().unwrap().forwarded += 1;
                tokio::spawn(forward(client, upstream, generation, Arc::clone(&state)));
            }
        }
    }
}

/// Copies bytes both ways until either side closes or the connection's generation is cut;
/// a cut resets both sides.
async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    cut: CancellationToken,
    state: Arc<Mutex<State>>,
) {
    let connect = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(upstream));
    let mut server = match connect.await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) | Err(_) => {
            reset(client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    // In a block: the halves borrow both streams, which a cut then resets.
    let was_cut = {
        let (mut from_client, mut to_client) = client.split();
        let (mut from_server, mut to_server) = server.split();
        let requests = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match from_client.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let delay = state.lock().unwrap().delay;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if to_server.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = to_server.shutdown().await;
        };
        let replies = async {
            let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
            let _ = to_client.shutdown().await;
        };
        let both = async { tokio::join!(requests, replies) };
        tokio::select! {
            _ = both => false,
            () = cut.cancelled() => true,
        }
    };
    if was_cut {
        state.lock().unwrap().resets += 1;
        reset(client);
        reset(server);
    }
}
