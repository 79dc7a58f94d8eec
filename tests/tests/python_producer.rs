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
