//! The distribution pipeline: what a worker does with a `stage` or `promote` job.
//!
//! For every attempt: take the distribution's lock, record a `job_run` row, run the step
//! (`stage.rs`, `promote.rs`), record its outcome, release the lock. The steps read the
//! platform before they write to it, so a repeated job, or a retry after the result write
//! failed, finds the work done and does not act twice.
//!
//! The row and the lock are ended on every way out of an attempt: when the pool drops the
//! attempt (timeout, cancel, lost lease, shutdown) or it panics, `OpenAttempt` ends them from
//! a task of its own. Rows left open by a worker that died are closed by the job's next
//! attempt, or by `audit.rs` when there is none.

pub mod audit;
mod promote;
pub mod record;
mod stage;
pub mod wait;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use atr_dist_shared::{
    AttemptOutcome, DistributionKey, DistributionRef, ErrorClass, Job, JobReport, ManifestDiff,
    Platform,
};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use sea_orm::error::SqlxError;
use sea_orm::{DatabaseConnection, DbErr, RuntimeErr};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::platform::http::{HttpNote, RetryBudget};
use crate::platform::{Adapters, PlatformAdapter, PlatformError};
use crate::queue::lock::LockGuard;
use crate::queue::note::{Note, NoteKind};
use crate::queue::pool::{Completion, JobError, JobHandler, RunningJob, Stop, StopSignal};
use crate::queue::{Queue, QueueError};
use crate::seal::SealError;
use crate::source::{SourceError, Sources};

/// How long a job waits before trying again when its distribution is locked by another.
pub const LOCKED_RETRY: Duration = Duration::from_secs(5);

/// How long a job waits before trying again when the results database cannot record the
/// start of its attempt.
pub const DATABASE_RETRY: Duration = Duration::from_secs(5);

pub struct Pipeline {
    pub db: DatabaseConnection,
    pub queue: Queue,
    pub adapters: Adapters,
    pub sources: Sources,
    /// Lock time to live: the job lease.
    pub lock_ttl: Duration,
    /// Configured tags per platform, over the adapter's defaults.
    pub staging_tags: HashMap<Platform, atr_dist_shared::names::DistTag>,
    /// Jobs acting on one platform at once in this process.
    pub per_platform: HashMap<Platform, Arc<Semaphore>>,
    /// Where artifacts are copied and checked before an adapter sees them.
    pub sealer: crate::seal::Sealer,
    /// Retries of platform requests one attempt may make (`platform/http.rs`).
    pub retry_limits: crate::platform::http::RetryLimits,
    /// How long a job may wait on each platform (`[platforms.<name>] wait_deadline_secs`),
    /// over [`wait::DEFAULT_DEADLINE`].
    pub wait_deadlines: HashMap<Platform, Duration>,
    /// How the waits of one job grow.
    pub waits: wait::Schedule,
    /// The tasks ending the records of attempts that were dropped before they ended them
    /// (`OpenAttempt`); the pool waits for them when it stops.
    pub closing: TaskTracker,
}

/// What a successful step came to.
#[derive(Debug)]
pub struct Step {
    pub outcome: AttemptOutcome,
    pub message: String,
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    Platform(#[from] PlatformError),
    #[error("{0}")]
    Source(#[from] SourceError),
    #[error("{0}")]
    Seal(#[from] SealError),
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    #[error("the voted revision's files differ from the staged ones ({0}); nothing was promoted")]
    RevisionChanged(ManifestDiff),
    #[error("{0}")]
    Refused(String),
    #[error("the distribution lock was lost to another job; stopped")]
    LockLost,
    #[error("the attempt panicked: {0}")]
    Panicked(String),
    #[error("{reason}; gave up after waiting {} (the platform's wait_deadline_secs is {})", humantime::format_duration(*.waited), humantime::format_duration(*.deadline))]
    GaveUp {
        reason: String,
        waited: Duration,
        deadline: Duration,
    },
}

impl Failure {
    fn class(&self) -> ErrorClass {
        match self {
            Failure::Platform(e) => e.class,
            Failure::Source(e) => e.class(),
            // Other bytes than the voted ones are never published, however often tried.
            Failure::Seal(SealError::Mismatch { .. }) => ErrorClass::Permanent,
            Failure::Seal(
                SealError::Read { .. }
                | SealError::Scratch { .. }
                | SealError::Corrupt { .. }
                | SealError::Blocking { .. },
            ) => ErrorClass::Transient,
            // The database or Redis away: the next attempt finds them back. A wait that
            // outlasted its deadline might still end well later: ATR shows it `BROKEN`.
            Failure::Db(_) | Failure::Queue(_) | Failure::LockLost | Failure::GaveUp { .. } => {
                ErrorClass::Transient
            }
            // A bug: running it again would panic again.
            Failure::RevisionChanged(_) | Failure::Refused(_) | Failure::Panicked(_) => {
                ErrorClass::Permanent
            }
        }
    }

    fn outcome(&self) -> AttemptOutcome {
        match self {
            Failure::RevisionChanged(_) => AttemptOutcome::RevisionChanged,
            Failure::Platform(_)
            | Failure::Source(_)
            | Failure::Seal(_)
            | Failure::Db(_)
            | Failure::Queue(_)
            | Failure::Refused(_)
            | Failure::LockLost
            | Failure::Panicked(_)
            | Failure::GaveUp { .. } => AttemptOutcome::Failed,
        }
    }

    /// The paths that differ, for a changed revision.
    fn revision_diff(&self) -> Option<&ManifestDiff> {
        match self {
            Failure::RevisionChanged(diff) => Some(diff),
            Failure::Platform(_)
            | Failure::Source(_)
            | Failure::Seal(_)
            | Failure::Db(_)
            | Failure::Queue(_)
            | Failure::Refused(_)
            | Failure::LockLost
            | Failure::Panicked(_)
            | Failure::GaveUp { .. } => None,
        }
    }

    /// The platform's error, when the platform refused.
    fn platform(&self) -> Option<&PlatformError> {
        match self {
            Failure::Platform(e) => Some(e),
            Failure::Source(_)
            | Failure::Seal(_)
            | Failure::Db(_)
            | Failure::Queue(_)
            | Failure::RevisionChanged(_)
            | Failure::Refused(_)
            | Failure::LockLost
            | Failure::Panicked(_)
            | Failure::GaveUp { .. } => None,
        }
    }
}

/// Whether `e` says the database could not be reached (no connection could be had, or the
/// one in use was lost), rather than that it answered and refused the statement.
fn database_unreachable(e: &DbErr) -> bool {
    if matches!(e, DbErr::ConnectionAcquire(_) | DbErr::Conn(_)) {
        return true;
    }
    let (DbErr::Exec(RuntimeErr::SqlxError(x)) | DbErr::Query(RuntimeErr::SqlxError(x))) = e else {
        return false;
    };
    matches!(
        x.as_ref(),
        SqlxError::Io(_)
            | SqlxError::Tls(_)
            | SqlxError::Protocol(_)
            | SqlxError::PoolTimedOut
            | SqlxError::PoolClosed
            | SqlxError::WorkerCrashed
    )
}

/// The message of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// What an attempt holds open while it runs: its `job_run` row and its distribution lock.
/// `end` records the attempt's end and releases the lock. Dropped without that (the pool
/// stopped the attempt, or it unwound), it ends both from a task on `closing`, with what the
/// pool's `StopSignal` says: `timed_out`, `cancelled`, or `abandoned` (lease lost, shutdown).
struct OpenAttempt {
    db: DatabaseConnection,
    run_id: i64,
    started_at: DateTime<Utc>,
    lock: Option<LockGuard>,
    /// What the attempt's platform requests counted, while the step runs.
    budget: Option<Arc<RetryBudget>>,
    stop: StopSignal,
    closing: TaskTracker,
    ended: bool,
}

impl OpenAttempt {
    async fn end(mut self, end: record::RunEnd) -> Result<(), DbErr> {
        let recorded = record::finish_run(&self.db, self.run_id, end).await;
        // Recorded or not, this is the attempt's own account: when the write failed, the
        // job's next attempt closes the row, saying so.
        self.ended = true;
        if let Some(lock) = self.lock.take() {
            lock.release().await;
        }
        recorded
    }

    /// How an attempt that was dropped before it recorded its end ended.
    fn dropped_end(&self) -> record::RunEnd {
        let (outcome, error_class, message) = if std::thread::panicking() {
            (
                AttemptOutcome::Failed,
                Some(ErrorClass::Permanent),
                "the attempt panicked; the worker's log has the panic's message".to_owned(),
            )
        } else {
            match self.stop.get() {
                Some(Stop::TimedOut(after)) => (
                    AttemptOutcome::TimedOut,
                    Some(ErrorClass::Transient),
                    format!(
                        "the attempt ran longer than the job timeout ({}) and was stopped",
                        humantime::format_duration(after)
                    ),
                ),
                Some(Stop::Cancelled) => (
                    AttemptOutcome::Cancelled,
                    None,
                    "the job was cancelled while this attempt ran; the attempt was stopped"
                        .to_owned(),
                ),
                Some(Stop::LeaseLost) => (
                    AttemptOutcome::Abandoned,
                    None,
                    "this worker lost the job's lease (it expired and the job went back to the queue); the attempt was stopped".to_owned(),
                ),
                Some(Stop::Shutdown) => (
                    AttemptOutcome::Abandoned,
                    None,
                    "the worker shut down before the attempt ended; the job was handed back to the queue".to_owned(),
                ),
                None => (
                    AttemptOutcome::Abandoned,
                    None,
                    "the attempt was stopped before it recorded its end".to_owned(),
                ),
            }
        };
        record::RunEnd {
            outcome,
            error_class,
            message: Some(message),
            http_status: None,
            http: self.budget.as_ref().map(|b| b.used()).unwrap_or_default(),
            started_at: self.started_at,
            revision_diff: None,
        }
    }
}

impl Drop for OpenAttempt {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let end = self.dropped_end();
        let (db, run_id, lock) = (self.db.clone(), self.run_id, self.lock.take());
        let close = async move {
            if let Err(e) = record::finish_run(&db, run_id, end).await {
                tracing::warn!(run = run_id, error = %e, "recording the end of a stopped attempt failed; its next attempt closes the row");
            }
            if let Some(lock) = lock {
                lock.release().await;
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                self.closing.spawn_on(close, &runtime);
            }
            // No runtime left to run it (the process is ending): the lock expires after its
            // time to live, and the row is closed by the job's next attempt.
            Err(_) => {
                tracing::warn!(
                    run = run_id,
                    "attempt stopped while the runtime ends; its row stays open"
                )
            }
        }
    }
}

impl Pipeline {
    fn adapter(&self, platform: Platform) -> Result<Arc<dyn PlatformAdapter>, Failure> {
        self.adapters.get(platform).ok_or_else(|| {
            let have: Vec<String> = self
                .adapters
                .platforms()
                .iter()
                .map(|p| p.to_string())
                .collect();
            Failure::Refused(format!(
                "this worker has no adapter for {platform} (it has: {})",
                if have.is_empty() {
                    "none".to_owned()
                } else {
                    have.join(", ")
                }
            ))
        })
    }

    async fn attempt(
        &self,
        job: &RunningJob,
        key: &DistributionKey,
    ) -> Result<Completion, JobError> {
        let lock = match self
            .queue
            .try_lock(&key.lock_id(), &job.lease(), self.lock_ttl)
            .await
        {
            Ok(Ok(lock)) => lock,
            Ok(Err(holder)) => {
                return Ok(Completion::Deferred {
                    delay: LOCKED_RETRY,
                    reason: format!("{key} is locked by job {holder}"),
                });
            }
            Err(e) => {
                return Err(JobError::transient(format!(
                    "taking the distribution lock: {e}"
                )));
            }
        };
        let started_at = Utc::now();
        let run_id = record::start_run(
            &self.db,
            record::RunStart {
                job_id: &job.id,
                kind: job.envelope.kind(),
                key,
                attempt: job.attempt,
                started_at,
                queue: self.queue.name(),
            },
        )
        .await;
        let run_id = match run_id {
            Ok(id) => id,
            // The database cannot be reached, and nothing was read or sent yet: the attempt
            // never began, and the job waits for the database without spending an attempt. Counted as a failure, an outage of
            // the results database used up the attempts of every job that came up meanwhile
            // (tests/faults.rs: a 20 s cut took 190 attempts from 48 jobs under the shipped
            // backoff, whose first delays are a few seconds at most), and a longer one would
            // end them BROKEN although no platform was ever asked.
            Err(e) if database_unreachable(&e) => {
                lock.release().await;
                return Ok(Completion::Deferred {
                    delay: DATABASE_RETRY,
                    reason: format!(
                        "the results database cannot record the attempt; waiting for it (no attempt spent): {e}"
                    ),
                });
            }
            // The database answered and refused (a read-only file, a missing table): a fault
            // that waiting may not cure, which the attempts bound.
            Err(e) => {
                lock.release().await;
                return Err(JobError::transient(format!("recording the attempt: {e}")));
            }
        };
        // Every platform request of the step draws on one retry budget, and its retries and
        // read-backs go to the job's timeline as they happen.
        let (notes_tx, notes_rx) = tokio::sync::mpsc::unbounded_channel();
        let checker = lock.checker();
        let fence: crate::platform::http::WriteFence = Arc::new(move || {
            let checker = checker.clone();
            Box::pin(async move { checker.check().await.map_err(|e| e.to_string()) })
        });
        let budget = RetryBudget::fenced(self.retry_limits, Some(notes_tx), fence);
        let lost = lock.lost.clone();
        let mut open = OpenAttempt {
            db: self.db.clone(),
            run_id,
            started_at,
            lock: Some(lock),
            budget: Some(Arc::clone(&budget)),
            stop: job.stop.clone(),
            closing: self.closing.clone(),
            ended: false,
        };
        let permit = match self.per_platform.get(&key.platform) {
            Some(s) => Some(Arc::clone(s).acquire_owned().await),
            None => None,
        };
        // Notes go to the job's own shard, where its events are.
        let notes = tokio::spawn(forward_notes(
            self.queue.shard(job.shard),
            job.id.clone(),
            job.attempt,
            notes_rx,
        ));
        let result = tokio::select! {
            r = AssertUnwindSafe(budget.scope(self.step(job, key))).catch_unwind() => {
                r.unwrap_or_else(|panic| Err(Failure::Panicked(panic_message(panic.as_ref()))))
            }
            () = lost.cancelled() => Err(Failure::LockLost),
        };
        // A platform that is not there yet: the job waits in Redis without spending an
        // attempt, or gives up once its waits outlast the platform's deadline (`wait.rs`).
        let mut waiting: Option<(Duration, String)> = None;
        let result = match result {
            Err(Failure::Platform(e)) if e.not_yet => {
                let deadline = self
                    .wait_deadlines
                    .get(&key.platform)
                    .copied()
                    .unwrap_or(wait::DEFAULT_DEADLINE);
                match wait::waited(&self.db, &job.id).await {
                    Err(db) => Err(Failure::Db(db)),
                    Ok(earlier) => match self.waits.decide(
                        earlier,
                        Utc::now(),
                        deadline,
                        e.retry_after.unwrap_or_default(),
                    ) {
                        wait::Decision::Wait { delay } => {
                            let message = format!(
                                "waiting {} (no attempt spent): {}",
                                humantime::format_duration(Duration::from_secs(delay.as_secs())),
                                e.message
                            );
                            waiting = Some((delay, message.clone()));
                            Ok(Step {
                                outcome: AttemptOutcome::Waiting,
                                message,
                            })
                        }
                        wait::Decision::GiveUp { waited } => Err(Failure::GaveUp {
                            reason: e.message,
                            waited: Duration::from_secs(waited.as_secs()),
                            deadline,
                        }),
                    },
                }
            }
            other => other,
        };
        let http = budget.used();
        // The last notes are in the timeline before the attempt's end is (the notes end when
        // the budget, their sender, is gone).
        open.budget = None;
        drop(budget);
        notes.await.ok();
        drop(permit);
        let end = match &result {
            Ok(step) => record::RunEnd {
                outcome: step.outcome,
                error_class: None,
                message: Some(step.message.clone()),
                http_status: None,
                http,
                started_at,
                revision_diff: None,
            },
            Err(f) => record::RunEnd {
                outcome: f.outcome(),
                error_class: Some(f.class()),
                message: Some(f.to_string()),
                http_status: f.platform().and_then(|e| e.http_status),
                http,
                started_at,
                revision_diff: f.revision_diff().cloned(),
            },
        };
        let recorded = open.end(end).await;
        // What producers learn of the job if this attempt is its last (docs/wire-format.md,
        // "Results"): read back from the database, so it says what was recorded.
        let (outcome, diff) = match &result {
            Ok(step) => (step.outcome, None),
            Err(Failure::RevisionChanged(diff)) => {
                (AttemptOutcome::RevisionChanged, Some(diff.clone()))
            }
            Err(f) => (f.outcome(), None),
        };
        match self.report(job, key, outcome, diff).await {
            Ok(report) => job.result.set(report),
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "reading the distribution for the job's report failed; its result carries none")
            }
        }
        match (result, recorded) {
            (Ok(step), Ok(())) => {
                tracing::info!(job = %job.id, outcome = %step.outcome, "{}", step.message);
                match waiting {
                    Some((delay, reason)) => Ok(Completion::Deferred { delay, reason }),
                    None => Ok(Completion::Done),
                }
            }
            // The work is done but not recorded as done: a retry finds it done on the
            // platform and only writes the record.
            (Ok(_), Err(e)) => Err(JobError::transient(format!("recording the result: {e}"))),
            (Err(f), _) => {
                tracing::warn!(job = %job.id, class = %f.class(), "{f}");
                Err(JobError {
                    class: f.class(),
                    message: f.to_string(),
                    retry_after: f.platform().and_then(|e| e.retry_after),
                    last: matches!(f, Failure::GaveUp { .. }),
                })
            }
        }
    }

    /// The job's report as JSON, with the distribution as recorded now.
    async fn report(
        &self,
        job: &RunningJob,
        key: &DistributionKey,
        outcome: AttemptOutcome,
        diff: Option<ManifestDiff>,
    ) -> Result<String, DbErr> {
        let row = record::load_distribution(&self.db, key).await?;
        let (revision, dry_run) = match &job.envelope.job {
            Job::Stage(s) => (s.revision.to_string(), s.dry_run),
            Job::Promote(p) => (p.revision.to_string(), p.dry_run),
        };
        let report = JobReport {
            kind: job.envelope.kind(),
            distribution: DistributionRef {
                release_key: key.release_key.to_string(),
                platform: key.platform,
                owner_namespace: key.owner_namespace.clone(),
                package: key.package.to_string(),
                version: key.version.to_string(),
            },
            revision,
            outcome,
            dry_run,
            staged: row
                .as_ref()
                .is_some_and(|r| r.staged_manifest_digest.is_some()),
            promoted: row.as_ref().is_some_and(|r| r.promoted),
            upload_date: row.as_ref().and_then(|r| r.upload_date),
            api_url: row.as_ref().and_then(|r| r.api_url.clone()),
            web_url: row.as_ref().and_then(|r| r.web_url.clone()),
            platform_digest: row.as_ref().and_then(|r| r.platform_digest.clone()),
            manifest_digest: row.as_ref().and_then(|r| r.staged_manifest_digest.clone()),
            diff,
        };
        Ok(serde_json::to_string(&report).unwrap_or_default())
    }

    async fn step(&self, job: &RunningJob, key: &DistributionKey) -> Result<Step, Failure> {
        match &job.envelope.job {
            Job::Stage(stage) => stage::run(self, stage, key).await,
            Job::Promote(promote) => promote::run(self, promote, key).await,
        }
    }
}

/// Writes an attempt's HTTP notes into its job's events, in order, until the attempt ends.
/// A note that cannot be written is logged and dropped: the timeline is for people, and the
/// attempt's outcome does not depend on it.
async fn forward_notes(
    queue: Queue,
    job_id: String,
    attempt: u32,
    mut notes: tokio::sync::mpsc::UnboundedReceiver<HttpNote>,
) {
    while let Some(note) = notes.recv().await {
        let note = match note {
            HttpNote::Retry {
                what,
                error,
                http_status,
                retry_after,
                wait,
            } => Note {
                kind: NoteKind::HttpRetry,
                message: format!(
                    "{what}: retrying in {}{}: {error}",
                    humantime::format_duration(Duration::from_millis(wait.as_millis() as u64)),
                    retry_after
                        .map(|r| format!(
                            " (Retry-After {})",
                            humantime::format_duration(Duration::from_secs(r.as_secs()))
                        ))
                        .unwrap_or_default()
                ),
                http_status,
                retry_after,
                wait: Some(wait),
            },
            HttpNote::ReadBack { what, error, found } => Note {
                kind: NoteKind::WriteReadBack,
                message: format!("{what}: {error}; read back: {found}"),
                http_status: None,
                retry_after: None,
                wait: None,
            },
        };
        if let Err(e) = queue.note(&job_id, attempt, &note).await {
            tracing::warn!(job = %job_id, error = %e, "recording an HTTP note in the job's events failed");
        }
    }
}

impl JobHandler for Pipeline {
    async fn handle(&self, job: RunningJob) -> Result<Completion, JobError> {
        // Validated when the envelope was parsed; a failure here is a bug, not bad input.
        let key = job
            .envelope
            .distribution_key()
            .map_err(|e| JobError::permanent(format!("invalid distribution key: {e}")))?;
        self.attempt(&job, &key).await
    }

    async fn drain(&self) {
        self.closing.close();
        self.closing.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sea_orm::error::{ConnAcquireErr, SqlxError};
    use sea_orm::{DbErr, RuntimeErr};

    use super::database_unreachable;

    fn query(e: SqlxError) -> DbErr {
        DbErr::Query(RuntimeErr::SqlxError(Arc::new(e)))
    }

    #[test]
    fn a_database_out_of_reach_is_told_from_one_that_refused() {
        let reset = || std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        for e in [
            DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
            DbErr::Conn(RuntimeErr::SqlxError(Arc::new(SqlxError::Io(reset())))),
            query(SqlxError::Io(reset())),
            DbErr::Exec(RuntimeErr::SqlxError(Arc::new(SqlxError::PoolTimedOut))),
            query(SqlxError::PoolClosed),
            query(SqlxError::Protocol("unexpected message".into())),
        ] {
            assert!(database_unreachable(&e), "{e}");
        }
        for e in [
            query(SqlxError::RowNotFound),
            DbErr::Exec(RuntimeErr::Internal("constraint".into())),
            DbErr::RecordNotInserted,
            DbErr::Custom("read-only".into()),
        ] {
            assert!(!database_unreachable(&e), "{e}");
        }
    }
}
