//! The audit trail's own columns.
//!
//! - `job_run.queue`: the queue the attempt's job was leased from, so that a worker closing
//!   the rows of attempts whose worker stopped (`abandoned`) only looks at its own queue's.
//! - `job_run.revision_diff`: for a `revision_changed` attempt, the paths added, removed and
//!   changed between the staged and the voted revision, as JSON (`ManifestDiff`).
//! - `distribution`'s promotion chain: the voted revision and its manifest digest, the
//!   platform digest recorded when staging, and the digest the promotion left in production.
//!   ATR's columns are left as they are.
//! - An index on open attempts (`queue`, `finished_at`), for that closing pass.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum JobRun {
    Table,
    Queue,
    FinishedAt,
    RevisionDiff,
}

#[derive(DeriveIden)]
enum Distribution {
    Table,
    VotedRevisionKey,
    VotedManifestDigest,
    StagedPlatformDigest,
    PromotedDigest,
}

const OPEN_RUNS_INDEX: &str = "ix_job_run_queue_finished_at";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite adds one column per ALTER TABLE.
        let job_run = [text_null(JobRun::Queue), json_null(JobRun::RevisionDiff)];
        for column in job_run {
            manager
                .alter_table(
                    Table::alter()
                        .table(JobRun::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        let distribution = [
            string_len_null(Distribution::VotedRevisionKey, 221),
            string_len_null(Distribution::VotedManifestDigest, 100),
            string_len_null(Distribution::StagedPlatformDigest, 100),
            string_len_null(Distribution::PromotedDigest, 100),
        ];
        for column in distribution {
            manager
                .alter_table(
                    Table::alter()
                        .table(Distribution::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name(OPEN_RUNS_INDEX)
                    .table(JobRun::Table)
                    .col(JobRun::Queue)
                    .col(JobRun::FinishedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(OPEN_RUNS_INDEX)
                    .table(JobRun::Table)
                    .to_owned(),
            )
            .await?;
        for column in [
            Distribution::VotedRevisionKey,
            Distribution::VotedManifestDigest,
            Distribution::StagedPlatformDigest,
            Distribution::PromotedDigest,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Distribution::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        for column in [JobRun::Queue, JobRun::RevisionDiff] {
            manager
                .alter_table(
                    Table::alter()
                        .table(JobRun::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
