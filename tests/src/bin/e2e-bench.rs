//! End-to-end benchmark: a real `atr-dist run` process, in the shipped configuration,
//! staging and promoting releases on a real verdaccio (npm) and a real docker-registry (OCI),
//! with its results in SQLite and in PostgreSQL. Printed as markdown tables (stdout; progress
//! on stderr):
//!
//! - **one vote on an idle worker**: a stage job, then (the vote passed) a promote job of a
//!   new revision with the same files, one at a time and a few hundred ms apart: p50/p99
//!   from each enqueue to its result in the queue's `results` stream, which a worker writes
//!   only after the attempt's result is in the database;
//! - **a burst**: N distributions' stage jobs enqueued at once, then their N promote jobs:
//!   jobs per second, and p50/p99 from the enqueue to each result;
//! - the same platform writes made by a **bare client** (this process, straight HTTP, no
//!   queue, no database, no read-back or integrity checks; for a burst, as many at once as
//!   the worker's shipped `concurrency`): the least the platform itself takes, as the peer
//!   the ratio is taken against;
//! - the worker's CPU per job and its RSS (idle after start, and peak), read from /proc.
//!
//! Each database gets fresh servers: a private redis-server on a free port (so nothing else
//! on the machine's Redis is measured), a new verdaccio and docker-registry, a new database.
//! Everything listens on 127.0.0.1 and is stopped at the end.
//!
//! ```text
//! scripts/bench-e2e                      # builds both binaries in release, runs the defaults
//! scripts/bench-e2e --burst 200 --votes 10 --databases sqlite --platforms npm
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use atr_dist::config::WorkerConfig;
use atr_dist::queue::Queue;
use atr_dist_shared::job::RevisionSourceSpec;
use atr_dist_shared::{Envelope, Platform};
use atr_dist_tests::fault_drill::PrivateRedis;
use atr_dist_tests::jobs::Dist;
use atr_dist_tests::npm_support::{self, Verdaccio};
use atr_dist_tests::oci_support::{self, OciImage, Registry, RegistryAuth};
use atr_dist_tests::{free_port, unique_name};
use base64::Engine as _;
use clap::{Parser, ValueEnum};
use futures::StreamExt as _;
use sea_orm::{ConnectionTrait as _, Database};
use sha1::Digest as _;
use tokio::sync::Notify;

#[derive(Parser, Debug)]
#[command(
    name = "e2e-bench",
    about = "End-to-end: atr-dist run staging and promoting on verdaccio and docker-registry"
)]
struct Args {
    /// The `atr-dist` binary [default: beside this one].
    #[arg(long)]
    atr_dist: Option<PathBuf>,
    /// Results databases to run with.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    databases: Vec<Db>,
    /// Platforms to run on.
    #[arg(long, value_delimiter = ',', default_value = "npm,oci")]
    platforms: Vec<Target>,
    /// Single votes (stage, then promote) on an idle worker, per database and platform.
    #[arg(long, default_value_t = 30)]
    votes: usize,
    /// Distributions in the burst (their stage jobs at once, then their promote jobs).
    #[arg(long, default_value_t = 1000)]
    burst: usize,
    /// Keep each run's directory (the worker's log and config, the revisions, an SQLite
    /// database) and print where it is.
    #[arg(long)]
    keep: bool,
    /// PostgreSQL server (a database is created in it, and dropped after).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    postgres: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Db {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    Npm,
    Oci,
}

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::Npm => "npm (verdaccio)",
            Target::Oci => "OCI (docker-registry)",
        }
    }
}

impl Db {
    fn label(self) -> &'static str {
        match self {
            Db::Sqlite => "SQLite",
            Db::Postgres => "PostgreSQL",
        }
    }
}

/// Latencies in milliseconds.
#[derive(Debug, Default, Clone)]
struct Latencies(Vec<f64>);

impl Latencies {
    fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1000.0);
    }

    fn quantile(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        let rank = (q * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }
}

#[derive(Debug, Default)]
struct Row {
    db: &'static str,
    platform: &'static str,
    stage: Latencies,
    promote: Latencies,
    bare_stage: Latencies,
    bare_promote: Latencies,
    burst: usize,
    burst_stage_secs: f64,
    burst_stage: Latencies,
    burst_promote_secs: f64,
    burst_promote: Latencies,
    bare_burst_stage_secs: f64,
    bare_burst_promote_secs: f64,
    worker_cpu_ms_per_job: f64,
    rss_idle_mib: f64,
    rss_peak_mib: f64,
}

/// A process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A run's directory: deleted at the end, or kept with `--keep`.
enum Kept {
    Temp(tempfile::TempDir),
    Path(PathBuf),
}

impl std::ops::Deref for Kept {
    type Target = Path;

    fn deref(&self) -> &Path {
        match self {
            Kept::Temp(t) => t.path(),
            Kept::Path(p) => p,
        }
    }
}

/// A database of this run's own on the PostgreSQL server, dropped at the end.
struct BenchDb {
    server: String,
    name: String,
    url: String,
}

impl BenchDb {
    async fn create(server: &str) -> Result<BenchDb> {
        let name = unique_name("atr_dist_e2e");
        let admin = Database::connect(format!("{server}/postgres"))
            .await
            .with_context(|| format!("PostgreSQL at {server} (scripts/services.sh starts it)"))?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        admin.close().await.ok();
        Ok(BenchDb {
            server: server.to_owned(),
            url: format!("{server}/{name}"),
            name,
        })
    }

    async fn drop_it(&self) {
        if let Ok(admin) = Database::connect(format!("{}/postgres", self.server)).await {
            let _ = admin
                .execute_unprepared(&format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.name
                ))
                .await;
            let _ = admin.close().await;
        }
    }
}

/// One distribution of the run: its jobs and what the bare client sends for it.
struct Dist1 {
    dist: Dist,
    files: Vec<(String, Vec<u8>)>,
    image: Option<OciImage>,
}

impl Dist1 {
    fn new(target: Target, n: usize) -> Dist1 {
        let version = format!("1.0.{n}");
        match target {
            Target::Npm => {
                let package = format!("e2e-{n}");
                let tgz =
                    npm_support::tarball(&package, &version, &format!("module.exports = {n};\n"));
                Dist1 {
                    dist: Dist::new(Platform::Npm, "", &package, &version),
                    files: vec![(format!("{package}-{version}.tgz"), tgz)],
                    image: None,
                }
            }
            Target::Oci => {
                let image = oci_support::single_image("img", &format!("image {n}"));
                Dist1 {
                    dist: Dist::new(Platform::DockerHub, "apache", &format!("e2e-{n}"), &version),
                    files: image.files.clone(),
                    image: Some(image),
                }
            }
        }
    }

    /// Writes revision 00001 and, identical, 00002 (ATR's new revision when a vote passes).
    fn write(&self, root: &Path) -> Result<()> {
        for rev in ["00001", "00002"] {
            let dir = root
                .join("example")
                .join(&self.dist.release_version)
                .join(rev);
            for (path, bytes) in &self.files {
                let file = dir.join(path);
                std::fs::create_dir_all(file.parent().unwrap_or(&dir))?;
                std::fs::write(file, bytes)?;
            }
        }
        Ok(())
    }

    fn stage(&self) -> Envelope {
        let paths: Vec<&str> = self.files.iter().map(|(p, _)| p.as_str()).collect();
        self.dist
            .stage("00001", &paths, RevisionSourceSpec::Dir, false)
    }

    fn promote(&self) -> Envelope {
        self.dist.promote("00002", RevisionSourceSpec::Dir, "rm")
    }
}

/// Follows the queue's `results` stream and notes when each job's end appeared in it.
struct Results {
    seen: Mutex<HashMap<String, (Instant, String)>>,
    changed: Notify,
}

impl Results {
    fn follow(url: String, key: String) -> Arc<Results> {
        let results = Arc::new(Results {
            seen: Mutex::new(HashMap::new()),
            changed: Notify::new(),
        });
        let r = Arc::clone(&results);
        tokio::spawn(async move {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                return;
            };
            let Ok(mut conn) = client
                .get_multiplexed_async_connection_with_config(
                    &redis::AsyncConnectionConfig::new().set_response_timeout(None),
                )
                .await
            else {
                return;
            };
            let mut last = "0".to_owned();
            loop {
                // [[stream, [[entry id, [field, value, ...]], ...]]]
                type Reply = Vec<(String, Vec<(String, Vec<String>)>)>;
                let reply: redis::RedisResult<Reply> = redis::cmd("XREAD")
                    .arg("BLOCK")
                    .arg(0)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(&last)
                    .query_async(&mut conn)
                    .await;
                let Ok(reply) = reply else {
                    return;
                };
                let now = Instant::now();
                let mut seen = r.seen.lock().unwrap_or_else(|e| e.into_inner());
                for (id, fields) in reply.into_iter().flat_map(|(_, entries)| entries) {
                    last = id;
                    let field = |name: &str| {
                        fields
                            .chunks(2)
                            .find(|kv| kv[0] == name)
                            .and_then(|kv| kv.get(1).cloned())
                            .unwrap_or_default()
                    };
                    let state = field("state");
                    for job in field("ids").split(' ').filter(|s| !s.is_empty()) {
                        seen.insert(job.to_owned(), (now, state.clone()));
                    }
                }
                drop(seen);
                r.changed.notify_waiters();
            }
        });
        results
    }

    /// Waits until every job has ended; answers when each did. A job that did not end
    /// `done` fails the run (its error is in the worker's log and `atr-dist jobs show`).
    async fn wait(&self, ids: &[String], limit: Duration) -> Result<Vec<Instant>> {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            {
                let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((id, (_, state))) = ids
                    .iter()
                    .filter_map(|id| seen.get(id).map(|s| (id, s)))
                    .find(|(_, (_, state))| state != "done")
                {
                    bail!("job {id} ended {state}, not done");
                }
                let ends: Vec<Instant> = ids
                    .iter()
                    .filter_map(|id| seen.get(id).map(|s| s.0))
                    .collect();
                if ends.len() == ids.len() {
                    return Ok(ends);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{} of {} jobs did not end within {limit:?}",
                    ids.len()
                        - self
                            .seen
                            .lock()
                            .map(|s| ids.iter().filter(|i| s.contains_key(*i)).count())
                            .unwrap_or(0),
                    ids.len()
                );
            }
            let _ = tokio::time::timeout(left, notified).await;
        }
    }
}

/// The worker process: its CPU time (user + system) and memory, from /proc.
struct ProcStats {
    pid: u32,
}

impl ProcStats {
    fn cpu(&self) -> Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // The fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or_else(|| anyhow!("/proc/{}/stat unreadable", self.pid))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        // USER_HZ, in which /proc reports CPU time: 100 on every Linux this runs on
        // (`getconf CLK_TCK`).
        let hz = 100u64;
        Ok(Duration::from_millis(ticks * 1000 / hz))
    }

    fn status_kib(&self, field: &str) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .ok_or_else(|| anyhow!("no {field} in /proc/{}/status", self.pid))
    }
}

/// The straight-HTTP client the worker is compared with: the same writes, nothing else.
struct Bare {
    http: reqwest::Client,
    verdaccio: Option<(String, String)>,
    registry: Option<String>,
}

impl Bare {
    async fn stage(&self, d: &Dist1) -> Result<()> {
        match &d.image {
            None => {
                let (_, bytes) = &d.files[0];
                self.npm_publish(&d.dist.package, &d.dist.version, "rc", bytes)
                    .await?;
            }
            Some(image) => {
                let registry = self
                    .registry
                    .as_ref()
                    .ok_or_else(|| anyhow!("no registry"))?;
                let repo = format!("apache/{}", d.dist.package);
                for (path, bytes) in &d.files {
                    let Some(hex) = path.strip_prefix("img/blobs/sha256/") else {
                        continue;
                    };
                    if format!("sha256:{hex}") == image.digest {
                        continue;
                    }
                    // The distribution spec's two-step upload: open a session, PUT the
                    // bytes to it with their digest.
                    let r = self
                        .http
                        .post(format!("{registry}v2/{repo}/blobs/uploads/"))
                        .send()
                        .await?;
                    let location = r
                        .headers()
                        .get("location")
                        .and_then(|l| l.to_str().ok())
                        .ok_or_else(|| {
                            anyhow!("bare upload to {repo}: {} without a Location", r.status())
                        })?;
                    let mut url = url::Url::parse(registry)?.join(location)?;
                    url.query_pairs_mut()
                        .append_pair("digest", &format!("sha256:{hex}"));
                    let r = self
                        .http
                        .put(url)
                        .header("content-type", "application/octet-stream")
                        .body(bytes.clone())
                        .send()
                        .await?;
                    if r.status() != reqwest::StatusCode::CREATED {
                        bail!("bare blob upload to {repo}: {}", r.status());
                    }
                }
                self.put_manifest(&repo, image, &format!("rc-{}", d.dist.version))
                    .await?;
            }
        }
        Ok(())
    }

    /// Publishes `version` of `name` under `tag`, as `npm publish` does: one PUT of the
    /// packument with the tarball attached.
    async fn npm_publish(&self, name: &str, version: &str, tag: &str, bytes: &[u8]) -> Result<()> {
        let (url, token) = self
            .verdaccio
            .as_ref()
            .ok_or_else(|| anyhow!("no verdaccio"))?;
        let file = format!("{name}-{version}.tgz");
        let body = serde_json::json!({
            "_id": name, "name": name,
            "dist-tags": {tag: version},
            "versions": {version: {
                "name": name, "version": version, "_id": format!("{name}@{version}"),
                "dist": {
                    "shasum": hex(&sha1_of(bytes)),
                    "integrity": npm_support::integrity(bytes),
                    "tarball": format!("{url}{name}/-/{file}"),
                }
            }},
            "_attachments": {file: {
                "content_type": "application/octet-stream",
                "data": base64::engine::general_purpose::STANDARD.encode(bytes),
                "length": bytes.len(),
            }}
        });
        let r = self
            .http
            .put(format!("{url}{name}"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("bare npm publish of {name}@{version}: {}", r.status());
        }
        Ok(())
    }

    /// Before the run, not timed: an npm package's first version becomes `latest` whatever
    /// tag it is published under, which would leave nothing for the promotion to do. Each
    /// package gets an earlier version, 0.0.1, as `latest` first, as a released project has.
    async fn seed(&self, d: &Dist1) -> Result<()> {
        if d.image.is_some() {
            return Ok(());
        }
        let name = d.dist.package.as_str();
        let bytes = npm_support::tarball(name, "0.0.1", "module.exports = 0;\n");
        self.npm_publish(name, "0.0.1", "latest", &bytes).await
    }

    async fn promote(&self, d: &Dist1) -> Result<()> {
        match &d.image {
            None => {
                let (url, token) = self
                    .verdaccio
                    .as_ref()
                    .ok_or_else(|| anyhow!("no verdaccio"))?;
                let r = self
                    .http
                    .put(format!(
                        "{url}-/package/{}/dist-tags/latest",
                        d.dist.package
                    ))
                    .bearer_auth(token)
                    .json(&d.dist.version)
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("bare dist-tag of {}: {}", d.dist.package, r.status());
                }
            }
            Some(image) => {
                let repo = format!("apache/{}", d.dist.package);
                self.put_manifest(&repo, image, &d.dist.version).await?;
            }
        }
        Ok(())
    }

    async fn put_manifest(&self, repo: &str, image: &OciImage, tag: &str) -> Result<()> {
        let registry = self
            .registry
            .as_ref()
            .ok_or_else(|| anyhow!("no registry"))?;
        let hex = image.digest.trim_start_matches("sha256:");
        let manifest = image
            .files
            .iter()
            .find(|(p, _)| p.ends_with(hex))
            .map(|(_, b)| b.clone())
            .ok_or_else(|| anyhow!("the image has no manifest blob"))?;
        let r = self
            .http
            .put(format!("{registry}v2/{repo}/manifests/{tag}"))
            .header("content-type", image.media_type)
            .body(manifest)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("bare manifest put to {repo}:{tag}: {}", r.status());
        }
        Ok(())
    }
}

fn sha1_of(bytes: &[u8]) -> Vec<u8> {
    sha1::Sha1::digest(bytes).to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One database and one platform: fresh servers, a worker, the single votes, the burst, and
/// the bare client's same writes.
async fn run_one(args: &Args, bin: &Path, db: Db, target: Target) -> Result<Row> {
    let dir = tempfile::tempdir()?;
    let dir = if args.keep {
        let kept = dir.keep();
        eprintln!(
            "{} / {}: kept in {}",
            db.label(),
            target.label(),
            kept.display()
        );
        Kept::Path(kept)
    } else {
        Kept::Temp(dir)
    };
    let dir = &dir;
    match db {
        Db::Sqlite => {
            let url = format!("sqlite://{}/atr-dist.db", dir.display());
            run_with(args, bin, db, target, dir, &url).await
        }
        Db::Postgres => {
            let pg = BenchDb::create(&args.postgres).await?;
            let row = run_with(args, bin, db, target, dir, &pg.url).await;
            pg.drop_it().await;
            row
        }
    }
}

async fn run_with(
    args: &Args,
    bin: &Path,
    db: Db,
    target: Target,
    dir: &Path,
    database_url: &str,
) -> Result<Row> {
    // A redis-server of this run's own, keeping nothing on disk.
    let private_redis = PrivateRedis::ephemeral(dir);
    let redis_url = private_redis.url();
    let (verdaccio, registry) = match target {
        Target::Npm => (Some(Verdaccio::start().await), None),
        Target::Oci => (None, Some(Registry::start(RegistryAuth::None).await)),
    };
    let root = dir.join("revisions");
    let queue_name = unique_name("e2e");
    let http_port = free_port();
    let mut config = format!(
        "[database]\nurl = \"{database_url}\"\n\n[redis]\nurl = \"{redis_url}\"\nqueue = \"{queue_name}\"\n\n[revisions]\nroot = \"{}\"\n\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n",
        root.display()
    );
    let mut envs: Vec<(&str, String)> = Vec::new();
    if let Some(v) = &verdaccio {
        config.push_str(&format!("\n[platforms.npm]\nbase_url = \"{}\"\n", v.url()));
        envs.push(("ATR_DIST_PLATFORMS__NPM__TOKEN", v.token.clone()));
    }
    if let Some(r) = &registry {
        config.push_str(&format!(
            "\n[platforms.docker_hub]\nbase_url = \"{}\"\n",
            r.url.as_str().trim_end_matches('/')
        ));
    }
    let config_path = dir.join("atr-dist.toml");
    std::fs::write(&config_path, &config)?;

    // The distributions: the votes', then the burst's.
    let dists: Vec<Dist1> = (0..args.votes + args.burst)
        .map(|n| Dist1::new(target, n))
        .collect();
    for d in &dists {
        d.write(&root)?;
    }
    let (votes, burst) = dists.split_at(args.votes);
    let offset = dists.len();
    let bare_votes: Vec<Dist1> = (0..votes.len())
        .map(|n| Dist1::new(target, offset + n))
        .collect();
    let bare_burst: Vec<Dist1> = (0..burst.len())
        .map(|n| Dist1::new(target, offset + votes.len() + n))
        .collect();
    let bare = Bare {
        http: reqwest::Client::new(),
        verdaccio: verdaccio.as_ref().map(|v| (v.url(), v.token.clone())),
        registry: registry.as_ref().map(|r| r.url.to_string()),
    };
    let concurrency = WorkerConfig::default().concurrency;
    futures::stream::iter(dists.iter().chain(&bare_votes).chain(&bare_burst))
        .map(|d| bare.seed(d))
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;

    let log = std::fs::File::create(dir.join("worker.log"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(&config_path)
        .arg("run")
        .current_dir(dir)
        .stdout(log.try_clone()?)
        .stderr(log);
    for (k, v) in &envs {
        cmd.env(k, v);
    }
    let worker = Killed(
        cmd.spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    let proc = ProcStats { pid: worker.0.id() };
    let http = reqwest::Client::new();
    let start = Instant::now();
    loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{http_port}/readyz"))
            .send()
            .await
            && r.status().is_success()
        {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "the worker was not ready within 60 s; its log:\n{}",
                std::fs::read_to_string(dir.join("worker.log")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = proc.status_kib("VmRSS")?;

    let queue = Queue::connect(&redis_url, &[], &queue_name).await?;
    let results = Results::follow(redis_url.clone(), format!("{}results", queue.prefix()));
    let attempts = 3;
    let mut row = Row {
        db: db.label(),
        platform: target.label(),
        burst: burst.len(),
        ..Row::default()
    };

    eprintln!(
        "{} / {}: {} single votes",
        row.db,
        row.platform,
        votes.len()
    );
    for d in votes {
        for (kind, envelope) in [("stage", d.stage()), ("promote", d.promote())] {
            let t0 = Instant::now();
            let id = queue.enqueue(&envelope, None, attempts).await?.id;
            let end = results
                .wait(std::slice::from_ref(&id), Duration::from_secs(60))
                .await?[0];
            match kind {
                "stage" => row.stage.push(end - t0),
                _ => row.promote.push(end - t0),
            }
            // Idle between jobs: the worker has gone back to waiting for a wake-up.
            tokio::time::sleep(Duration::from_millis(200 + fastrand::u64(0..300))).await;
        }
    }

    eprintln!("{} / {}: a burst of {}", row.db, row.platform, burst.len());
    let cpu0 = proc.cpu()?;
    for kind in ["stage", "promote"] {
        let envelopes: Vec<Envelope> = burst
            .iter()
            .map(|d| {
                if kind == "stage" {
                    d.stage()
                } else {
                    d.promote()
                }
            })
            .collect();
        let t0 = Instant::now();
        let ids: Vec<String> = queue
            .enqueue_bulk(&envelopes, None, attempts)
            .await?
            .into_iter()
            .map(|e| e.id)
            .collect();
        let ends = results.wait(&ids, Duration::from_secs(1800)).await?;
        let last = ends.iter().max().copied().unwrap_or(t0);
        let mut lat = Latencies::default();
        for end in ends {
            lat.push(end - t0);
        }
        if kind == "stage" {
            row.burst_stage_secs = (last - t0).as_secs_f64();
            row.burst_stage = lat;
        } else {
            row.burst_promote_secs = (last - t0).as_secs_f64();
            row.burst_promote = lat;
        }
    }
    let cpu = proc.cpu()? - cpu0;
    row.worker_cpu_ms_per_job = cpu.as_secs_f64() * 1000.0 / (2 * burst.len()).max(1) as f64;
    row.rss_idle_mib = rss_idle as f64 / 1024.0;
    row.rss_peak_mib = proc.status_kib("VmHWM")? as f64 / 1024.0;
    drop(worker);

    // The peer: the same writes, from a bare client, on fresh names of the same servers.
    eprintln!("{} / {}: the bare client", row.db, row.platform);
    for d in &bare_votes {
        let t0 = Instant::now();
        bare.stage(d).await?;
        row.bare_stage.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t0 = Instant::now();
        bare.promote(d).await?;
        row.bare_promote.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t0 = Instant::now();
    futures::stream::iter(&bare_burst)
        .map(|d| bare.stage(d))
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    row.bare_burst_stage_secs = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    futures::stream::iter(&bare_burst)
        .map(|d| bare.promote(d))
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    row.bare_burst_promote_secs = t0.elapsed().as_secs_f64();
    Ok(row)
}

fn report(rows: &[Row], args: &Args) -> String {
    let mut out = String::new();
    let concurrency = WorkerConfig::default().concurrency;
    out.push_str(&format!(
        "## One vote on an idle worker ({} votes each; enqueue → result recorded, ms)\n\n",
        args.votes
    ));
    out.push_str("| database | platform | stage p50 / p99 | promote (vote → promoted) p50 / p99 | bare client stage / promote p50 | ratio (p50, stage + promote) |\n|---|---|---|---|---|---|\n");
    for r in rows {
        let ours = r.stage.quantile(0.5) + r.promote.quantile(0.5);
        let bare = r.bare_stage.quantile(0.5) + r.bare_promote.quantile(0.5);
        out.push_str(&format!(
            "| {} | {} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1}× |\n",
            r.db,
            r.platform,
            r.stage.quantile(0.5),
            r.stage.quantile(0.99),
            r.promote.quantile(0.5),
            r.promote.quantile(0.99),
            r.bare_stage.quantile(0.5),
            r.bare_promote.quantile(0.5),
            ours / bare,
        ));
    }
    out.push_str(&format!(
        "\n## A burst (stage jobs of N distributions at once, then their promote jobs; bare client {concurrency} at a time, the worker's concurrency)\n\n"
    ));
    out.push_str("| database | platform | N | stage jobs/s | stage p50 / p99 s | promote jobs/s | promote p50 / p99 s | bare client stage / promote per s | ratio (bare ÷ ours, jobs/s) | worker CPU ms/job | worker RSS idle / peak MiB |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let n = r.burst as f64;
        let ours = 2.0 * n / (r.burst_stage_secs + r.burst_promote_secs);
        let bare = 2.0 * n / (r.bare_burst_stage_secs + r.bare_burst_promote_secs);
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.2} / {:.2} | {:.0} | {:.2} / {:.2} | {:.0} / {:.0} | {:.1}× | {:.2} | {:.1} / {:.1} |\n",
            r.db,
            r.platform,
            r.burst,
            n / r.burst_stage_secs,
            r.burst_stage.quantile(0.5) / 1000.0,
            r.burst_stage.quantile(0.99) / 1000.0,
            n / r.burst_promote_secs,
            r.burst_promote.quantile(0.5) / 1000.0,
            r.burst_promote.quantile(0.99) / 1000.0,
            n / r.bare_burst_stage_secs,
            n / r.bare_burst_promote_secs,
            bare / ours,
            r.worker_cpu_ms_per_job,
            r.rss_idle_mib,
            r.rss_peak_mib,
        ));
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    let bin = match &args.atr_dist {
        Some(p) => p.clone(),
        None => match std::env::current_exe() {
            Ok(me) => me.with_file_name("atr-dist"),
            Err(e) => {
                eprintln!("e2e-bench: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    if !bin.exists() {
        eprintln!(
            "e2e-bench: {} is missing: build it with the same profile (`cargo build --release --bin atr-dist`), or run scripts/bench-e2e",
            bin.display()
        );
        return ExitCode::FAILURE;
    }
    let mut rows = Vec::new();
    for &db in &args.databases {
        for &target in &args.platforms {
            match run_one(&args, &bin, db, target).await {
                Ok(row) => rows.push(row),
                Err(e) => {
                    eprintln!("e2e-bench: {} / {}: {e:#}", db.label(), target.label());
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    println!(
        "# atr-dist end to end ({}, {} cores)\n\nThe worker is `atr-dist run` with the shipped defaults (concurrency {}, fetch_batch {}); each row has its own redis-server, registry and database.\n",
        bin.display(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        WorkerConfig::default().concurrency,
        WorkerConfig::default().fetch_batch,
    );
    print!("{}", report(&rows, &args));
    ExitCode::SUCCESS
}
