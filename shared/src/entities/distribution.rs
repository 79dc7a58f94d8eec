//! `distribution`: ATR's table and columns, plus what promotion needs.
//!
//! ATR's columns keep ATR's meaning (`staging`, `pending`, `retries`, `upload_date`, `api_url`,
//! `web_url`, `created_by`) so that rows can be copied into ATR as they are. The extra columns
//! record what was staged (revision, manifest digest, the platform's own digest) so that a
//! promote can prove it promotes exactly that, and what each promotion was made of: the
//! chain from the voted revision's manifest to the staged and the promoted digest.

use sea_orm::entity::prelude::*;

use crate::platform::Platform;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "distribution")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub release_key: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub platform: Platform,
    #[sea_orm(primary_key, auto_increment = false)]
    pub owner_namespace: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub package: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub version: String,
    pub staging: bool,
    pub pending: bool,
    pub retries: i32,
    pub upload_date: Option<DateTimeUtc>,
    pub api_url: Option<String>,
    pub web_url: Option<String>,
    pub created_by: Option<String>,
    pub promoted: bool,
    pub promoted_at: Option<DateTimeUtc>,
    pub staging_revision_key: Option<String>,
    pub staged_manifest_digest: Option<String>,
    pub platform_digest: Option<String>,
    /// The tag the distribution was staged under (npm dist-tag, OCI tag).
    pub staging_tag: Option<String>,
    /// The revision whose vote the promotion carried out (`"<release_key> <number>"`).
    pub voted_revision_key: Option<String>,
    /// `sha3-256:` digest of the voted revision's manifest; a promotion happens only when it
    /// equals `staged_manifest_digest`.
    pub voted_manifest_digest: Option<String>,
    /// The platform's digest of what was staged, as read back after staging.
    pub staged_platform_digest: Option<String>,
    /// The platform's digest of what the promotion left in production, as read back.
    pub promoted_digest: Option<String>,
    /// The artifact paths the stage published (a JSON array of strings, in the job's
    /// order). Promotion by re-upload (PyPI) publishes these again from the voted revision.
    pub staged_artifacts: Option<Json>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
