//! The distribution lock is fenced by attempt: when a worker stalls past its lease and its
//! job is leased again, the two attempts never act on the distribution at once, and the
//! stalled one, once it wakes, learns from `LockGuard::check` that it must not write.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use atr_dist::queue::lock::{LockHolder, LockLost};
use atr_dist_tests::cases::{self, FAST_RETRY, RunningPool, eventually, pool_config};
use atr_dist_tests::fence_support::{GatedWriter, LOCK, gate_key, read_log};
use atr_dist_tests::jobs;
use atr_dist_tests::redis_support::TestQueue;
use redis::AsyncCommands;

/// Without heartbeats, the lease runs out and the job goes to the next fetch, while the
/// first attempt still holds and renews the lock: the second attempt of the same job is
/// refused like any other holder would be. Only when the first attempt's lock is gone (here
/// deleted, as its time to live does when a frozen process stops renewing it) does the
/// second take it, and then the first one's `check` says so.
#[tokio::test]
async fn a_later_attempt_of_the_same_job_is_refused_while_an_earlier_one_holds_the_lock() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let e = q.enqueue(&jobs::stage(1), None, 3).await.unwrap();
    let first = q
        .fetch("w1", Duration::from_millis(200), 1)
        .await
        .unwrap()
        .remove(0);
    let ttl = Duration::from_secs(30);
    let held = q
        .try_lock(LOCK, &first.lease(), ttl)
        .await
        .unwrap()
        .expect("a free lock is taken");
    held.check().await.expect("the holder holds it");

    // Redis's clock decides when the lease has run out: ask until a fetch gets the job.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut second = Vec::new();
    while second.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the lease never ran out"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        second = q.fetch("w2", Duration::from_secs(30), 1).await.unwrap();
    }
    let second = second.remove(0);
    assert_eq!((second.id.as_str(), second.attempt), (e.id.as_str(), 2));

    let refused = match q.try_lock(LOCK, &second.lease(), ttl).await.unwrap() {
        Ok(_) => panic!("the second attempt took the lock the first still holds"),
        Err(holder) => holder,
    };
    assert_eq!(
        refused,
        LockHolder {
            job: e.id.clone(),
            attempt: Some(1),
            worker: Some("w1".into()),
        }
    );
    assert_eq!(
        refused.to_string(),
        format!("{} (attempt 1 on worker w1)", e.id)
    );
    held.check().await.expect("refusing changed nothing");

    // The first attempt's lock runs out: its worker stopped renewing it.
    let key = q.lock_key(LOCK);
    let _: () = q.connection().del(&key).await.unwrap();
    match held.check().await {
        Err(LockLost::Expired { lock }) => assert_eq!(lock, LOCK),
        other => panic!("check after expiry: {other:?}"),
    }
    let next = q
        .try_lock(LOCK, &second.lease(), ttl)
        .await
        .unwrap()
        .expect("the next attempt takes a lock that expired");
    match held.check().await {
        Err(LockLost::Taken { lock, holder }) => {
            assert_eq!(lock, LOCK);
            assert_eq!(
                (
                    holder.job.as_str(),
                    holder.attempt,
                    holder.worker.as_deref()
                ),
                (e.id.as_str(), Some(2), Some("w2"))
            );
        }
        other => panic!("check after another took it: {other:?}"),
    }
    let lost = held.check().await.unwrap_err().to_string();
    assert!(
        lost.contains("stopped before writing") && lost.contains("attempt 2 on worker w2"),
        "{lost}"
    );
    held.release().await;
    next.check()
        .await
        .expect("the first attempt's release left the lock alone");
    next.release().await;
    let left: bool = q.connection().exists(&key).await.unwrap();
    assert!(!left);
}

struct Frozen(Child);

impl Frozen {
    fn signal(&self, which: &str) {
        let status = Command::new("kill")
            .arg(format!("-{which}"))
            .arg(self.0.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{which}");
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A worker process is frozen (SIGSTOP: no heartbeat, no lock renewal, as in a long pause)
/// while its attempt holds the lock and is about to write. The job is leased again; the new
/// attempt gets the lock only after the frozen one's has run out, and holds it. The frozen
/// worker then wakes: its attempt's `check` fails, naming the new holder, and it does not
/// write. Only the new attempt writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stalled_past_its_lease_does_not_write_beside_the_next_attempt() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let lease = Duration::from_millis(2000);
    let e = q.enqueue(&jobs::stage(2), None, 3).await.unwrap();
    let stalled = Frozen(
        Command::new(env!("CARGO_BIN_EXE_stall-worker"))
            .args([&t.url, &t.name, &lease.as_millis().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start stall-worker"),
    );
    eventually(
        "attempt 1 holds the lock",
        Duration::from_secs(30),
        || async { read_log(q).await == ["1 holds"] },
    )
    .await;
    stalled.signal("STOP");

    let pool = RunningPool::start(
        q,
        GatedWriter {
            queue: q.clone(),
            ttl: lease,
        },
        pool_config(1, FAST_RETRY),
    );
    eventually(
        "attempt 2 holds the lock",
        Duration::from_secs(30),
        || async { read_log(q).await.last().map(String::as_str) == Some("2 holds") },
    )
    .await;

    // Both attempts are "running" now: the frozen one, and the one holding the lock.
    let mut conn = q.connection();
    let _: () = conn.set(gate_key(q, 1), "go").await.unwrap();
    stalled.signal("CONT");
    eventually(
        "the woken attempt checks its lock",
        Duration::from_secs(30),
        || async {
            read_log(q)
                .await
                .iter()
                .any(|l| l.starts_with("1 check failed"))
        },
    )
    .await;
    let _: () = conn.set(gate_key(q, 2), "go").await.unwrap();
    eventually("the job is done", Duration::from_secs(30), || async {
        cases::state_of(q, &e.id).await == atr_dist_shared::JobState::Done
    })
    .await;
    pool.stop().await;
    drop(stalled);

    let log = read_log(q).await;
    // Between them, only refusals of attempt 2 while attempt 1's lock had not run out yet.
    let (first, rest) = log.split_first().unwrap();
    assert_eq!(first, "1 holds", "{log:?}");
    let after_refusals: Vec<&String> = rest
        .iter()
        .filter(|l| !l.starts_with("2 refused"))
        .collect();
    assert_eq!(after_refusals.len(), 3, "{log:?}");
    assert_eq!(after_refusals[0], "2 holds", "{log:?}");
    assert!(
        after_refusals[1].starts_with("1 check failed: the distribution lock")
            && after_refusals[1].contains(&format!("held by job {} (attempt 2 on worker", e.id)),
        "{log:?}"
    );
    assert_eq!(after_refusals[2], "2 wrote", "{log:?}");
    for refusal in rest.iter().filter(|l| l.starts_with("2 refused")) {
        assert!(
            refusal.contains(&format!("{} (attempt 1 on worker", e.id)),
            "{log:?}"
        );
    }
    let d = q.show(&e.id).await.unwrap().unwrap();
    assert_eq!(d.summary.attempt, 2, "{:?}", d.events);
}
