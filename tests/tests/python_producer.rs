//! ATR's side of the contract: jobs enqueued by the Python producer (clients/python, on
//! redis-py, loading the same lua/enqueue.lua) are read and completed by the Rust worker.
//! The Python environment is the one scripts/test-python sets up.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atr_dist::queue::pool::{Completion, RunningJob};
use atr_dist_shared::{Envelope, JobState};
use atr_dist_tests::cases::{FAST_RETRY, FnHandler, RunningPool, eventually, pool_config};
use atr_dist_tests::redis_support::TestQueue;

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("ATR_DIST_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    let venv = PathBuf::from(home).join(".cache/atr-dist/venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run scripts/test-python (or scripts/test) once to set up the producer's environment",
        venv.display()
    );
    venv
}

const ENQUEUE: &str = r#"
import sys, redis
from atr_dist_producer import Producer
url, queue = sys.argv[1], sys.argv[2]
p = Producer(redis.Redis.from_url(url), queue=queue, max_attempts=3)
for n in range(20):
    r = p.enqueue_stage(project_key="example", version_key="1.0.0", platform="NPM_SCOPED",
        owner_namespace="apache", package=f"pkg-{n}", version="1.0.0", revision="00002",
        artifacts=[f"pkg-{n}-1.0.0.tgz"], asf_uid="rm")
    print(r.id)
r = p.enqueue_promote(project_key="example", version_key="1.0.0", platform="DOCKER_HUB",
    package="httpd", version="2.4.62", revision="00003", asf_uid="rm",
    source={"type": "inline", "manifest": {"entries": [
        {"path": "oci/index.json", "size": 42, "sha3_256": "ab" * 32}]}})
print(r.id)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_enqueued_jobs_are_completed_by_the_rust_worker() {
    let t = TestQueue::new().await;
    let out = Command::new(python())
        .args(["-c", ENQUEUE, &t.url, &t.name])
        .output()
        .expect("run the Python producer");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), 21);

    let seen: Arc<Mutex<Vec<Envelope>>> = Arc::default();
    let record = Arc::clone(&seen);
    let handler = FnHandler(move |job: RunningJob| {
        let record = Arc::clone(&record);
        async move {
            record.lock().unwrap().push(job.envelope);
            Ok(Completion::Done)
        }
    });
    let pool = RunningPool::start(&t.queue, handler, pool_config(4, FAST_RETRY));
    let q = &t.queue;
    eventually("all Python jobs done", Duration::from_secs(20), || async {
        q.stats().await.unwrap().counts[&JobState::Done] == 21
    })
    .await;
    pool.stop().await;

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 21, "each job ran once, none was dead-lettered");
    for env in seen.iter() {
        // Python builds the same default idempotency key as Rust.
        assert_eq!(
            env.idempotency_key,
            Envelope::default_idempotency_key(&env.job)
        );
        assert!(ids.contains(&env.id.to_string()));
    }
    let promote = seen
        .iter()
        .find(|e| e.kind() == atr_dist_shared::JobKind::Promote)
        .unwrap();
    assert_eq!(
        promote.distribution_key().unwrap().owner_namespace,
        "library"
    );
}

/// ATR's whole loop, in Python against the real worker and a real registry: the stage hook
/// at candidate time, the promote hook at vote completion, and a results consumer that
/// updates ATR's rows (clients/python/examples/atr_loop.py, the code the package's README
/// shows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atr_enqueues_consumes_results_and_updates_its_rows() {
    use atr_dist::platform::Adapters;
    use atr_dist::platform::npm::NpmAdapter;
    use atr_dist_shared::Platform;
    use atr_dist_tests::npm_support::{Verdaccio, tarball};
    use atr_dist_tests::pipeline_support::{Db, Harness};

    let registry = Verdaccio::start().await;
    let npm = NpmAdapter::new(
        url::Url::parse(&registry.url()).unwrap(),
        Some(atr_dist::secret::Secret::new(registry.token.clone())),
    )
    .unwrap();
    let h = Harness::new(
        Db::Sqlite,
        Adapters::default().with(Platform::Npm, Arc::new(npm)),
        FAST_RETRY,
    )
    .await;
    let example = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap())
        .join("../clients/python/examples/atr_loop.py");
    let (url, queue) = (h.t.url.clone(), h.t.name.clone());
    let run = move |package: &'static str, candidate: &'static str, voted: &'static str| {
        let out = Command::new(python())
            .arg(&example)
            .args([&url, &queue, package, candidate, voted])
            .output()
            .expect("run the ATR loop");
        assert!(
            out.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };

    // The vote made revision 00002 with the same files: promoted.
    let voted = tarball("atr-loop", "1.0.0", "voted");
    for rev in ["00001", "00002"] {
        h.revs
            .write(rev, &[("atr-loop-1.0.0.tgz", voted.as_slice())]);
    }
    let first = run.clone();
    let out = tokio::task::spawn_blocking(move || first("atr-loop", "00001", "00002"))
        .await
        .unwrap();
    assert_eq!(out["after_stage"], serde_json::json!([[1]]), "{out}");
    let row = &out["distribution"][0];
    assert_eq!(row["staging"], 0, "{out}");
    assert_eq!(row["pending"], 0, "{out}");
    assert_eq!(row["release_key"], "example-1.0.0");
    assert!(
        row["api_url"].as_str().unwrap().contains("atr-loop"),
        "{out}"
    );
    assert!(row["upload_date"].is_string(), "{out}");
    let tasks = out["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    // A brand-new package's first version is npm's `latest` from its publish on, so the
    // promote may find it done ("unchanged").
    assert!(
        tasks.iter().all(|t| t["status"] == "COMPLETED"
            && (t["outcome"] == "completed" || t["outcome"] == "unchanged")),
        "{out}"
    );
    assert_eq!(out["promote"]["atr_status"], "COMPLETED");
    assert_eq!(out["promote"]["ended"], true);
    assert_eq!(registry.dist_tags("atr-loop").await["latest"], "1.0.0");

    // Revision 00004 holds other bytes than the staged 00003: refused, with the paths.
    h.revs.write(
        "00003",
        &[(
            "atr-changed-1.0.0.tgz",
            tarball("atr-changed", "1.0.0", "a").as_slice(),
        )],
    );
    h.revs.write(
        "00004",
        &[(
            "atr-changed-1.0.0.tgz",
            tarball("atr-changed", "1.0.0", "b").as_slice(),
        )],
    );
    let out = tokio::task::spawn_blocking(move || run("atr-changed", "00003", "00004"))
        .await
        .unwrap();
    let row = out["distribution"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["package"] == "atr-changed")
        .unwrap();
    assert_eq!(row["staging"], 1, "still the staging distribution: {out}");
    assert_eq!(out["promote"]["atr_status"], "FAILED");
    assert_eq!(out["promote"]["outcome"], "revision_changed");
    assert_eq!(
        out["promote"]["diff"]["changed"],
        serde_json::json!(["atr-changed-1.0.0.tgz"])
    );
    h.stop().await;
}
