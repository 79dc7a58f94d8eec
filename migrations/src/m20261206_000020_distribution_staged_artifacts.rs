//! `distribution.staged_artifacts`: the artifact paths a stage published, as a JSON array in
//! the job's order. A promote job names no files; where promotion is a second upload of the
//! voted bytes (PyPI), it re-uploads exactly these, read from the voted revision.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Distribution {
    Table,
    StagedArtifacts,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Distribution::Table)
                    .add_column(json_null(Distribution::StagedArtifacts))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Distribution::Table)
                    .drop_column(Distribution::StagedArtifacts)
                    .to_owned(),
            )
            .await
    }
}
