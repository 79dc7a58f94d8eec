//! A recording platform adapter, revision directories on disk, and a pipeline wired to a
//! real Redis and a real database, for the pipeline's end-to-end tests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atr_dist::config::RetryConfig;
use atr_dist::pipeline::Pipeline;
use atr_dist::platform::{
    Adapters, Observed, PlannedWrite, PlatformAdapter, PlatformError, PromoteRequest, Sealed,
    StageRequest, Staging,
};
use atr_dist::queue::Queue;
use atr_dist::queue::pool::PoolConfig;
use atr_dist::source::{DirSource, Sources};
use atr_dist_shared::entities::{distribution, job_run};
use atr_dist_shared::names::{ArtifactPath, DistTag};
use atr_dist_shared::{
    Digest, DigestAlgorithm, DistributionKey, ManifestEntry, PromotionMechanism,
};
use atr_dist_shared::{Envelope, JobState};
use futures::FutureExt;
use futures::future::BoxFuture;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};

use tokio_util::sync::CancellationToken;

use crate::cases::{RunningPool, eventually, pool_config};
use crate::redis_support::TestQueue;
use crate::{PgDatabase, SqliteDatabase};
use sha2::{Digest as _, Sha256};

/// What the fake platform holds, and every write it received.
#[derive(Default)]
pub struct PlatformState {
    pub staged: HashMap<(String, String), Digest>,
    pub promoted: HashMap<(String, String), Digest>,
    pub writes: Vec<String>,
}

/// An adapter over an in-memory platform that records every call. `stage_delay` makes
/// stages slow enough to overlap; `in_stage` counts stages running at once. `stage_panics`
/// makes every stage panic with that message.
#[derive(Clone, Default)]
pub struct RecordingAdapter {
    pub state: Arc<Mutex<PlatformState>>,
    pub stage_delay: Duration,
    pub in_stage: Arc<AtomicUsize>,
    pub max_in_stage: Arc<AtomicUsize>,
    pub stage_panics: Option<&'static str>,
    /// Promotes answer "not yet" this many more times (a platform still indexing).
    pub promote_not_yet: Arc<AtomicUsize>,
    /// The platform has no staging place ([`Staging::Local`]): stage checks and sends
    /// nothing.
    pub local_staging: bool,
    /// Calls of `read_staged`.
    pub staged_reads: Arc<AtomicUsize>,
    /// The platform is only verified, never written to ([`PromotionMechanism::None`], as
    /// Artifact Hub): `stage` and `promote` refuse, and what the platform shows is set with
    /// [`RecordingAdapter::show_staged`] and [`RecordingAdapter::show_promoted`].
    pub verify_only: bool,
    /// Promotion uploads the voted files again ([`PromotionMechanism::Reupload`], as PyPI):
    /// `promote` records the files it was given.
    pub reupload: bool,
    /// Each artifact has a companion file, its path with this added (as PyPI's `.asc`
    /// signatures); stages and re-uploads record the companions they were given.
    pub companion_suffix: Option<&'static str>,
}

impl RecordingAdapter {
    pub fn writes(&self) -> Vec<String> {
        self.state.lock().unwrap().writes.clone()
    }

    /// The digest the adapter gives the voted files `contents`, in the job's order of
    /// artifacts: what a stage of them records.
    pub fn digest_of(contents: &[&[u8]]) -> Digest {
        use sha3::Digest as _;
        let mut h = Sha256::new();
        for c in contents {
            let sha3 =
                atr_dist_shared::manifest::Sha3Hex::from_bytes(sha3::Sha3_256::digest(c).into());
            h.update(sha3.as_str().as_bytes());
        }
        Digest::from_bytes(DigestAlgorithm::Sha256, &h.finalize()).unwrap()
    }

    /// The platform lists `digest` under the staging `tag` (someone else put it there).
    pub fn show_staged(&self, key: &DistributionKey, tag: &str, digest: Digest) {
        self.state
            .lock()
            .unwrap()
            .staged
            .insert((key.lock_id(), tag.to_owned()), digest);
    }

    /// The platform lists `digest` in production under `tag`.
    pub fn show_promoted(&self, key: &DistributionKey, tag: &str, digest: Digest) {
        self.state
            .lock()
            .unwrap()
            .promoted
            .insert((key.lock_id(), tag.to_owned()), digest);
    }

    /// Someone else moves the staging tag (a CI job pushing over it).
    pub fn overwrite_staged(&self, key: &DistributionKey, tag: &str) {
        let other = Digest::from_bytes(DigestAlgorithm::Sha256, &[9u8; 32]).unwrap();
        self.state
            .lock()
            .unwrap()
            .staged
            .insert((key.lock_id(), tag.to_owned()), other);
    }
}

fn id(key: &DistributionKey, tag: &DistTag) -> (String, String) {
    (key.lock_id(), tag.to_string())
}

fn observed(digest: Digest) -> Observed {
    Observed {
        digest,
        api_url: Some("http://127.0.0.1/recording".into()),
        web_url: None,
        upload_date: Some(chrono::Utc::now()),
    }
}

impl PlatformAdapter for RecordingAdapter {
    fn expected_digest<'a>(
        &'a self,
        req: &'a StageRequest,
    ) -> BoxFuture<'a, Result<Digest, PlatformError>> {
        // A digest over the artifacts' content, as a registry's would be (`digest_of`).
        let mut h = Sha256::new();
        for a in &req.artifacts {
            h.update(a.entry().sha3_256.as_str().as_bytes());
        }
        let d = Digest::from_bytes(DigestAlgorithm::Sha256, &h.finalize()).unwrap();
        async move { Ok(d) }.boxed()
    }

    fn plan_stage(&self, req: &StageRequest) -> Vec<PlannedWrite> {
        vec![PlannedWrite {
            method: "PUT",
            url: format!("http://127.0.0.1/{}", req.key.package),
            what: format!("publish under {}", req.staging_tag),
        }]
    }

    fn stage<'a>(&'a self, req: &'a StageRequest) -> BoxFuture<'a, Result<(), PlatformError>> {
        async move {
            if let Some(message) = self.stage_panics {
                panic!("{message}");
            }
            if self.verify_only {
                // As a platform's API answers for a version it does not list.
                return Err(PlatformError::permanent(format!(
                    "{} is not listed on the platform, which is only verified, never written to",
                    req.key
                ))
                .with_status(404));
            }
            let now = self.in_stage.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_stage.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.stage_delay).await;
            let digest = self.expected_digest(req).await?;
            if self.local_staging {
                self.state
                    .lock()
                    .unwrap()
                    .writes
                    .push(format!("check {}", req.key));
                self.in_stage.fetch_sub(1, Ordering::SeqCst);
                return Ok(());
            }
            {
                let mut s = self.state.lock().unwrap();
                s.writes.push(format!(
                    "stage {} {}{}",
                    req.key,
                    req.staging_tag,
                    with_files("companions", &req.companions)
                ));
                s.staged.insert(id(&req.key, &req.staging_tag), digest);
            }
            self.in_stage.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }
        .boxed()
    }

    fn read_staged<'a>(
        &'a self,
        key: &'a DistributionKey,
        tag: &'a DistTag,
    ) -> BoxFuture<'a, Result<Option<Observed>, PlatformError>> {
        self.staged_reads.fetch_add(1, Ordering::SeqCst);
        let found = self
            .state
            .lock()
            .unwrap()
            .staged
            .get(&id(key, tag))
            .cloned();
        async move { Ok(found.map(observed)) }.boxed()
    }

    fn plan_promote(&self, req: &PromoteRequest) -> Vec<PlannedWrite> {
        vec![PlannedWrite {
            method: "PUT",
            url: format!("http://127.0.0.1/{}/{}", req.key.package, req.release_tag),
            what: format!("move {} to {}", req.release_tag, req.staged_digest),
        }]
    }

    fn promote<'a>(&'a self, req: &'a PromoteRequest) -> BoxFuture<'a, Result<(), PlatformError>> {
        if self.verify_only {
            return async move {
                Err(PlatformError::permanent(format!(
                    "{} is not listed in production; the platform is never written to",
                    req.key
                )))
            }
            .boxed();
        }
        let not_yet = self
            .promote_not_yet
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if not_yet {
            return async move {
                Err(PlatformError::not_yet(
                    format!("{} is not indexed yet", req.key),
                    Duration::from_millis(10),
                ))
            }
            .boxed();
        }
        let mut s = self.state.lock().unwrap();
        if self.reupload {
            s.writes.push(format!(
                "upload {} {}{}{}",
                req.key,
                req.release_tag,
                with_files("artifacts", &req.artifacts),
                with_files("companions", &req.companions)
            ));
        } else {
            s.writes
                .push(format!("promote {} {}", req.key, req.release_tag));
        }
        s.promoted
            .insert(id(&req.key, &req.release_tag), req.staged_digest.clone());
        async move { Ok(()) }.boxed()
    }

    fn read_promoted<'a>(
        &'a self,
        key: &'a DistributionKey,
        tag: &'a DistTag,
    ) -> BoxFuture<'a, Result<Option<Observed>, PlatformError>> {
        let found = self
            .state
            .lock()
            .unwrap()
            .promoted
            .get(&id(key, tag))
            .cloned();
        async move { Ok(found.map(observed)) }.boxed()
    }

    fn default_tags(&self, _key: &DistributionKey) -> (DistTag, DistTag) {
        (DistTag::new("rc").unwrap(), DistTag::latest())
    }

    fn staging(&self) -> Staging {
        if self.local_staging {
            Staging::Local
        } else {
            Staging::Platform
        }
    }

    fn promotion(&self) -> PromotionMechanism {
        if self.verify_only {
            PromotionMechanism::None
        } else if self.reupload {
            PromotionMechanism::Reupload
        } else {
            PromotionMechanism::DistTag
        }
    }

    fn companions(&self, artifact: &ArtifactPath) -> Vec<ArtifactPath> {
        self.companion_suffix
            .map(|suffix| ArtifactPath::new(format!("{artifact}{suffix}")).expect("companion path"))
            .into_iter()
            .collect()
    }
}

/// `" <what>: a, b"` for the paths of `files`, or nothing when there are none.
fn with_files(what: &str, files: &[Sealed]) -> String {
    if files.is_empty() {
        return String::new();
    }
    let paths: Vec<String> = files.iter().map(|f| f.path().to_string()).collect();
    format!(" {what}: {}", paths.join(", "))
}

/// `bytes` sealed as the pipeline seals a voted file at `path`, for calling an adapter
/// directly.
pub fn sealed(path: &str, bytes: &[u8]) -> Sealed {
    use sha3::Digest as _;
    let entry = ManifestEntry {
        path: ArtifactPath::new(path).expect("artifact path"),
        size: bytes.len() as u64,
        sha3_256: atr_dist_shared::manifest::Sha3Hex::from_bytes(
            sha3::Sha3_256::digest(bytes).into(),
        ),
    };
    atr_dist::seal::Sealer::default()
        .seal_bytes(&entry, bytes::Bytes::copy_from_slice(bytes))
        .expect("sealed")
}

/// Revision directories laid out as ATR lays them out: `<root>/<project>/<version>/<rev>/`.
pub struct Revisions {
    pub dir: tempfile::TempDir,
}

impl Revisions {
    pub fn new() -> Revisions {
        Revisions {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `files` as revision `rev` of example 1.0.0.
    pub fn write(&self, rev: &str, files: &[(&str, &[u8])]) -> PathBuf {
        self.write_release("example", "1.0.0", rev, files)
    }

    /// Writes `files` as revision `rev` of release `project`-`version`.
    pub fn write_release(
        &self,
        project: &str,
        version: &str,
        rev: &str,
        files: &[(&str, &[u8])],
    ) -> PathBuf {
        let dir = self.root().join(project).join(version).join(rev);
        for (path, content) in files {
            let file = dir.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, content).unwrap();
        }
        dir
    }
}

impl Default for Revisions {
    fn default() -> Self {
        Revisions::new()
    }
}

/// A pipeline with the given adapters, revisions from `root`.
pub fn pipeline_with(
    db: DatabaseConnection,
    queue: Queue,
    root: &Path,
    adapters: Adapters,
) -> Pipeline {
    Pipeline {
        db,
        queue,
        adapters,
        sources: Sources {
            dir: Some(Arc::new(DirSource::new(root))),
            atr: None,
        },
        lock_ttl: Duration::from_secs(5),
        staging_tags: HashMap::new(),
        per_platform: HashMap::new(),
        wait_deadlines: HashMap::new(),
        waits: atr_dist::pipeline::wait::Schedule::default(),
        sealer: atr_dist::seal::Sealer::default(),
        retry_limits: atr_dist::platform::http::RetryLimits::default(),
        closing: Default::default(),
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A fresh results database, migrated, on SQLite or PostgreSQL; removed when this value is
/// dropped.
pub struct ResultsDb {
    pub db: DatabaseConnection,
    _pg: Option<PgDatabase>,
    _sqlite: Option<SqliteDatabase>,
}

impl ResultsDb {
    pub async fn create(which: Db) -> ResultsDb {
        let (url, pg, sqlite) = match which {
            Db::Sqlite => {
                let s = SqliteDatabase::create();
                (s.url.clone(), None, Some(s))
            }
            Db::Postgres => {
                let p = PgDatabase::create().await;
                (p.url.clone(), Some(p), None)
            }
        };
        let db = atr_dist::db::connect(&atr_dist::secret::Secret::new(url), 4)
            .await
            .unwrap();
        atr_dist::db::migrate_up(&db).await.unwrap();
        ResultsDb {
            db,
            _pg: pg,
            _sqlite: sqlite,
        }
    }
}

/// A running pipeline: a fresh database (migrated), a fresh queue, revision directories,
/// and a worker pool running the pipeline with `adapters`, with the audit pass that closes
/// the rows of abandoned attempts running beside it, as `atr-dist run` has them.
pub struct Harness {
    pub t: TestQueue,
    pub revs: Revisions,
    pub db: DatabaseConnection,
    pool: Option<RunningPool>,
    audit: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    _results: ResultsDb,
}

impl Harness {
    pub async fn new(which: Db, adapters: Adapters, retry: RetryConfig) -> Harness {
        Harness::custom(which, adapters, retry, |_| {}).await
    }

    /// As `new`, with `adjust` changing the pipeline (e.g. its sources) before it starts.
    pub async fn custom(
        which: Db,
        adapters: Adapters,
        retry: RetryConfig,
        adjust: impl FnOnce(&mut Pipeline),
    ) -> Harness {
        Harness::build(which, adapters, retry, |p, _| adjust(p), |_| {}).await
    }

    /// As `new`, on a queue of its own whose distribution locks are `other`'s: a second
    /// queue of the same deployment.
    pub async fn sharing_locks_with(
        which: Db,
        adapters: Adapters,
        retry: RetryConfig,
        other: &Harness,
    ) -> Harness {
        let namespace = other.t.name.clone();
        Harness::build_on(
            which,
            adapters,
            pool_config(4, retry),
            |_, _| {},
            Some(namespace),
        )
        .await
    }

    /// As `custom`, with the root of the revision directories given to `adjust` too.
    pub async fn custom_at(
        which: Db,
        adapters: Adapters,
        retry: RetryConfig,
        adjust: impl FnOnce(&mut Pipeline, &Path),
    ) -> Harness {
        Harness::build(which, adapters, retry, adjust, |_| {}).await
    }

    /// As `custom_at`, with `adjust_pool` changing the pool's configuration (e.g. its job
    /// timeout) too.
    pub async fn build(
        which: Db,
        adapters: Adapters,
        retry: RetryConfig,
        adjust: impl FnOnce(&mut Pipeline, &Path),
        adjust_pool: impl FnOnce(&mut PoolConfig),
    ) -> Harness {
        let mut config = pool_config(4, retry);
        adjust_pool(&mut config);
        Harness::with_pool(which, adapters, config, adjust).await
    }

    /// As `custom_at`, with the worker pool configured by `pool` (e.g. a short
    /// `job_timeout`).
    pub async fn with_pool(
        which: Db,
        adapters: Adapters,
        pool: PoolConfig,
        adjust: impl FnOnce(&mut Pipeline, &Path),
    ) -> Harness {
        Harness::build_on(which, adapters, pool, adjust, None).await
    }

    async fn build_on(
        which: Db,
        adapters: Adapters,
        pool: PoolConfig,
        adjust: impl FnOnce(&mut Pipeline, &Path),
        locks_of: Option<String>,
    ) -> Harness {
        let results = ResultsDb::create(which).await;
        let db = results.db.clone();
        let mut t = TestQueue::new().await;
        if let Some(name) = locks_of {
            t.queue = t
                .queue
                .clone()
                .with_lock_namespace(&crate::redis_support::lock_namespace(&name));
        }
        let revs = Revisions::new();
        let mut p = pipeline_with(db.clone(), t.queue.clone(), revs.root(), adapters);
        adjust(&mut p, revs.root());
        let stop_audit = CancellationToken::new();
        let audit = atr_dist::pipeline::audit::spawn(
            db.clone(),
            t.queue.clone(),
            pool.lease,
            stop_audit.clone(),
        );
        let pool = RunningPool::start(&t.queue, p, pool);
        Harness {
            t,
            revs,
            db,
            pool: Some(pool),
            audit: Some((stop_audit, audit)),
            _results: results,
        }
    }

    /// Stops the worker pool (as on SIGTERM) and the audit pass; the queue and the database
    /// stay for the test to look at.
    pub async fn stop_pool(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.stop().await;
        }
        if let Some((stop, audit)) = self.audit.take() {
            stop.cancel();
            audit.await.unwrap();
        }
    }

    /// Enqueues `envelope` and waits until it is done, dead or cancelled.
    pub async fn run(&self, envelope: &Envelope, max_attempts: u32) -> JobState {
        let e = self
            .t
            .queue
            .enqueue(envelope, None, max_attempts)
            .await
            .unwrap();
        let q = &self.t.queue;
        eventually("job settles", Duration::from_secs(60), || async {
            q.show(&e.id)
                .await
                .unwrap()
                .unwrap()
                .summary
                .state
                .is_terminal()
        })
        .await;
        q.show(&e.id).await.unwrap().unwrap().summary.state
    }

    /// `run`, asserting that the job ended `done`; the failure message is its last error.
    pub async fn run_to_done(&self, envelope: &Envelope, max_attempts: u32) {
        assert_eq!(
            self.run(envelope, max_attempts).await,
            JobState::Done,
            "{}",
            self.last_error(envelope).await
        );
    }

    pub async fn last_error(&self, envelope: &Envelope) -> String {
        let s = self
            .t
            .queue
            .show(&envelope.id.to_string())
            .await
            .unwrap()
            .unwrap()
            .summary;
        s.last_error.unwrap_or_default()
    }

    pub async fn row(&self) -> Option<distribution::Model> {
        distribution::Entity::find().one(&self.db).await.unwrap()
    }

    pub async fn runs(&self, job: &Envelope) -> Vec<job_run::Model> {
        job_run::Entity::find()
            .filter(job_run::Column::JobId.eq(job.id.to_string()))
            .order_by_asc(job_run::Column::Attempt)
            .all(&self.db)
            .await
            .unwrap()
    }

    pub async fn stop(mut self) {
        self.stop_pool().await;
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some((stop, _)) = &self.audit {
            stop.cancel();
        }
    }
}
