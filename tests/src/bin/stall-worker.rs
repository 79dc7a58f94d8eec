//! A worker process for the stall test (`tests/stall.rs`): runs the real pool, with one job
//! at a time, on a queue with `fence_support::GatedWriter`, so that the test can freeze it
//! (SIGSTOP) while an attempt holds the distribution lock, and wake it (SIGCONT) later.
//!
//! Usage: stall-worker <redis-url> <queue> <lease-ms>

use std::sync::Arc;
use std::time::Duration;

use atr_dist::queue::Queue;
use atr_dist::queue::pool;
use atr_dist_tests::cases::{FAST_RETRY, pool_config};
use atr_dist_tests::fence_support::GatedWriter;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, name, lease_ms] = args.as_slice() else {
        eprintln!("usage: stall-worker <redis-url> <queue> <lease-ms>");
        std::process::exit(2);
    };
    // The lock namespace its test queue has (`TestQueue`), deleted with it.
    let queue = Queue::connect(url, &[], name)
        .await
        .expect("Redis reachable")
        .with_lock_namespace(&format!("atr-dist:lock:{name}:"));
    let mut config = pool_config(1, FAST_RETRY);
    config.lease = Duration::from_millis(lease_ms.parse().expect("lease-ms"));
    let handler = GatedWriter {
        queue: queue.clone(),
        ttl: config.lease,
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    pool::run(queue, Arc::new(handler), config, shutdown, |_| {})
        .await
        .expect("pool");
}
