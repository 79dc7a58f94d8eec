//! The API's wire types: what `/api/v1` sends and accepts. They are separate from the queue's
//! and the database's own types so that the API stays a contract when those change; the
//! OpenAPI document's component schemas are generated from them (`openapi.rs`), and
//! `deny_unknown_fields` makes every schema closed, so an extra field is drift a test catches.

use std::collections::HashMap;
use std::time::Duration;

use atr_dist_shared::entities::{distribution, job_run};
use atr_dist_shared::{
    AtrTaskStatus, AttemptOutcome, ErrorClass, JobKind, JobState, ManifestDiff, Platform,
};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::queue::{JobDetail, JobEvent, JobSummary, MinuteStats, QueueStats};

/// Every error: a message for people and a stable code for programs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// What went wrong and, where someone can act, what to do.
    pub error: String,
    /// Stable machine-readable code, e.g. `not_found`, `unauthorized`, `redis_unavailable`.
    pub code: String,
}

/// Jobs per state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateCounts {
    pub scheduled: u64,
    pub queued: u64,
    pub running: u64,
    pub retrying: u64,
    pub done: u64,
    pub dead: u64,
    pub cancelled: u64,
}

impl StateCounts {
    pub fn get(&self, state: JobState) -> u64 {
        match state {
            JobState::Scheduled => self.scheduled,
            JobState::Queued => self.queued,
            JobState::Running => self.running,
            JobState::Retrying => self.retrying,
            JobState::Done => self.done,
            JobState::Dead => self.dead,
            JobState::Cancelled => self.cancelled,
        }
    }
}

/// Counters since the queue was created (`stats` hash of docs/wire-format.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueTotals {
    pub enqueued: u64,
    pub done: u64,
    /// Failed attempts, whether retried or not.
    pub failed: u64,
    pub retried: u64,
    pub dead: u64,
    pub cancelled: u64,
    /// Expired leases whose jobs were queued again.
    pub recovered: u64,
    /// Finished jobs deleted, by retention or by an operator's purge.
    pub purged: u64,
}

/// How long the jobs of one finished state are kept (`[retention]`): those older than
/// `max_age_secs` or beyond the newest `max_jobs` are deleted, whichever comes first; null
/// for no limit of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionBody {
    pub max_age_secs: Option<u64>,
    pub max_jobs: Option<u64>,
}

/// The retention of each finished state, as the last worker to start announced it; a state
/// is absent before any worker did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionsBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done: Option<RetentionBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead: Option<RetentionBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<RetentionBody>,
}

/// One minute of the last hour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MinuteBody {
    pub minute: DateTime<Utc>,
    pub enqueued: u64,
    pub done: u64,
    pub failed: u64,
    pub dead: u64,
}

/// The queue at a glance; also the payload of the `stats` server-sent event.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueStatsBody {
    pub queue: String,
    /// Paused queues hand out no new jobs; running ones finish.
    pub paused: bool,
    pub counts: StateCounts,
    /// Seconds since the job at the head of the queue became ready; null when none waits.
    pub oldest_queued_age_secs: Option<f64>,
    pub totals: QueueTotals,
    /// The last 60 minutes, oldest first.
    pub last_hour: Vec<MinuteBody>,
    /// Workers with a live heartbeat.
    pub workers: u64,
    /// What the workers delete and when; how many they did is `totals.purged`.
    pub retention: RetentionsBody,
}

impl From<QueueStats> for QueueStatsBody {
    fn from(s: QueueStats) -> QueueStatsBody {
        let count = |state| s.counts.get(&state).copied().unwrap_or(0);
        let total = |name: &str| s.totals.get(name).copied().unwrap_or(0);
        QueueStatsBody {
            counts: StateCounts {
                scheduled: count(JobState::Scheduled),
                queued: count(JobState::Queued),
                running: count(JobState::Running),
                retrying: count(JobState::Retrying),
                done: count(JobState::Done),
                dead: count(JobState::Dead),
                cancelled: count(JobState::Cancelled),
            },
            totals: QueueTotals {
                enqueued: total("enqueued"),
                done: total("done"),
                failed: total("failed"),
                retried: total("retried"),
                dead: total("dead"),
                cancelled: total("cancelled"),
                recovered: total("recovered"),
                purged: total("purged"),
            },
            retention: {
                let of = |state| {
                    s.retention.get(&state).map(|r| RetentionBody {
                        max_age_secs: r.max_age_secs,
                        max_jobs: r.max_jobs,
                    })
                };
                RetentionsBody {
                    done: of(JobState::Done),
                    dead: of(JobState::Dead),
                    cancelled: of(JobState::Cancelled),
                }
            },
            last_hour: s.last_hour.into_iter().map(MinuteBody::from).collect(),
            queue: s.queue,
            paused: s.paused,
            oldest_queued_age_secs: s.oldest_queued_age_secs,
            workers: s.workers,
        }
    }
}

impl From<MinuteStats> for MinuteBody {
    fn from(m: MinuteStats) -> MinuteBody {
        MinuteBody {
            minute: m.minute,
            enqueued: m.enqueued,
            done: m.done,
            failed: m.failed,
            dead: m.dead,
        }
    }
}

/// A job as listed. `kind`, `release` and `platform` are the queue's indexed copies, kept as
/// stored: a malformed job may carry anything there.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobBody {
    pub id: String,
    pub state: JobState,
    pub kind: String,
    pub release: String,
    pub platform: String,
    /// Attempts started so far.
    pub attempt: u32,
    pub max_attempts: u32,
    pub enqueued_at: Option<DateTime<Utc>>,
    pub run_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The lease holder while running.
    pub worker: Option<String>,
    /// The class of the failure the job is in now: transient, permanent, auth or malformed.
    /// Null for a done job: failures before it succeeded are history, in the attempts and
    /// events.
    pub error_class: Option<String>,
    /// The message of that failure (of the cancel, for a cancelled job); null for a done job.
    pub last_error: Option<String>,
    pub cancel_requested: bool,
    pub idempotency_key: String,
    /// The status ATR shows for this job.
    pub atr_task_status: AtrTaskStatus,
}

impl From<JobSummary> for JobBody {
    fn from(j: JobSummary) -> JobBody {
        let class = j.error_class.as_deref().and_then(ErrorClass::parse);
        JobBody {
            atr_task_status: AtrTaskStatus::of(j.state, class),
            id: j.id,
            state: j.state,
            kind: j.kind,
            release: j.release,
            platform: j.platform,
            attempt: j.attempt,
            max_attempts: j.max_attempts,
            enqueued_at: j.enqueued_at,
            run_at: j.run_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
            worker: j.worker,
            error_class: j.error_class,
            last_error: j.last_error,
            cancel_requested: j.cancel_requested,
            idempotency_key: j.idempotency_key,
        }
    }
}

/// One page of jobs.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobPageBody {
    pub jobs: Vec<JobBody>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A notable event of a job (docs/wire-format.md, "events").
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    pub at: Option<DateTime<Utc>>,
    /// retry_scheduled, dead, lease_expired, released, deferred, cancel_requested, cancelled or retried.
    pub event: String,
    pub attempt: Option<u32>,
    pub error_class: Option<String>,
    pub message: Option<String>,
}

impl From<JobEvent> for EventBody {
    fn from(e: JobEvent) -> EventBody {
        EventBody {
            at: e.at,
            event: e.event,
            attempt: e.attempt,
            error_class: e.error_class,
            message: e.message,
        }
    }
}

/// One attempt, as the pipeline recorded it in `job_run`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttemptBody {
    pub job_id: String,
    pub kind: String,
    /// The run of the job this attempt belongs to: 1, then one more after each operator's
    /// retry (`jobs retry`), which starts the attempts from 1 again. So "run 2, attempt 1" is
    /// the first attempt after the first retry. Derived from the order of the job's attempts:
    /// a new run starts where the attempt number goes down, or repeats after an attempt that
    /// counted (a deferral, a wait or an abandoned attempt may repeat its number in a run).
    pub run: u32,
    /// The attempt within its run, from 1.
    pub attempt: i32,
    pub release_key: String,
    pub platform: Platform,
    pub owner_namespace: String,
    pub package: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    /// completed, unchanged, dry_run, disabled_by_policy, revision_changed, deferred, waiting,
    /// failed, timed_out, cancelled or abandoned; null while running.
    pub outcome: Option<String>,
    pub error_class: Option<String>,
    pub message: Option<String>,
    pub http_status: Option<i32>,
    /// For a revision_changed attempt: the paths added, removed and changed between the
    /// staged revision and the voted one.
    pub revision_diff: Option<ManifestDiff>,
}

impl From<job_run::Model> for AttemptBody {
    fn from(r: job_run::Model) -> AttemptBody {
        AttemptBody {
            job_id: r.job_id,
            kind: r.kind,
            // Numbered by `number_runs`, which sees the job's other attempts.
            run: 1,
            attempt: r.attempt,
            release_key: r.release_key,
            platform: r.platform,
            owner_namespace: r.owner_namespace,
            package: r.package,
            version: r.version,
            started_at: r.started_at,
            finished_at: r.finished_at,
            duration_ms: r.duration_ms,
            outcome: r.outcome,
            error_class: r.error_class,
            message: r.message,
            http_status: r.http_status,
            // Written by the pipeline from a `ManifestDiff`; anything else is not one.
            revision_diff: r.revision_diff.and_then(|v| serde_json::from_value(v).ok()),
        }
    }
}

/// Numbers the runs of each job's attempts (`AttemptBody::run`), given in the order they
/// started. Attempts of several jobs may be mixed; each job is numbered on its own.
pub fn number_runs<'a>(chronological: impl IntoIterator<Item = &'a mut AttemptBody>) {
    let mut last: HashMap<String, (u32, i32, Option<AttemptOutcome>)> = HashMap::new();
    for a in chronological {
        let run = match last.get(&a.job_id) {
            None => 1,
            Some(&(run, attempt, outcome)) if starts_run(attempt, outcome, a.attempt) => run + 1,
            Some(&(run, _, _)) => run,
        };
        a.run = run;
        let outcome = a.outcome.as_deref().and_then(AttemptOutcome::parse);
        last.insert(a.job_id.clone(), (run, a.attempt, outcome));
    }
}

/// Whether attempt `attempt` starts a new run, after attempt `previous` that ended in
/// `outcome`. Within a run numbers only grow, except that an attempt that did not count keeps
/// its number for the next one; a retry starts again from 1.
fn starts_run(previous: i32, outcome: Option<AttemptOutcome>, attempt: i32) -> bool {
    if attempt != previous {
        return attempt < previous;
    }
    match outcome {
        // Not counted: a deferral, a wait, or an attempt handed back at shutdown (recorded as
        // abandoned, like an expired lease, which does count but then never repeats its
        // number). An open row is one whose end was never recorded.
        None
        | Some(AttemptOutcome::Deferred)
        | Some(AttemptOutcome::Waiting)
        | Some(AttemptOutcome::Abandoned) => false,
        // Counted, or the job's end: the same number again is a retry's first attempt.
        Some(AttemptOutcome::Completed)
        | Some(AttemptOutcome::Unchanged)
        | Some(AttemptOutcome::DryRun)
        | Some(AttemptOutcome::DisabledByPolicy)
        | Some(AttemptOutcome::RevisionChanged)
        | Some(AttemptOutcome::Failed)
        | Some(AttemptOutcome::TimedOut)
        | Some(AttemptOutcome::Cancelled) => true,
    }
}

/// One moment of a job's story, from the queue (its events and timestamps) or from the
/// results database (its attempts).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimelineEntry {
    pub at: Option<DateTime<Utc>>,
    /// `enqueued`; a queue event (see `EventBody`); `attempt_started` and then the attempt's
    /// outcome (`completed`, `failed`, ...); `done` when the job succeeded.
    pub event: String,
    /// The run it belongs to (see `AttemptBody::run`).
    pub run: u32,
    pub attempt: Option<u32>,
    pub error_class: Option<String>,
    pub message: Option<String>,
    /// Whether it tells of a failure (the dashboard shows those in red).
    pub failure: bool,
}

/// Events that tell of a failure.
fn failure_event(event: &str) -> bool {
    matches!(event, "retry_scheduled" | "dead" | "lease_expired")
}

/// A job's one timeline: its enqueue, the queue's events, the attempts the results database
/// recorded and, for a done job, its end, ordered by time (entries without a time last). The
/// queue's times are Redis's clock and the attempts' the workers': they agree as far as those
/// clocks do. Without recorded attempts, the queue's start of the last attempt stands in.
pub fn timeline(
    job: &JobBody,
    events: &[EventBody],
    attempts: &[AttemptBody],
) -> Vec<TimelineEntry> {
    let mut out = vec![TimelineEntry {
        at: job.enqueued_at,
        event: "enqueued".to_owned(),
        run: 1,
        attempt: None,
        error_class: None,
        message: None,
        failure: false,
    }];
    // Each operator's retry starts a run.
    let mut run = 1;
    for e in events {
        if e.event == "retried" {
            run += 1;
        }
        out.push(TimelineEntry {
            at: e.at,
            event: e.event.clone(),
            run,
            attempt: e.attempt,
            error_class: e.error_class.clone(),
            message: e.message.clone(),
            failure: failure_event(&e.event),
        });
    }
    for a in attempts {
        let attempt = u32::try_from(a.attempt).ok();
        out.push(TimelineEntry {
            at: Some(a.started_at),
            event: "attempt_started".to_owned(),
            run: a.run,
            attempt,
            error_class: None,
            message: None,
            failure: false,
        });
        if let (Some(at), Some(outcome)) = (a.finished_at, &a.outcome) {
            out.push(TimelineEntry {
                at: Some(at),
                event: outcome.clone(),
                run: a.run,
                attempt,
                error_class: a.error_class.clone(),
                message: a.message.clone(),
                failure: AttemptOutcome::parse(outcome).is_some_and(AttemptOutcome::is_failure),
            });
        }
    }
    if attempts.is_empty()
        && let Some(at) = job.started_at
    {
        out.push(TimelineEntry {
            at: Some(at),
            event: "attempt_started".to_owned(),
            run,
            attempt: Some(job.attempt),
            error_class: None,
            message: None,
            failure: false,
        });
    }
    // The queue's events tell every other end (dead, cancelled); a success has none.
    if job.state == JobState::Done {
        out.push(TimelineEntry {
            at: job.finished_at,
            event: "done".to_owned(),
            run,
            attempt: Some(job.attempt),
            error_class: None,
            message: None,
            failure: false,
        });
    }
    out.sort_by_key(|e| (e.at.is_none(), e.at));
    out
}

/// One job in full.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobDetailBody {
    pub job: JobBody,
    /// The envelope as stored: its JSON, or the stored text as a string when it is not JSON.
    pub envelope: serde_json::Value,
    /// Why the envelope cannot be run, when it cannot (the job is dead as malformed).
    pub envelope_error: Option<String>,
    /// Lease expiry while running.
    pub lease_until: Option<DateTime<Utc>>,
    /// The queue's events of the job (its last 50), oldest first.
    pub events: Vec<EventBody>,
    /// Every attempt recorded in the results database, in the order they started.
    pub attempts: Vec<AttemptBody>,
    /// Set when the results database could not be read; `attempts` is then empty.
    pub attempts_error: Option<String>,
    /// The enqueue, the events and the attempts in one list, ordered by time.
    pub timeline: Vec<TimelineEntry>,
}

impl JobDetailBody {
    /// The job from the queue and its attempts from the results database (in the order they
    /// started, as `results::attempts_for_job` reads them), or why they could not be read.
    pub fn new(detail: JobDetail, attempts: Result<Vec<job_run::Model>, String>) -> JobDetailBody {
        let envelope = serde_json::from_str(&detail.envelope)
            .unwrap_or_else(|_| serde_json::Value::String(detail.envelope.clone()));
        let envelope_error = atr_dist_shared::Envelope::parse(detail.envelope.as_bytes())
            .err()
            .map(|e| e.to_string());
        let (mut attempts, attempts_error) = match attempts {
            Ok(rows) => (
                rows.into_iter().map(AttemptBody::from).collect::<Vec<_>>(),
                None,
            ),
            Err(e) => (Vec::new(), Some(e)),
        };
        number_runs(attempts.iter_mut());
        let job = JobBody::from(detail.summary);
        let events: Vec<EventBody> = detail.events.into_iter().map(EventBody::from).collect();
        let timeline = timeline(&job, &events, &attempts);
        JobDetailBody {
            job,
            envelope,
            envelope_error,
            lease_until: detail.lease_until,
            events,
            attempts,
            attempts_error,
            timeline,
        }
    }
}

/// What a retry or cancel of one job did. Done now: `changed` is true. Nothing to do (the job
/// is already where the action would take it: a retry of a job that has yet to run or runs, a
/// cancel of a cancelled job or of a running one whose cancel is pending): `changed` is false
/// and nothing was written, no event either. An action the job's state does not allow (a retry
/// of a done job, a cancel of a done or dead one) is a 409 with an `ErrorBody` instead.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    pub id: String,
    /// Whether this call changed the job.
    pub changed: bool,
    /// The job's state after the call: `queued` after a retry, `cancelled` after a cancel of a
    /// waiting job, `running` for a running one (see `cancel_requested`).
    pub state: JobState,
    /// A cancel of the running job is pending: its worker stops it at its next heartbeat.
    pub cancel_requested: bool,
    /// What happened, in words, e.g. `queued again` or `nothing to do: it is queued already,
    /// and will run`.
    pub message: String,
}

/// Which dead jobs `POST /api/v1/jobs/retry` queues again. Absent fields match every job;
/// `{}` retries every dead job.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryMatchingRequest {
    /// Platform member name, e.g. NPM.
    pub platform: Option<String>,
    /// Release key, e.g. example-1.0.0.
    pub release: Option<String>,
    /// stage or promote.
    pub kind: Option<String>,
    /// Only jobs enqueued at least this long ago.
    pub older_than: Option<DurationParam>,
    /// Only jobs enqueued at most this long ago.
    pub newer_than: Option<DurationParam>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryMatchingBody {
    /// Dead jobs queued again.
    pub retried: u64,
}

/// Which finished jobs `POST /api/v1/jobs/purge` deletes.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// done, dead or cancelled.
    pub state: JobState,
    /// Only jobs that entered the state at least this long ago.
    pub older_than: DurationParam,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeBody {
    pub state: JobState,
    pub older_than_secs: f64,
    pub purged: u64,
}

/// A duration: seconds as a number, or text such as `90s`, `30m`, `2h`, `7d`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum DurationParam {
    Seconds(f64),
    Text(String),
}

impl DurationParam {
    pub fn to_duration(&self, name: &str) -> Result<Duration, String> {
        match self {
            DurationParam::Seconds(secs) => seconds(name, *secs),
            DurationParam::Text(text) => parse_duration(name, text),
        }
    }
}

fn seconds(name: &str, secs: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{name}: {secs} is not a number of seconds >= 0"))
}

/// Seconds (`90`, `1.5`) or a humantime duration (`90s`, `30m`, `2h 30m`, `7d`).
pub fn parse_duration(name: &str, text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        return seconds(name, secs);
    }
    humantime::parse_duration(text).map_err(|e| {
        format!("{name}: {text:?} is not a duration ({e}); give seconds or e.g. 30m, 2h, 7d")
    })
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseBody {
    pub queue: String,
    pub paused: bool,
}

/// What `POST /api/v1/jobs` did.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueuedBody {
    /// The job's id; when `created` is false, the id of the job the idempotency key already named.
    pub id: String,
    /// False when the idempotency key already named a job: nothing new was enqueued.
    pub created: bool,
    pub kind: JobKind,
    pub release: String,
    pub platform: Platform,
    /// The distribution key, as ATR shows it.
    pub distribution: String,
    pub max_attempts: u32,
    pub run_at: Option<DateTime<Utc>>,
}

/// Where a distribution stands, from ATR's columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DistributionStatus {
    /// Recorded by ATR as pending: nothing published yet.
    Pending,
    /// On the platform's staging place (`staging = true`), waiting for the vote.
    Staged,
    /// Promoted by atr-dist from the staged one.
    Promoted,
    /// A production distribution that atr-dist did not promote (recorded directly).
    Production,
}

impl DistributionStatus {
    pub fn of(row: &distribution::Model) -> DistributionStatus {
        if row.pending {
            DistributionStatus::Pending
        } else if row.promoted {
            DistributionStatus::Promoted
        } else if row.staging {
            DistributionStatus::Staged
        } else {
            DistributionStatus::Production
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DistributionStatus::Pending => "pending",
            DistributionStatus::Staged => "staged",
            DistributionStatus::Promoted => "promoted",
            DistributionStatus::Production => "production",
        }
    }
}

/// A row of the `distribution` table.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DistributionBody {
    pub release_key: String,
    pub platform: Platform,
    pub owner_namespace: String,
    pub package: String,
    pub version: String,
    pub status: DistributionStatus,
    pub staging: bool,
    pub pending: bool,
    pub promoted: bool,
    pub retries: i32,
    pub upload_date: Option<DateTime<Utc>>,
    pub promoted_at: Option<DateTime<Utc>>,
    pub api_url: Option<String>,
    pub web_url: Option<String>,
    pub created_by: Option<String>,
    /// The revision whose files were staged (`"<release_key> <number>"`).
    pub staging_revision_key: Option<String>,
    pub staging_tag: Option<String>,
    /// `sha3-256:` digest of the staged revision's manifest.
    pub staged_manifest_digest: Option<String>,
    /// The platform's own digest of what it holds (npm integrity, OCI manifest digest).
    pub platform_digest: Option<String>,
    /// The promotion's chain starts here: the revision whose vote the promotion carried
    /// out. Null until atr-dist promotes (and for promotions recorded before it kept the
    /// chain).
    pub voted_revision_key: Option<String>,
    /// `sha3-256:` digest of the voted revision's manifest: equal to
    /// `staged_manifest_digest`, or nothing would have been promoted.
    pub voted_manifest_digest: Option<String>,
    /// The platform's digest read back after staging.
    pub staged_platform_digest: Option<String>,
    /// The platform's digest read back after promoting: equal to `staged_platform_digest`.
    pub promoted_digest: Option<String>,
}

impl From<distribution::Model> for DistributionBody {
    fn from(d: distribution::Model) -> DistributionBody {
        DistributionBody {
            status: DistributionStatus::of(&d),
            release_key: d.release_key,
            platform: d.platform,
            owner_namespace: d.owner_namespace,
            package: d.package,
            version: d.version,
            staging: d.staging,
            pending: d.pending,
            promoted: d.promoted,
            retries: d.retries,
            upload_date: d.upload_date,
            promoted_at: d.promoted_at,
            api_url: d.api_url,
            web_url: d.web_url,
            created_by: d.created_by,
            staging_revision_key: d.staging_revision_key,
            staging_tag: d.staging_tag,
            staged_manifest_digest: d.staged_manifest_digest,
            platform_digest: d.platform_digest,
            voted_revision_key: d.voted_revision_key,
            voted_manifest_digest: d.voted_manifest_digest,
            staged_platform_digest: d.staged_platform_digest,
            promoted_digest: d.promoted_digest,
        }
    }
}

/// A release's distributions and the attempts made for it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    pub release_key: String,
    pub distributions: Vec<DistributionBody>,
    /// Attempts for this release, newest first (at most 500).
    pub runs: Vec<AttemptBody>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthBody {
    /// Always `ok`: the process answers.
    pub status: String,
}

/// One readiness check.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckBody {
    /// redis, database or migrations.
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadyBody {
    pub ready: bool,
    pub checks: Vec<CheckBody>,
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    fn attempt(job: &str, n: i32, start: i64, outcome: &str) -> AttemptBody {
        AttemptBody {
            job_id: job.to_owned(),
            kind: "stage".to_owned(),
            run: 0,
            attempt: n,
            release_key: "example-1.0.0".to_owned(),
            platform: Platform::Npm,
            owner_namespace: String::new(),
            package: "example".to_owned(),
            version: "1.0.0".to_owned(),
            started_at: at(start),
            finished_at: Some(at(start + 1)),
            duration_ms: Some(1000),
            outcome: Some(outcome.to_owned()),
            error_class: None,
            message: Some(format!("{outcome} {n}")),
            http_status: None,
            revision_diff: None,
        }
    }

    #[test]
    fn a_retry_starts_a_new_run_and_uncounted_attempts_keep_their_number() {
        let mut rows = vec![
            attempt("a", 1, 0, "deferred"),
            attempt("b", 1, 1, "failed"),
            attempt("a", 1, 2, "failed"),
            attempt("a", 2, 3, "failed"),
            // Dead after two attempts; retried: attempt 1 again.
            attempt("a", 1, 10, "waiting"),
            attempt("a", 1, 11, "abandoned"),
            attempt("a", 1, 12, "failed"),
            // Dead after one (permanent) failure; retried: the same number again.
            attempt("a", 1, 20, "completed"),
            attempt("b", 2, 21, "completed"),
        ];
        number_runs(rows.iter_mut());
        let runs: Vec<(&str, u32, i32)> = rows
            .iter()
            .map(|r| (r.job_id.as_str(), r.run, r.attempt))
            .collect();
        assert_eq!(
            runs,
            [
                ("a", 1, 1),
                ("b", 1, 1),
                ("a", 1, 1),
                ("a", 1, 2),
                ("a", 2, 1),
                ("a", 2, 1),
                ("a", 2, 1),
                ("a", 3, 1),
                ("b", 1, 2),
            ]
        );
    }

    fn job(state: JobState) -> JobBody {
        JobBody {
            id: "a".to_owned(),
            state,
            kind: "stage".to_owned(),
            release: "example-1.0.0".to_owned(),
            platform: "NPM".to_owned(),
            attempt: 1,
            max_attempts: 3,
            enqueued_at: Some(at(0)),
            run_at: None,
            started_at: Some(at(30)),
            finished_at: Some(at(31)),
            worker: None,
            error_class: None,
            last_error: None,
            cancel_requested: false,
            idempotency_key: "k".to_owned(),
            atr_task_status: AtrTaskStatus::Completed,
        }
    }

    fn event(name: &str, secs: i64) -> EventBody {
        EventBody {
            at: Some(at(secs)),
            event: name.to_owned(),
            attempt: None,
            error_class: None,
            message: None,
        }
    }

    #[test]
    fn the_timeline_merges_events_and_attempts_by_time() {
        let mut attempts = vec![
            attempt("a", 1, 2, "failed"),
            attempt("a", 1, 30, "completed"),
        ];
        number_runs(attempts.iter_mut());
        let events = [event("dead", 4), event("retried", 20)];
        let t = timeline(&job(JobState::Done), &events, &attempts);
        let seen: Vec<(&str, u32, bool)> = t
            .iter()
            .map(|e| (e.event.as_str(), e.run, e.failure))
            .collect();
        assert_eq!(
            seen,
            [
                ("enqueued", 1, false),
                ("attempt_started", 1, false),
                ("failed", 1, true),
                ("dead", 1, true),
                ("retried", 2, false),
                ("attempt_started", 2, false),
                ("completed", 2, false),
                ("done", 2, false),
            ]
        );
        assert!(t.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[test]
    fn without_recorded_attempts_the_queue_start_stands_in() {
        // The last start (30 s) came after the job went dead (4 s) and was retried (20 s).
        let events = [event("dead", 4), event("retried", 20)];
        let t = timeline(&job(JobState::Running), &events, &[]);
        let seen: Vec<&str> = t.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(seen, ["enqueued", "dead", "retried", "attempt_started"]);
        assert_eq!(t[3].run, 2);
    }
}
