//! The Maven adapter against a stateful contract mock of Apache's Nexus 2 staging API, its
//! staging content, Maven Central and the Central Publisher Portal (the requests and answers
//! of `shared/reference/platforms.md` and the Nexus/Portal documentation), through the real
//! pipeline on SQLite and PostgreSQL.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atr_dist::config::{PromoteBackend, RetryConfig};
use atr_dist::pipeline::wait::Schedule;
use atr_dist::platform::maven::{MavenAdapter, MavenSettings};
use atr_dist::platform::{Adapters, Observed, PlatformAdapter, PlatformError, StageRequest};
use atr_dist::secret::Secret;
use atr_dist_shared::job::{Job, RevisionSourceSpec};
use atr_dist_shared::names::{DistTag, ProjectKey, RevisionKey, RevisionNumber};
use atr_dist_shared::{Envelope, JobState, Platform};
use atr_dist_tests::jobs::Dist;
use atr_dist_tests::pipeline_support::{Db, Harness, sealed};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256, Sha512};
use url::Url;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers::any};

const FAST: RetryConfig = RetryConfig {
    base_ms: 20,
    cap_ms: 100,
    max_attempts: 3,
};

const VDIR: &str = "org/apache/example/example-lib/1.0.0";
const ADIR: &str = "org/apache/example/example-lib";
const REPO: &str = "orgapache-1001";
const DEPLOYMENT: &str = "b3c1f2de-0000-4000-8000-000000000001";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The voted files: name and bytes (a checksum file among them).
fn voted() -> Vec<(String, Vec<u8>)> {
    let jar = b"PK\x03\x04 the voted classes".to_vec();
    let jar_sha512 = format!("{}  example-lib-1.0.0.jar\n", hex(&Sha512::digest(&jar)));
    vec![
        ("example-lib-1.0.0.jar".into(), jar),
        (
            "example-lib-1.0.0.pom".into(),
            b"<project>voted</project>".to_vec(),
        ),
        (
            "example-lib-1.0.0.jar.asc".into(),
            b"-----BEGIN PGP SIGNATURE----- jar".to_vec(),
        ),
        (
            "example-lib-1.0.0.pom.asc".into(),
            b"-----BEGIN PGP SIGNATURE----- pom".to_vec(),
        ),
        (
            "example-lib-1.0.0.jar.sha512".into(),
            jar_sha512.into_bytes(),
        ),
    ]
}

/// What a repository serves for the files: each, plus the `.sha256` files Nexus and Central
/// generate beside them.
fn with_checksums(files: &[(String, Vec<u8>)]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for (name, bytes) in files {
        out.insert(name.clone(), bytes.clone());
        if !name.ends_with(".sha512") {
            out.insert(format!("{name}.sha256"), sha256(bytes).into_bytes());
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Release {
    /// Released on the next look at the activity; Central then has the files.
    Succeeds,
    /// The release activity reports a rule failure.
    RuleFails,
    /// Never finishes.
    Hangs,
}

struct Repo {
    id: String,
    kind: String,
    /// Nexus is closing, releasing or dropping it.
    transitioning: bool,
    files: BTreeMap<String, Vec<u8>>,
    activity: Vec<Value>,
}

struct Deployment {
    state: String,
    files: BTreeMap<String, Vec<u8>>,
    /// The state a publish leads to, after one status read in PUBLISHING.
    then: &'static str,
}

struct State {
    repos: Vec<Repo>,
    central: BTreeMap<String, Vec<u8>>,
    release: Release,
    deployment: Option<Deployment>,
    /// The versions the staging group's maven-metadata.xml lists.
    group_versions: Vec<String>,
    /// The next release request's answer, in place of 201: (whether it takes effect, the
    /// status the client gets).
    promote_fault: Option<(bool, u16)>,
    /// Requests whose path contains the text are answered with the status, once each,
    /// without effect.
    faults: Vec<(String, u16)>,
    /// Every write (POST) received, as "METHOD path".
    writes: Vec<String>,
}

#[derive(Clone)]
struct Platform2(Arc<Mutex<State>>);

fn metadata(versions: &[&str]) -> String {
    let v: String = versions
        .iter()
        .map(|v| format!("<version>{v}</version>"))
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><metadata><groupId>org.apache.example</groupId><artifactId>example-lib</artifactId><versioning><latest>1.0.0</latest><release>1.0.0</release><versions>{v}</versions><lastUpdated>20261201100000</lastUpdated></versioning></metadata>"
    )
}

/// The documented version digest of `files`: sha256 over `<name> <sha256 hex>\n`, sorted by
/// name, of the files other than the checksum files (here, the `.sha512` ones).
fn version_digest(files: &[(String, Vec<u8>)]) -> String {
    let mut lines: Vec<String> = files
        .iter()
        .filter(|(n, _)| !n.ends_with(".sha512"))
        .map(|(n, b)| format!("{n} {}\n", sha256(b)))
        .collect();
    lines.sort();
    format!("sha256:{}", sha256(lines.concat().as_bytes()))
}

fn listing(files: &BTreeMap<String, Vec<u8>>, repo: &str) -> Value {
    let data: Vec<Value> = files
        .iter()
        .map(|(name, bytes)| {
            // A name ending in `/` is a directory: listed without the slash, not a leaf.
            let (text, leaf) = match name.strip_suffix('/') {
                Some(dir) => (dir, false),
                None => (name.as_str(), true),
            };
            json!({
                "resourceURI": format!("http://nexus/service/local/repositories/{repo}/content/{VDIR}/{name}"),
                "relativePath": format!("/{VDIR}/{name}"),
                "text": text,
                "leaf": leaf,
                "lastModified": "2026-12-01 10:00:00.0 UTC",
                "sizeOnDisk": bytes.len(),
            })
        })
        .collect();
    json!({ "data": data })
}

impl Respond for Platform2 {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let mut s = self.0.lock().unwrap();
        let path = req.url.path().to_owned();
        let method = req.method.as_str().to_owned();
        if method == "POST" {
            s.writes.push(format!("POST {path}"));
        }
        if let Some(i) = s.faults.iter().position(|(part, _)| path.contains(part)) {
            let (_, status) = s.faults.remove(i);
            return ResponseTemplate::new(status).set_body_string("Service Unavailable");
        }
        let not_found = ResponseTemplate::new(404);
        // Nexus 2 staging REST API.
        if let Some(rest) = path.strip_prefix("/service/local/") {
            if method == "GET" && rest == "staging/profile_repositories" {
                let data: Vec<Value> = s
                    .repos
                    .iter()
                    .map(|r| json!({"profileId": "1a2b", "profileName": "org.apache.example", "repositoryId": r.id, "type": r.kind, "transitioning": r.transitioning, "description": "example 1.0.0 RC1"}))
                    .collect();
                return ResponseTemplate::new(200).set_body_json(json!({ "data": data }));
            }
            if method == "POST" && rest == "staging/bulk/promote" {
                let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
                let ids = body["data"]["stagedRepositoryIds"].clone();
                let Some(id) = ids.get(0).and_then(Value::as_str).map(str::to_owned) else {
                    return ResponseTemplate::new(400).set_body_string("no stagedRepositoryIds");
                };
                assert_eq!(body["data"]["autoDropAfterRelease"], false, "{body}");
                let fault = s.promote_fault.take();
                if let Some((false, status)) = fault {
                    return ResponseTemplate::new(status).set_body_string("refused by the test");
                }
                let release = s.release;
                let Some(repo) = s.repos.iter_mut().find(|r| r.id == id) else {
                    return ResponseTemplate::new(400).set_body_string("no such repository");
                };
                repo.activity.push(match release {
                    Release::RuleFails => json!({"name": "release", "started": "2026-12-01T10:00:00.000Z", "stopped": "2026-12-01T10:00:05.000Z", "events": [
                        {"timestamp": "2026-12-01T10:00:01.000Z", "name": "ruleEvaluate", "severity": 0, "properties": [{"name": "id", "value": id}]},
                        {"timestamp": "2026-12-01T10:00:02.000Z", "name": "ruleFailed", "severity": 1, "properties": [{"name": "typeId", "value": "javadoc-staging"}, {"name": "failureMessage", "value": "Missing: no javadoc jar found"}]}
                    ]}),
                    Release::Succeeds | Release::Hangs => json!({"name": "release", "started": "2026-12-01T10:00:00.000Z", "events": [
                        {"timestamp": "2026-12-01T10:00:01.000Z", "name": "ruleEvaluate", "severity": 0, "properties": [{"name": "id", "value": id}]}
                    ]}),
                });
                return ResponseTemplate::new(fault.map_or(201, |(_, status)| status));
            }
            if let Some(id) = rest
                .strip_prefix("staging/repository/")
                .and_then(|r| r.strip_suffix("/activity"))
            {
                let release = s.release;
                let Some(i) = s.repos.iter().position(|r| r.id == id) else {
                    return not_found;
                };
                // A release in progress finishes on the next look, when it is to succeed.
                let in_progress = s.repos[i]
                    .activity
                    .iter()
                    .any(|a| a["name"] == "release" && a.get("stopped").is_none());
                if in_progress && release == Release::Succeeds {
                    let repo = &mut s.repos[i];
                    for a in repo.activity.iter_mut() {
                        if a["name"] == "release" {
                            a["stopped"] = json!("2026-12-01T10:01:00.000Z");
                            a["events"].as_array_mut().unwrap().push(json!({"timestamp": "2026-12-01T10:01:00.000Z", "name": "repositoryReleased", "severity": 0, "properties": [{"name": "id", "value": id}]}));
                        }
                    }
                    repo.kind = "released".into();
                    let files = repo.files.clone();
                    s.central = files;
                }
                let activity = s.repos[i].activity.clone();
                return ResponseTemplate::new(200).set_body_json(Value::Array(activity));
            }
            if let Some(rest) = rest.strip_prefix("repositories/") {
                let (id, rest) = rest.split_once("/content/").unwrap_or((rest, ""));
                let Some(repo) = s.repos.iter().find(|r| r.id == id) else {
                    return not_found;
                };
                if rest == format!("{VDIR}/") {
                    if repo.files.is_empty() {
                        return not_found;
                    }
                    return ResponseTemplate::new(200).set_body_json(listing(&repo.files, id));
                }
                if let Some(name) = rest.strip_prefix(&format!("{VDIR}/")) {
                    return match repo.files.get(name) {
                        Some(b) => ResponseTemplate::new(200).set_body_bytes(b.clone()),
                        None => not_found,
                    };
                }
                return not_found;
            }
            return not_found;
        }
        // The staging group (ATR's staging URL template): closed repositories only.
        if path == format!("/content/groups/staging/{ADIR}/maven-metadata.xml") {
            let staged = s
                .repos
                .iter()
                .any(|r| r.kind == "closed" && !r.files.is_empty());
            if !staged {
                return not_found;
            }
            let versions: Vec<&str> = s.group_versions.iter().map(String::as_str).collect();
            return ResponseTemplate::new(200).set_body_string(metadata(&versions));
        }
        // Maven Central.
        if let Some(rest) = path.strip_prefix("/maven2/") {
            if s.central.is_empty() {
                return not_found;
            }
            if rest == format!("{ADIR}/maven-metadata.xml") {
                return ResponseTemplate::new(200).set_body_string(metadata(&["0.9.0", "1.0.0"]));
            }
            if rest == format!("{VDIR}/") {
                let links: String = s
                    .central
                    .keys()
                    .map(|n| {
                        format!("<a href=\"{n}\" title=\"{n}\">{n}</a>  2026-12-01 10:00  42\n")
                    })
                    .collect();
                return ResponseTemplate::new(200).set_body_string(format!(
                    "<html><head><title>Central Repository: {VDIR}</title></head><body><pre id=\"contents\"><a href=\"../\">../</a>\n{links}</pre></body></html>"
                ));
            }
            if let Some(name) = rest.strip_prefix(&format!("{VDIR}/")) {
                return match s.central.get(name) {
                    Some(b) => ResponseTemplate::new(200).set_body_bytes(b.clone()),
                    None => not_found,
                };
            }
            return not_found;
        }
        // The Central Publisher Portal.
        if let Some(rest) = path.strip_prefix("/api/v1/publisher/") {
            let auth = req
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            // base64("token:secret")
            if auth != "Bearer dG9rZW46c2VjcmV0" {
                return ResponseTemplate::new(401).set_body_string("Unauthorized");
            }
            let Some(d) = s.deployment.as_mut() else {
                return not_found;
            };
            if method == "POST" && rest == "status" {
                let id = req
                    .url
                    .query_pairs()
                    .find(|(k, _)| k == "id")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                if id != DEPLOYMENT {
                    return not_found;
                }
                let answer = json!({
                    "deploymentId": DEPLOYMENT,
                    "deploymentName": "example-lib-1.0.0",
                    "deploymentState": d.state,
                    "purls": ["pkg:maven/org.apache.example/example-lib@1.0.0"],
                    "errors": if d.state == "FAILED" { json!({"pkg:maven/org.apache.example/example-lib@1.0.0": ["Publishing failed: component already exists"]}) } else { Value::Null },
                });
                if d.state == "PUBLISHING" {
                    d.state = d.then.to_owned();
                    if d.then == "PUBLISHED" {
                        let files = d.files.clone();
                        s.central = files;
                    }
                }
                return ResponseTemplate::new(200).set_body_json(answer);
            }
            if method == "POST" && rest == format!("deployment/{DEPLOYMENT}") {
                if d.state != "VALIDATED" {
                    return ResponseTemplate::new(400)
                        .set_body_string("deployment is not VALIDATED");
                }
                d.state = "PUBLISHING".into();
                return ResponseTemplate::new(204);
            }
            if let Some(name) =
                rest.strip_prefix(&format!("deployment/{DEPLOYMENT}/download/{VDIR}/"))
            {
                return match d.files.get(name) {
                    Some(b) => ResponseTemplate::new(200).set_body_bytes(b.clone()),
                    None => not_found,
                };
            }
            return not_found;
        }
        not_found
    }
}

struct Fixture {
    server: MockServer,
    state: Arc<Mutex<State>>,
}

impl Fixture {
    /// A closed staging repository holding `files`.
    async fn start(files: BTreeMap<String, Vec<u8>>) -> Fixture {
        let state = Arc::new(Mutex::new(State {
            repos: vec![Repo {
                id: REPO.into(),
                kind: "closed".into(),
                transitioning: false,
                files,
                activity: vec![
                    json!({"name": "close", "started": "2026-11-30T10:00:00.000Z", "stopped": "2026-11-30T10:00:09.000Z", "events": [
                        {"timestamp": "2026-11-30T10:00:01.000Z", "name": "ruleEvaluate", "severity": 0, "properties": [{"name": "typeId", "value": "signature-staging"}]},
                        {"timestamp": "2026-11-30T10:00:09.000Z", "name": "repositoryClosed", "severity": 0, "properties": [{"name": "id", "value": REPO}]}
                    ]}),
                ],
            }],
            central: BTreeMap::new(),
            group_versions: vec!["0.9.0".into(), "1.0.0".into()],
            promote_fault: None,
            faults: Vec::new(),
            release: Release::Succeeds,
            deployment: None,
            writes: Vec::new(),
        }));
        let server = MockServer::start().await;
        Mock::given(any())
            .respond_with(Platform2(Arc::clone(&state)))
            .mount(&server)
            .await;
        Fixture { server, state }
    }

    fn writes(&self) -> Vec<String> {
        self.state.lock().unwrap().writes.clone()
    }

    fn adapters(&self, backend: PromoteBackend, projects: &[&str]) -> Adapters {
        Adapters::default().with(Platform::Maven, Arc::new(self.adapter(backend, projects)))
    }

    /// What the adapter (Nexus 2, no promotion) reads of the staging repository holding
    /// the version, under the default staging tag.
    async fn read_staged(&self) -> Result<Option<Observed>, PlatformError> {
        self.adapter(PromoteBackend::Nexus2, &[])
            .read_staged(&dist().key(), &DistTag::new("staging").unwrap())
            .await
    }

    fn adapter(&self, backend: PromoteBackend, projects: &[&str]) -> MavenAdapter {
        let base = Url::parse(&self.server.uri()).unwrap();
        let settings = MavenSettings {
            nexus: base.join("service/local/").unwrap(),
            staging_content: base.join("content/groups/staging/").unwrap(),
            central: base.join("maven2/").unwrap(),
            portal: base.join("api/v1/publisher/").unwrap(),
            nexus_username: Some("rm".into()),
            nexus_password: Some(Secret::new("nexus-password")),
            portal_token: Some(Secret::new("token:secret")),
            backend,
            promote_projects: projects
                .iter()
                .map(|p| ProjectKey::new(*p).unwrap())
                .collect(),
        };
        MavenAdapter::new(settings).unwrap()
    }
}

fn dist() -> Dist {
    Dist::new(
        Platform::Maven,
        "org.apache.example",
        "example-lib",
        "1.0.0",
    )
}

/// The voted files as revision `rev`, in Maven's directory layout.
fn write_revision(h: &Harness, rev: &str) {
    let files: Vec<(String, Vec<u8>)> = voted()
        .into_iter()
        .map(|(n, b)| (format!("maven/{VDIR}/{n}"), b))
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    h.revs.write_release("example", "1.0.0", rev, &refs);
}

fn stage_job(tag: Option<&str>) -> Envelope {
    let paths: Vec<String> = voted()
        .into_iter()
        .map(|(n, _)| format!("maven/{VDIR}/{n}"))
        .collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let mut env = dist().stage("00001", &refs, RevisionSourceSpec::Dir, false);
    if let (Job::Stage(s), Some(tag)) = (&mut env.job, tag) {
        s.staging_tag = Some(DistTag::new(tag).unwrap());
    }
    env
}

fn promote_job() -> Envelope {
    dist().promote("00002", RevisionSourceSpec::Dir, "rm")
}

async fn harness(db: Db, adapters: Adapters, deadline: Duration) -> Harness {
    let h = Harness::custom(db, adapters, FAST, |p| {
        p.waits = Schedule {
            first: Duration::from_millis(20),
            max: Duration::from_millis(100),
        };
        p.wait_deadlines.insert(Platform::Maven, deadline);
    })
    .await;
    write_revision(&h, "00001");
    write_revision(&h, "00002");
    h
}

async fn outcomes(h: &Harness, job: &Envelope) -> Vec<String> {
    h.runs(job)
        .await
        .iter()
        .map(|r| r.outcome.clone().unwrap_or_default())
        .collect()
}

async fn staging_is_verified_and_promoted_through_nexus(db: Db) {
    let f = Fixture::start(with_checksums(&voted())).await;
    let h = harness(
        db,
        f.adapters(PromoteBackend::Nexus2, &["example"]),
        Duration::from_secs(30),
    )
    .await;

    let stage = stage_job(None);
    h.run_to_done(&stage, 3).await;
    // Verify-only: the staging repository already held the vote, and nothing was sent.
    assert_eq!(outcomes(&h, &stage).await, ["unchanged"]);
    assert!(f.writes().is_empty(), "{:?}", f.writes());
    let row = h.row().await.unwrap();
    assert!(row.staging && !row.promoted);
    let staged = row.platform_digest.clone().unwrap();
    assert!(staged.starts_with("sha256:"), "{staged}");
    assert_eq!(
        row.api_url.as_deref(),
        Some(
            format!(
                "{}/content/groups/staging/{ADIR}/maven-metadata.xml",
                f.server.uri()
            )
            .as_str()
        )
    );
    assert!(
        row.web_url
            .as_deref()
            .unwrap()
            .contains(&format!("/repositories/{REPO}/content/{VDIR}/")),
        "{:?}",
        row.web_url
    );
    // The digest is over the voted files without their checksum files.
    assert_eq!(staged, version_digest(&voted()));

    let promote = promote_job();
    h.run_to_done(&promote, 3).await;
    assert_eq!(
        f.writes(),
        ["POST /service/local/staging/bulk/promote"],
        "one release request"
    );
    let runs = outcomes(&h, &promote).await;
    assert!(runs.starts_with(&["waiting".to_owned()]), "{runs:?}");
    assert!(
        runs.last().unwrap() == "unchanged" || runs.last().unwrap() == "completed",
        "{runs:?}"
    );
    let row = h.row().await.unwrap();
    assert!(row.promoted);
    assert_eq!(row.promoted_digest.as_deref(), Some(staged.as_str()));
    assert!(
        row.api_url.as_deref().unwrap().contains("/maven2/"),
        "{:?}",
        row.api_url
    );

    // Promote again: Central holds it; nothing is written.
    let again = promote_job();
    h.run_to_done(&again, 3).await;
    assert_eq!(outcomes(&h, &again).await, ["unchanged"]);
    assert_eq!(f.writes().len(), 1, "{:?}", f.writes());
    h.stop().await;
}

#[tokio::test]
async fn staging_is_verified_and_promoted_through_nexus_sqlite() {
    staging_is_verified_and_promoted_through_nexus(Db::Sqlite).await;
}

#[tokio::test]
async fn staging_is_verified_and_promoted_through_nexus_postgres() {
    staging_is_verified_and_promoted_through_nexus(Db::Postgres).await;
}

/// Stages with `files` in the staging repository and returns the job's last error.
async fn refused_stage(db: Db, files: BTreeMap<String, Vec<u8>>) -> String {
    let f = Fixture::start(files).await;
    let h = harness(
        db,
        f.adapters(PromoteBackend::Nexus2, &["example"]),
        Duration::from_secs(30),
    )
    .await;
    let stage = stage_job(None);
    assert_eq!(h.run(&stage, 3).await, JobState::Dead);
    assert_eq!(
        outcomes(&h, &stage).await,
        ["failed"],
        "refused at once, not retried"
    );
    assert!(f.writes().is_empty());
    assert!(h.row().await.is_none(), "nothing recorded as staged");
    let err = h.last_error(&stage).await;
    h.stop().await;
    err
}

async fn a_changed_jar_is_refused(db: Db) {
    // Other classes, with checksum files that agree with them: only the vote tells.
    let mut files = voted();
    files[0].1 = b"PK\x03\x04 other classes".to_vec();
    files[4].1 = format!(
        "{}  example-lib-1.0.0.jar\n",
        hex(&Sha512::digest(&files[0].1))
    )
    .into_bytes();
    let err = refused_stage(db, with_checksums(&files)).await;
    assert!(
        err.contains(&format!(
            "staging repository {REPO} does not hold exactly the voted files"
        )),
        "{err}"
    );
    assert!(
        err.contains("example-lib-1.0.0.jar is staged with other bytes"),
        "{err}"
    );
}

#[tokio::test]
async fn a_changed_jar_is_refused_sqlite() {
    a_changed_jar_is_refused(Db::Sqlite).await;
}

#[tokio::test]
async fn a_changed_jar_is_refused_postgres() {
    a_changed_jar_is_refused(Db::Postgres).await;
}

async fn an_unvoted_file_is_refused(db: Db) {
    let mut files = voted();
    files.push((
        "example-lib-1.0.0-extra.jar".into(),
        b"unvoted classes".to_vec(),
    ));
    let err = refused_stage(db, with_checksums(&files)).await;
    assert!(
        err.contains(
            "staged but not voted: example-lib-1.0.0-extra.jar (nothing unvoted may be released)"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn an_unvoted_file_is_refused_sqlite() {
    an_unvoted_file_is_refused(Db::Sqlite).await;
}

#[tokio::test]
async fn an_unvoted_file_is_refused_postgres() {
    an_unvoted_file_is_refused(Db::Postgres).await;
}

async fn a_wrong_checksum_file_is_refused(db: Db) {
    let mut files = with_checksums(&voted());
    files.insert(
        "example-lib-1.0.0.pom.sha256".into(),
        sha256(b"other").into_bytes(),
    );
    let err = refused_stage(db, files).await;
    assert!(err.contains("example-lib-1.0.0.pom.sha256 states"), "{err}");
    assert!(
        err.contains("but example-lib-1.0.0.pom has sha256"),
        "{err}"
    );
}

#[tokio::test]
async fn a_wrong_checksum_file_is_refused_sqlite() {
    a_wrong_checksum_file_is_refused(Db::Sqlite).await;
}

#[tokio::test]
async fn a_wrong_checksum_file_is_refused_postgres() {
    a_wrong_checksum_file_is_refused(Db::Postgres).await;
}

async fn a_failed_close_is_reported_with_its_rules(db: Db) {
    let f = Fixture::start(with_checksums(&voted())).await;
    {
        let mut s = f.state.lock().unwrap();
        // Nexus leaves a repository whose close failed open.
        s.repos[0].kind = "open".into();
        s.repos[0].activity = vec![
            json!({"name": "close", "started": "x", "stopped": "y", "events": [
                {"name": "ruleFailed", "severity": 1, "properties": [{"name": "typeId", "value": "signature-staging"}, {"name": "failureMessage", "value": "No public key: Key with id: (1234abcd) was not able to be located"}]},
                {"name": "repositoryCloseFailed", "severity": 1, "properties": [{"name": "id", "value": REPO}]}
            ]}),
        ];
    }
    let h = harness(
        db,
        f.adapters(PromoteBackend::Nexus2, &[]),
        Duration::from_secs(30),
    )
    .await;
    let stage = stage_job(Some(REPO));
    assert_eq!(h.run(&stage, 3).await, JobState::Dead);
    let err = h.last_error(&stage).await;
    assert!(
        err.contains(&format!(
            "closing staging repository {REPO} holding org.apache.example:example-lib:1.0.0 failed"
        )),
        "{err}"
    );
    assert!(
        err.contains("ruleFailed (typeId=signature-staging, failureMessage=No public key"),
        "{err}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_failed_close_is_reported_with_its_rules_sqlite() {
    a_failed_close_is_reported_with_its_rules(Db::Sqlite).await;
}

#[tokio::test]
async fn a_failed_close_is_reported_with_its_rules_postgres() {
    a_failed_close_is_reported_with_its_rules(Db::Postgres).await;
}

async fn a_rule_failure_on_release_refuses(db: Db) {
    let f = Fixture::start(with_checksums(&voted())).await;
    f.state.lock().unwrap().release = Release::RuleFails;
    let h = harness(
        db,
        f.adapters(PromoteBackend::Nexus2, &["example"]),
        Duration::from_secs(30),
    )
    .await;
    h.run_to_done(&stage_job(None), 3).await;
    let promote = promote_job();
    assert_eq!(h.run(&promote, 3).await, JobState::Dead);
    let err = h.last_error(&promote).await;
    assert!(
        err.contains(&format!(
            "Nexus refused to release staging repository {REPO}"
        )),
        "{err}"
    );
    assert!(
        err.contains(
            "ruleFailed (typeId=javadoc-staging, failureMessage=Missing: no javadoc jar found)"
        ),
        "{err}"
    );
    assert_eq!(
        f.writes().len(),
        1,
        "released once, never again: {:?}",
        f.writes()
    );
    assert!(!h.row().await.unwrap().promoted);
    h.stop().await;
}

#[tokio::test]
async fn a_rule_failure_on_release_refuses_sqlite() {
    a_rule_failure_on_release_refuses(Db::Sqlite).await;
}

#[tokio::test]
async fn a_rule_failure_on_release_refuses_postgres() {
    a_rule_failure_on_release_refuses(Db::Postgres).await;
}

async fn a_release_that_never_ends_outlasts_the_deadline(db: Db) {
    let f = Fixture::start(with_checksums(&voted())).await;
    f.state.lock().unwrap().release = Release::Hangs;
    let h = harness(
        db,
        f.adapters(PromoteBackend::Nexus2, &["example"]),
        Duration::from_millis(600),
    )
    .await;
    h.run_to_done(&stage_job(None), 3).await;
    let promote = promote_job();
    assert_eq!(h.run(&promote, 3).await, JobState::Dead);
    let err = h.last_error(&promote).await;
    assert!(err.contains("release of staging repository"), "{err}");
    assert!(err.contains("gave up after waiting"), "{err}");
    let runs = outcomes(&h, &promote).await;
    assert!(
        runs.iter().filter(|o| *o == "waiting").count() >= 2,
        "{runs:?}"
    );
    assert_eq!(runs.last().map(String::as_str), Some("failed"), "{runs:?}");
    assert_eq!(
        f.writes().len(),
        1,
        "asked once, then only looked: {:?}",
        f.writes()
    );
    h.stop().await;
}

#[tokio::test]
async fn a_release_that_never_ends_outlasts_the_deadline_sqlite() {
    a_release_that_never_ends_outlasts_the_deadline(Db::Sqlite).await;
}

#[tokio::test]
async fn a_release_that_never_ends_outlasts_the_deadline_postgres() {
    a_release_that_never_ends_outlasts_the_deadline(Db::Postgres).await;
}

async fn promotion_is_disabled_by_policy(db: Db) {
    let f = Fixture::start(with_checksums(&voted())).await;
    let h = harness(
        db,
        f.adapters(PromoteBackend::Nexus2, &[]),
        Duration::from_secs(30),
    )
    .await;
    // Verification is always allowed.
    h.run_to_done(&stage_job(None), 3).await;
    let promote = promote_job();
    h.run_to_done(&promote, 3).await;
    assert_eq!(outcomes(&h, &promote).await, ["disabled_by_policy"]);
    let run = &h.runs(&promote).await[0];
    assert!(run.error_class.is_none());
    assert!(
        run.message
            .as_deref()
            .unwrap()
            .contains("disabled by policy for project example"),
        "{:?}",
        run.message
    );
    assert!(f.writes().is_empty(), "{:?}", f.writes());
    assert!(!h.row().await.unwrap().promoted);
    h.stop().await;
}

#[tokio::test]
async fn promotion_is_disabled_by_policy_sqlite() {
    promotion_is_disabled_by_policy(Db::Sqlite).await;
}

#[tokio::test]
async fn promotion_is_disabled_by_policy_postgres() {
    promotion_is_disabled_by_policy(Db::Postgres).await;
}

/// A staged repository plus a validated Portal deployment of the same files.
async fn portal_fixture(
    then: &'static str,
    deployment_files: BTreeMap<String, Vec<u8>>,
) -> Fixture {
    let f = Fixture::start(with_checksums(&voted())).await;
    f.state.lock().unwrap().deployment = Some(Deployment {
        state: "VALIDATED".into(),
        files: deployment_files,
        then,
    });
    f
}

async fn a_portal_deployment_is_published(db: Db) {
    let f = portal_fixture("PUBLISHED", with_checksums(&voted())).await;
    let h = harness(
        db,
        f.adapters(PromoteBackend::Portal, &["example"]),
        Duration::from_secs(30),
    )
    .await;
    let tag = format!("portal-{DEPLOYMENT}");
    h.run_to_done(&stage_job(Some(&tag)), 3).await;
    assert_eq!(
        h.row().await.unwrap().staging_tag.as_deref(),
        Some(tag.as_str())
    );
    let promote = promote_job();
    h.run_to_done(&promote, 3).await;
    assert_eq!(
        f.writes()
            .iter()
            .filter(|w| w.contains("/deployment/"))
            .count(),
        1,
        "{:?}",
        f.writes()
    );
    let runs = outcomes(&h, &promote).await;
    assert_eq!(
        runs.last().map(String::as_str),
        Some("completed"),
        "{runs:?}"
    );
    assert!(h.row().await.unwrap().promoted);
    let again = promote_job();
    h.run_to_done(&again, 3).await;
    assert_eq!(outcomes(&h, &again).await, ["unchanged"]);
    assert_eq!(
        f.writes()
            .iter()
            .filter(|w| w.contains("/deployment/"))
            .count(),
        1,
        "{:?}",
        f.writes()
    );
    h.stop().await;
}

#[tokio::test]
async fn a_portal_deployment_is_published_sqlite() {
    a_portal_deployment_is_published(Db::Sqlite).await;
}

#[tokio::test]
async fn a_portal_deployment_is_published_postgres() {
    a_portal_deployment_is_published(Db::Postgres).await;
}

async fn a_failed_portal_deployment_refuses(db: Db) {
    let f = portal_fixture("FAILED", with_checksums(&voted())).await;
    let h = harness(
        db,
        f.adapters(PromoteBackend::Portal, &["example"]),
        Duration::from_secs(30),
    )
    .await;
    h.run_to_done(&stage_job(Some(&format!("portal-{DEPLOYMENT}"))), 3)
        .await;
    let promote = promote_job();
    assert_eq!(h.run(&promote, 3).await, JobState::Dead);
    let err = h.last_error(&promote).await;
    assert!(
        err.contains(&format!("Portal deployment {DEPLOYMENT} FAILED")),
        "{err}"
    );
    assert!(err.contains("component already exists"), "{err}");
    assert!(!h.row().await.unwrap().promoted);
    h.stop().await;
}

#[tokio::test]
async fn a_failed_portal_deployment_refuses_sqlite() {
    a_failed_portal_deployment_refuses(Db::Sqlite).await;
}

#[tokio::test]
async fn a_failed_portal_deployment_refuses_postgres() {
    a_failed_portal_deployment_refuses(Db::Postgres).await;
}

async fn a_portal_deployment_with_other_bytes_is_refused(db: Db) {
    let mut files = voted();
    files[1].1 = b"<project>not voted</project>".to_vec();
    let f = portal_fixture("PUBLISHED", with_checksums(&files)).await;
    let h = harness(
        db,
        f.adapters(PromoteBackend::Portal, &["example"]),
        Duration::from_secs(30),
    )
    .await;
    let stage = stage_job(Some(&format!("portal-{DEPLOYMENT}")));
    assert_eq!(h.run(&stage, 3).await, JobState::Dead);
    let err = h.last_error(&stage).await;
    assert!(
        err.contains(&format!(
            "Portal deployment {DEPLOYMENT} has example-lib-1.0.0.pom with sha256"
        )),
        "{err}"
    );
    assert!(
        f.writes().iter().all(|w| !w.contains("/deployment/")),
        "{:?}",
        f.writes()
    );
    h.stop().await;
}

#[tokio::test]
async fn a_portal_deployment_with_other_bytes_is_refused_sqlite() {
    a_portal_deployment_with_other_bytes_is_refused(Db::Sqlite).await;
}

#[tokio::test]
async fn a_portal_deployment_with_other_bytes_is_refused_postgres() {
    a_portal_deployment_with_other_bytes_is_refused(Db::Postgres).await;
}

/// What the adapter makes of the staging repository holding `files` (closed, in the
/// staging group), read on its own.
async fn read_staged_of(files: BTreeMap<String, Vec<u8>>) -> Result<Option<String>, String> {
    Fixture::start(files)
        .await
        .read_staged()
        .await
        .map(|o| o.map(|o| o.digest.to_string()))
        .map_err(|e| e.message)
}

/// A version directory is read whole, up to 1000 entries, and its entries are files with
/// plain names: a directory inside it, an entry named to climb out of it, or more entries
/// than that are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_directory_is_read_whole_or_refused() {
    let with_entries = |n: usize| {
        let mut files = with_checksums(&voted());
        let dirs = n - files.len();
        for i in 0..dirs {
            files.insert(format!("d{i:04}/"), Vec::new());
        }
        assert_eq!(files.len(), n);
        files
    };
    let err = read_staged_of(with_entries(1000)).await.unwrap_err();
    assert!(
        err.contains("entries that are not files: d0000/, d0001/, d0002/"),
        "{}",
        &err[..err.len().min(400)]
    );
    // A thousand files are read (and hashed) too.
    let mut files = with_checksums(&voted());
    for i in files.len()..1000 {
        files.insert(format!("example-lib-1.0.0-part{i:04}.txt"), vec![b'p'; 3]);
    }
    assert!(read_staged_of(files).await.unwrap().is_some());
    let err = read_staged_of(with_entries(1001)).await.unwrap_err();
    assert!(
        err.contains("1001 entries, more than the 1000 atr-dist reads; refused"),
        "{err}"
    );
    for name in ["", "a/b", "a\\b", ".", ".."] {
        let mut files = with_checksums(&voted());
        files.insert(name.to_owned(), b"x".to_vec());
        let err = read_staged_of(files).await.unwrap_err();
        assert!(
            err.contains(&format!("an entry named {name:?}")),
            "{name:?}: {err}"
        );
    }
}

/// A jar of megabytes is hashed whole, and an activity document of megabytes (a close with
/// thousands of rule events) is read whole: the limits are far above both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_documents_of_megabytes_are_read() {
    let mut files = voted();
    files[0].1 = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let jar_sha512 = format!(
        "{}  example-lib-1.0.0.jar\n",
        hex(&Sha512::digest(&files[0].1))
    );
    files[4].1 = jar_sha512.into_bytes();
    let digest = read_staged_of(with_checksums(&files))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(digest, version_digest(&files));

    let f = Fixture::start(with_checksums(&voted())).await;
    {
        let mut s = f.state.lock().unwrap();
        let repo = &mut s.repos[0];
        repo.kind = "open".into();
        let mut events: Vec<Value> = (0..20_000)
            .map(|i| json!({"timestamp": "2026-11-30T10:00:01.000Z", "name": "ruleEvaluate", "severity": 0, "properties": [{"name": "typeId", "value": format!("rule-{i}")}]}))
            .collect();
        events.push(json!({"timestamp": "2026-11-30T10:00:09.000Z", "name": "ruleFailed", "severity": 1, "properties": [{"name": "typeId", "value": "sources-staging"}, {"name": "failureMessage", "value": "Missing: no sources jar found"}]}));
        repo.activity = vec![
            json!({"name": "close", "started": "2026-11-30T10:00:00.000Z", "stopped": "2026-11-30T10:00:09.000Z", "events": events}),
        ];
        let size = serde_json::to_vec(&repo.activity).unwrap().len();
        assert!((2 << 20..4 << 20).contains(&size), "{size} bytes");
    }
    let err = f.read_staged().await.unwrap_err();
    assert!(
        err.message.contains(&format!(
            "closing staging repository {REPO} holding org.apache.example:example-lib:1.0.0 failed: ruleFailed (typeId=sources-staging, failureMessage=Missing: no sources jar found)"
        )),
        "{}",
        &err.message[..err.message.len().min(400)]
    );
}

/// Up to 100 staging repositories are looked through for the one holding the version;
/// none holding it is no staging, and more than 100 are refused (name one in the tag).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_to_a_hundred_staging_repositories_are_looked_through() {
    let f = Fixture::start(with_checksums(&voted())).await;
    let more = |f: &Fixture, n: usize| {
        let mut s = f.state.lock().unwrap();
        let start = s.repos.len();
        for i in start..start + n {
            s.repos.push(Repo {
                id: format!("orgapache-{}", 2000 + i),
                kind: "closed".into(),
                transitioning: false,
                files: BTreeMap::new(),
                activity: Vec::new(),
            });
        }
    };
    more(&f, 99);
    let observed = f
        .read_staged()
        .await
        .unwrap()
        .expect("the one holding it is found");
    assert!(
        observed
            .web_url
            .unwrap()
            .contains(&format!("/repositories/{REPO}/content/")),
    );
    more(&f, 1);
    let err = f.read_staged().await.unwrap_err();
    assert!(
        err.message
            .contains("lists 101 staging repositories, more than the 100 atr-dist looks through"),
        "{}",
        err.message
    );

    let empty = Fixture::start(BTreeMap::new()).await;
    assert!(empty.read_staged().await.unwrap().is_none());
}

/// A repository Nexus is changing is waited for; a closed one counts only when the staging
/// group's metadata lists the version (ATR reads it there); a changed file is told with its
/// size and the voted one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_staging_repository_is_read_only_when_settled_and_listed() {
    let f = Fixture::start(with_checksums(&voted())).await;
    f.state.lock().unwrap().repos[0].transitioning = true;
    let err = f.read_staged().await.unwrap_err();
    assert!(err.not_yet, "{}", err.message);
    assert!(
        err.message.contains(&format!("staging repository {REPO} holding org.apache.example:example-lib:1.0.0 is changing state")),
        "{}",
        err.message
    );
    f.state.lock().unwrap().repos[0].transitioning = false;
    assert!(f.read_staged().await.unwrap().is_some());

    f.state.lock().unwrap().group_versions = vec!["0.9.0".into()];
    let err = f.read_staged().await.unwrap_err();
    assert!(
        err.message.contains("does not list version 1.0.0 (it lists 0.9.0), although staging repository orgapache-1001 holds it"),
        "{}",
        err.message
    );
    // Released, it has left the staging group: its files are read from the repository.
    f.state.lock().unwrap().repos[0].kind = "released".into();
    assert!(f.read_staged().await.unwrap().is_some());

    let mut files = voted();
    let changed = b"PK\x03\x04 other classes, longer".to_vec();
    let (jar, voted_jar) = (changed.len(), files[0].1.len());
    let req = stage_request_of(&files);
    files[0].1 = changed;
    files.retain(|(n, _)| !n.ends_with(".sha512"));
    let f = Fixture::start(with_checksums(&files)).await;
    let err = f
        .adapter(PromoteBackend::Nexus2, &[])
        .stage(&req)
        .await
        .unwrap_err();
    assert!(
        err.message.contains(&format!(
            "example-lib-1.0.0.jar is staged with other bytes (sha256 {}, {jar} bytes; the vote has {}, {voted_jar} bytes)",
            sha256(&files[0].1),
            sha256(&voted()[0].1)
        )),
        "{}",
        err.message
    );
}

/// A stage request for `files`, sealed as the pipeline seals them.
fn stage_request_of(files: &[(String, Vec<u8>)]) -> StageRequest {
    let key = dist().key();
    StageRequest {
        revision: RevisionKey::of(&key.release_key, &RevisionNumber::new("00001").unwrap()),
        artifacts: files
            .iter()
            .map(|(n, b)| sealed(&format!("maven/{VDIR}/{n}"), b))
            .collect(),
        companions: Vec::new(),
        staging_tag: DistTag::new("staging").unwrap(),
        key,
    }
}

/// A stage names exactly how the staging repository differs from the vote, and nothing
/// that agrees with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_names_only_the_differences() {
    let files = voted();
    let req = stage_request_of(&files);
    let cases = [
        (
            "example-lib-1.0.0.pom",
            format!(
                "staging repository {REPO} does not hold exactly the voted files of org.apache.example:example-lib:1.0.0: example-lib-1.0.0.pom is voted but not staged"
            ),
        ),
        (
            "example-lib-1.0.0.jar.sha512",
            ":1.0.0: voted checksum files not staged: example-lib-1.0.0.jar.sha512".to_owned(),
        ),
    ];
    for (unstaged, says) in cases {
        let mut staged = files.clone();
        staged.retain(|(n, _)| n != unstaged);
        let f = Fixture::start(with_checksums(&staged)).await;
        let err = f
            .adapter(PromoteBackend::Nexus2, &[])
            .stage(&req)
            .await
            .unwrap_err();
        assert!(err.message.ends_with(&says), "{}", err.message);
    }
}

/// A release request whose answer is lost or refused is read back from the repository's
/// activity: a release under way is waited for, a failed one refused with its rules, and
/// no release at all leaves the refusal as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_request_is_settled_by_the_activity() {
    let promote = |f: &Fixture, staged: String| {
        let a = f.adapter(PromoteBackend::Nexus2, &["example"]);
        async move {
            let key = dist().key();
            a.promote(&atr_dist::platform::PromoteRequest {
                staged_digest: atr_dist_shared::Digest::parse(staged).unwrap(),
                staging_tag: DistTag::new("staging").unwrap(),
                release_tag: DistTag::latest(),
                artifacts: Vec::new(),
                companions: Vec::new(),
                key,
            })
            .await
            .unwrap_err()
        }
    };
    let fixture = |release: Release, fault: (bool, u16)| async move {
        let f = Fixture::start(with_checksums(&voted())).await;
        let staged = version_digest(&voted());
        let mut s = f.state.lock().unwrap();
        s.release = release;
        s.promote_fault = Some(fault);
        drop(s);
        (f, staged)
    };

    let cases = [
        // The answer is lost; the release is under way.
        (
            Release::Succeeds,
            (true, 502),
            true,
            "asked Nexus to release staging repository",
        ),
        // The answer is lost; the release failed its rules.
        (
            Release::RuleFails,
            (true, 502),
            false,
            "(read back: a failed release: ruleFailed (typeId=javadoc-staging, failureMessage=Missing: no javadoc jar found))",
        ),
        // Refused (a 4xx: a 5xx is an unknown outcome, read back and sent again), with
        // nothing started: the refusal stands.
        (
            Release::Succeeds,
            (false, 400),
            false,
            "refused by the test",
        ),
    ];
    for (release, fault, wait, says) in cases {
        let (f, staged) = fixture(release, fault).await;
        let err = promote(&f, staged).await;
        assert_eq!(err.not_yet, wait, "{}", err.message);
        assert!(err.message.contains(says), "{}", err.message);
    }
}

/// A read answered with an error is that error, never read as the document asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_answered_with_an_error_is_that_error() {
    let f = Fixture::start(with_checksums(&voted())).await;
    f.state
        .lock()
        .unwrap()
        .faults
        .push(("/content/groups/staging/".into(), 403));
    let err = f.read_staged().await.unwrap_err();
    assert_eq!(err.http_status, Some(403), "{}", err.message);
    assert!(
        err.message.contains("maven-metadata.xml"),
        "{}",
        err.message
    );
}

/// A checksum file is read up to 4096 bytes (a digest, a name, and room to spare); one byte
/// more is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_files_up_to_4096_bytes_are_read() {
    let padded = |size: usize| {
        let mut files = with_checksums(&voted());
        let name = "example-lib-1.0.0.jar.sha256";
        let mut text = files[name].clone();
        text.push(b' ');
        text.resize(size, b'x');
        files.insert(name.to_owned(), text);
        files
    };
    assert!(read_staged_of(padded(4096)).await.unwrap().is_some());
    let err = read_staged_of(padded(4097)).await.unwrap_err();
    assert!(
        err.contains("example-lib-1.0.0.jar.sha256: the answer is larger than 4096 bytes; refused"),
        "{err}"
    );
}

/// A repository released outside atr-dist (no release in its activity) is waited for until
/// Maven Central lists the version, not taken as nothing promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_released_by_hand_is_waited_for() {
    let f = Fixture::start(with_checksums(&voted())).await;
    let a = f.adapter(PromoteBackend::Nexus2, &["example"]);
    let key = dist().key();
    assert_eq!(
        a.read_promoted(&key, &DistTag::latest()).await.unwrap(),
        None
    );
    f.state.lock().unwrap().repos[0].kind = "released".into();
    let err = a.read_promoted(&key, &DistTag::latest()).await.unwrap_err();
    assert!(err.not_yet, "{}", err.message);
    assert!(
        err.message.contains(&format!(
            "staging repository {REPO} is released; waiting for Maven Central to list org.apache.example:example-lib:1.0.0"
        )),
        "{}",
        err.message
    );
}
