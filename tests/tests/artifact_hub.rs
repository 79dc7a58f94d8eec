//! The Artifact Hub adapter against a contract mock of Artifact Hub's read API (wiremock,
//! built from artifacthub/hub `docs/api/openapi.yaml`: `HelmPackage` and `Repository`),
//! through the real pipeline on SQLite and PostgreSQL. One mock server plays the staging
//! instance, another production.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use atr_dist::config::RetryConfig;
use atr_dist::pipeline::wait::Schedule;
use atr_dist::platform::artifact_hub::{
    ArtifactHubAdapter, RATE_LIMITED_WAIT, Settings, identity_digest,
};
use atr_dist::platform::http::{RetryBudget, RetryLimits};
use atr_dist::platform::{Adapters, PlatformAdapter, StageRequest};
use atr_dist_shared::job::RevisionSourceSpec;
use atr_dist_shared::names::{DistTag, RevisionKey, RevisionNumber};
use atr_dist_shared::{AtrTaskStatus, Envelope, ErrorClass, JobState, Platform};
use atr_dist_tests::jobs::Dist;
use atr_dist_tests::pipeline_support::{Db, Harness, sealed};
use serde_json::{Value, json};
use url::Url;
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const FAST: RetryConfig = RetryConfig {
    base_ms: 50,
    cap_ms: 200,
    max_attempts: 3,
};

const REPO: &str = "apache-example";
const CHART: &str = "example";
const VERSION: &str = "1.0.0";
const CHART_FILE: &str = "example-1.0.0.tgz";
/// When production lists the version (2024-06-10T06:13:20Z).
const TS: i64 = 1_718_000_000;

fn dist() -> Dist {
    Dist::new(Platform::ArtifactHub, REPO, CHART, VERSION)
}

fn stage_job(dry_run: bool) -> Envelope {
    dist().stage(
        "00001",
        &[CHART_FILE, &format!("{CHART_FILE}.prov")],
        RevisionSourceSpec::Dir,
        dry_run,
    )
}

fn promote_job() -> Envelope {
    dist().promote("00001", RevisionSourceSpec::Dir, "rm")
}

/// A `HelmPackage` with the documented required fields, listing `versions`.
fn package(versions: &[(&str, i64)]) -> Value {
    let available: Vec<Value> = versions
        .iter()
        .map(|(v, ts)| {
            json!({"version": v, "ts": ts, "prerelease": false, "contains_security_updates": false})
        })
        .collect();
    let (latest, ts) = versions.last().copied().unwrap_or(("0.9.0", TS - 100));
    json!({
        "package_id": "5c3ac0a2-2b62-4c1c-9d57-3a0f4f2e0f11",
        "name": CHART,
        "normalized_name": CHART,
        "stars": 0,
        "version": latest,
        "latest_version": latest,
        "ts": ts,
        "repository": {
            "repository_id": "0f1c7a52-8a6b-4f3e-9a8e-1d2c3b4a5f60",
            "kind": 0,
            "name": REPO,
            "url": "https://downloads.example.org/helm",
            "verified_publisher": true,
            "official": false,
            "scanner_disabled": false
        },
        "available_versions": available,
        "has_values_schema": false,
        "has_changelog": false,
        "contains_security_updates": false,
        "prerelease": false,
        "content_url": format!("https://downloads.example.org/helm/{CHART}-{latest}.tgz")
    })
}

/// A `Repository` search result.
fn repository(name: &str) -> Value {
    json!({
        "repository_id": "0f1c7a52-8a6b-4f3e-9a8e-1d2c3b4a5f60",
        "kind": 0,
        "name": name,
        "url": "https://downloads.example.org/helm",
        "verified_publisher": true,
        "official": false,
        "scanner_disabled": false,
        "digest": "0123abcd",
        "last_tracking_ts": TS,
        "last_scanning_ts": TS,
        "disabled": false
    })
}

fn package_path() -> String {
    format!("/api/v1/packages/helm/{REPO}/{CHART}")
}

/// Answers the repository search of `server` with `repos` (Helm kind).
async fn repositories(server: &MockServer, repos: &[&str]) {
    let body: Vec<Value> = repos.iter().map(|r| repository(r)).collect();
    Mock::given(method("GET"))
        .and(path("/api/v1/repositories/search"))
        .and(query_param("name", REPO))
        .and(query_param("kind", "0"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(server)
        .await;
}

/// The package endpoint of `server`, answering its n-th request (from 0) with `answer(n)`.
async fn package_endpoint(
    server: &MockServer,
    answer: impl Fn(usize) -> ResponseTemplate + Send + Sync + 'static,
) -> Arc<AtomicUsize> {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    Mock::given(method("GET"))
        .and(path(package_path()))
        .respond_with(move |_: &Request| answer(counted.fetch_add(1, Ordering::SeqCst)))
        .mount(server)
        .await;
    calls
}

fn not_found() -> ResponseTemplate {
    ResponseTemplate::new(404).set_body_json(json!({"message": "not found"}))
}

fn listed(listed: bool) -> ResponseTemplate {
    let versions: &[(&str, i64)] = if listed {
        &[("0.9.0", TS - 100), (VERSION, TS)]
    } else {
        &[("0.9.0", TS - 100)]
    };
    ResponseTemplate::new(200).set_body_json(package(versions))
}

/// Staging and production instances, and a pipeline whose waits are short.
struct Hub {
    staging: MockServer,
    production: MockServer,
}

impl Hub {
    async fn start() -> Hub {
        Hub {
            staging: MockServer::start().await,
            production: MockServer::start().await,
        }
    }

    fn adapter(&self, rate_limited_wait: Duration) -> ArtifactHubAdapter {
        ArtifactHubAdapter::new(Settings {
            base_url: Url::parse(&self.production.uri()).unwrap(),
            staging_base_url: Some(Url::parse(&self.staging.uri()).unwrap()),
            rate_limited_wait,
        })
        .unwrap()
    }

    async fn harness(&self, db: Db, deadline: Duration) -> Harness {
        let adapter = Arc::new(self.adapter(Duration::from_millis(10)));
        let adapters = Adapters::default().with(Platform::ArtifactHub, adapter);
        let h = Harness::custom(db, adapters, FAST, |p| {
            p.waits = Schedule {
                first: Duration::from_millis(20),
                max: Duration::from_millis(80),
            };
            p.wait_deadlines.insert(Platform::ArtifactHub, deadline);
            // One retry inside an attempt: a 429 that persists becomes a wait quickly.
            p.retry_limits = RetryLimits {
                retries: 1,
                wait: Duration::from_secs(5),
            };
        })
        .await;
        h.revs.write_release(
            "example",
            VERSION,
            "00001",
            &[
                (CHART_FILE, b"the voted chart archive"),
                (&format!("{CHART_FILE}.prov"), b"its provenance"),
            ],
        );
        h
    }

    /// Every request either instance received was a read.
    async fn only_reads(&self) -> usize {
        let mut n = 0;
        for server in [&self.staging, &self.production] {
            for r in server.received_requests().await.unwrap() {
                assert_eq!(r.method.as_str(), "GET", "{} {}", r.method, r.url);
                n += 1;
            }
        }
        n
    }
}

async fn outcomes(h: &Harness, job: &Envelope) -> Vec<String> {
    h.runs(job)
        .await
        .iter()
        .map(|r| r.outcome.clone().unwrap_or_default())
        .collect()
}

/// Stage finds the repository known to staging (the chart not indexed there yet); promote
/// waits, spending no attempt, while production has no such package and then lists the
/// chart without the version, and records the version once listed.
async fn the_version_appears_after_polls(db: Db) {
    let hub = Hub::start().await;
    repositories(&hub.staging, &[REPO]).await;
    repositories(&hub.production, &[REPO]).await;
    let staged_reads = package_endpoint(&hub.staging, |_| not_found()).await;
    // Requests 0-1: no package yet; 2-3: the package without the version; then listed.
    let production_reads = package_endpoint(&hub.production, |n| match n {
        0 | 1 => not_found(),
        2 | 3 => listed(false),
        _ => listed(true),
    })
    .await;
    let h = hub.harness(db, Duration::from_secs(60)).await;

    let dry = stage_job(true);
    h.run_to_done(&dry, 1).await;
    let msg = h.runs(&dry).await[0].message.clone().unwrap();
    assert!(
        msg.contains("already staged as sha256:") && msg.ends_with("writes: none"),
        "{msg}"
    );

    let stage = stage_job(false);
    h.run_to_done(&stage, 1).await;
    assert_eq!(outcomes(&h, &stage).await, ["completed"]);
    assert!(
        staged_reads.load(Ordering::SeqCst) >= 2,
        "read before and after"
    );
    let row = h.row().await.unwrap();
    let digest = identity_digest(&dist().key()).to_string();
    assert!(row.staging && !row.promoted);
    assert_eq!(row.platform_digest.as_deref(), Some(digest.as_str()));
    assert_eq!(
        row.api_url.as_deref(),
        Some(
            format!(
                "{}/api/v1/packages/helm/{REPO}/{CHART}/{VERSION}",
                hub.staging.uri()
            )
            .as_str()
        )
    );
    assert_eq!(row.web_url, None, "staging does not list the version");

    // Staging again finds it recorded.
    let again = stage_job(false);
    h.run_to_done(&again, 1).await;
    assert_eq!(outcomes(&h, &again).await, ["unchanged"]);

    let promote = promote_job();
    h.run_to_done(&promote, 1).await;
    let runs = h.runs(&promote).await;
    assert_eq!(
        outcomes(&h, &promote).await,
        ["waiting", "waiting", "completed"],
        "{runs:?}"
    );
    assert!(
        runs.iter().all(|r| r.attempt == 1),
        "waits spend no attempt"
    );
    let first = runs[0].message.clone().unwrap();
    assert!(
        first.contains("no attempt spent")
            && first.contains(&format!(
                "tracks the repository {REPO} but has not indexed the chart {CHART} yet"
            )),
        "{first}"
    );
    let second = runs[1].message.clone().unwrap();
    assert!(
        second.contains(&format!(
            "{REPO}/{CHART} {VERSION} is not in Artifact Hub's available_versions"
        )) && second.contains("1 versions listed, newest 0.9.0"),
        "{second}"
    );
    assert!(
        runs[2]
            .message
            .as_deref()
            .unwrap()
            .contains("is listed in production as sha256:"),
        "{runs:?}"
    );
    // Two reads an attempt, and the pipeline's read-back after the last.
    assert_eq!(production_reads.load(Ordering::SeqCst), 6);

    let row = h.row().await.unwrap();
    assert!(row.promoted && !row.staging, "{row:?}");
    assert_eq!(row.promoted_digest.as_deref(), Some(digest.as_str()));
    assert_eq!(
        row.upload_date.map(|d| d.timestamp()),
        Some(TS),
        "the upload date is the version's ts"
    );
    assert_eq!(
        row.web_url.as_deref(),
        Some(
            format!(
                "{}/packages/helm/{REPO}/{CHART}/{VERSION}",
                hub.production.uri()
            )
            .as_str()
        )
    );
    assert_eq!(
        row.api_url.as_deref(),
        Some(
            format!(
                "{}/api/v1/packages/helm/{REPO}/{CHART}/{VERSION}",
                hub.production.uri()
            )
            .as_str()
        )
    );

    // Promoting again finds it done and records nothing new; nothing is ever written.
    let repeat = promote_job();
    h.run_to_done(&repeat, 1).await;
    assert_eq!(outcomes(&h, &repeat).await, ["unchanged"]);
    assert!(hub.only_reads().await > 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_appears_after_polls_on_sqlite() {
    the_version_appears_after_polls(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_appears_after_polls_on_postgres() {
    the_version_appears_after_polls(Db::Postgres).await;
}

/// A version that never appears: the waits end at the platform's deadline, and the job ends
/// dead, `transient` (ATR's BROKEN), saying what it waited for and how long.
async fn a_version_that_never_appears_ends_broken(db: Db) {
    let hub = Hub::start().await;
    repositories(&hub.staging, &[REPO]).await;
    package_endpoint(&hub.staging, |_| listed(false)).await;
    package_endpoint(&hub.production, |_| listed(false)).await;
    let h = hub.harness(db, Duration::from_millis(400)).await;
    h.run_to_done(&stage_job(false), 1).await;

    let promote = promote_job();
    assert_eq!(h.run(&promote, 5).await, JobState::Dead);
    let s =
        h.t.queue
            .show(&promote.id.to_string())
            .await
            .unwrap()
            .unwrap()
            .summary;
    assert_eq!(s.attempt, 1, "giving up spends no more attempts");
    let class = s.error_class.as_deref().and_then(ErrorClass::parse);
    assert_eq!(class, Some(ErrorClass::Transient));
    assert_eq!(AtrTaskStatus::of(s.state, class), AtrTaskStatus::Broken);
    let msg = s.last_error.unwrap();
    assert!(
        msg.contains(&format!(
            "{REPO}/{CHART} {VERSION} is not in Artifact Hub's available_versions"
        )) && msg.contains("gave up after waiting")
            && msg.contains("wait_deadline_secs is 400ms"),
        "{msg}"
    );
    let outcomes = outcomes(&h, &promote).await;
    assert!(
        outcomes.len() >= 3,
        "it waited before giving up: {outcomes:?}"
    );
    assert_eq!(outcomes.last().map(String::as_str), Some("failed"));
    assert!(!h.row().await.unwrap().promoted);
    hub.only_reads().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_never_appears_ends_broken_on_sqlite() {
    a_version_that_never_appears_ends_broken(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_never_appears_ends_broken_on_postgres() {
    a_version_that_never_appears_ends_broken(Db::Postgres).await;
}

/// A 404 for the package where Artifact Hub tracks no repository of that name can never
/// end well: stage is refused on staging, and promote on production, at once and
/// `permanent`, without waiting. A repository whose name only contains the one asked for
/// does not count.
async fn an_unknown_repository_is_refused(db: Db) {
    let hub = Hub::start().await;
    repositories(&hub.staging, &[]).await;
    repositories(&hub.production, &["apache-example-incubator"]).await;
    package_endpoint(&hub.staging, |_| not_found()).await;
    package_endpoint(&hub.production, |_| not_found()).await;
    let h = hub.harness(db, Duration::from_secs(60)).await;

    let stage = stage_job(false);
    assert_eq!(h.run(&stage, 3).await, JobState::Dead);
    let runs = h.runs(&stage).await;
    assert_eq!(runs.len(), 1, "refused, not retried: {runs:?}");
    assert_eq!(runs[0].error_class.as_deref(), Some("permanent"));
    let msg = h.last_error(&stage).await;
    assert!(
        msg.contains(&format!(
            "Artifact Hub at {}/ tracks no Helm repository named {REPO}",
            hub.staging.uri()
        )) && msg.contains("nothing was sent"),
        "{msg}"
    );
    assert!(h.row().await.is_none(), "nothing recorded as staged");

    // Staged where staging knows it, production does not: promote is refused too.
    let hub2 = Hub::start().await;
    repositories(&hub2.staging, &[REPO]).await;
    repositories(&hub2.production, &["apache-example-incubator"]).await;
    package_endpoint(&hub2.staging, |_| not_found()).await;
    package_endpoint(&hub2.production, |_| not_found()).await;
    let h2 = hub2.harness(db, Duration::from_secs(60)).await;
    h2.run_to_done(&stage_job(false), 1).await;
    let promote = promote_job();
    assert_eq!(h2.run(&promote, 3).await, JobState::Dead);
    let runs = h2.runs(&promote).await;
    assert_eq!(runs.len(), 1, "no wait, no retry: {runs:?}");
    assert_eq!(runs[0].outcome.as_deref(), Some("failed"));
    assert_eq!(runs[0].error_class.as_deref(), Some("permanent"));
    assert_eq!(runs[0].http_status, Some(404));
    let msg = h2.last_error(&promote).await;
    assert!(
        msg.contains(&format!(
            "tracks no Helm repository named {REPO}, so {CHART} {VERSION} can never appear there"
        )),
        "{msg}"
    );
    hub.only_reads().await;
    hub2.only_reads().await;
    h.stop().await;
    h2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_repository_is_refused_on_sqlite() {
    an_unknown_repository_is_refused(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_repository_is_refused_on_postgres() {
    an_unknown_repository_is_refused(Db::Postgres).await;
}

/// A 429 without headers (as Artifact Hub sends them) is a wait, not a failure: after the
/// attempt's one retry, the job waits without spending an attempt, and promotes once
/// Artifact Hub answers again.
async fn rate_limits_are_waited_out(db: Db) {
    let hub = Hub::start().await;
    repositories(&hub.staging, &[REPO]).await;
    package_endpoint(&hub.staging, |_| listed(false)).await;
    // Four 429s: two attempts of a try and a retry each.
    let reads = package_endpoint(&hub.production, |n| {
        if n < 4 {
            ResponseTemplate::new(429)
        } else {
            listed(true)
        }
    })
    .await;
    let h = hub.harness(db, Duration::from_secs(60)).await;
    h.run_to_done(&stage_job(false), 1).await;
    let promote = promote_job();
    h.run_to_done(&promote, 1).await;
    let runs = h.runs(&promote).await;
    assert_eq!(
        outcomes(&h, &promote).await,
        ["waiting", "waiting", "completed"],
        "{runs:?}"
    );
    let msg = runs[0].message.clone().unwrap();
    assert!(
        msg.contains("no attempt spent")
            && msg.contains("is rate limiting this worker")
            && msg.contains("429"),
        "{msg}"
    );
    assert_eq!(reads.load(Ordering::SeqCst), 6);
    let shown =
        h.t.queue
            .show(&promote.id.to_string())
            .await
            .unwrap()
            .unwrap();
    assert!(
        shown.events.iter().any(|e| e.event == "http_retry"),
        "the in-attempt retry is in the timeline: {:?}",
        shown.events
    );
    assert!(h.row().await.unwrap().promoted);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_waited_out_on_sqlite() {
    rate_limits_are_waited_out(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_waited_out_on_postgres() {
    rate_limits_are_waited_out(Db::Postgres).await;
}

/// Called directly, a 429 without `Retry-After` is a wait of at least a minute; with a
/// longer `Retry-After`, that long.
#[tokio::test]
async fn a_429_without_headers_waits_a_minute() {
    let hub = Hub::start().await;
    Mock::given(method("GET"))
        .and(path(package_path()))
        .respond_with(ResponseTemplate::new(429))
        .mount(&hub.production)
        .await;
    let adapter = hub.adapter(RATE_LIMITED_WAIT);
    let no_retries = no_retries();
    let key = dist().key();
    let err = no_retries
        .scope(adapter.read_promoted(&key, &DistTag::latest()))
        .await
        .unwrap_err();
    assert!(err.not_yet, "{err:?}");
    assert_eq!(err.class, ErrorClass::Transient);
    assert_eq!(err.retry_after, Some(Duration::from_secs(60)));
    assert_eq!(err.http_status, Some(429));

    hub.production.reset().await;
    Mock::given(method("GET"))
        .and(path(package_path()))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "300"))
        .mount(&hub.production)
        .await;
    let err = no_retries
        .scope(adapter.read_promoted(&key, &DistTag::latest()))
        .await
        .unwrap_err();
    assert!(err.not_yet);
    assert_eq!(err.retry_after, Some(Duration::from_secs(300)));
}

/// The files a job may name are the chart's archive and its provenance file, by name;
/// anything else is refused before Artifact Hub is asked, and no file changes the digest.
#[tokio::test]
async fn only_the_charts_own_files_may_be_named() {
    let hub = Hub::start().await;
    let adapter = hub.adapter(RATE_LIMITED_WAIT);
    let key = dist().key();
    let request = |files: &[&str]| StageRequest {
        key: key.clone(),
        revision: RevisionKey::of(
            &dist().release().key(),
            &RevisionNumber::new("00001").unwrap(),
        ),
        artifacts: files.iter().map(|f| sealed(f, b"bytes")).collect(),
        companions: Vec::new(),
        staging_tag: DistTag::new("staging").unwrap(),
    };
    let want = identity_digest(&key);
    assert_eq!(adapter.expected_digest(&request(&[])).await.unwrap(), want);
    assert_eq!(
        adapter
            .expected_digest(&request(&[CHART_FILE, "charts/example-1.0.0.tgz.prov"]))
            .await
            .unwrap(),
        want
    );
    for wrong in [
        "example-1.0.1.tgz",
        "other-1.0.0.tgz",
        "example-1.0.0.tgz.asc",
    ] {
        let err = adapter
            .expected_digest(&request(&[CHART_FILE, wrong]))
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent, "{wrong}");
        assert!(
            err.message
                .starts_with(&format!("{wrong}: Artifact Hub takes no files"))
                && err
                    .message
                    .contains("example-1.0.0.tgz and its provenance file example-1.0.0.tgz.prov"),
            "{}",
            err.message
        );
    }
    assert!(adapter.plan_stage(&request(&[CHART_FILE])).is_empty());
    assert_eq!(hub.only_reads().await, 0, "nothing asked of Artifact Hub");
}

/// An attempt's budget without retries: each answer below is the adapter's first.
fn no_retries() -> Arc<RetryBudget> {
    RetryBudget::new(
        RetryLimits {
            retries: 0,
            wait: Duration::ZERO,
        },
        None,
    )
}

/// Artifact Hub answering for another chart, or for this chart of another repository, is
/// refused (`permanent`): every check after it would be about the wrong package.
#[tokio::test]
async fn an_answer_for_another_chart_or_repository_is_refused() {
    let key = dist().key();
    for (chart, repo) in [("other-chart", REPO), (CHART, "apache-other")] {
        let hub = Hub::start().await;
        let mut body = package(&[("0.9.0", TS - 100), (VERSION, TS)]);
        body["name"] = json!(chart);
        body["normalized_name"] = json!(chart);
        body["repository"]["name"] = json!(repo);
        Mock::given(method("GET"))
            .and(path(package_path()))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .mount(&hub.production)
            .await;
        let err = no_retries()
            .scope(
                hub.adapter(RATE_LIMITED_WAIT)
                    .read_promoted(&key, &DistTag::latest()),
            )
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
        assert!(
            err.message.contains(&format!(
                "Artifact Hub answered with chart {chart} of repository {repo}, not {CHART} of {REPO}"
            )),
            "{}",
            err.message
        );
    }
}

/// A package read answered with neither success nor a 404 is an error, not a document: a
/// 403 stays a 403 (`auth`), whatever its body.
#[tokio::test]
async fn a_refused_package_read_is_an_error_not_a_document() {
    let hub = Hub::start().await;
    Mock::given(method("GET"))
        .and(path(package_path()))
        .respond_with(ResponseTemplate::new(403).set_body_json(json!({"message": "forbidden"})))
        .mount(&hub.production)
        .await;
    let err = no_retries()
        .scope(
            hub.adapter(RATE_LIMITED_WAIT)
                .read_promoted(&dist().key(), &DistTag::latest()),
        )
        .await
        .unwrap_err();
    assert_eq!(err.http_status, Some(403), "{}", err.message);
    assert_eq!(err.class, ErrorClass::Auth, "{}", err.message);
    assert!(err.message.contains("forbidden"), "{}", err.message);
}

/// Staging's listing decides what stage records: without the version, the repository and
/// chart are known but there is no web page or upload date yet; once staging lists the
/// version, both are the version's own (not another listed version's).
#[tokio::test]
async fn stage_records_the_version_once_staging_lists_it() {
    let hub = Hub::start().await;
    package_endpoint(&hub.staging, |n| listed(n > 0)).await;
    let adapter = hub.adapter(RATE_LIMITED_WAIT);
    let key = dist().key();
    let tag = DistTag::new("staging").unwrap();
    let api_url = format!(
        "{}/api/v1/packages/helm/{REPO}/{CHART}/{VERSION}",
        hub.staging.uri()
    );
    let before = no_retries()
        .scope(adapter.read_staged(&key, &tag))
        .await
        .unwrap()
        .expect("the chart is known to staging");
    assert_eq!(before.digest, identity_digest(&key));
    assert_eq!(before.api_url.as_deref(), Some(api_url.as_str()));
    assert_eq!((before.web_url, before.upload_date), (None, None));
    let after = no_retries()
        .scope(adapter.read_staged(&key, &tag))
        .await
        .unwrap()
        .expect("the chart is known to staging");
    assert_eq!(after.digest, identity_digest(&key));
    assert_eq!(
        after.web_url.as_deref(),
        Some(
            format!(
                "{}/packages/helm/{REPO}/{CHART}/{VERSION}",
                hub.staging.uri()
            )
            .as_str()
        )
    );
    assert_eq!(after.upload_date.map(|d| d.timestamp()), Some(TS));
}

/// Repositories whose names contain `REPO`, `n` of them from number `from` on (none is it).
fn namesakes(from: usize, n: usize) -> Vec<Value> {
    (from..from + n)
        .map(|i| repository(&format!("{REPO}-{i}")))
        .collect()
}

/// The `offset`s of the repository searches `server` received, in order.
async fn search_offsets(server: &MockServer) -> Vec<String> {
    let mut offsets = Vec::new();
    for r in server.received_requests().await.unwrap() {
        if r.url.path() != "/api/v1/repositories/search" {
            continue;
        }
        let query: Vec<(String, String)> = r.url.query_pairs().into_owned().collect();
        assert!(
            query.contains(&("limit".to_owned(), "60".to_owned())),
            "{query:?}"
        );
        offsets.extend(
            query
                .into_iter()
                .filter(|(k, _)| k == "offset")
                .map(|(_, v)| v),
        );
    }
    offsets
}

/// The repository search is a pattern match, read in pages of 60: a short page without the
/// repository is the last (it is not tracked); a repository on the second page is found
/// (offsets 0 and 60); when 20 full pages hold only namesakes, the adapter cannot tell and
/// says so (`permanent`), having asked 20 times.
#[tokio::test]
async fn the_repository_search_is_read_page_by_page() {
    let key = dist().key();
    let tag = DistTag::new("staging").unwrap();
    let few = Hub::start().await;
    package_endpoint(&few.staging, |_| not_found()).await;
    Mock::given(method("GET"))
        .and(path("/api/v1/repositories/search"))
        .respond_with(ResponseTemplate::new(200).set_body_json(namesakes(0, 5)))
        .mount(&few.staging)
        .await;
    let unknown = no_retries()
        .scope(few.adapter(RATE_LIMITED_WAIT).read_staged(&key, &tag))
        .await
        .unwrap();
    assert!(unknown.is_none(), "{unknown:?}");
    assert_eq!(search_offsets(&few.staging).await, ["0"]);

    let hub = Hub::start().await;
    package_endpoint(&hub.staging, |_| not_found()).await;
    let search = || {
        Mock::given(method("GET"))
            .and(path("/api/v1/repositories/search"))
            .and(query_param("name", REPO))
            .and(query_param("kind", "0"))
            .and(query_param("limit", "60"))
    };
    search()
        .and(query_param("offset", "0"))
        .respond_with(ResponseTemplate::new(200).set_body_json(namesakes(0, 60)))
        .mount(&hub.staging)
        .await;
    let mut second = namesakes(60, 5);
    second.push(repository(REPO));
    search()
        .and(query_param("offset", "60"))
        .respond_with(ResponseTemplate::new(200).set_body_json(second))
        .mount(&hub.staging)
        .await;
    let observed = no_retries()
        .scope(hub.adapter(RATE_LIMITED_WAIT).read_staged(&key, &tag))
        .await
        .unwrap()
        .expect("the repository is on the second page");
    assert_eq!(observed.web_url, None, "the chart is not indexed yet");
    assert_eq!(search_offsets(&hub.staging).await, ["0", "60"]);

    let crowded = Hub::start().await;
    package_endpoint(&crowded.staging, |_| not_found()).await;
    Mock::given(method("GET"))
        .and(path("/api/v1/repositories/search"))
        .respond_with(ResponseTemplate::new(200).set_body_json(namesakes(0, 60)))
        .mount(&crowded.staging)
        .await;
    let err = no_retries()
        .scope(crowded.adapter(RATE_LIMITED_WAIT).read_staged(&key, &tag))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
    assert!(
        err.message.contains(&format!(
            "more than 1200 repositories match the name {REPO} and none of those read is it"
        )),
        "{}",
        err.message
    );
    let offsets: Vec<String> = (0..20).map(|p| (p * 60).to_string()).collect();
    assert_eq!(search_offsets(&crowded.staging).await, offsets);
}
