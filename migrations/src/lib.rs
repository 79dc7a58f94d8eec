//! The results schema, applied with `atr-dist migrate` on SQLite or PostgreSQL.
//!
//! Migrations are append-only: a released migration is never edited, a change is a new file.

pub use sea_orm_migration::prelude::*;

mod m20261128_000001_results_schema;
mod m20261128_000002_distribution_staging_tag;
mod m20261206_000010_job_run_http_requests;
mod m20261206_000011_audit_trail;
mod m20261206_000020_distribution_staged_artifacts;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_results_schema::Migration),
            Box::new(m20261128_000002_distribution_staging_tag::Migration),
            Box::new(m20261206_000010_job_run_http_requests::Migration),
            Box::new(m20261206_000011_audit_trail::Migration),
            Box::new(m20261206_000020_distribution_staged_artifacts::Migration),
        ]
    }
}
