//! The distribution pipeline end to end: a real Redis queue, a real database (SQLite and
//! PostgreSQL), revision directories on disk, and a recording adapter in place of a platform.

use std::sync::Arc;
use std::time::Duration;

use atr_dist::config::RetryConfig;
use atr_dist::pipeline::wait::Schedule;
use atr_dist::platform::Adapters;
use atr_dist_shared::entities::revision_manifest;
use atr_dist_shared::job::RevisionSourceSpec;
use atr_dist_shared::names::ArtifactPath;
use atr_dist_shared::{
    AtrTaskStatus, DistributionKey, Envelope, ErrorClass, Job, JobReport, JobState, ManifestDiff,
    Platform,
};
use atr_dist_tests::cases::{eventually, pool_config};
use atr_dist_tests::jobs::Dist;
use atr_dist_tests::pipeline_support::{Db, Harness, RecordingAdapter};
use sea_orm::{ConnectionTrait, EntityTrait, TransactionTrait};

const TGZ: &str = "example-pkg-1.0.0.tgz";

/// The shared harness with a recording adapter for NPM.
struct Rec {
    h: Harness,
    adapter: RecordingAdapter,
}

impl std::ops::Deref for Rec {
    type Target = Harness;
    fn deref(&self) -> &Harness {
        &self.h
    }
}

impl Rec {
    async fn stop(self) {
        self.h.stop().await;
    }
}

async fn recording(which: Db, adapter: RecordingAdapter, retry: RetryConfig) -> Rec {
    let adapters = Adapters::default().with(Platform::Npm, Arc::new(adapter.clone()));
    Rec {
        h: Harness::new(which, adapters, retry).await,
        adapter,
    }
}

fn dist() -> Dist {
    Dist::new(Platform::Npm, "", "example-pkg", "1.0.0")
}

fn stage(rev: &str, dry_run: bool) -> Envelope {
    dist().stage(rev, &[TGZ], RevisionSourceSpec::Dir, dry_run)
}

fn promote(rev: &str) -> Envelope {
    dist().promote(rev, RevisionSourceSpec::Dir, "pmc-chair")
}

const VOTED: &[(&str, &[u8])] = &[(TGZ, b"tarball bytes v1"), ("README.txt", b"read me")];

fn key() -> DistributionKey {
    dist().key()
}

const SLOW_RETRY: RetryConfig = RetryConfig {
    base_ms: 300,
    cap_ms: 600,
    max_attempts: 10,
};

const FAST: RetryConfig = RetryConfig {
    base_ms: 20,
    cap_ms: 100,
    max_attempts: 5,
};

async fn stage_then_promote(which: Db) {
    let h = recording(which, RecordingAdapter::default(), FAST).await;
    h.revs.write("00001", VOTED);
    let s = stage("00001", false);
    assert_eq!(h.run(&s, 3).await, JobState::Done);
    let row = h.row().await.unwrap();
    assert!(row.staging && !row.promoted && !row.pending);
    assert_eq!(
        row.staging_revision_key.as_deref(),
        Some("example-1.0.0 00001")
    );
    assert_eq!(row.staging_tag.as_deref(), Some("rc"));
    assert_eq!(row.created_by.as_deref(), Some("rm"));
    let manifest = revision_manifest::Entity::find_by_id("example-1.0.0 00001".to_owned())
        .one(&h.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        row.staged_manifest_digest.as_deref(),
        Some(manifest.digest.as_str())
    );
    assert_eq!(manifest.file_count, 2);

    let p = promote("00001");
    assert_eq!(h.run(&p, 3).await, JobState::Done);
    let row = h.row().await.unwrap();
    assert!(!row.staging && row.promoted && row.promoted_at.is_some());
    assert_eq!(row.created_by.as_deref(), Some("pmc-chair"));
    assert_eq!(
        h.adapter.writes(),
        vec![
            format!("stage {} rc", key()),
            format!("promote {} latest", key())
        ]
    );
    let runs = h.runs(&p).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].outcome.as_deref(), Some("completed"));
    assert!(runs[0].finished_at.is_some() && runs[0].duration_ms.is_some());
    let msg = runs[0].message.clone().unwrap();
    assert!(
        msg.starts_with(&format!("promoted {} to latest as sha256:", key()))
            && msg.ends_with("(voted revision example-1.0.0 00001)"),
        "{msg}"
    );

    // A stage after promote is refused, and sends nothing.
    let again = stage("00001", false);
    assert_eq!(h.run(&again, 3).await, JobState::Dead);
    let detail =
        h.t.queue
            .show(&again.id.to_string())
            .await
            .unwrap()
            .unwrap();
    assert!(
        detail
            .summary
            .last_error
            .unwrap()
            .contains("already promoted")
    );
    assert_eq!(h.adapter.writes().len(), 2);
    h.stop().await;
}

async fn changed_files_are_refused(which: Db) {
    let h = recording(which, RecordingAdapter::default(), FAST).await;
    h.revs.write("00001", VOTED);
    assert_eq!(h.run(&stage("00001", false), 3).await, JobState::Done);
    h.revs.write(
        "00002",
        &[
            (TGZ, b"tarball bytes CHANGED"),
            ("README.txt", b"read me"),
            ("NEW.txt", b"new"),
        ],
    );
    let p = promote("00002");
    assert_eq!(h.run(&p, 3).await, JobState::Dead);
    let s =
        h.t.queue
            .show(&p.id.to_string())
            .await
            .unwrap()
            .unwrap()
            .summary;
    let msg = s.last_error.clone().unwrap();
    assert!(
        msg.contains("added: NEW.txt") && msg.contains(&format!("changed: {TGZ}")),
        "{msg}"
    );
    assert_eq!(s.attempt, 1, "a changed revision is permanent: no retries");
    let class = s.error_class.as_deref().and_then(ErrorClass::parse);
    assert_eq!(AtrTaskStatus::of(s.state, class), AtrTaskStatus::Failed);
    let runs = h.runs(&p).await;
    assert_eq!(runs[0].outcome.as_deref(), Some("revision_changed"));
    assert_eq!(runs[0].error_class.as_deref(), Some("permanent"));
    // The run names the paths that differ, for the operator and ATR's attempt history.
    let diff: ManifestDiff =
        serde_json::from_value(runs[0].revision_diff.clone().expect("a diff is recorded")).unwrap();
    assert_eq!(
        diff,
        ManifestDiff {
            added: vec![ArtifactPath::new("NEW.txt").unwrap()],
            removed: vec![],
            changed: vec![ArtifactPath::new(TGZ).unwrap()],
        }
    );
    // Nothing was sent to the platform, and the row is still only staged.
    assert_eq!(h.adapter.writes(), vec![format!("stage {} rc", key())]);
    assert!(!h.row().await.unwrap().promoted);
    h.stop().await;
}

async fn identical_new_revision_promotes_once(which: Db) {
    let h = recording(which, RecordingAdapter::default(), FAST).await;
    h.revs.write("00001", VOTED);
    assert_eq!(h.run(&stage("00001", false), 3).await, JobState::Done);
    // The vote passing makes revision 00002 with the same files.
    h.revs.write("00002", VOTED);
    assert_eq!(h.run(&promote("00002"), 3).await, JobState::Done);
    let promoted = h.row().await.unwrap();
    // Promote again, asked for by someone else: nothing sent, recorded as unchanged, and
    // the record of the promotion (who, when, which vote) stays the first one's.
    let again = dist().promote("00002", RevisionSourceSpec::Dir, "someone-else");
    assert_eq!(h.run(&again, 3).await, JobState::Done);
    let runs = h.runs(&again).await;
    assert_eq!(runs[0].outcome.as_deref(), Some("unchanged"));
    let msg = runs[0].message.clone().unwrap();
    assert!(
        msg.contains(&format!("{} was already promoted to latest as", key())),
        "{msg}"
    );
    assert_eq!(h.row().await.unwrap(), promoted);
    let writes = h.adapter.writes();
    assert_eq!(
        writes.iter().filter(|w| w.starts_with("promote")).count(),
        1,
        "{writes:?}"
    );
    h.stop().await;
}

async fn overwritten_staging_tag_is_caught(which: Db) {
    let h = recording(which, RecordingAdapter::default(), FAST).await;
    h.revs.write("00001", VOTED);
    assert_eq!(h.run(&stage("00001", false), 3).await, JobState::Done);
    h.adapter.overwrite_staged(&key(), "rc");
    let p = promote("00001");
    assert_eq!(h.run(&p, 3).await, JobState::Dead);
    let msg =
        h.t.queue
            .show(&p.id.to_string())
            .await
            .unwrap()
            .unwrap()
            .summary
            .last_error
            .unwrap();
    assert!(msg.contains("rc was overwritten since staging"), "{msg}");
    assert!(h.adapter.writes().iter().all(|w| !w.starts_with("promote")));
    // A refusal that is not about the revision's files records no diff of them.
    let runs = h.runs(&p).await;
    assert_eq!(runs[0].outcome.as_deref(), Some("failed"));
    assert_eq!(runs[0].revision_diff, None, "{runs:?}");
    h.stop().await;
}

/// Makes the database refuse `op` (INSERT or UPDATE) on `distribution`, as a database that
/// is down refuses the result write, while everything else works; returns the statement
/// that lets it accept them again.
async fn refuse_result_writes(h: &Harness, which: Db, op: &str) -> &'static str {
    let (create, accept): (Vec<String>, &str) = match which {
        Db::Sqlite => (
            vec![format!(
                "CREATE TRIGGER test_down BEFORE {op} ON distribution BEGIN SELECT RAISE(ABORT, 'database down (test)'); END"
            )],
            "DROP TRIGGER test_down",
        ),
        Db::Postgres => (
            vec![
                "CREATE FUNCTION test_down() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'database down (test)'; END $$ LANGUAGE plpgsql".to_owned(),
                format!("CREATE TRIGGER test_down BEFORE {op} ON distribution FOR EACH ROW EXECUTE FUNCTION test_down()"),
            ],
            "DROP TRIGGER test_down ON distribution",
        ),
    };
    for sql in create {
        h.db.execute_unprepared(&sql).await.unwrap();
    }
    accept
}

async fn failed_result_write_is_retried_without_a_second_stage(which: Db) {
    let h = recording(which, RecordingAdapter::default(), SLOW_RETRY).await;
    h.revs.write("00001", VOTED);
    // The result write fails (as with the database down) while everything else works.
    let drop = refuse_result_writes(&h, which, "INSERT").await;
    let s = stage("00001", false);
    let e = h.t.queue.enqueue(&s, None, 10).await.unwrap();
    let q = &h.t.queue;
    eventually("first attempt fails", Duration::from_secs(20), || async {
        q.show(&e.id).await.unwrap().unwrap().summary.state == JobState::Retrying
    })
    .await;
    h.db.execute_unprepared(drop).await.unwrap();
    eventually("job done", Duration::from_secs(20), || async {
        q.show(&e.id).await.unwrap().unwrap().summary.state == JobState::Done
    })
    .await;
    assert_eq!(
        h.adapter.writes(),
        vec![format!("stage {} rc", key())],
        "staged once"
    );
    let runs = h.runs(&s).await;
    assert!(runs.len() >= 2, "{runs:?}");
    assert_eq!(runs[0].error_class.as_deref(), Some("transient"));
    assert!(
        runs[0]
            .message
            .as_deref()
            .unwrap_or("")
            .contains("database down (test)"),
        "{:?}",
        runs[0].message
    );
    assert_eq!(runs.last().unwrap().outcome.as_deref(), Some("unchanged"));
    assert!(h.row().await.unwrap().staging);
    h.stop().await;
}

async fn failed_promote_result_write_is_retried_without_a_second_tag_move(which: Db) {
    let h = recording(which, RecordingAdapter::default(), SLOW_RETRY).await;
    h.revs.write("00001", VOTED);
    assert_eq!(h.run(&stage("00001", false), 3).await, JobState::Done);
    // The promote's result write (an UPDATE of the staged row) fails after the tag moved.
    let accept = refuse_result_writes(&h, which, "UPDATE").await;
    let p = promote("00001");
    let e = h.t.queue.enqueue(&p, None, 10).await.unwrap();
    let q = &h.t.queue;
    eventually("first attempt fails", Duration::from_secs(20), || async {
        q.show(&e.id).await.unwrap().unwrap().summary.state == JobState::Retrying
    })
    .await;
    h.db.execute_unprepared(accept).await.unwrap();
    eventually("job done", Duration::from_secs(20), || async {
        q.show(&e.id).await.unwrap().unwrap().summary.state == JobState::Done
    })
    .await;
    assert_eq!(
        h.adapter.writes(),
        vec![
            format!("stage {} rc", key()),
            format!("promote {} latest", key())
        ],
        "the tag moved once"
    );
    let runs = h.runs(&p).await;
    assert!(runs.len() >= 2, "{runs:?}");
    assert_eq!(runs[0].error_class.as_deref(), Some("transient"));
    assert!(
        runs[0]
            .message
            .as_deref()
            .unwrap_or("")
            .contains("database down (test)"),
        "{:?}",
        runs[0].message
    );
    assert_eq!(runs.last().unwrap().outcome.as_deref(), Some("unchanged"));
    let row = h.row().await.unwrap();
    assert!(row.promoted && !row.staging, "{row:?}");
    h.stop().await;
}

async fn jobs_for_one_key_never_overlap(which: Db) {
    let adapter = RecordingAdapter {
        stage_delay: Duration::from_millis(400),
        ..Default::default()
    };
    let h = recording(which, adapter, FAST).await;
    h.revs.write("00001", VOTED);
    let a = stage("00001", false);
    let b = stage("00001", false);
    h.t.queue
        .enqueue_bulk(&[a.clone(), b.clone()], None, 3)
        .await
        .unwrap();
    let q = &h.t.queue;
    eventually("both done", Duration::from_secs(30), || async {
        let sa = q
            .show(&a.id.to_string())
            .await
            .unwrap()
            .unwrap()
            .summary
            .state;
        let sb = q
            .show(&b.id.to_string())
            .await
            .unwrap()
            .unwrap()
            .summary
            .state;
        sa == JobState::Done && sb == JobState::Done
    })
    .await;
    assert_eq!(
        h.adapter
            .max_in_stage
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(
        h.adapter.writes().len(),
        1,
        "the second job found the work done"
    );
    let deferred = [&a, &b].iter().any(|j| {
        futures::executor::block_on(q.show(&j.id.to_string()))
            .unwrap()
            .unwrap()
            .events
            .iter()
            .any(|e| e.event == "deferred")
    });
    assert!(deferred, "one job waited for the other's lock");
    h.stop().await;
}

/// One distribution has one lock whichever queue its jobs come from: the same stage on two
/// queues (two pools, one deployment) never runs twice at once, and the second finds the
/// work done.
async fn one_distribution_on_two_queues_is_staged_once(which: Db) {
    let adapter = RecordingAdapter {
        stage_delay: Duration::from_millis(400),
        ..Default::default()
    };
    let adapters = || Adapters::default().with(Platform::Npm, Arc::new(adapter.clone()));
    let first = Harness::new(which, adapters(), FAST).await;
    let second = Harness::sharing_locks_with(which, adapters(), FAST, &first).await;
    first.revs.write("00001", VOTED);
    second.revs.write("00001", VOTED);
    let (a, b) = (stage("00001", false), stage("00001", false));
    let (sa, sb) = tokio::join!(first.run(&a, 3), second.run(&b, 3));
    assert_eq!((sa, sb), (JobState::Done, JobState::Done));
    assert_eq!(
        adapter
            .max_in_stage
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "never two stages at once"
    );
    assert_eq!(adapter.writes().len(), 1, "the second found the work done");
    let deferred = [(&first, &a), (&second, &b)].iter().any(|(h, j)| {
        futures::executor::block_on(h.t.queue.show(&j.id.to_string()))
            .unwrap()
            .unwrap()
            .events
            .iter()
            .any(|e| e.event == "deferred")
    });
    assert!(deferred, "one job waited for the other's lock");
    first.stop().await;
    second.stop().await;
}

async fn dry_runs_describe_and_record_without_writing(which: Db) {
    let h = recording(which, RecordingAdapter::default(), FAST).await;
    h.revs.write("00001", VOTED);
    let s = stage("00001", true);
    assert_eq!(h.run(&s, 3).await, JobState::Done);
    let runs = h.runs(&s).await;
    assert_eq!(runs[0].outcome.as_deref(), Some("dry_run"));
    let msg = runs[0].message.clone().unwrap();
    assert!(
        msg.contains("would stage") && msg.contains("PUT http://127.0.0.1/example-pkg"),
        "{msg}"
    );
    assert!(msg.contains("; nothing staged yet;"), "{msg}");
    assert!(h.adapter.writes().is_empty());
    assert!(h.row().await.is_none(), "a dry run records no distribution");
    assert!(
        revision_manifest::Entity::find_by_id("example-1.0.0 00001".to_owned())
            .one(&h.db)
            .await
            .unwrap()
            .is_some()
    );
    h.stop().await;
}

/// A harness whose waits on the platform are short.
async fn waiting(which: Db, adapter: RecordingAdapter, deadline: Option<Duration>) -> Rec {
    let adapters = Adapters::default().with(Platform::Npm, Arc::new(adapter.clone()));
    let h = Harness::custom(which, adapters, FAST, |p| {
        p.waits = Schedule {
            first: Duration::from_millis(20),
            max: Duration::from_millis(80),
        };
        if let Some(deadline) = deadline {
            p.wait_deadlines.insert(Platform::Npm, deadline);
        }
    })
    .await;
    Rec { h, adapter }
}

/// A platform that is not there yet makes the job wait in Redis, spending no attempt: a
/// promote allowed one attempt survives three waits, each recorded as `waiting`.
async fn waits_spend_no_attempt(which: Db) {
    let adapter = RecordingAdapter::default();
    adapter
        .promote_not_yet
        .store(3, std::sync::atomic::Ordering::SeqCst);
    let h = waiting(which, adapter, None).await;
    h.revs.write("00001", VOTED);
    h.run_to_done(&stage("00001", false), 1).await;
    let p = promote("00001");
    h.run_to_done(&p, 1).await;
    let runs = h.runs(&p).await;
    let outcomes: Vec<_> = runs.iter().map(|r| r.outcome.clone().unwrap()).collect();
    assert_eq!(
        outcomes,
        ["waiting", "waiting", "waiting", "completed"],
        "{runs:?}"
    );
    assert!(runs.iter().all(|r| r.attempt == 1), "{runs:?}");
    assert!(runs[0].error_class.is_none(), "a wait is not a failure");
    let msg = runs[0].message.clone().unwrap();
    assert!(
        msg.contains("no attempt spent") && msg.contains("is not indexed yet"),
        "{msg}"
    );
    let shown = h.t.queue.show(&p.id.to_string()).await.unwrap().unwrap();
    assert_eq!(shown.summary.attempt, 1);
    let deferred = shown
        .events
        .iter()
        .filter(|e| e.event == "deferred")
        .count();
    assert_eq!(deferred, 3, "{:?}", shown.events);
    assert!(h.row().await.unwrap().promoted);
    h.stop().await;
}

/// Waits end at the platform's deadline, counted from the first: the job ends dead at once
/// (no further attempts), `transient`, which ATR shows as BROKEN, saying how long it waited.
async fn waits_end_at_the_deadline(which: Db) {
    let adapter = RecordingAdapter::default();
    adapter
        .promote_not_yet
        .store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
    let h = waiting(which, adapter, Some(Duration::from_millis(400))).await;
    h.revs.write("00001", VOTED);
    h.run_to_done(&stage("00001", false), 1).await;
    let p = promote("00001");
    assert_eq!(h.run(&p, 5).await, JobState::Dead);
    let s =
        h.t.queue
            .show(&p.id.to_string())
            .await
            .unwrap()
            .unwrap()
            .summary;
    assert_eq!(s.attempt, 1, "giving up spends no more attempts");
    let class = s.error_class.as_deref().and_then(ErrorClass::parse);
    assert_eq!(class, Some(ErrorClass::Transient));
    assert_eq!(AtrTaskStatus::of(s.state, class), AtrTaskStatus::Broken);
    let msg = s.last_error.unwrap();
    assert!(
        msg.contains("is not indexed yet; gave up after waiting")
            && msg.contains("wait_deadline_secs is 400ms"),
        "{msg}"
    );
    let runs = h.runs(&p).await;
    let last = runs.last().unwrap();
    assert_eq!(last.outcome.as_deref(), Some("failed"));
    assert!(runs.len() >= 3, "it waited before giving up: {runs:?}");
    assert!(
        runs[..runs.len() - 1]
            .iter()
            .all(|r| r.outcome.as_deref() == Some("waiting")),
        "{runs:?}"
    );
    assert!(!h.row().await.unwrap().promoted);
    h.stop().await;
}

/// A platform with no staging place: stage checks the sealed files and sends nothing, never
/// reads a staging place, and records the expected digest; a second stage of the same bytes
/// is `unchanged`.
async fn local_staging_checks_without_a_staging_place(which: Db) {
    let adapter = RecordingAdapter {
        local_staging: true,
        ..Default::default()
    };
    let h = recording(which, adapter, FAST).await;
    h.revs.write("00001", VOTED);
    let first = stage("00001", false);
    h.run_to_done(&first, 1).await;
    let again = stage("00001", false);
    h.run_to_done(&again, 1).await;
    assert_eq!(
        h.adapter
            .staged_reads
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert_eq!(
        h.adapter.writes(),
        [format!("check {}", key()), format!("check {}", key())]
    );
    assert_eq!(
        h.runs(&first).await[0].outcome.as_deref(),
        Some("completed")
    );
    assert_eq!(
        h.runs(&again).await[0].outcome.as_deref(),
        Some("unchanged")
    );
    let row = h.row().await.unwrap();
    assert!(row.staging && row.platform_digest.is_some(), "{row:?}");
    h.stop().await;
}

/// A promote job for revision `rev` that only says what it would do.
fn dry_promote(rev: &str) -> Envelope {
    let mut e = promote(rev);
    let Job::Promote(p) = &mut e.job else {
        unreachable!("promote() makes a promote job")
    };
    p.dry_run = true;
    e
}

/// The message of the job's first recorded attempt.
async fn message(h: &Harness, job: &Envelope) -> String {
    h.runs(job).await[0].message.clone().unwrap_or_default()
}

/// The digest the recording adapter gives [`VOTED`] staged as [`stage`] stages it.
fn voted_digest() -> atr_dist_shared::Digest {
    RecordingAdapter::digest_of(&[VOTED[0].1])
}

/// A dry run reads the platform and says what a real run would find there: the voted bytes
/// staged already, or (promoting) what it would move, or that production holds them.
async fn dry_runs_say_what_the_platform_holds(which: Db) {
    let h = recording(which, RecordingAdapter::default(), FAST).await;
    h.revs.write("00001", VOTED);
    h.run_to_done(&stage("00001", false), 1).await;
    let voted = voted_digest();
    let dry = stage("00001", true);
    h.run_to_done(&dry, 1).await;
    let msg = message(&h, &dry).await;
    assert!(
        msg.contains(&format!(
            "; already staged as {voted}: nothing would be sent;"
        )),
        "{msg}"
    );
    let dry = dry_promote("00001");
    h.run_to_done(&dry, 1).await;
    assert_eq!(h.runs(&dry).await[0].outcome.as_deref(), Some("dry_run"));
    let msg = message(&h, &dry).await;
    assert!(
        msg.contains(&format!(
            "would promote {voted} to latest; writes: PUT http://127.0.0.1/example-pkg/latest"
        )),
        "{msg}"
    );
    assert_eq!(h.adapter.writes(), [format!("stage {} rc", key())]);
    h.run_to_done(&promote("00001"), 1).await;
    let dry = dry_promote("00001");
    h.run_to_done(&dry, 1).await;
    let msg = message(&h, &dry).await;
    assert!(
        msg.contains(&format!(
            "latest already holds {voted}: nothing would be sent"
        )),
        "{msg}"
    );
    assert_eq!(h.adapter.writes().len(), 2);
    h.stop().await;
}

/// A staging tag someone else pushed other bytes to is staged over with the voted ones (a
/// dry run says what is there first); staged again with nothing changed, it is `unchanged`.
async fn a_staging_tag_holding_other_bytes_is_staged_again(which: Db) {
    let h = recording(which, RecordingAdapter::default(), FAST).await;
    h.revs.write("00001", VOTED);
    h.run_to_done(&stage("00001", false), 1).await;
    h.adapter.overwrite_staged(&key(), "rc");
    let dry = stage("00001", true);
    h.run_to_done(&dry, 1).await;
    let msg = message(&h, &dry).await;
    assert!(
        msg.contains("; the platform holds sha256:0909") && msg.contains(" under rc;"),
        "{msg}"
    );
    let voted = voted_digest();
    let again = stage("00001", false);
    h.run_to_done(&again, 1).await;
    assert_eq!(
        h.runs(&again).await[0].outcome.as_deref(),
        Some("completed")
    );
    assert_eq!(
        message(&h, &again).await,
        format!(
            "staged {} under rc as {voted} from example-1.0.0 00001",
            key()
        )
    );
    let third = stage("00001", false);
    h.run_to_done(&third, 1).await;
    assert_eq!(
        h.runs(&third).await[0].outcome.as_deref(),
        Some("unchanged")
    );
    assert_eq!(
        message(&h, &third).await,
        format!("{} was already staged under rc as {voted}; recorded", key())
    );
    assert_eq!(
        h.adapter.writes(),
        [format!("stage {} rc", key()), format!("stage {} rc", key())]
    );
    h.stop().await;
}

/// An adapter that panics fails its attempt permanently (running it again would panic
/// again), and the panic's message is what the job and its run say.
async fn a_panicking_adapter_fails_the_attempt_with_its_message(which: Db) {
    let adapter = RecordingAdapter {
        stage_panics: Some("adapter bug (test)"),
        ..Default::default()
    };
    let h = recording(which, adapter, FAST).await;
    h.revs.write("00001", VOTED);
    let s = stage("00001", false);
    assert_eq!(h.run(&s, 3).await, JobState::Dead);
    assert_eq!(
        h.last_error(&s).await,
        "the attempt panicked: adapter bug (test)"
    );
    let runs = h.runs(&s).await;
    assert_eq!(runs.len(), 1, "a panic is not retried: {runs:?}");
    assert_eq!(runs[0].outcome.as_deref(), Some("failed"));
    assert_eq!(runs[0].error_class.as_deref(), Some("permanent"));
    assert_eq!(
        runs[0].message.as_deref(),
        Some("the attempt panicked: adapter bug (test)")
    );
    h.stop().await;
}

/// The report a finished job leaves for producers (docs/wire-format.md, "Results") is the
/// distribution as recorded: staged, then promoted, with the platform's digest.
async fn a_finished_job_reports_the_distribution_as_recorded(which: Db) {
    let h = recording(which, RecordingAdapter::default(), FAST).await;
    h.revs.write("00001", VOTED);
    let report = |id: String| {
        let q = h.t.queue.clone();
        async move {
            let ended = atr_dist_tests::redis_support::ended(&q).await;
            let entry = ended
                .iter()
                .find(|e| e["id"] == id)
                .unwrap_or_else(|| panic!("{id} ended: {ended:?}"));
            serde_json::from_str::<JobReport>(&entry["result"])
                .unwrap_or_else(|e| panic!("{e}: {entry:?}"))
        }
    };
    let s = stage("00001", false);
    h.run_to_done(&s, 1).await;
    let row = h.row().await.unwrap();
    let staged = report(s.id.to_string()).await;
    assert_eq!(staged.outcome, atr_dist_shared::AttemptOutcome::Completed);
    assert_eq!(staged.revision, "00001");
    assert_eq!(staged.distribution.package, "example-pkg");
    assert!(
        staged.staged && !staged.promoted && !staged.dry_run,
        "{staged:?}"
    );
    assert_eq!(staged.platform_digest, Some(voted_digest().to_string()));
    assert_eq!(staged.manifest_digest, row.staged_manifest_digest);
    assert_eq!(staged.diff, None);
    let p = promote("00001");
    h.run_to_done(&p, 1).await;
    let promoted = report(p.id.to_string()).await;
    assert!(promoted.promoted, "{promoted:?}");
    assert_eq!(
        promoted.api_url.as_deref(),
        Some("http://127.0.0.1/recording")
    );
    h.stop().await;
}

/// A platform that is only verified (`PromotionMechanism::None`): nothing is ever sent to
/// it; stage and promote are done when it is found to list the voted bytes, which is news
/// once and `unchanged` after, and refused while it does not.
async fn a_verify_only_platform_is_read_never_written(which: Db) {
    let adapter = RecordingAdapter {
        verify_only: true,
        ..Default::default()
    };
    let h = recording(which, adapter, FAST).await;
    h.revs.write("00001", VOTED);
    let voted = voted_digest();
    let dry = stage("00001", true);
    h.run_to_done(&dry, 1).await;
    let msg = message(&h, &dry).await;
    assert!(
        msg.contains("the platform does not show it, and it is only verified, never written to: the stage would be refused"),
        "{msg}"
    );
    let refused = stage("00001", false);
    assert_eq!(h.run(&refused, 1).await, JobState::Dead);
    let error = h.last_error(&refused).await;
    assert!(error.contains("is not listed on the platform"), "{error}");
    // The platform's answer is on the run, for the operator.
    assert_eq!(h.runs(&refused).await[0].http_status, Some(404));

    h.adapter.show_staged(&key(), "rc", voted.clone());
    let first = stage("00001", false);
    h.run_to_done(&first, 1).await;
    assert_eq!(
        h.runs(&first).await[0].outcome.as_deref(),
        Some("completed")
    );
    let again = stage("00001", false);
    h.run_to_done(&again, 1).await;
    assert_eq!(
        h.runs(&again).await[0].outcome.as_deref(),
        Some("unchanged")
    );

    let dry = dry_promote("00001");
    h.run_to_done(&dry, 1).await;
    let msg = message(&h, &dry).await;
    assert!(
        msg.contains(&format!("would wait until the platform lists {voted} in production and record it; nothing is ever sent to this platform")),
        "{msg}"
    );
    h.adapter.show_promoted(&key(), "latest", voted.clone());
    let p = promote("00001");
    h.run_to_done(&p, 1).await;
    assert_eq!(h.runs(&p).await[0].outcome.as_deref(), Some("completed"));
    assert_eq!(
        message(&h, &p).await,
        format!(
            "{} is listed in production as {voted}; recorded as promoted to latest (voted revision example-1.0.0 00001)",
            key()
        )
    );
    assert!(h.row().await.unwrap().promoted);
    let p = promote("00001");
    h.run_to_done(&p, 1).await;
    assert_eq!(h.runs(&p).await[0].outcome.as_deref(), Some("unchanged"));
    assert!(h.adapter.writes().is_empty(), "{:?}", h.adapter.writes());
    h.stop().await;
}

/// A platform whose promotion uploads the voted files again (`PromotionMechanism::Reupload`,
/// as PyPI): stage and promote send the artifacts with the companions the revision holds
/// (a file without one goes alone), and promote refuses when the voted files do not come
/// to the digest recorded as staged.
async fn a_reupload_promote_sends_the_voted_files_with_their_companions(which: Db) {
    let adapter = RecordingAdapter {
        reupload: true,
        companion_suffix: Some(".asc"),
        ..Default::default()
    };
    let h = recording(which, adapter, FAST).await;
    const OTHER: &str = "example-pkg-1.0.0-other.tgz";
    h.revs.write(
        "00001",
        &[
            (TGZ, b"tarball bytes v1"),
            ("example-pkg-1.0.0.tgz.asc", b"signature"),
            (OTHER, b"other bytes"),
            ("README.txt", b"read me"),
        ],
    );
    let s = dist().stage("00001", &[TGZ, OTHER], RevisionSourceSpec::Dir, false);
    h.run_to_done(&s, 1).await;
    assert_eq!(
        h.adapter.writes(),
        [format!("stage {} rc companions: {TGZ}.asc", key())]
    );
    // The record says other bytes were staged than the voted files come to.
    let staged = h.row().await.unwrap().platform_digest.unwrap();
    assert_eq!(
        staged,
        RecordingAdapter::digest_of(&[b"tarball bytes v1", b"other bytes"]).to_string()
    );
    let recorded =
        atr_dist_shared::Digest::from_bytes(atr_dist_shared::DigestAlgorithm::Sha256, &[7u8; 32])
            .unwrap();
    let set_digest = |d: String| format!("UPDATE distribution SET platform_digest = '{d}'");
    h.db.execute_unprepared(&set_digest(recorded.to_string()))
        .await
        .unwrap();
    let p = promote("00001");
    assert_eq!(h.run(&p, 1).await, JobState::Dead);
    let error = h.last_error(&p).await;
    assert!(
        error.contains(&format!(
            "the voted files come to {staged} on the platform, but {recorded} was staged; nothing promoted"
        )),
        "{error}"
    );
    assert_eq!(h.adapter.writes().len(), 1, "{:?}", h.adapter.writes());
    h.db.execute_unprepared(&set_digest(staged)).await.unwrap();
    let p = promote("00001");
    h.run_to_done(&p, 1).await;
    assert_eq!(
        h.adapter.writes()[1],
        format!(
            "upload {} latest artifacts: {TGZ}, {OTHER} companions: {TGZ}.asc",
            key()
        )
    );
    assert!(h.row().await.unwrap().promoted);
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

on_both!(stage_then_promote);
on_both!(changed_files_are_refused);
on_both!(identical_new_revision_promotes_once);
on_both!(overwritten_staging_tag_is_caught);
on_both!(failed_result_write_is_retried_without_a_second_stage);
on_both!(failed_promote_result_write_is_retried_without_a_second_tag_move);
on_both!(jobs_for_one_key_never_overlap);
on_both!(dry_runs_describe_and_record_without_writing);
on_both!(one_distribution_on_two_queues_is_staged_once);
on_both!(waits_spend_no_attempt);
on_both!(waits_end_at_the_deadline);
on_both!(local_staging_checks_without_a_staging_place);
on_both!(dry_runs_say_what_the_platform_holds);
on_both!(a_staging_tag_holding_other_bytes_is_staged_again);
on_both!(a_panicking_adapter_fails_the_attempt_with_its_message);
on_both!(a_finished_job_reports_the_distribution_as_recorded);
on_both!(a_verify_only_platform_is_read_never_written);
on_both!(a_reupload_promote_sends_the_voted_files_with_their_companions);

/// Another job takes the distribution lock while a slow stage runs (this attempt's lock
/// expired in a pause, say): the attempt stops when its renewal finds the lock gone, sends
/// nothing, records no success, and leaves the other job's lock alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_that_loses_its_lock_stops_without_recording_success() {
    let adapter = RecordingAdapter {
        // Far longer than a renewal period (a third of the 5 s lock time to live).
        stage_delay: Duration::from_secs(30),
        ..Default::default()
    };
    let h = recording(Db::Sqlite, adapter, FAST).await;
    h.revs.write("00001", VOTED);
    let s = stage("00001", false);
    let e = h.t.queue.enqueue(&s, None, 1).await.unwrap();
    let in_stage = Arc::clone(&h.adapter.in_stage);
    eventually(
        "the stage is under way",
        Duration::from_secs(20),
        || async { in_stage.load(std::sync::atomic::Ordering::SeqCst) == 1 },
    )
    .await;
    let lock = h.t.queue.lock_key(&key().lock_id());
    let mut redis = redis::Client::open(h.t.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let holder: Option<String> = redis::cmd("GET")
        .arg(&lock)
        .query_async(&mut redis)
        .await
        .unwrap();
    // The attempt holds it (whatever it names itself by): this is the lock to take away.
    assert!(holder.is_some(), "the attempt holds {lock}");
    let _: () = redis::cmd("SET")
        .arg(&lock)
        .arg("another-job")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut redis)
        .await
        .unwrap();

    let q = &h.t.queue;
    eventually("the attempt ends", Duration::from_secs(20), || async {
        q.show(&e.id)
            .await
            .unwrap()
            .unwrap()
            .summary
            .state
            .is_terminal()
    })
    .await;
    let summary = q.show(&e.id).await.unwrap().unwrap().summary;
    assert_eq!(summary.state, JobState::Dead, "{summary:?}");
    let runs = h.runs(&s).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].outcome.as_deref(), Some("failed"));
    assert_eq!(runs[0].error_class.as_deref(), Some("transient"));
    assert!(
        runs[0]
            .message
            .as_deref()
            .unwrap_or("")
            .contains("the distribution lock was lost to another job; stopped"),
        "{:?}",
        runs[0].message
    );
    assert!(h.adapter.writes().is_empty(), "{:?}", h.adapter.writes());
    assert!(h.row().await.is_none(), "nothing recorded as staged");
    let holder: Option<String> = redis::cmd("GET")
        .arg(&lock)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(holder.as_deref(), Some("another-job"));
    h.stop().await;
}

/// An attempt that outlasts the pool's `job_timeout` ends as a transient failure with the
/// timeout in its message; the job is retried, then dead, and nothing was staged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_that_outlasts_the_job_timeout_is_retried_then_dead() {
    let adapter = RecordingAdapter {
        // Far past the timeout below: only the timeout ends these attempts in time.
        stage_delay: Duration::from_secs(300),
        ..Default::default()
    };
    let adapters = Adapters::default().with(Platform::Npm, Arc::new(adapter.clone()));
    let mut pool = pool_config(4, FAST);
    pool.job_timeout = Duration::from_secs(1);
    let h = Harness::with_pool(Db::Sqlite, adapters, pool, |_, _| {}).await;
    h.revs.write("00001", VOTED);
    let s = stage("00001", false);
    assert_eq!(h.run(&s, 2).await, JobState::Dead);
    let detail = h.t.queue.show(&s.id.to_string()).await.unwrap().unwrap();
    assert_eq!(detail.summary.attempt, 2);
    assert_eq!(detail.summary.error_class.as_deref(), Some("transient"));
    let error = detail.summary.last_error.unwrap_or_default();
    assert!(error.contains("attempt timed out after 1s"), "{error}");
    let retried: Vec<&str> = detail
        .events
        .iter()
        .filter(|e| e.event == "retry_scheduled")
        .filter_map(|e| e.message.as_deref())
        .collect();
    assert_eq!(retried.len(), 1, "{:?}", detail.events);
    assert!(
        retried[0].contains("attempt timed out after 1s"),
        "{retried:?}"
    );
    assert!(adapter.writes().is_empty(), "{:?}", adapter.writes());
    assert!(h.row().await.is_none());
    // Each stopped attempt recorded its own end (not left open for the next attempt or the
    // audit to close as abandoned); stopping the pool waits for those records.
    let mut h = h;
    h.stop_pool().await;
    let runs = h.runs(&s).await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    for run in &runs {
        assert_eq!(run.outcome.as_deref(), Some("timed_out"), "{runs:?}");
        assert_eq!(run.error_class.as_deref(), Some("transient"), "{runs:?}");
        assert_eq!(
            run.message.as_deref(),
            Some("the attempt ran longer than the job timeout (1s) and was stopped"),
            "{runs:?}"
        );
    }
}

/// Stopping the worker waits for the records of the attempts it stopped: when it returns,
/// the row of an attempt cut short by the shutdown is closed, saying so (a process that
/// exits right after would otherwise lose that write). The row is kept locked for a while
/// so that its write cannot finish before the stop would return without waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_worker_waits_for_the_records_of_stopped_attempts() {
    let adapter = RecordingAdapter {
        // Far past the pool's shutdown timeout (5 s): the shutdown stops it.
        stage_delay: Duration::from_secs(300),
        ..Default::default()
    };
    let mut h = recording(Db::Postgres, adapter, FAST).await;
    h.revs.write("00001", VOTED);
    let s = stage("00001", false);
    h.t.queue.enqueue(&s, None, 1).await.unwrap();
    let in_stage = Arc::clone(&h.adapter.in_stage);
    eventually(
        "the stage is under way",
        Duration::from_secs(20),
        || async { in_stage.load(std::sync::atomic::Ordering::SeqCst) == 1 },
    )
    .await;
    let locker = h.db.begin().await.unwrap();
    locker
        .execute_unprepared(&format!(
            "SELECT id FROM job_run WHERE job_id = '{}' FOR UPDATE",
            s.id
        ))
        .await
        .unwrap();
    let stopping = tokio::spawn(async move {
        h.h.stop_pool().await;
        h
    });
    // The shutdown timeout passes, the attempt is stopped, and its record waits on the lock.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(
        !stopping.is_finished(),
        "the worker stopped before the stopped attempt's record was written"
    );
    locker.commit().await.unwrap();
    let h = stopping.await.unwrap();
    let runs = h.runs(&s).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].outcome.as_deref(), Some("abandoned"), "{runs:?}");
    assert_eq!(
        runs[0].message.as_deref(),
        Some("the worker shut down before the attempt ended; the job was handed back to the queue"),
        "{runs:?}"
    );
    h.stop().await;
}

/// An attempt whose start the results database cannot record, because the database cannot
/// be reached, waits for it without spending an attempt (a deferral, in the job's events);
/// one the database refuses to record fails as transient, and the attempts bound it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_the_database_cannot_record_waits_unless_the_database_refused_it() {
    // Refused: the insert of the attempt's row fails, and the job's attempts run out.
    let h = recording(Db::Sqlite, RecordingAdapter::default(), FAST).await;
    h.revs.write("00001", VOTED);
    h.db.execute_unprepared(
        "CREATE TRIGGER test_refuse BEFORE INSERT ON job_run BEGIN SELECT RAISE(ABORT, 'refused (test)'); END",
    )
    .await
    .unwrap();
    let refused = stage("00001", false);
    assert_eq!(h.run(&refused, 2).await, JobState::Dead);
    let error = h.last_error(&refused).await;
    assert!(
        error.contains("recording the attempt") && error.contains("refused (test)"),
        "{error}"
    );
    assert!(h.adapter.writes().is_empty(), "nothing was sent");
    h.stop().await;

    // Out of reach: the pool is closed, so no connection can be had; the job waits, its
    // attempts untouched, and nothing is sent.
    let h = recording(Db::Sqlite, RecordingAdapter::default(), FAST).await;
    h.revs.write("00001", VOTED);
    h.db.clone().close().await.unwrap();
    let waiting = stage("00001", false);
    let e = h.t.queue.enqueue(&waiting, None, 2).await.unwrap();
    let q = &h.t.queue;
    eventually("the job waits", Duration::from_secs(30), || async {
        q.show(&e.id)
            .await
            .unwrap()
            .unwrap()
            .events
            .iter()
            .any(|ev| ev.event == "deferred")
    })
    .await;
    let d = q.show(&e.id).await.unwrap().unwrap();
    assert_eq!(d.summary.attempt, 0, "no attempt spent: {:?}", d.events);
    assert!(
        matches!(
            d.summary.state,
            JobState::Retrying | JobState::Queued | JobState::Running
        ),
        "{:?}",
        d.summary.state
    );
    let message = d
        .events
        .iter()
        .find(|ev| ev.event == "deferred")
        .and_then(|ev| ev.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains(
            "the results database cannot record the attempt; waiting for it (no attempt spent)"
        ),
        "{message}"
    );
    assert!(h.adapter.writes().is_empty(), "nothing was sent");
    h.stop().await;
}
