//! No job is lost when worker processes are killed with SIGKILL mid-batch and replaced:
//! every one of 10,000 jobs ends done, and expired leases were really recovered. And the
//! attempts a killed worker left open in the results database are closed as abandoned.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use atr_dist::platform::Adapters;
use atr_dist::queue::Queue;
use atr_dist::secret::Secret;
use atr_dist_shared::entities::job_run;
use atr_dist_shared::job::RevisionSourceSpec;
use atr_dist_shared::{Envelope, JobState, Platform};
use atr_dist_tests::SqliteDatabase;
use atr_dist_tests::cases::{FAST_RETRY, RunningPool, eventually, pool_config};
use atr_dist_tests::jobs::{self, Dist};
use atr_dist_tests::pipeline_support::{RecordingAdapter, Revisions, pipeline_with};
use atr_dist_tests::redis_support::TestQueue;
use redis::AsyncCommands;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use tokio_util::sync::CancellationToken;

const JOBS: usize = 10_000;
/// Workers killed (and replaced) during the drill.
const KILLS: usize = 8;

struct Worker {
    child: Child,
    /// Its worker id, as in the job records of the jobs it holds.
    id: String,
}

struct Workers {
    url: String,
    queue: String,
    running: Vec<Worker>,
}

impl Workers {
    fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_drill-worker"))
            .args([&self.url, &self.queue, "16", "1500"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start drill-worker");
        let mut id = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut id)
            .expect("read the worker id");
        let id = id.trim().to_owned();
        assert!(!id.is_empty(), "drill-worker exited before it started");
        self.running.push(Worker { child, id });
    }

    /// SIGKILL: no shutdown path runs, leases are left to expire.
    fn kill_one(&mut self) {
        if self.running.is_empty() {
            return;
        }
        let mut worker = self
            .running
            .swap_remove(fastrand::usize(..self.running.len()));
        worker.child.kill().expect("SIGKILL");
        worker.child.wait().expect("reap");
    }

    /// SIGKILLs a worker that holds leases now: no shutdown path runs, and its leases are
    /// left to expire. Says whether one was found.
    fn kill_a_holder(&mut self, holders: &std::collections::HashSet<String>) -> bool {
        let candidates: Vec<usize> = (0..self.running.len())
            .filter(|&i| holders.contains(&self.running[i].id))
            .collect();
        if candidates.is_empty() {
            return false;
        }
        let i = candidates[fastrand::usize(..candidates.len())];
        let mut worker = self.running.swap_remove(i);
        worker.child.kill().expect("SIGKILL");
        worker.child.wait().expect("reap");
        true
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for worker in &mut self.running {
            let _ = worker.child.kill();
            let _ = worker.child.wait();
        }
    }
}

/// The workers that hold leases of running jobs now, by the job records (the last word of
/// `running <max> <enqueued> <batch> <attempt> <started> <worker>`).
async fn lease_holders(q: &Queue) -> std::collections::HashSet<String> {
    let mut conn = q.connection();
    let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(format!("{}running", q.prefix()))
        .arg("-inf")
        .arg("(inf")
        .arg("LIMIT")
        .arg(0)
        .arg(200)
        .query_async(&mut conn)
        .await
        .unwrap();
    if ids.is_empty() {
        return Default::default();
    }
    let records: Vec<Option<String>> = redis::cmd("HMGET")
        .arg(format!("{}jobs", q.prefix()))
        .arg(&ids)
        .query_async(&mut conn)
        .await
        .unwrap();
    records
        .into_iter()
        .flatten()
        .filter(|r| r.starts_with("running "))
        .filter_map(|r| r.rsplit(' ').next().map(str::to_owned))
        .collect()
}

async fn done(q: &Queue) -> usize {
    q.stats().await.unwrap().counts[&JobState::Done] as usize
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
        running: Vec::new(),
    };
    for _ in 0..3 {
        workers.spawn();
    }
    // Kill a worker that holds leases, and start another, each time another 5% of the jobs
    // are done: by progress, not by the clock, so that a slow or a fast machine both get
    // every kill in, while work remains (the last at 40%).
    let start = Instant::now();
    for kill in 1..=KILLS {
        let threshold = kill * JOBS / 20;
        loop {
            let done = done(q).await;
            assert!(
                done < JOBS,
                "the drill ended before kill {kill} (at {threshold} jobs done)"
            );
            if done >= threshold && workers.kill_a_holder(&lease_holders(q).await) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "kill {kill} found no moment: {done} jobs done"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        workers.spawn();
    }

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
    // Every job ran at least once. A job runs again only after an attempt of it ended
    // without `done`, and in this drill an attempt ends so only when its lease expires
    // (each counted once in `recovered`) or when the handler fails transiently (its own
    // write to Redis failing; counted in `retried`): the handler never fails otherwise,
    // SIGKILL runs no release path, and no job ran out of attempts (all are done). A
    // recovered lease whose job had not started yet (a worker leases up to twice its
    // concurrency) adds no run, hence at most, not exactly.
    let mut conn = q.connection();
    let runs: std::collections::HashMap<String, u64> = conn
        .hgetall(format!("{}drill:runs", q.prefix()))
        .await
        .unwrap();
    assert_eq!(runs.len(), JOBS);
    let extra: u64 = runs.values().map(|n| n - 1).sum();
    let retried = stats.totals.get("retried").copied().unwrap_or(0);
    assert!(
        extra <= recovered + retried,
        "{extra} re-runs for {recovered} recoveries and {retried} retries"
    );
}

async fn runs_of(db: &DatabaseConnection, job: &Envelope) -> Vec<job_run::Model> {
    job_run::Entity::find()
        .filter(job_run::Column::JobId.eq(job.id.to_string()))
        .order_by_asc(job_run::Column::Id)
        .all(db)
        .await
        .unwrap()
}

/// A worker killed inside two attempts leaves their rows open. One job has attempts left:
/// its next attempt, on another worker, closes the row. The other was on its last attempt,
/// so `fetch.lua` moves it to dead when the lease expires, and no attempt follows: the audit
/// pass of the surviving worker closes its row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_of_a_killed_worker_are_closed_as_abandoned() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let sqlite = SqliteDatabase::create();
    let db = atr_dist::db::connect(&Secret::new(sqlite.url.clone()), 2)
        .await
        .unwrap();
    atr_dist::db::migrate_up(&db).await.unwrap();
    let revs = Revisions::new();
    revs.write(
        "00001",
        &[("retried-1.0.0.tgz", b"one"), ("last-1.0.0.tgz", b"two")],
    );
    let stage = |package: &str| {
        Dist::new(Platform::Npm, "", package, "1.0.0").stage(
            "00001",
            &[&format!("{package}-1.0.0.tgz")],
            RevisionSourceSpec::Dir,
            false,
        )
    };
    let retried = stage("retried");
    let last = stage("last");
    q.enqueue(&retried, None, 2).await.unwrap();
    q.enqueue(&last, None, 1).await.unwrap();

    let lease_ms = 1000;
    let mut workers = Workers {
        url: t.url.clone(),
        queue: t.name.clone(),
        running: vec![Worker {
            child: Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
                .args([
                    &t.url,
                    &t.name,
                    &sqlite.url,
                    &revs.root().display().to_string(),
                    &lease_ms.to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start pipeline-worker"),
            // Not needed: it is the only one, and holds both jobs when it is killed.
            id: String::new(),
        }],
    };
    eventually("both attempts run", Duration::from_secs(60), || async {
        let a = runs_of(&db, &retried).await;
        let b = runs_of(&db, &last).await;
        a.len() == 1 && b.len() == 1 && a[0].finished_at.is_none() && b[0].finished_at.is_none()
    })
    .await;
    workers.kill_one();

    // Another worker, with a platform that answers.
    let pipeline = pipeline_with(
        db.clone(),
        q.clone(),
        revs.root(),
        Adapters::default().with(Platform::Npm, Arc::new(RecordingAdapter::default())),
    );
    let mut config = pool_config(2, FAST_RETRY);
    config.lease = Duration::from_millis(lease_ms);
    let pool = RunningPool::start(q, pipeline, config);
    eventually("the jobs settle", Duration::from_secs(60), || async {
        let state = |id: String| async move { q.show(&id).await.unwrap().unwrap().summary.state };
        state(retried.id.to_string()).await == JobState::Done
            && state(last.id.to_string()).await == JobState::Dead
    })
    .await;
    pool.stop().await;

    // The job with an attempt left: its next attempt closed the row.
    let runs = runs_of(&db, &retried).await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0].outcome.as_deref(), Some("abandoned"), "{runs:?}");
    let message = runs[0].message.clone().unwrap_or_default();
    assert!(
        message.contains("the worker running attempt 1 stopped before recording its end")
            && message.contains("closed when attempt 2 started"),
        "{message}"
    );
    assert_eq!(runs[1].outcome.as_deref(), Some("completed"), "{runs:?}");

    // The job that died with its lease has no next attempt: its row is still open until
    // the audit pass `atr-dist run` keeps beside the pool looks.
    assert!(runs_of(&db, &last).await[0].finished_at.is_none());
    let stop = CancellationToken::new();
    let audit = atr_dist::pipeline::audit::spawn(
        db.clone(),
        q.clone(),
        Duration::from_millis(lease_ms),
        stop.clone(),
    );
    eventually(
        "the dead job's row is closed",
        Duration::from_secs(60),
        || async { runs_of(&db, &last).await[0].finished_at.is_some() },
    )
    .await;
    stop.cancel();
    audit.await.unwrap();
    let runs = runs_of(&db, &last).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].outcome.as_deref(), Some("abandoned"), "{runs:?}");
    let message = runs[0].message.clone().unwrap_or_default();
    assert!(
        message.contains("the worker running attempt 1 stopped before recording its end")
            && message.contains("the job is dead now"),
        "{message}"
    );
    assert!(
        runs[0].duration_ms.is_none(),
        "when it stopped is not known"
    );
    drop(workers);
}
