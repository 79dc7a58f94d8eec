//! The queue's core cases against a real three-node Redis Cluster on loopback ports, started
//! and stopped by this test (Debian's redis-server in cluster mode, joined with
//! `redis-cli --cluster create`).

use atr_dist_tests::cases;
use atr_dist_tests::cluster_support::{Cluster, redis_cli, start_cluster};
use atr_dist_tests::redis_support::{TestQueue, key_slot};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_cases_pass_on_a_redis_cluster() {
    let cluster = start_cluster();
    let nodes = cluster.urls();

    // Our slot computation agrees with the cluster's, so the single-server slot test holds.
    let probe = TestQueue::on(&nodes[0], &nodes).await;
    let queued = format!("{}queued", probe.queue.prefix());
    let slot: u16 = redis_cli(cluster.ports[0], &["cluster", "keyslot", &queued])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(slot, key_slot(&queued));
    drop(probe);

    macro_rules! run {
        ($case:ident) => {{
            let t = TestQueue::on(&nodes[0], &nodes).await;
            cases::$case(&t.queue).await;
        }};
    }
    run!(idempotent_and_bulk_enqueue);
    run!(delayed_jobs_wait_for_their_time);
    run!(leases_fence_acks_and_expire);
    run!(retries_persist_then_dead);
    run!(pool_runs_retries_and_dead_letters_malformed_jobs);
    run!(operators_list_show_retry_cancel_purge);
    run!(running_jobs_see_cancellation);
    run!(shutdown_releases_unfinished_jobs);
    drop(cluster);
}

/// The queue's keys each master holds, by port: `redis-cli --scan` of the queue's shards.
fn keys_per_master(cluster: &Cluster, queue: &str) -> Vec<usize> {
    cluster
        .ports
        .iter()
        .map(|port| {
            let shard_0 = redis_cli(
                *port,
                &["--scan", "--pattern", &format!("atr-dist:{{{queue}}}:*")],
            );
            let others = redis_cli(
                *port,
                &["--scan", "--pattern", &format!("atr-dist:{{{queue}:*")],
            );
            shard_0
                .lines()
                .chain(others.lines())
                .filter(|l| !l.is_empty())
                .count()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_queue_spreads_over_the_masters() {
    use atr_dist::queue::pool::Completion;
    use atr_dist::queue::{ShardCount, shard_key, shard_of};
    use atr_dist_shared::JobState;
    use atr_dist_shared::job::RevisionSourceSpec;
    use atr_dist_tests::cases::{
        FAST_RETRY, FnHandler, RunningPool, eventually, found_by_short_id_and_done, pool_config,
    };
    use atr_dist_tests::jobs;

    let cluster = start_cluster();
    let nodes = cluster.urls();
    let t = TestQueue::on(&nodes[0], &nodes).await;
    let q = &t.queue;
    q.resize(ShardCount::new(6).unwrap()).await.unwrap();

    // The shards' hash tags fall on every master of this cluster.
    let slots: Vec<u16> = (0..6)
        .map(|i| key_slot(&format!("{}queued", q.shard(i).prefix())))
        .collect();
    let envelopes: Vec<_> = (0..120).map(jobs::stage).collect();
    let enqueued = q.enqueue_bulk(&envelopes, None, 3).await.unwrap();
    assert!(enqueued.iter().all(|e| e.created));
    let spread = keys_per_master(&cluster, &t.name);
    assert!(
        spread.iter().filter(|&&n| n > 0).count() >= 2,
        "one queue's keys on several masters: {spread:?} (slots {slots:?})"
    );

    // One distribution's jobs share a shard.
    let dist = jobs::Dist::new(atr_dist_shared::Platform::Npm, "", "one-dist", "2.0.0");
    let stage = dist.stage("00001", &["a.tgz"], RevisionSourceSpec::Dir, true);
    let promote = dist.promote("00001", RevisionSourceSpec::Dir, "rm");
    let shard = shard_of(&shard_key(&stage.to_json()).unwrap(), 6);
    assert_eq!(shard, shard_of(&shard_key(&promote.to_json()).unwrap(), 6));
    let both = q.enqueue_bulk(&[stage, promote], None, 3).await.unwrap();
    for job in &both {
        let held: bool = redis::cmd("HEXISTS")
            .arg(format!("{}jobs", q.shard(shard).prefix()))
            .arg(&job.id)
            .query_async(&mut q.connection())
            .await
            .unwrap();
        assert!(held, "{} on shard {shard}", job.id);
    }
    let total = envelopes.len() as u64 + 2;
    assert_eq!(
        q.stats().await.unwrap().counts[&JobState::Queued],
        total,
        "stats add up the masters"
    );

    let pool = RunningPool::start(
        q,
        FnHandler(|_job| async { Ok(Completion::Done) }),
        pool_config(8, FAST_RETRY),
    );
    eventually(
        "every job is done",
        std::time::Duration::from_secs(30),
        || async { q.stats().await.unwrap().counts[&JobState::Done] == total },
    )
    .await;
    pool.stop().await;
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.shards, stats.totals["done"]), (6, total));

    // Admin views find jobs on any master.
    for job in enqueued.iter().take(10) {
        found_by_short_id_and_done(q, &job.id).await;
    }
    assert_eq!(
        q.purge(JobState::Done, std::time::Duration::ZERO)
            .await
            .unwrap(),
        total
    );
    drop(cluster);
}

/// A distribution's lock is one key whichever queue its job comes from: on a cluster, two
/// queues (whose keys hash to their own slots) and the lock (in a slot of its own) still
/// give the lock to one attempt at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_distribution_on_two_queues_takes_one_lock_on_a_cluster() {
    use std::time::Duration;

    use atr_dist::queue::Lease;

    let cluster = start_cluster();
    let nodes = cluster.urls();
    let first = TestQueue::on(&nodes[0], &nodes).await;
    let second = TestQueue::on(&nodes[0], &nodes)
        .await
        .sharing_locks_with(&first);
    const LOCK: &str = "example-1.0.0|NPM||pkg|1.0.0";
    let key = first.queue.lock_key(LOCK);
    assert_eq!(key, second.queue.lock_key(LOCK), "one key for both queues");
    let queued = format!("{}queued", first.queue.prefix());
    assert_ne!(
        key_slot(&key),
        key_slot(&queued),
        "the lock is not under the queue's hash tag"
    );
    let attempt = |id: &str| Lease {
        id: id.to_owned(),
        token: format!("3 1764300000000 1 1 1764300001000 w-{id}"),
    };
    let ttl = Duration::from_secs(30);
    let held = first
        .queue
        .try_lock(LOCK, &attempt("job-on-first"), ttl)
        .await
        .unwrap()
        .expect("the lock is free");
    let refused = second
        .queue
        .try_lock(LOCK, &attempt("job-on-second"), ttl)
        .await
        .unwrap();
    assert!(refused.is_err(), "the other queue's job waits for the lock");
    held.release().await;
    let taken = second
        .queue
        .try_lock(LOCK, &attempt("job-on-second"), ttl)
        .await
        .unwrap()
        .expect("free once released");
    taken.release().await;
    drop(cluster);
}
