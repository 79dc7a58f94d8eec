//! The audit trail tells the truth: every attempt's `job_run` row is closed and its
//! distribution lock released on every way out of the attempt (timeout, cancel, shutdown,
//! panic, a failed result write), a changed revision is recorded with its paths, and a
//! promotion with its chain of digests. Real Redis, SQLite and PostgreSQL; a recording
//! adapter in place of a platform. (A worker killed with SIGKILL is in `crash.rs`.)

use std::sync::Arc;
use std::time::Duration;

use atr_dist::config::RetryConfig;
use atr_dist::platform::Adapters;
use atr_dist::queue::pool::PoolConfig;
use atr_dist_shared::entities::{job_run, revision_manifest};
use atr_dist_shared::job::RevisionSourceSpec;
use atr_dist_shared::{Envelope, JobState, ManifestDiff, Platform};
use atr_dist_tests::cases::eventually;
use atr_dist_tests::jobs::Dist;
use atr_dist_tests::pipeline_support::{Db, Harness, RecordingAdapter, ResultsDb};
use redis::AsyncCommands;
use sea_orm::{ConnectionTrait, EntityTrait};

const TGZ: &str = "example-pkg-1.0.0.tgz";
const VOTED: &[(&str, &[u8])] = &[(TGZ, b"tarball bytes v1"), ("README.txt", b"read me")];
const WAIT: Duration = Duration::from_secs(30);

const FAST: RetryConfig = RetryConfig {
    base_ms: 20,
    cap_ms: 100,
    max_attempts: 5,
};

const SLOW_RETRY: RetryConfig = RetryConfig {
    base_ms: 300,
    cap_ms: 600,
    max_attempts: 10,
};

fn dist() -> Dist {
    Dist::new(Platform::Npm, "", "example-pkg", "1.0.0")
}

fn stage(rev: &str, dry_run: bool) -> Envelope {
    dist().stage(rev, &[TGZ], RevisionSourceSpec::Dir, dry_run)
}

fn promote(rev: &str) -> Envelope {
    dist().promote(rev, RevisionSourceSpec::Dir, "pmc-chair")
}

/// A stage that never ends by itself.
fn blocking() -> RecordingAdapter {
    RecordingAdapter {
        stage_delay: Duration::from_secs(3600),
        ..Default::default()
    }
}

async fn harness(
    which: Db,
    adapter: &RecordingAdapter,
    retry: RetryConfig,
    adjust_pool: impl FnOnce(&mut PoolConfig),
) -> Harness {
    let adapters = Adapters::default().with(Platform::Npm, Arc::new(adapter.clone()));
    // A lock outliving any test: a lock left behind would hold the distribution all along.
    Harness::build(
        which,
        adapters,
        retry,
        |p, _| p.lock_ttl = Duration::from_secs(600),
        adjust_pool,
    )
    .await
}

async fn lock_held(h: &Harness) -> bool {
    let key = h.t.queue.lock_key(&dist().key().lock_id());
    let exists: bool = h.t.queue.connection().exists(key).await.unwrap();
    exists
}

async fn enqueue(h: &Harness, job: &Envelope, max_attempts: u32) -> String {
    h.t.queue.enqueue(job, None, max_attempts).await.unwrap().id
}

async fn state(h: &Harness, id: &str) -> JobState {
    h.t.queue.show(id).await.unwrap().unwrap().summary.state
}

/// Waits until the job's only attempt has a row that is still open (the attempt is running).
async fn wait_until_running(h: &Harness, job: &Envelope) {
    eventually("the attempt is running", WAIT, || async {
        let runs = h.runs(job).await;
        runs.len() == 1 && runs[0].finished_at.is_none()
    })
    .await;
}

/// Waits until the job's attempts are closed, and returns them.
async fn closed_runs(h: &Harness, job: &Envelope) -> Vec<job_run::Model> {
    eventually("every attempt's row is closed", WAIT, || async {
        let runs = h.runs(job).await;
        !runs.is_empty() && runs.iter().all(|r| r.finished_at.is_some())
    })
    .await;
    h.runs(job).await
}

async fn wait_for_lock_release(h: &Harness) {
    eventually("the distribution lock is released", WAIT, || async {
        !lock_held(h).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_attempt_is_closed_and_frees_its_lock() {
    let adapter = blocking();
    let h = harness(Db::Sqlite, &adapter, FAST, |c| {
        c.job_timeout = Duration::from_secs(1)
    })
    .await;
    h.revs.write("00001", VOTED);
    let slow = stage("00001", false);
    assert_eq!(h.run(&slow, 1).await, JobState::Dead);
    let runs = closed_runs(&h, &slow).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].outcome.as_deref(), Some("timed_out"));
    assert_eq!(runs[0].error_class.as_deref(), Some("transient"));
    let message = runs[0].message.clone().unwrap_or_default();
    assert!(
        message.contains("longer than the job timeout (1s)"),
        "{message}"
    );
    wait_for_lock_release(&h).await;

    // The next job for the distribution runs at once, not after the lock's ten minutes.
    let next = stage("00001", true);
    assert_eq!(h.run(&next, 1).await, JobState::Done);
    let events =
        h.t.queue
            .show(&next.id.to_string())
            .await
            .unwrap()
            .unwrap()
            .events;
    assert!(
        events.iter().all(|e| e.event != "deferred"),
        "the second job waited for a lock: {events:?}"
    );
    assert_eq!(h.runs(&next).await[0].outcome.as_deref(), Some("dry_run"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_attempt_is_closed_and_frees_its_lock() {
    let adapter = blocking();
    let h = harness(Db::Sqlite, &adapter, FAST, |_| {}).await;
    h.revs.write("00001", VOTED);
    let job = stage("00001", false);
    let id = enqueue(&h, &job, 3).await;
    wait_until_running(&h, &job).await;
    assert!(lock_held(&h).await);
    assert_eq!(
        h.t.queue
            .cancel(std::slice::from_ref(&id), "cancelled by the test")
            .await
            .unwrap(),
        vec![atr_dist::queue::AdminReply::Changed(JobState::Running)]
    );
    eventually("the job is cancelled", WAIT, || async {
        state(&h, &id).await == JobState::Cancelled
    })
    .await;
    let runs = closed_runs(&h, &job).await;
    assert_eq!(runs[0].outcome.as_deref(), Some("cancelled"), "{runs:?}");
    assert_eq!(runs[0].error_class, None);
    wait_for_lock_release(&h).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_stopped_by_shutdown_is_closed_and_frees_its_lock() {
    let adapter = blocking();
    let mut h = harness(Db::Sqlite, &adapter, FAST, |c| {
        c.shutdown_timeout = Duration::from_millis(500)
    })
    .await;
    h.revs.write("00001", VOTED);
    let job = stage("00001", false);
    let id = enqueue(&h, &job, 3).await;
    wait_until_running(&h, &job).await;
    // Stopping the pool waits for the stopped attempt's records: nothing to wait for after.
    h.stop_pool().await;
    assert_eq!(state(&h, &id).await, JobState::Queued, "handed back");
    let runs = h.runs(&job).await;
    assert_eq!(runs[0].outcome.as_deref(), Some("abandoned"), "{runs:?}");
    let message = runs[0].message.clone().unwrap_or_default();
    assert!(message.contains("worker shut down"), "{message}");
    assert!(!lock_held(&h).await, "the lock was released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_attempt_is_recorded_and_frees_its_lock() {
    let adapter = RecordingAdapter {
        stage_panics: Some("adapter bug (test)"),
        ..Default::default()
    };
    let h = harness(Db::Sqlite, &adapter, FAST, |_| {}).await;
    h.revs.write("00001", VOTED);
    let job = stage("00001", false);
    assert_eq!(
        h.run(&job, 3).await,
        JobState::Dead,
        "a panic is not retried"
    );
    let runs = closed_runs(&h, &job).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].outcome.as_deref(), Some("failed"));
    assert_eq!(runs[0].error_class.as_deref(), Some("permanent"));
    let message = runs[0].message.clone().unwrap_or_default();
    assert!(
        message.contains("panicked: adapter bug (test)"),
        "{message}"
    );
    wait_for_lock_release(&h).await;
    h.stop().await;
}

/// An attempt whose end could not be written leaves its row open; the job's next attempt
/// closes it as abandoned, saying why. (Which attempt that is depends on the backoff's
/// jitter: one started while the database still refuses fails to start, and is retried.)
async fn an_unrecorded_end_is_closed_by_the_next_attempt(which: Db) {
    let adapter = RecordingAdapter::default();
    // A lease of a minute: the harness's audit pass (once per lease, and once at the start)
    // would otherwise race the next attempt to close the row.
    let h = harness(which, &adapter, SLOW_RETRY, |c| {
        c.lease = Duration::from_secs(60)
    })
    .await;
    h.revs.write("00001", VOTED);
    let (create, drop): (&[&str], &str) = match which {
        Db::Sqlite => (
            &[
                "CREATE TRIGGER test_down BEFORE UPDATE ON job_run BEGIN SELECT RAISE(ABORT, 'database down (test)'); END",
            ],
            "DROP TRIGGER test_down",
        ),
        Db::Postgres => (
            &[
                "CREATE FUNCTION test_down() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'database down (test)'; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER test_down BEFORE UPDATE ON job_run FOR EACH ROW EXECUTE FUNCTION test_down()",
            ],
            "DROP TRIGGER test_down ON job_run",
        ),
    };
    for sql in create {
        h.db.execute_unprepared(sql).await.unwrap();
    }
    let job = stage("00001", false);
    let id = enqueue(&h, &job, 10).await;
    eventually(
        "the first attempt fails to record its end",
        WAIT,
        || async { state(&h, &id).await == JobState::Retrying },
    )
    .await;
    let runs = h.runs(&job).await;
    assert!(runs[0].finished_at.is_none(), "{runs:?}");
    h.db.execute_unprepared(drop).await.unwrap();
    eventually("the job is done", WAIT, || async {
        state(&h, &id).await == JobState::Done
    })
    .await;
    let runs = h.runs(&job).await;
    assert_eq!(runs[0].attempt, 1);
    assert_eq!(runs[0].outcome.as_deref(), Some("abandoned"), "{runs:?}");
    assert!(runs[0].finished_at.is_some());
    let message = runs[0].message.clone().unwrap_or_default();
    assert!(
        message.contains("the worker running attempt 1 stopped before recording its end")
            && message.contains("; closed when attempt ")
            && message.ends_with(" started"),
        "{message}"
    );
    let last = runs.last().unwrap();
    assert_eq!(last.outcome.as_deref(), Some("unchanged"), "{runs:?}");
    assert!(runs.iter().all(|r| r.finished_at.is_some()), "{runs:?}");
    h.stop().await;
}

/// A promote refused for a changed revision records the paths as data, not only as text.
async fn a_changed_revision_is_recorded_with_its_paths(which: Db) {
    let adapter = RecordingAdapter::default();
    let h = harness(which, &adapter, FAST, |_| {}).await;
    h.revs.write("00001", VOTED);
    assert_eq!(h.run(&stage("00001", false), 3).await, JobState::Done);
    h.revs.write(
        "00002",
        &[(TGZ, b"tarball bytes CHANGED"), ("NEW.txt", b"new")],
    );
    let p = promote("00002");
    assert_eq!(h.run(&p, 3).await, JobState::Dead);
    let runs = h.runs(&p).await;
    assert_eq!(runs[0].outcome.as_deref(), Some("revision_changed"));
    let diff: ManifestDiff =
        serde_json::from_value(runs[0].revision_diff.clone().expect("a diff is recorded")).unwrap();
    let names = |paths: &[atr_dist_shared::names::ArtifactPath]| {
        paths
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&diff.added), vec!["NEW.txt"]);
    assert_eq!(names(&diff.removed), vec!["README.txt"]);
    assert_eq!(names(&diff.changed), vec![TGZ]);
    h.stop().await;
}

/// The promotion records its chain: voted revision and manifest, staged digest, promoted
/// digest.
async fn a_promotion_records_its_chain(which: Db) {
    let adapter = RecordingAdapter::default();
    let h = harness(which, &adapter, FAST, |_| {}).await;
    h.revs.write("00001", VOTED);
    assert_eq!(h.run(&stage("00001", false), 3).await, JobState::Done);
    let staged = h.row().await.unwrap();
    let staged_digest = staged.platform_digest.clone().unwrap();
    assert_eq!(
        staged.staged_platform_digest.as_deref(),
        Some(staged_digest.as_str())
    );
    assert_eq!(staged.promoted_digest, None);
    // The vote makes revision 00002 with the same files.
    h.revs.write("00002", VOTED);
    assert_eq!(h.run(&promote("00002"), 3).await, JobState::Done);
    let row = h.row().await.unwrap();
    let voted = revision_manifest::Entity::find_by_id("example-1.0.0 00002".to_owned())
        .one(&h.db)
        .await
        .unwrap()
        .unwrap();
    assert!(row.promoted);
    assert_eq!(
        row.voted_revision_key.as_deref(),
        Some("example-1.0.0 00002")
    );
    assert_eq!(
        row.voted_manifest_digest.as_deref(),
        Some(voted.digest.as_str())
    );
    assert_eq!(row.voted_manifest_digest, row.staged_manifest_digest);
    assert_eq!(
        row.staging_revision_key.as_deref(),
        Some("example-1.0.0 00001")
    );
    assert_eq!(
        row.staged_platform_digest.as_deref(),
        Some(staged_digest.as_str())
    );
    assert_eq!(row.promoted_digest.as_deref(), Some(staged_digest.as_str()));
    h.stop().await;
}

macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(Db::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(Db::Postgres).await;
            }
        }
    };
}

on_both!(an_unrecorded_end_is_closed_by_the_next_attempt);
on_both!(a_changed_revision_is_recorded_with_its_paths);
on_both!(a_promotion_records_its_chain);

/// The `job_run` row `id`.
async fn job_run_row(db: &sea_orm::DatabaseConnection, id: i64) -> job_run::Model {
    job_run::Entity::find_by_id(id)
        .one(db)
        .await
        .unwrap()
        .unwrap()
}

/// An attempt's row, opened and closed by `record` directly, holds all it was given; a
/// second attempt's start closes the first's row as abandoned, saying so.
async fn an_attempts_row_holds_what_it_was_given(which: Db) {
    use atr_dist::pipeline::record::{self, RunEnd, RunStart};
    use atr_dist::platform::http::BudgetState;
    use atr_dist_shared::names::ArtifactPath;
    use atr_dist_shared::{AttemptOutcome, ErrorClass, JobKind};

    let results = ResultsDb::create(which).await;
    let db = results.db.clone();
    // A scoped package: every part of the key is something to write.
    let key = Dist::new(Platform::NpmScoped, "apache", "example-pkg", "1.0.0").key();
    let started = chrono::Utc::now() - chrono::Duration::seconds(5);
    let start = |attempt| RunStart {
        job_id: "job-1",
        kind: JobKind::Promote,
        key: &key,
        attempt,
        started_at: started,
        queue: "queue-1",
    };
    let row = |id: i64| job_run_row(&db, id);
    let first = record::start_run(&db, start(3)).await.unwrap();
    let r = row(first).await;
    assert_eq!(
        (
            r.job_id.as_str(),
            r.kind.as_str(),
            r.release_key.as_str(),
            r.platform,
            r.owner_namespace.as_str(),
            r.package.as_str(),
            r.version.as_str(),
            r.attempt,
            r.queue.as_deref(),
        ),
        (
            "job-1",
            "promote",
            "example-1.0.0",
            Platform::NpmScoped,
            "apache",
            "example-pkg",
            "1.0.0",
            3,
            Some("queue-1"),
        )
    );
    assert_eq!(r.started_at.timestamp_millis(), started.timestamp_millis());
    assert_eq!((r.finished_at, r.outcome), (None, None));

    let second = record::start_run(&db, start(4)).await.unwrap();
    assert_ne!(second, first);
    let r = row(first).await;
    assert_eq!(r.outcome.as_deref(), Some("abandoned"));
    assert!(r.finished_at.is_some());
    assert_eq!(
        r.message,
        Some(format!(
            "{}; closed when attempt 4 started",
            record::abandoned_reason(3)
        ))
    );

    let diff = ManifestDiff {
        added: vec![ArtifactPath::new("NEW.txt").unwrap()],
        removed: Vec::new(),
        changed: vec![ArtifactPath::new(TGZ).unwrap()],
    };
    record::finish_run(
        &db,
        second,
        RunEnd {
            outcome: AttemptOutcome::RevisionChanged,
            http: BudgetState {
                requests: 7,
                retries: 2,
                waited: Duration::from_millis(300),
            },
            error_class: Some(ErrorClass::Permanent),
            message: Some("the revision changed".to_owned()),
            http_status: Some(409),
            started_at: started,
            revision_diff: Some(diff.clone()),
        },
    )
    .await
    .unwrap();
    let r = row(second).await;
    assert_eq!(
        (
            r.outcome.as_deref(),
            r.error_class.as_deref(),
            r.message.as_deref(),
            r.http_status,
            r.http_requests,
            r.http_retries,
        ),
        (
            Some("revision_changed"),
            Some("permanent"),
            Some("the revision changed"),
            Some(409),
            Some(7),
            Some(2),
        )
    );
    assert!(r.finished_at.is_some());
    let took = r.duration_ms.unwrap();
    assert!((5_000..120_000).contains(&took), "{took} ms");
    assert_eq!(r.revision_diff, Some(serde_json::to_value(&diff).unwrap()));
    // The first attempt's row is as its closing left it.
    assert_eq!(row(first).await.outcome.as_deref(), Some("abandoned"));
}

on_both!(an_attempts_row_holds_what_it_was_given);

/// The audit pass, called directly on rows written by hand: each open row is closed or kept
/// according to where its job is now, saying so; closed rows, rows of other queues and the
/// row of the attempt that runs now are left as they are; and it reads past a first batch
/// (500 rows) that holds a row it keeps.
async fn the_audit_pass_closes_exactly_the_attempts_that_are_over(which: Db) {
    use atr_dist::pipeline::{audit, record};
    use sea_orm::{ActiveModelTrait, Set};

    let results = ResultsDb::create(which).await;
    let db = results.db.clone();
    let t = atr_dist_tests::redis_support::TestQueue::new().await;
    let q = &t.queue;
    assert_eq!(
        audit::close_abandoned(&db, q).await.unwrap(),
        0,
        "no open rows"
    );
    let enqueue = |release: &'static str, max_attempts: u32| async move {
        let job = Dist::new(Platform::Npm, "", release, "1.0.0").stage(
            "00001",
            &[TGZ],
            RevisionSourceSpec::Dir,
            false,
        );
        q.enqueue(&job, None, max_attempts).await.unwrap().id
    };
    // A job running its second attempt: its first lease expired and it was leased again.
    let running = enqueue("running-pkg", 3).await;
    assert_eq!(
        q.fetch("w1", Duration::from_millis(50), 1).await.unwrap()[0].attempt,
        1
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = q.fetch("w2", Duration::from_secs(600), 1).await.unwrap();
    assert_eq!(
        (again[0].id.as_str(), again[0].attempt),
        (running.as_str(), 2)
    );
    let queued = enqueue("queued-pkg", 3).await;
    let cancelled = enqueue("cancelled-pkg", 3).await;
    q.cancel(std::slice::from_ref(&cancelled), "cancelled by the test")
        .await
        .unwrap();
    let gone = "00000000-0000-4000-8000-000000000000".to_owned();

    let insert = |job_id: String, attempt: i32, queue: String, finished: bool| {
        let db = db.clone();
        async move {
            let now = chrono::Utc::now();
            job_run::ActiveModel {
                job_id: Set(job_id),
                kind: Set("stage".to_owned()),
                release_key: Set("example-1.0.0".to_owned()),
                platform: Set(Platform::Npm),
                owner_namespace: Set(String::new()),
                package: Set("example-pkg".to_owned()),
                version: Set("1.0.0".to_owned()),
                attempt: Set(attempt),
                started_at: Set(now),
                finished_at: Set(finished.then_some(now)),
                outcome: Set(finished.then(|| "completed".to_owned())),
                message: Set(finished.then(|| "done before the audit".to_owned())),
                queue: Set(Some(queue)),
                ..Default::default()
            }
            .insert(&db)
            .await
            .unwrap()
            .id
        }
    };
    let mine = || t.name.clone();
    // 520 rows of jobs the queue no longer has, with the row of the running attempt among
    // the first 500: the pass reads on past a batch in which it kept a row.
    let mut gone_rows = Vec::new();
    for _ in 0..300 {
        gone_rows.push(insert(gone.clone(), 1, mine(), false).await);
    }
    let current = insert(running.clone(), 2, mine(), false).await;
    for _ in 0..220 {
        gone_rows.push(insert(gone.clone(), 1, mine(), false).await);
    }
    let earlier = insert(running.clone(), 1, mine(), false).await;
    let of_queued = insert(queued.clone(), 1, mine(), false).await;
    let of_cancelled = insert(cancelled.clone(), 1, mine(), false).await;
    let finished = insert(gone.clone(), 1, mine(), true).await;
    let other_queue = insert(gone.clone(), 1, format!("{}-other", t.name), false).await;

    assert_eq!(
        audit::close_abandoned(&db, q).await.unwrap(),
        520 + 3,
        "every open row of this queue but the running attempt's"
    );
    let row = |id: i64| job_run_row(&db, id);
    let closed = |id: i64, now: &'static str, attempt: i32| {
        let row = row(id);
        async move {
            let r = row.await;
            assert_eq!(r.outcome.as_deref(), Some("abandoned"), "{r:?}");
            assert!(r.finished_at.is_some(), "{r:?}");
            assert_eq!(
                r.message.as_deref(),
                Some(format!("{}; {now}", record::abandoned_reason(attempt)).as_str())
            );
        }
    };
    closed(earlier, "the job runs attempt 2 now", 1).await;
    closed(of_queued, "the job is queued now", 1).await;
    closed(of_cancelled, "the job is cancelled now", 1).await;
    for id in [gone_rows[0], gone_rows[299], gone_rows[300], gone_rows[519]] {
        closed(id, "the job is no longer in the queue", 1).await;
    }
    let kept = row(current).await;
    assert_eq!((kept.outcome, kept.finished_at), (None, None));
    let kept = row(finished).await;
    assert_eq!(kept.outcome.as_deref(), Some("completed"));
    assert_eq!(kept.message.as_deref(), Some("done before the audit"));
    let kept = row(other_queue).await;
    assert_eq!((kept.outcome, kept.finished_at), (None, None));

    // Nothing is left to close: a second pass closes nothing and changes nothing.
    assert_eq!(audit::close_abandoned(&db, q).await.unwrap(), 0);
    assert_eq!(row(current).await.finished_at, None);
}

on_both!(the_audit_pass_closes_exactly_the_attempts_that_are_over);
