//! The pipeline's writes to the results database: `job_run` (one row per attempt),
//! `distribution` (ATR's row, plus what was staged and promoted) and `revision_manifest`.

use atr_dist_shared::entities::{distribution, job_run, revision_manifest};
use atr_dist_shared::names::RevisionKey;
use atr_dist_shared::{AttemptOutcome, DistributionKey, ErrorClass, JobKind, RevisionManifest};
use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveModelTrait, DatabaseConnection, DbErr, EntityTrait, Set};

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
}

pub async fn start_run(db: &DatabaseConnection, run: RunStart<'_>) -> Result<i64, DbErr> {
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
        ..Default::default()
    };
    Ok(row.insert(db).await?.id)
}

pub struct RunEnd {
    pub outcome: AttemptOutcome,
    /// What the attempt's retry budget counted (`platform/http.rs`).
    pub http: crate::platform::http::BudgetState,
    pub error_class: Option<ErrorClass>,
    pub message: Option<String>,
    pub http_status: Option<u16>,
    pub started_at: DateTime<Utc>,
}

pub async fn finish_run(db: &DatabaseConnection, id: i64, end: RunEnd) -> Result<(), DbErr> {
    let now = Utc::now();
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
            ])
            .to_owned(),
        )
        .exec(db)
        .await
        .map(|_| ())
}

/// Flips the row to the production distribution in place, as ATR's
/// `__upgrade_staging_to_final` does, and records the promotion.
pub async fn save_promoted(
    db: &DatabaseConnection,
    row: distribution::Model,
    observed: &Observed,
    created_by: &str,
) -> Result<(), DbErr> {
    let mut active: distribution::ActiveModel = row.into();
    active.staging = Set(false);
    active.pending = Set(false);
    active.promoted = Set(true);
    active.promoted_at = Set(Some(Utc::now()));
    active.upload_date = Set(observed.upload_date.or(Some(Utc::now())));
    active.api_url = Set(observed.api_url.clone());
    active.web_url = Set(observed.web_url.clone());
    active.created_by = Set(Some(created_by.to_owned()));
    active.platform_digest = Set(Some(observed.digest.to_string()));
    active.update(db).await.map(|_| ())
}
