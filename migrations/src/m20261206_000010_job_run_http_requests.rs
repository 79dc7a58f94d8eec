//! `job_run.http_requests` and `job_run.http_retries`: how many platform requests an attempt
//! sent, and how many of them were retries, so an attempt that kept a platform busy shows it
//! in the audit trail even when it succeeded.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum JobRun {
    Table,
    HttpRequests,
    HttpRetries,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        for column in [JobRun::HttpRequests, JobRun::HttpRetries] {
            manager
                .alter_table(
                    Table::alter()
                        .table(JobRun::Table)
                        .add_column(integer_null(column))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [JobRun::HttpRequests, JobRun::HttpRetries] {
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
