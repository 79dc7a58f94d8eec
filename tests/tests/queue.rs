//! The Redis queue against a real Redis: each test its own queue, deleted afterwards.

use atr_dist_tests::cases;
use atr_dist_tests::redis_support::{TestQueue, key_slot};

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

/// A queue written in wire format 1 (built here key by key, as version 1's scripts left it)
/// is refused by version 2 clients until `migrate_v1` moves it; afterwards its jobs run and
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
            .hset_multiple(
                format!("{p}job:{id}"),
                &[
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
                ],
            )
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

    // Version 2 clients refuse it, saying what to run, and change nothing.
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
    let err = q.migrate_v1().await.unwrap_err().to_string();
    assert!(err.contains("1 worker(s)"), "{err}");
    assert!(
        err.contains("runs out in 30 s") || err.contains("runs out in 29 s"),
        "{err}"
    );
    let _: () = conn.del(format!("{p}workers")).await.unwrap();

    assert_eq!(
        q.migrate_v1().await.unwrap(),
        MigrationReport { jobs: 2, moved: 2 }
    );
    assert_eq!(
        q.migrate_v1().await.unwrap(),
        MigrationReport { jobs: 2, moved: 0 },
        "a second run changes nothing"
    );
    let keys = t.keys().await;
    assert!(!keys.iter().any(|k| k.contains(":idem:")), "{keys:?}");
    let fields: Vec<String> = conn.hkeys(format!("{p}job:{}", queued.id)).await.unwrap();
    for gone in ["envelope", "kind", "release", "platform", "idempotency_key"] {
        assert!(!fields.iter().any(|f| f == gone), "{gone} in {fields:?}");
    }

    // What the operator sees is unchanged, and the keys still name their jobs.
    let shown = q.show(&dead.id.to_string()).await.unwrap().unwrap();
    assert_eq!(shown.summary.release, dead.release().key().to_string());
    assert_eq!(shown.summary.platform, "NPM");
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
    assert_eq!(leased[0].envelope, queued.to_json());
    assert_eq!(leased[0].attempt, 1);
    let acked = q
        .ack(
            "w2",
            &[Ack {
                id: leased[0].id.clone(),
                attempt: 1,
                outcome: AckOutcome::Done,
            }],
        )
        .await
        .unwrap();
    assert_eq!(
        acked,
        vec![atr_dist::queue::AckResult::Applied(JobState::Done)]
    );
}
