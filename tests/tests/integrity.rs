//! Release integrity against the real registries (verdaccio, Debian's docker-registry),
//! through the real pipeline:
//! - a revision file replaced after it was read, or rewritten while it is read, never
//!   reaches a registry: what is published is the voted bytes or nothing;
//! - a write whose answer is lost (a 502 or 504 after the registry acted, a 409 "exists")
//!   is settled by reading the registry back, never by a blind second write;
//! - retries inside one attempt are bounded, counted in `job_run`, and in the timeline.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use atr_dist::config::RetryConfig;
use atr_dist::platform::Adapters;
use atr_dist::platform::npm::NpmAdapter;
use atr_dist::platform::oci::{OciAdapter, OciSettings};
use atr_dist::seal::ByteStream;
use atr_dist::secret::Secret;
use atr_dist::source::{DirSource, RevisionSource, SourceError};
use atr_dist_shared::job::{ReleaseRef, RevisionSourceSpec};
use atr_dist_shared::names::{ArtifactPath, RevisionNumber};
use atr_dist_shared::{Envelope, JobState, Platform, RevisionManifest};
use atr_dist_tests::fault_proxy::{Fault, FaultProxy};
use atr_dist_tests::jobs::Dist;
use atr_dist_tests::npm_support::{Verdaccio, tarball};
use atr_dist_tests::oci_support::{
    OciImage, Registry, RegistryAuth, registry_has_blob, registry_manifest, single_image,
};
use atr_dist_tests::pipeline_support::{Db, Harness};
use base64::Engine as _;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use sha2::{Digest as _, Sha512};
use url::Url;

const FAST: RetryConfig = RetryConfig {
    base_ms: 20,
    cap_ms: 100,
    max_attempts: 3,
};

/// When a [`Swapping`] source changes a file.
#[derive(Clone, Copy)]
enum Swap {
    /// Right after opening it, in place (same inode): the bytes read are not the voted
    /// ones.
    WhileRead,
    /// Once it has been read to its end: the moment an adapter that opened the path again
    /// would have read it.
    AfterRead,
}

/// A `dir` source whose artifact files are replaced with `with` (an attacker, or a
/// careless sync job, writing into the revision directory while a job runs).
struct Swapping {
    inner: DirSource,
    root: PathBuf,
    when: Swap,
    with: Vec<u8>,
    swaps: Arc<AtomicUsize>,
}

impl RevisionSource for Swapping {
    fn manifest<'a>(
        &'a self,
        release: &'a ReleaseRef,
        revision: &'a RevisionNumber,
    ) -> BoxFuture<'a, Result<RevisionManifest, SourceError>> {
        self.inner.manifest(release, revision)
    }

    fn open<'a>(
        &'a self,
        release: &'a ReleaseRef,
        revision: &'a RevisionNumber,
        path: &'a ArtifactPath,
    ) -> BoxFuture<'a, Result<ByteStream, SourceError>> {
        async move {
            let file = self
                .root
                .join(release.project_key.as_str())
                .join(release.version_key.as_str())
                .join(revision.as_str())
                .join(path.as_str());
            let stream = self.inner.open(release, revision, path).await?;
            let (with, swaps) = (self.with.clone(), Arc::clone(&self.swaps));
            let swap = move || {
                std::fs::write(&file, &with).unwrap();
                swaps.fetch_add(1, Ordering::SeqCst);
            };
            Ok(match self.when {
                Swap::WhileRead => {
                    swap();
                    stream
                }
                Swap::AfterRead => stream
                    .chain(futures::stream::once(async move {
                        swap();
                        Ok(bytes::Bytes::new())
                    }))
                    .boxed(),
            })
        }
        .boxed()
    }
}

fn npm_adapters(url: &str, token: &str) -> Adapters {
    let a = NpmAdapter::new(Url::parse(url).unwrap(), Some(Secret::new(token))).unwrap();
    Adapters::default().with(Platform::Npm, Arc::new(a))
}

/// The real pipeline with `adapters`; with `swap`, its `dir` source replaces artifact
/// files with other bytes; the count of swaps made is returned.
async fn harness(adapters: Adapters, swap: Option<(Swap, Vec<u8>)>) -> (Harness, Arc<AtomicUsize>) {
    let swaps = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&swaps);
    let h = Harness::custom_at(Db::Sqlite, adapters, FAST, move |p, root| {
        if let Some((when, with)) = swap {
            p.sources.dir = Some(Arc::new(Swapping {
                inner: DirSource::new(root),
                root: root.to_owned(),
                when,
                with,
                swaps: counted,
            }));
        }
    })
    .await;
    (h, swaps)
}

/// The packument of `name`, read straight from the registry.
async fn packument(registry: &Verdaccio, name: &str) -> Option<serde_json::Value> {
    let resp = reqwest::get(format!("{}{name}", registry.url()))
        .await
        .unwrap();
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return None;
    }
    Some(resp.json().await.unwrap())
}

fn sri(bytes: &[u8]) -> String {
    format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(Sha512::digest(bytes))
    )
}

fn npm_job(name: &'static str) -> (Dist, String) {
    (
        Dist::new(Platform::Npm, "", name, "1.0.0"),
        format!("{name}-1.0.0.tgz"),
    )
}

fn stage(d: &Dist, file: &str) -> Envelope {
    d.stage("00001", &[file], RevisionSourceSpec::Dir, false)
}

/// The events of a job, as `jobs show` lists them: (event, message).
async fn events(h: &Harness, e: &Envelope) -> Vec<(String, String)> {
    h.t.queue
        .show(&e.id.to_string())
        .await
        .unwrap()
        .unwrap()
        .events
        .into_iter()
        .map(|ev| (ev.event, ev.message.unwrap_or_default()))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The bytes published are the bytes checked.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_publishes_the_voted_bytes_when_the_file_is_replaced_after_it_was_read() {
    let registry = Verdaccio::start().await;
    let voted = tarball("swapped-after", "1.0.0", "voted");
    let other = tarball(
        "swapped-after",
        "1.0.0",
        "NOT VOTED, and longer than the voted body",
    );
    let (h, swaps) = harness(
        npm_adapters(&registry.url(), &registry.token),
        Some((Swap::AfterRead, other)),
    )
    .await;
    let (d, file) = npm_job("swapped-after");
    h.revs.write("00001", &[(&file, &voted)]);
    h.run_to_done(&stage(&d, &file), 3).await;
    assert_eq!(swaps.load(Ordering::SeqCst), 1, "the file was replaced");

    // What the registry holds is the voted tarball, byte for byte.
    let doc = packument(&registry, "swapped-after").await.unwrap();
    let dist = &doc["versions"]["1.0.0"]["dist"];
    assert_eq!(dist["integrity"], sri(&voted), "{doc}");
    let served = reqwest::get(dist["tarball"].as_str().unwrap())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(served.as_ref(), voted.as_slice());
    assert_eq!(
        h.row().await.unwrap().platform_digest.as_deref(),
        Some(sri(&voted).as_str())
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_publishes_nothing_when_the_file_changes_while_it_is_read() {
    let registry = Verdaccio::start().await;
    let voted = tarball("swapped-during", "1.0.0", "voted");
    // Same length, other bytes: only the hash of what was read can tell.
    let mut other = voted.clone();
    let last = other.len() - 1;
    other[last] ^= 0xff;
    let (h, swaps) = harness(
        npm_adapters(&registry.url(), &registry.token),
        Some((Swap::WhileRead, other)),
    )
    .await;
    let (d, file) = npm_job("swapped-during");
    h.revs.write("00001", &[(&file, &voted)]);
    let job = stage(&d, &file);
    assert_eq!(h.run(&job, 3).await, JobState::Dead);
    assert!(swaps.load(Ordering::SeqCst) >= 1);
    let error = h.last_error(&job).await;
    assert!(
        error.contains("does not match the voted manifest"),
        "{error}"
    );
    assert_eq!(packument(&registry, "swapped-during").await, None);
    h.stop().await;
}

fn oci_adapters(registry: &Url) -> Adapters {
    let a = OciAdapter::new(OciSettings {
        registry: registry.clone(),
        staging_namespace: None,
        username: None,
        token: None,
        token_realms: Vec::new(),
    })
    .unwrap();
    Adapters::default().with(Platform::DockerHub, Arc::new(a))
}

fn oci_stage(package: &str, image: &OciImage) -> Envelope {
    let paths: Vec<String> = image.paths().iter().map(ToString::to_string).collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    Dist::new(Platform::DockerHub, "apache", package, "1.0.0").stage(
        "00001",
        &refs,
        RevisionSourceSpec::Dir,
        false,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_pushes_the_voted_blobs_when_files_are_replaced_after_they_were_read() {
    let registry = Registry::start(RegistryAuth::None).await;
    let image = single_image("image", "voted layer");
    let (h, swaps) = harness(
        oci_adapters(&registry.url),
        Some((Swap::AfterRead, b"a layer nobody voted on".to_vec())),
    )
    .await;
    h.revs.write("00001", &image.file_refs());
    h.run_to_done(&oci_stage("swapped", &image), 3).await;
    assert_eq!(swaps.load(Ordering::SeqCst), image.files.len());
    assert_eq!(
        registry_manifest(&registry.url, "apache/swapped", "rc-1.0.0")
            .await
            .map(|(digest, _)| digest),
        Some(image.digest.clone())
    );
    for blob in &image.blobs {
        assert!(registry_has_blob(&registry.url, "apache/swapped", blob).await);
    }
    let other = atr_dist_tests::oci_support::sha256(b"a layer nobody voted on");
    assert!(!registry_has_blob(&registry.url, "apache/swapped", &other).await);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_pushes_nothing_when_a_file_changes_while_it_is_read() {
    let registry = Registry::start(RegistryAuth::None).await;
    let image = single_image("image", "voted layer");
    let (h, _swaps) = harness(
        oci_adapters(&registry.url),
        Some((Swap::WhileRead, b"a layer nobody voted on".to_vec())),
    )
    .await;
    h.revs.write("00001", &image.file_refs());
    let job = oci_stage("swapped-during", &image);
    assert_eq!(h.run(&job, 3).await, JobState::Dead);
    let error = h.last_error(&job).await;
    assert!(
        error.contains("does not match the voted manifest"),
        "{error}"
    );
    assert_eq!(
        registry_manifest(&registry.url, "apache/swapped-during", "rc-1.0.0").await,
        None
    );
    h.stop().await;
}

// ---------------------------------------------------------------------------------------
// A lost answer to a write is settled by reading the registry back.

async fn npm_behind_proxy(name: &'static str) -> (Verdaccio, FaultProxy, Harness, Dist, String) {
    let registry = Verdaccio::start().await;
    let proxy = FaultProxy::start(&Url::parse(&registry.url()).unwrap()).await;
    let (h, _) = harness(npm_adapters(proxy.url.as_str(), &registry.token), None).await;
    let (d, file) = npm_job(name);
    h.revs
        .write("00001", &[(&file, &tarball(name, "1.0.0", "voted"))]);
    (registry, proxy, h, d, file)
}

/// PUTs of the package document (publishes), as opposed to dist-tag PUTs.
fn publishes(proxy: &FaultProxy, name: &str) -> (usize, usize) {
    let seen = proxy.seen();
    let publish =
        |s: &&atr_dist_tests::fault_proxy::Seen| s.method == "PUT" && s.path == format!("/{name}");
    (
        seen.iter().filter(publish).filter(|s| !s.injected).count(),
        seen.iter().filter(publish).count(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_publish_whose_answer_is_lost_is_found_done_not_sent_again() {
    for (status, name) in [(502, "lost-502"), (504, "lost-504"), (409, "lost-409")] {
        let (registry, proxy, h, d, file) = npm_behind_proxy(name).await;
        // The registry publishes; the answer the worker gets is an error.
        proxy.inject(
            Fault::new(status)
                .method("PUT")
                .path_contains(&format!("/{name}"))
                .after_forwarding(),
        );
        let job = stage(&d, &file);
        h.run_to_done(&job, 3).await;
        assert_eq!(
            h.runs(&job).await.len(),
            1,
            "{name}: settled inside one attempt"
        );
        assert_eq!(
            publishes(&proxy, name),
            (1, 1),
            "{name}: one publish, never repeated"
        );
        assert_eq!(
            registry.dist_tags(name).await["rc"],
            "1.0.0",
            "{name}: staged under rc"
        );
        let timeline = events(&h, &job).await;
        assert!(
            timeline.iter().any(|(e, m)| e == "write_read_back"
                && m.contains(&status.to_string())
                && m.contains("holds what was written")),
            "{name}: {timeline:?}"
        );
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_publish_that_never_arrived_is_sent_again() {
    let (registry, proxy, h, d, file) = npm_behind_proxy("never-arrived").await;
    // A proxy answers 502 without passing the publish on: the registry has nothing.
    proxy.inject(
        Fault::new(502)
            .method("PUT")
            .path_contains("/never-arrived"),
    );
    let job = stage(&d, &file);
    h.run_to_done(&job, 3).await;
    assert_eq!(h.runs(&job).await.len(), 1);
    assert_eq!(
        publishes(&proxy, "never-arrived"),
        (1, 2),
        "sent again once"
    );
    assert_eq!(registry.dist_tags("never-arrived").await["rc"], "1.0.0");
    let timeline = events(&h, &job).await;
    assert!(
        timeline
            .iter()
            .any(|(e, m)| e == "write_read_back" && m.contains("nothing there")),
        "{timeline:?}"
    );
    assert!(
        timeline.iter().any(|(e, _)| e == "http_retry"),
        "the second send is a retry of the attempt's budget: {timeline:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_read_back_that_finds_other_bytes_is_refused_with_both_digests() {
    let (_registry, proxy, h, d, file) = npm_behind_proxy("lied-to").await;
    proxy.inject(
        Fault::new(502)
            .method("PUT")
            .path_contains("/lied-to")
            .after_forwarding(),
    );
    // The two reads before the publish pass; the read-back after it is a lie.
    let other = sri(b"other bytes");
    let lie = serde_json::json!({
        "name": "lied-to",
        "dist-tags": {"rc": "1.0.0"},
        "versions": {"1.0.0": {"dist": {"integrity": other, "shasum": "00"}}},
    });
    proxy.inject(
        Fault::new(200)
            .method("GET")
            .path_contains("/lied-to")
            .skip(2)
            .body("application/json", &lie.to_string()),
    );
    let job = stage(&d, &file);
    assert_eq!(h.run(&job, 3).await, JobState::Dead);
    let error = h.last_error(&job).await;
    let voted = sri(&tarball("lied-to", "1.0.0", "voted"));
    assert!(
        error.contains(&other) && error.contains(&voted),
        "both digests named: {error}"
    );
    assert_eq!(publishes(&proxy, "lied-to"), (1, 1));
    h.stop().await;
}

/// `name` 0.9.0 promoted (latest) and 1.0.0 staged, behind a proxy: promoting 1.0.0 has
/// to move `latest`.
async fn npm_with_latest_to_move(
    name: &'static str,
) -> (Verdaccio, FaultProxy, Harness, Dist, String) {
    let (registry, proxy, h, d, file) = npm_behind_proxy(name).await;
    let old = Dist::new(Platform::Npm, "", name, "0.9.0");
    let old_file = format!("{name}-0.9.0.tgz");
    h.revs.write_release(
        "example",
        "0.9.0",
        "00001",
        &[(&old_file, &tarball(name, "0.9.0", "old"))],
    );
    h.run_to_done(&stage(&old, &old_file), 3).await;
    h.run_to_done(&old.promote("00001", RevisionSourceSpec::Dir, "rm"), 3)
        .await;
    h.run_to_done(&stage(&d, &file), 3).await;
    assert_eq!(registry.dist_tags(name).await["latest"], "0.9.0");
    // The first publish made 0.9.0 latest, and publishing 1.0.0 under rc left it there:
    // nothing was sent to move it (or to move it back).
    assert_eq!(latest_moves(&proxy), (0, 0));
    (registry, proxy, h, d, file)
}

/// PUTs moving `latest`: (reached the registry, sent).
fn latest_moves(proxy: &FaultProxy) -> (usize, usize) {
    let seen = proxy.seen();
    let moves = |s: &&atr_dist_tests::fault_proxy::Seen| {
        s.method == "PUT" && s.path.contains("/dist-tags/latest")
    };
    (
        seen.iter().filter(moves).filter(|s| !s.injected).count(),
        seen.iter().filter(moves).count(),
    )
}

/// The packument reads of a promote before it moves the tag: the pipeline's of the release
/// and the staging tag, then the adapter's of the version.
const GETS_BEFORE_PROMOTE_WRITE: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_tag_move_that_never_arrived_is_sent_again() {
    let (registry, proxy, h, d, _) = npm_with_latest_to_move("tag-unsent").await;
    // A proxy answers 502 without passing the move on: latest still points at 0.9.0.
    proxy.inject(
        Fault::new(502)
            .method("PUT")
            .path_contains("/dist-tags/latest"),
    );
    let promote = d.promote("00001", RevisionSourceSpec::Dir, "rm");
    h.run_to_done(&promote, 3).await;
    assert_eq!(
        h.runs(&promote).await.len(),
        1,
        "settled inside one attempt"
    );
    assert_eq!(registry.dist_tags("tag-unsent").await["latest"], "1.0.0");
    assert_eq!(latest_moves(&proxy), (1, 2), "sent again once");
    let timeline = events(&h, &promote).await;
    assert!(
        timeline
            .iter()
            .any(|(e, m)| e == "write_read_back" && m.contains("nothing there")),
        "{timeline:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_tag_moved_by_someone_else_meanwhile_is_refused() {
    let (_registry, proxy, h, d, _) = npm_with_latest_to_move("tag-raced").await;
    proxy.inject(
        Fault::new(504)
            .method("PUT")
            .path_contains("/dist-tags/latest"),
    );
    // The reads before the move pass; the read-back after it finds latest at 0.5.0.
    let raced = serde_json::json!({
        "name": "tag-raced",
        "dist-tags": {"latest": "0.5.0", "rc": "1.0.0"},
        "versions": {},
    });
    proxy.inject(
        Fault::new(200)
            .method("GET")
            .path_contains("/tag-raced")
            .skip(GETS_BEFORE_PROMOTE_WRITE)
            .body("application/json", &raced.to_string()),
    );
    let promote = d.promote("00001", RevisionSourceSpec::Dir, "rm");
    assert_eq!(h.run(&promote, 3).await, JobState::Dead);
    let error = h.last_error(&promote).await;
    assert!(
        error.contains("points at 0.5.0, not 1.0.0, and at 0.9.0 before the move"),
        "{error}"
    );
    assert_eq!(latest_moves(&proxy), (0, 1), "not sent again over it");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_tag_move_whose_answer_is_lost_is_read_not_repeated() {
    let (registry, proxy, h, d, _) = npm_with_latest_to_move("tag-lost").await;
    proxy.inject(
        Fault::new(504)
            .method("PUT")
            .path_contains("/dist-tags/latest")
            .after_forwarding(),
    );
    let promote = d.promote("00001", RevisionSourceSpec::Dir, "rm");
    h.run_to_done(&promote, 3).await;
    assert_eq!(registry.dist_tags("tag-lost").await["latest"], "1.0.0");
    let moves = proxy
        .seen()
        .iter()
        .filter(|s| s.method == "PUT" && s.path.contains("/dist-tags/latest"))
        .count();
    assert_eq!(
        moves,
        1,
        "the tag was read, not moved again: {:?}",
        proxy.seen()
    );
    assert!(h.row().await.unwrap().promoted);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_writes_whose_answers_are_lost_are_found_done() {
    let registry = Registry::start(RegistryAuth::None).await;
    let proxy = FaultProxy::start(&registry.url).await;
    let (h, _) = harness(oci_adapters(&proxy.url), None).await;
    let image = single_image("image", "lost answers");
    h.revs.write("00001", &image.file_refs());
    // The first blob upload and the tag's manifest PUT reach the registry; their answers
    // are lost.
    proxy.inject(
        Fault::new(502)
            .method("PUT")
            .path_contains("/blobs/uploads/")
            .after_forwarding(),
    );
    proxy.inject(
        Fault::new(504)
            .method("PUT")
            .path_contains("/manifests/rc-1.0.0")
            .after_forwarding(),
    );
    let job = oci_stage("lost", &image);
    h.run_to_done(&job, 3).await;
    assert_eq!(h.runs(&job).await.len(), 1);
    assert_eq!(
        proxy.forwarded("PUT", "/blobs/uploads/"),
        2,
        "config and layer, each once: {:?}",
        proxy.seen()
    );
    assert_eq!(proxy.forwarded("PUT", "/manifests/"), 1);
    assert_eq!(
        registry_manifest(&registry.url, "apache/lost", "rc-1.0.0")
            .await
            .map(|(d, _)| d),
        Some(image.digest.clone())
    );
    let read_backs = events(&h, &job)
        .await
        .into_iter()
        .filter(|(e, _)| e == "write_read_back")
        .count();
    assert_eq!(read_backs, 2);
    h.stop().await;
}

// ---------------------------------------------------------------------------------------
// Retries inside an attempt are bounded, counted and visible.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_that_stays_unavailable_ends_the_attempt_after_the_budget() {
    let (_registry, proxy, h, d, file) = npm_behind_proxy("always-busy").await;
    // 503 with Retry-After: 1, for every request, for good.
    proxy.inject(Fault::new(503).retry_after(1).times(usize::MAX));
    let job = stage(&d, &file);
    // One attempt allowed: its end is the job's.
    assert_eq!(h.run(&job, 1).await, JobState::Dead);
    let runs = h.runs(&job).await;
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    // The default budget: three retries (and 30 s of waiting, of which 3 s are used).
    assert_eq!((run.http_requests, run.http_retries), (Some(4), Some(3)));
    assert_eq!(run.error_class.as_deref(), Some("transient"));
    // The platform's last answer is on the run, for the operator.
    assert_eq!(run.http_status, Some(503));
    assert!(
        run.message
            .as_deref()
            .unwrap_or("")
            .contains("gave up inside this attempt after 3 retries"),
        "{run:?}"
    );
    assert_eq!(proxy.injected(), 4, "{:?}", proxy.seen());
    let retries: Vec<String> = events(&h, &job)
        .await
        .into_iter()
        .filter(|(e, _)| e == "http_retry")
        .map(|(_, m)| m)
        .collect();
    assert_eq!(retries.len(), 3, "{retries:?}");
    assert!(retries[0].contains("Retry-After 1s"), "{retries:?}");
    h.stop().await;
}
