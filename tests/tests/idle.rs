//! Idle workers and finished jobs: a pool that has nothing to do waits for a wake-up rather
//! than polling, and starts work as soon as it arrives or falls due; and it deletes finished
//! jobs past the queue's retention (docs/wire-format.md, "Waking idle workers",
//! "Retention").

use std::time::{Duration, Instant};

use atr_dist::config::{KeepConfig, RetentionConfig};
use atr_dist::queue::pool::{Completion, PoolConfig};
use atr_dist::queue::{AckOutcome, Queue};
use atr_dist_shared::JobState;
use atr_dist_tests::cases::{FAST_RETRY, FnHandler, RunningPool, count, eventually, pool_config};
use atr_dist_tests::jobs;
use atr_dist_tests::redis_support::TestQueue;
use tokio::sync::mpsc;

/// Far longer than any wait below: a job that starts sooner was woken, not polled for.
const LONG_WAIT: Duration = Duration::from_secs(30);

fn waiting_pool() -> PoolConfig {
    PoolConfig {
        idle_wait: LONG_WAIT,
        ..pool_config(2, FAST_RETRY)
    }
}

/// A pool that reports each job's start.
fn start(q: &Queue, config: PoolConfig) -> (RunningPool, mpsc::UnboundedReceiver<Instant>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = FnHandler(move |_job| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(Instant::now());
            Ok(Completion::Done)
        }
    });
    (RunningPool::start(q, handler, config), rx)
}

/// A pool that keeps the newest `max_jobs` done jobs.
fn keeping_done(max_jobs: u64) -> PoolConfig {
    let keep = KeepConfig {
        max_age_days: 0,
        max_jobs,
    };
    PoolConfig {
        retention: RetentionConfig {
            done: keep,
            ..RetentionConfig::default()
        },
        ..pool_config(2, FAST_RETRY)
    }
}

async fn next_start(rx: &mut mpsc::UnboundedReceiver<Instant>, within: Duration) -> Instant {
    tokio::time::timeout(within, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no job started within {within:?}"))
        .expect("pool running")
}

/// Lets the pool find the queue empty and settle into its wait.
async fn until_idle(q: &Queue) {
    eventually(
        "the pool waits for work",
        Duration::from_secs(10),
        || async {
            let waiting: u64 = redis::cmd("ZCARD")
                .arg(format!("{}idle", q.prefix()))
                .query_async(&mut q.connection())
                .await
                .unwrap();
            waiting > 0
        },
    )
    .await;
}

#[tokio::test]
async fn an_idle_pool_starts_an_enqueued_job_at_once() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let (pool, mut started) = start(q, waiting_pool());
    until_idle(q).await;
    for n in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent = Instant::now();
        q.enqueue(&jobs::stage(n), None, 3).await.unwrap();
        let at = next_start(&mut started, Duration::from_secs(10)).await;
        assert!(
            at.duration_since(sent) < Duration::from_secs(2),
            "job {n} started {:?} after its enqueue",
            at.duration_since(sent)
        );
    }
    pool.stop().await;
}

/// An idle pool waits: over a second with nothing to do it sends Redis a handful of
/// commands (about 15 here, counting those its scripts run), not fetch after fetch (a pool
/// that ignored fetch.lua's "wait" sent 21,000). On a redis-server of the test's own, so
/// that its command counts are this pool's alone.
#[tokio::test]
async fn an_idle_pool_sends_redis_almost_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let redis = atr_dist_tests::fault_drill::PrivateRedis::ephemeral(dir.path());
    let t = TestQueue::on(&redis.url(), &[]).await;
    let q = &t.queue;
    let (pool, _started) = start(q, waiting_pool());
    until_idle(q).await;
    // Every command the server has run: the `calls=` of each line of INFO commandstats.
    let commands = || async {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut q.connection())
            .await
            .unwrap();
        info.lines()
            .filter_map(|l| l.split("calls=").nth(1))
            .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    let before = commands().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = commands().await - before;
    assert!(sent < 50, "{sent} commands in a second of idling");
    pool.stop().await;
}

#[tokio::test]
async fn an_idle_pool_starts_a_delayed_job_when_it_falls_due() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let (pool, mut started) = start(q, waiting_pool());
    until_idle(q).await;
    let run_at = chrono::Utc::now() + chrono::Duration::milliseconds(800);
    q.enqueue(&jobs::stage(1), Some(run_at), 3).await.unwrap();
    let at = next_start(&mut started, Duration::from_secs(10)).await;
    let late = chrono::Utc::now() - run_at;
    assert!(
        late < chrono::Duration::seconds(3),
        "started {late} after it fell due ({at:?})"
    );
    pool.stop().await;
}

#[tokio::test]
async fn an_idle_pool_runs_a_retry_when_its_backoff_ends() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let job = q.enqueue(&jobs::stage(1), None, 3).await.unwrap();
    let leased = q
        .fetch("elsewhere", Duration::from_secs(60), 1)
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);
    let (pool, mut started) = start(q, waiting_pool());
    until_idle(q).await;
    // Another worker's attempt fails: the job is retried in 500 ms.
    q.ack(&[atr_dist::queue::Ack {
        lease: leased[0].lease(),
        outcome: AckOutcome::Retry {
            delay: Duration::from_millis(500),
            class: atr_dist_shared::ErrorClass::Transient,
            message: "503".into(),
        },
        result: String::new(),
    }])
    .await
    .unwrap();
    next_start(&mut started, Duration::from_secs(5)).await;
    eventually("the retry is done", Duration::from_secs(5), || async {
        count(q, JobState::Done).await == 1
    })
    .await;
    assert_eq!(q.show(&job.id).await.unwrap().unwrap().summary.attempt, 2);
    pool.stop().await;
}

#[tokio::test]
async fn a_paused_pool_starts_work_as_soon_as_the_queue_is_resumed() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    q.enqueue(&jobs::stage(1), None, 3).await.unwrap();
    q.pause().await.unwrap();
    let (pool, mut started) = start(q, waiting_pool());
    until_idle(q).await;
    let resumed = Instant::now();
    q.resume().await.unwrap();
    let at = next_start(&mut started, Duration::from_secs(10)).await;
    assert!(at.duration_since(resumed) < Duration::from_secs(2));
    pool.stop().await;
}

#[tokio::test]
async fn a_polling_pool_still_runs_jobs() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let config = PoolConfig {
        wake_ups: false,
        idle_wait: Duration::from_millis(50),
        ..pool_config(2, FAST_RETRY)
    };
    let (pool, mut started) = start(q, config);
    tokio::time::sleep(Duration::from_millis(200)).await;
    q.enqueue(&jobs::stage(1), None, 3).await.unwrap();
    next_start(&mut started, Duration::from_secs(5)).await;
    let waiting: u64 = redis::cmd("EXISTS")
        .arg(format!("{}idle", q.prefix()))
        .query_async(&mut q.connection())
        .await
        .unwrap();
    assert_eq!(waiting, 0, "a polling pool never registers as waiting");
    pool.stop().await;
}

#[tokio::test]
async fn the_pool_deletes_finished_jobs_past_the_retention() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let all: Vec<_> = (0..6).map(jobs::stage).collect();
    q.enqueue_bulk(&all, None, 3).await.unwrap();
    let (pool, _started) = start(q, keeping_done(2));
    eventually("six jobs done", Duration::from_secs(10), || async {
        q.stats().await.unwrap().totals.get("done").copied() == Some(6)
    })
    .await;
    // Retention runs within a second of the start, then every 10 s.
    eventually(
        "the done list trimmed to 2",
        Duration::from_secs(15),
        || async { count(q, JobState::Done).await == 2 },
    )
    .await;
    let stats = q.stats().await.unwrap();
    assert_eq!(stats.totals.get("purged").copied(), Some(4));
    assert_eq!(stats.retention[&JobState::Done].max_jobs, Some(2));
    assert_eq!(stats.retention[&JobState::Done].max_age_secs, None);
    pool.stop().await;
}

/// One retention round deletes everything past the retention, step after step (a step is
/// 100 jobs), not one step a round: a queue that finished 250 jobs is trimmed to 2 before
/// the next round, 10 s after the first.
#[tokio::test]
async fn one_retention_round_deletes_more_than_a_step() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let all: Vec<_> = (0..250).map(jobs::stage).collect();
    q.enqueue_bulk(&all, None, 3).await.unwrap();
    // Finished first by a pool that keeps them all.
    let (pool, _started) = start(q, pool_config(8, FAST_RETRY));
    eventually("250 jobs done", Duration::from_secs(30), || async {
        count(q, JobState::Done).await == 250
    })
    .await;
    pool.stop().await;
    // The first round comes within a second of the start.
    let (pool, _started) = start(q, keeping_done(2));
    eventually(
        "the done list trimmed to 2 in the first round",
        Duration::from_secs(8),
        || async { count(q, JobState::Done).await == 2 },
    )
    .await;
    pool.stop().await;
}
