//! `distribution`, `job_run` and `revision_manifest`.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Distribution {
    Table,
    ReleaseKey,
    Platform,
    OwnerNamespace,
    Package,
    Version,
    Staging,
    Pending,
    Retries,
    UploadDate,
    ApiUrl,
    WebUrl,
    CreatedBy,
    Promoted,
    PromotedAt,
    StagingRevisionKey,
    StagedManifestDigest,
    PlatformDigest,
}

#[derive(DeriveIden)]
enum JobRun {
    Table,
    Id,
    JobId,
    Kind,
    ReleaseKey,
    Platform,
    OwnerNamespace,
    Package,
    Version,
    Attempt,
    StartedAt,
    FinishedAt,
    Outcome,
    ErrorClass,
    Message,
    HttpStatus,
    DurationMs,
}

#[derive(DeriveIden)]
enum RevisionManifest {
    Table,
    RevisionKey,
    ReleaseKey,
    Digest,
    Manifest,
    FileCount,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Distribution::Table)
                    .col(string_len(Distribution::ReleaseKey, 201))
                    // ATR stores the platform's member name (`NPM_SCOPED`), as we do.
                    .col(string_len(Distribution::Platform, 16))
                    .col(string_len(Distribution::OwnerNamespace, 255).default(""))
                    .col(string_len(Distribution::Package, 214))
                    .col(string_len(Distribution::Version, 128))
                    .col(boolean(Distribution::Staging).default(false))
                    .col(boolean(Distribution::Pending).default(false))
                    .col(integer(Distribution::Retries).default(0))
                    .col(timestamp_with_time_zone_null(Distribution::UploadDate))
                    .col(text_null(Distribution::ApiUrl))
                    .col(text_null(Distribution::WebUrl))
                    .col(string_len_null(Distribution::CreatedBy, 64))
                    .col(boolean(Distribution::Promoted).default(false))
                    .col(timestamp_with_time_zone_null(Distribution::PromotedAt))
                    .col(string_len_null(Distribution::StagingRevisionKey, 221))
                    .col(string_len_null(Distribution::StagedManifestDigest, 100))
                    .col(string_len_null(Distribution::PlatformDigest, 100))
                    .primary_key(
                        Index::create()
                            .name("pk_distribution")
                            .col(Distribution::ReleaseKey)
                            .col(Distribution::Platform)
                            .col(Distribution::OwnerNamespace)
                            .col(Distribution::Package)
                            .col(Distribution::Version),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(JobRun::Table)
                    .col(big_pk_auto(JobRun::Id))
                    .col(string_len(JobRun::JobId, 36))
                    .col(string_len(JobRun::Kind, 16))
                    .col(string_len(JobRun::ReleaseKey, 201))
                    .col(string_len(JobRun::Platform, 16))
                    .col(string_len(JobRun::OwnerNamespace, 255).default(""))
                    .col(string_len(JobRun::Package, 214))
                    .col(string_len(JobRun::Version, 128))
                    .col(integer(JobRun::Attempt))
                    .col(timestamp_with_time_zone(JobRun::StartedAt))
                    .col(timestamp_with_time_zone_null(JobRun::FinishedAt))
                    .col(string_len_null(JobRun::Outcome, 32))
                    .col(string_len_null(JobRun::ErrorClass, 16))
                    .col(text_null(JobRun::Message))
                    .col(integer_null(JobRun::HttpStatus))
                    .col(big_integer_null(JobRun::DurationMs))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_job_run_job_id")
                    .table(JobRun::Table)
                    .col(JobRun::JobId)
                    .col(JobRun::Attempt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_job_run_release_key")
                    .table(JobRun::Table)
                    .col(JobRun::ReleaseKey)
                    .col(JobRun::StartedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(RevisionManifest::Table)
                    .col(string_len(RevisionManifest::RevisionKey, 221).primary_key())
                    .col(string_len(RevisionManifest::ReleaseKey, 201))
                    .col(string_len(RevisionManifest::Digest, 100))
                    .col(json(RevisionManifest::Manifest))
                    .col(integer(RevisionManifest::FileCount))
                    .col(timestamp_with_time_zone(RevisionManifest::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_revision_manifest_release_key")
                    .table(RevisionManifest::Table)
                    .col(RevisionManifest::ReleaseKey)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(RevisionManifest::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(JobRun::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Distribution::Table).to_owned())
            .await
    }
}
