//! Queue behaviour cases, run against a single Redis (`tests/queue.rs`) and against a
//! three-node Redis Cluster (`tests/cluster.rs`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use atr_dist::config::{RetentionConfig, RetryConfig};
use atr_dist::queue::pool::{self, Completion, JobError, JobHandler, PoolConfig, RunningJob};
use atr_dist::queue::{
    Ack, AckOutcome, AckResult, AdminReply, IdLookup, JobDetail, JobFilter, Lease, Leased,
    PageLimit, Queue, RawJob, short_id,
};
use atr_dist_shared::{ErrorClass, JobState};
use tokio::sync::oneshot;

use crate::jobs;

/// A handler built from a closure.
pub struct FnHandler<F>(pub F);

impl<F, Fut> JobHandler for FnHandler<F>
where
    F: Fn(RunningJob) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Completion, JobError>> + Send,
{
    fn handle(&self, job: RunningJob) -> impl Future<Output = Result<Completion, JobError>> + Send {
        (self.0)(job)
    }
}

pub fn pool_config(concurrency: usize, retry: RetryConfig) -> PoolConfig {
    PoolConfig {
        concurrency,
        lease: Duration::from_secs(5),
        fetch_batch: 64,
        idle_wait: Duration::from_millis(500),
        wake_ups: true,
        job_timeout: Duration::from_secs(30),
        shutdown_timeout: Duration::from_secs(5),
        retry: Arc::new(move |_| retry),
        retention: RetentionConfig::default(),
    }
}

pub const FAST_RETRY: RetryConfig = RetryConfig {
    base_ms: 20,
    cap_ms: 100,
    max_attempts: 5,
};

/// A pool running in the background until dropped or stopped.
pub struct RunningPool {
    stop: Option<oneshot::Sender<()>>,
    join: Option<tokio::task::JoinHandle<()>>,
}

impl RunningPool {
    pub fn start<H: JobHandler>(queue: &Queue, handler: H, config: PoolConfig) -> RunningPool {
        let (tx, rx) = oneshot::channel::<()>();
        let queue = queue.clone();
        let join = tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.await;
            };
            pool::run(queue, Arc::new(handler), config, shutdown, |_| {})
                .await
                .expect("pool runs");
        });
        RunningPool {
            stop: Some(tx),
            join: Some(join),
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(join) = self.join.take() {
            join.await.expect("pool task");
        }
    }
}

impl Drop for RunningPool {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Polls `check` until it holds, failing the test after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn count(queue: &Queue, state: JobState) -> u64 {
    queue.stats().await.unwrap().counts[&state]
}

/// Leases the next `n` jobs of `queue` (500 a call) and acks each batch done, as a worker
/// would: for tests that need many done jobs without running a pool.
pub async fn finish(queue: &Queue, n: usize) {
    let mut finished = 0;
    while finished < n {
        let leased = queue
            .fetch("w1", Duration::from_secs(60), (n - finished).min(500))
            .await
            .unwrap();
        assert!(!leased.is_empty(), "{finished} of {n} leased");
        let acks: Vec<Ack> = leased
            .iter()
            .map(|job| Ack {
                lease: job.lease(),
                outcome: AckOutcome::Done,
                result: String::new(),
            })
            .collect();
        queue.ack(&acks).await.unwrap();
        finished += leased.len();
    }
}

/// A page limit for `Queue::list`.
pub fn limit(n: usize) -> PageLimit {
    PageLimit::new(n).unwrap()
}

pub async fn state_of(queue: &Queue, id: &str) -> JobState {
    queue
        .show(id)
        .await
        .unwrap()
        .expect("job exists")
        .summary
        .state
}

/// Checks that the admin views find job `id` by its short id and show it done, on whichever
/// shard (or cluster master) holds it; returns what `show` gave.
pub async fn found_by_short_id_and_done(q: &Queue, id: &str) -> JobDetail {
    assert_eq!(
        q.resolve_id(short_id(id)).await.unwrap(),
        IdLookup::Found(id.to_owned())
    );
    let shown = q.show(id).await.unwrap().expect("shown");
    assert_eq!(shown.summary.state, JobState::Done);
    shown
}

/// Redis's clock, in ms: the only clock the scripts read.
pub async fn redis_now(q: &Queue) -> i64 {
    let (secs, micros): (i64, i64) = redis::cmd("TIME")
        .query_async(&mut q.connection())
        .await
        .unwrap();
    secs * 1000 + micros / 1000
}

/// A job's score in one of the queue's sorted sets (`running`: its lease expiry;
/// `retrying`: its next attempt), in ms.
pub async fn score_in(q: &Queue, set: &str, id: &str) -> i64 {
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(format!("{}{set}", q.prefix()))
        .arg(id)
        .query_async(&mut q.connection())
        .await
        .unwrap();
    score.unwrap_or_else(|| panic!("{id} is not in {set}")) as i64
}

/// Fetches as `worker` until a job comes, and checks every answer against Redis's clock:
/// no job may come from a fetch that ran before `due` (ms, Redis's clock), and a fetch that
/// ran wholly after it must bring one. A loaded machine only makes the wait longer; it
/// cannot make the outcome differ.
pub async fn fetch_when_due(q: &Queue, worker: &str, lease: Duration, due: i64) -> Vec<Leased> {
    let start = Instant::now();
    loop {
        let before = redis_now(q).await;
        let got = q.fetch(worker, lease, 10).await.unwrap();
        let after = redis_now(q).await;
        if !got.is_empty() {
            assert!(
                after >= due,
                "a job came {} ms before its time",
                due - after
            );
            return got;
        }
        assert!(
            before < due,
            "nothing came from a fetch made {} ms after the job was due",
            before - due
        );
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no job came within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ack(job: &Leased, outcome: AckOutcome) -> Vec<Ack> {
    vec![Ack {
        lease: job.lease(),
        outcome,
        result: String::new(),
    }]
}

/// `job`'s lease as another worker, or another attempt, would present it: same job, same
/// start time, different holder.
fn forged(job: &Leased, attempt: u32, worker: &str) -> Vec<Ack> {
    // `<max_attempts> <enqueued_ms> <batch> <attempt> <started_ms> <worker_id>`
    let parts: Vec<&str> = job.token.split(' ').collect();
    let (max, enqueued, batch, started) = (parts[0], parts[1], parts[2], parts[4]);
    vec![Ack {
        lease: Lease {
            id: job.id.clone(),
            token: format!("{max} {enqueued} {batch} {attempt} {started} {worker}"),
        },
        outcome: AckOutcome::Done,
        result: String::new(),
    }]
}

pub async fn idempotent_and_bulk_enqueue(q: &Queue) {
    let env = jobs::stage(1);
    let first = q.enqueue(&env, None, 5).await.unwrap();
    assert!(first.created);
    assert_eq!(first.id, env.id.to_string());
    let again = q.enqueue(&env, None, 5).await.unwrap();
    assert_eq!(
        (again.id.as_str(), again.created),
        (first.id.as_str(), false)
    );
    // Same key, new id (a producer retrying after a crash): still the first job.
    let mut retried = jobs::stage(1);
    retried.id = atr_dist_shared::JobId::new_v7();
    let third = q.enqueue(&retried, None, 5).await.unwrap();
    assert_eq!(
        (third.id.as_str(), third.created),
        (first.id.as_str(), false)
    );
    assert_eq!(count(q, JobState::Queued).await, 1);

    let bulk: Vec<_> = (100..2600).map(jobs::stage).collect();
    let out = q.enqueue_bulk(&bulk, None, 5).await.unwrap();
    assert_eq!(out.len(), 2500);
    assert!(out.iter().all(|e| e.created));
    assert_eq!(count(q, JobState::Queued).await, 2501);
    let stats = q.stats().await.unwrap();
    assert_eq!(stats.totals.get("enqueued"), Some(&2501));

    // The envelopes go around the script (docs/wire-format.md, "enqueue"): each call's
    // become its batch, `env:<batch>`, holding only the envelopes of the jobs it created.
    let mut conn = q.connection();
    let first_batch = batch_of(q, &first.id).await;
    let kept: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(format!("{}env:{first_batch}", q.prefix()))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, vec![(first.id.clone(), env.to_json())]);
    let mut batches = std::collections::BTreeMap::<u64, usize>::new();
    for e in &out {
        *batches.entry(batch_of(q, &e.id).await).or_default() += 1;
    }
    assert_eq!(
        batches.values().copied().collect::<Vec<_>>(),
        [1000, 1000, 500]
    );
    assert!(batches.keys().all(|&b| b > first_batch), "{batches:?}");
    for (&batch, &jobs) in &batches {
        let stored: usize = redis::cmd("HLEN")
            .arg(format!("{}env:{batch}", q.prefix()))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(stored, jobs);
    }

    // A job whose id another job has, under another key, is refused without touching that
    // job's envelope; so are two jobs of one call with one id, before anything is sent.
    let mut clash = jobs::stage(2);
    clash.id = env.id;
    let err = q.enqueue(&clash, None, 5).await.unwrap_err().to_string();
    assert!(err.contains("another idempotency key"), "{err}");
    let one = jobs::stage(3);
    let mut twin = jobs::stage(4);
    twin.id = one.id;
    let twins = [one, twin];
    let err = q
        .enqueue_bulk(&twins, None, 5)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than one job of this call"), "{err}");
    let unchanged: Option<String> = redis::cmd("HGET")
        .arg(format!("{}env:{first_batch}", q.prefix()))
        .arg(&first.id)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(unchanged, Some(env.to_json()));
    assert_eq!(count(q, JobState::Queued).await, 2501);
    // `incoming` never outlives the enqueue's transaction.
    let left: bool = redis::cmd("EXISTS")
        .arg(format!("{}incoming", q.prefix()))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!left);
}

/// The envelope batch of a job: the fourth word of its record.
pub async fn batch_of(q: &Queue, id: &str) -> u64 {
    let record: String = redis::cmd("HGET")
        .arg(format!("{}jobs", q.prefix()))
        .arg(id)
        .query_async(&mut q.connection())
        .await
        .unwrap();
    record.split(' ').nth(3).unwrap().parse().unwrap()
}

pub async fn delayed_jobs_wait_for_their_time(q: &Queue) {
    let env = jobs::stage(2);
    // A second ahead of Redis's clock, which decides when it is due.
    let due = redis_now(q).await + 1000;
    let run_at = chrono::DateTime::from_timestamp_millis(due).unwrap();
    let e = q.enqueue(&env, Some(run_at), 3).await.unwrap();
    let enqueued = redis_now(q).await;
    let state = state_of(q, &e.id).await;
    // Scheduled, unless this machine took the whole second to enqueue it.
    assert!(
        state == JobState::Scheduled || (state == JobState::Queued && enqueued >= due),
        "{state} at {enqueued}, due at {due}"
    );
    let got = fetch_when_due(q, "w1", Duration::from_secs(5), due).await;
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].id.as_str(), got[0].attempt), (e.id.as_str(), 1));
}

pub async fn leases_fence_acks_and_expire(q: &Queue) {
    let e = q.enqueue(&jobs::stage(3), None, 3).await.unwrap();
    let lease = Duration::from_millis(300);
    let got = q.fetch("w1", lease, 10).await.unwrap();
    assert_eq!(got.len(), 1);
    // `<max_attempts> <enqueued_ms> <batch> <attempt> <started_ms> <worker_id>`.
    let parts: Vec<&str> = got[0].token.split(' ').collect();
    assert_eq!(
        (parts[0], parts[3], parts[5]),
        ("3", "1", "w1"),
        "{}",
        got[0].token
    );
    // A call that creates one job keeps its envelope in the shared batch 0.
    assert_eq!(parts[2], "0", "{}", got[0].token);
    // Another worker, or the wrong attempt, cannot ack.
    assert_eq!(
        q.ack(&forged(&got[0], 1, "w2")).await.unwrap(),
        vec![AckResult::Stale]
    );
    assert_eq!(
        q.ack(&forged(&got[0], 2, "w1")).await.unwrap(),
        vec![AckResult::Stale]
    );
    // Nor renew its lease.
    let hb = q
        .heartbeat("w2", lease, &[forged(&got[0], 1, "w2")[0].lease.clone()])
        .await
        .unwrap();
    assert_eq!(hb.lost, vec![e.id.clone()]);
    // A heartbeat keeps it; without one, it expires and any worker gets it back, but not
    // before.
    let hb = q.heartbeat("w1", lease, &[got[0].lease()]).await.unwrap();
    assert!(hb.lost.is_empty());
    let expiry = score_in(q, "running", &e.id).await;
    let again = fetch_when_due(q, "w2", lease, expiry).await;
    assert_eq!(again.len(), 1, "expired lease recovered");
    assert_eq!(again[0].attempt, 2);
    let hb = q.heartbeat("w1", lease, &[got[0].lease()]).await.unwrap();
    assert_eq!(
        hb.lost,
        vec![e.id.clone()],
        "the old holder learns it lost the job"
    );
    assert_eq!(
        q.ack(&ack(&got[0], AckOutcome::Done)).await.unwrap(),
        vec![AckResult::Stale]
    );
    assert_eq!(
        q.ack(&ack(&again[0], AckOutcome::Done)).await.unwrap(),
        vec![AckResult::Applied(JobState::Done)]
    );
    // Applied once only: the same ack again is stale and counts nothing.
    assert_eq!(
        q.ack(&ack(&again[0], AckOutcome::Done)).await.unwrap(),
        vec![AckResult::Stale]
    );
    assert_eq!(q.stats().await.unwrap().totals.get("done"), Some(&1));
    let detail = q.show(&e.id).await.unwrap().unwrap();
    assert!(
        detail.events.iter().any(|ev| ev.event == "lease_expired"),
        "{:?}",
        detail.events
    );
}

pub async fn retries_persist_then_dead(q: &Queue) {
    let e = q.enqueue(&jobs::stage(4), None, 3).await.unwrap();
    let lease = Duration::from_secs(5);
    let transient = |job: &Leased| {
        ack(
            job,
            AckOutcome::Retry {
                delay: Duration::from_millis(500),
                class: ErrorClass::Transient,
                message: format!("503 on attempt {}", job.attempt),
            },
        )
    };
    let mut got = q.fetch("w1", lease, 10).await.unwrap();
    for attempt in 1..=2 {
        assert_eq!(got[0].attempt, attempt);
        assert_eq!(
            q.ack(&transient(&got[0])).await.unwrap(),
            vec![AckResult::Applied(JobState::Retrying)]
        );
        // The backoff is kept in Redis: nothing to fetch until it has passed.
        let due = score_in(q, "retrying", &e.id).await;
        got = fetch_when_due(q, "w1", lease, due).await;
    }
    assert_eq!(got[0].attempt, 3);
    assert_eq!(
        q.ack(&transient(&got[0])).await.unwrap(),
        vec![AckResult::Applied(JobState::Dead)]
    );
    let d = q.show(&e.id).await.unwrap().unwrap();
    assert_eq!(d.summary.state, JobState::Dead);
    assert_eq!(
        d.summary.last_error.as_deref(),
        Some("gave up after 3 attempt(s); last error: 503 on attempt 3")
    );
    let kinds: Vec<&str> = d.events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, vec!["retry_scheduled", "retry_scheduled", "dead"]);

    let p = q.enqueue(&jobs::stage(5), None, 10).await.unwrap();
    let got = q.fetch("w1", lease, 10).await.unwrap();
    assert_eq!(got[0].id, p.id);
    let permanent = AckOutcome::Dead {
        class: ErrorClass::Permanent,
        message: "404 unknown package".into(),
    };
    assert_eq!(
        q.ack(&ack(&got[0], permanent)).await.unwrap(),
        vec![AckResult::Applied(JobState::Dead)]
    );
    assert_eq!(
        q.show(&p.id)
            .await
            .unwrap()
            .unwrap()
            .summary
            .error_class
            .as_deref(),
        Some("permanent")
    );
}

pub async fn pool_runs_retries_and_dead_letters_malformed_jobs(q: &Queue) {
    let attempts = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&attempts);
    let handler = FnHandler(move |job: RunningJob| {
        let seen = Arc::clone(&seen);
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
            match job.envelope.distribution().package.as_str() {
                "pkg-10" if job.attempt < 3 => Err(JobError::transient(format!(
                    "flaky, attempt {}",
                    job.attempt
                ))),
                "pkg-11" => Err(JobError::permanent("no such package")),
                "pkg-12" => panic!("handler bug"),
                _ => Ok(Completion::Done),
            }
        }
    });
    let good = q
        .enqueue_bulk(&(10..13).map(jobs::stage).collect::<Vec<_>>(), None, 5)
        .await
        .unwrap();
    let valid = jobs::stage(13).to_json();
    let mut value: serde_json::Value = serde_json::from_str(&valid).unwrap();
    let mut bad = Vec::new();
    let mut variant = |label: &str, f: &dyn Fn(&mut serde_json::Value) -> String| {
        let mut v = value.clone();
        let text = f(&mut v);
        bad.push((label.to_owned(), text));
    };
    variant("json", &|_| "{not json".to_owned());
    variant("version", &|v| {
        v["v"] = 7.into();
        v.to_string()
    });
    variant("kind", &|v| {
        v["kind"] = "publish".into();
        v.to_string()
    });
    variant("missing", &|v| {
        v["payload"].as_object_mut().unwrap().remove("asf_uid");
        v.to_string()
    });
    variant("oversized", &|v| {
        v["payload"]["asf_uid"] = "x".repeat(1_100_000).into();
        v.to_string()
    });
    // Replaced below by bytes that are not UTF-8, which no client of ours can enqueue.
    variant("utf8", &|v| v.to_string());
    value["id"] = "unused".into();
    let raws: Vec<RawJob> = bad
        .iter()
        .enumerate()
        .map(|(i, (label, text))| RawJob {
            id: uuid::Uuid::now_v7().to_string(),
            idempotency_key: format!("bad-{i}-{label}"),
            envelope: text.clone(),
            run_at: None,
            max_attempts: 5,
        })
        .collect();
    let bad_ids = q.enqueue_raw(&raws).await.unwrap();
    let not_utf8 = &bad_ids[bad.len() - 1].id;
    let batch = batch_of(q, not_utf8).await;
    let _: () = redis::cmd("HSET")
        .arg(format!("{}env:{batch}", q.prefix()))
        .arg(not_utf8)
        .arg(&b"{\"v\": 1, \"kind\": \"stage\xff\"}"[..])
        .query_async(&mut q.connection())
        .await
        .unwrap();
    let after = q.enqueue(&jobs::stage(14), None, 5).await.unwrap();

    let running = RunningPool::start(q, handler, pool_config(4, FAST_RETRY));
    eventually("all jobs settle", Duration::from_secs(20), || async {
        let s = q.stats().await.unwrap();
        s.counts[&JobState::Done] == 2 && s.counts[&JobState::Dead] == 8
    })
    .await;
    running.stop().await;

    assert_eq!(
        state_of(q, &good[0].id).await,
        JobState::Done,
        "flaky job succeeded on attempt 3"
    );
    assert_eq!(
        q.show(&good[0].id).await.unwrap().unwrap().summary.attempt,
        3
    );
    let permanent = q.show(&good[1].id).await.unwrap().unwrap().summary;
    assert_eq!((permanent.state, permanent.attempt), (JobState::Dead, 1));
    let panicked = q.show(&good[2].id).await.unwrap().unwrap().summary;
    assert_eq!(
        panicked.last_error.as_deref(),
        Some("the job handler panicked: handler bug")
    );
    let expected = [
        "envelope is not valid JSON",
        "envelope version 7 is not supported; this worker understands version 1",
        "unknown job kind \"publish\"",
        "missing field `asf_uid`",
        "the limit is 1048576",
        "envelope is not valid JSON",
    ];
    for (e, want) in bad_ids.iter().zip(expected) {
        let s = q.show(&e.id).await.unwrap().unwrap().summary;
        assert_eq!(s.state, JobState::Dead);
        assert_eq!(s.error_class.as_deref(), Some("malformed"));
        let msg = s.last_error.unwrap_or_default();
        assert!(msg.contains(want), "{want:?} not in {msg:?}");
    }
    assert_eq!(
        state_of(q, &after.id).await,
        JobState::Done,
        "the worker went on after bad jobs"
    );
    // 3 attempts of the flaky job, 1 each for the others; malformed jobs never reach it.
    assert_eq!(attempts.load(Ordering::SeqCst), 3 + 1 + 1 + 1);
}

pub async fn operators_list_show_retry_cancel_purge(q: &Queue) {
    let lease = Duration::from_secs(5);
    let ids: Vec<String> = q
        .enqueue_bulk(&(20..30).map(jobs::stage).collect::<Vec<_>>(), None, 1)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    // Make 4 dead, 1 running, leave 5 queued.
    let leased = q.fetch("w1", lease, 5).await.unwrap();
    let dead: Vec<Ack> = leased[..4]
        .iter()
        .map(|j| Ack {
            lease: j.lease(),
            outcome: AckOutcome::Dead {
                class: ErrorClass::Auth,
                message: "401 bad token".into(),
            },
            result: String::new(),
        })
        .collect();
    q.ack(&dead).await.unwrap();
    let running_id = leased[4].id.clone();

    let page1 = q
        .list(
            &JobFilter {
                state: Some(JobState::Dead),
                ..Default::default()
            },
            None,
            limit(3),
        )
        .await
        .unwrap();
    assert_eq!(page1.jobs.len(), 3);
    let page2 = q
        .list(
            &JobFilter {
                state: Some(JobState::Dead),
                ..Default::default()
            },
            page1.next_cursor.as_deref(),
            limit(3),
        )
        .await
        .unwrap();
    assert_eq!(page2.jobs.len(), 1);
    assert!(page2.next_cursor.is_none());
    let all = q
        .list(&JobFilter::default(), None, limit(100))
        .await
        .unwrap();
    assert_eq!(all.jobs.len(), 10);
    let none = q
        .list(
            &JobFilter {
                platform: Some("PYPI".into()),
                ..Default::default()
            },
            None,
            limit(100),
        )
        .await
        .unwrap();
    assert!(none.jobs.is_empty());
    let young = q
        .list(
            &JobFilter {
                older_than: Some(Duration::from_secs(3600)),
                ..Default::default()
            },
            None,
            limit(100),
        )
        .await
        .unwrap();
    assert!(young.jobs.is_empty(), "no job is an hour old");

    // Retry one dead job, then all that match.
    let dead_id = page1.jobs[0].id.clone();
    assert_eq!(
        q.retry(std::slice::from_ref(&dead_id), "operator retry")
            .await
            .unwrap(),
        vec![AdminReply::Changed(JobState::Queued)]
    );
    let d = q.show(&dead_id).await.unwrap().unwrap();
    assert_eq!((d.summary.state, d.summary.attempt), (JobState::Queued, 0));
    assert_eq!(d.events.last().map(|e| e.event.as_str()), Some("retried"));
    let n = q
        .retry_matching(
            &JobFilter {
                release: Some("example-1.0.0".into()),
                ..Default::default()
            },
            "bulk retry",
        )
        .await
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(count(q, JobState::Dead).await, 0);
    assert_eq!(
        q.retry(std::slice::from_ref(&running_id), "x")
            .await
            .unwrap(),
        vec![AdminReply::Unchanged(JobState::Running)]
    );

    // Cancel: queued at once, running by request, unknown ids said so.
    let queued_id = ids
        .iter()
        .find(|id| !leased.iter().any(|l| &&l.id == id))
        .unwrap()
        .clone();
    let out = q
        .cancel(
            &[queued_id.clone(), running_id.clone(), "nope".into()],
            "not needed",
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            AdminReply::Changed(JobState::Cancelled),
            AdminReply::Changed(JobState::Running),
            AdminReply::NotFound
        ]
    );
    assert_eq!(state_of(q, &queued_id).await, JobState::Cancelled);
    let hb = q
        .heartbeat("w1", lease, &[leased[4].lease()])
        .await
        .unwrap();
    assert_eq!(hb.cancel, vec![running_id.clone()]);
    q.ack(&ack(
        &leased[4],
        AckOutcome::Cancelled {
            message: "stopped".into(),
        },
    ))
    .await
    .unwrap();
    assert_eq!(state_of(q, &running_id).await, JobState::Cancelled);

    // Pause stops fetching; resume restores it.
    q.pause().await.unwrap();
    assert!(q.stats().await.unwrap().paused);
    assert!(q.fetch("w1", lease, 100).await.unwrap().is_empty());
    q.resume().await.unwrap();
    let rest = q.fetch("w1", lease, 100).await.unwrap();
    assert_eq!(rest.len(), 8);
    let done: Vec<Ack> = rest
        .iter()
        .map(|j| Ack {
            lease: j.lease(),
            outcome: AckOutcome::Done,
            result: String::new(),
        })
        .collect();
    // In two batches, so that the order they finished in is known.
    q.ack(&done[..5]).await.unwrap();
    q.ack(&done[5..]).await.unwrap();
    // Done jobs list newest first, page by page.
    let done_filter = JobFilter {
        state: Some(JobState::Done),
        ..Default::default()
    };
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = q
            .list(&done_filter, cursor.as_deref(), limit(3))
            .await
            .unwrap();
        assert!(page.jobs.len() <= 3);
        listed.extend(page.jobs.into_iter().map(|j| j.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut newest_first: Vec<String> = rest.iter().map(|j| j.id.clone()).collect();
    newest_first.reverse();
    assert_eq!(listed, newest_first);
    let stats = q.stats().await.unwrap();
    assert_eq!(stats.counts[&JobState::Done], 8);
    assert_eq!(stats.counts[&JobState::Cancelled], 2);
    assert_eq!(stats.last_hour.iter().map(|m| m.done).sum::<u64>(), 8);

    // Purge: nothing is older than an hour; everything is older than zero.
    assert_eq!(
        q.purge(JobState::Done, Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(q.purge(JobState::Done, Duration::ZERO).await.unwrap(), 8);
    assert!(q.show(&rest[0].id).await.unwrap().is_none());
    assert!(q.purge(JobState::Queued, Duration::ZERO).await.is_err());
    // A purged job's idempotency key is free again.
    let again = q.enqueue(&jobs::stage(20), None, 1).await.unwrap();
    assert_eq!(
        again.created,
        rest.iter().any(|j| j.id == ids[0]) || again.created
    );
}

pub async fn running_jobs_see_cancellation(q: &Queue) {
    let handler = FnHandler(|job: RunningJob| async move {
        // A long job that only stops when told to.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let _ = job;
        Ok(Completion::Done)
    });
    let mut config = pool_config(2, FAST_RETRY);
    config.lease = Duration::from_millis(600);
    let e = q.enqueue(&jobs::stage(40), None, 3).await.unwrap();
    let running = RunningPool::start(q, handler, config);
    eventually("job runs", Duration::from_secs(10), || async {
        state_of(q, &e.id).await == JobState::Running
    })
    .await;
    assert_eq!(
        q.cancel(std::slice::from_ref(&e.id), "operator")
            .await
            .unwrap(),
        vec![AdminReply::Changed(JobState::Running)]
    );
    eventually("job cancelled", Duration::from_secs(10), || async {
        state_of(q, &e.id).await == JobState::Cancelled
    })
    .await;
    running.stop().await;
}

/// A job that runs for several lease periods keeps its lease through the pool's heartbeats:
/// it finishes at its first attempt, and no other fetch gets it meanwhile.
pub async fn heartbeats_keep_a_long_job(q: &Queue) {
    // The job runs until the test lets it finish.
    let (finish, finished) = tokio::sync::watch::channel(false);
    let handler = FnHandler(move |_job: RunningJob| {
        let mut finished = finished.clone();
        async move {
            let _ = finished.wait_for(|done| *done).await;
            Ok(Completion::Done)
        }
    });
    let mut config = pool_config(1, FAST_RETRY);
    // Heartbeats every third of it: a heartbeat would have to be more than a second late
    // for the lease to run out.
    let lease = Duration::from_millis(1500);
    config.lease = lease;
    let e = q.enqueue(&jobs::stage(60), None, 3).await.unwrap();
    let running = RunningPool::start(q, handler, config);
    eventually("job leased", Duration::from_secs(10), || async {
        count(q, JobState::Running).await == 1
    })
    .await;
    // Past the end of the first lease, and of a second one after it, by Redis's clock: a
    // fetch finds nothing expired to recover all along.
    let until = score_in(q, "running", &e.id).await + lease.as_millis() as i64;
    while redis_now(q).await <= until {
        assert!(
            q.fetch("thief", Duration::from_secs(5), 10)
                .await
                .unwrap()
                .is_empty(),
            "the job was taken from a live worker"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    finish.send(true).unwrap();
    eventually("job done", Duration::from_secs(10), || async {
        count(q, JobState::Done).await == 1
    })
    .await;
    running.stop().await;
    let d = q.show(&e.id).await.unwrap().unwrap();
    assert_eq!(d.summary.attempt, 1, "{:?}", d.events);
    assert!(d.events.is_empty(), "{:?}", d.events);
}

pub async fn shutdown_releases_unfinished_jobs(q: &Queue) {
    let handler = FnHandler(|_job: RunningJob| async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(Completion::Done)
    });
    let mut config = pool_config(2, FAST_RETRY);
    config.shutdown_timeout = Duration::from_millis(300);
    let ids = q
        .enqueue_bulk(&(50..54).map(jobs::stage).collect::<Vec<_>>(), None, 3)
        .await
        .unwrap();
    let running = RunningPool::start(q, handler, config);
    // Two run; the pool may lease more (its next batch), and those are released too.
    eventually("jobs leased", Duration::from_secs(10), || async {
        count(q, JobState::Running).await >= 2
    })
    .await;
    running.stop().await;
    // Nothing stays leased to a stopped worker, and the interrupted attempts do not count.
    let stats = q.stats().await.unwrap();
    assert_eq!(stats.counts[&JobState::Running], 0);
    assert_eq!(stats.counts[&JobState::Queued], 4);
    for e in ids {
        assert_eq!(q.show(&e.id).await.unwrap().unwrap().summary.attempt, 0);
    }
}
