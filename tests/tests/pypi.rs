//! The PyPI adapter against real pypiserver indexes on loopback (one for staging, one for
//! production), through the real pipeline on SQLite and PostgreSQL.

use std::sync::Arc;

use atr_dist::config::RetryConfig;
use atr_dist::platform::pypi::{IndexSettings, PypiAdapter};
use atr_dist::platform::{Adapters, PlatformAdapter, StageRequest};
use atr_dist::secret::Secret;
use atr_dist_shared::job::RevisionSourceSpec;
use atr_dist_shared::names::{DistTag, RevisionKey, RevisionNumber};
use atr_dist_shared::{DistributionKey, Envelope, ErrorClass, JobState, Platform};
use atr_dist_tests::fault_proxy::{Fault, FaultProxy};
use atr_dist_tests::jobs::Dist;
use atr_dist_tests::pipeline_support::{Db, Harness, sealed};
use atr_dist_tests::pypi_support::{
    PypiServer, TOKEN, metadata, sdist, sdist_name, sha256_hex, wheel, wheel_name, wheel_with,
};
use url::Url;

const FAST: RetryConfig = RetryConfig {
    base_ms: 50,
    cap_ms: 200,
    max_attempts: 3,
};

fn settings(url: &str, token: &str) -> IndexSettings {
    IndexSettings {
        upload: Url::parse(url).unwrap(),
        read: Url::parse(url).unwrap(),
        username: "__token__".into(),
        token: Some(Secret::new(token)),
    }
}

fn adapter(staging: &str, production: &str) -> PypiAdapter {
    PypiAdapter::new(settings(staging, TOKEN), settings(production, TOKEN)).unwrap()
}

fn adapters(staging: &str, production: &str) -> Adapters {
    Adapters::default().with(Platform::Pypi, Arc::new(adapter(staging, production)))
}

/// A Python release: an sdist and a wheel of `name` `version`, plus a signature that is in
/// the revision but not published.
struct Pkg {
    name: &'static str,
    version: &'static str,
}

impl Pkg {
    fn files(&self) -> [String; 2] {
        [
            sdist_name(self.name, self.version),
            wheel_name(self.name, self.version),
        ]
    }

    fn write(&self, h: &Harness, rev: &str, body: &str) {
        let [s, w] = self.files();
        let sd = sdist(self.name, self.version, body);
        let wh = wheel(self.name, self.version, body);
        h.revs.write_release(
            "example",
            self.version,
            rev,
            &[
                (&s, &sd),
                (&w, &wh),
                (&format!("{s}.asc"), b"a detached signature"),
            ],
        );
    }

    fn dist(&self) -> Dist {
        Dist::new(Platform::Pypi, "", self.name, self.version)
    }

    fn stage(&self, rev: &str) -> Envelope {
        let [s, w] = self.files();
        self.dist()
            .stage(rev, &[&s, &w], RevisionSourceSpec::Dir, false)
    }

    fn promote(&self, rev: &str) -> Envelope {
        self.dist().promote(rev, RevisionSourceSpec::Dir, "rm")
    }

    fn key(&self) -> DistributionKey {
        self.dist().key()
    }
}

async fn stage_then_promote(db: Db) {
    let staging = PypiServer::start().await;
    let production = PypiServer::start().await;
    // Production behind a proxy that counts what reaches it.
    let proxy = FaultProxy::start(&Url::parse(&production.url()).unwrap()).await;
    let h = Harness::new(db, adapters(&staging.url(), proxy.url.as_str()), FAST).await;
    let pkg = Pkg {
        name: "example-lib",
        version: "1.0.0",
    };
    pkg.write(&h, "00001", "voted = True\n");
    h.run_to_done(&pkg.stage("00001"), 3).await;
    let mut want = pkg.files().to_vec();
    want.sort();
    assert_eq!(staging.files(), want, "both files staged, nothing else");
    assert!(
        production.files().is_empty(),
        "staging sends nothing to production"
    );
    let row = h.row().await.unwrap();
    assert!(row.staging && !row.promoted);
    let staged_digest = row.platform_digest.clone().unwrap();
    assert!(staged_digest.starts_with("sha256:"), "{staged_digest}");
    assert!(
        row.api_url
            .as_deref()
            .unwrap()
            .ends_with("/simple/example-lib/"),
        "{:?}",
        row.api_url
    );

    // The vote makes revision 00002 with the same files; promote uploads them again.
    pkg.write(&h, "00002", "voted = True\n");
    let promote = pkg.promote("00002");
    h.run_to_done(&promote, 3).await;
    assert_eq!(production.files(), want);
    for f in &want {
        assert_eq!(production.read(f), staging.read(f), "{f}: the same bytes");
    }
    assert_eq!(proxy.forwarded("POST", "/"), 2, "{:?}", proxy.seen());
    let row = h.row().await.unwrap();
    assert!(row.promoted && !row.staging);
    assert_eq!(row.promoted_digest.as_deref(), Some(staged_digest.as_str()));
    assert_eq!(row.platform_digest.as_deref(), Some(staged_digest.as_str()));

    // Promote again: nothing written, recorded as unchanged.
    let again = pkg.promote("00002");
    assert_eq!(h.run(&again, 3).await, JobState::Done);
    assert_eq!(
        h.runs(&again).await[0].outcome.as_deref(),
        Some("unchanged")
    );
    assert_eq!(
        proxy.forwarded("POST", "/"),
        2,
        "no upload: {:?}",
        proxy.seen()
    );

    // A file swapped on the production index afterwards is seen by our read-back (the
    // index itself never checks), and the promotion is not taken for done.
    let [s, _] = pkg.files();
    production.replace(&s, b"not the voted sdist");
    let swapped = pkg.promote("00002");
    assert_eq!(h.run(&swapped, 3).await, JobState::Dead);
    let err = h.last_error(&swapped).await;
    assert!(
        err.contains("is recorded as promoted, but latest on the platform holds sha256:"),
        "{err}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_and_promotes_by_reupload_on_sqlite() {
    stage_then_promote(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_and_promotes_by_reupload_on_postgres() {
    stage_then_promote(Db::Postgres).await;
}

async fn changed_revision_is_refused(db: Db) {
    let staging = PypiServer::start().await;
    let production = PypiServer::start().await;
    let h = Harness::new(db, adapters(&staging.url(), &production.url()), FAST).await;
    let pkg = Pkg {
        name: "changing",
        version: "2.0.0",
    };
    pkg.write(&h, "00001", "staged = True\n");
    h.run_to_done(&pkg.stage("00001"), 3).await;
    // The voted revision has other bytes in both files.
    pkg.write(&h, "00002", "changed = True\n");
    let promote = pkg.promote("00002");
    assert_eq!(h.run(&promote, 3).await, JobState::Dead);
    let runs = h.runs(&promote).await;
    assert_eq!(runs.len(), 1, "permanent: no retry");
    assert_eq!(runs[0].outcome.as_deref(), Some("revision_changed"));
    assert!(production.files().is_empty(), "nothing uploaded");
    assert!(!h.row().await.unwrap().promoted);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_revision_is_not_promoted_on_sqlite() {
    changed_revision_is_refused(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_revision_is_not_promoted_on_postgres() {
    changed_revision_is_refused(Db::Postgres).await;
}

/// The index holds our file name with other bytes (swapped in its package directory):
/// staging again is refused before anything is sent, naming both digests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_bytes_under_a_voted_file_name_are_refused() {
    let staging = PypiServer::start().await;
    let production = PypiServer::start().await;
    let proxy = FaultProxy::start(&Url::parse(&staging.url()).unwrap()).await;
    let h = Harness::new(
        Db::Sqlite,
        adapters(proxy.url.as_str(), &production.url()),
        FAST,
    )
    .await;
    let pkg = Pkg {
        name: "swapped",
        version: "1.0.0",
    };
    pkg.write(&h, "00001", "x = 1\n");
    h.run_to_done(&pkg.stage("00001"), 3).await;
    let [_, w] = pkg.files();
    let voted = staging.read(&w);
    let other = wheel("swapped", "1.0.0", "x = 2\n");
    staging.replace(&w, &other);
    let posts = proxy.forwarded("POST", "/");

    let again = pkg.stage("00001");
    assert_eq!(h.run(&again, 3).await, JobState::Dead);
    let err = h.last_error(&again).await;
    assert!(
        err.contains(&format!(
            "the staging index holds {w} with sha256 {}, not the voted {}",
            sha256_hex(&other),
            sha256_hex(&voted)
        )),
        "{err}"
    );
    assert_eq!(proxy.forwarded("POST", "/"), posts, "nothing uploaded");
    h.stop().await;
}

/// pypiserver takes any bytes whatever `sha256_digest` says; an index that then lists
/// another sha256 for the uploaded file is caught by the read-back after the upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_back_after_uploading_catches_a_wrong_file() {
    let staging = PypiServer::start().await;
    let proxy = FaultProxy::start(&Url::parse(&staging.url()).unwrap()).await;
    let a = adapter(proxy.url.as_str(), proxy.url.as_str());
    let pkg = Pkg {
        name: "lying",
        version: "1.0.0",
    };
    let bytes = wheel("lying", "1.0.0", "y = 1\n");
    let file = wheel_name("lying", "1.0.0");
    let wrong = "ab".repeat(32);
    let lie = format!(
        "<html><body><a href=\"../../packages/{file}#sha256={wrong}\">{file}</a></body></html>"
    );
    // The listing before the upload is the server's own (nothing there); the one after it
    // reports other bytes, as an index that stored another file would.
    proxy.inject(
        Fault::new(200)
            .method("GET")
            .path_contains("/simple/lying/")
            .skip(1)
            .times(10)
            .body("text/html", &lie),
    );
    let err = a
        .stage(&request(&pkg.key(), &[(&file, &bytes)]))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
    assert!(
        err.message.contains(&format!(
            "after uploading, the staging index reports sha256 {wrong} for {file}, not the voted {}",
            sha256_hex(&bytes)
        )),
        "{}",
        err.message
    );
    assert_eq!(staging.files(), vec![file]);
}

/// A file whose metadata names another project, or whose name disagrees with it, is never
/// sent; nor is a file that is not a wheel or an sdist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_are_not_the_distribution_are_refused() {
    let staging = PypiServer::start().await;
    let a = adapter(&staging.url(), &staging.url());
    let key = Pkg {
        name: "honest",
        version: "1.0.0",
    }
    .key();
    let cases: Vec<(String, Vec<u8>, &str)> = vec![
        (
            wheel_name("honest", "1.0.0"),
            wheel_with("honest", "1.0.0", &metadata("impostor", "1.0.0"), "x"),
            "is impostor 1.0.0, not honest 1.0.0",
        ),
        (
            wheel_name("honest", "1.0.0"),
            wheel_with("honest", "1.0.0", &metadata("honest", "1.0.1"), "x"),
            "is honest 1.0.1, not honest 1.0.0",
        ),
        (
            sdist_name("honest", "1.0.0"),
            wheel("honest", "1.0.0", "x"),
            "not a gzipped tar",
        ),
        (
            "honest-1.0.0.zip".to_owned(),
            wheel("honest", "1.0.0", "x"),
            "not a wheel (.whl) or an sdist (.tar.gz)",
        ),
    ];
    for (file, bytes, want) in cases {
        let err = a
            .stage(&request(&key, &[(&file, &bytes)]))
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
        assert!(err.message.contains(want), "{file}: {}", err.message);
    }
    assert!(staging.files().is_empty(), "nothing was uploaded");

    // A wrong token is an auth error.
    let a = PypiAdapter::new(
        settings(&staging.url(), "wrong"),
        settings(&staging.url(), "wrong"),
    )
    .unwrap();
    let file = wheel_name("honest", "1.0.0");
    let bytes = wheel("honest", "1.0.0", "x");
    let err = a
        .stage(&request(&key, &[(&file, &bytes)]))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Auth, "{}", err.message);
}

/// A file of megabytes (PyPI's own limit is 100 MB) is uploaded whole: atr-dist's limit on a
/// file is far above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_megabytes_is_uploaded_whole() {
    let staging = PypiServer::start().await;
    let a = adapter(&staging.url(), &staging.url());
    let key = Pkg {
        name: "large",
        version: "1.0.0",
    }
    .key();
    // 64 letters at random, which deflate keeps at about 6 bits in 8.
    const LETTERS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let body: String = (0..3_500_000)
        .map(|_| LETTERS[fastrand::usize(..64)] as char)
        .collect();
    let file = wheel_name("large", "1.0.0");
    let bytes = wheel("large", "1.0.0", &body);
    assert!(bytes.len() > 2_200_000, "{} bytes", bytes.len());
    a.stage(&request(&key, &[(&file, &bytes)])).await.unwrap();
    assert_eq!(staging.files(), vec![file.clone()]);
    assert!(staging.read(&file) == bytes, "the same bytes");
}

/// An upload whose answer is lost is settled by reading back, and not sent again; a
/// second upload of the same file (pypiserver: 409) is done when the bytes are ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_and_a_conflict_are_settled_by_reading_back() {
    let staging = PypiServer::start().await;
    let proxy = FaultProxy::start(&Url::parse(&staging.url()).unwrap()).await;
    let a = adapter(proxy.url.as_str(), proxy.url.as_str());
    let key = Pkg {
        name: "lost",
        version: "1.0.0",
    }
    .key();
    let file = wheel_name("lost", "1.0.0");
    let bytes = wheel("lost", "1.0.0", "z = 1\n");
    proxy.inject(Fault::new(502).method("POST").after_forwarding());
    a.stage(&request(&key, &[(&file, &bytes)])).await.unwrap();
    assert_eq!(proxy.forwarded("POST", "/"), 1, "{:?}", proxy.seen());
    assert_eq!(staging.files(), vec![file.clone()]);

    // The listing before uploading misses the file (a replica behind): the upload is sent,
    // refused as existing, and the read-back finds the voted bytes.
    proxy.inject(Fault::new(404).method("GET").path_contains("/simple/lost/"));
    a.stage(&request(&key, &[(&file, &bytes)])).await.unwrap();
    let refused: Vec<u16> = proxy
        .seen()
        .iter()
        .filter(|s| s.method == "POST" && !s.injected)
        .map(|s| s.status)
        .collect();
    assert_eq!(refused, vec![200, 409], "{:?}", proxy.seen());
}

/// A stage request for files of `key`, sealed as the pipeline seals them.
fn request(key: &DistributionKey, files: &[(&str, &[u8])]) -> StageRequest {
    StageRequest {
        key: key.clone(),
        revision: RevisionKey::of(&key.release_key, &RevisionNumber::new("00001").unwrap()),
        artifacts: files.iter().map(|(f, b)| sealed(f, b)).collect(),
        companions: Vec::new(),
        staging_tag: DistTag::new("staging").unwrap(),
    }
}

/// PyPI itself (warehouse), from its documentation: uploads at `/legacy/`, the JSON API
/// with `urls[].digests.sha256`, a redirect to the project's canonical name, and a 400
/// "File already exists" for a file uploaded before. A contract mock, since warehouse
/// cannot run here; it also shows the form the index receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pypi_json_api_and_upload_form_contract() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let server = MockServer::start().await;
    let base = format!("{}/", server.uri());
    let file = wheel_name("json-pkg", "1.0.0");
    let bytes = wheel("json-pkg", "1.0.0", "j = 1\n");
    let sha = sha256_hex(&bytes);
    Mock::given(method("GET"))
        .and(path("/pypi/json-pkg/1.0.0/json"))
        .respond_with(
            ResponseTemplate::new(301).insert_header("Location", "/pypi/Json-Pkg/1.0.0/json"),
        )
        .mount(&server)
        .await;
    // Not there before the upload; there (uploaded by an earlier attempt) afterwards.
    Mock::given(method("GET"))
        .and(path("/pypi/Json-Pkg/1.0.0/json"))
        .respond_with(ResponseTemplate::new(404))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/pypi/Json-Pkg/1.0.0/json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "info": {"name": "Json-Pkg", "version": "1.0.0"},
            "urls": [{
                "filename": file,
                "packagetype": "bdist_wheel",
                "digests": {"sha256": sha, "md5": "00"},
                "upload_time_iso_8601": "2026-12-06T09:00:00.000000Z"
            }]
        })))
        .with_priority(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/simple/json-pkg/"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/legacy/"))
        .respond_with(ResponseTemplate::new(400).set_body_string(format!(
            "400 File already exists ('{file}', with blake2_256 hash 'x'). See https://pypi.org/help/#file-name-reuse for more information."
        )))
        .mount(&server)
        .await;

    let index = IndexSettings {
        upload: Url::parse(&format!("{base}legacy/")).unwrap(),
        read: Url::parse(&base).unwrap(),
        username: "__token__".into(),
        token: Some(Secret::new("pypi-contract-token")),
    };
    let a = PypiAdapter::new(index.clone(), index).unwrap();
    let key = Pkg {
        name: "json-pkg",
        version: "1.0.0",
    }
    .key();
    a.stage(&request(&key, &[(&file, &bytes)])).await.unwrap();
    let seen = a
        .read_staged(&key, &DistTag::new("staging").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(seen.digest.as_str().starts_with("sha256:"));
    assert_eq!(
        seen.api_url.as_deref(),
        Some(format!("{base}pypi/json-pkg/1.0.0/json").as_str())
    );
    assert!(seen.upload_date.is_some());

    let requests = server.received_requests().await.unwrap();
    let posts: Vec<_> = requests
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .collect();
    assert_eq!(posts.len(), 1, "sent once, then settled by reading back");
    let post = posts[0];
    let auth = post.headers.get("authorization").unwrap().to_str().unwrap();
    use base64::Engine as _;
    assert_eq!(
        auth,
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("__token__:pypi-contract-token")
        )
    );
    let content_type = post.headers.get("content-type").unwrap().to_str().unwrap();
    assert!(content_type.starts_with("multipart/form-data; boundary="));
    let body = String::from_utf8_lossy(&post.body);
    for (name, value) in [
        (":action", "file_upload"),
        ("protocol_version", "1"),
        ("filetype", "bdist_wheel"),
        ("pyversion", "py3"),
        ("sha256_digest", sha.as_str()),
        ("metadata_version", "2.1"),
        ("name", "json-pkg"),
        ("version", "1.0.0"),
        ("classifiers", "Programming Language :: Python :: 3"),
        (
            "classifiers",
            "License :: OSI Approved :: Apache Software License",
        ),
        ("requires_python", ">=3.8"),
    ] {
        let field = format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n");
        assert!(body.contains(&field), "{field:?} missing from the form");
    }
    assert!(body.contains(&format!(
        "Content-Disposition: form-data; name=\"content\"; filename=\"{file}\""
    )));
    let at = post
        .body
        .windows(bytes.len())
        .position(|w| w == bytes.as_slice());
    assert!(at.is_some(), "the wheel's bytes are in the form, unchanged");
}

/// A dry-run promote seals the voted files and lists the uploads it would make, sending
/// nothing; a row staged without a record of its files cannot be promoted by re-upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_lists_the_uploads_and_an_unrecorded_stage_is_refused() {
    use atr_dist_shared::entities::distribution;
    use atr_dist_shared::job::Job;
    use sea_orm::{ActiveModelTrait, IntoActiveModel, Set};

    let staging = PypiServer::start().await;
    let production = PypiServer::start().await;
    let h = Harness::new(
        Db::Sqlite,
        adapters(&staging.url(), &production.url()),
        FAST,
    )
    .await;
    let pkg = Pkg {
        name: "planned",
        version: "3.1.0",
    };
    pkg.write(&h, "00001", "p = 1\n");
    h.run_to_done(&pkg.stage("00001"), 3).await;
    let mut promote = pkg.promote("00001");
    if let Job::Promote(job) = &mut promote.job {
        job.dry_run = true;
    }
    assert_eq!(h.run(&promote, 3).await, JobState::Done);
    let run = &h.runs(&promote).await[0];
    assert_eq!(run.outcome.as_deref(), Some("dry_run"));
    let message = run.message.clone().unwrap_or_default();
    for file in pkg.files() {
        assert!(
            message.contains(&format!("upload {file} (sha256 ")),
            "{message}"
        );
    }
    assert!(production.files().is_empty(), "a dry run sends nothing");

    // A row staged before the files were recorded.
    let mut row = h.row().await.unwrap().into_active_model();
    row.staged_artifacts = Set(None);
    let _: distribution::Model = row.update(&h.db).await.unwrap();
    let promote = pkg.promote("00001");
    assert_eq!(h.run(&promote, 3).await, JobState::Dead);
    let err = h.last_error(&promote).await;
    assert!(
        err.contains("was staged without a record of its files"),
        "{err}"
    );
    assert!(production.files().is_empty());
    h.stop().await;
}

/// A PEP 740 attestation object as `pypi-attestations` writes it (the contents are opaque
/// here: pypiserver does not verify them, and PyPI would).
const ATTESTATION: &str = r#"{"version":1,"verification_material":{"certificate":"MIIC1zCCAl2gAwIBAgIU","transparency_entries":[{"logIndex":"148545543"}]},"envelope":{"statement":"eyJfdHlwZSI6Imh0dHBzOi8vaW4tdG90by5pby9TdGF0ZW1lbnQvdjEifQ==","signature":"MEUCIQDv"}}"#;

/// The multipart field `name` with `value`, as the upload form carries it.
fn form_field(name: &str, value: &str) -> String {
    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
}

async fn attestations_are_passed_through(db: Db) {
    let staging = PypiServer::start().await;
    let production = PypiServer::start().await;
    let staging_proxy = FaultProxy::start(&Url::parse(&staging.url()).unwrap()).await;
    let production_proxy = FaultProxy::start(&Url::parse(&production.url()).unwrap()).await;
    let h = Harness::new(
        db,
        adapters(staging_proxy.url.as_str(), production_proxy.url.as_str()),
        FAST,
    )
    .await;
    let pkg = Pkg {
        name: "attested",
        version: "1.0.0",
    };
    let [s, w] = pkg.files();
    for rev in ["00001", "00002"] {
        pkg.write(&h, rev, "a = 1\n");
        // Only the wheel is attested.
        h.revs.write_release(
            "example",
            pkg.version,
            rev,
            &[(&format!("{w}.publish.attestation"), ATTESTATION.as_bytes())],
        );
    }
    h.run_to_done(&pkg.stage("00001"), 3).await;
    h.run_to_done(&pkg.promote("00002"), 3).await;
    assert_eq!(production.files().len(), 2);

    let want = form_field("attestations", &format!("[{ATTESTATION}]"));
    for (index, proxy) in [
        ("staging", &staging_proxy),
        ("production", &production_proxy),
    ] {
        let posts: Vec<String> = proxy
            .seen()
            .iter()
            .filter(|r| r.method == "POST" && !r.injected)
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect();
        assert_eq!(posts.len(), 2, "{index}");
        let wheel = posts
            .iter()
            .find(|b| b.contains(&format!("filename=\"{w}\"")))
            .unwrap();
        let sdist = posts
            .iter()
            .find(|b| b.contains(&format!("filename=\"{s}\"")))
            .unwrap();
        assert!(
            wheel.contains(&want),
            "{index}: the wheel's upload carries its attestation"
        );
        assert!(
            !sdist.contains("name=\"attestations\""),
            "{index}: the sdist has none"
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestations_beside_the_files_are_uploaded_with_them_on_sqlite() {
    attestations_are_passed_through(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestations_beside_the_files_are_uploaded_with_them_on_postgres() {
    attestations_are_passed_through(Db::Postgres).await;
}

/// An attestation that is not a JSON object is refused before anything is sent; one the
/// revision changes after the vote is a changed revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_or_changed_attestation_is_refused() {
    let staging = PypiServer::start().await;
    let production = PypiServer::start().await;
    let h = Harness::new(
        Db::Sqlite,
        adapters(&staging.url(), &production.url()),
        FAST,
    )
    .await;
    let pkg = Pkg {
        name: "badly-attested",
        version: "1.0.0",
    };
    let [_, w] = pkg.files();
    let attestation = format!("{w}.publish.attestation");
    pkg.write(&h, "00001", "b = 1\n");
    h.revs.write_release(
        "example",
        pkg.version,
        "00001",
        &[(&attestation, b"[1, 2]")],
    );
    let stage = pkg.stage("00001");
    assert_eq!(h.run(&stage, 3).await, JobState::Dead);
    let err = h.last_error(&stage).await;
    assert!(
        err.contains(&format!(
            "{attestation} is not a PEP 740 attestation: not a JSON object"
        )),
        "{err}"
    );
    assert!(staging.files().is_empty(), "nothing uploaded");

    pkg.write(&h, "00002", "b = 1\n");
    h.revs.write_release(
        "example",
        pkg.version,
        "00002",
        &[(&attestation, ATTESTATION.as_bytes())],
    );
    h.run_to_done(&pkg.stage("00002"), 3).await;
    pkg.write(&h, "00003", "b = 1\n");
    h.revs.write_release(
        "example",
        pkg.version,
        "00003",
        &[(
            &attestation,
            ATTESTATION.replace("MEUCIQDv", "MEUCIQDw").as_bytes(),
        )],
    );
    let promote = pkg.promote("00003");
    assert_eq!(h.run(&promote, 3).await, JobState::Dead);
    assert_eq!(
        h.runs(&promote).await[0].outcome.as_deref(),
        Some("revision_changed")
    );
    assert!(production.files().is_empty());
    h.stop().await;
}

/// The same stage → promote against a real devpi-server: uploads to `atr/staging`, then to
/// `atr/release`, each read back through devpi's simple API under `+simple/` (the read URL
/// names it; devpi has no PyPI JSON API). On SQLite and PostgreSQL, one server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_and_promotes_on_devpi() {
    use atr_dist_tests::pypi_support::{DEVPI_PASSWORD, DEVPI_USER, DevpiServer};

    let devpi = DevpiServer::start().await;
    let index = |name: &str| IndexSettings {
        upload: Url::parse(&devpi.upload_url(name)).unwrap(),
        read: Url::parse(&devpi.simple_url(name)).unwrap(),
        username: DEVPI_USER.into(),
        token: Some(Secret::new(DEVPI_PASSWORD)),
    };
    for (db, name) in [(Db::Sqlite, "devpi-lite"), (Db::Postgres, "devpi-pg")] {
        let a = PypiAdapter::new(index("staging"), index("release")).unwrap();
        let h = Harness::new(
            db,
            Adapters::default().with(Platform::Pypi, Arc::new(a)),
            FAST,
        )
        .await;
        let pkg = Pkg {
            name,
            version: "1.0.0",
        };
        pkg.write(&h, "00001", "d = 1\n");
        h.run_to_done(&pkg.stage("00001"), 3).await;
        let row = h.row().await.unwrap();
        let staged = row.platform_digest.clone().unwrap();
        assert_eq!(
            row.api_url.as_deref(),
            Some(format!("{}{name}/", devpi.simple_url("staging")).as_str())
        );

        pkg.write(&h, "00002", "d = 1\n");
        h.run_to_done(&pkg.promote("00002"), 3).await;
        let row = h.row().await.unwrap();
        assert!(row.promoted);
        assert_eq!(row.promoted_digest.as_deref(), Some(staged.as_str()));
        let release = reqwest::get(format!("{}{name}/", devpi.simple_url("release")))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for f in pkg.files() {
            assert!(release.contains(&f), "{f} on atr/release: {release}");
        }

        let again = pkg.promote("00002");
        h.run_to_done(&again, 3).await;
        assert_eq!(
            h.runs(&again).await[0].outcome.as_deref(),
            Some("unchanged")
        );
        h.stop().await;
    }
}

/// An index that holds some of the voted files already (an attempt that broke off between
/// two uploads) is sent only the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_files_the_index_lacks_are_uploaded() {
    let staging = PypiServer::start().await;
    let proxy = FaultProxy::start(&Url::parse(&staging.url()).unwrap()).await;
    let a = adapter(proxy.url.as_str(), proxy.url.as_str());
    let pkg = Pkg {
        name: "halfway",
        version: "1.0.0",
    };
    let [s, w] = pkg.files();
    let sd = sdist("halfway", "1.0.0", "h = 1\n");
    let wh = wheel("halfway", "1.0.0", "h = 1\n");
    staging.replace(&w, &wh);
    a.stage(&request(&pkg.key(), &[(&s, &sd), (&w, &wh)]))
        .await
        .unwrap();
    let mut held = staging.files();
    held.sort();
    let mut want = vec![s.clone(), w.clone()];
    want.sort();
    assert_eq!(held, want);
    assert_eq!(staging.read(&s), sd);
    let posts: Vec<u16> = proxy
        .seen()
        .iter()
        .filter(|x| x.method == "POST")
        .map(|x| x.status)
        .collect();
    assert_eq!(posts, vec![200], "one upload, of {s}: {:?}", proxy.seen());
}

/// An upload refused as existing is read back: other bytes under the name (missed by a
/// listing from a replica behind) are reported as what the read-back found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upload_whose_name_holds_other_bytes_is_reported() {
    let staging = PypiServer::start().await;
    let proxy = FaultProxy::start(&Url::parse(&staging.url()).unwrap()).await;
    let a = adapter(proxy.url.as_str(), proxy.url.as_str());
    let key = Pkg {
        name: "taken",
        version: "1.0.0",
    }
    .key();
    let file = wheel_name("taken", "1.0.0");
    let voted = wheel("taken", "1.0.0", "t = 1\n");
    let other = wheel("taken", "1.0.0", "t = 2\n");
    staging.replace(&file, &other);
    proxy.inject(
        Fault::new(404)
            .method("GET")
            .path_contains("/simple/taken/"),
    );
    let err = a
        .stage(&request(&key, &[(&file, &voted)]))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
    assert!(
        err.message.contains(&format!(
            "(read back: the staging index holds {file} with sha256 {}, not the voted {})",
            sha256_hex(&other),
            sha256_hex(&voted)
        )),
        "{}",
        err.message
    );
    assert_eq!(staging.read(&file), other);
}
