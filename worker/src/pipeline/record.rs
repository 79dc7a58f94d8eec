//! The pipeline's writes to the results database: `job_run` (one row per attempt),
//! `distribution` (ATR's row, plus what was staged and promoted) and `revision_manifest`.

use atr_dist_shared::entities::{distribution, job_run, revision_manifest};
use atr_dist_shared::names::RevisionKey;
use atr_dist_shared::{
    AttemptOutcome, DistributionKey, ErrorClass, JobKind, ManifestDiff, RevisionManifest,
};
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};

use crate::platform::Observed;

fn pk(key: &DistributionKey) -> (String, atr_dist_shared::Platform, String, String, String) {
    (
        key.release_key.to_string(),
        key.platform,
        key.owner_namespace.clone(),
        key.package.to_string(),
        key.version.to_string(),
    )
}

pub async fn load_distribution(
    db: &DatabaseConnection,
    key: &DistributionKey,
) -> Result<Option<distribution::Model>, DbErr> {
    distribution::Entity::find_by_id(pk(key)).one(db).await
}

pub struct RunStart<'a> {
    pub job_id: &'a str,
    pub kind: JobKind,
    pub key: &'a DistributionKey,
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    /// The queue the job was leased from.
    pub queue: &'a str,
}

/// Records the start of an attempt. Rows of earlier attempts of the job that are still open
/// are closed first, as `abandoned`: their worker died, stalled past its lease, or could not
/// write their end, and a new attempt means they will never record it themselves.
pub async fn start_run(db: &DatabaseConnection, run: RunStart<'_>) -> Result<i64, DbErr> {
    let open = job_run::Entity::find()
        .filter(job_run::Column::JobId.eq(run.job_id))
        .filter(job_run::Column::FinishedAt.is_null())
        .all(db)
        .await?;
    for row in open {
        let why = format!(
            "{}; closed when attempt {} started",
            abandoned_reason(row.attempt),
            run.attempt
        );
        abandon_run(db, row.id, &why).await?;
    }
    let row = job_run::ActiveModel {
        job_id: Set(run.job_id.to_owned()),
        kind: Set(run.kind.as_str().to_owned()),
        release_key: Set(run.key.release_key.to_string()),
        platform: Set(run.key.platform),
        owner_namespace: Set(run.key.owner_namespace.clone()),
        package: Set(run.key.package.to_string()),
        version: Set(run.key.version.to_string()),
        attempt: Set(run.attempt as i32),
        started_at: Set(run.started_at),
        queue: Set(Some(run.queue.to_owned())),
        ..Default::default()
    };
    Ok(row.insert(db).await?.id)
}

/// Why an attempt's row was left open, as far as anyone can tell afterwards.
pub fn abandoned_reason(attempt: i32) -> String {
    format!(
        "the worker running attempt {attempt} stopped before recording its end (lease expired or result write failed)"
    )
}

/// Closes the row `id` as `abandoned` with `message`, if it is still open: an attempt that
/// recorded its end (or was closed by someone else meanwhile) keeps what it has. Returns
/// whether the row was closed here. The finish time is when the row was closed; the
/// duration is left empty, since when the attempt really stopped is not known.
pub async fn abandon_run(db: &DatabaseConnection, id: i64, message: &str) -> Result<bool, DbErr> {
    let done = job_run::Entity::update_many()
        .col_expr(
            job_run::Column::Outcome,
            Expr::value(AttemptOutcome::Abandoned.as_str()),
        )
        .col_expr(job_run::Column::FinishedAt, Expr::value(Utc::now()))
        .col_expr(job_run::Column::Message, Expr::value(message))
        .filter(job_run::Column::Id.eq(id))
        .filter(job_run::Column::FinishedAt.is_null())
        .exec(db)
        .await?;
    Ok(done.rows_affected == 1)
}

/// Open rows of attempts of jobs from `queue` with an id above `after`, oldest first, at
/// most `limit`.
pub async fn open_runs(
    db: &DatabaseConnection,
    queue: &str,
    after: i64,
    limit: u64,
) -> Result<Vec<job_run::Model>, DbErr> {
    job_run::Entity::find()
        .filter(job_run::Column::Queue.eq(queue))
        .filter(job_run::Column::FinishedAt.is_null())
        .filter(job_run::Column::Id.gt(after))
        .order_by_asc(job_run::Column::Id)
        .limit(limit)
        .all(db)
        .await
}

pub struct RunEnd {
    pub outcome: AttemptOutcome,
    /// What the attempt's retry budget counted (`platform/http.rs`).
    pub http: crate::platform::http::BudgetState,
    pub error_class: Option<ErrorClass>,
    pub message: Option<String>,
    pub http_status: Option<u16>,
    pub started_at: DateTime<Utc>,
    /// What differed, for a `revision_changed` attempt.
    pub revision_diff: Option<ManifestDiff>,
}

/// Records how an attempt ended. This is the attempt's own account, and it replaces an
/// `abandoned` that someone else wrote meanwhile (a stalled worker that finishes after all
/// knows best how its attempt ended).
pub async fn finish_run(db: &DatabaseConnection, id: i64, end: RunEnd) -> Result<(), DbErr> {
    let now = Utc::now();
    let diff = match &end.revision_diff {
        Some(diff) => Some(
            serde_json::to_value(diff)
                .map_err(|e| DbErr::Custom(format!("the revision diff is not JSON: {e}")))?,
        ),
        None => None,
    };
    let row = job_run::ActiveModel {
        id: Set(id),
        finished_at: Set(Some(now)),
        outcome: Set(Some(end.outcome.as_str().to_owned())),
        error_class: Set(end.error_class.map(|c| c.as_str().to_owned())),
        message: Set(end.message),
        http_status: Set(end.http_status.map(i32::from)),
        duration_ms: Set(Some((now - end.started_at).num_milliseconds())),
        http_requests: Set(Some(end.http.requests as i32)),
        http_retries: Set(Some(end.http.retries as i32)),
        revision_diff: Set(diff),
        ..Default::default()
    };
    row.update(db).await.map(|_| ())
}

/// Records a revision's manifest once; the same revision always has the same files.
pub async fn save_manifest(
    db: &DatabaseConnection,
    revision: &RevisionKey,
    manifest: &RevisionManifest,
) -> Result<(), DbErr> {
    let (release, _) = revision.parts();
    let row = revision_manifest::ActiveModel {
        revision_key: Set(revision.to_string()),
        release_key: Set(release.to_string()),
        digest: Set(manifest.digest().to_string()),
        manifest: Set(serde_json::to_value(manifest).unwrap_or_default()),
        file_count: Set(manifest.entries().len() as i32),
        created_at: Set(Utc::now()),
    };
    revision_manifest::Entity::insert(row)
        .on_conflict(
            OnConflict::column(revision_manifest::Column::RevisionKey)
                .do_nothing()
                .to_owned(),
        )
        .try_insert()
        .exec(db)
        .await
        .map(|_| ())
}

pub async fn load_manifest(
    db: &DatabaseConnection,
    revision: &str,
) -> Result<Option<RevisionManifest>, DbErr> {
    let Some(row) = revision_manifest::Entity::find_by_id(revision.to_owned())
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    serde_json::from_value(row.manifest)
        .map(Some)
        .map_err(|e| DbErr::Custom(format!("stored manifest of {revision} is unreadable: {e}")))
}

pub struct Staged<'a> {
    pub key: &'a DistributionKey,
    pub revision: &'a RevisionKey,
    pub manifest_digest: String,
    pub staging_tag: String,
    pub observed: &'a Observed,
    pub created_by: &'a str,
    /// The artifact paths staged, in the job's order.
    pub artifacts: Vec<String>,
}

/// Inserts or updates the row as staged (`staging = true`), as ATR records a staging
/// distribution, with what was staged.
pub async fn save_staged(db: &DatabaseConnection, s: Staged<'_>) -> Result<(), DbErr> {
    let (release_key, platform, owner_namespace, package, version) = pk(s.key);
    let row = distribution::ActiveModel {
        release_key: Set(release_key),
        platform: Set(platform),
        owner_namespace: Set(owner_namespace),
        package: Set(package),
        version: Set(version),
        staging: Set(true),
        pending: Set(false),
        retries: Set(0),
        upload_date: Set(s.observed.upload_date.or(Some(Utc::now()))),
        api_url: Set(s.observed.api_url.clone()),
        web_url: Set(s.observed.web_url.clone()),
        created_by: Set(Some(s.created_by.to_owned())),
        promoted: Set(false),
        promoted_at: Set(None),
        staging_revision_key: Set(Some(s.revision.to_string())),
        staged_manifest_digest: Set(Some(s.manifest_digest)),
        platform_digest: Set(Some(s.observed.digest.to_string())),
        staging_tag: Set(Some(s.staging_tag)),
        voted_revision_key: Set(None),
        voted_manifest_digest: Set(None),
        staged_platform_digest: Set(Some(s.observed.digest.to_string())),
        promoted_digest: Set(None),
        staged_artifacts: Set(Some(serde_json::Value::from(s.artifacts))),
    };
    use distribution::Column as C;
    distribution::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([
                C::ReleaseKey,
                C::Platform,
                C::OwnerNamespace,
                C::Package,
                C::Version,
            ])
            .update_columns([
                C::Staging,
                C::Pending,
                C::UploadDate,
                C::ApiUrl,
                C::WebUrl,
                C::CreatedBy,
                C::Promoted,
                C::PromotedAt,
                C::StagingRevisionKey,
                C::StagedManifestDigest,
                C::PlatformDigest,
                C::StagingTag,
                C::StagedPlatformDigest,
                C::StagedArtifacts,
            ])
            .to_owned(),
        )
        .exec(db)
        .await
        .map(|_| ())
}

/// The artifact paths recorded by the stage, or None for a row staged before they were
/// recorded (or not by this worker).
pub fn staged_artifacts(row: &distribution::Model) -> Option<Vec<String>> {
    let paths = row.staged_artifacts.as_ref()?.as_array()?;
    paths
        .iter()
        .map(|p| p.as_str().map(str::to_owned))
        .collect()
}

pub struct Promoted<'a> {
    /// The row as staged.
    pub row: distribution::Model,
    /// What the platform holds in production now.
    pub observed: &'a Observed,
    pub created_by: &'a str,
    /// The revision whose vote is carried out, and its manifest's digest.
    pub voted_revision: &'a RevisionKey,
    pub voted_manifest_digest: String,
}

/// Flips the row to the production distribution in place, as ATR's
/// `__upgrade_staging_to_final` does, and records the promotion with its chain: voted
/// revision and manifest digest, staged platform digest, promoted digest.
pub async fn save_promoted(db: &DatabaseConnection, p: Promoted<'_>) -> Result<(), DbErr> {
    // Rows staged before the chain was recorded have the staged digest only in
    // `platform_digest`, which the promotion is about to overwrite.
    let staged_platform_digest = p
        .row
        .staged_platform_digest
        .clone()
        .or_else(|| p.row.platform_digest.clone());
    let mut active: distribution::ActiveModel = p.row.into();
    active.staging = Set(false);
    active.pending = Set(false);
    active.promoted = Set(true);
    active.promoted_at = Set(Some(Utc::now()));
    active.upload_date = Set(p.observed.upload_date.or(Some(Utc::now())));
    active.api_url = Set(p.observed.api_url.clone());
    active.web_url = Set(p.observed.web_url.clone());
    active.created_by = Set(Some(p.created_by.to_owned()));
    active.platform_digest = Set(Some(p.observed.digest.to_string()));
    active.voted_revision_key = Set(Some(p.voted_revision.to_string()));
    active.voted_manifest_digest = Set(Some(p.voted_manifest_digest));
    active.staged_platform_digest = Set(staged_platform_digest);
    active.promoted_digest = Set(Some(p.observed.digest.to_string()));
    active.update(db).await.map(|_| ())
}
