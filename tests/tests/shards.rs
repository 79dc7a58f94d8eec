//! A queue sharded over several hash tags on one Redis (docs/wire-format.md, "Shards"):
//! the shard count and its resize rules, shard choice by distribution, workers that fetch
//! from and wake for every shard, and operator views that add the shards up. The same on a
//! real Redis Cluster is in `cluster.rs`.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use atr_dist::queue::pool::{Completion, JobError, PoolConfig, RunningJob};
use atr_dist::queue::shards::SHARD_COUNT_CACHE;
use atr_dist::queue::{
    AdminReply, JobFilter, MinuteStats, Queue, QueueError, ShardCount, shard_key, shard_of,
};
use atr_dist_shared::job::RevisionSourceSpec;
use atr_dist_shared::{Envelope, JobState, Platform};
use atr_dist_tests::cases::{
    FAST_RETRY, FnHandler, RunningPool, eventually, found_by_short_id_and_done, limit, pool_config,
};
use atr_dist_tests::jobs::{self, Dist};
use atr_dist_tests::redis_monitor::{Commands, has_arg, runs};
use atr_dist_tests::redis_support::TestQueue;
use redis::AsyncCommands;

fn shards(n: u32) -> ShardCount {
    ShardCount::new(n).unwrap()
}

/// The shard, of `count`, that `envelope` goes to.
fn home(envelope: &Envelope, count: u32) -> u32 {
    shard_of(&shard_key(&envelope.to_json()).unwrap(), count)
}

/// Jobs `stage(n)` for `n` in `range` whose shard of `count` is `shard`.
fn jobs_on(shard: u32, count: u32, range: std::ops::Range<usize>) -> Vec<Envelope> {
    range
        .map(jobs::stage)
        .filter(|e| home(e, count) == shard)
        .collect()
}

async fn jobs_in(q: &Queue, shard: u32) -> u64 {
    q.connection()
        .hlen(format!("{}jobs", q.shard(shard).prefix()))
        .await
        .unwrap()
}

fn done_pool(q: &Queue, config: PoolConfig) -> RunningPool {
    RunningPool::start(q, FnHandler(|_job| async { Ok(Completion::Done) }), config)
}

#[tokio::test]
async fn resizing_marks_every_shard_and_never_drops_jobs() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    assert_eq!(q.read_shard_count().await.unwrap(), ShardCount::ONE);
    let first = q.enqueue(&jobs::stage(1), None, 3).await.unwrap().id;
    let mut conn = q.connection();
    let format: String = conn.get(format!("{}format", q.prefix())).await.unwrap();
    assert_eq!(format, "7", "an unsharded queue stays in version 7");

    let resize = q.resize(shards(3)).await.unwrap();
    assert_eq!((resize.from.get(), resize.to.get()), (1, 3));
    for shard in 0..3 {
        let format: String = conn
            .get(format!("{}format", q.shard(shard).prefix()))
            .await
            .unwrap();
        assert_eq!(format, "8", "shard {shard}: version 7 clients refuse it");
    }
    let stored: String = conn.get(format!("{}shards", q.prefix())).await.unwrap();
    assert_eq!(stored, "3");
    assert_eq!(q.shard_count().await.unwrap().get(), 3);

    // A job on shard 2 keeps the queue from losing that shard.
    let on_2 = jobs_on(2, 3, 100..200).remove(0);
    let id = q.enqueue(&on_2, None, 3).await.unwrap().id;
    assert_eq!(jobs_in(q, 2).await, 1);
    let refused = q.resize(shards(2)).await.unwrap_err();
    assert!(
        matches!(&refused, QueueError::NotNow(m) if m.contains("shard 2: 1 job(s)")),
        "{refused}"
    );
    assert_eq!(q.read_shard_count().await.unwrap().get(), 3);

    // Once they are finished and purged, the shards can go.
    let cancelled = q.cancel(&[id, first], "test").await.unwrap();
    assert_eq!(cancelled, [AdminReply::Changed(JobState::Cancelled); 2]);
    assert_eq!(
        q.purge(JobState::Cancelled, Duration::ZERO).await.unwrap(),
        2
    );
    let resize = q.resize(shards(2)).await.unwrap();
    assert_eq!((resize.from.get(), resize.to.get()), (3, 2));
    assert_eq!(q.read_shard_count().await.unwrap().get(), 2);

    // Back to one shard: the key goes, as for a queue never sharded.
    q.resize(ShardCount::ONE).await.unwrap();
    let stored: Option<String> = conn.get(format!("{}shards", q.prefix())).await.unwrap();
    assert_eq!(stored, None);
    assert_eq!(q.shard_count().await.unwrap(), ShardCount::ONE);
}

/// A handle reads the shard count from Redis at most once per `SHARD_COUNT_CACHE` (every
/// enqueue and fetch round asks for it), and no longer: a producer that kept it longer
/// would still send jobs by the old count after a resize had waited its caches out.
#[tokio::test]
async fn a_handle_keeps_the_shard_count_for_a_second_and_no_longer() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    // The count as another handle (an operator's resize) leaves it in Redis.
    let mut conn = q.connection();
    let key = format!("{}shards", q.prefix());
    // Within the second the handle answers from what it read, even when Redis changed
    // meanwhile. Tried until one round fits well inside the second (a loaded machine can
    // stall a round).
    let mut kept = false;
    for _ in 0..5 {
        let _: () = conn.del(&key).await.unwrap();
        let read = Instant::now();
        assert_eq!(q.read_shard_count().await.unwrap(), ShardCount::ONE);
        let _: () = conn.set(&key, 2).await.unwrap();
        let answer = q.shard_count().await.unwrap();
        if read.elapsed() < SHARD_COUNT_CACHE / 2 {
            assert_eq!(
                answer,
                ShardCount::ONE,
                "read from Redis again within the second"
            );
            kept = true;
            break;
        }
    }
    assert!(kept, "no round fitted in half a second");
    // After the second the handle reads Redis again, and sees the new count.
    tokio::time::sleep(SHARD_COUNT_CACHE).await;
    assert_eq!(q.shard_count().await.unwrap().get(), 2);
}

#[tokio::test]
async fn a_queue_in_an_older_format_is_not_sharded() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let _: () = q
        .connection()
        .set(format!("{}format", q.prefix()), "6")
        .await
        .unwrap();
    let refused = q.resize(shards(2)).await.unwrap_err().to_string();
    assert!(refused.contains("atr-dist queue migrate"), "{refused}");
    assert_eq!(q.read_shard_count().await.unwrap(), ShardCount::ONE);
}

#[tokio::test]
async fn one_distribution_stays_on_one_shard_and_keeps_its_idempotency() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    q.resize(shards(6)).await.unwrap();
    let dist = Dist::new(Platform::Npm, "", "one-dist", "2.0.0");
    let stage = dist.stage("00001", &["a.tgz"], RevisionSourceSpec::Dir, true);
    let promote = dist.promote("00001", RevisionSourceSpec::Dir, "rm");
    let shard = home(&stage, 6);
    assert_eq!(home(&promote, 6), shard);
    let first = q
        .enqueue_bulk(&[stage.clone(), promote.clone()], None, 3)
        .await
        .unwrap();
    assert!(first.iter().all(|e| e.created));
    assert_eq!(jobs_in(q, shard).await, 2, "both on shard {shard}");
    let again = q.enqueue_bulk(&[stage, promote], None, 3).await.unwrap();
    assert!(
        again.iter().all(|e| !e.created),
        "the same keys name the same jobs"
    );
    assert_eq!(
        again.iter().map(|e| &e.id).collect::<Vec<_>>(),
        first.iter().map(|e| &e.id).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_sharded_queue_is_worked_off_and_its_views_add_the_shards_up() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    q.resize(shards(3)).await.unwrap();
    let envelopes: Vec<Envelope> = (0..30).map(jobs::stage).collect();
    let enqueued = q.enqueue_bulk(&envelopes, None, 3).await.unwrap();
    let mut used = BTreeSet::new();
    for (envelope, job) in envelopes.iter().zip(&enqueued) {
        let shard = home(envelope, 3);
        used.insert(shard);
        let held: bool = q
            .connection()
            .hexists(format!("{}jobs", q.shard(shard).prefix()), &job.id)
            .await
            .unwrap();
        assert!(held, "job {} on shard {shard}", job.id);
    }
    assert_eq!(used.len(), 3, "30 distributions use all 3 shards");
    let stats = q.stats().await.unwrap();
    assert_eq!(stats.shards, 3);
    assert_eq!(stats.counts[&JobState::Queued], 30);
    assert_eq!(stats.totals["enqueued"], 30);

    // Attempts fail on every shard, and jobs die on two, so that each view adds up failures
    // of several shards, not one shard's plus zeros: on each shard the second and third
    // job fail once (transient) and are done on their retry, and on shards 1 and 2 the
    // fourth fails for good. The first job of each shard runs once and is done.
    let mut fail_once = HashSet::new();
    let mut fail_for_good = HashSet::new();
    for shard in 0..3 {
        let ids: Vec<&String> = envelopes
            .iter()
            .zip(&enqueued)
            .filter(|(e, _)| home(e, 3) == shard)
            .map(|(_, job)| &job.id)
            .collect();
        assert!(ids.len() >= 4, "shard {shard} has {} jobs", ids.len());
        fail_once.extend([ids[1].clone(), ids[2].clone()]);
        if shard > 0 {
            fail_for_good.insert(ids[3].clone());
        }
    }
    let (fail_once, fail_for_good) = (Arc::new(fail_once), Arc::new(fail_for_good));
    let (once, for_good) = (Arc::clone(&fail_once), Arc::clone(&fail_for_good));
    let handler = FnHandler(move |job: RunningJob| {
        let (fail_once, fail_for_good) = (Arc::clone(&once), Arc::clone(&for_good));
        async move {
            if fail_for_good.contains(&job.id) {
                return Err(JobError::permanent("404 no such package"));
            }
            if job.attempt == 1 && fail_once.contains(&job.id) {
                return Err(JobError::transient("503 from the registry"));
            }
            Ok(Completion::Done)
        }
    });
    let pool = RunningPool::start(q, handler, pool_config(4, FAST_RETRY));
    eventually("every job has ended", Duration::from_secs(20), || async {
        let counts = q.stats().await.unwrap().counts;
        counts[&JobState::Done] == 28 && counts[&JobState::Dead] == 2
    })
    .await;
    let stats = q.stats().await.unwrap();
    assert_eq!(stats.workers, 1, "the worker counts once");
    // Six retries and two deaths: eight failed attempts, of all three shards.
    for (name, n) in [
        ("enqueued", 30),
        ("done", 28),
        ("retried", 6),
        ("dead", 2),
        ("failed", 8),
    ] {
        assert_eq!(stats.totals[name], n, "totals[{name}]");
    }
    let minutes = |f: fn(&MinuteStats) -> u64| stats.last_hour.iter().map(f).sum::<u64>();
    assert_eq!(
        [
            minutes(|m| m.enqueued),
            minutes(|m| m.done),
            minutes(|m| m.failed),
            minutes(|m| m.dead),
        ],
        [30, 28, 8, 2],
        "the minutes add the shards up (enqueued, done, failed, dead)"
    );
    pool.stop().await;

    // Listing pages through every shard, each job once.
    let filter = JobFilter {
        state: Some(JobState::Done),
        ..JobFilter::default()
    };
    let mut listed = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = q.list(&filter, cursor.as_deref(), limit(7)).await.unwrap();
        for job in &page.jobs {
            assert!(listed.insert(job.id.clone()), "{} listed twice", job.id);
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let all: BTreeSet<String> = enqueued
        .iter()
        .map(|e| e.id.clone())
        .filter(|id| !fail_for_good.contains(id))
        .collect();
    assert_eq!(listed, all);

    // A job of shard 2 is found by its short id, shown, and retried there.
    let (envelope, job) = envelopes
        .iter()
        .zip(&enqueued)
        .find(|(e, _)| home(e, 3) == 2)
        .unwrap();
    let shown = found_by_short_id_and_done(q, &job.id).await;
    assert_eq!(
        shown.summary.idempotency_key,
        envelope.idempotency_key.to_string()
    );
    let positions = q.positions(std::slice::from_ref(&job.id)).await.unwrap();
    assert_eq!(positions, [Some((JobState::Done, 1))]);
    let replies = q
        .retry(&[job.id.clone(), "no-such-job".to_owned()], "test")
        .await
        .unwrap();
    assert_eq!(
        replies,
        [AdminReply::Refused(JobState::Done), AdminReply::NotFound]
    );
    assert_eq!(q.purge(JobState::Done, Duration::ZERO).await.unwrap(), 28);
    assert_eq!(q.stats().await.unwrap().counts[&JobState::Done], 0);
}

#[tokio::test]
async fn operators_cancel_retry_pause_and_resume_every_shard() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    q.resize(shards(3)).await.unwrap();
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let envelopes: Vec<Envelope> = (0..12).map(jobs::stage).collect();
    let ids: Vec<String> = q
        .enqueue_bulk(&envelopes, Some(later), 3)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    let replies = q.cancel(&ids, "test").await.unwrap();
    assert!(
        replies
            .iter()
            .all(|r| *r == AdminReply::Changed(JobState::Cancelled)),
        "{replies:?}"
    );
    q.pause().await.unwrap();
    assert!(q.stats().await.unwrap().paused);
    let replies = q.retry(&ids, "test").await.unwrap();
    assert!(
        replies
            .iter()
            .all(|r| *r == AdminReply::Changed(JobState::Queued)),
        "{replies:?}"
    );
    let pool = done_pool(q, pool_config(2, FAST_RETRY));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        q.stats().await.unwrap().counts[&JobState::Queued],
        12,
        "paused on every shard"
    );
    q.resume().await.unwrap();
    eventually("every job is done", Duration::from_secs(10), || async {
        q.stats().await.unwrap().counts[&JobState::Done] == 12
    })
    .await;
    pool.stop().await;
}

#[tokio::test]
async fn an_idle_worker_wakes_for_work_on_any_shard() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    q.resize(shards(3)).await.unwrap();
    // Every command Redis runs on this queue, in the order it runs them.
    let seen = Commands::monitor(&t, &[&FETCH, &ENQUEUE]).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = FnHandler(move |_job| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(Instant::now());
            Ok(Completion::Done)
        }
    });
    // Far longer than the waits measured: a job that starts sooner was woken, not polled for.
    // One job at a time, so that the pool fetches only when its slot is free: a round of
    // one fetch a shard at the start and after each job, then a wait.
    let config = PoolConfig {
        idle_wait: Duration::from_secs(30),
        ..pool_config(1, FAST_RETRY)
    };
    let pool = RunningPool::start(q, handler, config);
    let mut latencies = Vec::new();
    let mut since = 0;
    for (round, shard) in [2, 0, 1, 2, 1].into_iter().enumerate() {
        // The first round of fetches, or the last job's and the round after it: the pool
        // leased nothing from any shard, and waits on all three.
        let fetches = if round == 0 { 3 } else { 4 };
        eventually(
            "the pool waits on every shard",
            Duration::from_secs(10),
            || async { fetches_since(&seen, since, q) >= fetches },
        )
        .await;
        let envelope = jobs_on(shard, 3, 1000 * round..1000 * (round + 1)).remove(0);
        since = seen.len();
        let sent = Instant::now();
        q.enqueue(&envelope, None, 3).await.unwrap();
        let started = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the job started")
            .unwrap();
        latencies.push(started - sent);
        // Woken by shard `shard`, the pool fetched from it first: one round trip, not one
        // a shard.
        let first = first_fetch_after_enqueue(&seen, since, q).await;
        assert_eq!(
            first, shard,
            "round {round}: the first fetch after the wake-up"
        );
    }
    pool.stop().await;
    println!("wake-up latency per round: {latencies:?}");
    for latency in latencies {
        assert!(
            latency < Duration::from_secs(2),
            "woken, not polled for: {latency:?}"
        );
    }
}

/// The shard whose prefix `line` names, if it runs `script`.
fn shard_run(line: &str, script: &redis::Script, q: &Queue) -> Option<u32> {
    if !runs(line, script) {
        return None;
    }
    (0..3).find(|&i| has_arg(line, q.shard(i).prefix()))
}

/// The fetches after `mark`.
fn fetches_since(seen: &Commands, mark: usize, q: &Queue) -> usize {
    seen.since(mark)
        .iter()
        .filter(|l| shard_run(l, &FETCH, q).is_some())
        .count()
}

/// The shard of the first fetch after the first enqueue after `mark`.
async fn first_fetch_after_enqueue(seen: &Commands, mark: usize, q: &Queue) -> u32 {
    let enqueue = seen
        .wait_for("the enqueue", mark, |l| shard_run(l, &ENQUEUE, q).is_some())
        .await;
    let fetch = seen
        .wait_for("a fetch after the enqueue", enqueue, |l| {
            shard_run(l, &FETCH, q).is_some()
        })
        .await;
    shard_run(&seen.since(fetch)[0], &FETCH, q).unwrap()
}

static FETCH: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../../lua/fetch.lua")));
static ENQUEUE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(atr_dist::queue::ENQUEUE_LUA));

#[tokio::test]
async fn a_running_worker_serves_shards_added_meanwhile() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    // A heartbeat every second, which reads the shard count.
    let config = PoolConfig {
        lease: Duration::from_secs(3),
        ..pool_config(2, FAST_RETRY)
    };
    let pool = done_pool(q, config);
    eventually("the worker is live", Duration::from_secs(5), || async {
        q.stats().await.unwrap().workers == 1
    })
    .await;
    q.resize(shards(4)).await.unwrap();
    let envelopes = jobs_on(3, 4, 0..200);
    q.enqueue_bulk(&envelopes, None, 3).await.unwrap();
    assert_eq!(jobs_in(q, 3).await, envelopes.len() as u64);
    eventually(
        "the jobs of shard 3 are done",
        Duration::from_secs(10),
        || async { q.stats().await.unwrap().counts[&JobState::Done] == envelopes.len() as u64 },
    )
    .await;
    pool.stop().await;
}

/// A shard whose fetch fails (here a key of the wrong type, so that fetch.lua fails with
/// WRONGTYPE there) does not hold up the others: a fetch round that meets it goes on to the
/// next shard. Were the round to fail at the broken shard instead, every round starting
/// there would leave the worker idle for the backend's pause after a failed fetch (a
/// second), and with one job leased per round and rounds taking turns at the first shard,
/// the 40 jobs below would take some 20 seconds rather than a fraction of one.
#[tokio::test]
async fn a_broken_shard_does_not_hold_up_the_others() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    q.resize(shards(2)).await.unwrap();
    let envelopes: Vec<Envelope> = jobs_on(1, 2, 0..200).into_iter().take(40).collect();
    assert_eq!(envelopes.len(), 40);
    q.enqueue_bulk(&envelopes, None, 3).await.unwrap();
    // fetch.lua reads `retrying` (ZRANGEBYSCORE) on every call; nothing the pool does on
    // starting (format check, heartbeat, retention) reads it.
    let _: () = q
        .connection()
        .set(
            format!("{}retrying", q.shard(0).prefix()),
            "not a sorted set",
        )
        .await
        .unwrap();
    let config = PoolConfig {
        fetch_batch: 1,
        ..pool_config(1, FAST_RETRY)
    };
    let started = Instant::now();
    let pool = done_pool(q, config);
    let done_on_1 = format!("{}done", q.shard(1).prefix());
    eventually(
        "shard 1's jobs are done despite shard 0",
        Duration::from_secs(10),
        || async {
            let n: u64 = q.connection().llen(&done_on_1).await.unwrap();
            n == 40
        },
    )
    .await;
    println!("40 jobs of shard 1 in {:?}", started.elapsed());
    pool.stop().await;
}

/// Acks that finish together go to Redis in one batch, and a batch that mixes shards is
/// split by shard: each job's ack goes to its own shard. (Sent to another shard, an ack
/// finds no job there, and the job waits out its lease to run again.)
#[tokio::test]
async fn acks_of_several_shards_in_one_batch_each_reach_their_shard() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    q.resize(shards(2)).await.unwrap();
    let envelopes = [
        jobs_on(0, 2, 0..100).remove(0),
        jobs_on(1, 2, 0..100).remove(0),
    ];
    q.enqueue_bulk(&envelopes, None, 3).await.unwrap();
    let go = Arc::new(tokio::sync::Semaphore::new(0));
    let handler = {
        let go = Arc::clone(&go);
        FnHandler(move |_job| {
            let go = Arc::clone(&go);
            async move {
                go.acquire().await.unwrap().forget();
                Ok(Completion::Done)
            }
        })
    };
    let pool = RunningPool::start(q, handler, pool_config(2, FAST_RETRY));
    eventually(
        "a job runs on each shard",
        Duration::from_secs(10),
        || async { q.stats().await.unwrap().counts[&JobState::Running] == 2 },
    )
    .await;
    // Both end at once: their acks meet in the acker.
    go.add_permits(2);
    // Far less than the lease (5 s): no job waited for its lease to run out.
    eventually("both are done", Duration::from_secs(2), || async {
        q.stats().await.unwrap().counts[&JobState::Done] == 2
    })
    .await;
    for shard in 0..2 {
        assert_eq!(jobs_in(q, shard).await, 1, "shard {shard}");
    }
    pool.stop().await;
}

/// A busy pool takes the shards in turn: each fetch starts one shard further than the last,
/// so with work on every shard, consecutive fetches go to shard 0, 1, 2, 0, 1, 2, ...
#[tokio::test]
async fn a_busy_pool_takes_the_shards_in_turn() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    q.resize(shards(3)).await.unwrap();
    let seen = Commands::monitor(&t, &[&FETCH]).await;
    for shard in 0..3 {
        q.enqueue_bulk(&jobs_on(shard, 3, 0..300)[..20], None, 3)
            .await
            .unwrap();
    }
    let pool = done_pool(q, pool_config(1, FAST_RETRY));
    eventually("nine fetches", Duration::from_secs(10), || async {
        fetches_since(&seen, 0, q) >= 9
    })
    .await;
    pool.stop().await;
    let order: Vec<u32> = seen
        .since(0)
        .iter()
        .filter_map(|l| shard_run(l, &FETCH, q))
        .take(9)
        .collect();
    assert_eq!(order, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
}

/// `queue stats` shows the queue paused when any shard is, not only shard 0 (a pause that
/// reached some shards before its operator was cut off).
#[tokio::test]
async fn stats_show_the_queue_paused_when_any_shard_is() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    q.resize(shards(3)).await.unwrap();
    assert!(!q.stats().await.unwrap().paused);
    let _: () = q
        .connection()
        .set(format!("{}paused", q.shard(2).prefix()), 1)
        .await
        .unwrap();
    assert!(q.stats().await.unwrap().paused, "shard 2 is paused");
    q.resume().await.unwrap();
    assert!(!q.stats().await.unwrap().paused);
}

/// A listing cursor that names a shard the queue no longer has (it was resized down since)
/// resumes at the next state, not at the start of the same one.
#[tokio::test]
async fn a_cursor_naming_a_shard_gone_since_resumes_at_the_next_state() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let queued = q.enqueue(&jobs::stage(1), None, 3).await.unwrap().id;
    let scheduled = q.enqueue(&jobs::stage(2), Some(later), 3).await.unwrap().id;
    let filter = JobFilter::default();
    let all = q.list(&filter, None, limit(10)).await.unwrap();
    let ids: Vec<&str> = all.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, [queued.as_str(), scheduled.as_str()]);
    for cursor in ["queued:0:2", "queued:0:1"] {
        let page = q.list(&filter, Some(cursor), limit(10)).await.unwrap();
        let ids: Vec<&str> = page.jobs.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, [scheduled.as_str()], "{cursor}");
    }
}
