//! Shared test support: fresh PostgreSQL databases and SQLite files that clean up after
//! themselves, so tests run in parallel against the machine's real services.

use std::sync::atomic::{AtomicU64, Ordering};

use sea_orm::{ConnectionTrait, Database, DatabaseConnection};

/// Server URL (without a database) of the PostgreSQL the tests use.
/// A path in this checkout, from the directory of the crate under test. Read at run time
/// (cargo sets `CARGO_MANIFEST_DIR` for the tests it runs): a test binary reused from another
/// checkout through a shared `CARGO_TARGET_DIR` carries that checkout's path in `env!`, and
/// would read its files instead of these.
pub fn checkout_path(relative_to_crate: &str) -> std::path::PathBuf {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    crate_dir.join(relative_to_crate)
}

pub fn pg_server_url() -> String {
    std::env::var("ATR_DIST_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// The Redis the tests use.
pub fn redis_url() -> String {
    std::env::var("ATR_DIST_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A name no other test (or test process) uses.
/// A port on 127.0.0.1 that nothing listens on now, for a server a test starts. (Another
/// process could take it before the server binds; the servers here start at once.)
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every key of one Redis server matching the glob `pattern`, by SCAN (never KEYS, which
/// blocks the server).
pub async fn scan_keys<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    pattern: &str,
) -> redis::RedisResult<Vec<String>> {
    let mut out = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        out.extend(keys);
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

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
pub mod cluster_support;
pub mod fault_drill;
pub mod fault_proxy;
pub mod fence_support;
pub mod github_support;
pub mod hex_support;
mod http_server;
pub mod npm_support;
pub mod oci_support;
pub mod pipeline_support;
pub mod pypi_support;
pub mod redis_monitor;
pub mod tcp_proxy;

pub mod jobs {
    //! Jobs for the tests: one builder for every distribution the tests stage and promote.

    use atr_dist_shared::job::{DistributionSpec, ReleaseRef, RevisionSourceSpec};
    use atr_dist_shared::names::{
        ArtifactPath, AsfUid, IdempotencyKey, PackageName, ProjectKey, RevisionNumber, Version,
        VersionKey,
    };
    use atr_dist_shared::{DistributionKey, Envelope, Job, Platform, PromoteJob, StageJob};

    /// A distribution of release `example`-`release_version`.
    #[derive(Clone, Debug)]
    pub struct Dist {
        pub release_version: String,
        pub platform: Platform,
        pub owner_namespace: String,
        pub package: String,
        pub version: String,
    }

    impl Dist {
        pub fn new(
            platform: Platform,
            owner_namespace: &str,
            package: &str,
            version: &str,
        ) -> Dist {
            Dist {
                release_version: version.to_owned(),
                platform,
                owner_namespace: owner_namespace.to_owned(),
                package: package.to_owned(),
                version: version.to_owned(),
            }
        }

        pub fn release(&self) -> ReleaseRef {
            ReleaseRef {
                project_key: ProjectKey::new("example").unwrap(),
                version_key: VersionKey::new(&self.release_version).unwrap(),
            }
        }

        pub fn spec(&self) -> DistributionSpec {
            DistributionSpec {
                platform: self.platform,
                owner_namespace: self.owner_namespace.clone(),
                package: PackageName::new(&self.package).unwrap(),
                version: Version::new(&self.version).unwrap(),
            }
        }

        pub fn key(&self) -> DistributionKey {
            self.stage("00001", &["x"], RevisionSourceSpec::Dir, false)
                .distribution_key()
                .unwrap()
        }

        /// A stage job with a fresh idempotency key, asked for by `rm`.
        pub fn stage(
            &self,
            rev: &str,
            artifacts: &[&str],
            source: RevisionSourceSpec,
            dry_run: bool,
        ) -> Envelope {
            let job = Job::Stage(StageJob {
                release: self.release(),
                distribution: self.spec(),
                revision: RevisionNumber::new(rev).unwrap(),
                source,
                artifacts: artifacts
                    .iter()
                    .map(|a| ArtifactPath::new(*a).unwrap())
                    .collect(),
                staging_tag: None,
                dry_run,
                asf_uid: AsfUid::new("rm").unwrap(),
            });
            Envelope::new(job, unique_key())
        }

        /// A promote job with a fresh idempotency key, asked for by `asf_uid`.
        pub fn promote(&self, rev: &str, source: RevisionSourceSpec, asf_uid: &str) -> Envelope {
            let job = Job::Promote(PromoteJob {
                release: self.release(),
                distribution: self.spec(),
                revision: RevisionNumber::new(rev).unwrap(),
                source,
                release_tag: None,
                dry_run: false,
                asf_uid: AsfUid::new(asf_uid).unwrap(),
            });
            Envelope::new(job, unique_key())
        }
    }

    pub fn unique_key() -> IdempotencyKey {
        IdempotencyKey::new(uuid::Uuid::now_v7().to_string()).unwrap()
    }

    /// A valid dry-run stage job for npm; `n` makes the package name, and so the job, unique.
    pub fn stage(n: usize) -> Envelope {
        let d = Dist::new(Platform::Npm, "", &format!("pkg-{n}"), "1.0.0");
        let mut env = d.stage(
            "00001",
            &[&format!("pkg-{n}-1.0.0.tgz")],
            RevisionSourceSpec::Dir,
            true,
        );
        env.idempotency_key = IdempotencyKey::new(format!("stage:pkg-{n}")).unwrap();
        env
    }
}

pub mod redis_support {
    //! A queue per test, under a unique name, whose keys are deleted afterwards.

    use atr_dist::queue::Queue;
    use redis::AsyncCommands;

    /// One job's end as a results consumer sees it: what its `results` entry says
    /// (`stream_id`, `state`, `atr_status`) and what the job's keys say (`id`, `attempt` and
    /// `batch` from its record, `error_class` and `message` unless it is done, `result`).
    pub type Ended = std::collections::HashMap<String, String>;

    /// Every job named in the queue's `results` stream, oldest entry first, read as
    /// docs/wire-format.md ("Results") tells a consumer to.
    pub async fn ended(q: &Queue) -> Vec<Ended> {
        ended_since(q, "-").await
    }

    /// As [`ended`], from stream id `start` on (exclusive ids are written `(id`), skipping
    /// entries of wire format 6 (one job each, with an `id` field).
    pub async fn ended_since(q: &Queue, start: &str) -> Vec<Ended> {
        let reply: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(format!("{}results", q.prefix()))
            .arg(start)
            .arg("+")
            .query_async(&mut q.connection())
            .await
            .unwrap();
        let mut out = Vec::new();
        for (stream_id, fields) in reply {
            let entry: std::collections::HashMap<String, String> = fields
                .chunks(2)
                .map(|kv| (kv[0].clone(), kv[1].clone()))
                .collect();
            let Some(ids) = entry.get("ids") else {
                continue;
            };
            for id in ids.split(' ') {
                let hget = |key: &str| {
                    let mut conn = q.connection();
                    let key = format!("{}{key}", q.prefix());
                    let id = id.to_owned();
                    async move {
                        let v: Option<String> = conn.hget(key, id).await.unwrap();
                        v.unwrap_or_default()
                    }
                };
                let record = hget("jobs").await;
                let words: Vec<&str> = record.split(' ').collect();
                let state = entry["state"].clone();
                let (class, message) = if state == "done" {
                    (String::new(), String::new())
                } else {
                    (hget("error_class").await, hget("last_error").await)
                };
                out.push(Ended::from([
                    ("stream_id".to_owned(), stream_id.clone()),
                    ("id".to_owned(), id.to_owned()),
                    ("state".to_owned(), state),
                    ("atr_status".to_owned(), entry["atr_status"].clone()),
                    (
                        "attempt".to_owned(),
                        words.get(4).copied().unwrap_or("0").to_owned(),
                    ),
                    (
                        "batch".to_owned(),
                        words.get(3).copied().unwrap_or("").to_owned(),
                    ),
                    ("error_class".to_owned(), class),
                    ("message".to_owned(), message),
                    ("result".to_owned(), hget("result").await),
                ]));
            }
        }
        out
    }

    /// Where the distribution locks of the test queue `name` live (each test queue has a
    /// namespace of its own, deleted with it).
    pub fn lock_namespace(name: &str) -> String {
        format!("atr-dist:lock:{name}:")
    }

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
            // Locks live outside queues: each test queue gets a lock namespace of its own,
            // deleted with it (`sharing_locks_with` puts two in one).
            let queue = Queue::connect(url, cluster_nodes, &name)
                .await
                .expect("Redis reachable (run scripts/test, which starts it)")
                .with_lock_namespace(&lock_namespace(&name));
            TestQueue {
                queue,
                name,
                url: url.to_owned(),
                cluster_nodes: cluster_nodes.to_vec(),
            }
        }

        /// Every key of this queue (via SCAN on a single server).
        /// This queue with its distribution locks where `other`'s are, as two queues of
        /// one deployment have them.
        pub fn sharing_locks_with(mut self, other: &TestQueue) -> TestQueue {
            self.queue = self
                .queue
                .clone()
                .with_lock_namespace(&lock_namespace(&other.name));
            self
        }

        /// Another handle on this queue, with its locks, connected to the single server at
        /// `url` (a proxy in front of the test Redis, say).
        pub async fn via(&self, url: &str) -> Queue {
            Queue::connect(url, &[], &self.name)
                .await
                .unwrap()
                .with_lock_namespace(&lock_namespace(&self.name))
        }

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
            let prefixes = [
                self.queue.prefix().to_owned(),
                // Shards 1 and up (docs/wire-format.md, "Shards").
                format!("atr-dist:{{{}:", self.name),
                lock_namespace(&self.name),
            ];
            let url = self.url.clone();
            let cluster = self.cluster_nodes.clone();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    for prefix in &prefixes {
                        if cluster.is_empty() {
                            delete_prefix(&url, prefix).await;
                        } else {
                            for node in &cluster {
                                delete_prefix(node, prefix).await;
                            }
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
