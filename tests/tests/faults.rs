//! Fault drills on loopback, bounded in time: the workers run the real pipeline against a real
//! npm registry (verdaccio), through the fault proxy that counts what reached it, on a
//! redis-server of each test's own, while
//! - Redis is killed with SIGKILL mid-run and restarted from its append-only file;
//! - PostgreSQL is cut off for 20 s (every connection reset, new ones refused);
//! - the registry answers 500s, resets connections, answers too late, and loses answers to
//!   writes that took effect.
//!
//! Each asserts that every job ends done, none is lost, and none is published or promoted
//! twice, counted at the registry; and prints its counts (`cargo test` shows them), so that
//! a regression shows as a number, not only as a failure. The SIGKILL drill of worker
//! processes is `tests/crash.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use atr_dist::config::RetryConfig;
use atr_dist::secret::Secret;
use atr_dist_shared::entities::distribution;
use atr_dist_tests::cases::pool_config;
use atr_dist_tests::fault_drill::{NpmPlatform, PipelineWorkers, PrivateRedis, Producer, Tally};
use atr_dist_tests::fault_proxy::Fault;
use atr_dist_tests::pipeline_support::Revisions;
use atr_dist_tests::redis_support::TestQueue;
use atr_dist_tests::tcp_proxy::{CutMode, TcpProxy};
use atr_dist_tests::{PgDatabase, SqliteDatabase};
use sea_orm::EntityTrait;

const FAST: RetryConfig = RetryConfig {
    base_ms: 20,
    cap_ms: 200,
    max_attempts: 5,
};

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:03}")).collect()
}

async fn sqlite_db(s: &SqliteDatabase) -> sea_orm::DatabaseConnection {
    let db = atr_dist::db::connect(&Secret::new(s.url.clone()), 4)
        .await
        .unwrap();
    atr_dist::db::migrate_up(&db).await.unwrap();
    db
}

/// Every package ended with one publish and one promotion at the registry, and holds the
/// voted bytes under `latest`.
async fn assert_once_each(platform: &NpmPlatform, producer: &Producer) {
    for name in producer.names() {
        assert_eq!(
            (platform.publishes(&name), platform.promotions(&name)),
            (1, 1),
            "{name}: publishes and promotions that reached the registry"
        );
        platform.assert_promoted(&name).await;
    }
}

/// The ids in the queue's `done` list.
async fn done_ids(q: &atr_dist::queue::Queue) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg(format!("{}done", q.prefix()))
        .arg(0)
        .arg(-1)
        .query_async(&mut q.connection())
        .await
        .unwrap()
}

/// Redis is killed with SIGKILL while jobs run, stays down for three seconds, and comes back
/// from its append-only file on the same port. The workers' connections reconnect by
/// themselves, scripts are loaded again where Redis answers NOSCRIPT, and every job ends
/// done with one publish and one promotion at the registry.
///
/// `appendfsync everysec`, as the README's "Running in production" recommends. What the
/// test can promise with it: Redis writes each command to its append-only file (to the
/// kernel) before it answers the command, so a kill of the Redis process, the machine
/// staying up, loses nothing Redis answered; the test asserts exactly that (every job done
/// before the kill is still done after the restart, and no enqueued job is missing). What it
/// cannot promise: that a crash of the machine loses nothing; everysec may lose the last
/// second of writes then (acks and leases come back as re-runs, which the pipeline's
/// read-before-write makes safe; an enqueue's loss is the producer's to notice). Nor can it
/// promise it under a disk whose fsync takes more than a second: Redis then holds writes
/// back for up to two seconds while still answering. The append-only file is on tmpfs
/// (`/dev/shm`) so that this test's own disk is never that disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_from_its_append_only_file() {
    let aof = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let mut redis = PrivateRedis::start(aof.path(), "everysec");
    let platform = NpmPlatform::start().await;
    let names = names("aof", 48);
    platform.seed(&names).await;
    let sqlite = SqliteDatabase::create();
    let db = sqlite_db(&sqlite).await;
    let t = TestQueue::on(&redis.url(), &[]).await;
    let q = &t.queue;
    let revs = Revisions::new();
    let mut producer = Producer::new(&names, &revs, FAST.max_attempts);
    producer.enqueue_stages(q).await;
    let mut config = pool_config(4, FAST);
    config.lease = Duration::from_secs(5);
    let workers = PipelineWorkers::start(q, &db, revs.root(), platform.adapters(), config);

    let jobs = names.len() * 2;
    let mut killed_at: Option<usize> = None;
    let mut done_before_kill: Vec<String> = Vec::new();
    let mut outage = Duration::ZERO;
    let start = Instant::now();
    producer
        .run_to_end(q, Duration::from_secs(150), async |done| {
            if killed_at.is_some() || done < jobs / 3 {
                return;
            }
            done_before_kill = done_ids(q).await;
            redis.kill9();
            let down = Instant::now();
            tokio::time::sleep(Duration::from_secs(3)).await;
            redis.restart();
            outage = down.elapsed();
            killed_at = Some(done);
        })
        .await;
    let drained = start.elapsed();
    workers.stop().await;

    let killed_at = killed_at.expect("the kill happened");
    assert!(killed_at < jobs, "the kill came after the last job");
    let done_after: std::collections::HashSet<String> = done_ids(q).await.into_iter().collect();
    let lost_acks = done_before_kill
        .iter()
        .filter(|id| !done_after.contains(*id))
        .count();
    producer.assert_all_done(q).await;
    let tally = Tally::take(q, &db, &platform, &producer).await;
    tally.print(
        "redis kill -9 + AOF restart",
        &[
            ("killed at done", killed_at.to_string()),
            ("done before kill", done_before_kill.len().to_string()),
            ("acks lost in the restart", lost_acks.to_string()),
            ("outage ms", outage.as_millis().to_string()),
            ("producer errors", producer.enqueue_errors.to_string()),
            ("producer read errors", producer.read_errors.to_string()),
            ("drain s", drained.as_secs().to_string()),
        ],
    );
    assert_eq!(lost_acks, 0, "a kill of Redis alone lost answered acks");
    assert_eq!(tally.duplicates_at_platform, 0);
    assert_eq!(tally.done as usize, jobs);
    assert_once_each(&platform, &producer).await;
}

/// PostgreSQL is cut off for 20 s through a TCP proxy: every live connection reset, new ones
/// refused for 10 s, then left unanswered for 10 s. An attempt that cannot record its start waits for the database without spending
/// an attempt; those under way when the cut came fail as transient and are retried with the
/// shipped backoff. No job dies, and after the cut every result is recorded (no attempt left open, every distribution promoted in the database), with one
/// publish and one promotion per package at the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_for_20_seconds() {
    let aof = tempfile::tempdir().unwrap();
    let redis = PrivateRedis::start(aof.path(), "everysec");
    let platform = NpmPlatform::start().await;
    let names = names("pgcut", 32);
    platform.seed(&names).await;
    let pg = PgDatabase::create().await;
    let proxy = Arc::new(TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await);
    let url = format!("postgres://postgres@{}/{}", proxy.addr, pg.name);
    let db = atr_dist::db::connect(&Secret::new(url), 4).await.unwrap();
    atr_dist::db::migrate_up(&db).await.unwrap();
    let t = TestQueue::on(&redis.url(), &[]).await;
    let q = &t.queue;
    let revs = Revisions::new();
    // The shipped retry policy: what decides whether a 20 s outage costs jobs.
    let retry = RetryConfig::default();
    let mut producer = Producer::new(&names, &revs, retry.max_attempts);
    producer.enqueue_stages(q).await;
    let mut config = pool_config(4, retry);
    config.lease = Duration::from_secs(5);
    let workers = PipelineWorkers::start(q, &db, revs.root(), platform.adapters(), config);

    let jobs = names.len() * 2;
    let cut_for = Duration::from_secs(20);
    let mut cut_at: Option<usize> = None;
    let mut restore: Option<tokio::task::JoinHandle<()>> = None;
    let start = Instant::now();
    producer
        .run_to_end(q, Duration::from_secs(150), async |done| {
            if cut_at.is_some() || done < jobs / 3 {
                return;
            }
            // The first half refused at once (a database that is down), the second half
            // blackholed (a network partition: connections hang until the client's own
            // connect timeout).
            proxy.cut(CutMode::Refuse);
            cut_at = Some(done);
            let proxy = Arc::clone(&proxy);
            restore = Some(tokio::spawn(async move {
                tokio::time::sleep(cut_for / 2).await;
                proxy.cut(CutMode::Blackhole);
                tokio::time::sleep(cut_for / 2).await;
                proxy.restore();
            }));
        })
        .await;
    let drained = start.elapsed();
    restore.expect("the cut happened").await.unwrap();
    workers.stop().await;

    let cut_at = cut_at.unwrap();
    assert!(cut_at < jobs, "the cut came after the last job");
    assert!(
        drained > cut_for,
        "the jobs ended during the cut, which then tested nothing"
    );
    producer.assert_all_done(q).await;
    let tally = Tally::take(q, &db, &platform, &producer).await;
    let rows = distribution::Entity::find().all(&db).await.unwrap();
    let promoted = rows.iter().filter(|r| r.promoted).count();
    tally.print(
        "postgres cut 20 s",
        &[
            ("cut at done", cut_at.to_string()),
            ("connections reset", proxy.resets().to_string()),
            (
                "connections refused or blackholed",
                proxy.refused().to_string(),
            ),
            (
                "distributions promoted in the database",
                promoted.to_string(),
            ),
            ("drain s", drained.as_secs().to_string()),
        ],
    );
    assert!(proxy.resets() + proxy.refused() > 0, "the cut cut nothing");
    // An attempt whose start cannot be recorded waits without spending an attempt; only
    // attempts under way when the cut came can fail (a worker holds up to twice its
    // concurrency), and their retries.
    assert!(
        tally.retried <= 16,
        "the cut spent {} attempts",
        tally.retried
    );
    assert!(tally.deferred > 0, "no attempt waited for the database");
    assert_eq!(tally.duplicates_at_platform, 0);
    assert_eq!(tally.done as usize, jobs);
    assert_eq!(tally.open_attempts, 0, "every attempt's end is recorded");
    assert_eq!(promoted, names.len(), "every promotion is recorded");
    assert_once_each(&platform, &producer).await;
}

/// The registry misbehaves for most packages of a run, each in one way: a 500 before the
/// publish reaches it, a publish whose answer is lost (502 after it took effect), a
/// connection reset before or after the publish took effect, a publish whose answer never
/// comes within the job timeout, a promotion whose answer is lost, failed reads, and a
/// promotion reset after it took effect. Every job ends done, every version is published and
/// promoted exactly once at the registry, and every write whose outcome the worker could
/// not know was followed by a read of the registry before anything else was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_errors_resets_timeouts_and_lost_answers() {
    let aof = tempfile::tempdir().unwrap();
    let redis = PrivateRedis::start(aof.path(), "everysec");
    let platform = NpmPlatform::start().await;
    let names = names("flaky", 48);
    platform.seed(&names).await;
    let proxy = &platform.proxy;
    let job_timeout = Duration::from_secs(6);
    for (i, name) in names.iter().enumerate() {
        let publish = || {
            Fault::new(500)
                .method("PUT")
                .path_contains(&format!("/{name}"))
        };
        // The PUT of `latest` that points it at 1.0.0 (should the stage move it back to
        // 0.9.0, that PUT is not this one).
        let promotion = |f: Fault| {
            f.method("PUT")
                .path_contains(&format!("/-/package/{name}/dist-tags/latest"))
                .sent_body(b"\"1.0.0\"")
        };
        let fault = match i % 8 {
            0 => publish(),
            1 => Fault::new(502)
                .method("PUT")
                .path_contains(&format!("/{name}"))
                .after_forwarding(),
            2 => Fault::reset()
                .method("PUT")
                .path_contains(&format!("/{name}")),
            3 => Fault::reset()
                .method("PUT")
                .path_contains(&format!("/{name}"))
                .after_forwarding(),
            // Longer than the job timeout: the attempt is stopped; the next reads back.
            4 => Fault::reset()
                .method("PUT")
                .path_contains(&format!("/{name}"))
                .after_forwarding()
                .stall(job_timeout + Duration::from_secs(4)),
            5 => promotion(Fault::new(504).after_forwarding()),
            6 => Fault::new(503)
                .method("GET")
                .path_contains(&format!("/{name}"))
                .times(2),
            _ => promotion(Fault::reset().after_forwarding()),
        };
        proxy.inject(fault);
    }
    let sqlite = SqliteDatabase::create();
    let db = sqlite_db(&sqlite).await;
    let t = TestQueue::on(&redis.url(), &[]).await;
    let q = &t.queue;
    let revs = Revisions::new();
    let mut producer = Producer::new(&names, &revs, FAST.max_attempts);
    producer.enqueue_stages(q).await;
    let mut config = pool_config(4, FAST);
    config.job_timeout = job_timeout;
    let workers = PipelineWorkers::start(q, &db, revs.root(), platform.adapters(), config);
    let start = Instant::now();
    producer
        .run_to_end(q, Duration::from_secs(150), async |_| {})
        .await;
    let drained = start.elapsed();
    workers.stop().await;

    producer.assert_all_done(q).await;
    let tally = Tally::take(q, &db, &platform, &producer).await;
    let (unknown, read_first) = platform.read_backs_after_unknown_outcomes(&names);
    tally.print(
        "registry faults",
        &[
            ("faults injected", proxy.injected().to_string()),
            ("writes with unknown outcome", unknown.to_string()),
            ("of which read back first", read_first.to_string()),
            ("drain s", drained.as_secs().to_string()),
        ],
    );
    assert_eq!(tally.duplicates_at_platform, 0);
    assert_eq!(tally.done as usize, names.len() * 2);
    // 0, 1, 2, 3, 4, 5, 7 of every 8 packages had a write answered by a fault.
    assert_eq!(unknown, names.len() / 8 * 7, "{:#?}", proxy.seen());
    assert_eq!(
        read_first, unknown,
        "a write with an unknown outcome was not read back first"
    );
    assert!(tally.read_backs > 0);
    assert_once_each(&platform, &producer).await;
}
