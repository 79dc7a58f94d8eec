//! Reads of the results database for the API and the dashboard: attempts (`job_run`),
//! distributions, and the per-platform tallies of the overview.

use std::collections::BTreeMap;

use atr_dist_shared::entities::{distribution, job_run};
use atr_dist_shared::{AttemptOutcome, Platform};
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, Func};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

/// Attempts listed for a release at most: a release has a handful of distributions, so more
/// than this is a retry storm, whose newest attempts are the ones that matter.
pub const RELEASE_RUNS_LIMIT: u64 = 500;

/// Every attempt of a job, in the order they started (rows are written as attempts start),
/// which is what numbers their runs: after a retry, attempt numbers start from 1 again.
pub async fn attempts_for_job(
    db: &DatabaseConnection,
    job_id: &str,
) -> Result<Vec<job_run::Model>, DbErr> {
    job_run::Entity::find()
        .filter(job_run::Column::JobId.eq(job_id))
        .order_by_asc(job_run::Column::Id)
        .all(db)
        .await
}

pub async fn distributions_for_release(
    db: &DatabaseConnection,
    release_key: &str,
) -> Result<Vec<distribution::Model>, DbErr> {
    distribution::Entity::find()
        .filter(distribution::Column::ReleaseKey.eq(release_key))
        .order_by_asc(distribution::Column::Platform)
        .order_by_asc(distribution::Column::OwnerNamespace)
        .order_by_asc(distribution::Column::Package)
        .order_by_asc(distribution::Column::Version)
        .all(db)
        .await
}

/// A release's attempts, newest first.
pub async fn runs_for_release(
    db: &DatabaseConnection,
    release_key: &str,
) -> Result<Vec<job_run::Model>, DbErr> {
    job_run::Entity::find()
        .filter(job_run::Column::ReleaseKey.eq(release_key))
        .order_by_desc(job_run::Column::StartedAt)
        .order_by_desc(job_run::Column::Id)
        .limit(RELEASE_RUNS_LIMIT)
        .all(db)
        .await
}

/// What an attempt outcome counts as on the overview: success, failure, or neither (a
/// deferral is not an attempt, a cancel is the operator's; a run without an outcome is
/// still going).
pub fn outcome_kind(outcome: &str) -> Option<bool> {
    let outcome = AttemptOutcome::parse(outcome)?;
    if outcome.is_success() {
        Some(true)
    } else if outcome.is_failure() {
        Some(false)
    } else {
        None
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlatformTally {
    pub succeeded: u64,
    pub failed: u64,
    pub last_attempt: Option<DateTime<Utc>>,
}

/// platform, outcome, attempts, latest start.
type TallyRow = (Platform, Option<String>, i64, Option<DateTime<Utc>>);

/// Attempts per platform since `since`, from `job_run`.
pub async fn platform_tallies(
    db: &DatabaseConnection,
    since: DateTime<Utc>,
) -> Result<BTreeMap<Platform, PlatformTally>, DbErr> {
    let rows: Vec<TallyRow> = job_run::Entity::find()
        .select_only()
        .column(job_run::Column::Platform)
        .column(job_run::Column::Outcome)
        .column_as(Expr::from(Func::count(Expr::col(job_run::Column::Id))), "n")
        .column_as(
            Expr::from(Func::max(Expr::col(job_run::Column::StartedAt))),
            "last",
        )
        .filter(job_run::Column::StartedAt.gte(since))
        .group_by(job_run::Column::Platform)
        .group_by(job_run::Column::Outcome)
        .into_tuple()
        .all(db)
        .await?;
    let mut out: BTreeMap<Platform, PlatformTally> = BTreeMap::new();
    for (platform, outcome, n, last) in rows {
        let tally = out.entry(platform).or_default();
        let n = u64::try_from(n).unwrap_or(0);
        match outcome.as_deref().and_then(outcome_kind) {
            Some(true) => tally.succeeded += n,
            Some(false) => tally.failed += n,
            None => {}
        }
        tally.last_attempt = tally.last_attempt.max(last);
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseSummary {
    pub release_key: String,
    pub distributions: u64,
    pub staged: u64,
    pub promoted: u64,
    pub last_upload: Option<DateTime<Utc>>,
}

/// Releases with distributions, most recently uploaded first.
pub async fn recent_releases(
    db: &DatabaseConnection,
    limit: usize,
) -> Result<Vec<ReleaseSummary>, DbErr> {
    let rows = distribution::Entity::find()
        .order_by_desc(distribution::Column::UploadDate)
        .limit(5000)
        .all(db)
        .await?;
    let mut by_release: BTreeMap<String, ReleaseSummary> = BTreeMap::new();
    for row in rows {
        let entry = by_release
            .entry(row.release_key.clone())
            .or_insert_with(|| ReleaseSummary {
                release_key: row.release_key.clone(),
                distributions: 0,
                staged: 0,
                promoted: 0,
                last_upload: None,
            });
        entry.distributions += 1;
        entry.staged += u64::from(row.staging && !row.promoted);
        entry.promoted += u64::from(row.promoted);
        entry.last_upload = entry.last_upload.max(row.upload_date);
    }
    let mut releases: Vec<ReleaseSummary> = by_release.into_values().collect();
    releases.sort_by(|a, b| {
        b.last_upload
            .cmp(&a.last_upload)
            .then(a.release_key.cmp(&b.release_key))
    });
    releases.truncate(limit);
    Ok(releases)
}
