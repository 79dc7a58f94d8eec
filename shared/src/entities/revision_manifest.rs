//! `revision_manifest`: the manifest of each revision atr-dist staged from, so that a later
//! promote can say exactly which files changed.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "revision_manifest")]
pub struct Model {
    /// ATR's `Revision.key`: `"{release_key} {number}"`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub revision_key: String,
    pub release_key: String,
    /// The canonical `sha3-256:` digest of the entries (see `manifest.rs`).
    pub digest: String,
    /// `{"entries": [{"path", "size", "sha3_256"}]}`.
    pub manifest: Json,
    pub file_count: i32,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
