//! No job is lost when worker processes are killed with SIGKILL mid-batch and replaced:
//! every one of 10,000 jobs ends done, and expired leases were really recovered.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use atr_dist_shared::JobState;
use atr_dist_tests::jobs;
use atr_dist_tests::redis_support::TestQueue;
use redis::AsyncCommands;

const JOBS: usize = 10_000;

struct Workers {
    url: String,
    queue: String,
    children: Vec<Child>,
}

impl Workers {
    fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_drill-worker"))
            .args([&self.url, &self.queue, "16", "1500"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start drill-worker");
        self.children.push(child);
    }

    /// SIGKILL: no shutdown path runs, leases are left to expire.
    fn kill_one(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let i = fastrand::usize(..self.children.len());
        let mut child = self.children.swap_remove(i);
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_job_lost_when_workers_are_killed() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let envelopes: Vec<_> = (0..JOBS).map(jobs::stage).collect();
    q.enqueue_bulk(&envelopes, None, 20).await.unwrap();

    let mut workers = Workers {
        url: t.url.clone(),
        queue: t.name.clone(),
        children: Vec::new(),
    };
    for _ in 0..3 {
        workers.spawn();
    }
    // Kill and replace a worker every 400 ms while work remains, up to 8 times.
    let mut kills = 0;
    while kills < 8 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let done = q.stats().await.unwrap().counts[&JobState::Done];
        if done as usize >= JOBS {
            break;
        }
        workers.kill_one();
        workers.spawn();
        kills += 1;
    }
    assert!(
        kills >= 3,
        "the drill ended before enough kills ({kills}); slow the handler down"
    );

    let start = Instant::now();
    loop {
        let stats = q.stats().await.unwrap();
        if stats.counts[&JobState::Done] as usize == JOBS {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "jobs did not all finish: {:?}",
            stats.counts
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(workers);

    let stats = q.stats().await.unwrap();
    for state in JobState::ALL {
        let expected = if state == JobState::Done {
            JOBS as u64
        } else {
            0
        };
        assert_eq!(
            stats.counts[&state], expected,
            "{state}: {:?}",
            stats.counts
        );
    }
    // Killed workers held leases: those jobs came back through lease expiry.
    let recovered = stats.totals.get("recovered").copied().unwrap_or(0);
    assert!(recovered > 0, "no lease was recovered: {:?}", stats.totals);
    // Every job ran at least once; the re-runs are the recovered ones (at-least-once).
    let mut conn = q.connection();
    let runs: std::collections::HashMap<String, u64> = conn
        .hgetall(format!("{}drill:runs", q.prefix()))
        .await
        .unwrap();
    assert_eq!(runs.len(), JOBS);
    let extra: u64 = runs.values().map(|n| n - 1).sum();
    assert!(
        extra <= recovered + 8 * 16 * 2,
        "{extra} re-runs for {recovered} recoveries"
    );
}
