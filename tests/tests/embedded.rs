//! The embedded default's private Redis (`worker/src/embedded.rs`): started on a free
//! loopback port here, since 6379 is the shared test Redis.

use std::time::Duration;

use atr_dist::embedded;
use atr_dist_tests::free_port;
use redis::Commands;

fn answers(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300))
        .is_ok()
}

/// Writes survive a restart: the server persists to its directory and is shut down
/// cleanly (not killed) when atr-dist stops, so even the last write reaches the disk.
#[test]
fn private_redis_persists_and_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("atr-dist-redis");
    let port = free_port();

    let redis = embedded::start(port, &data).expect("redis-server installed (scripts/services.sh)");
    assert_eq!(redis.port(), port);
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = conn.set("atr-dist:{embedded}:probe", "kept").unwrap();
    drop(conn);
    let status = redis.stop().expect("redis-server exited");
    // A clean exit, not a kill: SHUTDOWN flushed the append-only file first.
    assert!(status.success(), "{status}");
    assert!(!answers(port), "the private Redis stopped with its owner");

    let redis = embedded::start(port, &data).unwrap();
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_connection()
        .unwrap();
    let kept: Option<String> = conn.get("atr-dist:{embedded}:probe").unwrap();
    assert_eq!(
        kept.as_deref(),
        Some("kept"),
        "the write just before shutdown survived"
    );
    drop(redis);
}

/// Only the default URL gets a private Redis: any other address is the operator's, and a
/// typo in it must fail to connect rather than quietly start an empty queue.
#[test]
fn only_the_default_url_gets_a_private_redis() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let data = dir.path().join("r");
    let started = embedded::ensure(&url, &data).unwrap();
    assert!(started.is_none());
    // Nothing was set up either: starting a server makes its data directory first. (Not
    // "nothing answers at the port": the other tests here bind free ports of their own, in
    // parallel, and may be handed this one as soon as `free_port` lets go of it.)
    assert!(
        !data.exists(),
        "no data directory for a server that was not started"
    );
}

/// A server that cannot start (its port is taken by something that is not Redis) is an
/// error naming what happened, not a hang.
#[test]
fn a_taken_port_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let err = match embedded::start(port, &dir.path().join("r")) {
        Ok(_) => panic!("started on a taken port"),
        Err(e) => e.to_string(),
    };
    assert!(err.starts_with("starting redis-server failed"), "{err}");
}
