//! The GitHub Releases adapter against a stateful contract mock of GitHub's API and uploads
//! hosts (tests/src/github_support.rs), through the real pipeline on SQLite and PostgreSQL,
//! and every request it sends replayed against GitHub's published OpenAPI description in
//! Prism, so that a wrong path, field name or type fails here and not on github.com.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use atr_dist::config::RetryConfig;
use atr_dist::platform::github::{GithubAdapter, GithubSettings, TAG_VERSION};
use atr_dist::platform::{Adapters, PlatformAdapter, PlatformError, PromoteRequest, StageRequest};
use atr_dist::secret::Secret;
use atr_dist_shared::job::RevisionSourceSpec;
use atr_dist_shared::names::{DistTag, RevisionKey, RevisionNumber};
use atr_dist_shared::{Digest, DistributionKey, ErrorClass, JobState, Platform};
use atr_dist_tests::github_support::{FakeGithub, Fault, FaultKind, TOKEN, sha256};
use atr_dist_tests::jobs::Dist;
use atr_dist_tests::pipeline_support::{Db, Harness, sealed};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use url::Url;

const FAST: RetryConfig = RetryConfig {
    base_ms: 50,
    cap_ms: 200,
    max_attempts: 3,
};

const OWNER: &str = "apache";
const REPO: &str = "example";
const SRC: &str = "apache-example-1.0.0-src.tar.gz";
const SUMS: &str = "apache-example-1.0.0-src.tar.gz.sha512";

fn files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (SRC, b"the voted source archive".to_vec()),
        (
            SUMS,
            b"0123abcd  apache-example-1.0.0-src.tar.gz\n".to_vec(),
        ),
    ]
}

fn adapter(gh: &FakeGithub) -> GithubAdapter {
    adapter_with(gh, TOKEN)
}

fn adapter_with(gh: &FakeGithub, token: &str) -> GithubAdapter {
    GithubAdapter::new(GithubSettings {
        api: Url::parse(&gh.api.uri()).unwrap(),
        uploads: Url::parse(&gh.uploads.uri()).unwrap(),
        token: Some(Secret::new(token)),
    })
    .unwrap()
}

fn dist() -> Dist {
    Dist::new(Platform::Github, OWNER, REPO, "1.0.0")
}

fn key() -> DistributionKey {
    dist().key()
}

fn version_tag() -> DistTag {
    DistTag::new(TAG_VERSION).unwrap()
}

fn stage_request(files: &[(&str, Vec<u8>)]) -> StageRequest {
    let key = key();
    StageRequest {
        revision: RevisionKey::of(&key.release_key, &RevisionNumber::new("00001").unwrap()),
        artifacts: files.iter().map(|(f, b)| sealed(f, b)).collect(),
        companions: Vec::new(),
        staging_tag: version_tag(),
        key,
    }
}

fn promote_request(staged: &Digest) -> PromoteRequest {
    PromoteRequest {
        key: key(),
        staged_digest: staged.clone(),
        staging_tag: version_tag(),
        release_tag: version_tag(),
        artifacts: Vec::new(),
        companions: Vec::new(),
    }
}

/// The documented release digest: sha256 over `<name> <sha256 hex>\n`, sorted by name.
fn release_digest(files: &[(&str, Vec<u8>)]) -> Digest {
    let sorted: BTreeMap<&str, String> = files
        .iter()
        .map(|(n, b)| (*n, format!("{:x}", Sha256::digest(b))))
        .collect();
    let mut text = String::new();
    for (n, s) in sorted {
        text.push_str(&format!("{n} {s}\n"));
    }
    Digest::parse(format!("sha256:{:x}", Sha256::digest(text.as_bytes()))).unwrap()
}

/// The voted files are the release's assets, uploaded, each with its sha256.
fn assert_assets(gh: &FakeGithub, files: &[(&str, Vec<u8>)]) {
    let r = gh.release("v1.0.0").expect("a release for v1.0.0");
    let mut got: Vec<(String, String, Option<String>)> = r
        .assets
        .iter()
        .map(|a| (a.name.clone(), a.state.clone(), a.digest.clone()))
        .collect();
    got.sort();
    let mut want: Vec<(String, String, Option<String>)> = files
        .iter()
        .map(|(n, b)| ((*n).to_owned(), "uploaded".to_owned(), Some(sha256(b))))
        .collect();
    want.sort();
    assert_eq!(got, want);
}

fn count(writes: &[String], method: &str, part: &str) -> usize {
    writes
        .iter()
        .filter(|w| w.starts_with(method) && w.contains(part))
        .count()
}

async fn stage_then_promote(db: Db) {
    let gh = FakeGithub::start(OWNER, REPO, &["v1.0.0"]).await;
    let adapters = Adapters::default().with(Platform::Github, Arc::new(adapter(&gh)));
    let h = Harness::new(db, adapters, FAST).await;
    let files = files();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    h.revs.write_release("example", "1.0.0", "00001", &refs);
    h.run_to_done(
        &dist().stage("00001", &[SRC, SUMS], RevisionSourceSpec::Dir, false),
        3,
    )
    .await;
    let r = gh.release("v1.0.0").unwrap();
    assert!(!r.draft && r.prerelease, "{r:?}");
    assert_eq!(
        r.make_latest,
        ["false", "false"],
        "never latest while staged"
    );
    assert_eq!(r.name.as_deref(), Some("example 1.0.0"));
    assert_assets(&gh, &files);
    let writes = gh.writes();
    assert_eq!(count(&writes, "POST", "/releases 201"), 1, "{writes:?}");
    assert_eq!(count(&writes, "POST", "/assets?name="), 2, "{writes:?}");
    assert_eq!(count(&writes, "PATCH", ""), 1, "{writes:?}");
    assert_eq!(writes.len(), 4, "{writes:?}");
    let row = h.row().await.unwrap();
    assert!(row.staging && !row.promoted);
    let staged = release_digest(&files);
    assert_eq!(row.platform_digest.as_deref(), Some(staged.as_str()));
    assert_eq!(
        row.api_url.as_deref(),
        Some(format!("{}/repos/apache/example/releases/{}", gh.api.uri(), r.id).as_str())
    );
    assert_eq!(
        row.web_url.as_deref(),
        Some("https://github.com/apache/example/releases/tag/v1.0.0")
    );

    // The vote makes revision 00002 with the same files; promote flips the same release.
    h.revs.write_release("example", "1.0.0", "00002", &refs);
    h.run_to_done(&dist().promote("00002", RevisionSourceSpec::Dir, "rm"), 3)
        .await;
    let r = gh.release("v1.0.0").unwrap();
    assert!(!r.draft && !r.prerelease, "{r:?}");
    assert_eq!(r.make_latest.last().map(String::as_str), Some("true"));
    let row = h.row().await.unwrap();
    assert!(row.promoted && !row.staging);
    assert_eq!(row.promoted_digest.as_deref(), Some(staged.as_str()));
    let writes = gh.writes();
    assert_eq!(count(&writes, "PATCH", ""), 2, "{writes:?}");

    // Promote again: nothing written, recorded as unchanged.
    let again = dist().promote("00002", RevisionSourceSpec::Dir, "rm");
    assert_eq!(h.run(&again, 3).await, JobState::Done);
    assert_eq!(
        h.runs(&again).await[0].outcome.as_deref(),
        Some("unchanged")
    );
    assert_eq!(gh.writes(), writes, "a repeated promote writes nothing");

    // An asset replaced on GitHub afterwards is seen, and nothing is taken for done.
    gh.tamper("v1.0.0", SRC, |a| a.digest = Some(sha256(b"other bytes")));
    let swapped = dist().promote("00002", RevisionSourceSpec::Dir, "rm");
    assert_eq!(h.run(&swapped, 3).await, JobState::Dead);
    let err = h.last_error(&swapped).await;
    assert!(
        err.contains("is recorded as promoted, but version on the platform holds sha256:"),
        "{err}"
    );
    assert_eq!(gh.writes(), writes);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_and_promotes_a_release_on_sqlite() {
    stage_then_promote(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_and_promotes_a_release_on_postgres() {
    stage_then_promote(Db::Postgres).await;
}

/// Lost answers, a broken-off upload and 5xx are settled by reading back: one release, each
/// asset once, the starter deleted and uploaded again.
async fn flow_with_faults(gh: &FakeGithub) {
    gh.inject(Fault::new("POST", "/releases", FaultKind::Lost(502)));
    gh.inject(Fault::new(
        "POST",
        &format!("/assets?name={SRC}"),
        FaultKind::Starter,
    ));
    gh.inject(Fault::new(
        "POST",
        &format!("/assets?name={SUMS}"),
        FaultKind::Lost(504),
    ));
    gh.inject(Fault::answer("GET", "/assets?per_page=", 503).header("retry-after", "0"));
    gh.inject(Fault::new("PATCH", "/releases/", FaultKind::Lost(502)));
    gh.inject(Fault::new(
        "DELETE",
        "/releases/assets/",
        FaultKind::Lost(502),
    ));
    let a = adapter(gh);
    let files = files();
    a.stage(&stage_request(&files)).await.unwrap();
    assert_assets(gh, &files);
    let r = gh.release("v1.0.0").unwrap();
    assert!(!r.draft && r.prerelease);
    let writes = gh.writes();
    assert_eq!(count(&writes, "POST", "/releases 502"), 1, "{writes:?}");
    assert_eq!(
        count(&writes, "POST", "/releases 201"),
        0,
        "created once: {writes:?}"
    );
    assert_eq!(
        count(&writes, "POST", &format!("name={SRC} ")),
        2,
        "the starter, then the upload again: {writes:?}"
    );
    assert_eq!(
        count(&writes, "DELETE", "/releases/assets/"),
        1,
        "{writes:?}"
    );
    assert_eq!(
        count(&writes, "POST", &format!("name={SUMS} ")),
        1,
        "a lost answer is not sent again: {writes:?}"
    );
    assert_eq!(count(&writes, "PATCH", ""), 1, "{writes:?}");
    let staged = a
        .read_staged(&key(), &version_tag())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(staged.digest, release_digest(&files));

    // Promote, its answer lost: settled by reading back.
    gh.inject(Fault::new("PATCH", "/releases/", FaultKind::Lost(502)));
    a.promote(&promote_request(&staged.digest)).await.unwrap();
    assert!(!gh.release("v1.0.0").unwrap().prerelease);
    assert_eq!(count(&gh.writes(), "PATCH", ""), 2);
    let promoted = a
        .read_promoted(&key(), &version_tag())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(promoted.digest, staged.digest);
    // Again: nothing written.
    let before = gh.writes();
    a.promote(&promote_request(&staged.digest)).await.unwrap();
    assert_eq!(gh.writes(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_starters_and_5xx_are_settled_by_reading_back() {
    let gh = FakeGithub::start(OWNER, REPO, &["v1.0.0"]).await;
    flow_with_faults(&gh).await;
}

/// What a release already holds: the same bytes are adopted, a starter is replaced, other
/// bytes or assets that were not voted refuse the stage before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_assets_are_adopted_replaced_or_refused() {
    let files = files();
    let (src, sums) = (&files[0].1, &files[1].1);

    // A draft an earlier attempt left: one asset there, the other a starter.
    let gh = FakeGithub::start(OWNER, REPO, &["v1.0.0"]).await;
    gh.add_release("v1.0.0", true, true, &[(SRC, src)]);
    gh.add_release("v0.9.0", false, false, &[]);
    let r = gh.release("v1.0.0").unwrap();
    {
        let mut s = gh.state.lock().unwrap();
        let release = s.releases.iter_mut().find(|x| x.id == r.id).unwrap();
        release
            .assets
            .push(atr_dist_tests::github_support::FakeAsset {
                id: 999,
                name: SUMS.into(),
                state: "starter".into(),
                digest: None,
                size: 0,
            });
    }
    adapter(&gh).stage(&stage_request(&files)).await.unwrap();
    assert_assets(&gh, &files);
    let writes = gh.writes();
    assert_eq!(
        writes,
        [
            "DELETE /repos/apache/example/releases/assets/999 204".to_owned(),
            format!(
                "POST /repos/apache/example/releases/{}/assets?name={SUMS} 201",
                r.id
            ),
            format!("PATCH /repos/apache/example/releases/{} 200", r.id),
        ],
        "the draft is completed: no new release, {SRC} adopted"
    );

    // Other bytes under a voted name: never overwritten.
    let gh = FakeGithub::start(OWNER, REPO, &["v1.0.0"]).await;
    gh.add_release(
        "v1.0.0",
        false,
        true,
        &[(SRC, b"other bytes"), (SUMS, sums)],
    );
    let err = refused(&gh, &files).await;
    assert_eq!(err.class, ErrorClass::Permanent);
    let other = sha256(b"other bytes");
    assert!(
        err.message.contains(&format!(
            "holds {SRC} with sha256 {}, not the voted {}; an asset is never overwritten",
            &other[7..],
            &sha256(src)[7..]
        )),
        "{}",
        err.message
    );
    // An asset that was not voted.
    let gh = FakeGithub::start(OWNER, REPO, &["v1.0.0"]).await;
    gh.add_release("v1.0.0", false, true, &[("notes.txt", b"x")]);
    let err = refused(&gh, &files).await;
    assert!(
        err.message
            .contains("holds assets that were not voted (notes.txt (sha256:"),
        "{}",
        err.message
    );
    // An immutable release that is not the vote.
    let gh = FakeGithub::start(OWNER, REPO, &["v1.0.0"]).await;
    gh.add_release("v1.0.0", false, true, &[(SRC, src)]);
    gh.set_immutable("v1.0.0");
    let err = refused(&gh, &files).await;
    assert!(
        err.message.contains(
            "the release for v1.0.0 is immutable and holds apache-example-1.0.0-src.tar.gz (sha256:"
        ) && err.message.contains("GitHub allows no change"),
        "{}",
        err.message
    );
    // A full release is never changed by a stage.
    let gh = FakeGithub::start(OWNER, REPO, &["v1.0.0"]).await;
    gh.add_release("v1.0.0", false, false, &[]);
    let err = refused(&gh, &files).await;
    assert!(
        err.message
            .contains("is a published full release holding no assets, not the voted files"),
        "{}",
        err.message
    );
    // No tag: no release is created (GitHub would tag the default branch).
    let gh = FakeGithub::start(OWNER, REPO, &["v0.9.0"]).await;
    let err = refused(&gh, &files).await;
    assert!(
        err.message
            .contains("apache/example has no tag v1.0.0 (or the token cannot read the repository): push the release's tag first"),
        "{}",
        err.message
    );
    assert!(gh.release("v1.0.0").is_none());
}

/// Stages `files`, which must be refused with nothing written.
async fn refused(gh: &FakeGithub, files: &[(&str, Vec<u8>)]) -> PlatformError {
    let before = gh.writes();
    let err = adapter(gh).stage(&stage_request(files)).await.unwrap_err();
    assert_eq!(gh.writes(), before, "nothing written");
    err
}

/// In a repository with immutable releases, the draft is filled first and published last,
/// so the pre-release is frozen holding the voted assets, and promotion still flips it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutable_releases_are_filled_as_drafts_and_checked_at_promote() {
    let gh = FakeGithub::start(OWNER, REPO, &["v1.0.0"]).await;
    gh.state.lock().unwrap().immutable_releases = true;
    let a = adapter(&gh);
    let files = files();
    a.stage(&stage_request(&files)).await.unwrap();
    let r = gh.release("v1.0.0").unwrap();
    assert!(r.immutable && r.prerelease && !r.draft, "{r:?}");
    assert_assets(&gh, &files);
    let staged = release_digest(&files);

    // Promote refuses a release whose assets are not the staged ones, saying why it
    // cannot be mended.
    gh.tamper("v1.0.0", SUMS, |x| x.state = "starter".into());
    let before = gh.writes();
    let err = a.promote(&promote_request(&staged)).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message
            .contains(&format!("not the staged {staged}; nothing promoted. The release is immutable: GitHub allows no change to its assets")),
        "{}",
        err.message
    );
    assert!(
        err.message.contains(&format!("{SUMS} (state starter)")),
        "{}",
        err.message
    );
    assert_eq!(gh.writes(), before);
    gh.tamper("v1.0.0", SUMS, |x| x.state = "uploaded".into());
    a.promote(&promote_request(&staged)).await.unwrap();
    assert!(!gh.release("v1.0.0").unwrap().prerelease);

    // A release tag that is not the staged tag is refused: promotion is in place.
    let mut other = promote_request(&staged);
    other.release_tag = DistTag::latest();
    let err = a.promote(&other).await.unwrap_err();
    assert!(
        err.message
            .contains("the release tag names git tag latest, but v1.0.0 was staged"),
        "{}",
        err.message
    );
}

fn assert_wait(err: &PlatformError, at_least: u64, at_most: u64, says: &str) {
    assert!(err.not_yet, "{err:?}");
    assert_eq!(err.class, ErrorClass::Transient);
    let after = err.retry_after.unwrap().as_secs();
    assert!(
        (at_least..=at_most).contains(&after),
        "waits {after}s: {}",
        err.message
    );
    assert!(err.message.contains(says), "{}", err.message);
}

/// `err` is a wait until one second past `reset` (unix seconds), for a call made between
/// `t0` and `t1` (unix seconds): exactly `reset - now + 1` at the second it was computed.
fn assert_wait_past(err: &PlatformError, reset: i64, (t0, t1): (i64, i64), says: &str) {
    let (at_least, at_most) = ((reset - t1 + 1) as u64, (reset - t0 + 1) as u64);
    assert_wait(err, at_least, at_most, says);
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Rate limits are waits until GitHub's reset, never failures; secondary limits wait
/// `retry-after` or a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_waits() {
    let gh = FakeGithub::start(OWNER, REPO, &["v1.0.0"]).await;
    let a = adapter(&gh);
    let reset = unix_now() + 120;
    gh.inject(
        Fault::answer("GET", "/releases/tags/", 403)
            .header("x-ratelimit-limit", "5000")
            .header("x-ratelimit-remaining", "0")
            .header("x-ratelimit-used", "5000")
            .header("x-ratelimit-reset", &reset.to_string())
            .header("x-ratelimit-resource", "core")
            .json(json!({"message": "API rate limit exceeded for installation ID 1."})),
    );
    let t0 = unix_now();
    let err = a.read_staged(&key(), &version_tag()).await.unwrap_err();
    assert_wait_past(
        &err,
        reset,
        (t0, unix_now()),
        "GitHub's core rate limit for this token is used up until",
    );

    let secondary = json!({"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."});
    gh.inject(Fault::answer("POST", "/releases", 403).json(secondary.clone()));
    let err = a.stage(&stage_request(&files())).await.unwrap_err();
    assert_wait(&err, 60, 60, "secondary rate limit");
    assert!(gh.release("v1.0.0").is_none());

    // A 429 is a wait at once, never retried inside the attempt: with retry-after, that
    // long; with the limit used up, until its reset; without either, a minute.
    let injected = || gh.seen().iter().filter(|s| s.injected).count();
    let before = injected();
    gh.inject(
        Fault::answer("GET", "/releases/tags/", 429)
            .header("retry-after", "90")
            .json(secondary.clone())
            .times(10),
    );
    let err = a.read_staged(&key(), &version_tag()).await.unwrap_err();
    assert_wait(&err, 90, 90, "rate limit");
    assert_eq!(injected(), before + 1, "asked once");
    gh.clear_faults();
    let reset = unix_now() + 300;
    gh.inject(
        Fault::answer("GET", "/releases/tags/", 429)
            .header("x-ratelimit-remaining", "0")
            .header("x-ratelimit-reset", &reset.to_string())
            .json(json!({"message": "API rate limit exceeded"}))
            .times(10),
    );
    let t0 = unix_now();
    let err = a.read_staged(&key(), &version_tag()).await.unwrap_err();
    assert_wait_past(&err, reset, (t0, unix_now()), "rate limit");
    assert_eq!(injected(), before + 2, "asked once");
    gh.clear_faults();
    gh.inject(
        Fault::answer("GET", "/releases/tags/", 429)
            .json(secondary)
            .times(10),
    );
    let err = a.read_staged(&key(), &version_tag()).await.unwrap_err();
    assert_wait(&err, 60, 60, "rate limit");
    assert_eq!(injected(), before + 3, "asked once");
    gh.clear_faults();
}

/// Through the pipeline: an exhausted limit makes the job wait, spending no attempt, and
/// it goes on after the reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_rate_limit_makes_the_job_wait_on_sqlite() {
    let gh = FakeGithub::start(OWNER, REPO, &["v1.0.0"]).await;
    let adapters = Adapters::default().with(Platform::Github, Arc::new(adapter(&gh)));
    let h = Harness::custom(Db::Sqlite, adapters, FAST, |p| {
        p.waits = atr_dist::pipeline::wait::Schedule {
            first: Duration::from_millis(20),
            max: Duration::from_millis(80),
        };
    })
    .await;
    let files = files();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    h.revs.write_release("example", "1.0.0", "00001", &refs);
    let reset = chrono::Utc::now().timestamp() + 1;
    gh.inject(
        Fault::answer("POST", "/releases", 403)
            .header("x-ratelimit-remaining", "0")
            .header("x-ratelimit-reset", &reset.to_string())
            .json(json!({"message": "API rate limit exceeded"})),
    );
    let job = dist().stage("00001", &[SRC, SUMS], RevisionSourceSpec::Dir, false);
    h.run_to_done(&job, 1).await;
    let runs = h.runs(&job).await;
    let outcomes: Vec<_> = runs.iter().map(|r| r.outcome.clone().unwrap()).collect();
    assert_eq!(outcomes, ["waiting", "completed"], "{runs:?}");
    assert!(runs.iter().all(|r| r.attempt == 1), "{runs:?}");
    assert_assets(&gh, &files);
    h.stop().await;
}

/// A token that may not write the repository's contents is an `auth` failure naming the
/// permission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_contents_write_is_an_auth_failure() {
    let gh = FakeGithub::start(OWNER, REPO, &["v1.0.0"]).await;
    let a = adapter(&gh);
    gh.inject(
        Fault::answer("POST", "/releases", 403)
            .header("x-accepted-github-permissions", "contents=write; metadata=read")
            .json(json!({"message": "Resource not accessible by integration", "documentation_url": "https://docs.github.com/rest/releases/releases#create-a-release", "status": "403"})),
    );
    let err = a.stage(&stage_request(&files())).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Auth, "{}", err.message);
    // What GitHub names, as it names it (not the default the message falls back to).
    assert!(
        err.message
            .contains("Resource not accessible by integration")
            && err
                .message
                .contains("GitHub accepts contents=write; metadata=read"),
        "{}",
        err.message
    );
    // A private repository the token cannot see answers 404.
    gh.inject(Fault::answer("POST", "/releases", 404).json(json!({"message": "Not Found"})));
    let err = a.stage(&stage_request(&files())).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Auth, "{}", err.message);
    assert!(
        err.message.contains("contents=write")
            && err.message.contains("cannot see a private repository"),
        "{}",
        err.message
    );
    assert!(gh.release("v1.0.0").is_none());
    // A token GitHub does not know.
    let err = adapter_with(&gh, "ghp_revoked")
        .stage(&stage_request(&files()))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Auth, "{}", err.message);
    assert!(
        err.message.contains("GitHub refused the token"),
        "{}",
        err.message
    );
}

// --- Every request the adapter sends, against GitHub's published OpenAPI description ---

/// Where scripts/install-test-servers.sh installed Prism and `@octokit/openapi`.
fn prism_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ATR_DIST_PRISM") {
        return PathBuf::from(dir);
    }
    PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/atr-dist/prism")
}

fn description_path() -> PathBuf {
    prism_dir().join("node_modules/@octokit/openapi/generated/api.github.com.json")
}

struct Prism {
    child: Child,
    url: String,
}

impl Drop for Prism {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prism {
    /// Prism's mock server for GitHub's description, on a free loopback port. It checks each
    /// request against the operation it matches (422 with `sl-violations` otherwise).
    async fn start() -> Prism {
        let bin = prism_dir().join("node_modules/.bin/prism");
        assert!(
            bin.exists() && description_path().exists(),
            "{} is missing: run scripts/install-test-servers.sh prism",
            bin.display()
        );
        let port = atr_dist_tests::free_port();
        let child = Command::new(&bin)
            .args(["mock", "-h", "127.0.0.1", "-p", &port.to_string()])
            .arg(description_path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prism");
        let prism = Prism {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let start = Instant::now();
        loop {
            if client
                .get(format!("{}/rate_limit", prism.url))
                .header("accept", "application/json")
                .send()
                .await
                .is_ok()
            {
                return prism;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "prism did not start within 120 s"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The operation of the description a request is for: its template's segments match the
/// request's, a `{param}` any one segment, except `{ref}` of the git refs API, which takes
/// the rest of the path (`tags/v1.0.0`).
fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> Option<(&'a str, &'a Value)> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let paths = doc["paths"].as_object()?;
    for (template, item) in paths {
        let parts: Vec<&str> = template.trim_start_matches('/').split('/').collect();
        let fits = match parts.last() {
            Some(&"{ref}") => {
                segments.len() > parts.len()
                    && parts[..parts.len() - 1]
                        .iter()
                        .zip(&segments)
                        .all(|(p, s)| p.starts_with('{') || p == s)
            }
            _ => {
                parts.len() == segments.len()
                    && parts
                        .iter()
                        .zip(&segments)
                        .all(|(p, s)| p.starts_with('{') || p == s)
            }
        };
        // A literal segment beats a parameter (`releases/tags/…` over `releases/{id}/…`).
        if fits && let Some(op) = item.get(method.to_ascii_lowercase()) {
            let literal_clash = paths.keys().any(|other| {
                other != template && {
                    let o: Vec<&str> = other.trim_start_matches('/').split('/').collect();
                    o.len() == segments.len()
                        && o.iter()
                            .zip(&segments)
                            .all(|(p, s)| p.starts_with('{') || p == s)
                        && o.iter().filter(|p| p.starts_with('{')).count()
                            < parts.iter().filter(|p| p.starts_with('{')).count()
                        && paths[other].get(method.to_ascii_lowercase()).is_some()
                }
            });
            if !literal_clash {
                return Some((template.as_str(), op));
            }
        }
    }
    None
}

/// Resolves a local `$ref` (`#/components/...`).
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => doc.pointer(r.trim_start_matches('#')).unwrap_or(v),
        None => v,
    }
}

/// Field and query parameter names the operation does not declare: Prism lets unknown
/// names through, GitHub ignores them, and the adapter would silently not say what it
/// means.
fn undeclared(doc: &Value, op: &Value, query: &[String], body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let params: Vec<String> = op["parameters"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| resolve(doc, p))
                .filter(|p| p["in"] == "query")
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    out.extend(
        query
            .iter()
            .filter(|q| !params.contains(q))
            .map(|q| format!("query parameter {q}")),
    );
    if let Some(fields) = body.as_object() {
        let schema = resolve(
            doc,
            &op["requestBody"]["content"]["application/json"]["schema"],
        );
        let props = schema["properties"].as_object();
        for name in fields.keys() {
            if !props.is_some_and(|p| p.contains_key(name)) {
                out.push(format!("body field {name}"));
            }
        }
    }
    out
}

/// Replays what the adapter sent (the whole stage and promote, with faults) against Prism
/// and the description: every request must match an operation, with declared names only,
/// and pass Prism's validation of its parameters and body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_matches_githubs_openapi_description() {
    let prism = Prism::start().await;
    let doc: Value = serde_json::from_slice(&std::fs::read(description_path()).unwrap()).unwrap();
    let gh = FakeGithub::start(OWNER, REPO, &["v1.0.0"]).await;
    flow_with_faults(&gh).await;
    // And the refusals' reads (a draft found by listing, a tag looked up).
    let other = FakeGithub::start(OWNER, REPO, &[]).await;
    adapter(&other)
        .stage(&stage_request(&files()))
        .await
        .unwrap_err();
    let mut requests = gh.received().await;
    requests.extend(other.received().await);
    let client = reqwest::Client::new();
    let mut seen_ops = std::collections::BTreeSet::new();
    for req in &requests {
        let method = req.method.as_str();
        let path = req.url.path();
        let query: Vec<String> = req.url.query_pairs().map(|(k, _)| k.into_owned()).collect();
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let (template, op) = operation(&doc, method, path)
            .unwrap_or_else(|| panic!("{method} {path} is no operation of GitHub's API"));
        seen_ops.insert(format!("{method} {template}"));
        let bad = undeclared(&doc, op, &query, &body);
        assert!(bad.is_empty(), "{method} {path}: undeclared {bad:?}");

        // Prism routes `{ref}` by one segment: the ref's '/' is sent encoded. Prism answers
        // only `application/json` (GitHub's own media type is a 406 there).
        let replay_path = match path.split_once("/git/ref/") {
            Some((head, r)) => format!("{head}/git/ref/{}", r.replace('/', "%2F")),
            None => path.to_owned(),
        };
        let url = match req.url.query() {
            Some(q) => format!("{}{replay_path}?{q}", prism.url),
            None => format!("{}{replay_path}", prism.url),
        };
        let mut out = client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                &url,
            )
            .header("accept", "application/json")
            .header("authorization", format!("Bearer {TOKEN}"));
        if let Some(ct) = req.headers.get("content-type") {
            out = out.header("content-type", ct.as_bytes());
        }
        if !req.body.is_empty() {
            out = out.body(req.body.clone());
        }
        let resp = out.send().await.unwrap();
        let status = resp.status();
        let violations = resp
            .headers()
            .get("sl-violations")
            .map(|v| v.to_str().unwrap_or("").to_owned());
        let text = resp.text().await.unwrap_or_default();
        assert!(
            status.is_success() && violations.is_none(),
            "{method} {path} ({template}) is not what GitHub's description allows: {status} {violations:?} {text}"
        );
    }
    // The flow used every operation the adapter has.
    let want = [
        "DELETE /repos/{owner}/{repo}/releases/assets/{asset_id}",
        "GET /repos/{owner}/{repo}/git/ref/{ref}",
        "GET /repos/{owner}/{repo}/releases",
        "GET /repos/{owner}/{repo}/releases/assets/{asset_id}",
        "GET /repos/{owner}/{repo}/releases/tags/{tag}",
        "GET /repos/{owner}/{repo}/releases/{release_id}",
        "GET /repos/{owner}/{repo}/releases/{release_id}/assets",
        "PATCH /repos/{owner}/{repo}/releases/{release_id}",
        "POST /repos/{owner}/{repo}/releases",
        "POST /repos/{owner}/{repo}/releases/{release_id}/assets",
    ];
    let got: Vec<&str> = seen_ops.iter().map(String::as_str).collect();
    assert_eq!(got, want);

    // The check itself: a wrong type and an undeclared name are caught.
    let resp = client
        .post(format!("{}/repos/apache/example/releases", prism.url))
        .header("accept", "application/json")
        .json(&json!({"tag_name": "v1.0.0", "prerelease": "yes"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let (_, op) = operation(&doc, "POST", "/repos/apache/example/releases").unwrap();
    assert_eq!(
        undeclared(
            &doc,
            op,
            &[],
            &json!({"tag_name": "v1", "pre_release": true})
        ),
        ["body field pre_release"]
    );
}

/// Lists are read a page of 100 at a time, up to the first page that is not full: a draft
/// behind a full page of newer releases is found and completed, and a short first page is
/// the end of the list (no request for a page after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_read_to_their_last_page_and_no_further() {
    let files = files();
    let gh = FakeGithub::start(OWNER, REPO, &["v1.0.0"]).await;
    // The oldest release is the draft; GitHub lists the newest first.
    gh.add_release("v1.0.0", true, true, &[(SRC, &files[0].1)]);
    for i in 0..100 {
        gh.add_release(&format!("v0.0.{i}"), false, false, &[]);
    }
    let draft = gh.release("v1.0.0").unwrap();
    adapter(&gh).stage(&stage_request(&files)).await.unwrap();
    assert_assets(&gh, &files);
    let writes = gh.writes();
    assert_eq!(count(&writes, "POST", "/releases "), 0, "{writes:?}");
    assert_eq!(
        count(&writes, "PATCH", &format!("/releases/{} ", draft.id)),
        1,
        "the draft on the second page is the one completed: {writes:?}"
    );
    let listed: Vec<String> = gh
        .seen()
        .iter()
        .filter(|s| s.method == "GET" && s.path.contains("/releases?"))
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(
        listed,
        [
            "/repos/apache/example/releases?per_page=100&page=1",
            "/repos/apache/example/releases?per_page=100&page=2",
        ],
        "a full page is followed by the next one, a short page ends the list"
    );

    // A new release: one short page of releases and one of assets each time they are read.
    let gh = FakeGithub::start(OWNER, REPO, &["v1.0.0"]).await;
    adapter(&gh).stage(&stage_request(&files)).await.unwrap();
    let later_pages: Vec<String> = gh
        .seen()
        .iter()
        .filter(|s| s.method == "GET" && s.path.contains("page=") && !s.path.ends_with("page=1"))
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(later_pages, Vec::<String>::new());
}

/// Only a release of the staged tag is taken for it: a draft of another tag is left alone,
/// and when creating the release is refused, a full release for the tag that the read-back
/// finds is reported, not filled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_tags_own_draft_or_pre_release_is_adopted() {
    let files = files();
    let gh = FakeGithub::start(OWNER, REPO, &["v0.9.0", "v1.0.0"]).await;
    gh.add_release("v0.9.0", true, true, &[]);
    adapter(&gh).stage(&stage_request(&files)).await.unwrap();
    assert_assets(&gh, &files);
    let other = gh.release("v0.9.0").unwrap();
    assert!(other.draft && other.assets.is_empty(), "{other:?}");

    // The tag lookup misses the full release (a replica behind), so a draft is created;
    // GitHub refuses it, and the read-back finds the full release.
    let gh = created_elsewhere(false).await;
    let err = permanent_refusal(&gh, &files).await;
    assert!(
        err.message
            .contains("(read back: apache/example holds a published full release for v1.0.0)"),
        "{}",
        err.message
    );
    assert!(gh.release("v1.0.0").unwrap().assets.is_empty());

    // The same, but the read-back finds a published pre-release for the tag: it is the
    // staging place, and is filled.
    let gh = created_elsewhere(true).await;
    adapter(&gh).stage(&stage_request(&files)).await.unwrap();
    assert_assets(&gh, &files);
    assert_eq!(gh.state.lock().unwrap().releases.len(), 1);
}

/// A repository whose release for v1.0.0 (full, or a pre-release) the tag lookup misses
/// once (a replica behind), and where creating one is refused as existing.
async fn created_elsewhere(prerelease: bool) -> FakeGithub {
    let gh = FakeGithub::start(OWNER, REPO, &["v1.0.0"]).await;
    gh.add_release("v1.0.0", false, prerelease, &[]);
    gh.inject(Fault::answer("GET", "/releases/tags/v1.0.0", 404));
    gh.inject(Fault::validation_failed(
        "POST",
        "/releases",
        "Release",
        "already_exists",
        "tag_name",
    ));
    gh
}

/// An upload refused because the name is taken is read back: an asset of that name holding
/// other bytes (missed by a stale listing before the upload) is reported as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upload_whose_name_holds_other_bytes_is_reported() {
    let files = files();
    let gh = FakeGithub::start(OWNER, REPO, &["v1.0.0"]).await;
    gh.add_release("v1.0.0", false, true, &[(SRC, b"other bytes")]);
    gh.inject(Fault::answer("GET", "/assets", 200).json(json!([])));
    let err = permanent_refusal(&gh, &files).await;
    assert!(
        err.message.contains(&format!(
            "(read back: the release holds {SRC} (sha256:{}",
            &sha256(b"other bytes")[7..]
        )) && err
            .message
            .contains(&format!("not {}", sha256(&files[0].1))),
        "{}",
        err.message
    );
    let r = gh.release("v1.0.0").unwrap();
    assert_eq!(r.assets.len(), 1, "{r:?}");
    assert_eq!(r.assets[0].digest, Some(sha256(b"other bytes")));
}

/// A 422 `already_exists` to an upload is transient (the name is taken by an upload that
/// is going away, or by one beside ours): when the read-back finds nothing, the next
/// attempt starts over. Any other 422 is a refusal. A refused publish of the draft leaves
/// it a draft, and the read-back says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_uploads_and_publishes_are_classed_by_the_read_back() {
    let files = files();
    let gh = FakeGithub::start(OWNER, REPO, &["v1.0.0"]).await;
    gh.inject(Fault::validation_failed(
        "POST",
        "/assets",
        "ReleaseAsset",
        "already_exists",
        "name",
    ));
    let err = adapter(&gh)
        .stage(&stage_request(&files))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{}", err.message);
    assert!(err.message.contains("already_exists"), "{}", err.message);

    let gh = FakeGithub::start(OWNER, REPO, &["v1.0.0"]).await;
    gh.inject(Fault::validation_failed(
        "POST",
        "/assets",
        "ReleaseAsset",
        "invalid",
        "name",
    ));
    permanent_refusal(&gh, &files).await;

    let gh = FakeGithub::start(OWNER, REPO, &["v1.0.0"]).await;
    gh.inject(Fault::validation_failed(
        "PATCH",
        "/releases/",
        "ReleaseAsset",
        "invalid",
        "name",
    ));
    adapter(&gh)
        .stage(&stage_request(&files))
        .await
        .unwrap_err();
    let r = gh.release("v1.0.0").unwrap();
    assert!(r.draft, "{r:?}");
}

/// A draft that holds every voted file (an attempt that broke off before publishing it) is
/// published, with nothing uploaded again; a published pre-release holding them is left
/// as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_holding_the_voted_files_is_published_as_it_is() {
    let files = files();
    let held: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    let gh = FakeGithub::start(OWNER, REPO, &["v1.0.0"]).await;
    gh.add_release("v1.0.0", true, true, &held);
    let id = gh.release("v1.0.0").unwrap().id;
    adapter(&gh).stage(&stage_request(&files)).await.unwrap();
    let r = gh.release("v1.0.0").unwrap();
    assert!(!r.draft && r.prerelease, "{r:?}");
    assert_eq!(
        gh.writes(),
        [format!("PATCH /repos/apache/example/releases/{id} 200")]
    );

    adapter(&gh).stage(&stage_request(&files)).await.unwrap();
    assert_eq!(gh.writes().len(), 1, "{:?}", gh.writes());
}

/// After the uploads, the release is read once more: an asset stored with other bytes, or
/// an asset nobody voted landing beside ours, is reported, and the draft stays a draft.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_after_uploading_catches_changed_bytes_and_strangers() {
    let files = files();
    let gh = FakeGithub::start(OWNER, REPO, &["v1.0.0"]).await;
    gh.inject(Fault::new(
        "POST",
        &format!("name={SRC}"),
        FaultKind::Stores(b"changed on the way".to_vec()),
    ));
    let err = permanent_refusal(&gh, &files).await;
    assert!(
        err.message.contains(&format!(
            "after uploading, GitHub reports sha256 {} for {SRC}, not the voted {}",
            &sha256(b"changed on the way")[7..],
            &sha256(&files[0].1)[7..]
        )),
        "{}",
        err.message
    );
    assert!(gh.release("v1.0.0").unwrap().draft);

    let gh = FakeGithub::start(OWNER, REPO, &["v1.0.0"]).await;
    gh.inject(Fault::new(
        "POST",
        &format!("name={SUMS}"),
        FaultKind::Beside("notes.txt".into(), b"not voted".to_vec()),
    ));
    let err = permanent_refusal(&gh, &files).await;
    assert!(
        err.message.ends_with(&format!(
            "after uploading, the release for v1.0.0 also holds assets that were not voted: notes.txt ({})",
            sha256(b"not voted")
        )),
        "{}",
        err.message
    );
    assert!(gh.release("v1.0.0").unwrap().draft);
}

/// A refused promotion is read back: a release that is still a pre-release is not
/// promoted, whatever the answer was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_promotion_leaves_the_pre_release_and_says_so() {
    let files = files();
    let gh = FakeGithub::start(OWNER, REPO, &["v1.0.0"]).await;
    let a = adapter(&gh);
    a.stage(&stage_request(&files)).await.unwrap();
    gh.inject(Fault::validation_failed(
        "PATCH",
        "/releases/",
        "Release",
        "invalid",
        "make_latest",
    ));
    let err = a
        .promote(&promote_request(&release_digest(&files)))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
    let r = gh.release("v1.0.0").unwrap();
    assert!(r.prerelease && !r.draft, "{r:?}");
    a.promote(&promote_request(&release_digest(&files)))
        .await
        .unwrap();
    assert!(!gh.release("v1.0.0").unwrap().prerelease);
}

/// Stages `files`, which must fail for good; the error.
async fn permanent_refusal(gh: &FakeGithub, files: &[(&str, Vec<u8>)]) -> PlatformError {
    let err = adapter(gh).stage(&stage_request(files)).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
    err
}
