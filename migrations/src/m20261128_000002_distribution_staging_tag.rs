//! `distribution.staging_tag`: the tag a distribution was staged under, so a promote can
//! check that the tag still points at the staged digest.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Distribution {
    Table,
    StagingTag,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Distribution::Table)
                    .add_column(string_len_null(Distribution::StagingTag, 64))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Distribution::Table)
                    .drop_column(Distribution::StagingTag)
                    .to_owned(),
            )
            .await
    }
}
