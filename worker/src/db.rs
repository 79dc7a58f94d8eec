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

/// The PostgreSQL advisory lock that serialises migrations across processes ("atr-dist" in
/// ASCII): workers of a rollout start together, and two migrating one database at once
/// collide on the same `CREATE TABLE` (`pg_type_typname_nsp_index`).
const MIGRATION_LOCK: i64 = 0x6174_722d_6469_7374;

/// Applies every pending migration; returns how many ran. On PostgreSQL it holds an advisory
/// lock while it does, on a connection of its own (the pool may have a single one), so
/// processes starting together migrate one after the other, and each finds, inside the lock,
/// what the one before it applied. (SQLite serialises writers with its file lock.)
pub async fn migrate_up(db: &DatabaseConnection) -> Result<usize, DbError> {
    let lock = if db.get_database_backend() == sea_orm::DbBackend::Postgres {
        Some(migration_lock(db).await?)
    } else {
        None
    };
    let applied = apply_pending(db).await;
    if let Some(mut conn) = lock {
        // Closing the session would release it too; unlocking says so at once.
        let _ = sea_orm::sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut conn)
            .await;
        let _ = sea_orm::sqlx::Connection::close(conn).await;
    }
    applied
}

async fn apply_pending(db: &DatabaseConnection) -> Result<usize, DbError> {
    let pending = Migrator::get_pending_migrations(db)
        .await
        .map_err(DbError::Migrate)?
        .len();
    Migrator::up(db, None).await.map_err(DbError::Migrate)?;
    Ok(pending)
}

/// A session of its own holding [`MIGRATION_LOCK`], waited for as long as another process
/// migrates.
async fn migration_lock(db: &DatabaseConnection) -> Result<sea_orm::sqlx::PgConnection, DbError> {
    use sea_orm::sqlx::{Connection, PgConnection};
    let failed = |e: sea_orm::sqlx::Error| {
        DbError::Migrate(DbErr::Custom(format!(
            "taking the migration lock (pg_advisory_lock): {e}"
        )))
    };
    let options = db.get_postgres_connection_pool().connect_options();
    let mut conn = PgConnection::connect_with(&options).await.map_err(failed)?;
    sea_orm::sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut conn)
        .await
        .map_err(failed)?;
    Ok(conn)
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
