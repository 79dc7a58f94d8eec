//! A worker process for crash drills (`tests/crash.rs`): runs the real pool on a queue with
//! a handler that records each execution in Redis and takes a few milliseconds, so that a
//! SIGKILL lands while jobs are in flight. Prints its worker id on the first line of its
//! standard output once it runs.
//!
//! Usage: drill-worker <redis-url> <queue> <concurrency> <lease-ms>

use std::sync::Arc;
use std::time::Duration;

use atr_dist::queue::Queue;
use atr_dist::queue::pool::{self, Completion, JobError, JobHandler, RunningJob};
use atr_dist_tests::cases::{FAST_RETRY, pool_config};
use redis::AsyncCommands;

struct Recorder {
    conn: atr_dist::queue::RedisConn,
    runs_key: String,
}

impl JobHandler for Recorder {
    async fn handle(&self, job: RunningJob) -> Result<Completion, JobError> {
        let mut conn = self.conn.clone();
        let _: i64 = conn
            .hincr(&self.runs_key, &job.id, 1)
            .await
            .map_err(|e| JobError::transient(e.to_string()))?;
        tokio::time::sleep(Duration::from_millis(10 + fastrand::u64(0..20))).await;
        Ok(Completion::Done)
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, name, concurrency, lease_ms] = args.as_slice() else {
        eprintln!("usage: drill-worker <redis-url> <queue> <concurrency> <lease-ms>");
        std::process::exit(2);
    };
    // The lock namespace its test queue has (`TestQueue`), deleted with it.
    let queue = Queue::connect(url, &[], name)
        .await
        .expect("Redis reachable")
        .with_lock_namespace(&format!("atr-dist:lock:{name}:"));
    let handler = Recorder {
        conn: queue.connection(),
        runs_key: format!("{}drill:runs", queue.prefix()),
    };
    let mut config = pool_config(concurrency.parse().expect("concurrency"), FAST_RETRY);
    config.lease = Duration::from_millis(lease_ms.parse().expect("lease-ms"));
    config.fetch_batch = 32;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    // The drill kills workers that hold leases: it finds them by this id in the job records.
    pool::run(queue, Arc::new(handler), config, shutdown, |pool| {
        println!("{}", pool.worker_id)
    })
    .await
    .expect("pool");
}
