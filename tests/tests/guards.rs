//! The pipeline's guards of the promise, against the real verdaccio and docker-registry,
//! behind a fault proxy that can lie on reads. Each test fails when its guard is removed:
//! - what the platform reports after staging or promoting must be what was voted and
//!   staged, or nothing is recorded;
//! - a promotion on record whose release tag has moved since is reported, not redone;
//! - a promote needs atr-dist's own staging record, readable, and the staged bytes still on
//!   the platform;
//! - changed files are refused, and a failed result write is retried without a second
//!   publish or tag move, on the real registries too, and when they lie on read-back.

use std::sync::Arc;
use std::time::Duration;

use atr_dist::config::RetryConfig;
use atr_dist::platform::Adapters;
use atr_dist::platform::npm::NpmAdapter;
use atr_dist::platform::oci::{OciAdapter, OciSettings};
use atr_dist::secret::Secret;
use atr_dist_shared::entities::distribution;
use atr_dist_shared::job::RevisionSourceSpec;
use atr_dist_shared::{Envelope, JobState, Platform};
use atr_dist_tests::cases::eventually;
use atr_dist_tests::fault_proxy::{Fault, FaultProxy};
use atr_dist_tests::jobs::Dist;
use atr_dist_tests::npm_support::{Verdaccio, integrity, packument_claiming, tarball};
use atr_dist_tests::oci_support::{
    OciImage, Registry, RegistryAuth, registry_manifest, sha256, single_image,
};
use atr_dist_tests::pipeline_support::{Db, Harness};
use sea_orm::{ActiveModelTrait, ConnectionTrait, EntityTrait, Set};
use serde_json::json;
use url::Url;

const FAST: RetryConfig = RetryConfig {
    base_ms: 20,
    cap_ms: 100,
    max_attempts: 5,
};

/// Slow enough for a test to act between two attempts.
const SLOW: RetryConfig = RetryConfig {
    base_ms: 300,
    cap_ms: 600,
    max_attempts: 10,
};

/// verdaccio behind a fault proxy, and the real pipeline publishing through the proxy.
struct Npm {
    registry: Verdaccio,
    proxy: FaultProxy,
    h: Harness,
}

async fn npm(retry: RetryConfig) -> Npm {
    let registry = Verdaccio::start().await;
    let proxy = FaultProxy::start(&Url::parse(&registry.url()).unwrap()).await;
    let adapter = NpmAdapter::new(proxy.url.clone(), Some(Secret::new(&registry.token))).unwrap();
    let adapters = Adapters::default().with(Platform::Npm, Arc::new(adapter));
    let h = Harness::new(Db::Sqlite, adapters, retry).await;
    Npm { registry, proxy, h }
}

/// docker-registry behind a fault proxy, and the real pipeline pushing through the proxy.
struct Oci {
    registry: Registry,
    proxy: FaultProxy,
    h: Harness,
}

async fn oci(retry: RetryConfig) -> Oci {
    let registry = Registry::start(RegistryAuth::None).await;
    let proxy = FaultProxy::start(&registry.url).await;
    let adapter = OciAdapter::new(OciSettings {
        registry: proxy.url.clone(),
        staging_namespace: None,
        username: None,
        token: None,
        token_realms: Vec::new(),
    })
    .unwrap();
    let adapters = Adapters::default().with(Platform::DockerHub, Arc::new(adapter));
    let h = Harness::new(Db::Sqlite, adapters, retry).await;
    Oci { registry, proxy, h }
}

/// npm package `name` at `version`, of release example-`version`.
fn npm_dist(name: &str, version: &str) -> Dist {
    Dist::new(Platform::Npm, "", name, version)
}

fn npm_file(d: &Dist) -> String {
    format!("{}-{}.tgz", d.package, d.version)
}

/// Writes `d`'s tarball (with `body` as its code) as revision `rev`; returns its bytes.
fn write_npm(h: &Harness, d: &Dist, rev: &str, body: &str) -> Vec<u8> {
    let bytes = tarball(&d.package, &d.version, body);
    h.revs
        .write_release("example", &d.version, rev, &[(&npm_file(d), &bytes)]);
    bytes
}

fn npm_stage(d: &Dist, rev: &str) -> Envelope {
    d.stage(rev, &[&npm_file(d)], RevisionSourceSpec::Dir, false)
}

/// `apache/<package>` 1.0.0 on the OCI registry.
fn oci_dist(package: &str) -> Dist {
    Dist::new(Platform::DockerHub, "apache", package, "1.0.0")
}

fn oci_stage(d: &Dist, image: &OciImage, rev: &str) -> Envelope {
    let paths: Vec<String> = image.paths().iter().map(ToString::to_string).collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    d.stage(rev, &refs, RevisionSourceSpec::Dir, false)
}

fn promote(d: &Dist, rev: &str) -> Envelope {
    d.promote(rev, RevisionSourceSpec::Dir, "pmc-chair")
}

/// The distribution row of `d`.
async fn row(h: &Harness, d: &Dist) -> Option<distribution::Model> {
    distribution::Entity::find_by_id((
        format!("example-{}", d.release_version),
        d.platform,
        d.owner_namespace.clone(),
        d.package.clone(),
        d.version.clone(),
    ))
    .one(&h.db)
    .await
    .unwrap()
}

/// Publishes of package `name` (PUTs of its document) that reached the registry.
fn publishes(proxy: &FaultProxy, name: &str) -> usize {
    proxy
        .seen()
        .iter()
        .filter(|s| !s.injected && s.method == "PUT" && s.path == format!("/{name}"))
        .count()
}

/// Moves of dist-tag `tag` of package `name` that reached the registry.
fn tag_moves(proxy: &FaultProxy, name: &str, tag: &str) -> usize {
    proxy.forwarded("PUT", &format!("/-/package/{name}/dist-tags/{tag}"))
}

/// Makes the database refuse `op` (INSERT or UPDATE) on `distribution`, as a database that
/// is down refuses the result write, while everything else works.
async fn refuse_result_writes(h: &Harness, op: &str) {
    h.db.execute_unprepared(&format!(
        "CREATE TRIGGER test_down BEFORE {op} ON distribution BEGIN SELECT RAISE(ABORT, 'database down (test)'); END"
    ))
    .await
    .unwrap();
}

async fn accept_result_writes(h: &Harness) {
    h.db.execute_unprepared("DROP TRIGGER test_down")
        .await
        .unwrap();
}

/// Enqueues `job` while the result write is refused; once an attempt has failed, runs
/// `meanwhile`, lets the database accept writes again, and waits for the job to settle.
async fn run_with_a_failed_result_write<F: Future<Output = ()>>(
    h: &Harness,
    job: &Envelope,
    op: &str,
    meanwhile: impl FnOnce() -> F,
) -> JobState {
    refuse_result_writes(h, op).await;
    let e = h.t.queue.enqueue(job, None, 10).await.unwrap();
    let q = &h.t.queue;
    eventually("an attempt fails", Duration::from_secs(30), || async {
        q.show(&e.id).await.unwrap().unwrap().summary.state == JobState::Retrying
    })
    .await;
    meanwhile().await;
    accept_result_writes(h).await;
    eventually("the job settles", Duration::from_secs(60), || async {
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

// ---------------------------------------------------------------------------------------
// What the platform reports after a write is checked.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdaccio_reporting_other_bytes_after_staging_gets_nothing_recorded() {
    let n = npm(FAST).await;
    let d = npm_dist("after-stage", "1.0.0");
    let voted = write_npm(&n.h, &d, "00001", "voted");
    let other = integrity(b"other bytes");
    // Reads of the package: the pipeline's before staging, the adapter's before and after
    // publishing; the fourth, the pipeline's check after staging, is a lie.
    n.proxy.inject(
        Fault::new(200)
            .method("GET")
            .path_contains("/after-stage")
            .skip(3)
            .body(
                "application/json",
                &packument_claiming(
                    "after-stage",
                    "1.0.0",
                    &["rc", "latest"],
                    json!({"integrity": other, "shasum": "00"}),
                ),
            ),
    );
    let job = npm_stage(&d, "00001");
    assert_eq!(n.h.run(&job, 3).await, JobState::Dead);
    let err = n.h.last_error(&job).await;
    assert!(
        err.contains(&format!("after staging, the platform reports {other}"))
            && err.contains(&format!("not the voted {}", integrity(&voted))),
        "{err}"
    );
    assert_eq!(n.h.runs(&job).await.len(), 1, "refused, not retried");
    assert!(row(&n.h, &d).await.is_none(), "nothing recorded as staged");
    assert_eq!(n.proxy.injected(), 1, "{:?}", n.proxy.seen());
    n.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_registry_reporting_another_image_after_staging_gets_nothing_recorded() {
    let o = oci(FAST).await;
    let d = oci_dist("after-stage");
    let image = single_image("image", "voted");
    o.h.revs.write("00001", &image.file_refs());
    let other = sha256(b"other bytes");
    // The tag is read before staging (by the pipeline, then by the adapter before its PUT)
    // and after it; the third read is a lie.
    o.proxy.inject(
        Fault::new(200)
            .method("HEAD")
            .path_contains("/v2/apache/after-stage/manifests/rc-1.0.0")
            .skip(2)
            .header("docker-content-digest", &other),
    );
    let job = oci_stage(&d, &image, "00001");
    assert_eq!(o.h.run(&job, 3).await, JobState::Dead);
    let err = o.h.last_error(&job).await;
    assert!(
        err.contains(&format!(
            "after staging, the platform reports {other} for {}, not the voted {}",
            d.key(),
            image.digest
        )),
        "{err}"
    );
    assert!(row(&o.h, &d).await.is_none(), "nothing recorded as staged");
    assert_eq!(o.proxy.injected(), 1, "{:?}", o.proxy.seen());
    o.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_tag_reporting_other_bytes_after_promoting_is_not_recorded() {
    let o = oci(FAST).await;
    let d = oci_dist("after-promote");
    let image = single_image("image", "voted");
    o.h.revs.write("00001", &image.file_refs());
    o.h.run_to_done(&oci_stage(&d, &image, "00001"), 3).await;
    let other = sha256(b"other bytes");
    // The version tag is read by the pipeline before promoting and by the adapter before
    // its PUT; the third read, the pipeline's check after promoting, is a lie.
    o.proxy.inject(
        Fault::new(200)
            .method("HEAD")
            .path_contains("/v2/apache/after-promote/manifests/1.0.0")
            .skip(2)
            .header("docker-content-digest", &other),
    );
    let job = promote(&d, "00001");
    assert_eq!(o.h.run(&job, 3).await, JobState::Dead);
    let err = o.h.last_error(&job).await;
    assert!(
        err.contains(&format!(
            "after promoting, version holds {other}, not the staged {}",
            image.digest
        )),
        "{err}"
    );
    let r = row(&o.h, &d).await.unwrap();
    assert!(r.staging && !r.promoted, "not recorded as promoted: {r:?}");
    assert_eq!(o.proxy.injected(), 1, "{:?}", o.proxy.seen());
    o.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_whose_release_tag_moved_since_is_reported_not_redone() {
    let n = npm(FAST).await;
    let old = npm_dist("rolled-back", "0.9.0");
    let new = npm_dist("rolled-back", "1.0.0");
    let old_bytes = write_npm(&n.h, &old, "00001", "old");
    write_npm(&n.h, &new, "00001", "new");
    n.h.run_to_done(&npm_stage(&old, "00001"), 3).await;
    n.h.run_to_done(&promote(&old, "00001"), 3).await;
    n.h.run_to_done(&npm_stage(&new, "00001"), 3).await;
    n.h.run_to_done(&promote(&new, "00001"), 3).await;
    assert_eq!(n.registry.dist_tags("rolled-back").await["latest"], "1.0.0");

    // Someone points latest back at 0.9.0, straight on the registry.
    let moved = reqwest::Client::new()
        .put(format!(
            "{}-/package/rolled-back/dist-tags/latest",
            n.registry.url()
        ))
        .bearer_auth(&n.registry.token)
        .json(&"0.9.0")
        .send()
        .await
        .unwrap();
    assert!(moved.status().is_success(), "{}", moved.status());
    let moves = tag_moves(&n.proxy, "rolled-back", "latest");

    let again = promote(&new, "00001");
    assert_eq!(n.h.run(&again, 3).await, JobState::Dead);
    let err = n.h.last_error(&again).await;
    assert!(
        err.contains(&format!(
            "is recorded as promoted, but latest on the platform holds {}",
            integrity(&old_bytes)
        )),
        "{err}"
    );
    assert_eq!(n.registry.dist_tags("rolled-back").await["latest"], "0.9.0");
    assert_eq!(tag_moves(&n.proxy, "rolled-back", "latest"), moves);
    n.h.stop().await;
}

// ---------------------------------------------------------------------------------------
// A promote needs atr-dist's own staging record, and the staged bytes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promote_needs_a_readable_staging_record_of_atr_dist() {
    let n = npm(FAST).await;

    // Never staged: refused before the platform is asked anything.
    let d = npm_dist("never-staged", "1.0.0");
    write_npm(&n.h, &d, "00001", "x");
    let job = promote(&d, "00001");
    assert_eq!(n.h.run(&job, 3).await, JobState::Dead);
    let err = n.h.last_error(&job).await;
    assert!(
        err.contains("was never staged by atr-dist; stage it before promoting"),
        "{err}"
    );
    let runs = n.h.runs(&job).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].error_class.as_deref(), Some("permanent"));
    assert!(n.proxy.seen().is_empty(), "{:?}", n.proxy.seen());

    // A row ATR recorded itself (a staging distribution made outside atr-dist): there is no
    // record of what atr-dist staged to compare with.
    let d = npm_dist("atr-made", "1.0.0");
    write_npm(&n.h, &d, "00001", "x");
    distribution::ActiveModel {
        release_key: Set("example-1.0.0".into()),
        platform: Set(Platform::Npm),
        owner_namespace: Set(String::new()),
        package: Set(d.package.clone()),
        version: Set(d.version.clone()),
        staging: Set(true),
        pending: Set(false),
        retries: Set(0),
        upload_date: Set(None),
        api_url: Set(None),
        web_url: Set(None),
        created_by: Set(Some("rm".into())),
        promoted: Set(false),
        promoted_at: Set(None),
        staging_revision_key: Set(None),
        staged_manifest_digest: Set(None),
        platform_digest: Set(None),
        staging_tag: Set(None),
        voted_revision_key: Set(None),
        voted_manifest_digest: Set(None),
        staged_platform_digest: Set(None),
        promoted_digest: Set(None),
        staged_artifacts: Set(None),
    }
    .insert(&n.h.db)
    .await
    .unwrap();
    let job = promote(&d, "00001");
    assert_eq!(n.h.run(&job, 3).await, JobState::Dead);
    let err = n.h.last_error(&job).await;
    assert!(
        err.contains("has no staging record (manifest and platform digests)"),
        "{err}"
    );
    assert_eq!(n.h.runs(&job).await.len(), 1);
    assert!(n.proxy.seen().is_empty(), "{:?}", n.proxy.seen());

    // Staged by atr-dist, but the recorded platform digest is not a digest.
    let d = npm_dist("bad-digest", "1.0.0");
    write_npm(&n.h, &d, "00001", "x");
    n.h.run_to_done(&npm_stage(&d, "00001"), 3).await;
    n.h.db
        .execute_unprepared(
            "UPDATE distribution SET platform_digest = 'sha512-not base64!' WHERE package = 'bad-digest'",
        )
        .await
        .unwrap();
    let asked = n.proxy.seen().len();
    let job = promote(&d, "00001");
    assert_eq!(n.h.run(&job, 3).await, JobState::Dead);
    let err = n.h.last_error(&job).await;
    assert!(
        err.contains("recorded platform digest is unreadable"),
        "{err}"
    );
    assert_eq!(n.h.runs(&job).await.len(), 1);
    assert_eq!(n.proxy.seen().len(), asked, "{:?}", n.proxy.seen());
    n.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_image_deleted_from_the_registry_is_not_promoted() {
    let o = oci(FAST).await;
    let d = oci_dist("deleted");
    let image = single_image("image", "voted");
    o.h.revs.write("00001", &image.file_refs());
    o.h.run_to_done(&oci_stage(&d, &image, "00001"), 3).await;

    // Someone deletes the staged image, and with it its tag, straight on the registry.
    let deleted = reqwest::Client::new()
        .delete(
            o.registry
                .url
                .join(&format!("v2/apache/deleted/manifests/{}", image.digest))
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 202);

    let job = promote(&d, "00001");
    assert_eq!(o.h.run(&job, 3).await, JobState::Dead);
    let err = o.h.last_error(&job).await;
    assert!(
        err.contains("the staged rc-1.0.0 is gone from the platform; nothing promoted"),
        "{err}"
    );
    assert_eq!(o.proxy.forwarded("PUT", "/manifests/1.0.0"), 0);
    assert_eq!(
        registry_manifest(&o.registry.url, "apache/deleted", "1.0.0").await,
        None
    );
    assert!(!row(&o.h, &d).await.unwrap().promoted);
    o.h.stop().await;
}

// ---------------------------------------------------------------------------------------
// Changed files, and failed result writes, on the real registries.

/// The voted revision holds one file more than the staged one: the promote is refused
/// before anything is sent, also when the registry says the release tag holds the staged
/// bytes already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_files_are_refused_on_verdaccio_even_when_it_says_it_is_done() {
    // npm makes the first version of a package latest: the registry itself says the
    // staged bytes are in production already.
    let n = npm(FAST).await;
    let d = npm_dist("changed", "1.0.0");
    let voted = write_npm(&n.h, &d, "00001", "voted");
    n.h.run_to_done(&npm_stage(&d, "00001"), 3).await;
    assert_eq!(n.registry.dist_tags("changed").await["latest"], "1.0.0");
    n.h.revs.write(
        "00002",
        &[
            (npm_file(&d).as_str(), voted.as_slice()),
            ("NEW.txt", b"new"),
        ],
    );
    let writes = n.proxy.forwarded("PUT", "/");
    let job = promote(&d, "00002");
    assert_eq!(n.h.run(&job, 3).await, JobState::Dead);
    let err = n.h.last_error(&job).await;
    assert!(err.contains("added: NEW.txt"), "{err}");
    let runs = n.h.runs(&job).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].outcome.as_deref(), Some("revision_changed"));
    assert_eq!(n.proxy.forwarded("PUT", "/"), writes, "nothing sent");
    assert!(!row(&n.h, &d).await.unwrap().promoted);
    n.h.stop().await;
}

/// As above on docker-registry, and then with a proxy claiming that the version tag holds
/// the staged image already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_files_are_refused_on_docker_registry_even_when_it_says_it_is_done() {
    let o = oci(FAST).await;
    let d = oci_dist("changed");
    let image = single_image("image", "voted");
    o.h.revs.write("00001", &image.file_refs());
    o.h.run_to_done(&oci_stage(&d, &image, "00001"), 3).await;
    let mut changed = image.file_refs();
    changed.push(("NEW.txt", b"new"));
    o.h.revs.write("00002", &changed);
    let writes = o.proxy.forwarded("PUT", "/v2/") + o.proxy.forwarded("POST", "/v2/");
    let job = promote(&d, "00002");
    assert_eq!(o.h.run(&job, 3).await, JobState::Dead);
    assert!(
        o.h.last_error(&job).await.contains("added: NEW.txt"),
        "{}",
        o.h.last_error(&job).await
    );
    // The registry now claims 1.0.0 holds the staged image: still refused.
    o.proxy.inject(
        Fault::new(200)
            .method("HEAD")
            .path_contains("/v2/apache/changed/manifests/1.0.0")
            .times(usize::MAX)
            .header("docker-content-digest", &image.digest),
    );
    let job = promote(&d, "00002");
    assert_eq!(o.h.run(&job, 3).await, JobState::Dead);
    let err = o.h.last_error(&job).await;
    assert!(err.contains("added: NEW.txt"), "{err}");
    assert_eq!(
        o.h.runs(&job).await[0].outcome.as_deref(),
        Some("revision_changed")
    );
    assert_eq!(
        o.proxy.forwarded("PUT", "/v2/") + o.proxy.forwarded("POST", "/v2/"),
        writes,
        "nothing sent: {:?}",
        o.proxy.seen()
    );
    assert_eq!(
        registry_manifest(&o.registry.url, "apache/changed", "1.0.0").await,
        None
    );
    assert!(!row(&o.h, &d).await.unwrap().promoted);
    o.h.stop().await;
}

/// The stage's result write fails after the registry took the files: the retry finds them
/// there and only writes the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_stage_result_write_is_retried_without_a_second_publish() {
    let n = npm(SLOW).await;
    let d = npm_dist("written-once", "1.0.0");
    let voted = write_npm(&n.h, &d, "00001", "voted");
    let job = npm_stage(&d, "00001");
    let state = run_with_a_failed_result_write(&n.h, &job, "INSERT", || async {}).await;
    assert_eq!(state, JobState::Done, "{}", n.h.last_error(&job).await);
    assert_eq!(
        publishes(&n.proxy, "written-once"),
        1,
        "{:?}",
        n.proxy.seen()
    );
    let runs = n.h.runs(&job).await;
    assert!(
        runs[0]
            .message
            .as_deref()
            .unwrap_or("")
            .contains("database down (test)"),
        "{runs:?}"
    );
    assert_eq!(runs.last().unwrap().outcome.as_deref(), Some("unchanged"));
    assert_eq!(
        row(&n.h, &d).await.unwrap().platform_digest,
        Some(integrity(&voted))
    );
    n.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_stage_result_write_is_retried_without_a_second_push() {
    let o = oci(SLOW).await;
    let d = oci_dist("written-once");
    let image = single_image("image", "voted");
    o.h.revs.write("00001", &image.file_refs());
    let job = oci_stage(&d, &image, "00001");
    let state = run_with_a_failed_result_write(&o.h, &job, "INSERT", || async {}).await;
    assert_eq!(state, JobState::Done, "{}", o.h.last_error(&job).await);
    assert_eq!(
        o.proxy.forwarded("PUT", "/blobs/uploads/"),
        image.blobs.len(),
        "{:?}",
        o.proxy.seen()
    );
    assert_eq!(o.proxy.forwarded("PUT", "/manifests/"), 1);
    let runs = o.h.runs(&job).await;
    assert!(runs.len() >= 2, "{runs:?}");
    assert_eq!(runs.last().unwrap().outcome.as_deref(), Some("unchanged"));
    assert_eq!(
        row(&o.h, &d).await.unwrap().platform_digest.as_deref(),
        Some(image.digest.as_str())
    );
    o.h.stop().await;
}

/// The stage's result write fails, and then the registry lies: it says the version holds
/// other bytes. The retry neither publishes again nor records anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_lying_on_read_back_after_a_failed_result_write_gets_nothing_recorded() {
    let n = npm(SLOW).await;
    let d = npm_dist("lies-later", "1.0.0");
    let voted = write_npm(&n.h, &d, "00001", "voted");
    let other = integrity(b"other bytes");
    let lie = packument_claiming(
        "lies-later",
        "1.0.0",
        &["rc", "latest"],
        json!({"integrity": other, "shasum": "00"}),
    );
    let job = npm_stage(&d, "00001");
    let state = run_with_a_failed_result_write(&n.h, &job, "INSERT", || async {
        n.proxy.inject(
            Fault::new(200)
                .method("GET")
                .path_contains("/lies-later")
                .times(usize::MAX)
                .body("application/json", &lie),
        );
    })
    .await;
    assert_eq!(state, JobState::Dead);
    let err = n.h.last_error(&job).await;
    assert!(
        err.contains(&format!(
            "exists on the registry with {other}, not the voted {}",
            integrity(&voted)
        )),
        "{err}"
    );
    assert_eq!(publishes(&n.proxy, "lies-later"), 1, "{:?}", n.proxy.seen());
    assert!(row(&n.h, &d).await.is_none(), "nothing recorded");
    n.h.stop().await;
}

/// The promote's result write fails after the tag moved: the retry finds the release tag
/// holding the staged bytes, moves nothing, and only writes the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_promote_result_write_is_retried_without_a_second_tag_move() {
    let n = npm(SLOW).await;
    let old = npm_dist("moved-once", "0.9.0");
    let new = npm_dist("moved-once", "1.0.0");
    write_npm(&n.h, &old, "00001", "old");
    let voted = write_npm(&n.h, &new, "00001", "new");
    n.h.run_to_done(&npm_stage(&old, "00001"), 3).await;
    n.h.run_to_done(&promote(&old, "00001"), 3).await;
    n.h.run_to_done(&npm_stage(&new, "00001"), 3).await;
    assert_eq!(n.registry.dist_tags("moved-once").await["latest"], "0.9.0");
    let moves = tag_moves(&n.proxy, "moved-once", "latest");

    let job = promote(&new, "00001");
    let state = run_with_a_failed_result_write(&n.h, &job, "UPDATE", || async {}).await;
    assert_eq!(state, JobState::Done, "{}", n.h.last_error(&job).await);
    assert_eq!(n.registry.dist_tags("moved-once").await["latest"], "1.0.0");
    assert_eq!(
        tag_moves(&n.proxy, "moved-once", "latest") - moves,
        1,
        "latest moved once: {:?}",
        n.proxy.seen()
    );
    let runs = n.h.runs(&job).await;
    assert!(
        runs[0]
            .message
            .as_deref()
            .unwrap_or("")
            .contains("database down (test)"),
        "{runs:?}"
    );
    assert_eq!(runs.last().unwrap().outcome.as_deref(), Some("unchanged"));
    let r = row(&n.h, &new).await.unwrap();
    assert!(r.promoted && !r.staging, "{r:?}");
    assert_eq!(r.platform_digest, Some(integrity(&voted)));
    n.h.stop().await;
}
