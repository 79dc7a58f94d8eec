//! The API's wire types: what `/api/v1` sends and accepts. They are separate from the queue's
//! and the database's own types so that the API stays a contract when those change; the
//! OpenAPI document's component schemas are generated from them (`openapi.rs`), and
//! `deny_unknown_fields` makes every schema closed, so an extra field is drift a test catches.

use std::time::Duration;

use atr_dist_shared::entities::{distribution, job_run};
use atr_dist_shared::{AtrTaskStatus, ErrorClass, JobKind, JobState, ManifestDiff, Platform};
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
    /// Oldest first; the enqueue, start and finish are the job's timestamps.
    pub events: Vec<EventBody>,
    /// Every attempt recorded in the results database, oldest first.
    pub attempts: Vec<AttemptBody>,
    /// Set when the results database could not be read; `attempts` is then empty.
    pub attempts_error: Option<String>,
}

impl JobDetailBody {
    pub fn new(detail: JobDetail, attempts: Result<Vec<job_run::Model>, String>) -> JobDetailBody {
        let envelope = serde_json::from_str(&detail.envelope)
            .unwrap_or_else(|_| serde_json::Value::String(detail.envelope.clone()));
        let envelope_error = atr_dist_shared::Envelope::parse(detail.envelope.as_bytes())
            .err()
            .map(|e| e.to_string());
        let (attempts, attempts_error) = match attempts {
            Ok(rows) => (rows.into_iter().map(AttemptBody::from).collect(), None),
            Err(e) => (Vec::new(), Some(e)),
        };
        JobDetailBody {
            job: detail.summary.into(),
            envelope,
            envelope_error,
            lease_until: detail.lease_until,
            events: detail.events.into_iter().map(EventBody::from).collect(),
            attempts,
            attempts_error,
        }
    }
}

/// What a retry or cancel of one job did.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    pub id: String,
    /// Retry: `queued`. Cancel: `cancelled`, or `cancel_requested` for a running job (its
    /// worker stops it at its next heartbeat).
    pub result: String,
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
