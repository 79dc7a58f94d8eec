//! The Hex adapter against a contract mock of hex.pm built from its specification
//! (`hex_support.rs`), on its own and through the real pipeline on SQLite and PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use atr_dist::config::RetryConfig;
use atr_dist::pipeline::wait::Schedule;
use atr_dist::platform::hex::HexAdapter;
use atr_dist::platform::{Adapters, PlatformAdapter, PromoteRequest, StageRequest};
use atr_dist::secret::Secret;
use atr_dist_shared::job::RevisionSourceSpec;
use atr_dist_shared::names::{DistTag, RevisionKey, RevisionNumber};
use atr_dist_shared::{Digest, DistributionKey, Envelope, ErrorClass, JobState, Platform};
use atr_dist_tests::hex_support::{
    Fault, HexPm, KEY, checksum_of, metadata, tarball, tarball_name, tarball_with,
};
use atr_dist_tests::jobs::Dist;
use atr_dist_tests::pipeline_support::{Db, Harness, sealed};
use url::Url;

const FAST: RetryConfig = RetryConfig {
    base_ms: 50,
    cap_ms: 200,
    max_attempts: 3,
};

fn adapter(hex: &HexPm, key: &str) -> HexAdapter {
    HexAdapter::new(Url::parse(&hex.api()).unwrap(), Some(Secret::new(key))).unwrap()
}

fn adapters(hex: &HexPm) -> Adapters {
    Adapters::default().with(Platform::Hex, Arc::new(adapter(hex, KEY)))
}

struct Pkg {
    name: &'static str,
    version: &'static str,
}

impl Pkg {
    fn file(&self) -> String {
        tarball_name(self.name, self.version)
    }

    /// Revision `rev` holding `bytes` as the tarball, with a signature beside it.
    fn write_bytes(&self, h: &Harness, rev: &str, bytes: &[u8]) {
        let file = self.file();
        h.revs.write_release(
            "example",
            self.version,
            rev,
            &[
                (&file, bytes),
                (&format!("{file}.asc"), b"a detached signature"),
            ],
        );
    }

    fn write(&self, h: &Harness, rev: &str, body: &str) -> Vec<u8> {
        let bytes = tarball(self.name, self.version, body);
        self.write_bytes(h, rev, &bytes);
        bytes
    }

    fn dist(&self) -> Dist {
        Dist::new(Platform::Hex, "", self.name, self.version)
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

    fn stage_request(&self, bytes: &[u8]) -> StageRequest {
        let key = self.key();
        StageRequest {
            revision: RevisionKey::of(&key.release_key, &RevisionNumber::new("00001").unwrap()),
            key,
            artifacts: vec![sealed(&self.file(), bytes)],
            companions: Vec::new(),
            staging_tag: DistTag::new("staging").unwrap(),
        }
    }

    fn promote_request(&self, bytes: &[u8]) -> PromoteRequest {
        PromoteRequest {
            key: self.key(),
            staged_digest: Digest::parse(format!("sha256:{}", checksum_of(bytes))).unwrap(),
            staging_tag: DistTag::new("staging").unwrap(),
            release_tag: DistTag::latest(),
            artifacts: vec![sealed(&self.file(), bytes)],
            companions: Vec::new(),
        }
    }
}

async fn stage_then_promote(db: Db) {
    let hex = HexPm::start().await;
    let h = Harness::new(db, adapters(&hex), FAST).await;
    let pkg = Pkg {
        name: "example_lib",
        version: "1.0.0",
    };
    let bytes = pkg.write(&h, "00001", "defmodule Example do end\n");
    h.run_to_done(&pkg.stage("00001"), 3).await;
    assert!(hex.requests().await.is_empty(), "stage sends nothing");
    let row = h.row().await.unwrap();
    assert!(row.staging && !row.promoted);
    let staged = row.platform_digest.clone().unwrap();
    assert_eq!(staged, format!("sha256:{}", checksum_of(&bytes)));

    // Staging again checks again, sends nothing, and is unchanged.
    let again = pkg.stage("00001");
    h.run_to_done(&again, 3).await;
    assert_eq!(
        h.runs(&again).await[0].outcome.as_deref(),
        Some("unchanged")
    );

    // The vote makes revision 00002 with the same files; promote publishes the tarball.
    pkg.write(&h, "00002", "defmodule Example do end\n");
    h.run_to_done(&pkg.promote("00002"), 3).await;
    assert_eq!(hex.publishes().await, 1);
    assert_eq!(
        hex.checksum(pkg.name, pkg.version).as_deref(),
        Some(checksum_of(&bytes).as_str())
    );
    let row = h.row().await.unwrap();
    assert!(row.promoted && !row.staging);
    assert_eq!(row.promoted_digest.as_deref(), Some(staged.as_str()));
    assert_eq!(
        row.api_url.as_deref(),
        Some(format!("{}/packages/example_lib/releases/1.0.0", hex.api()).as_str())
    );

    // Promote again: nothing written, recorded as unchanged.
    let repeat = pkg.promote("00002");
    h.run_to_done(&repeat, 3).await;
    assert_eq!(
        h.runs(&repeat).await[0].outcome.as_deref(),
        Some("unchanged")
    );
    assert_eq!(hex.publishes().await, 1, "{:?}", hex.requests().await);
    let all = hex.requests().await;
    assert!(
        all.iter().all(|r| !r.contains("replace")),
        "the one-hour republish window is never used: {all:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_and_promotes_on_sqlite() {
    stage_then_promote(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_and_promotes_on_postgres() {
    stage_then_promote(Db::Postgres).await;
}

async fn changed_revision_is_refused(db: Db) {
    let hex = HexPm::start().await;
    let h = Harness::new(db, adapters(&hex), FAST).await;
    let pkg = Pkg {
        name: "changing",
        version: "2.0.0",
    };
    pkg.write(&h, "00001", "staged\n");
    h.run_to_done(&pkg.stage("00001"), 3).await;
    pkg.write(&h, "00002", "changed after the vote\n");
    let promote = pkg.promote("00002");
    assert_eq!(h.run(&promote, 3).await, JobState::Dead);
    let runs = h.runs(&promote).await;
    assert_eq!(runs.len(), 1, "permanent: no retry");
    assert_eq!(runs[0].outcome.as_deref(), Some("revision_changed"));
    assert_eq!(hex.publishes().await, 0, "nothing published");
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

async fn bad_tarballs_are_refused_at_stage(db: Db) {
    let hex = HexPm::start().await;
    let h = Harness::new(db, adapters(&hex), FAST).await;
    let pkg = Pkg {
        name: "checked",
        version: "1.0.0",
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "00001",
            b"not a tarball at all, just text".to_vec(),
            "not a package tarball",
        ),
        (
            "00002",
            tarball("impostor", "1.0.0", "x"),
            "is impostor 1.0.0, not checked 1.0.0: refusing to publish it under that name",
        ),
        (
            "00003",
            tarball("checked", "1.0.1", "x"),
            "is checked 1.0.1, not checked 1.0.0",
        ),
        (
            "00004",
            tarball_with(&metadata("checked", "1.0.0"), "x", Some(&"0F".repeat(32))),
            "CHECKSUM says 0F0F",
        ),
    ];
    for (rev, bytes, want) in cases {
        pkg.write_bytes(&h, rev, &bytes);
        let stage = pkg.stage(rev);
        assert_eq!(h.run(&stage, 3).await, JobState::Dead, "{want}");
        assert_eq!(h.runs(&stage).await.len(), 1, "permanent: {want}");
        let err = h.last_error(&stage).await;
        assert!(err.contains(want), "{want}: {err}");
    }
    assert!(h.row().await.is_none(), "nothing recorded as staged");
    assert!(hex.requests().await.is_empty(), "nothing sent");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_foreign_tarballs_are_refused_at_stage_on_sqlite() {
    bad_tarballs_are_refused_at_stage(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_foreign_tarballs_are_refused_at_stage_on_postgres() {
    bad_tarballs_are_refused_at_stage(Db::Postgres).await;
}

/// The publish request as the specification gives it, and the release read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_request_and_read_back_contract() {
    let hex = HexPm::start().await;
    let a = adapter(&hex, KEY);
    let pkg = Pkg {
        name: "contract",
        version: "0.4.1",
    };
    let bytes = tarball(pkg.name, pkg.version, "c\n");
    let expected = a.expected_digest(&pkg.stage_request(&bytes)).await.unwrap();
    a.stage(&pkg.stage_request(&bytes)).await.unwrap();
    assert!(a.plan_stage(&pkg.stage_request(&bytes)).is_empty());
    assert!(
        a.read_promoted(&pkg.key(), &DistTag::latest())
            .await
            .unwrap()
            .is_none()
    );
    a.promote(&pkg.promote_request(&bytes)).await.unwrap();
    let seen = a
        .read_promoted(&pkg.key(), &DistTag::latest())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.digest, expected);
    assert!(seen.upload_date.is_some());
    assert_eq!(
        seen.web_url.as_deref(),
        Some(format!("{}/packages/contract/0.4.1", hex.server.uri()).as_str())
    );

    let requests = hex.server.received_requests().await.unwrap();
    let posts: Vec<_> = requests
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .collect();
    assert_eq!(posts.len(), 1);
    let post = posts[0];
    assert_eq!(post.url.path(), "/api/publish");
    assert_eq!(post.url.query(), None, "no replace=true");
    let header = |name: &str| post.headers.get(name).unwrap().to_str().unwrap().to_owned();
    assert_eq!(header("authorization"), KEY, "the key, without a scheme");
    assert_eq!(header("accept"), "application/json");
    assert_eq!(header("content-type"), "application/octet-stream");
    assert!(header("user-agent").starts_with("atr-dist/"));
    assert_eq!(post.body, bytes, "the sealed tarball, unchanged");

    // Promoting again finds the release and sends nothing.
    a.promote(&pkg.promote_request(&bytes)).await.unwrap();
    assert_eq!(hex.publishes().await, 1);
}

/// A release that exists with another checksum is never overwritten, and a job whose
/// tarball is not the staged one is refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_release_under_the_version_is_refused() {
    let hex = HexPm::start().await;
    let a = adapter(&hex, KEY);
    let pkg = Pkg {
        name: "taken",
        version: "1.0.0",
    };
    let theirs = tarball(pkg.name, pkg.version, "someone else's\n");
    a.promote(&pkg.promote_request(&theirs)).await.unwrap();
    let ours = tarball(pkg.name, pkg.version, "the voted one\n");
    let err = a.promote(&pkg.promote_request(&ours)).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message.contains(&format!(
            "hex.pm holds taken 1.0.0 with checksum {}, not the voted {}",
            checksum_of(&theirs),
            checksum_of(&ours)
        )),
        "{}",
        err.message
    );
    assert_eq!(hex.publishes().await, 1, "only the first publish");

    let mut wrong = pkg.promote_request(&ours);
    wrong.staged_digest = Digest::parse(format!("sha256:{}", "00".repeat(32))).unwrap();
    let err = a.promote(&wrong).await.unwrap_err();
    assert!(
        err.message.contains("not the staged sha256:0000"),
        "{}",
        err.message
    );
    assert_eq!(hex.publishes().await, 1);
}

/// hex.pm asks for a one-time password: an auth failure saying what to configure; a wrong
/// key: an auth failure too. Neither is retried or read back as a publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_factor_and_wrong_keys_are_auth_failures() {
    let hex = HexPm::start().await;
    hex.with(|s| s.otp_required = true);
    let pkg = Pkg {
        name: "guarded",
        version: "1.0.0",
    };
    let bytes = tarball(pkg.name, pkg.version, "g\n");
    let err = adapter(&hex, KEY)
        .promote(&pkg.promote_request(&bytes))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Auth);
    assert_eq!(err.http_status, Some(403));
    for want in [
        "hex.pm asks for a one-time password (x-hex-otp: required; totp)",
        "ATR_DIST_PLATFORMS__HEX__TOKEN",
        "api:write",
    ] {
        assert!(err.message.contains(want), "{want}: {}", err.message);
    }
    assert_eq!(hex.publishes().await, 1);

    hex.with(|s| s.otp_required = false);
    let err = adapter(&hex, "not-the-key")
        .promote(&pkg.promote_request(&bytes))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Auth);
    assert!(
        err.message.contains("refused the API key"),
        "{}",
        err.message
    );
    assert!(hex.checksum(pkg.name, pkg.version).is_none());
}

/// A 422 carries hex.pm's `errors`; it is permanent once the read-back finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_errors_are_permanent_and_name_the_fields() {
    let hex = HexPm::start().await;
    hex.with(|s| {
        s.faults.push_back(Fault::Invalid(serde_json::json!({
            "requirements": {"plug": "Failed to use \"plug\" because no matching version"}
        })))
    });
    let pkg = Pkg {
        name: "invalid",
        version: "1.0.0",
    };
    let bytes = tarball(pkg.name, pkg.version, "i\n");
    let err = adapter(&hex, KEY)
        .promote(&pkg.promote_request(&bytes))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert_eq!(err.http_status, Some(422));
    assert!(
        err.message.contains(
            "hex.pm refused the package: Validation error(s); errors: {\"requirements\":{\"plug\":"
        ),
        "{}",
        err.message
    );
    let gets = hex
        .requests()
        .await
        .iter()
        .filter(|r| r.starts_with("GET "))
        .count();
    assert_eq!(gets, 2, "read before, and read back after the refusal");
}

/// A lost answer after hex.pm stored the release is settled by reading back (one publish);
/// a 5xx before storing it is sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_and_server_errors_are_settled_by_reading_back() {
    let hex = HexPm::start().await;
    let a = adapter(&hex, KEY);
    hex.with(|s| s.faults.push_back(Fault::LostAfterStoring));
    let lost = Pkg {
        name: "lost",
        version: "1.0.0",
    };
    let bytes = tarball(lost.name, lost.version, "l\n");
    a.promote(&lost.promote_request(&bytes)).await.unwrap();
    assert_eq!(hex.publishes().await, 1, "not sent again");
    assert_eq!(
        hex.checksum(lost.name, lost.version).as_deref(),
        Some(checksum_of(&bytes).as_str())
    );

    hex.with(|s| s.faults.push_back(Fault::Status(503)));
    let flaky = Pkg {
        name: "flaky",
        version: "1.0.0",
    };
    let bytes = tarball(flaky.name, flaky.version, "f\n");
    a.promote(&flaky.promote_request(&bytes)).await.unwrap();
    assert_eq!(hex.publishes().await, 3, "503, nothing there, sent again");
    assert!(hex.checksum(flaky.name, flaky.version).is_some());
}

/// What hex.pm holds or answers after a publish must be the voted tarball: a lost answer
/// after another publish of the version got there first is refused on reading back, and so
/// is an answer naming another checksum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_back_or_an_answer_naming_other_bytes_is_refused() {
    let hex = HexPm::start().await;
    let a = adapter(&hex, KEY);
    let raced = Pkg {
        name: "raced",
        version: "1.0.0",
    };
    let theirs = tarball(raced.name, raced.version, "theirs\n");
    let ours = tarball(raced.name, raced.version, "ours\n");
    hex.with(|s| {
        s.faults
            .push_back(Fault::LostAfterAnotherStored(theirs.clone()))
    });
    let err = a.promote(&raced.promote_request(&ours)).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
    assert!(
        err.message.contains(&format!(
            "hex.pm holds raced 1.0.0 with checksum {}, not the voted {}",
            checksum_of(&theirs),
            checksum_of(&ours)
        )),
        "{}",
        err.message
    );
    assert_eq!(hex.publishes().await, 1, "not sent again");

    let misnamed = Pkg {
        name: "misnamed",
        version: "1.0.0",
    };
    let bytes = tarball(misnamed.name, misnamed.version, "m\n");
    hex.with(|s| s.faults.push_back(Fault::AnswerNames("ab".repeat(32))));
    let err = a
        .promote(&misnamed.promote_request(&bytes))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
    assert!(
        err.message.contains(&format!(
            "hex.pm reports checksum {} for the published release, not the voted {}",
            "ab".repeat(32),
            checksum_of(&bytes)
        )),
        "{}",
        err.message
    );
}

/// A 429 waits (without spending an attempt) until `X-RateLimit-Reset`; a read that used
/// the limit up waits before publishing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_wait_until_the_reset() {
    let hex = HexPm::start().await;
    let a = adapter(&hex, KEY);
    let pkg = Pkg {
        name: "limited",
        version: "1.0.0",
    };
    let bytes = tarball(pkg.name, pkg.version, "r\n");
    // The read before publishing is the last request of the window.
    hex.with(|s| {
        s.remaining = Some(1);
        s.reset_in = 40;
    });
    let err = a.promote(&pkg.promote_request(&bytes)).await.unwrap_err();
    assert!(err.not_yet, "{err:?}");
    let after = err.retry_after.unwrap();
    assert!(
        after <= Duration::from_secs(40) && after >= Duration::from_secs(38),
        "{after:?}"
    );
    assert!(
        err.message.contains("X-RateLimit-Remaining: 0"),
        "{}",
        err.message
    );
    assert_eq!(hex.publishes().await, 0);

    // The window is used up: the read itself is a 429.
    let err = a.promote(&pkg.promote_request(&bytes)).await.unwrap_err();
    assert!(err.not_yet, "{err:?}");
    assert_eq!(err.http_status, Some(429));
    assert!(
        err.message.contains("rate limit is used up"),
        "{}",
        err.message
    );
    assert_eq!(
        hex.requests().await.len(),
        2,
        "no retries inside the attempt"
    );
}

/// Through the pipeline: a rate-limited promote waits in Redis and publishes after the
/// reset, in one attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_promote_waits_and_then_publishes() {
    let hex = HexPm::start().await;
    let h = Harness::custom(Db::Sqlite, adapters(&hex), FAST, |p| {
        p.waits = Schedule {
            first: Duration::from_millis(50),
            max: Duration::from_millis(200),
        };
    })
    .await;
    let pkg = Pkg {
        name: "waiting",
        version: "1.0.0",
    };
    pkg.write(&h, "00001", "w\n");
    h.run_to_done(&pkg.stage("00001"), 3).await;
    hex.with(|s| {
        s.remaining = Some(0);
        s.reset_in = 1;
    });
    let promote = pkg.promote("00001");
    // Let the window open again shortly after the first refusal.
    let opener = {
        let hex = hex.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            hex.with(|s| s.remaining = None);
        })
    };
    h.run_to_done(&promote, 1).await;
    opener.await.unwrap();
    let outcomes: Vec<Option<String>> = h
        .runs(&promote)
        .await
        .into_iter()
        .map(|r| r.outcome)
        .collect();
    assert_eq!(
        outcomes.first().cloned().flatten().as_deref(),
        Some("waiting")
    );
    assert_eq!(
        outcomes.last().cloned().flatten().as_deref(),
        Some("completed")
    );
    assert_eq!(hex.publishes().await, 1);
    h.stop().await;
}
