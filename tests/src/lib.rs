//! Shared test support: fresh PostgreSQL databases and SQLite files that clean up after
//! themselves, so tests run in parallel against the machine's real services.

use std::sync::atomic::{AtomicU64, Ordering};

use sea_orm::{ConnectionTrait, Database, DatabaseConnection};

/// Server URL (without a database) of the PostgreSQL the tests use.
pub fn pg_server_url() -> String {
    std::env::var("ATR_DIST_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// The Redis the tests use.
pub fn redis_url() -> String {
    std::env::var("ATR_DIST_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A name no other test (or test process) uses.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .get(..8)
            .unwrap_or("x")
    )
}

/// A PostgreSQL database created for one test and dropped when this value is dropped.
pub struct PgDatabase {
    pub name: String,
    pub url: String,
}

impl PgDatabase {
    pub async fn create() -> PgDatabase {
        let name = unique_name("atr_dist_test");
        let admin = Database::connect(format!("{}/postgres", pg_server_url()))
            .await
            .expect("PostgreSQL reachable (run .ci/run or scripts/test to start it)");
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create test database");
        admin.close().await.ok();
        let url = format!("{}/{name}", pg_server_url());
        PgDatabase { name, url }
    }

    pub async fn connect(&self) -> DatabaseConnection {
        Database::connect(&self.url)
            .await
            .expect("connect to test database")
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Drop runs outside async: a short-lived runtime on its own thread does the cleanup.
        let name = self.name.clone();
        let server = pg_server_url();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                if let Ok(admin) = Database::connect(format!("{server}/postgres")).await {
                    let _ = admin
                        .execute_unprepared(&format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        ))
                        .await;
                    let _ = admin.close().await;
                }
            });
            Ok::<(), std::io::Error>(())
        })
        .join();
    }
}

/// A SQLite database file in its own temporary directory.
pub struct SqliteDatabase {
    _dir: tempfile::TempDir,
    pub url: String,
}

impl SqliteDatabase {
    pub fn create() -> SqliteDatabase {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/atr-dist.db", dir.path().display());
        SqliteDatabase { _dir: dir, url }
    }
}
