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
