//! `job_run`: one row per attempt of a job, the audit trail of everything atr-dist did.

use sea_orm::entity::prelude::*;

use crate::platform::Platform;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "job_run")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub job_id: String,
    pub kind: String,
    pub release_key: String,
    pub platform: Platform,
    pub owner_namespace: String,
    pub package: String,
    pub version: String,
    pub attempt: i32,
    pub started_at: DateTimeUtc,
    pub finished_at: Option<DateTimeUtc>,
    /// The attempt's outcome, an `AttemptOutcome` (`completed`, `revision_changed`,
    /// `timed_out`, `abandoned`, ...); null while the attempt runs.
    pub outcome: Option<String>,
    /// `transient`, `permanent` or `auth` when the attempt failed.
    pub error_class: Option<String>,
    pub message: Option<String>,
    pub http_status: Option<i32>,
    pub duration_ms: Option<i64>,
    /// Platform requests the attempt sent, first tries and retries together.
    pub http_requests: Option<i32>,
    /// How many of them were retries (bounded per attempt by `[worker] http_retries`).
    pub http_retries: Option<i32>,
    /// The queue the job was leased from; null on rows written before it was recorded.
    pub queue: Option<String>,
    /// For a `revision_changed` attempt, the paths added, removed and changed between the
    /// staged and the voted revision (a `ManifestDiff`).
    pub revision_diff: Option<Json>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
