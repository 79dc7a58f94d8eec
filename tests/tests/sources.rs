//! Revision sources: ATR's published manifest and files over HTTP (a contract mock of ATR's
//! endpoints on loopback), and inline manifests, through the real pipeline.

use std::sync::Arc;

use atr_dist::config::RetryConfig;
use atr_dist::platform::Adapters;
use atr_dist::source::{AtrSource, RevisionSource, SourceError};
use atr_dist_shared::job::{ReleaseRef, RevisionSourceSpec};
use atr_dist_shared::manifest::Sha3Hex;
use atr_dist_shared::names::{ArtifactPath, RevisionNumber};
use atr_dist_shared::{Envelope, JobState, ManifestEntry, Platform, RevisionManifest};
use atr_dist_tests::jobs::{Dist, unique_key};
use atr_dist_tests::pipeline_support::{Db, Harness, RecordingAdapter};
use sha3::{Digest as _, Sha3_256};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn dist() -> Dist {
    Dist::new(Platform::Npm, "", "pkg", "1.0.0")
}

fn release() -> ReleaseRef {
    dist().release()
}

fn entry(path: &str, content: &[u8]) -> ManifestEntry {
    ManifestEntry {
        path: ArtifactPath::new(path).unwrap(),
        size: content.len() as u64,
        sha3_256: Sha3Hex::from_bytes(Sha3_256::digest(content).into()),
    }
}

async fn atr_mock(manifest: &RevisionManifest, files: &[(&str, &[u8])]) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/manifest/example/1.0.0/00002"))
        .respond_with(ResponseTemplate::new(200).set_body_json(manifest))
        .mount(&server)
        .await;
    for (name, content) in files {
        Mock::given(method("GET"))
            .and(path(format!("/files/example/1.0.0/00002/{name}")))
            .respond_with(ResponseTemplate::new(200).set_body_bytes(content.to_vec()))
            .mount(&server)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/manifest/example/1.0.0/00009"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    server
}

/// ATR's routes under `base` (a mock's `uri()`, or another loopback server's address).
fn atr_source(base: &str) -> AtrSource {
    AtrSource::new(
        format!("{base}/manifest/{{project}}/{{version}}/{{revision}}"),
        format!("{base}/files/{{project}}/{{version}}/{{revision}}/{{path}}"),
    )
    .unwrap()
}

#[tokio::test]
async fn atr_source_reads_manifests_and_files() {
    let tgz: &[u8] = b"tarball";
    let manifest = RevisionManifest::new(vec![
        entry("pkg-1.0.0.tgz", tgz),
        entry("docs/README", b"read"),
    ])
    .unwrap();
    let server = atr_mock(&manifest, &[("pkg-1.0.0.tgz", tgz)]).await;
    let source = atr_source(&server.uri());
    let got = source
        .manifest(&release(), &RevisionNumber::new("00002").unwrap())
        .await
        .unwrap();
    assert_eq!(got, manifest);
    assert_eq!(got.digest(), manifest.digest());

    let stream = source
        .open(
            &release(),
            &RevisionNumber::new("00002").unwrap(),
            &ArtifactPath::new("pkg-1.0.0.tgz").unwrap(),
        )
        .await
        .unwrap();
    let sealed = atr_dist::seal::Sealer::default()
        .seal(&manifest.entries()[1], stream)
        .await
        .unwrap();
    assert_eq!(sealed.bytes().await.unwrap().as_ref(), tgz);

    // Unknown revision: permanent; ATR unavailable: transient.
    let missing = source
        .manifest(&release(), &RevisionNumber::new("00003").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(missing, SourceError::NotFound(_)), "{missing}");
    let down = source
        .manifest(&release(), &RevisionNumber::new("00009").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(down, SourceError::Unavailable(_)), "{down}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_from_atr_and_promote_with_an_inline_manifest() {
    let tgz: &[u8] = b"tarball";
    let manifest = RevisionManifest::new(vec![
        entry("pkg-1.0.0.tgz", tgz),
        entry("docs/README", b"read"),
    ])
    .unwrap();
    let server = atr_mock(&manifest, &[("pkg-1.0.0.tgz", tgz)]).await;
    let adapter = RecordingAdapter::default();
    let retry = RetryConfig {
        base_ms: 20,
        cap_ms: 100,
        max_attempts: 3,
    };
    let atr = Arc::new(atr_source(&server.uri()));
    let h = Harness::custom(
        Db::Sqlite,
        Adapters::default().with(Platform::Npm, Arc::new(adapter.clone())),
        retry,
        |p| p.sources.atr = Some(atr),
    )
    .await;

    let stage = dist().stage("00002", &["pkg-1.0.0.tgz"], RevisionSourceSpec::Atr, false);
    assert_eq!(
        h.run(&stage, 3).await,
        JobState::Done,
        "{}",
        h.last_error(&stage).await
    );
    let row = h.row().await.unwrap();
    assert_eq!(
        row.staged_manifest_digest.as_deref(),
        Some(manifest.digest().as_str())
    );

    // The voted revision's manifest carried in the job: same files, promotes.
    let promote = |m: RevisionManifest| {
        dist().promote("00003", RevisionSourceSpec::Inline { manifest: m }, "rm")
    };
    // A different inline manifest is refused and names the change.
    let changed = RevisionManifest::new(vec![
        entry("pkg-1.0.0.tgz", b"other"),
        entry("docs/README", b"read"),
    ])
    .unwrap();
    let refused = promote(changed);
    assert_eq!(h.run(&refused, 3).await, JobState::Dead);
    assert!(
        h.last_error(&refused)
            .await
            .contains("changed: pkg-1.0.0.tgz")
    );
    let same = promote(manifest.clone());
    assert_eq!(
        h.run(&same, 3).await,
        JobState::Done,
        "{}",
        h.last_error(&same).await
    );
    assert!(h.row().await.unwrap().promoted);
    assert_eq!(adapter.writes().len(), 2);

    // A file that does not match the manifest ATR published is never staged.
    let lying = RevisionManifest::new(vec![entry("pkg-1.0.0.tgz", b"something else")]).unwrap();
    let server = atr_mock(&lying, &[("pkg-1.0.0.tgz", tgz)]).await;
    let atr = Arc::new(atr_source(&server.uri()));
    let h2 = Harness::custom(
        Db::Sqlite,
        Adapters::default().with(Platform::Npm, Arc::new(RecordingAdapter::default())),
        retry,
        |p| p.sources.atr = Some(atr),
    )
    .await;
    let stage2 = Envelope::new(stage.job.clone(), unique_key());
    assert_eq!(h2.run(&stage2, 3).await, JobState::Dead);
    assert!(
        h2.last_error(&stage2)
            .await
            .contains("does not match the voted manifest"),
        "{}",
        h2.last_error(&stage2).await
    );
    h2.stop().await;
    h.stop().await;
}

// ---------------------------------------------------------------------------------------
// Only regular files inside the revision are read.

fn inline_stage(manifest: RevisionManifest, artifact: &str) -> Envelope {
    dist().stage(
        "00001",
        &[artifact],
        RevisionSourceSpec::Inline { manifest },
        false,
    )
}

async fn recording_harness() -> (Harness, RecordingAdapter) {
    let adapter = RecordingAdapter::default();
    let h = Harness::new(
        Db::Sqlite,
        Adapters::default().with(Platform::Npm, Arc::new(adapter.clone())),
        RetryConfig {
            base_ms: 20,
            cap_ms: 100,
            max_attempts: 2,
        },
    )
    .await;
    (h, adapter)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_link_leads_a_job_out_of_the_revision() {
    let (h, adapter) = recording_harness().await;
    let outside = tempfile::tempdir().unwrap();
    let secret: &[u8] = b"a file outside every revision";
    std::fs::write(outside.path().join("x.tgz"), secret).unwrap();
    let rev = h.revs.write("00001", &[("pkg-1.0.0.tgz", b"voted")]);

    // A linked directory inside the revision, named by an inline manifest that carries the
    // outside file's own hash: the manifest check alone would pass.
    std::os::unix::fs::symlink(outside.path(), rev.join("sub")).unwrap();
    let job = inline_stage(
        RevisionManifest::new(vec![entry("sub/x.tgz", secret)]).unwrap(),
        "sub/x.tgz",
    );
    assert_eq!(h.run(&job, 2).await, JobState::Dead);
    let error = h.last_error(&job).await;
    assert!(error.contains("sub is a symbolic link"), "{error}");

    // A linked file.
    std::os::unix::fs::symlink(outside.path().join("x.tgz"), rev.join("y.tgz")).unwrap();
    let job = inline_stage(
        RevisionManifest::new(vec![entry("y.tgz", secret)]).unwrap(),
        "y.tgz",
    );
    assert_eq!(h.run(&job, 2).await, JobState::Dead);
    let error = h.last_error(&job).await;
    assert!(error.contains("y.tgz is a symbolic link"), "{error}");

    // A linked revision directory.
    let elsewhere = h.revs.write("00009", &[("pkg-1.0.0.tgz", b"voted")]);
    std::os::unix::fs::symlink(&elsewhere, rev.parent().unwrap().join("00002")).unwrap();
    let job = dist().stage("00002", &["pkg-1.0.0.tgz"], RevisionSourceSpec::Dir, false);
    assert_eq!(h.run(&job, 2).await, JobState::Dead);
    let error = h.last_error(&job).await;
    assert!(error.contains("00002 is a symbolic link"), "{error}");

    assert!(adapter.writes().is_empty(), "{:?}", adapter.writes());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_in_a_revision_is_refused_without_blocking() {
    let (h, adapter) = recording_harness().await;
    let rev = h.revs.write("00001", &[("pkg-1.0.0.tgz", b"voted")]);
    let status = std::process::Command::new("mkfifo")
        .arg(rev.join("pipe.tgz"))
        .status()
        .unwrap();
    assert!(status.success());
    // A hang would be a worker thread blocked for good: bound the whole test instead.
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        // The dir source's manifest walk.
        let walk = dist().stage("00001", &["pkg-1.0.0.tgz"], RevisionSourceSpec::Dir, false);
        assert_eq!(h.run(&walk, 2).await, JobState::Dead);
        let error = h.last_error(&walk).await;
        assert!(
            error.contains("pipe.tgz is not a regular file (a FIFO)"),
            "{error}"
        );
        // An inline job naming it.
        let named = inline_stage(
            RevisionManifest::new(vec![entry("pipe.tgz", b"")]).unwrap(),
            "pipe.tgz",
        );
        assert_eq!(h.run(&named, 2).await, JobState::Dead);
        let error = h.last_error(&named).await;
        assert!(
            error.contains("pipe.tgz is not a regular file (a FIFO)"),
            "{error}"
        );
    })
    .await;
    assert!(outcome.is_ok(), "a FIFO blocked the worker");
    assert!(adapter.writes().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn atr_source_stays_on_its_origin_and_bounds_the_manifest() {
    let tgz: &[u8] = b"tarball";
    let manifest = RevisionManifest::new(vec![entry("pkg-1.0.0.tgz", tgz)]).unwrap();
    let elsewhere = atr_mock(&manifest, &[("pkg-1.0.0.tgz", tgz)]).await;
    let server = MockServer::start().await;
    // Within ATR's origin, a redirect is followed.
    Mock::given(method("GET"))
        .and(path("/manifest/example/1.0.0/00002"))
        .respond_with(
            ResponseTemplate::new(302).insert_header("location", "/moved/example/1.0.0/00002"),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/moved/example/1.0.0/00002"))
        .respond_with(ResponseTemplate::new(200).set_body_json(&manifest))
        .mount(&server)
        .await;
    // To another origin, it is not.
    Mock::given(method("GET"))
        .and(path("/files/example/1.0.0/00002/pkg-1.0.0.tgz"))
        .respond_with(ResponseTemplate::new(302).insert_header(
            "location",
            format!(
                "{}/files/example/1.0.0/00002/pkg-1.0.0.tgz",
                elsewhere.uri()
            ),
        ))
        .mount(&server)
        .await;
    // A manifest larger than any release's.
    Mock::given(method("GET"))
        .and(path("/manifest/example/1.0.0/00003"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![b' '; 17 * 1024 * 1024]))
        .mount(&server)
        .await;
    let source = atr_source(&server.uri());
    let rev = |r: &str| RevisionNumber::new(r).unwrap();
    assert_eq!(
        source.manifest(&release(), &rev("00002")).await.unwrap(),
        manifest
    );
    let off_origin = match source
        .open(
            &release(),
            &rev("00002"),
            &ArtifactPath::new("pkg-1.0.0.tgz").unwrap(),
        )
        .await
    {
        Ok(_) => panic!("a redirect to another origin was followed"),
        Err(e) => e,
    };
    assert!(
        off_origin.to_string().contains("outside ATR's origin"),
        "{off_origin}"
    );
    let big = source
        .manifest(&release(), &rev("00003"))
        .await
        .unwrap_err();
    assert!(matches!(big, SourceError::Invalid(_)), "{big}");
    assert!(big.to_string().contains("is over 16777216 bytes"), "{big}");
    // Nothing was fetched from the other origin.
    assert!(elsewhere.received_requests().await.unwrap().is_empty());
}

/// ATR may move a route more than once; five redirects within its origin are followed, and
/// a sixth is refused rather than followed without end.
#[tokio::test]
async fn atr_source_follows_up_to_five_redirects() {
    let manifest = RevisionManifest::new(vec![entry("pkg-1.0.0.tgz", b"tarball")]).unwrap();
    let server = MockServer::start().await;
    // Revision 00005 is moved five times, revision 00006 six, each step one more `/hop`.
    for (revision, hops) in [("00005", 5), ("00006", 6)] {
        let at = |n: usize| format!("/manifest/example/1.0.0/{revision}{}", "/hop".repeat(n));
        for n in 0..hops {
            Mock::given(method("GET"))
                .and(path(at(n)))
                .respond_with(ResponseTemplate::new(302).insert_header("location", at(n + 1)))
                .mount(&server)
                .await;
        }
        Mock::given(method("GET"))
            .and(path(at(hops)))
            .respond_with(ResponseTemplate::new(200).set_body_json(&manifest))
            .mount(&server)
            .await;
    }
    let source = atr_source(&server.uri());
    let rev = |r: &str| RevisionNumber::new(r).unwrap();
    assert_eq!(
        source.manifest(&release(), &rev("00005")).await.unwrap(),
        manifest
    );
    let err = source
        .manifest(&release(), &rev("00006"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("more than 5 redirects"), "{err}");
    // The sixth redirect was refused, not requested: the manifest's own URL never was.
    let asked: Vec<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.url.path().to_owned())
        .filter(|p| p.contains("00006"))
        .collect();
    assert_eq!(asked.len(), 6, "{asked:?}");
}

/// A manifest of exactly the limit (16 MiB) is read, one byte more is refused: both when
/// its size is announced (`Content-Length`) and when it is only counted as it arrives
/// (chunked, as a proxy may send it).
#[tokio::test]
async fn a_manifest_of_up_to_16_mib_is_read_announced_or_not() {
    const LIMIT: usize = 16 * 1024 * 1024;
    let manifest = RevisionManifest::new(vec![entry("pkg-1.0.0.tgz", b"tarball")]).unwrap();
    // JSON allows trailing white space: the manifest, padded to the size wanted.
    let padded = |size: usize| {
        let mut body = serde_json::to_vec(&manifest).unwrap();
        body.resize(size, b' ');
        body
    };
    let rev = |r: &str| RevisionNumber::new(r).unwrap();

    let announced = MockServer::start().await;
    for (revision, size) in [("00010", LIMIT), ("00011", LIMIT + 1)] {
        Mock::given(method("GET"))
            .and(path(format!("/manifest/example/1.0.0/{revision}")))
            .respond_with(ResponseTemplate::new(200).set_body_bytes(padded(size)))
            .mount(&announced)
            .await;
    }
    let chunked = chunked_server(vec![
        ("/manifest/example/1.0.0/00010".to_owned(), padded(LIMIT)),
        (
            "/manifest/example/1.0.0/00011".to_owned(),
            padded(LIMIT + 1),
        ),
    ])
    .await;
    let sources = [
        ("Content-Length", atr_source(&announced.uri())),
        ("chunked", atr_source(&chunked.0)),
    ];
    for (how, source) in sources {
        assert_eq!(
            source.manifest(&release(), &rev("00010")).await.unwrap(),
            manifest,
            "{how}"
        );
        let err = source
            .manifest(&release(), &rev("00011"))
            .await
            .unwrap_err();
        assert!(matches!(err, SourceError::Invalid(_)), "{how}: {err}");
        assert!(
            err.to_string().contains("is over 16777216 bytes"),
            "{how}: {err}"
        );
    }
    chunked.1.abort();
}

/// A loopback HTTP/1.1 server that answers each path it knows with its body in 64 KiB
/// chunks and no `Content-Length`, and anything else with a 404. Stopped by aborting the
/// handle.
async fn chunked_server(bodies: Vec<(String, Vec<u8>)>) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let bodies = Arc::new(bodies);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let bodies = Arc::clone(&bodies);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if conn.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head);
                let wanted = head.split(' ').nth(1).unwrap_or("");
                let Some((_, body)) = bodies.iter().find(|(p, _)| p == wanted) else {
                    let _ = conn
                        .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    return;
                };
                let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
                for piece in body.chunks(64 * 1024) {
                    out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                    out.extend_from_slice(piece);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
                let _ = conn.write_all(&out).await;
            });
        }
    });
    (base, task)
}
