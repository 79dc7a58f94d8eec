//! The OCI adapter against Debian's real `docker-registry` (distribution 2.8.2): through the
//! real pipeline (Redis queue, SQLite and PostgreSQL), with real token auth (RS256 JWTs from
//! a realm served here), and behind a proxy that injects 429/503 and lies.
//!
//! Each test starts its own registry (with its own storage) on a free loopback port.

use std::sync::Arc;
use std::time::{Duration, Instant};

use atr_dist::config::RetryConfig;
use atr_dist::platform::oci::{OCI_INDEX, OCI_MANIFEST, OciAdapter, OciSettings};
use atr_dist::platform::{Adapters, PlatformAdapter, PromoteRequest};
use atr_dist::secret::Secret;
use atr_dist_shared::job::RevisionSourceSpec;
use atr_dist_shared::names::DistTag;
use atr_dist_shared::{Digest, Envelope, ErrorClass, JobState, Platform};
use atr_dist_tests::cases::eventually;
use atr_dist_tests::fault_proxy::{Fault, FaultProxy};
use atr_dist_tests::jobs::Dist;
use atr_dist_tests::oci_support::{
    Grant, OciImage, Registry, RegistryAuth, TokenIssuer, TokenRealm, key, multi_arch_image,
    nested_image, registry_has_blob, registry_manifest, sha256, single_image, stage_request,
};
use atr_dist_tests::pipeline_support::{Db, Harness};
use url::Url;

const STAGING_TAG: &str = "rc-1.0.0";

/// Settings for `registry`: anonymous, staging in the release repository.
fn settings(registry: &Url) -> OciSettings {
    OciSettings {
        registry: registry.clone(),
        staging_namespace: None,
        username: None,
        token: None,
        token_realms: Vec::new(),
    }
}

fn adapter(registry: &Url) -> OciAdapter {
    OciAdapter::new(settings(registry)).unwrap()
}

/// An anonymous adapter staging in `namespace`, a repository apart from the release's.
fn staged_in(registry: &Url, namespace: &str) -> OciAdapter {
    OciAdapter::new(OciSettings {
        staging_namespace: Some(namespace.into()),
        ..settings(registry)
    })
    .unwrap()
}

fn tag(t: &str) -> DistTag {
    DistTag::new(t).unwrap()
}

fn version_tag() -> DistTag {
    tag(atr_dist::platform::oci::RELEASE_TAG_VERSION)
}

fn digest(d: &str) -> Digest {
    Digest::parse(d).unwrap()
}

fn promote_request(package: &str, image: &OciImage) -> PromoteRequest {
    PromoteRequest {
        key: key("apache", package),
        staged_digest: digest(&image.digest),
        staging_tag: tag(STAGING_TAG),
        release_tag: version_tag(),
        artifacts: Vec::new(),
        companions: Vec::new(),
    }
}

const FAST: RetryConfig = RetryConfig {
    base_ms: 20,
    cap_ms: 100,
    max_attempts: 5,
};

/// The real pipeline with the OCI adapter for DOCKER_HUB, on a fresh database and queue.
async fn harness(which: Db, adapter: OciAdapter) -> Harness {
    harness_with_retry(which, adapter, FAST).await
}

async fn harness_with_retry(which: Db, adapter: OciAdapter, retry: RetryConfig) -> Harness {
    let adapters = Adapters::default().with(Platform::DockerHub, Arc::new(adapter));
    Harness::new(which, adapters, retry).await
}

fn dist(package: &str) -> Dist {
    Dist::new(Platform::DockerHub, "apache", package, "1.0.0")
}

fn stage_job(package: &str, image: &OciImage, dry_run: bool) -> Envelope {
    let paths: Vec<String> = image.paths().iter().map(ToString::to_string).collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    dist(package).stage("00001", &refs, RevisionSourceSpec::Dir, dry_run)
}

fn promote_job(package: &str) -> Envelope {
    dist(package).promote("00001", RevisionSourceSpec::Dir, "pmc-chair")
}

/// `status` with `Retry-After: <secs>` and a registry error body, for the next request.
fn busy(status: u16, secs: u64) -> Fault {
    Fault::new(status).retry_after(secs).body(
        "application/json",
        r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down (test)"}]}"#,
    )
}

/// Writes sent through the proxy: blob uploads, mounts and manifest PUTs.
fn writes(proxy: &FaultProxy) -> usize {
    proxy.forwarded("POST", "/v2/")
        + proxy.forwarded("PUT", "/v2/")
        + proxy.forwarded("PATCH", "/v2/")
}

async fn stage_then_promote(which: Db) {
    let registry = Registry::start(RegistryAuth::None).await;
    let proxy = FaultProxy::start(&registry.url).await;
    let h = harness(which, adapter(&proxy.url)).await;
    let image = single_image("image", "hello from 1.0.0");
    h.revs.write("00001", &image.file_refs());

    // A dry run plans the pushes and sends none.
    let dry = stage_job("httpd", &image, true);
    assert_eq!(h.run(&dry, 3).await, JobState::Done);
    let plan = h.runs(&dry).await[0].message.clone().unwrap();
    assert!(
        plan.contains(&format!("POST {}v2/apache/httpd/blobs/uploads/", proxy.url)),
        "{plan}"
    );
    assert!(
        plan.contains(&format!(
            "PUT {}v2/apache/httpd/manifests/{STAGING_TAG}",
            proxy.url
        )),
        "{plan}"
    );
    assert!(plan.contains(&image.digest), "{plan}");
    assert!(
        !plan.contains("mount"),
        "one repository: nothing to mount from: {plan}"
    );
    assert_eq!(writes(&proxy), 0, "{:?}", proxy.seen());

    let s = stage_job("httpd", &image, false);
    h.run_to_done(&s, 3).await;
    let row = h.row().await.unwrap();
    assert!(row.staging && !row.promoted);
    assert_eq!(row.staging_tag.as_deref(), Some(STAGING_TAG));
    assert_eq!(row.platform_digest.as_deref(), Some(image.digest.as_str()));
    assert_eq!(
        row.api_url.as_deref(),
        Some(format!("{}v2/apache/httpd/manifests/{STAGING_TAG}", proxy.url).as_str())
    );
    assert_eq!(
        registry_manifest(&registry.url, "apache/httpd", STAGING_TAG).await,
        Some((image.digest.clone(), OCI_MANIFEST.to_owned()))
    );
    assert_eq!(
        proxy.forwarded("PUT", "/blobs/uploads/"),
        2,
        "config and layer uploaded once each"
    );

    let p = promote_job("httpd");
    h.run_to_done(&p, 3).await;
    let row = h.row().await.unwrap();
    assert!(row.promoted && !row.staging);
    assert_eq!(row.platform_digest.as_deref(), Some(image.digest.as_str()));
    assert_eq!(h.runs(&p).await[0].outcome.as_deref(), Some("completed"));
    assert_eq!(
        registry_manifest(&registry.url, "apache/httpd", "1.0.0").await,
        Some((image.digest.clone(), OCI_MANIFEST.to_owned()))
    );

    // Promote again: found done, nothing sent.
    let again = promote_job("httpd");
    assert_eq!(h.run(&again, 3).await, JobState::Done);
    assert_eq!(
        h.runs(&again).await[0].outcome.as_deref(),
        Some("unchanged")
    );
    assert_eq!(
        proxy.forwarded("PUT", "/manifests/1.0.0"),
        1,
        "{:?}",
        proxy.seen()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_then_promote_sqlite() {
    stage_then_promote(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_then_promote_postgres() {
    stage_then_promote(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_ci_already_pushed_is_adopted_without_writes() {
    let registry = Registry::start(RegistryAuth::None).await;
    let proxy = FaultProxy::start(&registry.url).await;
    let image = single_image("oci", "built by CI");
    // The project's CI pushes the voted image under the staging tag, straight to the registry.
    let ci = adapter(&registry.url);
    ci.stage(&stage_request(
        &key("apache", "adopted"),
        &image,
        STAGING_TAG,
    ))
    .await
    .unwrap();

    let h = harness(Db::Sqlite, adapter(&proxy.url)).await;
    h.revs.write("00001", &image.file_refs());
    let s = stage_job("adopted", &image, false);
    h.run_to_done(&s, 3).await;
    assert_eq!(h.runs(&s).await[0].outcome.as_deref(), Some("unchanged"));
    assert_eq!(
        h.row().await.unwrap().platform_digest.as_deref(),
        Some(image.digest.as_str())
    );
    assert_eq!(writes(&proxy), 0, "{:?}", proxy.seen());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_arch_index_is_promoted_as_the_index() {
    let registry = Registry::start(RegistryAuth::None).await;
    let h = harness(Db::Sqlite, adapter(&registry.url)).await;
    let image = multi_arch_image("image", "multi");
    h.revs.write("00001", &image.file_refs());
    let s = stage_job("multi", &image, false);
    h.run_to_done(&s, 3).await;
    let p = promote_job("multi");
    h.run_to_done(&p, 3).await;

    let released = registry_manifest(&registry.url, "apache/multi", "1.0.0").await;
    assert_eq!(released, Some((image.digest.clone(), OCI_INDEX.to_owned())));
    assert!(!image.children.contains(&image.digest));
    for child in &image.children {
        let (d, media_type) = registry_manifest(&registry.url, "apache/multi", child)
            .await
            .unwrap();
        assert_eq!((&d, media_type.as_str()), (child, OCI_MANIFEST));
    }
    assert_eq!(
        h.row().await.unwrap().platform_digest.as_deref(),
        Some(image.digest.as_str())
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staging_tag_moved_before_promote_is_refused() {
    let registry = Registry::start(RegistryAuth::None).await;
    let h = harness(Db::Sqlite, adapter(&registry.url)).await;
    let image = single_image("image", "voted");
    h.revs.write("00001", &image.file_refs());
    let s = stage_job("moved", &image, false);
    h.run_to_done(&s, 3).await;

    // Someone pushes another image over the staging tag.
    let other = single_image("image", "NOT voted");
    adapter(&registry.url)
        .stage(&stage_request(&key("apache", "moved"), &other, STAGING_TAG))
        .await
        .unwrap();

    let p = promote_job("moved");
    assert_eq!(h.run(&p, 3).await, JobState::Dead);
    let msg = h.last_error(&p).await;
    assert!(
        msg.contains(&format!("{STAGING_TAG} was overwritten since staging")),
        "{msg}"
    );
    assert!(msg.contains(&other.digest), "{msg}");
    assert_eq!(
        registry_manifest(&registry.url, "apache/moved", "1.0.0").await,
        None
    );
    assert!(!h.row().await.unwrap().promoted);
    h.stop().await;
}

/// An image under four indexes (the most a layout may nest) is staged, and promoted across
/// repositories by copying every level; a registry answering a plain upload's POST with
/// 201, as if it had mounted a blob it was not asked to mount, is not believed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_indexes_are_copied_and_a_201_to_an_upload_is_refused() {
    let registry = Registry::start(RegistryAuth::None).await;
    let proxy = FaultProxy::start(&registry.url).await;
    let a = staged_in(&proxy.url, "apache-staging");
    let image = nested_image("image", "nested four deep", 4);
    let k = key("apache", "nested");
    a.stage(&stage_request(&k, &image, STAGING_TAG))
        .await
        .unwrap();
    // One index more, pushed over the staging tag by hand (no layout nests that deep):
    // promote refuses to copy it. Staged again, the four-deep image is promoted.
    let top_hex = image.digest.trim_start_matches("sha256:");
    let top = image
        .files
        .iter()
        .find(|(p, _)| p.ends_with(top_hex))
        .map(|(_, b)| b.len())
        .unwrap();
    let deeper = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_INDEX, "digest": image.digest, "size": top}],
    }))
    .unwrap();
    let put = reqwest::Client::new()
        .put(
            registry
                .url
                .join(&format!("v2/apache-staging/nested/manifests/{STAGING_TAG}"))
                .unwrap(),
        )
        .header("content-type", OCI_INDEX)
        .body(deeper.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201, "{:?}", put.text().await);
    let mut too_deep = promote_request("nested", &image);
    too_deep.staged_digest = digest(&sha256(&deeper));
    let err = a.promote(&too_deep).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
    assert!(
        err.message.contains("is nested more than 4 indexes deep"),
        "{}",
        err.message
    );

    a.stage(&stage_request(&k, &image, STAGING_TAG))
        .await
        .unwrap();
    a.promote(&promote_request("nested", &image)).await.unwrap();
    assert_eq!(
        registry_manifest(&registry.url, "apache/nested", "1.0.0")
            .await
            .map(|(d, _)| d),
        Some(image.digest.clone())
    );
    for child in &image.children {
        assert!(
            registry_manifest(&registry.url, "apache/nested", child)
                .await
                .is_some(),
            "{child}"
        );
    }

    let plain = adapter(&proxy.url);
    let other = single_image("image", "upload answered 201");
    let k = key("apache", "created");
    proxy.inject(
        Fault::new(201)
            .method("POST")
            .path_contains("/v2/apache/created/blobs/uploads/"),
    );
    let err = plain
        .stage(&stage_request(&k, &other, STAGING_TAG))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
    assert!(err.message.contains("HTTP 201 Created"), "{}", err.message);
    assert_eq!(proxy.forwarded("PUT", "/v2/apache/created/"), 0);
}

/// A registry asking for Basic credentials when none are configured is refused at once,
/// naming anonymous access; with credentials, they are sent once and a second 401 is final.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_basic_challenge_is_answered_once_with_credentials_or_refused_without() {
    let registry = Registry::start(RegistryAuth::None).await;
    let proxy = FaultProxy::start(&registry.url).await;
    let challenged = "/v2/apache/basic/manifests/";
    proxy.inject(
        Fault::new(401)
            .method("HEAD")
            .path_contains(challenged)
            .header("www-authenticate", r#"Basic realm="registry""#)
            .times(10),
    );
    let k = key("apache", "basic");
    let err = adapter(&proxy.url)
        .read_staged(&k, &tag(STAGING_TAG))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Auth, "{}", err.message);
    assert!(
        err.message.contains(
            "the credentials were refused for repository:apache/basic:pull with anonymous access (no username and token configured)"
        ),
        "{}",
        err.message
    );
    assert_eq!(proxy.injected(), 1, "not sent again without credentials");

    let with_credentials = OciAdapter::new(OciSettings {
        username: Some("atr-bot".into()),
        token: Some(Secret::new("s3cret")),
        ..settings(&proxy.url)
    })
    .unwrap();
    let err = with_credentials
        .read_staged(&k, &tag(STAGING_TAG))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Auth, "{}", err.message);
    assert!(
        err.message.contains("with user \"atr-bot\""),
        "{}",
        err.message
    );
    assert_eq!(
        proxy.injected(),
        3,
        "once anonymous, once with the credentials"
    );
    assert_eq!(proxy.forwarded("HEAD", challenged), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_and_registry_refusals() {
    let registry = Registry::start(RegistryAuth::None).await;
    let proxy = FaultProxy::start(&registry.url).await;
    let a = adapter(&proxy.url);
    let image = single_image("image", "refusals");
    let never = key("apache", "never-pushed");

    assert_eq!(
        a.read_staged(&never, &tag(STAGING_TAG)).await.unwrap(),
        None
    );
    assert_eq!(a.read_promoted(&never, &version_tag()).await.unwrap(), None);
    let err = a
        .promote(&promote_request("never-pushed", &image))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message
            .contains("apache/never-pushed:rc-1.0.0 is gone from the registry"),
        "{}",
        err.message
    );
    // A release tag other than the version is refused before any request.
    let before = proxy.seen().len();
    let err = a
        .read_promoted(&never, &DistTag::latest())
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message.contains("moves no alias tags"),
        "{}",
        err.message
    );
    assert_eq!(proxy.seen().len(), before);

    // The proxy claims every blob exists, so none is uploaded: the registry refuses the
    // manifest, and its error code reaches the message.
    proxy.inject(
        Fault::new(200)
            .method("HEAD")
            .path_contains("/blobs/sha256:")
            .times(100),
    );
    let req = stage_request(&key("apache", "lied-to"), &image, STAGING_TAG);
    let err = a.stage(&req).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
    assert_eq!(err.http_status, Some(400));
    assert!(
        err.message.contains("MANIFEST_BLOB_UNKNOWN"),
        "{}",
        err.message
    );
    assert_eq!(
        a.read_staged(&req.key, &req.staging_tag).await.unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_with_real_jwts() {
    let issuer = Arc::new(TokenIssuer::generate());
    let realm = TokenRealm::start(Arc::clone(&issuer), "atr-bot", "s3cret").await;
    let registry = Registry::start(RegistryAuth::Token {
        realm: realm.realm.clone(),
        issuer,
    })
    .await;
    let with = |password: &str, realms: Vec<Url>| {
        OciAdapter::new(OciSettings {
            username: Some("atr-bot".into()),
            token: Some(Secret::new(password)),
            token_realms: realms,
            ..settings(&registry.url)
        })
        .unwrap()
    };
    // The registry really requires a token.
    let anonymous = reqwest::get(registry.url.join("v2/apache/tokened/tags/list").unwrap())
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    let a = with("s3cret", vec![realm.realm.clone()]);
    let image = single_image("image", "behind tokens");
    let k = key("apache", "tokened");
    let req = stage_request(&k, &image, STAGING_TAG);
    assert_eq!(
        a.expected_digest(&req).await.unwrap().as_str(),
        image.digest
    );
    assert_eq!(a.read_staged(&k, &req.staging_tag).await.unwrap(), None);
    a.stage(&req).await.unwrap();
    assert_eq!(
        a.read_staged(&k, &req.staging_tag)
            .await
            .unwrap()
            .unwrap()
            .digest
            .as_str(),
        image.digest
    );
    a.promote(&promote_request("tokened", &image))
        .await
        .unwrap();
    assert_eq!(
        a.read_promoted(&k, &version_tag())
            .await
            .unwrap()
            .unwrap()
            .digest
            .as_str(),
        image.digest
    );
    // Tokens are cached by scope: one for pull, one for pull,push, reused by promote.
    assert_eq!(realm.requests(), 2, "{:?}", realm.scopes());
    assert_eq!(
        realm.scopes(),
        vec![
            "repository:apache/tokened:pull",
            "repository:apache/tokened:pull,push"
        ]
    );

    // Staged in a namespace of its own: promote copies the image across repositories with
    // one token, asked once, that pushes the release and pulls the staged image.
    let split = OciAdapter::new(OciSettings {
        staging_namespace: Some("apache-staging".into()),
        username: Some("atr-bot".into()),
        token: Some(Secret::new("s3cret")),
        token_realms: vec![realm.realm.clone()],
        ..settings(&registry.url)
    })
    .unwrap();
    split
        .stage(&stage_request(&key("apache", "split"), &image, STAGING_TAG))
        .await
        .unwrap();
    let (asked, scopes_before) = (realm.requests(), realm.scopes().len());
    split
        .promote(&promote_request("split", &image))
        .await
        .unwrap();
    assert_eq!(realm.requests(), asked + 1, "{:?}", realm.scopes());
    assert_eq!(
        realm.scopes()[scopes_before..],
        [
            "repository:apache-staging/split:pull",
            "repository:apache/split:pull,push"
        ]
    );
    assert_eq!(
        split
            .read_promoted(&key("apache", "split"), &version_tag())
            .await
            .unwrap()
            .unwrap()
            .digest
            .as_str(),
        image.digest
    );

    // A wrong password: the realm refuses it.
    let err = with("wrong", vec![realm.realm.clone()])
        .read_staged(&k, &req.staging_tag)
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Auth, "{}", err.message);
    assert!(
        err.message
            .contains("the token realm refused the credentials"),
        "{}",
        err.message
    );

    // A token the registry cannot verify.
    realm.set_grant(Grant::Garbage);
    let err = with("s3cret", vec![realm.realm.clone()])
        .read_staged(&k, &req.staging_tag)
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Auth, "{}", err.message);
    assert_eq!(err.http_status, Some(401));
    assert!(
        err.message.contains("the credentials were refused"),
        "{}",
        err.message
    );

    // A token without push: insufficient_scope, asked again, still refused.
    realm.set_grant(Grant::PullOnly);
    let other = key("apache", "pull-only");
    let err = with("s3cret", vec![realm.realm.clone()])
        .stage(&stage_request(&other, &image, STAGING_TAG))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Auth, "{}", err.message);
    assert!(
        err.message.contains("the account lacks a permission"),
        "{}",
        err.message
    );

    // A realm that is not configured is never contacted.
    let asked = realm.requests();
    let err = with("s3cret", Vec::new())
        .read_staged(&k, &req.staging_tag)
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message.contains("refusing to send credentials there"),
        "{}",
        err.message
    );
    assert_eq!(realm.requests(), asked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_unavailability_are_waited_out_or_rescheduled() {
    let registry = Registry::start(RegistryAuth::None).await;
    let proxy = FaultProxy::start(&registry.url).await;
    let a = adapter(&proxy.url);
    let image = single_image("image", "busy registry");
    let k = key("apache", "busy");
    let req = stage_request(&k, &image, STAGING_TAG);

    // Short Retry-After: waited out inside the attempt.
    proxy.inject(busy(503, 1));
    proxy.inject(busy(429, 1));
    let start = Instant::now();
    a.stage(&req).await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(proxy.injected(), 2);
    assert_eq!(
        a.read_staged(&k, &req.staging_tag)
            .await
            .unwrap()
            .unwrap()
            .digest
            .as_str(),
        image.digest
    );

    // A long one ends the attempt, transient, with the wait for the job backoff.
    proxy.inject(busy(503, 120));
    let err = a.read_staged(&k, &req.staging_tag).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{}", err.message);
    assert_eq!(err.retry_after, Some(Duration::from_secs(120)));
    assert_eq!(err.http_status, Some(503));
    assert_eq!(proxy.injected(), 3, "not retried inside the attempt");

    // Through the pipeline: the job is rescheduled for then.
    // The job backoff caps Retry-After at cap_ms: give it room.
    let patient = RetryConfig {
        cap_ms: 600_000,
        ..FAST
    };
    let h = harness_with_retry(Db::Sqlite, adapter(&proxy.url), patient).await;
    h.revs.write("00001", &image.file_refs());
    proxy.inject(busy(429, 120));
    let s = stage_job("busy", &image, false);
    let e = h.t.queue.enqueue(&s, None, 5).await.unwrap();
    let q = &h.t.queue;
    eventually("attempt fails", Duration::from_secs(30), || async {
        q.show(&e.id).await.unwrap().unwrap().summary.state == JobState::Retrying
    })
    .await;
    let summary = q.show(&e.id).await.unwrap().unwrap().summary;
    assert_eq!(summary.error_class.as_deref(), Some("transient"));
    let wait = summary.run_at.unwrap() - chrono::Utc::now();
    assert!(wait > chrono::Duration::seconds(100), "{wait:?}");
    let runs = h.runs(&s).await;
    assert_eq!(runs[0].http_status, Some(429));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staging_repository_is_promoted_by_mounting() {
    let registry = Registry::start(RegistryAuth::None).await;
    let proxy = FaultProxy::start(&registry.url).await;
    let a = staged_in(&proxy.url, "apache-staging");
    let image = multi_arch_image("image", "mounted");
    let k = key("apache", "mounted");
    let req = stage_request(&k, &image, STAGING_TAG);
    a.stage(&req).await.unwrap();
    assert_eq!(
        registry_manifest(&registry.url, "apache-staging/mounted", STAGING_TAG).await,
        Some((image.digest.clone(), OCI_INDEX.to_owned()))
    );
    for blob in &image.blobs {
        assert!(!registry_has_blob(&registry.url, "apache/mounted", blob).await);
    }

    let promote = promote_request("mounted", &image);
    let plan = a.plan_promote(&promote);
    assert_eq!(plan.len(), 2, "{plan:?}");
    assert!(
        plan[0].url.contains("mount=")
            && plan[1].url.ends_with("/v2/apache/mounted/manifests/1.0.0"),
        "{plan:?}"
    );
    a.promote(&promote).await.unwrap();
    assert_eq!(
        registry_manifest(&registry.url, "apache/mounted", "1.0.0").await,
        Some((image.digest.clone(), OCI_INDEX.to_owned()))
    );
    for blob in &image.blobs {
        assert!(
            registry_has_blob(&registry.url, "apache/mounted", blob).await,
            "{blob}"
        );
    }
    // Blobs were mounted, not uploaded; the two child manifests were copied by digest.
    assert_eq!(
        proxy.forwarded("POST", "/v2/apache/mounted/blobs/uploads/?mount="),
        image.blobs.len()
    );
    assert_eq!(proxy.forwarded("PUT", "/v2/apache/mounted/blobs/"), 0);
    assert_eq!(
        proxy.forwarded("PUT", "/v2/apache/mounted/manifests/sha256:"),
        2
    );
    assert_eq!(
        a.read_promoted(&k, &version_tag())
            .await
            .unwrap()
            .unwrap()
            .digest
            .as_str(),
        image.digest
    );

    // Promoting again finds the release tag done: nothing is sent.
    let puts = proxy.forwarded("PUT", "/v2/apache/mounted/manifests/");
    a.promote(&promote).await.unwrap();
    assert_eq!(
        proxy.forwarded("PUT", "/v2/apache/mounted/manifests/"),
        puts
    );

    // Staging into a fresh staging repository mounts what the release repository has.
    let b = staged_in(&proxy.url, "apache-staging2");
    let plan = b.plan_stage(&req);
    assert_eq!(
        plan.len(),
        image.blobs.len() + 3,
        "blobs, two children, the index: {plan:?}"
    );
    for (write, blob) in plan.iter().zip(&image.blobs) {
        assert_eq!(write.method, "POST");
        assert!(
            write.url.ends_with(&format!(
                "/v2/apache-staging2/mounted/blobs/uploads/?mount={}&from=apache%2Fmounted",
                blob.replace(':', "%3A")
            )) && write.what.starts_with("mount, or upload "),
            "{write:?}"
        );
    }
    b.stage(&req).await.unwrap();
    assert_eq!(
        proxy.forwarded("POST", "/v2/apache-staging2/mounted/blobs/uploads/?mount="),
        image.blobs.len()
    );
    assert_eq!(
        proxy.forwarded("PUT", "/v2/apache-staging2/mounted/blobs/"),
        0
    );
    assert_eq!(
        b.read_staged(&k, &req.staging_tag)
            .await
            .unwrap()
            .unwrap()
            .digest
            .as_str(),
        image.digest
    );
}

// ---------------------------------------------------------------------------------------
// The adapter stands on its own: called directly, without the pipeline's checks in front of
// it, it never replaces a released version, never releases other bytes than the staged
// ones, and believes no registry that says it stored something else.

/// A released version is final: promote never moves a version tag that holds other bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_tag_holding_other_bytes_is_never_overwritten() {
    let registry = Registry::start(RegistryAuth::None).await;
    let a = adapter(&registry.url);
    let k = key("apache", "final");
    let voted = single_image("image", "voted");
    let released = single_image("image", "released before");
    // Another image was released as 1.0.0 (staged under another tag, then promoted).
    a.stage(&stage_request(&k, &released, "earlier"))
        .await
        .unwrap();
    a.promote(&PromoteRequest {
        staging_tag: tag("earlier"),
        ..promote_request("final", &released)
    })
    .await
    .unwrap();
    a.stage(&stage_request(&k, &voted, STAGING_TAG))
        .await
        .unwrap();

    let err = a
        .promote(&promote_request("final", &voted))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message.contains(&format!(
            "apache/final:1.0.0 already holds {}; a published version is not overwritten with {}",
            released.digest, voted.digest
        )),
        "{}",
        err.message
    );
    assert_eq!(
        registry_manifest(&registry.url, "apache/final", "1.0.0")
            .await
            .map(|(d, _)| d),
        Some(released.digest.clone())
    );
}

/// promote re-reads the staging tag: when it holds other bytes than the staged ones now,
/// nothing is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_refuses_a_staging_tag_that_now_holds_other_bytes() {
    let registry = Registry::start(RegistryAuth::None).await;
    let a = adapter(&registry.url);
    let k = key("apache", "restaged");
    let voted = single_image("image", "voted");
    let other = single_image("image", "pushed over the staging tag");
    a.stage(&stage_request(&k, &voted, STAGING_TAG))
        .await
        .unwrap();
    a.stage(&stage_request(&k, &other, STAGING_TAG))
        .await
        .unwrap();

    let err = a
        .promote(&promote_request("restaged", &voted))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message.contains(&format!(
            "apache/restaged:{STAGING_TAG} now holds {}, not the staged {}; nothing promoted",
            other.digest, voted.digest
        )),
        "{}",
        err.message
    );
    assert_eq!(
        registry_manifest(&registry.url, "apache/restaged", "1.0.0").await,
        None
    );
}

/// Staging again over an earlier stage's image: a tag PUT whose answer is lost is judged by
/// where the tag points now. Still at the earlier image, the PUT did not arrive and is sent
/// again; at a third image, someone else wrote the tag meanwhile, and it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restaging_whose_tag_put_is_lost_is_sent_again_or_refused() {
    let registry = Registry::start(RegistryAuth::None).await;
    let proxy = FaultProxy::start(&registry.url).await;
    let a = adapter(&proxy.url);
    let k = key("apache", "restage-lost");
    let tag_path = format!("/v2/apache/restage-lost/manifests/{STAGING_TAG}");
    let first = single_image("image", "first stage");
    let second = single_image("image", "second stage");
    let third = single_image("image", "third stage");
    a.stage(&stage_request(&k, &first, STAGING_TAG))
        .await
        .unwrap();

    // A proxy answers 502 without passing the PUT on: the tag still holds the first image.
    proxy.inject(Fault::new(502).method("PUT").path_contains(&tag_path));
    a.stage(&stage_request(&k, &second, STAGING_TAG))
        .await
        .unwrap();
    assert_eq!(
        registry_manifest(&registry.url, "apache/restage-lost", STAGING_TAG)
            .await
            .map(|(d, _)| d),
        Some(second.digest.clone())
    );
    assert_eq!(
        proxy.forwarded("PUT", &tag_path),
        2,
        "the first stage's, and the second's sent again"
    );

    // The PUT is lost, and the read-back finds the first image there again: not sent over it.
    proxy.inject(Fault::new(504).method("PUT").path_contains(&tag_path));
    proxy.inject(
        Fault::new(200)
            .method("HEAD")
            .path_contains(&tag_path)
            .skip(1)
            .header("Docker-Content-Digest", &first.digest),
    );
    let err = a
        .stage(&stage_request(&k, &third, STAGING_TAG))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
    assert!(
        err.message.contains(&format!(
            "apache/restage-lost:{STAGING_TAG} holds {}, not {}, and held {} before: written by someone else meanwhile",
            first.digest, third.digest, second.digest
        )),
        "{}",
        err.message
    );
    assert_eq!(proxy.forwarded("PUT", &tag_path), 2, "not sent over it");
}

/// A registry whose `Docker-Content-Digest` says it stored other bytes than were sent
/// fails the push, for manifests and for blobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_stored_other_bytes_than_sent_is_refused() {
    let registry = Registry::start(RegistryAuth::None).await;
    let proxy = FaultProxy::start(&registry.url).await;
    let a = adapter(&proxy.url);
    let image = single_image("image", "stored as sent?");
    let elsewhere = atr_dist_tests::oci_support::sha256(b"what the registry says it stored");

    proxy.inject(
        Fault::new(201)
            .method("PUT")
            .path_contains("/v2/apache/manifest-lie/manifests/")
            .after_forwarding()
            .header("docker-content-digest", &elsewhere),
    );
    let err = a
        .stage(&stage_request(
            &key("apache", "manifest-lie"),
            &image,
            STAGING_TAG,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message.contains(&format!(
            "the registry stored the manifest as {elsewhere}, not {}",
            image.digest
        )),
        "{}",
        err.message
    );

    proxy.inject(
        Fault::new(201)
            .method("PUT")
            .path_contains("/v2/apache/blob-lie/blobs/uploads/")
            .after_forwarding()
            .header("docker-content-digest", &elsewhere),
    );
    let err = a
        .stage(&stage_request(
            &key("apache", "blob-lie"),
            &image,
            STAGING_TAG,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message
            .contains(&format!("the registry stored the blob as {elsewhere}")),
        "{}",
        err.message
    );
    assert_eq!(
        proxy.forwarded("PUT", "/v2/apache/blob-lie/manifests/"),
        0,
        "nothing tagged after the refusal: {:?}",
        proxy.seen()
    );
}

/// Promote from a staging repository mounts every blob; a registry that answers a mount
/// with 202 (an upload session instead) fails the promote before anything is tagged, and
/// the session it opened is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_blob_mount_fails_the_promote_before_tagging() {
    let registry = Registry::start(RegistryAuth::None).await;
    let proxy = FaultProxy::start(&registry.url).await;
    let a = staged_in(&proxy.url, "apache-staging");
    let image = single_image("image", "not mounted");
    a.stage(&stage_request(
        &key("apache", "unmounted"),
        &image,
        STAGING_TAG,
    ))
    .await
    .unwrap();

    let session = "/v2/apache/unmounted/blobs/uploads/session-instead-of-a-mount";
    proxy.inject(
        Fault::new(202)
            .method("POST")
            .path_contains("/v2/apache/unmounted/blobs/uploads/?mount=")
            .header("location", session),
    );
    let err = a
        .promote(&promote_request("unmounted", &image))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message.contains("did not mount blob")
            && err
                .message
                .contains("from apache-staging/unmounted into apache/unmounted"),
        "{}",
        err.message
    );
    assert!(
        proxy
            .seen()
            .iter()
            .any(|s| s.method == "DELETE" && s.path == session),
        "the session is closed: {:?}",
        proxy.seen()
    );
    assert_eq!(proxy.forwarded("PUT", "/v2/apache/unmounted/manifests/"), 0);
    assert_eq!(
        registry_manifest(&registry.url, "apache/unmounted", "1.0.0").await,
        None
    );
}

/// An upload session that is gone by the time its blob is PUT (404 BLOB_UPLOAD_UNKNOWN)
/// is replaced by a fresh one, and the push succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_upload_session_is_replaced_and_the_push_succeeds() {
    let registry = Registry::start(RegistryAuth::None).await;
    let proxy = FaultProxy::start(&registry.url).await;
    let a = adapter(&proxy.url);
    let image = single_image("image", "session expired");
    let k = key("apache", "expired");
    proxy.inject(
        Fault::new(404)
            .method("PUT")
            .path_contains("/v2/apache/expired/blobs/uploads/")
            .body(
                "application/json",
                r#"{"errors":[{"code":"BLOB_UPLOAD_UNKNOWN","message":"blob upload unknown to registry"}]}"#,
            ),
    );
    a.stage(&stage_request(&k, &image, STAGING_TAG))
        .await
        .unwrap();
    // Config and layer: one session each, and one more for the blob whose session was gone.
    assert_eq!(
        proxy.forwarded("POST", "/v2/apache/expired/blobs/uploads/"),
        image.blobs.len() + 1,
        "{:?}",
        proxy.seen()
    );
    assert_eq!(
        proxy.forwarded("PUT", "/v2/apache/expired/blobs/uploads/"),
        image.blobs.len()
    );
    for blob in &image.blobs {
        assert!(registry_has_blob(&registry.url, "apache/expired", blob).await);
    }
    assert_eq!(
        registry_manifest(&registry.url, "apache/expired", STAGING_TAG)
            .await
            .map(|(d, _)| d),
        Some(image.digest.clone())
    );
}
