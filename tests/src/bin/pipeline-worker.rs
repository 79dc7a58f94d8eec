//! A worker process running the real pipeline, for crash drills (`tests/crash.rs`): the pool
//! and the audit pass of `atr-dist run`, over a recording npm adapter whose stage never ends,
//! so that a SIGKILL always lands inside an attempt.
//!
//! Usage: pipeline-worker <redis-url> <queue> <database-url> <revisions-root> <lease-ms>

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use atr_dist::platform::Adapters;
use atr_dist::queue::Queue;
use atr_dist::queue::pool;
use atr_dist::secret::Secret;
use atr_dist_shared::Platform;
use atr_dist_tests::cases::{FAST_RETRY, pool_config};
use atr_dist_tests::pipeline_support::{RecordingAdapter, pipeline_with};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, redis_url, name, database_url, root, lease_ms] = args.as_slice() else {
        eprintln!(
            "usage: pipeline-worker <redis-url> <queue> <database-url> <revisions-root> <lease-ms>"
        );
        std::process::exit(2);
    };
    // The lock namespace its test queue has (`TestQueue`), deleted with it.
    let queue = Queue::connect(redis_url, &[], name)
        .await
        .expect("Redis reachable")
        .with_lock_namespace(&format!("atr-dist:lock:{name}:"));
    let db = atr_dist::db::connect(&Secret::new(database_url.clone()), 2)
        .await
        .expect("database reachable");
    let lease = Duration::from_millis(lease_ms.parse().expect("lease-ms"));
    let adapter = RecordingAdapter {
        stage_delay: Duration::from_secs(3600),
        ..Default::default()
    };
    let adapters = Adapters::default().with(Platform::Npm, Arc::new(adapter));
    let mut pipeline = pipeline_with(db.clone(), queue.clone(), Path::new(root), adapters);
    pipeline.lock_ttl = lease;
    let mut config = pool_config(4, FAST_RETRY);
    config.lease = lease;
    let stop = CancellationToken::new();
    let _audit = atr_dist::pipeline::audit::spawn(db, queue.clone(), lease, stop.clone());
    let shutdown = async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    };
    pool::run(queue, Arc::new(pipeline), config, shutdown, |_| {})
        .await
        .expect("pool");
}
