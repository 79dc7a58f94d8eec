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
    #[error(
        "another `atr-dist run` ({holder}) already works on the SQLite database {path}: SQLite is \
         for one worker process (several wait on its single write lock and fail with \"database \
         is locked\"). Raise [worker] concurrency in that one process, or give every worker the \
         same PostgreSQL database (database.url = \"postgres://...\")"
    )]
    SqliteInUse { path: String, holder: String },
    #[error(
        "cannot lock {path}, which keeps a second `atr-dist run` off the SQLite database: {source}"
    )]
    SqliteLock {
        path: String,
        source: std::io::Error,
    },
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
    if sqlite_file(url.expose()).is_some() && !url.expose().contains("mode=ro") {
        // Write-ahead logging: a commit is one append and one fsync of the log instead of
        // the rollback journal's several (with `synchronous` left at FULL, as durable as
        // before), and readers (`atr-dist jobs`, the dashboard) no longer wait for a writer.
        // Set on every connection of the pool as it opens; SQLite keeps it in the file.
        options.map_sqlx_sqlite_opts(|o| {
            o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
        });
    }
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

/// Held by `atr-dist run` for as long as it works on a SQLite file: an exclusive `flock` on
/// `<database>-run.lock` beside it. The kernel drops it when the process ends however it
/// ends (a SIGKILL included), so a crashed worker never blocks its successor.
#[derive(Debug)]
pub struct SqliteRunLock {
    _file: std::fs::File,
}

/// The file a `sqlite:` URL names, as sqlx reads it (`sqlite://PATH`, `sqlite:PATH`, query
/// after `?`); `None` for an in-memory database and for other schemes.
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let in_memory =
        path.is_empty() || path == ":memory:" || query.split('&').any(|p| p == "mode=memory");
    if in_memory {
        return None;
    }
    Some(std::path::PathBuf::from(path))
}

/// Refuses a second `atr-dist run` on one SQLite file, naming the process that has it.
/// SQLite serialises writers on one lock: several worker processes on a file spend their
/// time waiting for it, and attempts fail with "database is locked" once a wait outlasts
/// the busy timeout. One process with more `[worker] concurrency` shares its connection
/// pool instead; several processes need PostgreSQL. Readers (`atr-dist jobs`, `serve`)
/// take no lock. `Ok(None)` for PostgreSQL and in-memory SQLite.
pub fn lock_sqlite_for_run(url: &Secret) -> Result<Option<SqliteRunLock>, DbError> {
    use rustix::fs::{FlockOperation, flock};
    use std::io::{Read, Seek, Write};

    let Some(db) = sqlite_file(url.expose()) else {
        return Ok(None);
    };
    let mut name = db.clone().into_os_string();
    name.push("-run.lock");
    let path = std::path::PathBuf::from(name);
    let shown = path.display().to_string();
    let lock_err = |source: std::io::Error| DbError::SqliteLock {
        path: shown.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(lock_err)?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "a process that has not written its pid yet".to_owned(),
                pid => format!("pid {pid}"),
            };
            return Err(DbError::SqliteInUse {
                path: db.display().to_string(),
                holder,
            });
        }
        Err(e) => return Err(lock_err(e.into())),
    }
    // Who holds it, for the message a second process gives.
    file.set_len(0).map_err(lock_err)?;
    file.rewind().map_err(lock_err)?;
    writeln!(file, "{}", std::process::id()).map_err(lock_err)?;
    Ok(Some(SqliteRunLock { _file: file }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sqlite_file_is_put_in_write_ahead_log_mode() {
        use sea_orm::{ConnectionTrait as _, Statement};
        let dir = tempfile::tempdir().unwrap();
        let url = Secret::new(format!("sqlite://{}/a.db", dir.path().display()));
        let mode = |db: DatabaseConnection| async move {
            let row = db
                .query_one_raw(Statement::from_string(
                    db.get_database_backend(),
                    "PRAGMA journal_mode",
                ))
                .await
                .unwrap()
                .unwrap();
            row.try_get_by_index::<String>(0).unwrap()
        };
        assert_eq!(mode(connect(&url, 2).await.unwrap()).await, "wal");
        assert!(dir.path().join("a.db-wal").exists() || dir.path().join("a.db").exists());
        // In-memory databases have no log file to keep.
        let memory = connect(&Secret::new("sqlite::memory:".to_owned()), 1)
            .await
            .unwrap();
        assert_eq!(mode(memory).await, "memory");
    }

    #[test]
    fn sqlite_urls_name_their_file() {
        let file = |u: &str| sqlite_file(u).map(|p| p.display().to_string());
        assert_eq!(
            file("sqlite://./atr-dist.db").as_deref(),
            Some("./atr-dist.db")
        );
        assert_eq!(
            file("sqlite:///var/lib/a.db?mode=rwc").as_deref(),
            Some("/var/lib/a.db")
        );
        assert_eq!(file("sqlite:a.db").as_deref(), Some("a.db"));
        assert_eq!(file("sqlite::memory:"), None);
        assert_eq!(file("sqlite://x.db?mode=memory&cache=shared"), None);
        assert_eq!(file("postgres://atr@db/atr"), None);
    }

    #[test]
    fn a_second_lock_on_one_file_is_refused_and_the_first_release_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let url = Secret::new(format!("sqlite://{}/r.db", dir.path().display()));
        let first = lock_sqlite_for_run(&url).unwrap().expect("a file database");
        // flock locks belong to the open file description: a second open in this process
        // conflicts as a second process would.
        let err = lock_sqlite_for_run(&url).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "names the holder: {err}"
        );
        assert!(err.contains("PostgreSQL"), "says what to do: {err}");
        drop(first);
        assert!(lock_sqlite_for_run(&url).unwrap().is_some());
        let memory = Secret::new("sqlite::memory:".to_owned());
        assert!(lock_sqlite_for_run(&memory).unwrap().is_none());
    }
}
