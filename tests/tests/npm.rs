//! The npm adapter against a real verdaccio 6 on loopback, through the real pipeline.

use std::sync::Arc;
use std::time::Duration;

use atr_dist::config::RetryConfig;
use atr_dist::platform::npm::NpmAdapter;
use atr_dist::platform::{Adapters, PlatformAdapter};
use atr_dist::secret::Secret;
use atr_dist_shared::entities::distribution;
use atr_dist_shared::job::RevisionSourceSpec;
use atr_dist_shared::names::DistTag;
use atr_dist_shared::{DistributionKey, Envelope, ErrorClass, JobState, Platform};
use atr_dist_tests::fault_proxy::{Fault, FaultProxy};
use atr_dist_tests::jobs::Dist;
use atr_dist_tests::npm_support::{
    Verdaccio, integrity, packument_claiming, stage_request, tarball,
};
use atr_dist_tests::pipeline_support::{Db, Harness};
use sea_orm::EntityTrait;
use url::Url;

const FAST: RetryConfig = RetryConfig {
    base_ms: 50,
    cap_ms: 200,
    max_attempts: 3,
};

fn adapter(url: &str, token: &str) -> NpmAdapter {
    NpmAdapter::new(Url::parse(url).unwrap(), Some(Secret::new(token))).unwrap()
}

fn adapters(url: &str, token: &str) -> Adapters {
    let a = Arc::new(adapter(url, token));
    Adapters::default()
        .with(Platform::Npm, a.clone())
        .with(Platform::NpmScoped, a)
}

/// A job for `name` (maybe `@scope/name`) version `v` of release example-`v`.
struct Pkg {
    platform: Platform,
    scope: &'static str,
    name: &'static str,
    version: &'static str,
}

impl Pkg {
    fn full(&self) -> String {
        if self.scope.is_empty() {
            self.name.to_owned()
        } else {
            format!("@{}/{}", self.scope, self.name)
        }
    }

    fn file(&self) -> String {
        format!("{}-{}.tgz", self.name, self.version)
    }

    fn write(&self, h: &Harness, rev: &str, body: &str) {
        let bytes = tarball(&self.full(), self.version, body);
        h.revs
            .write_release("example", self.version, rev, &[(&self.file(), &bytes)]);
    }

    fn dist(&self) -> Dist {
        Dist::new(self.platform, self.scope, self.name, self.version)
    }

    fn stage(&self, rev: &str) -> Envelope {
        self.dist()
            .stage(rev, &[&self.file()], RevisionSourceSpec::Dir, false)
    }

    fn promote(&self, rev: &str) -> Envelope {
        self.dist().promote(rev, RevisionSourceSpec::Dir, "rm")
    }

    fn key(&self) -> DistributionKey {
        self.dist().key()
    }
}

async fn stage_then_promote(pkg_old: Pkg, pkg: Pkg) {
    let registry = Verdaccio::start().await;
    let h = Harness::new(Db::Sqlite, adapters(&registry.url(), &registry.token), FAST).await;
    // An earlier release is latest already.
    pkg_old.write(&h, "00001", "old");
    assert_eq!(h.run(&pkg_old.stage("00001"), 3).await, JobState::Done);
    assert_eq!(h.run(&pkg_old.promote("00001"), 3).await, JobState::Done);

    pkg.write(&h, "00001", "new");
    let stage = pkg.stage("00001");
    h.run_to_done(&stage, 3).await;
    let tags = registry.dist_tags(&pkg.full()).await;
    assert_eq!(tags["rc"], pkg.version);
    assert_eq!(
        tags["latest"], pkg_old.version,
        "staging does not move latest: {tags}"
    );

    // The vote makes revision 00002 with the same files; promote it.
    pkg.write(&h, "00002", "new");
    let promote = pkg.promote("00002");
    h.run_to_done(&promote, 3).await;
    let tags = registry.dist_tags(&pkg.full()).await;
    assert_eq!(tags["latest"], pkg.version);
    let row = distribution::Entity::find_by_id((
        format!("example-{}", pkg.version),
        pkg.platform,
        pkg.scope.to_owned(),
        pkg.name.to_owned(),
        pkg.version.to_owned(),
    ))
    .one(&h.db)
    .await
    .unwrap()
    .unwrap();
    assert!(row.promoted && !row.staging);
    assert!(row.platform_digest.unwrap().starts_with("sha512-"));
    assert!(
        row.api_url
            .unwrap()
            .contains(&pkg.full().replace('/', "%2f"))
    );

    // Promote again: nothing written, recorded as unchanged.
    let again = pkg.promote("00002");
    assert_eq!(h.run(&again, 3).await, JobState::Done);
    assert_eq!(
        h.runs(&again).await[0].outcome.as_deref(),
        Some("unchanged")
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unscoped_package_stages_and_promotes() {
    stage_then_promote(
        Pkg {
            platform: Platform::Npm,
            scope: "",
            name: "example-lib",
            version: "0.9.0",
        },
        Pkg {
            platform: Platform::Npm,
            scope: "",
            name: "example-lib",
            version: "1.0.0",
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_package_stages_and_promotes() {
    stage_then_promote(
        Pkg {
            platform: Platform::NpmScoped,
            scope: "apache",
            name: "example",
            version: "0.9.0",
        },
        Pkg {
            platform: Platform::NpmScoped,
            scope: "apache",
            name: "example",
            version: "1.0.0",
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_staging_tag_is_refused_and_nothing_promoted() {
    let registry = Verdaccio::start().await;
    let h = Harness::new(Db::Sqlite, adapters(&registry.url(), &registry.token), FAST).await;
    let v0 = Pkg {
        platform: Platform::Npm,
        scope: "",
        name: "moved",
        version: "0.9.0",
    };
    let v1 = Pkg {
        platform: Platform::Npm,
        scope: "",
        name: "moved",
        version: "1.0.0",
    };
    let v2 = Pkg {
        platform: Platform::Npm,
        scope: "",
        name: "moved",
        version: "1.0.1",
    };
    v0.write(&h, "00001", "zero");
    assert_eq!(h.run(&v0.stage("00001"), 3).await, JobState::Done);
    assert_eq!(h.run(&v0.promote("00001"), 3).await, JobState::Done);
    v1.write(&h, "00001", "one");
    v2.write(&h, "00001", "two");
    assert_eq!(h.run(&v1.stage("00001"), 3).await, JobState::Done);
    // Somebody stages 1.0.1 over the same tag before the vote on 1.0.0 ends.
    assert_eq!(h.run(&v2.stage("00001"), 3).await, JobState::Done);
    let promote = v1.promote("00001");
    assert_eq!(h.run(&promote, 3).await, JobState::Dead);
    let err = h.last_error(&promote).await;
    assert!(err.contains("rc was overwritten since staging"), "{err}");
    let tags = registry.dist_tags("moved").await;
    assert_eq!(tags["rc"], "1.0.1");
    assert_eq!(
        tags["latest"], "0.9.0",
        "the refused promote changed nothing"
    );
    h.stop().await;
}

/// npm makes the first version of a new package `latest` whatever tag it is published
/// under; promoting it then finds production already holding the voted bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_publish_is_latest_and_promote_finds_it_done() {
    let registry = Verdaccio::start().await;
    let h = Harness::new(Db::Sqlite, adapters(&registry.url(), &registry.token), FAST).await;
    let pkg = Pkg {
        platform: Platform::Npm,
        scope: "",
        name: "brand-new",
        version: "1.0.0",
    };
    pkg.write(&h, "00001", "x");
    assert_eq!(h.run(&pkg.stage("00001"), 3).await, JobState::Done);
    let tags = registry.dist_tags("brand-new").await;
    assert_eq!(
        (tags["rc"].as_str(), tags["latest"].as_str()),
        (Some("1.0.0"), Some("1.0.0"))
    );
    let promote = pkg.promote("00001");
    assert_eq!(h.run(&promote, 3).await, JobState::Done);
    assert_eq!(
        h.runs(&promote).await[0].outcome.as_deref(),
        Some("unchanged")
    );
    h.stop().await;
}

/// The README's first run: a dry-run stage sends and records nothing, so a dry-run promote
/// after it is refused with a message that says what to do; after a real stage, the
/// dry-run promote plans and the real promote publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_promote_needs_a_real_stage_first() {
    let registry = Verdaccio::start().await;
    let h = Harness::new(Db::Sqlite, adapters(&registry.url(), &registry.token), FAST).await;
    let pkg = Pkg {
        platform: Platform::Npm,
        scope: "",
        name: "first-run",
        version: "1.0.0",
    };
    pkg.write(&h, "00001", "x");
    pkg.write(&h, "00002", "x");
    let dry_promote = || {
        let mut env = pkg.promote("00002");
        if let atr_dist_shared::Job::Promote(job) = &mut env.job {
            job.dry_run = true;
        }
        env
    };

    let dry_stage = pkg
        .dist()
        .stage("00001", &[&pkg.file()], RevisionSourceSpec::Dir, true);
    assert_eq!(h.run(&dry_stage, 3).await, JobState::Done);
    let run = &h.runs(&dry_stage).await[0];
    assert_eq!(run.outcome.as_deref(), Some("dry_run"));
    let plan = run.message.clone().unwrap_or_default();
    assert!(
        plan.contains(&format!(
            "writes: PUT {}first-run (publish first-run@1.0.0 under dist-tag rc)",
            registry.url()
        )),
        "{plan}"
    );
    let refused = dry_promote();
    assert_eq!(h.run(&refused, 3).await, JobState::Dead);
    let err = h.last_error(&refused).await;
    assert!(
        err.contains("dry-run stages record nothing; stage for real first"),
        "{err}"
    );
    assert_eq!(h.runs(&refused).await.len(), 1, "permanent: no retry");

    h.run_to_done(&pkg.stage("00001"), 3).await;
    let planned = dry_promote();
    assert_eq!(h.run(&planned, 3).await, JobState::Done);
    assert_eq!(
        h.runs(&planned).await[0].outcome.as_deref(),
        Some("dry_run")
    );
    assert_eq!(registry.dist_tags(&pkg.full()).await["rc"], "1.0.0");
    h.run_to_done(&pkg.promote("00002"), 3).await;
    assert_eq!(registry.dist_tags(&pkg.full()).await["latest"], "1.0.0");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tarball_unknown_package_and_bad_token() {
    let registry = Verdaccio::start().await;
    // A tarball that claims another package is never published.
    let h = Harness::new(Db::Sqlite, adapters(&registry.url(), &registry.token), FAST).await;
    let pkg = Pkg {
        platform: Platform::Npm,
        scope: "",
        name: "honest",
        version: "1.0.0",
    };
    let other = tarball("impostor", "1.0.0", "x");
    h.revs
        .write_release("example", "1.0.0", "00001", &[(&pkg.file(), &other)]);
    let stage = pkg.stage("00001");
    assert_eq!(h.run(&stage, 3).await, JobState::Dead);
    let err = h.last_error(&stage).await;
    assert!(
        err.contains("the tarball is impostor@1.0.0, not honest@1.0.0"),
        "{err}"
    );
    assert_eq!(h.runs(&stage).await.len(), 1, "permanent: no retry");
    h.stop().await;

    // Reading an unknown package finds nothing; promoting it is a clear permanent error.
    let a = adapter(&registry.url(), &registry.token);
    let key = Pkg {
        platform: Platform::Npm,
        scope: "",
        name: "nowhere",
        version: "1.0.0",
    }
    .key();
    assert!(
        a.read_staged(&key, &DistTag::new("rc").unwrap())
            .await
            .unwrap()
            .is_none()
    );
    let req = atr_dist::platform::PromoteRequest {
        key: key.clone(),
        staged_digest: atr_dist_shared::Digest::parse(format!("sha512-{}==", "A".repeat(86)))
            .unwrap(),
        staging_tag: DistTag::new("rc").unwrap(),
        release_tag: DistTag::latest(),
        artifacts: Vec::new(),
        companions: Vec::new(),
    };
    let plan = a.plan_promote(&req);
    assert_eq!(plan.len(), 1, "{plan:?}");
    assert_eq!(
        (plan[0].method, plan[0].url.as_str(), plan[0].what.as_str()),
        (
            "PUT",
            format!("{}-/package/nowhere/dist-tags/latest", registry.url()).as_str(),
            "point dist-tag latest at 1.0.0"
        )
    );
    let err = a.promote(&req).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message
            .contains("nowhere does not exist on the registry"),
        "{}",
        err.message
    );

    // A bad token is an auth error, not retried as if the registry were down.
    let h = Harness::new(Db::Sqlite, adapters(&registry.url(), "not-a-token"), FAST).await;
    let pkg = Pkg {
        platform: Platform::Npm,
        scope: "",
        name: "locked",
        version: "1.0.0",
    };
    pkg.write(&h, "00001", "x");
    let stage = pkg.stage("00001");
    assert_eq!(h.run(&stage, 3).await, JobState::Dead);
    let runs = h.runs(&stage).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].error_class.as_deref(), Some("auth"));
    assert!(
        matches!(runs[0].http_status, Some(401) | Some(403)),
        "{:?}",
        runs[0].http_status
    );
    h.stop().await;
}

/// A token that needs a one-time password, or that is bound to other IP addresses, is
/// refused with what to do about it, permanently: asking again cannot help. Other 401s stay
/// authentication errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_password_and_ip_bound_tokens_are_explained() {
    let registry = Verdaccio::start().await;
    let proxy = FaultProxy::start(&Url::parse(&registry.url()).unwrap()).await;
    let a = adapter(proxy.url.as_str(), &registry.token);
    let cases = [
        (
            "OTP",
            ErrorClass::Permanent,
            "the registry wants a one-time password for this token; use a granular or automation token",
        ),
        (
            "ipaddress",
            ErrorClass::Permanent,
            "this token is restricted to other IP addresses",
        ),
        ("Bearer", ErrorClass::Auth, "401"),
    ];
    for (i, (challenge, class, says)) in cases.into_iter().enumerate() {
        let name = format!("challenged-{i}");
        let key = Dist::new(Platform::Npm, "", &name, "1.0.0").key();
        proxy.inject(
            Fault::new(401)
                .method("PUT")
                .path_contains(&format!("/{name}"))
                .header("www-authenticate", challenge),
        );
        let err = a
            .stage(&stage_request(&key, &tarball(&name, "1.0.0", "x"), "rc"))
            .await
            .unwrap_err();
        assert_eq!(err.class, class, "{challenge}: {}", err.message);
        assert!(err.message.contains(says), "{challenge}: {}", err.message);
        assert_eq!(err.http_status, Some(401));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_outages_are_retried_with_retry_after() {
    let registry = Verdaccio::start().await;
    let proxy = FaultProxy::start(&Url::parse(&registry.url()).unwrap()).await;
    let h = Harness::new(
        Db::Sqlite,
        adapters(proxy.url.as_str(), &registry.token),
        FAST,
    )
    .await;
    let pkg = Pkg {
        platform: Platform::Npm,
        scope: "",
        name: "flaky",
        version: "1.0.0",
    };
    pkg.write(&h, "00001", "x");
    // Short outages are waited out inside the attempt.
    proxy.inject(Fault::new(503).retry_after(1));
    proxy.inject(Fault::new(429).retry_after(1));
    let stage = pkg.stage("00001");
    h.run_to_done(&stage, 3).await;
    assert_eq!(h.runs(&stage).await.len(), 1, "handled inside one attempt");
    // Every PUT the proxy saw, answered by a fault or not.
    let puts = proxy.seen().iter().filter(|s| s.method == "PUT").count();
    assert_eq!(puts, 1, "published once: {:?}", proxy.seen());
    h.stop().await;

    // A long Retry-After fails the attempt as transient, carrying the wait to the job's
    // backoff instead of holding a worker for it.
    let a = adapter(proxy.url.as_str(), &registry.token);
    proxy.inject(Fault::new(429).retry_after(120));
    let err = a
        .read_staged(&pkg.key(), &DistTag::new("rc").unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient);
    assert_eq!(err.retry_after, Some(Duration::from_secs(120)));
    assert_eq!(err.http_status, Some(429));
}

// ---------------------------------------------------------------------------------------
// The adapter stands on its own: called directly, without the pipeline's checks in front of
// it, it still publishes and promotes only the bytes it was given.

fn pkg(name: &'static str, version: &'static str) -> Pkg {
    Pkg {
        platform: Platform::Npm,
        scope: "",
        name,
        version,
    }
}

/// A 409 "version exists" is judged by reading the version back: with the voted bytes the
/// publish is done, with other bytes it is refused, naming both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_409_is_done_with_the_voted_bytes_and_refused_with_others() {
    let registry = Verdaccio::start().await;
    let proxy = FaultProxy::start(&Url::parse(&registry.url()).unwrap()).await;
    let direct = adapter(&registry.url(), &registry.token);
    let through = adapter(proxy.url.as_str(), &registry.token);
    let conflicts = |name: &str| {
        proxy
            .seen()
            .iter()
            .filter(|s| !s.injected && s.method == "PUT" && s.path == format!("/{name}"))
            .map(|s| s.status)
            .collect::<Vec<u16>>()
    };

    // The voted tarball is on the registry already (an earlier attempt published it), but
    // the read before publishing misses it (a replica behind): the publish is sent, and
    // the registry answers 409.
    let ours = pkg("conflict-ours", "1.0.0");
    let voted = tarball("conflict-ours", "1.0.0", "voted");
    direct
        .stage(&stage_request(&ours.key(), &voted, "rc"))
        .await
        .unwrap();
    proxy.inject(
        Fault::new(404)
            .method("GET")
            .path_contains("/conflict-ours"),
    );
    through
        .stage(&stage_request(&ours.key(), &voted, "rc"))
        .await
        .unwrap();
    assert_eq!(conflicts("conflict-ours"), vec![409], "{:?}", proxy.seen());
    assert_eq!(registry.dist_tags("conflict-ours").await["rc"], "1.0.0");

    // Other bytes hold the version: the 409 stands, and the read-back names both.
    let theirs = pkg("conflict-theirs", "1.0.0");
    let other = tarball("conflict-theirs", "1.0.0", "NOT voted");
    let voted = tarball("conflict-theirs", "1.0.0", "voted");
    direct
        .stage(&stage_request(&theirs.key(), &other, "rc"))
        .await
        .unwrap();
    proxy.inject(
        Fault::new(404)
            .method("GET")
            .path_contains("/conflict-theirs"),
    );
    let err = through
        .stage(&stage_request(&theirs.key(), &voted, "rc"))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
    assert_eq!(err.http_status, Some(409));
    assert!(
        err.message.contains("the version exists already")
            && err.message.contains(&format!(
                "read back: conflict-theirs@1.0.0 holds {}, not the voted {}",
                integrity(&other),
                integrity(&voted)
            )),
        "{}",
        err.message
    );
    assert_eq!(conflicts("conflict-theirs"), vec![409]);

    // Read before publishing, other bytes under the version are refused with no PUT sent;
    // the voted bytes there already only need the staging tag.
    let err = through
        .stage(&stage_request(&theirs.key(), &voted, "rc"))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
    assert!(
        err.message.contains(&format!(
            "conflict-theirs@1.0.0 exists on the registry with {}, not the voted {}; npm versions are immutable",
            integrity(&other),
            integrity(&voted)
        )),
        "{}",
        err.message
    );
    assert_eq!(conflicts("conflict-theirs"), vec![409], "no second publish");
    through
        .stage(&stage_request(&theirs.key(), &other, "next"))
        .await
        .unwrap();
    assert_eq!(conflicts("conflict-theirs"), vec![409], "no publish at all");
    assert_eq!(registry.dist_tags("conflict-theirs").await["next"], "1.0.0");
    let doc: serde_json::Value = reqwest::get(format!("{}conflict-theirs", registry.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc["versions"]["1.0.0"]["dist"]["integrity"],
        integrity(&other)
    );
}

/// A registry that moves `latest` to a version published under another tag gets it moved
/// back to where it was: staging never releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_moved_by_publishing_is_moved_back() {
    use sha1::Digest as _;
    let registry = Verdaccio::start().await;
    let proxy = FaultProxy::start(&Url::parse(&registry.url()).unwrap()).await;
    let direct = adapter(&registry.url(), &registry.token);
    let through = adapter(proxy.url.as_str(), &registry.token);
    let old = pkg("moves-latest", "0.9.0");
    direct
        .stage(&stage_request(
            &old.key(),
            &tarball("moves-latest", "0.9.0", "old"),
            "rc",
        ))
        .await
        .unwrap();
    assert_eq!(registry.dist_tags("moves-latest").await["latest"], "0.9.0");

    // The read after publishing (the second GET) says latest moved to 1.0.0.
    let new = pkg("moves-latest", "1.0.0");
    let voted = tarball("moves-latest", "1.0.0", "voted");
    let shasum: String = sha1::Sha1::digest(&voted)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    proxy.inject(
        Fault::new(200)
            .method("GET")
            .path_contains("/moves-latest")
            .skip(1)
            .body(
                "application/json",
                &packument_claiming(
                    "moves-latest",
                    "1.0.0",
                    &["rc", "latest"],
                    serde_json::json!({"integrity": integrity(&voted), "shasum": shasum}),
                ),
            ),
    );
    through
        .stage(&stage_request(&new.key(), &voted, "rc"))
        .await
        .unwrap();
    let moves: Vec<_> = proxy
        .seen()
        .into_iter()
        .filter(|s| s.method == "PUT" && s.path.contains("/dist-tags/latest"))
        .collect();
    assert_eq!(moves.len(), 1, "{:?}", proxy.seen());
    let tags = registry.dist_tags("moves-latest").await;
    assert_eq!(
        (&tags["latest"], &tags["rc"]),
        (&"0.9.0".into(), &"1.0.0".into())
    );
}

/// `promote` checks the version it points the tag at: other bytes than the staged ones
/// are never made `latest`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_refuses_a_version_that_is_not_the_staged_bytes() {
    let registry = Verdaccio::start().await;
    let a = adapter(&registry.url(), &registry.token);
    let old = pkg("recheck", "0.9.0");
    a.stage(&stage_request(
        &old.key(),
        &tarball("recheck", "0.9.0", "old"),
        "rc",
    ))
    .await
    .unwrap();
    let new = pkg("recheck", "1.0.0");
    let voted = tarball("recheck", "1.0.0", "voted");
    a.stage(&stage_request(&new.key(), &voted, "rc"))
        .await
        .unwrap();
    assert_eq!(registry.dist_tags("recheck").await["latest"], "0.9.0");

    let staged_elsewhere = integrity(b"the bytes the pipeline recorded as staged");
    let mut req = atr_dist::platform::PromoteRequest {
        key: new.key(),
        staged_digest: atr_dist_shared::Digest::parse(staged_elsewhere.clone()).unwrap(),
        staging_tag: DistTag::new("rc").unwrap(),
        release_tag: DistTag::latest(),
        artifacts: Vec::new(),
        companions: Vec::new(),
    };
    let err = a.promote(&req).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message.contains(&format!(
            "recheck@1.0.0 has {} on the registry, not the staged {staged_elsewhere}; nothing promoted",
            integrity(&voted)
        )),
        "{}",
        err.message
    );
    assert_eq!(registry.dist_tags("recheck").await["latest"], "0.9.0");

    // With the staged digest it moves the tag.
    req.staged_digest = atr_dist_shared::Digest::parse(integrity(&voted)).unwrap();
    a.promote(&req).await.unwrap();
    assert_eq!(registry.dist_tags("recheck").await["latest"], "1.0.0");
}

/// After publishing, the registry's `dist.shasum` must be the tarball's: a registry that
/// stored something else is caught before any tag is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shasum_other_than_the_tarballs_after_publishing_is_refused() {
    let registry = Verdaccio::start().await;
    let proxy = FaultProxy::start(&Url::parse(&registry.url()).unwrap()).await;
    let a = adapter(proxy.url.as_str(), &registry.token);
    let p = pkg("shasum-lie", "1.0.0");
    let voted = tarball("shasum-lie", "1.0.0", "voted");
    // The read before publishing passes; the read after it reports another shasum.
    let lie = packument_claiming(
        "shasum-lie",
        "1.0.0",
        &["rc"],
        serde_json::json!({"integrity": integrity(&voted), "shasum": "0000000000000000000000000000000000000000"}),
    );
    proxy.inject(
        Fault::new(200)
            .method("GET")
            .path_contains("/shasum-lie")
            .skip(1)
            .body("application/json", &lie),
    );
    let err = a
        .stage(&stage_request(&p.key(), &voted, "rc"))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message.contains(
            "after publishing, the registry reports shasum \"0000000000000000000000000000000000000000\" for shasum-lie@1.0.0, not "
        ),
        "{}",
        err.message
    );
    assert_eq!(
        proxy.forwarded("PUT", "/-/package/shasum-lie/dist-tags/"),
        0,
        "no tag set after the refusal: {:?}",
        proxy.seen()
    );
}

/// A version whose `dist.integrity` is missing cannot be verified, and is not taken for
/// "nothing there".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_without_dist_integrity_is_an_error() {
    let registry = Verdaccio::start().await;
    let proxy = FaultProxy::start(&Url::parse(&registry.url()).unwrap()).await;
    let a = adapter(proxy.url.as_str(), &registry.token);
    let p = pkg("no-integrity", "1.0.0");
    let lie = packument_claiming(
        "no-integrity",
        "1.0.0",
        &["rc"],
        serde_json::json!({"shasum": "0000000000000000000000000000000000000000"}),
    );
    proxy.inject(
        Fault::new(200)
            .method("GET")
            .path_contains("/no-integrity")
            .body("application/json", &lie),
    );
    let err = a
        .read_staged(&p.key(), &DistTag::new("rc").unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message
            .contains("no-integrity 1.0.0 has no dist.integrity on the registry"),
        "{}",
        err.message
    );
}
