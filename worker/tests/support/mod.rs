//! What the tests of the `atr-dist` binary share: the machine's test Redis and PostgreSQL
//! (scripts/services.sh), as tests/src/lib.rs reads them, and the binary with a clean
//! environment.
#![allow(dead_code)] // Each test binary uses its own part of this.

use std::process::Command;

use sea_orm::{ConnectionTrait, Database};

/// The shared test Redis and PostgreSQL (scripts/services.sh), as tests/src/lib.rs reads them.
pub fn redis_url() -> String {
    std::env::var("ATR_DIST_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

pub fn pg_server_url() -> String {
    std::env::var("ATR_DIST_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

/// A fresh PostgreSQL database, dropped at the end.
pub struct PgDatabase {
    pub name: String,
    pub url: String,
}

impl PgDatabase {
    pub async fn create() -> PgDatabase {
        let name = unique("atr_dist_runproc");
        let admin = Database::connect(format!("{}/postgres", pg_server_url()))
            .await
            .expect("PostgreSQL reachable (scripts/services.sh starts it)");
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap();
        admin.close().await.ok();
        let url = format!("{}/{name}", pg_server_url());
        PgDatabase { name, url }
    }

    pub async fn drop_now(self) {
        if let Ok(admin) = Database::connect(format!("{}/postgres", pg_server_url())).await {
            let _ = admin
                .execute_unprepared(&format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.name
                ))
                .await;
            admin.close().await.ok();
        }
    }
}

/// The binary under test, with none of the caller's ATR_DIST_* variables (the loader
/// refuses unknown ones, and the test decides the configuration).
pub fn atr_dist() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_atr-dist"));
    for (key, _) in std::env::vars() {
        if key.starts_with("ATR_DIST_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// A port on 127.0.0.1 that nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
