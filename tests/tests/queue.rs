//! The Redis queue against a real Redis: each test its own queue, deleted afterwards.

use atr_dist_tests::cases;
use atr_dist_tests::redis_support::{TestQueue, key_slot};
use atr_dist_tests::tcp_proxy::TcpProxy;

#[tokio::test]
async fn idempotent_and_bulk_enqueue() {
    let t = TestQueue::new().await;
    cases::idempotent_and_bulk_enqueue(&t.queue).await;
}

#[tokio::test]
async fn delayed_jobs_wait_for_their_time() {
    let t = TestQueue::new().await;
    cases::delayed_jobs_wait_for_their_time(&t.queue).await;
}

#[tokio::test]
async fn leases_fence_acks_and_expire() {
    let t = TestQueue::new().await;
    cases::leases_fence_acks_and_expire(&t.queue).await;
}

#[tokio::test]
async fn retries_persist_then_dead() {
    let t = TestQueue::new().await;
    cases::retries_persist_then_dead(&t.queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_runs_retries_and_dead_letters_malformed_jobs() {
    let t = TestQueue::new().await;
    cases::pool_runs_retries_and_dead_letters_malformed_jobs(&t.queue).await;
}

#[tokio::test]
async fn operators_list_show_retry_cancel_purge() {
    let t = TestQueue::new().await;
    cases::operators_list_show_retry_cancel_purge(&t.queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_jobs_see_cancellation() {
    let t = TestQueue::new().await;
    cases::running_jobs_see_cancellation(&t.queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_long_job() {
    let t = TestQueue::new().await;
    cases::heartbeats_keep_a_long_job(&t.queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_unfinished_jobs() {
    let t = TestQueue::new().await;
    cases::shutdown_releases_unfinished_jobs(&t.queue).await;
}

#[tokio::test]
async fn every_key_of_a_queue_is_in_one_slot() {
    let t = TestQueue::new().await;
    cases::retries_persist_then_dead(&t.queue).await;
    cases::leases_fence_acks_and_expire(&t.queue).await;
    cases::delayed_jobs_wait_for_their_time(&t.queue).await;
    let e = t
        .queue
        .enqueue(&atr_dist_tests::jobs::stage(99), None, 1)
        .await
        .unwrap();
    t.queue.cancel(&[e.id], "test").await.unwrap();
    t.queue.pause().await.unwrap();
    let keys = t.keys().await;
    assert!(keys.len() > 10, "{keys:?}");
    let slot = key_slot(&format!("{}queued", t.queue.prefix()));
    for key in &keys {
        assert_eq!(key_slot(key), slot, "{key} is in another slot");
    }
}

/// A backlog of 100,000 jobs drains to the end: nothing stuck, lost or left leased. (How fast
/// is the benchmark's business: `queue-bench`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_a_100k_backlog() {
    use atr_dist::queue::pool::Completion;
    use atr_dist_shared::JobState;
    use cases::{FAST_RETRY, FnHandler, RunningPool, eventually, pool_config};
    use std::time::Duration;

    const N: usize = 100_000;
    let t = TestQueue::new().await;
    let envelopes: Vec<_> = (0..N).map(atr_dist_tests::jobs::stage).collect();
    let created = t.queue.enqueue_bulk(&envelopes, None, 3).await.unwrap();
    assert!(created.iter().all(|e| e.created));
    assert_eq!(cases::count(&t.queue, JobState::Queued).await, N as u64);
    let mut config = pool_config(64, FAST_RETRY);
    config.fetch_batch = 256;
    let pool = RunningPool::start(
        &t.queue,
        FnHandler(|_| async { Ok(Completion::Done) }),
        config,
    );
    eventually("100k jobs done", Duration::from_secs(600), || async {
        cases::count(&t.queue, JobState::Done).await == N as u64
    })
    .await;
    pool.stop().await;
    let stats = t.queue.stats().await.unwrap();
    for state in JobState::ALL {
        let expected = if state == JobState::Done { N as u64 } else { 0 };
        assert_eq!(stats.counts[&state], expected, "{state}");
    }
}

/// The hash of a job in `state` as version 1's scripts wrote it.
fn v1_job(env: &atr_dist_shared::Envelope, state: &str) -> [(&'static str, String); 11] {
    [
        ("envelope", env.to_json()),
        ("state", state.to_owned()),
        ("attempt", "0".to_owned()),
        ("max_attempts", "3".to_owned()),
        ("kind", "stage".to_owned()),
        ("release", env.release().key().to_string()),
        ("platform", "NPM".to_owned()),
        ("idempotency_key", env.idempotency_key.to_string()),
        ("enqueued_at", "1764300000000".to_owned()),
        ("run_at", "1764300000000".to_owned()),
        ("queued_at", "1764300000000".to_owned()),
    ]
}

/// A queue written in wire format 1 (built here key by key, as version 1's scripts left it)
/// is refused by version 3 clients until `migrate` moves it; afterwards its jobs run and
/// their idempotency keys still hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_queue_is_refused_until_migrated() {
    use atr_dist::queue::{Ack, AckOutcome, MigrationReport};
    use atr_dist_shared::JobState;
    use redis::AsyncCommands;
    use std::time::Duration;

    let t = TestQueue::new().await;
    let q = &t.queue;
    let p = q.prefix().to_owned();
    let mut conn = q.connection();
    let queued = atr_dist_tests::jobs::stage(1);
    let dead = atr_dist_tests::jobs::stage(2);
    for (env, state) in [(&queued, "queued"), (&dead, "dead")] {
        let id = env.id.to_string();
        let _: () = conn
            .hset_multiple(format!("{p}job:{id}"), &v1_job(env, state))
            .await
            .unwrap();
        let _: () = conn
            .set(format!("{p}idem:{}", env.idempotency_key), &id)
            .await
            .unwrap();
    }
    let _: () = conn
        .rpush(format!("{p}queued"), queued.id.to_string())
        .await
        .unwrap();
    let _: () = conn
        .zadd(format!("{p}dead"), dead.id.to_string(), 1764300000000_i64)
        .await
        .unwrap();

    // A worker starting on it stops with the fix, an empty queue with no format being new.
    let err = q.check_format().await.unwrap_err().to_string();
    assert!(
        err.contains("holds jobs but has no format key, so it is in wire format 1")
            && err.contains("run `atr-dist queue migrate`"),
        "{err}"
    );
    TestQueue::new().await.queue.check_format().await.unwrap();

    // Version 3 clients refuse it, saying what to run, and change nothing.
    let lease = Duration::from_secs(30);
    let err = q.fetch("w1", lease, 10).await.unwrap_err().to_string();
    assert!(err.contains("atr-dist queue migrate"), "{err}");
    let err = q
        .enqueue(&atr_dist_tests::jobs::stage(3), None, 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("wire format 1"), "{err}");
    assert_eq!(cases::count(q, JobState::Queued).await, 1);

    // Not while a worker is alive.
    q.heartbeat("w1", lease, &[]).await.unwrap();
    let err = q.migrate().await.unwrap_err().to_string();
    assert!(err.contains("1 worker(s)"), "{err}");
    assert!(
        err.contains("runs out in 30 s") || err.contains("runs out in 29 s"),
        "{err}"
    );
    let _: () = conn.del(format!("{p}workers")).await.unwrap();

    assert_eq!(
        q.migrate().await.unwrap(),
        MigrationReport { jobs: 2, moved: 2 }
    );
    assert_eq!(
        q.migrate().await.unwrap(),
        MigrationReport { jobs: 2, moved: 0 },
        "a second run changes nothing"
    );
    let keys = t.keys().await;
    assert!(
        !keys
            .iter()
            .any(|k| k.contains(":idem:") || k.contains(":job:")),
        "{keys:?}"
    );

    // What the operator sees is unchanged, and the keys still name their jobs.
    let shown = q.show(&dead.id.to_string()).await.unwrap().unwrap();
    assert_eq!(shown.summary.state, JobState::Dead);
    assert_eq!(shown.summary.release, dead.release().key().to_string());
    assert_eq!(shown.summary.platform, "NPM");
    assert_eq!(shown.summary.max_attempts, 3);
    assert_eq!(
        shown.summary.enqueued_at.map(|t| t.timestamp_millis()),
        Some(1764300000000)
    );
    assert_eq!(
        shown.summary.finished_at.map(|t| t.timestamp_millis()),
        Some(1764300000000)
    );
    assert_eq!(
        shown.summary.idempotency_key,
        dead.idempotency_key.to_string()
    );
    assert_eq!(shown.envelope, dead.to_json());
    let again = q.enqueue(&queued, None, 1).await.unwrap();
    assert_eq!((again.id, again.created), (queued.id.to_string(), false));

    // The queued job runs, envelope and all.
    let leased = q.fetch("w2", lease, 10).await.unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].envelope, queued.to_json().into_bytes());
    assert_eq!(leased[0].attempt, 1);
    assert_eq!(leased[0].max_attempts, 3);
    let acked = q
        .ack(&[Ack {
            lease: leased[0].lease(),
            outcome: AckOutcome::Done,
            result: String::new(),
        }])
        .await
        .unwrap();
    assert_eq!(
        acked,
        vec![atr_dist::queue::AckResult::Applied(JobState::Done)]
    );
}

/// A version 1 queue holding more jobs in one state than `migrate` moves in one step (500)
/// is migrated whole: every page, the last short one too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_queue_of_many_jobs_is_migrated_whole() {
    use atr_dist::queue::MigrationReport;
    use atr_dist_shared::JobState;

    let t = TestQueue::new().await;
    let q = &t.queue;
    let p = q.prefix().to_owned();
    let jobs: Vec<_> = (0..1001).map(atr_dist_tests::jobs::stage).collect();
    let mut pipe = redis::pipe();
    for env in &jobs {
        let id = env.id.to_string();
        pipe.hset_multiple(format!("{p}job:{id}"), &v1_job(env, "queued"))
            .ignore()
            .set(format!("{p}idem:{}", env.idempotency_key), &id)
            .ignore()
            .rpush(format!("{p}queued"), &id)
            .ignore();
    }
    let _: () = pipe.query_async(&mut q.connection()).await.unwrap();

    assert_eq!(
        q.migrate().await.unwrap(),
        MigrationReport {
            jobs: 1001,
            moved: 1001
        }
    );
    assert_eq!(cases::count(q, JobState::Queued).await, 1001);
    let last = jobs.last().unwrap();
    let again = q.enqueue(last, None, 1).await.unwrap();
    assert_eq!((again.id, again.created), (last.id.to_string(), false));
}

/// Writes a job's envelope to the queue's hash `hash` (versions 2 to 4 kept them all in
/// `envelopes`) and its idempotency key to `idempotency`, as an older producer did.
async fn store_envelope_and_key(
    conn: &mut atr_dist::queue::RedisConn,
    prefix: &str,
    hash: &str,
    env: &atr_dist_shared::Envelope,
) {
    use redis::AsyncCommands;
    let id = env.id.to_string();
    let _: () = conn
        .hset(format!("{prefix}{hash}"), &id, env.to_json())
        .await
        .unwrap();
    let _: () = conn
        .hset(
            format!("{prefix}idempotency"),
            env.idempotency_key.to_string(),
            &id,
        )
        .await
        .unwrap();
}

/// A wire format 2 queue (job hashes holding state, envelopes and keys already in their
/// hashes) is refused until `migrate` moves it; a job that was running keeps its attempt and
/// holder, so its expired lease is recovered as attempt 2, and a retrying one keeps its error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_queue_is_refused_until_migrated() {
    use atr_dist::queue::MigrationReport;
    use atr_dist_shared::JobState;
    use redis::AsyncCommands;
    use std::time::Duration;

    let t = TestQueue::new().await;
    let q = &t.queue;
    let p = q.prefix().to_owned();
    let mut conn = q.connection();
    let running = atr_dist_tests::jobs::stage(1);
    let retrying = atr_dist_tests::jobs::stage(2);
    let done = atr_dist_tests::jobs::stage(3);
    let _: () = conn.set(format!("{p}format"), "2").await.unwrap();
    let fields = [
        (
            &running,
            vec![
                ("state", "running"),
                ("attempt", "1"),
                ("max_attempts", "4"),
                ("enqueued_at", "1764300000000"),
                ("started_at", "1764300001000"),
                ("worker", "old-host-1-0000abcd"),
            ],
        ),
        (
            &retrying,
            vec![
                ("state", "retrying"),
                ("attempt", "2"),
                ("max_attempts", "5"),
                ("enqueued_at", "1764300000000"),
                ("run_at", "4102444800000"),
                ("error_class", "transient"),
                ("last_error", "503 from the registry"),
            ],
        ),
        (
            &done,
            vec![
                ("state", "done"),
                ("attempt", "1"),
                ("max_attempts", "3"),
                ("enqueued_at", "1764300000000"),
                ("started_at", "1764300002000"),
                ("finished_at", "1764300003000"),
                ("worker", "old-host-1-0000abcd"),
            ],
        ),
    ];
    for (env, f) in &fields {
        let id = env.id.to_string();
        let _: () = conn.hset_multiple(format!("{p}job:{id}"), f).await.unwrap();
        store_envelope_and_key(&mut conn, &p, "envelopes", env).await;
    }
    // The running job's lease ran out long ago: its worker is gone.
    let _: () = conn
        .zadd(
            format!("{p}running"),
            running.id.to_string(),
            1764300031000_i64,
        )
        .await
        .unwrap();
    let _: () = conn
        .zadd(
            format!("{p}retrying"),
            retrying.id.to_string(),
            4102444800000_i64,
        )
        .await
        .unwrap();
    let _: () = conn
        .zadd(format!("{p}done"), done.id.to_string(), 1764300003000_i64)
        .await
        .unwrap();

    let lease = Duration::from_secs(30);
    let err = q.fetch("w1", lease, 10).await.unwrap_err().to_string();
    assert!(err.contains("wire format 2"), "{err}");
    let err = q.check_format().await.unwrap_err().to_string();
    assert!(err.contains("atr-dist queue migrate"), "{err}");

    assert_eq!(
        q.migrate().await.unwrap(),
        MigrationReport { jobs: 3, moved: 3 }
    );
    q.check_format().await.unwrap();
    let keys = t.keys().await;
    assert!(
        !keys
            .iter()
            .any(|k| k.contains(":job:") || k.contains("migrating") || k.ends_with(":envelopes")),
        "{keys:?}"
    );
    assert_eq!(
        q.migrate().await.unwrap(),
        MigrationReport { jobs: 3, moved: 0 },
        "a second run changes nothing"
    );

    // The done sorted set is now the list of finished jobs, each record ending with the time
    // it finished; and purge takes it from there.
    let shown = q.show(&done.id.to_string()).await.unwrap().unwrap().summary;
    assert_eq!(shown.state, JobState::Done);
    assert_eq!(shown.attempt, 1);
    assert_eq!(
        shown.finished_at.map(|t| t.timestamp_millis()),
        Some(1764300003000)
    );
    assert_eq!(cases::count(q, JobState::Done).await, 1);
    assert_eq!(q.purge(JobState::Done, Duration::ZERO).await.unwrap(), 1);
    assert_eq!(cases::count(q, JobState::Done).await, 0);

    let shown = q
        .show(&retrying.id.to_string())
        .await
        .unwrap()
        .unwrap()
        .summary;
    assert_eq!(shown.state, JobState::Retrying);
    assert_eq!((shown.attempt, shown.max_attempts), (2, 5));
    assert_eq!(shown.error_class.as_deref(), Some("transient"));
    assert_eq!(shown.last_error.as_deref(), Some("503 from the registry"));
    assert_eq!(
        shown.run_at.map(|t| t.timestamp_millis()),
        Some(4102444800000)
    );
    let shown = q
        .show(&running.id.to_string())
        .await
        .unwrap()
        .unwrap()
        .summary;
    assert_eq!(shown.worker.as_deref(), Some("old-host-1-0000abcd"));
    assert_eq!(
        shown.started_at.map(|t| t.timestamp_millis()),
        Some(1764300001000)
    );

    let leased = q.fetch("w2", lease, 10).await.unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].id, running.id.to_string());
    assert_eq!((leased[0].attempt, leased[0].max_attempts), (2, 4));
    let shown = q.show(&running.id.to_string()).await.unwrap().unwrap();
    assert!(
        shown.events.iter().any(|e| e.event == "lease_expired"
            && e.message
                .as_deref()
                .is_some_and(|m| m.contains("old-host-1-0000abcd"))),
        "{:?}",
        shown.events
    );
}

/// `enqueue_raw` keeps each job's own run_at and max_attempts, although `enqueue.lua` takes
/// them once per call: jobs that differ go in separate calls, in order.
#[tokio::test]
async fn raw_jobs_keep_their_own_run_at_and_attempts() {
    use atr_dist::queue::{RawJob, raw_job};
    use atr_dist_shared::JobState;

    let t = TestQueue::new().await;
    let q = &t.queue;
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let raws: Vec<RawJob> = [(None, 2), (None, 2), (Some(later), 2), (None, 5)]
        .into_iter()
        .enumerate()
        .map(|(i, (run_at, max))| raw_job(&atr_dist_tests::jobs::stage(70 + i), run_at, max))
        .collect();
    let out = q.enqueue_raw(&raws).await.unwrap();
    let ids: Vec<&str> = out.iter().map(|e| e.id.as_str()).collect();
    let wanted: Vec<&str> = raws.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, wanted);
    assert!(out.iter().all(|e| e.created));
    let mut seen = Vec::new();
    for id in ids {
        let s = q.show(id).await.unwrap().unwrap().summary;
        seen.push((
            s.state,
            s.max_attempts,
            s.run_at.map(|t| t.timestamp_millis()),
        ));
    }
    assert_eq!(
        seen,
        vec![
            (JobState::Queued, 2, None),
            (JobState::Queued, 2, None),
            (JobState::Scheduled, 2, Some(later.timestamp_millis())),
            (JobState::Queued, 5, None),
        ]
    );
}

/// `running` keeps a permanent member longer than 64 bytes, scored +inf, so Redis stores it
/// as a skiplist even with a handful of leases (a listpack would scan the set on every insert
/// and removal); counts, listings and lease expiry never see that member.
#[tokio::test]
async fn running_leases_stay_out_of_the_listpack_encoding() {
    use atr_dist::queue::JobFilter;
    use atr_dist_shared::JobState;
    use std::time::Duration;

    let t = TestQueue::new().await;
    let q = &t.queue;
    let mut conn = q.connection();
    for i in 0..3 {
        q.enqueue(&atr_dist_tests::jobs::stage(80 + i), None, 3)
            .await
            .unwrap();
    }
    // A lease that runs out at once: the next fetch recovers the job, and must not take the
    // keeper for an expired lease.
    let first = q.fetch("w1", Duration::ZERO, 1).await.unwrap();
    let leased = q.fetch("w2", Duration::from_secs(60), 10).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(
        leased.len(),
        3,
        "two fresh jobs and the one whose lease ran out"
    );
    assert!(leased.iter().any(|l| l.id == first[0].id && l.attempt == 2));

    let running = format!("{}running", q.prefix());
    let encoding: String = redis::cmd("OBJECT")
        .arg("ENCODING")
        .arg(&running)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(encoding, "skiplist");
    let members: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(&running)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(members.len(), 4, "{members:?}");
    let (keeper, score) = members.last().unwrap();
    assert!(keeper.len() > 64 && score.is_infinite(), "{members:?}");

    assert_eq!(atr_dist_tests::cases::count(q, JobState::Running).await, 3);
    let page = q
        .list(
            &JobFilter {
                state: Some(JobState::Running),
                ..Default::default()
            },
            None,
            atr_dist_tests::cases::limit(100),
        )
        .await
        .unwrap();
    let mut listed: Vec<String> = page.jobs.into_iter().map(|j| j.id).collect();
    let mut wanted: Vec<String> = leased.iter().map(|l| l.id.clone()).collect();
    listed.sort();
    wanted.sort();
    assert_eq!(listed, wanted);
}

/// Version 3 and 4 queues (one `envelopes` hash; records without a batch) are refused until
/// `migrate` moves them: the envelopes go to batch 0, every record gains its batch, and what
/// the operator sees, the idempotency keys, leases and purge carry on. In the version 4
/// queue, `env:0` exists already, as after an interrupted migration that an older producer
/// wrote to again, so the envelopes are moved in steps rather than renamed.
#[tokio::test]
async fn versions_3_and_4_are_refused_until_migrated() {
    use atr_dist::queue::MigrationReport;
    use atr_dist_shared::JobState;
    use redis::AsyncCommands;
    use std::time::Duration;

    const KEEPER: &str = "~keeper: a permanent member that keeps this set out of the listpack encoding (docs/wire-format.md)";
    for format in ["3", "4"] {
        let t = TestQueue::new().await;
        let q = &t.queue;
        let p = q.prefix().to_owned();
        let mut conn = q.connection();
        let queued = atr_dist_tests::jobs::stage(1);
        let running = atr_dist_tests::jobs::stage(2);
        let done = atr_dist_tests::jobs::stage(3);
        let dead = atr_dist_tests::jobs::stage(4);
        let records = [
            (&queued, "queued 3 1764300000000"),
            // Its lease ran out long ago: its worker is gone.
            (
                &running,
                "running 4 1764300000000 1 1764300001000 old-host-1-0000abcd",
            ),
            (
                &done,
                "done 3 1764300000000 1 1764300002000 old-host-1-0000abcd 1764300003000",
            ),
            (
                &dead,
                "dead 3 1764300000000 3 1764300004000 old-host-1-0000abcd",
            ),
        ];
        let _: () = conn.set(format!("{p}format"), format).await.unwrap();
        for (env, record) in records {
            let id = env.id.to_string();
            let _: () = conn.hset(format!("{p}jobs"), &id, record).await.unwrap();
            // The first job's envelope is in batch 0 already (version 4 only).
            let hash = if format == "4" && env.id == queued.id {
                "env:0"
            } else {
                "envelopes"
            };
            store_envelope_and_key(&mut conn, &p, hash, env).await;
        }
        let _: () = conn
            .rpush(format!("{p}queued"), queued.id.to_string())
            .await
            .unwrap();
        let _: () = conn
            .zadd(
                format!("{p}running"),
                running.id.to_string(),
                1764300031000_i64,
            )
            .await
            .unwrap();
        if format == "4" {
            let _: () = conn
                .zadd(format!("{p}running"), KEEPER, "inf")
                .await
                .unwrap();
        }
        let _: () = conn
            .rpush(format!("{p}done"), done.id.to_string())
            .await
            .unwrap();
        let _: () = conn
            .zadd(format!("{p}dead"), dead.id.to_string(), 1764300005000_i64)
            .await
            .unwrap();

        let lease = Duration::from_secs(30);
        let err = q.fetch("w1", lease, 10).await.unwrap_err().to_string();
        assert!(err.contains(&format!("wire format {format}")), "{err}");
        let err = q
            .enqueue(&atr_dist_tests::jobs::stage(5), None, 1)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("atr-dist queue migrate"), "{err}");
        let err = q.check_format().await.unwrap_err().to_string();
        assert!(err.contains("atr-dist queue migrate"), "{err}");
        assert!(
            !t.keys().await.iter().any(|k| k.ends_with(":incoming")),
            "a refused enqueue leaves no envelopes behind"
        );

        assert_eq!(
            q.migrate().await.unwrap(),
            MigrationReport { jobs: 4, moved: 4 },
            "format {format}"
        );
        q.check_format().await.unwrap();
        let keys = t.keys().await;
        assert!(!keys.iter().any(|k| k.ends_with(":envelopes")), "{keys:?}");
        let in_batch_0: u64 = conn.hlen(format!("{p}env:0")).await.unwrap();
        assert_eq!(in_batch_0, 4);
        let record: String = conn
            .hget(format!("{p}jobs"), done.id.to_string())
            .await
            .unwrap();
        assert_eq!(
            record,
            "done 3 1764300000000 0 1 1764300002000 old-host-1-0000abcd 1764300003000"
        );
        // Interrupted before `format` was set, it runs again and moves nothing twice.
        let _: () = conn.set(format!("{p}format"), format).await.unwrap();
        assert_eq!(
            q.migrate().await.unwrap(),
            MigrationReport { jobs: 4, moved: 0 },
            "a second run changes nothing"
        );
        let again: String = conn
            .hget(format!("{p}jobs"), done.id.to_string())
            .await
            .unwrap();
        assert_eq!(again, record);

        // What the operator sees is unchanged.
        let shown = q.show(&done.id.to_string()).await.unwrap().unwrap();
        assert_eq!(shown.summary.state, JobState::Done);
        assert_eq!(shown.summary.attempt, 1);
        assert_eq!(
            shown.summary.finished_at.map(|t| t.timestamp_millis()),
            Some(1764300003000)
        );
        assert_eq!(shown.summary.release, done.release().key().to_string());
        assert_eq!(shown.envelope, done.to_json());
        let shown = q.show(&dead.id.to_string()).await.unwrap().unwrap().summary;
        assert_eq!((shown.state, shown.attempt), (JobState::Dead, 3));
        assert_eq!(
            shown.finished_at.map(|t| t.timestamp_millis()),
            Some(1764300005000)
        );
        // The keys still name their jobs.
        let again = q.enqueue(&queued, None, 1).await.unwrap();
        assert_eq!((again.id, again.created), (queued.id.to_string(), false));

        // The queued job and the one whose lease expired run, envelopes and all; the expired
        // attempt counts.
        let mut leased = q.fetch("w2", lease, 10).await.unwrap();
        leased.sort_by_key(|l| l.attempt);
        assert_eq!(leased.len(), 2);
        assert_eq!(leased[0].id, queued.id.to_string());
        assert_eq!(leased[0].envelope, queued.to_json().into_bytes());
        assert_eq!((leased[1].attempt, leased[1].max_attempts), (2, 4));
        assert_eq!(leased[1].envelope, running.to_json().into_bytes());

        // Purge finds the envelopes in batch 0, and frees the keys with them.
        assert_eq!(q.purge(JobState::Done, Duration::ZERO).await.unwrap(), 1);
        assert_eq!(q.purge(JobState::Dead, Duration::ZERO).await.unwrap(), 1);
        let in_batch_0: u64 = conn.hlen(format!("{p}env:0")).await.unwrap();
        assert_eq!(in_batch_0, 2);
        let key_held: bool = conn
            .hexists(format!("{p}idempotency"), done.idempotency_key.to_string())
            .await
            .unwrap();
        assert!(!key_held);
    }
}

/// A call whose envelopes in `incoming` do not match its jobs (a client that skipped the
/// HSET, or sent two jobs with one id) is refused, creates nothing and leaves nothing behind;
/// and an enqueue after Redis lost its scripts loads the script and runs its transaction
/// again, with nothing left over from the failed one. On a Redis of its own: `SCRIPT FLUSH`
/// on the shared one would pull the scripts from under every other test running.
#[tokio::test]
async fn enqueue_refuses_envelopes_that_do_not_match_and_survives_lost_scripts() {
    use atr_dist::queue::ENQUEUE_LUA;
    use atr_dist_shared::JobState;
    use redis::AsyncCommands;

    let dir = tempfile::tempdir().unwrap();
    let port = atr_dist_tests::free_port();
    let _redis = atr_dist::embedded::start(port, &dir.path().join("redis"))
        .expect("redis-server installed (scripts/services.sh)");
    let t = TestQueue::on(&format!("redis://127.0.0.1:{port}"), &[]).await;
    let q = &t.queue;
    let p = q.prefix().to_owned();
    let mut conn = q.connection();
    let script = redis::Script::new(ENQUEUE_LUA);
    let env = atr_dist_tests::jobs::stage(1);
    let id = env.id.to_string();
    let key = env.idempotency_key.to_string();
    let call = |extra: Option<(&str, String)>| {
        let mut pipe = redis::pipe();
        pipe.atomic().del(format!("{p}incoming")).ignore();
        if let Some((field, value)) = extra {
            pipe.hset(format!("{p}incoming"), field, value).ignore();
        }
        pipe.cmd("EVALSHA")
            .arg(script.get_hash())
            .arg(1)
            .arg(format!("{p}queued"))
            .arg(&p)
            .arg(0)
            .arg(3)
            .arg(&id)
            .arg(&key);
        pipe
    };
    let _: String = script.prepare_invoke().load_async(&mut conn).await.unwrap();
    for (extra, what) in [
        (None, "no envelope"),
        (
            Some(("another-id", env.to_json())),
            "an envelope under another id",
        ),
    ] {
        let pipe = call(extra);
        let err = pipe
            .query_async::<(Vec<String>,)>(&mut conn)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("1 job(s) but") && err.contains("envelope"),
            "{what}: {err}"
        );
        let exists: bool = conn.exists(format!("{p}incoming")).await.unwrap();
        assert!(!exists, "{what}: incoming is deleted");
    }
    assert_eq!(cases::count(q, JobState::Queued).await, 0);

    // Scripts lost, as after a Redis restart; and a transaction whose EVALSHA failed left
    // its envelopes in `incoming`.
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = conn
        .hset(format!("{p}incoming"), "left-over", "{}")
        .await
        .unwrap();
    let e = q.enqueue(&env, None, 3).await.unwrap();
    assert!(e.created);
    let leased = q
        .fetch("w1", std::time::Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].envelope, env.to_json().into_bytes());
    let batch = cases::batch_of(q, &id).await;
    let fields: Vec<String> = conn.hkeys(format!("{p}env:{batch}")).await.unwrap();
    assert_eq!(fields, vec![id.clone()]);
    let exists: bool = conn.exists(format!("{p}incoming")).await.unwrap();
    assert!(!exists);
}

/// An envelope must be its job's: a job whose envelope names another id, or another
/// idempotency key than the one it was enqueued with, is refused at fetch, naming both.
#[tokio::test]
async fn envelopes_that_name_another_job_or_key_are_refused() {
    use atr_dist::queue::RawJob;
    use atr_dist_tests::jobs;

    let t = TestQueue::new().await;
    let envs: Vec<_> = (1..4).map(jobs::stage).collect();
    let raw = |n: usize, id: Option<&str>, key: Option<&str>| {
        let env = &envs[n - 1];
        RawJob {
            id: id.map_or_else(|| env.id.to_string(), str::to_owned),
            idempotency_key: key.map_or_else(|| env.idempotency_key.to_string(), str::to_owned),
            envelope: env.to_json(),
            run_at: None,
            max_attempts: 1,
        }
    };
    let other_id = uuid::Uuid::now_v7().to_string();
    let enqueued = t
        .queue
        .enqueue_raw(&[
            raw(1, None, None),
            raw(2, Some(&other_id), None),
            raw(3, None, Some("another-key")),
        ])
        .await
        .unwrap();
    assert!(enqueued.iter().all(|e| e.created), "{enqueued:?}");
    let leased = t
        .queue
        .fetch("w1", std::time::Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(leased.len(), 3);
    let by_id = |id: &str| leased.iter().find(|l| l.id == id).unwrap();
    assert!(by_id(&enqueued[0].id).parse_envelope().is_ok());
    let err = by_id(&other_id).parse_envelope().unwrap_err();
    let own = envs[1].id.to_string();
    assert!(
        err.starts_with(&format!(
            "envelope id {own:?} is not the id {other_id:?} the job was enqueued under"
        )),
        "{err}"
    );
    let err = by_id(&enqueued[2].id).parse_envelope().unwrap_err();
    assert!(
        err.starts_with("envelope idempotency_key \"stage:pkg-3\" is not the key job"),
        "{err}"
    );
}

/// What a handler leaves in its job's result slot goes to Redis with the job's end: in the
/// `results` stream's entry and the `result` hash. A job that ends without one has neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handlers_report_goes_with_the_jobs_end() {
    use atr_dist::queue::pool::{Completion, RunningJob};
    use atr_dist_shared::JobState;
    use cases::{FAST_RETRY, FnHandler, RunningPool, eventually, pool_config};
    use redis::AsyncCommands;
    use std::time::Duration;

    const REPORT: &str = r#"{"kind":"stage","outcome":"completed"}"#;
    let t = TestQueue::new().await;
    let q = &t.queue;
    let reported = q
        .enqueue(&atr_dist_tests::jobs::stage(1), None, 3)
        .await
        .unwrap();
    let silent = q
        .enqueue(&atr_dist_tests::jobs::stage(2), None, 3)
        .await
        .unwrap();
    let handler = FnHandler(|job: RunningJob| async move {
        if job.envelope.distribution().package.as_str() == "pkg-1" {
            job.result.set(REPORT.to_owned());
        }
        Ok(Completion::Done)
    });
    let pool = RunningPool::start(q, handler, pool_config(2, FAST_RETRY));
    eventually("both jobs done", Duration::from_secs(30), || async {
        cases::count(q, JobState::Done).await == 2
    })
    .await;
    pool.stop().await;
    let mut conn = q.connection();
    let kept: Option<String> = conn
        .hget(format!("{}result", q.prefix()), &reported.id)
        .await
        .unwrap();
    assert_eq!(kept.as_deref(), Some(REPORT));
    let none: Option<String> = conn
        .hget(format!("{}result", q.prefix()), &silent.id)
        .await
        .unwrap();
    assert_eq!(none, None);
    // Both are named in the results stream, and a consumer finds the report by the id.
    let ended = atr_dist_tests::redis_support::ended(q).await;
    let result_of = |id: &str| {
        ended
            .iter()
            .find(|e| e["id"] == id)
            .map(|e| (e["state"].clone(), e["result"].clone()))
    };
    assert_eq!(
        result_of(&reported.id),
        Some(("done".to_owned(), REPORT.to_owned()))
    );
    assert_eq!(
        result_of(&silent.id),
        Some(("done".to_owned(), String::new()))
    );
}

/// A pool leases one round of its capacity ahead and no more: with 3 slots, all busy, it
/// holds 6 leases however many jobs wait, so the rest stay free for other workers, and
/// never more as jobs end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_leases_two_rounds_of_its_capacity_and_no_more() {
    use atr_dist::queue::pool::{Completion, RunningJob};
    use atr_dist_shared::JobState;
    use std::time::Duration;
    let t = TestQueue::new().await;
    let q = &t.queue;
    q.enqueue_bulk(
        &(0..30).map(atr_dist_tests::jobs::stage).collect::<Vec<_>>(),
        None,
        3,
    )
    .await
    .unwrap();
    // Each job runs until the test hands it a permit.
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let handler = {
        let permits = std::sync::Arc::clone(&permits);
        cases::FnHandler(move |job: RunningJob| {
            let permits = std::sync::Arc::clone(&permits);
            async move {
                tokio::select! {
                    p = permits.acquire() => p.expect("open").forget(),
                    () = job.cancel.cancelled() => {}
                }
                Ok(Completion::Done)
            }
        })
    };
    let mut config = cases::pool_config(3, cases::FAST_RETRY);
    config.shutdown_timeout = Duration::from_millis(200);
    let pool = cases::RunningPool::start(q, handler, config);
    cases::eventually("the pool is busy", Duration::from_secs(10), || async {
        cases::count(q, JobState::Running).await >= 3
    })
    .await;
    // Idle polls go on every 20 ms: give the pool many chances to lease more.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(cases::count(q, JobState::Running).await, 6);
    assert_eq!(cases::count(q, JobState::Queued).await, 24);
    // Four end: the pool takes the next ones from what it holds, then leases only what
    // brings it back to two rounds, counting the leases it still holds.
    permits.add_permits(4);
    cases::eventually("four done", Duration::from_secs(10), || async {
        cases::count(q, JobState::Done).await == 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Between one round (a lease per slot, when the next fetch came while finished jobs
    // were not acked yet) and two.
    let running = cases::count(q, JobState::Running).await;
    assert!((3..=6).contains(&running), "{running} leased");
    assert_eq!(cases::count(q, JobState::Queued).await, 26 - running);
    pool.stop().await;
    // Stopped, the pool holds no lease, not even of the jobs it had not started: none waits
    // for its lease to run out. (Each started one ends as its handler saw the stop.)
    assert_eq!(cases::count(q, JobState::Running).await, 0);
}

/// An attempt that outlasts the shutdown timeout is stopped, and the pool returns only once
/// its handler's future has been dropped (where a handler ends its records), even when
/// that drop is slow.
// Four threads: the two slow drops block two of them, and the pool must run on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_waits_for_stopped_attempts_to_be_dropped() {
    use atr_dist::queue::pool::{Completion, RunningJob, Stop};
    use atr_dist_shared::JobState;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Records, when dropped (slowly), why the attempt was stopped.
    struct SlowDrop {
        job: RunningJob,
        seen: Arc<Mutex<Vec<Option<Stop>>>>,
    }
    impl Drop for SlowDrop {
        fn drop(&mut self) {
            std::thread::sleep(Duration::from_millis(150));
            self.seen.lock().unwrap().push(self.job.stop.get());
        }
    }

    let t = TestQueue::new().await;
    let q = &t.queue;
    let ids = q
        .enqueue_bulk(
            &(0..2).map(atr_dist_tests::jobs::stage).collect::<Vec<_>>(),
            None,
            3,
        )
        .await
        .unwrap();
    let seen: Arc<Mutex<Vec<Option<Stop>>>> = Arc::default();
    let handler = {
        let seen = Arc::clone(&seen);
        cases::FnHandler(move |job: RunningJob| {
            let guard = SlowDrop {
                job,
                seen: Arc::clone(&seen),
            };
            async move {
                let _guard = guard;
                // Ignores its cancel token: only dropping it stops it.
                tokio::time::sleep(Duration::from_secs(120)).await;
                Ok(Completion::Done)
            }
        })
    };
    let mut config = cases::pool_config(2, cases::FAST_RETRY);
    config.shutdown_timeout = Duration::from_millis(500);
    let pool = cases::RunningPool::start(q, handler, config);
    cases::eventually("both run", Duration::from_secs(10), || async {
        cases::count(q, JobState::Running).await == 2
    })
    .await;
    pool.stop().await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![Some(Stop::Shutdown), Some(Stop::Shutdown)],
        "both attempts were dropped, for the shutdown, before the pool returned"
    );
    for e in ids {
        let s = q.show(&e.id).await.unwrap().unwrap().summary;
        assert_eq!(s.state, JobState::Queued);
        assert_eq!(
            s.attempt, 0,
            "an attempt stopped by a shutdown does not count"
        );
    }
}

/// A version 6 queue has the version 7 layout: the worker refuses it until `queue migrate`,
/// which only sets `format`, keeps the stream's version 6 entries, and leaves the jobs to run.
#[tokio::test]
async fn a_version_6_queue_is_refused_until_migrated_and_keeps_its_jobs() {
    use atr_dist::queue::MigrationReport;
    use atr_dist::queue::{Ack, AckOutcome};
    use redis::AsyncCommands;
    use std::time::Duration;

    let t = TestQueue::new().await;
    let q = &t.queue;
    let p = q.prefix().to_owned();
    let mut conn = q.connection();
    q.enqueue(&atr_dist_tests::jobs::stage(1), None, 3)
        .await
        .unwrap();
    // As a version 6 queue looks: its format, and a results entry of that version.
    let _: () = conn.set(format!("{p}format"), "6").await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg(format!("{p}results"))
        .arg("*")
        .arg(&["id", "old", "state", "done", "atr_status", "COMPLETED"])
        .query_async(&mut conn)
        .await
        .unwrap();
    let lease = Duration::from_secs(30);
    let err = q.fetch("w1", lease, 10).await.unwrap_err().to_string();
    assert!(
        err.contains("wire format 6") && err.contains("queue migrate"),
        "{err}"
    );
    let err = q.check_format().await.unwrap_err().to_string();
    assert!(err.contains("atr-dist queue migrate"), "{err}");

    assert_eq!(
        q.migrate().await.unwrap(),
        MigrationReport { jobs: 1, moved: 0 }
    );
    q.check_format().await.unwrap();
    let leased = q.fetch("w1", lease, 10).await.unwrap();
    assert_eq!(leased.len(), 1);
    q.ack(&[Ack {
        lease: leased[0].lease(),
        outcome: AckOutcome::Done,
        result: String::new(),
    }])
    .await
    .unwrap();
    let len: usize = redis::cmd("XLEN")
        .arg(format!("{p}results"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 2, "the version 6 entry stays, the new end is added");
    let ended = atr_dist_tests::redis_support::ended_since(q, "0-1").await;
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0]["id"], leased[0].id);
}

/// A pool that stops cleanly leaves the live workers at once (docs/wire-format.md,
/// `workers`): `queue stats` and `atr_dist_workers` stop counting it, and `queue migrate`
/// does not wait a lease for a worker that is gone. Another pool's entry stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_stops_leaves_the_live_workers() {
    use std::time::Duration;

    use atr_dist::queue::pool::Completion;

    let t = TestQueue::new().await;
    let q = &t.queue;
    let idle = || cases::FnHandler(|_| async { Ok(Completion::Done) });
    // A lease far longer than the test: an entry can only go by being removed.
    let mut config = cases::pool_config(1, cases::FAST_RETRY);
    config.lease = Duration::from_secs(600);
    let first = cases::RunningPool::start(q, idle(), config.clone());
    let second = cases::RunningPool::start(q, idle(), config);
    cases::eventually("both pools registered", Duration::from_secs(10), || async {
        q.live_workers().await.unwrap() == 2
    })
    .await;
    first.stop().await;
    assert_eq!(q.live_workers().await.unwrap(), 1, "the stopped pool left");
    second.stop().await;
    assert_eq!(q.live_workers().await.unwrap(), 0);
}

/// An operator's part of a job id names the one job whose id starts or ends with it (any
/// case); a part inside ids, a part too short or not of an id's characters names none; a
/// part of several ids lists the first five found, and says whether there are more.
#[tokio::test]
async fn a_part_of_a_job_id_names_the_job_whose_id_starts_or_ends_with_it() {
    use atr_dist::queue::{IdLookup, ambiguous_id, raw_job};
    use atr_dist_shared::job::JobId;

    let t = TestQueue::new().await;
    let q = &t.queue;
    let ids = [
        // One job: its start and its end name it, the middle does not.
        "0190f5d2-1c3a-7abc-8def-0123456789ab",
        // Five whose ids end alike, and six whose ids start alike.
        "0190f5d3-0000-7000-8000-00000000c0de",
        "0190f5d3-0001-7000-8000-00000000c0de",
        "0190f5d3-0002-7000-8000-00000000c0de",
        "0190f5d3-0003-7000-8000-00000000c0de",
        "0190f5d3-0004-7000-8000-00000000c0de",
        "0190f5d4-0000-7000-8000-000000000001",
        "0190f5d4-0000-7000-8000-000000000002",
        "0190f5d4-0000-7000-8000-000000000003",
        "0190f5d4-0000-7000-8000-000000000004",
        "0190f5d4-0000-7000-8000-000000000005",
        "0190f5d4-0000-7000-8000-000000000006",
    ];
    let raws: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut env = atr_dist_tests::jobs::stage(900 + i);
            env.id = JobId(id.parse().unwrap());
            raw_job(&env, None, 1)
        })
        .collect();
    q.enqueue_raw(&raws).await.unwrap();

    let one = ids[0];
    for part in [
        one,
        "0190f5d2-1c",
        "0190F5D2",
        "456789ab",
        "89AB",
        "def-0123456789ab",
    ] {
        assert_eq!(
            q.resolve_id(part).await.unwrap(),
            IdLookup::Found(one.to_owned()),
            "{part}"
        );
    }
    // Inside the id only; too short; not an id's characters; the whole id and more.
    for part in [
        "1c3a-7abc",
        "0190f5d2-1c3a-7abc-8def-0123456789abc",
        "9ab",
        "0190f5d2*",
        "zzzz",
    ] {
        assert_eq!(
            q.resolve_id(part).await.unwrap(),
            IdLookup::NotFound,
            "{part}"
        );
    }

    let IdLookup::Ambiguous { ids: five, more } = q.resolve_id("c0de").await.unwrap() else {
        panic!("five ids end with c0de");
    };
    let mut sorted = five.clone();
    sorted.sort();
    assert_eq!(sorted, ids[1..6], "every one of the five");
    assert!(!more, "no more than the five listed");
    let told = ambiguous_id("c0de", &five, more);
    assert!(told.ends_with("00000000c0de); give more of it"), "{told}");

    let IdLookup::Ambiguous { ids: some, more } = q.resolve_id("0190F5D4").await.unwrap() else {
        panic!("six ids start with 0190f5d4");
    };
    assert_eq!(some.len(), 5, "{some:?}");
    assert!(
        some.iter().all(|id| ids[6..].contains(&id.as_str())),
        "{some:?}"
    );
    assert!(more, "a sixth matches");
    let told = ambiguous_id("0190F5D4", &some, more);
    assert!(told.ends_with(", …); give more of it"), "{told}");
}

/// The test Redis's address, for a proxy in front of it.
fn redis_addr() -> std::net::SocketAddr {
    use std::net::ToSocketAddrs;
    let url = atr_dist_tests::redis_url();
    let host = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    host.to_socket_addrs().unwrap().next().unwrap()
}

/// `n` stage jobs enqueued on `q`, by their ids.
async fn enqueue_stages(q: &atr_dist::queue::Queue, n: usize) -> Vec<String> {
    let envelopes: Vec<_> = (0..n).map(atr_dist_tests::jobs::stage).collect();
    let enqueued = q.enqueue_bulk(&envelopes, None, 3).await.unwrap();
    enqueued.into_iter().map(|e| e.id).collect()
}

/// A handle on `t`'s queue whose connection goes through `proxy`.
async fn through(proxy: &TcpProxy, t: &TestQueue) -> atr_dist::queue::Queue {
    t.via(&format!("redis://{}", proxy.addr)).await
}

/// At shutdown a pool records the acks of the jobs that finished before it hands back what
/// is still held: a job that finished while its ack waited behind another's is done, not
/// handed back to run again. Here every request to Redis takes 200 ms (a slow link), so the
/// second job's ack still waits for the first one's answer when the pool stops.
#[tokio::test]
async fn jobs_finished_at_shutdown_are_acked_not_handed_back() {
    use atr_dist::queue::pool::Completion;
    use atr_dist_shared::JobState;
    use cases::{FAST_RETRY, FnHandler, RunningPool, count, eventually, pool_config};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    let t = TestQueue::new().await;
    let q = &t.queue;
    let proxy = TcpProxy::start(redis_addr()).await;
    let slow = through(&proxy, &t).await;
    enqueue_stages(q, 2).await;
    let go = Arc::new(tokio::sync::Semaphore::new(0));
    let ended = Arc::new(AtomicU64::new(0));
    let handler = {
        let go = Arc::clone(&go);
        FnHandler(move |_job| {
            let (go, ended) = (Arc::clone(&go), Arc::clone(&ended));
            async move {
                go.acquire().await.unwrap().forget();
                // The first ends at once, the second 50 ms later.
                let n = ended.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50 * n)).await;
                Ok(Completion::Done)
            }
        })
    };
    let pool = RunningPool::start(&slow, handler, pool_config(2, FAST_RETRY));
    eventually("both jobs run", Duration::from_secs(10), || async {
        count(q, JobState::Running).await == 2
    })
    .await;
    proxy.delay_requests(Duration::from_millis(200));
    go.add_permits(2);
    pool.stop().await;
    assert_eq!(
        count(q, JobState::Done).await,
        2,
        "both finished jobs are done"
    );
    assert_eq!(count(q, JobState::Queued).await, 0, "none was handed back");
}

/// A pool lets go of a job once its ack is recorded: its heartbeats renew no lease of a
/// finished job, and its shutdown hands none back. (Held on, finished jobs would ride along
/// in every heartbeat and count against the room for new fetches.)
#[tokio::test]
async fn a_pool_lets_go_of_the_jobs_it_finished() {
    use atr_dist::queue::pool::{Completion, PoolConfig};
    use atr_dist_shared::JobState;
    use atr_dist_tests::redis_monitor::{Commands, runs};
    use cases::{FAST_RETRY, FnHandler, RunningPool, count, eventually, pool_config};
    use std::time::Duration;

    let t = TestQueue::new().await;
    let q = &t.queue;
    let heartbeat = redis::Script::new(include_str!("../../lua/heartbeat.lua"));
    let seen = Commands::monitor(&t, &[&heartbeat]).await;
    let ids = enqueue_stages(q, 3).await;
    // A heartbeat every 100 ms.
    let config = PoolConfig {
        lease: Duration::from_millis(300),
        ..pool_config(2, FAST_RETRY)
    };
    let pool = RunningPool::start(q, FnHandler(|_job| async { Ok(Completion::Done) }), config);
    eventually("three done", Duration::from_secs(10), || async {
        count(q, JobState::Done).await == 3
    })
    .await;
    // The first heartbeat after the acks may have gone out before their answers came back
    // (and its script's own commands follow it in the log); from the next one on, the pool
    // holds none of the jobs.
    let is_heartbeat = |l: &str| runs(l, &heartbeat);
    let first = seen.wait_for("a heartbeat", seen.len(), is_heartbeat).await;
    let mark = seen.wait_for("a heartbeat", first + 1, is_heartbeat).await;
    seen.wait_for("another heartbeat", mark + 1, is_heartbeat)
        .await;
    pool.stop().await;
    // What the pool sent (a heartbeat names the leases it renews, a release those it hands
    // back), not what scripts ran inside Redis (the retention reads finished jobs).
    let sent: Vec<String> = seen
        .since(mark)
        .into_iter()
        .filter(|l| !l.contains(" lua] "))
        .collect();
    assert!(sent.iter().any(|l| is_heartbeat(l)));
    for line in sent {
        for id in &ids {
            assert!(!line.contains(id.as_str()), "a finished job in: {line}");
        }
    }
}

/// Envelopes that an older producer writes while `migrate` moves them are moved as well: a
/// pass over the `envelopes` hash that ends with the hash still there takes another. Here
/// each of the migration's requests takes 300 ms, and the test writes an envelope just
/// after the migration's first pass moved the others.
#[tokio::test]
async fn envelopes_written_during_a_migration_are_moved_too() {
    use atr_dist_tests::redis_monitor::{Commands, has_arg, is_command};
    use redis::AsyncCommands;
    use std::collections::HashMap;
    use std::time::Duration;

    let t = TestQueue::new().await;
    let q = &t.queue;
    let p = q.prefix().to_owned();
    let envelopes = format!("{p}envelopes");
    let mut conn = q.connection();
    let _: () = conn.set(format!("{p}format"), "4").await.unwrap();
    // Batch 0 exists already (an interrupted migration), so the envelopes move in passes
    // rather than by a rename.
    let _: () = conn.hset(format!("{p}env:0"), "a", "A").await.unwrap();
    let _: () = conn
        .hset_multiple(&envelopes, &[("b", "B"), ("c", "C")])
        .await
        .unwrap();
    let seen = Commands::monitor(&t, &[]).await;
    let proxy = TcpProxy::start(redis_addr()).await;
    let slow = through(&proxy, &t).await;
    proxy.delay_requests(Duration::from_millis(300));
    let migration = tokio::spawn(async move { slow.migrate().await });
    seen.wait_for("the first pass's HDEL", 0, |l| {
        is_command(l, "HDEL") && has_arg(l, &envelopes)
    })
    .await;
    let _: () = conn.hset(&envelopes, "late", "LATE").await.unwrap();
    proxy.delay_requests(Duration::ZERO);
    migration.await.unwrap().unwrap();
    let left: bool = conn.exists(&envelopes).await.unwrap();
    assert!(!left, "the late envelope was left behind");
    let moved: HashMap<String, String> = conn.hgetall(format!("{p}env:0")).await.unwrap();
    let expected: HashMap<String, String> = [("a", "A"), ("b", "B"), ("c", "C"), ("late", "LATE")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(moved, expected);
}

/// The pool's handle counts what the pool did: what a benchmark or an embedding program
/// reads while it runs.
#[tokio::test]
async fn the_pool_handle_counts_what_the_pool_did() {
    use atr_dist::queue::pool::{self, Completion, JobError, PoolHandle, RunningJob};
    use cases::{FAST_RETRY, FnHandler, eventually, pool_config};
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    let t = TestQueue::new().await;
    let q = &t.queue;
    let refused = enqueue_stages(q, 3).await.remove(0);
    let handler = FnHandler(move |job: RunningJob| {
        let refused = refused.clone();
        async move {
            if job.id == refused {
                return Err(JobError::permanent("refused"));
            }
            Ok(Completion::Done)
        }
    });
    let handle: Arc<Mutex<Option<PoolHandle>>> = Arc::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = {
        let (queue, handle) = (q.clone(), Arc::clone(&handle));
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            let keep = move |h| *handle.lock().unwrap() = Some(h);
            pool::run(
                queue,
                Arc::new(handler),
                pool_config(2, FAST_RETRY),
                shutdown,
                keep,
            )
            .await
            .unwrap();
        })
    };
    // Done as `done()` and as its counter, and dead.
    let counted = || {
        let handle = handle.lock().unwrap();
        handle.as_ref().map(|h| {
            let c = h.counters();
            (
                h.done(),
                c.done.load(Ordering::Relaxed),
                c.dead.load(Ordering::Relaxed),
            )
        })
    };
    eventually(
        "the handle counts 2 done, 1 dead",
        Duration::from_secs(10),
        || std::future::ready(counted() == Some((2, 2, 1))),
    )
    .await;
    let _ = stop.send(());
    running.await.unwrap();
}

/// An enqueue that Redis refuses for any reason but a missing script is sent once: only
/// NOSCRIPT (Redis restarted, or its scripts flushed) loads the script and sends it again.
#[tokio::test]
async fn a_refused_enqueue_is_sent_once() {
    use atr_dist_tests::redis_monitor::{Commands, has_arg, runs};
    use redis::AsyncCommands;

    let t = TestQueue::new().await;
    let q = &t.queue;
    let enqueue = redis::Script::new(atr_dist::queue::ENQUEUE_LUA);
    let seen = Commands::monitor(&t, &[&enqueue]).await;
    // A format this code does not speak: enqueue.lua refuses it.
    let _: () = q
        .connection()
        .set(format!("{}format", q.prefix()), "99")
        .await
        .unwrap();
    let mark = seen.len();
    let err = q
        .enqueue(&atr_dist_tests::jobs::stage(1), None, 3)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("99"), "{err}");
    // A command that follows the enqueue's, so that everything before it has been seen.
    let _: () = q
        .connection()
        .set(format!("{}marker", q.prefix()), "1")
        .await
        .unwrap();
    let end = seen
        .wait_for("the marker", mark, |l| {
            has_arg(l, &format!("{}marker", q.prefix()))
        })
        .await;
    let sent = seen.since(mark)[..end - mark].to_vec();
    let calls = sent.iter().filter(|l| runs(l, &enqueue)).count();
    assert_eq!(calls, 1, "{sent:#?}");
}

/// `retry_matching` counts the jobs it queued again, not the jobs it listed: a dead job
/// that another operator retried between the listing and the retry is not counted twice.
/// Here each of the first operator's requests takes 300 ms, and the second retries a job
/// just after the first one's listing read it.
#[tokio::test]
async fn retry_matching_counts_only_the_jobs_it_retried() {
    use atr_dist::queue::pool::{JobError, RunningJob};
    use atr_dist::queue::{AdminReply, JobFilter};
    use atr_dist_shared::JobState;
    use atr_dist_tests::redis_monitor::{Commands, has_arg, is_command};
    use cases::{FAST_RETRY, FnHandler, RunningPool, count, eventually, pool_config};
    use std::time::Duration;

    let t = TestQueue::new().await;
    let q = &t.queue;
    let ids = enqueue_stages(q, 3).await;
    let refuse = FnHandler(|_job: RunningJob| async { Err(JobError::permanent("refused")) });
    let pool = RunningPool::start(q, refuse, pool_config(2, FAST_RETRY));
    eventually("three dead", Duration::from_secs(10), || async {
        count(q, JobState::Dead).await == 3
    })
    .await;
    pool.stop().await;

    let seen = Commands::monitor(&t, &[]).await;
    let proxy = TcpProxy::start(redis_addr()).await;
    let slow = through(&proxy, &t).await;
    proxy.delay_requests(Duration::from_millis(300));
    let first = tokio::spawn(async move {
        slow.retry_matching(&JobFilter::default(), "operator 1")
            .await
            .unwrap()
    });
    let jobs = format!("{}jobs", q.prefix());
    seen.wait_for("the listing's read of the records", 0, |l| {
        is_command(l, "HMGET") && has_arg(l, &jobs)
    })
    .await;
    let second = q.retry(&ids[..1], "operator 2").await.unwrap();
    assert_eq!(second, [AdminReply::Changed(JobState::Queued)]);
    assert_eq!(first.await.unwrap(), 2, "the first operator retried two");
    assert_eq!(count(q, JobState::Queued).await, 3);
}

/// A listing reads a state 500 ids at a time (`SCAN` in `Queue::list`): `queued` from its
/// head, `done` newest first from its tail. A filtered listing goes on reading until it has
/// a page, so a match behind 520 that do not match is found in both, and the listing ends
/// there; no read asks Redis for more than 500 ids.
#[tokio::test]
async fn a_filtered_listing_reads_500_ids_at_a_time_past_the_first_500() {
    use atr_dist::queue::JobFilter;
    use atr_dist_shared::job::{JobKind, RevisionSourceSpec};
    use atr_dist_shared::{JobState, Platform};
    use atr_dist_tests::jobs::{self, Dist};
    use atr_dist_tests::redis_monitor::{Commands, is_command};

    let t = TestQueue::new().await;
    let q = &t.queue;
    let promote = |name: &str| {
        Dist::new(Platform::Npm, "", name, "1.0.0").promote("00001", RevisionSourceSpec::Dir, "rm")
    };
    // Done, oldest first: the promote job, then 520 stage jobs.
    let done_promote = q.enqueue(&promote("done-first"), None, 3).await.unwrap().id;
    enqueue_stages(q, 520).await;
    cases::finish(q, 521).await;
    // Queued: 520 stage jobs, then the promote job.
    let stages: Vec<_> = (1000..1520).map(jobs::stage).collect();
    q.enqueue_bulk(&stages, None, 3).await.unwrap();
    let queued_promote = q
        .enqueue(&promote("queued-last"), None, 3)
        .await
        .unwrap()
        .id;

    let seen = Commands::monitor(&t, &[]).await;
    let mark = seen.len();
    let filter = JobFilter {
        kind: Some(JobKind::Promote.as_str().to_owned()),
        ..Default::default()
    };
    let page = q.list(&filter, None, cases::limit(10)).await.unwrap();
    let listed: Vec<(&str, JobState)> =
        page.jobs.iter().map(|j| (j.id.as_str(), j.state)).collect();
    assert_eq!(
        listed,
        [
            (queued_promote.as_str(), JobState::Queued),
            (done_promote.as_str(), JobState::Done)
        ]
    );
    assert_eq!(page.next_cursor, None);

    // The reads, as Redis ran them: `LRANGE <key> <start> <stop>`.
    seen.wait_for("the done list's second read", mark, |l| {
        is_command(l, "LRANGE") && l.ends_with("\"-1000\" \"-501\"")
    })
    .await;
    let reads: Vec<(String, String, String)> = seen
        .since(mark)
        .iter()
        .filter(|l| is_command(l, "LRANGE"))
        .map(|l| {
            let quoted: Vec<&str> = l.split('"').skip(1).step_by(2).collect();
            let [_, key, start, stop] = quoted[..] else {
                panic!("{l}")
            };
            let state = key.strip_prefix(q.prefix()).unwrap_or(key).to_owned();
            (state, start.to_owned(), stop.to_owned())
        })
        .collect();
    let expected = [
        ("queued", "0", "499"),
        ("queued", "500", "999"),
        ("done", "-500", "-1"),
        ("done", "-1000", "-501"),
    ]
    .map(|(state, start, stop)| (state.to_owned(), start.to_owned(), stop.to_owned()));
    assert_eq!(reads, expected);
}

/// A page ends after its last job's place in what was read, not after its place among the
/// jobs that still exist: an id in `queued` whose job is gone (deleted between the two
/// reads of a listing) does not make the next page start one job early.
#[tokio::test]
async fn a_page_after_an_id_whose_job_is_gone_resumes_after_its_last_job() {
    use atr_dist::queue::JobFilter;
    use redis::AsyncCommands;

    let t = TestQueue::new().await;
    let q = &t.queue;
    let ids = enqueue_stages(q, 3).await;
    // At the head, where a listing reads first.
    let _: () = q
        .connection()
        .lpush(
            format!("{}queued", q.prefix()),
            "0190f5d2-1c3a-7abc-8def-0123456789ab",
        )
        .await
        .unwrap();
    let filter = JobFilter::default();
    let mut cursor: Option<String> = None;
    let mut listed = Vec::new();
    loop {
        let page = q
            .list(&filter, cursor.as_deref(), cases::limit(1))
            .await
            .unwrap();
        listed.extend(page.jobs.into_iter().map(|j| j.id));
        match page.next_cursor {
            Some(next) if listed.len() < 10 => cursor = Some(next),
            _ => break,
        }
    }
    assert_eq!(listed, ids);
}

/// A listing filtered by one field alone (platform, release or kind) holds exactly the jobs
/// that match it, whatever their other fields.
#[tokio::test]
async fn a_listing_filters_by_each_field_alone() {
    use atr_dist::queue::{JobFilter, JobSummary};
    use atr_dist_shared::Platform;
    use atr_dist_shared::job::RevisionSourceSpec;
    use atr_dist_tests::jobs::Dist;
    use std::collections::BTreeSet;

    let t = TestQueue::new().await;
    let q = &t.queue;
    let npm_1 = Dist::new(Platform::Npm, "", "pkg", "1.0.0");
    let pypi_1 = Dist::new(Platform::Pypi, "", "pkg", "1.0.0");
    let npm_2 = Dist::new(Platform::Npm, "", "pkg", "2.0.0");
    let envelopes = [
        npm_1.stage("00001", &["a"], RevisionSourceSpec::Dir, true),
        pypi_1.stage("00001", &["a"], RevisionSourceSpec::Dir, true),
        npm_2.promote("00001", RevisionSourceSpec::Dir, "rm"),
    ];
    let ids: Vec<String> = q
        .enqueue_bulk(&envelopes, None, 3)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    let listed = |filter: JobFilter| async move {
        let page = q.list(&filter, None, cases::limit(100)).await.unwrap();
        page.jobs
    };
    let all: Vec<JobSummary> = listed(JobFilter::default()).await;
    let summary = |i: usize| all.iter().find(|j| j.id == ids[i]).unwrap().clone();
    let ids_of = |jobs: Vec<JobSummary>| jobs.into_iter().map(|j| j.id).collect::<BTreeSet<_>>();
    let these = |is: &[usize]| is.iter().map(|&i| ids[i].clone()).collect::<BTreeSet<_>>();
    let by_platform = JobFilter {
        platform: Some(summary(0).platform),
        ..Default::default()
    };
    assert_eq!(ids_of(listed(by_platform).await), these(&[0, 2]));
    let by_release = JobFilter {
        release: Some(summary(2).release),
        ..Default::default()
    };
    assert_eq!(ids_of(listed(by_release).await), these(&[2]));
    let by_kind = JobFilter {
        kind: Some(summary(2).kind),
        ..Default::default()
    };
    assert_eq!(ids_of(listed(by_kind).await), these(&[2]));
}
