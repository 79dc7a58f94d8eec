//! The HTTP server under clients that hold connections open: slow headers, stalled bodies,
//! and a flood of half-open connections while the worker needs files of its own.
//!
//! A test binary of its own: the flood test lowers this process's open-file limit to
//! reproduce running out of descriptors without exhausting the machine's.
//! Every server listens on 127.0.0.1:0 and is stopped by its test; every client connection is
//! to it, bounded in number, and closed by the end of the test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use atr_dist::config::Config;
use atr_dist::http::{self, AppState, HttpError};
use atr_dist::queue::pool::{Completion, RunningJob};
use atr_dist::secret::Secret;
use atr_dist_tests::cases::{FAST_RETRY, FnHandler, RunningPool, eventually, pool_config};
use atr_dist_tests::redis_support::TestQueue;
use atr_dist_tests::{SqliteDatabase, jobs};
use sea_orm::ConnectionTrait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "test-admin-token-0123456789abcdef";
/// Far longer than any close the tests wait for: a connection still open after it was held.
const DEADLINE: Duration = Duration::from_secs(30);

struct Server {
    addr: std::net::SocketAddr,
    t: TestQueue,
    shutdown: CancellationToken,
    join: Option<JoinHandle<Result<(), HttpError>>>,
    _db: SqliteDatabase,
}

impl Server {
    async fn start(configure: impl FnOnce(&mut Config)) -> Server {
        let t = TestQueue::new().await;
        let sqlite = SqliteDatabase::create();
        let db = atr_dist::db::connect(&Secret::new(sqlite.url.clone()), 4)
            .await
            .unwrap();
        atr_dist::db::migrate_up(&db).await.unwrap();
        let mut config = Config::default();
        config.http.admin_token = Some(Secret::new(TOKEN));
        config.http.open_reads = Some(true);
        configure(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let state = AppState::new(t.queue.clone(), db, &config, shutdown.clone());
        Server {
            addr,
            t,
            shutdown,
            join: Some(tokio::spawn(http::serve(listener, state))),
            _db: sqlite,
        }
    }

    async fn get(&self, path: &str) -> reqwest::StatusCode {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .status()
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(join) = self.join.take() {
            tokio::time::timeout(Duration::from_secs(15), join)
                .await
                .expect("the server stops on its shutdown token")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Reads until the server closes the connection (end of stream or reset): true when it does
/// within `within`. Bytes it sends first (an error response) are read and dropped.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn slow_headers_and_stalled_bodies_are_cut_off() {
    let s = Server::start(|c| {
        c.http.header_read_timeout_secs = 1;
        c.http.idle_timeout_secs = 2;
    })
    .await;

    // Headers that never end.
    let mut slow = TcpStream::connect(s.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .unwrap();
    assert!(
        closed_within(&mut slow, DEADLINE).await,
        "a client that never finishes its headers is still connected after {DEADLINE:?}"
    );

    // A body that stops arriving, on a request the handler reads (an enqueue).
    let mut stalled = TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 4096\r\n\r\n{{\"jobs\": ["
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    assert!(
        closed_within(&mut stalled, DEADLINE).await,
        "a request whose body stalls is still connected after {DEADLINE:?}"
    );

    // A normal request is unaffected, and the server stops promptly.
    assert_eq!(s.get("/healthz").await, reqwest::StatusCode::OK);
    s.stop().await;
}

fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .expect("/proc/self/fd lists this process's descriptors")
}

#[tokio::test]
async fn a_connection_flood_is_capped_and_the_worker_keeps_its_files() {
    const CAP: usize = 32;
    const FLOOD: usize = 300;
    let s = Server::start(|c| {
        // Long timeouts: the connections that close here are closed by the cap.
        c.http.header_read_timeout_secs = 120;
        c.http.idle_timeout_secs = 120;
        c.http.max_connections = CAP;
    })
    .await;
    // A worker whose jobs each open a new SQLite database, as the pipeline's do.
    let opened: Arc<Mutex<Vec<Result<(), String>>>> = Arc::default();
    let record = Arc::clone(&opened);
    let pool = RunningPool::start(
        &s.t.queue,
        FnHandler(move |_job: RunningJob| {
            let record = Arc::clone(&record);
            async move {
                let file = SqliteDatabase::create();
                let result = match atr_dist::db::connect(&Secret::new(file.url.clone()), 1).await {
                    Ok(db) => db
                        .execute_unprepared("CREATE TABLE t (x INTEGER)")
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                record.lock().unwrap().push(result);
                Ok(Completion::Done)
            }
        }),
        pool_config(2, FAST_RETRY),
    );

    // The limit the issue hit: enough descriptors for the flood's client ends, the capped
    // server ends and the worker, but not for a server that keeps every connection open.
    let before = atr_dist::fd_limit::raise_to_hard().unwrap();
    let limit = open_descriptors() + FLOOD as u64 + CAP as u64 + 128;
    assert!(
        before.soft.is_none_or(|soft| soft >= limit),
        "the test needs an open-file limit of at least {limit}: {before:?}"
    );
    atr_dist::fd_limit::set_soft(limit).unwrap();

    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let mut conn = TcpStream::connect(s.addr).await.unwrap();
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await
            .unwrap();
        flood.push(conn);
    }
    let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watchers: Vec<JoinHandle<()>> = flood
        .into_iter()
        .map(|mut conn| {
            let closed = Arc::clone(&closed);
            tokio::spawn(async move {
                if closed_within(&mut conn, DEADLINE).await {
                    closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            })
        })
        .collect();
    eventually(
        "the server to close all but max_connections of the flood",
        DEADLINE,
        || async { closed.load(std::sync::atomic::Ordering::SeqCst) >= FLOOD - CAP },
    )
    .await;

    // Health checks are answered and the worker opens its files while the flood holds on.
    assert_eq!(s.get("/healthz").await, reqwest::StatusCode::OK);
    assert_eq!(s.get("/readyz").await, reqwest::StatusCode::OK);
    for n in 0..3 {
        s.t.queue.enqueue(&jobs::stage(n), None, 1).await.unwrap();
    }
    eventually("three jobs run", DEADLINE, || async {
        opened.lock().unwrap().len() >= 3
    })
    .await;
    for result in opened.lock().unwrap().iter() {
        assert!(
            result.is_ok(),
            "a job could not open its database: {result:?}"
        );
    }

    for watcher in watchers {
        watcher.abort();
    }
    pool.stop().await;
    s.stop().await;
    // What `atr-dist run` and `serve` do at start: back to the hard limit.
    let raised = atr_dist::fd_limit::raise_to_hard().unwrap();
    assert_eq!(raised.soft, raised.hard);
}
