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

pub mod cases;
pub mod fault_proxy;
pub mod npm_support;
pub mod oci_support;
pub mod pipeline_support;

pub mod jobs {
    //! Sample jobs for queue and pipeline tests.

    use atr_dist_shared::job::{DistributionSpec, ReleaseRef, RevisionSourceSpec};
    use atr_dist_shared::names::{
        ArtifactPath, AsfUid, IdempotencyKey, PackageName, ProjectKey, RevisionNumber, Version,
        VersionKey,
    };
    use atr_dist_shared::{Envelope, Job, Platform, StageJob};

    /// A valid stage job for npm; `n` makes the package name, and so the job, unique.
    pub fn stage(n: usize) -> Envelope {
        let job = StageJob {
            release: ReleaseRef {
                project_key: ProjectKey::new("example").unwrap(),
                version_key: VersionKey::new("1.0.0").unwrap(),
            },
            distribution: DistributionSpec {
                platform: Platform::Npm,
                owner_namespace: String::new(),
                package: PackageName::new(format!("pkg-{n}")).unwrap(),
                version: Version::new("1.0.0").unwrap(),
            },
            revision: RevisionNumber::new("00001").unwrap(),
            source: RevisionSourceSpec::Dir,
            artifacts: vec![ArtifactPath::new(format!("pkg-{n}-1.0.0.tgz")).unwrap()],
            staging_tag: None,
            dry_run: true,
            asf_uid: AsfUid::new("tester").unwrap(),
        };
        Envelope::new(
            Job::Stage(job),
            IdempotencyKey::new(format!("stage:pkg-{n}")).unwrap(),
        )
    }
}

pub mod redis_support {
    //! A queue per test, under a unique name, whose keys are deleted afterwards.

    use atr_dist::queue::Queue;
    use redis::AsyncCommands;

    pub struct TestQueue {
        pub queue: Queue,
        pub name: String,
        pub url: String,
        pub cluster_nodes: Vec<String>,
    }

    impl TestQueue {
        pub async fn new() -> TestQueue {
            TestQueue::on(&crate::redis_url(), &[]).await
        }

        pub async fn on(url: &str, cluster_nodes: &[String]) -> TestQueue {
            let name = crate::unique_name("t");
            let queue = Queue::connect(url, cluster_nodes, &name)
                .await
                .expect("Redis reachable (run scripts/test, which starts it)");
            TestQueue {
                queue,
                name,
                url: url.to_owned(),
                cluster_nodes: cluster_nodes.to_vec(),
            }
        }

        /// Every key of this queue (via SCAN on a single server).
        pub async fn keys(&self) -> Vec<String> {
            let client = redis::Client::open(self.url.as_str()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let mut iter: redis::AsyncIter<String> = conn
                .scan_match(format!("{}*", self.queue.prefix()))
                .await
                .unwrap();
            let mut keys = Vec::new();
            while let Some(k) = futures_next(&mut iter).await {
                keys.push(k);
            }
            keys
        }
    }

    async fn futures_next(iter: &mut redis::AsyncIter<'_, String>) -> Option<String> {
        iter.next_item().await.and_then(Result::ok)
    }

    impl Drop for TestQueue {
        fn drop(&mut self) {
            let prefix = self.queue.prefix().to_owned();
            let url = self.url.clone();
            let cluster = self.cluster_nodes.clone();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    if cluster.is_empty() {
                        delete_prefix(&url, &prefix).await;
                    } else {
                        for node in cluster {
                            delete_prefix(&node, &prefix).await;
                        }
                    }
                });
                Ok::<(), std::io::Error>(())
            })
            .join();
        }
    }

    async fn delete_prefix(url: &str, prefix: &str) {
        let Ok(client) = redis::Client::open(url) else {
            return;
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return;
        };
        let mut keys: Vec<String> = Vec::new();
        if let Ok(mut iter) = conn.scan_match::<_, String>(format!("{prefix}*")).await {
            while let Some(k) = futures_next(&mut iter).await {
                keys.push(k);
            }
        }
        for chunk in keys.chunks(500) {
            let _: Result<(), _> = conn.del(chunk).await;
        }
    }

    /// The Redis Cluster slot of a key: CRC16 (XMODEM) of its hash tag, mod 16384.
    pub fn key_slot(key: &str) -> u16 {
        let bytes = key.as_bytes();
        let tagged = match bytes.iter().position(|b| *b == b'{') {
            Some(open) => match bytes[open + 1..].iter().position(|b| *b == b'}') {
                Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
                _ => bytes,
            },
            None => bytes,
        };
        let mut crc: u16 = 0;
        for b in tagged {
            crc ^= u16::from(*b) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc % 16384
    }
}
