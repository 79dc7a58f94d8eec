//! The results database: connecting (SQLite embedded, PostgreSQL in production) and migrating.

use std::time::Duration;

use atr_dist_migrations::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};

use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to the database at {url}: {source}")]
    Connect { url: String, source: DbErr },
    #[error("migration failed: {0}")]
    Migrate(DbErr),
}

/// A URL fit for logs: the password, if any, replaced.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Connects; a SQLite file is created when it does not exist yet (the embedded default).
pub async fn connect(url: &Secret, max_connections: u32) -> Result<DatabaseConnection, DbError> {
    let mut raw = url.expose().to_owned();
    if raw.starts_with("sqlite:") && !raw.contains("mode=") && !raw.contains(":memory:") {
        raw.push(if raw.contains('?') { '&' } else { '?' });
        raw.push_str("mode=rwc");
    }
    let mut options = ConnectOptions::new(raw);
    options
        .max_connections(max_connections)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    Database::connect(options)
        .await
        .map_err(|source| DbError::Connect {
            url: redacted(url.expose()),
            source,
        })
}

/// Applies every pending migration; returns how many ran.
pub async fn migrate_up(db: &DatabaseConnection) -> Result<usize, DbError> {
    let pending = Migrator::get_pending_migrations(db)
        .await
        .map_err(DbError::Migrate)?
        .len();
    Migrator::up(db, None).await.map_err(DbError::Migrate)?;
    Ok(pending)
}

/// Reverts the last `steps` applied migrations.
pub async fn migrate_down(db: &DatabaseConnection, steps: u32) -> Result<(), DbError> {
    Migrator::down(db, Some(steps))
        .await
        .map_err(DbError::Migrate)
}

/// Names of the migrations not applied yet (empty when the schema is current).
pub async fn pending_migrations(db: &DatabaseConnection) -> Result<Vec<String>, DbError> {
    let pending = Migrator::get_pending_migrations(db)
        .await
        .map_err(DbError::Migrate)?;
    Ok(pending.iter().map(|m| m.name().to_owned()).collect())
}
