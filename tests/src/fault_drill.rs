//! Support for the fault drills (`tests/faults.rs`): a real npm registry (verdaccio) behind
//! the fault proxy, which counts what reached the registry; worker pools running the real
//! pipeline; and a producer that stages packages and promotes each once its stage is done,
//! as ATR does, and that outlives the faults (its own calls to Redis may fail meanwhile).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use atr_dist::platform::npm::NpmAdapter;
use atr_dist::platform::{Adapters, PlatformAdapter};
use atr_dist::queue::Queue;
use atr_dist::queue::pool::PoolConfig;
use atr_dist::secret::Secret;
use atr_dist_shared::entities::job_run;
use atr_dist_shared::job::RevisionSourceSpec;
use atr_dist_shared::{Envelope, JobState, Platform};
use sea_orm::{DatabaseConnection, EntityTrait};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::cases::RunningPool;
use crate::fault_proxy::{FaultProxy, Seen};
use crate::jobs::Dist;
use crate::npm_support::{Verdaccio, integrity, stage_request, tarball};
use crate::pipeline_support::{Revisions, pipeline_with};

/// Writes a line to the test's standard error, which `cargo test` shows even for a test that
/// passes (libtest captures `eprintln!`, not direct writes).
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The bytes voted for package `name` 1.0.0.
pub fn voted(name: &str) -> Vec<u8> {
    tarball(name, "1.0.0", &format!("voted bytes of {name}"))
}

/// A verdaccio, and the fault proxy the workers reach it through.
pub struct NpmPlatform {
    pub registry: Verdaccio,
    pub proxy: FaultProxy,
}

impl NpmPlatform {
    pub async fn start() -> NpmPlatform {
        let registry = Verdaccio::start().await;
        let proxy = FaultProxy::start(&Url::parse(&registry.url()).unwrap()).await;
        NpmPlatform { registry, proxy }
    }

    /// The npm adapter the workers use: through the proxy.
    pub fn adapters(&self) -> Adapters {
        let a = NpmAdapter::new(
            self.proxy.url.clone(),
            Some(Secret::new(&self.registry.token)),
        )
        .unwrap();
        Adapters::default().with(Platform::Npm, Arc::new(a))
    }

    /// Publishes 0.9.0 of each package straight to the registry (not through the proxy) as
    /// `latest`, so that promoting 1.0.0 has a tag to move: each promote is then one
    /// request the registry counts.
    pub async fn seed(&self, names: &[String]) {
        let direct = NpmAdapter::new(
            Url::parse(&self.registry.url()).unwrap(),
            Some(Secret::new(&self.registry.token)),
        )
        .unwrap();
        for name in names {
            let key = Dist::new(Platform::Npm, "", name, "0.9.0").key();
            let req = stage_request(&key, &tarball(name, "0.9.0", "old"), "latest");
            direct.stage(&req).await.expect("seed 0.9.0");
        }
    }

    /// Publishes of `name` (`PUT /<name>`) that reached the registry.
    pub fn publishes(&self, name: &str) -> usize {
        let path = format!("/{name}");
        self.proxy
            .seen()
            .iter()
            .filter(|s| !s.injected && s.method == "PUT" && s.path == path)
            .count()
    }

    /// Moves of `name`'s `latest` to 1.0.0 (the promotion) that reached the registry.
    pub fn promotions(&self, name: &str) -> usize {
        let path = format!("/-/package/{name}/dist-tags/latest");
        self.proxy
            .seen()
            .iter()
            .filter(|s| {
                !s.injected
                    && s.method == "PUT"
                    && s.path == path
                    && s.body.as_ref() == b"\"1.0.0\""
            })
            .count()
    }

    /// Checks what the registry holds for `name`: 1.0.0 with the voted bytes, `latest` on it.
    pub async fn assert_promoted(&self, name: &str) {
        let doc: serde_json::Value = reqwest::get(format!("{}{name}", self.registry.url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            doc["versions"]["1.0.0"]["dist"]["integrity"],
            integrity(&voted(name)),
            "{name}: the registry holds other bytes"
        );
        assert_eq!(doc["dist-tags"]["latest"], "1.0.0", "{name}: {doc}");
    }

    /// Writes that got no answer the client could trust, and whether the next request for
    /// the same package read the registry back before anything else was written: pairs of
    /// (writes with an unknown outcome, those followed first by a read).
    pub fn read_backs_after_unknown_outcomes(&self, names: &[String]) -> (usize, usize) {
        let seen = self.proxy.seen();
        let (mut unknown, mut read_first) = (0, 0);
        for name in names {
            let mine: Vec<&Seen> = seen.iter().filter(|s| concerns(s, name)).collect();
            for (i, s) in mine.iter().enumerate() {
                if s.method != "PUT" || !s.faulted {
                    continue;
                }
                unknown += 1;
                if mine
                    .get(i + 1)
                    .is_some_and(|next| next.method == "GET" && next.path == format!("/{name}"))
                {
                    read_first += 1;
                }
            }
        }
        (unknown, read_first)
    }
}

/// Whether request `s` is about package `name` (its packument, or its dist-tags).
fn concerns(s: &Seen, name: &str) -> bool {
    s.path == format!("/{name}") || s.path.starts_with(&format!("/-/package/{name}/"))
}

/// The real pipeline in a worker pool, with the audit pass beside it, as `atr-dist run`
/// has them.
pub struct PipelineWorkers {
    pool: Option<RunningPool>,
    stop_audit: CancellationToken,
    audit: Option<tokio::task::JoinHandle<()>>,
}

impl PipelineWorkers {
    pub fn start(
        queue: &Queue,
        db: &DatabaseConnection,
        revisions: &Path,
        adapters: Adapters,
        config: PoolConfig,
    ) -> PipelineWorkers {
        let mut pipeline = pipeline_with(db.clone(), queue.clone(), revisions, adapters);
        pipeline.lock_ttl = config.lease;
        let stop_audit = CancellationToken::new();
        let audit = atr_dist::pipeline::audit::spawn(
            db.clone(),
            queue.clone(),
            config.lease,
            stop_audit.clone(),
        );
        PipelineWorkers {
            pool: Some(RunningPool::start(queue, pipeline, config)),
            stop_audit,
            audit: Some(audit),
        }
    }

    pub async fn stop(mut self) {
        if let Some(pool) = self.pool.take() {
            pool.stop().await;
        }
        self.stop_audit.cancel();
        if let Some(audit) = self.audit.take() {
            audit.await.unwrap();
        }
    }
}

impl Drop for PipelineWorkers {
    fn drop(&mut self) {
        self.stop_audit.cancel();
    }
}

/// One package's two jobs.
struct Package {
    name: String,
    stage: Envelope,
    promote: Envelope,
    promote_enqueued: bool,
    stage_state: Option<JobState>,
    promote_state: Option<JobState>,
}

/// The producer: stages every package, promotes each once its stage is done, and follows
/// both to their ends. Its calls to Redis may fail during a fault; it tries again on its
/// next round, with the same jobs (their idempotency keys make that safe).
pub struct Producer {
    packages: Vec<Package>,
    pub max_attempts: u32,
    /// Enqueues that failed and were sent again.
    pub enqueue_errors: usize,
    /// Rounds whose reads of Redis failed.
    pub read_errors: usize,
    /// Jobs Redis did not know although their enqueue had been answered: lost writes.
    pub missing: Vec<String>,
}

impl Producer {
    /// Packages `names`, whose voted tarballs are written to `revs` (release example 1.0.0,
    /// revision 00001).
    pub fn new(names: &[String], revs: &Revisions, max_attempts: u32) -> Producer {
        let files: Vec<(String, Vec<u8>)> = names
            .iter()
            .map(|n| (format!("{n}-1.0.0.tgz"), voted(n)))
            .collect();
        let refs: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(f, b)| (f.as_str(), b.as_slice()))
            .collect();
        revs.write("00001", &refs);
        let packages = names
            .iter()
            .map(|name| {
                let d = Dist::new(Platform::Npm, "", name, "1.0.0");
                Package {
                    name: name.clone(),
                    stage: d.stage(
                        "00001",
                        &[&format!("{name}-1.0.0.tgz")],
                        RevisionSourceSpec::Dir,
                        false,
                    ),
                    promote: d.promote("00001", RevisionSourceSpec::Dir, "rm"),
                    promote_enqueued: false,
                    stage_state: None,
                    promote_state: None,
                }
            })
            .collect();
        Producer {
            packages,
            max_attempts,
            enqueue_errors: 0,
            read_errors: 0,
            missing: Vec::new(),
        }
    }

    /// Enqueues every stage, trying again until Redis takes them.
    pub async fn enqueue_stages(&mut self, q: &Queue) {
        let stages: Vec<Envelope> = self.packages.iter().map(|p| p.stage.clone()).collect();
        let start = Instant::now();
        while let Err(e) = q.enqueue_bulk(&stages, None, self.max_attempts).await {
            self.enqueue_errors += 1;
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "enqueue keeps failing: {e}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One round: reads the state of every unfinished job, and enqueues the promotes whose
    /// stage is done. True when every job has ended.
    pub async fn round(&mut self, q: &Queue) -> bool {
        for p in &mut self.packages {
            if !p.stage_state.is_some_and(JobState::is_terminal) {
                match q.show(&p.stage.id.to_string()).await {
                    Ok(Some(d)) => p.stage_state = Some(d.summary.state),
                    Ok(None) => {
                        self.missing.push(p.stage.id.to_string());
                        return false;
                    }
                    Err(_) => {
                        self.read_errors += 1;
                        return false;
                    }
                }
            }
            if p.stage_state == Some(JobState::Done) && !p.promote_enqueued {
                match q.enqueue(&p.promote, None, self.max_attempts).await {
                    Ok(_) => p.promote_enqueued = true,
                    Err(_) => {
                        self.enqueue_errors += 1;
                        return false;
                    }
                }
            }
            if p.promote_enqueued && !p.promote_state.is_some_and(JobState::is_terminal) {
                match q.show(&p.promote.id.to_string()).await {
                    Ok(Some(d)) => p.promote_state = Some(d.summary.state),
                    Ok(None) => {
                        self.missing.push(p.promote.id.to_string());
                        return false;
                    }
                    Err(_) => {
                        self.read_errors += 1;
                        return false;
                    }
                }
            }
        }
        self.packages.iter().all(|p| {
            p.stage_state.is_some_and(JobState::is_terminal)
                && (p.stage_state != Some(JobState::Done)
                    || p.promote_state.is_some_and(JobState::is_terminal))
        })
    }

    /// Jobs done so far (stages and promotes), by the producer's last reads.
    pub fn done(&self) -> usize {
        self.packages
            .iter()
            .map(|p| {
                usize::from(p.stage_state == Some(JobState::Done))
                    + usize::from(p.promote_state == Some(JobState::Done))
            })
            .sum()
    }

    /// Rounds until every job has ended, failing the test after `within`. `during` runs
    /// between rounds with the number of jobs done (to start a fault at the right moment).
    pub async fn run_to_end(
        &mut self,
        q: &Queue,
        within: Duration,
        mut during: impl AsyncFnMut(usize),
    ) {
        let start = Instant::now();
        while !self.round(q).await {
            assert!(
                self.missing.is_empty(),
                "Redis lost jobs whose enqueue it had answered: {:?}",
                self.missing
            );
            assert!(
                start.elapsed() < within,
                "jobs did not all end within {within:?}: {}",
                self.describe()
            );
            during(self.done()).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn describe(&self) -> String {
        let mut states: BTreeMap<String, usize> = BTreeMap::new();
        for p in &self.packages {
            *states
                .entry(format!("stage {:?}", p.stage_state))
                .or_default() += 1;
            *states
                .entry(format!("promote {:?}", p.promote_state))
                .or_default() += 1;
        }
        format!("{states:?}")
    }

    /// Every job ended done: stages and promotes. Names the others with their last error.
    pub async fn assert_all_done(&self, q: &Queue) {
        let mut bad = Vec::new();
        for p in &self.packages {
            for (what, env, state) in [
                ("stage", &p.stage, p.stage_state),
                ("promote", &p.promote, p.promote_state),
            ] {
                if state != Some(JobState::Done) {
                    let error = match q.show(&env.id.to_string()).await {
                        Ok(Some(d)) => d.summary.last_error.unwrap_or_default(),
                        Ok(None) | Err(_) => String::new(),
                    };
                    bad.push(format!("{} {what}: {state:?}: {error}", p.name));
                }
            }
        }
        assert!(
            bad.is_empty(),
            "{} jobs did not end done: {bad:#?}",
            bad.len()
        );
    }

    /// Every job's id, stages then promotes.
    pub fn ids(&self) -> Vec<String> {
        self.packages
            .iter()
            .flat_map(|p| [p.stage.id.to_string(), p.promote.id.to_string()])
            .collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.packages.iter().map(|p| p.name.clone()).collect()
    }
}

/// What a drill counts, printed at its end so that a regression shows as a number.
#[derive(Debug, Default)]
pub struct Tally {
    pub jobs: usize,
    pub done: u64,
    pub dead: u64,
    /// Attempts recorded in `job_run`, and those still open (no end recorded).
    pub attempts: usize,
    pub open_attempts: usize,
    /// Expired leases re-queued (`recovered`), and failed attempts retried (`retried`).
    pub rerun_after_lease_expiry: u64,
    pub retried: u64,
    /// Events `write_read_back` and `http_retry` in the jobs' timelines.
    pub read_backs: usize,
    pub http_retries: usize,
    /// Events `deferred`: attempts handed back without counting (a held lock, a database
    /// that could not record the attempt's start).
    pub deferred: usize,
    /// Publishes and promotions that reached the registry, and those beyond one per
    /// package (a duplicate at the platform).
    pub publishes: usize,
    pub promotions: usize,
    pub duplicates_at_platform: usize,
}

impl Tally {
    /// Counts from the queue, the results database and the platform.
    pub async fn take(
        q: &Queue,
        db: &DatabaseConnection,
        platform: &NpmPlatform,
        producer: &Producer,
    ) -> Tally {
        let stats = q.stats().await.unwrap();
        let runs = job_run::Entity::find().all(db).await.unwrap();
        let mut t = Tally {
            jobs: producer.ids().len(),
            done: stats.counts[&JobState::Done],
            dead: stats.counts[&JobState::Dead],
            attempts: runs.len(),
            open_attempts: runs.iter().filter(|r| r.finished_at.is_none()).count(),
            rerun_after_lease_expiry: stats.totals.get("recovered").copied().unwrap_or(0),
            retried: stats.totals.get("retried").copied().unwrap_or(0),
            ..Tally::default()
        };
        for id in producer.ids() {
            let detail = q.show(&id).await.unwrap().expect("job exists");
            for e in detail.events {
                match e.event.as_str() {
                    "write_read_back" => t.read_backs += 1,
                    "http_retry" => t.http_retries += 1,
                    "deferred" => t.deferred += 1,
                    _ => {}
                }
            }
        }
        for name in producer.names() {
            let (p, m) = (platform.publishes(&name), platform.promotions(&name));
            t.publishes += p;
            t.promotions += m;
            t.duplicates_at_platform += p.saturating_sub(1) + m.saturating_sub(1);
        }
        t
    }

    /// Prints the counts, one line, named by the drill.
    pub fn print(&self, drill: &str, extra: &[(&str, String)]) {
        let mut line = format!(
            "{drill}: jobs {} done {} dead {} attempts {} (open {}) re-run after lease expiry {} retried {} deferred {} read-backs {} http retries {} publishes {} promotions {} duplicates at the platform {}",
            self.jobs,
            self.done,
            self.dead,
            self.attempts,
            self.open_attempts,
            self.rerun_after_lease_expiry,
            self.retried,
            self.deferred,
            self.read_backs,
            self.http_retries,
            self.publishes,
            self.promotions,
            self.duplicates_at_platform,
        );
        for (k, v) in extra {
            line.push_str(&format!(" {k} {v}"));
        }
        say(&line);
    }
}

/// A redis-server of the test's own, on a free port on loopback, persisting to an
/// append-only file in `dir` (or keeping nothing, `ephemeral`); killed (SIGKILL) and
/// restarted by the test, and killed when dropped.
pub struct PrivateRedis {
    pub port: u16,
    dir: std::path::PathBuf,
    /// `appendfsync` of its append-only file; `None`: no append-only file.
    fsync: Option<&'static str>,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// Starts it with `appendfsync <fsync>` (`always`, `everysec` or `no`).
    pub fn start(dir: &Path, fsync: &'static str) -> PrivateRedis {
        PrivateRedis::started(dir, Some(fsync))
    }

    /// Starts it keeping nothing on disk (`dir` is only its working directory).
    pub fn ephemeral(dir: &Path) -> PrivateRedis {
        PrivateRedis::started(dir, None)
    }

    fn started(dir: &Path, fsync: Option<&'static str>) -> PrivateRedis {
        let mut r = PrivateRedis {
            port: crate::free_port(),
            dir: dir.to_owned(),
            fsync,
            child: None,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same port and directory: it loads its append-only
    /// file before it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--protected-mode", "yes"])
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--save", ""])
            .args(match self.fsync {
                Some(fsync) => vec!["--appendonly", "yes", "--appendfsync", fsync],
                None => vec!["--appendonly", "no"],
            })
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/services.sh installs it)");
        self.child = Some(child);
        let start = Instant::now();
        while !self.ready() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "redis-server on port {} did not come up",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Answers PING with PONG (not LOADING: it has read its append-only file).
    fn ready(&self) -> bool {
        use std::io::{Read as _, Write as _};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
    }

    /// SIGKILL: no shutdown path runs; what survives is what was in the append-only file.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL redis-server");
            child.wait().expect("reap redis-server");
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill9();
    }
}
