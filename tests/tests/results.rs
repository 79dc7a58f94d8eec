//! The results stream and the `result` hash (docs/wire-format.md, "Results"): every job that
//! ends is named once, by the script that ends it, and its report goes with the job.

use std::collections::HashMap;
use std::time::Duration;

use atr_dist::queue::{Ack, AckOutcome, Queue};
use atr_dist_shared::{ErrorClass, JobState};
use atr_dist_tests::jobs;
use atr_dist_tests::redis_support::TestQueue;
use redis::AsyncCommands;

type Entry = atr_dist_tests::redis_support::Ended;

async fn entries(q: &Queue) -> Vec<Entry> {
    atr_dist_tests::redis_support::ended(q).await
}

/// How many entries the stream has.
async fn stream_len(q: &Queue) -> usize {
    redis::cmd("XLEN")
        .arg(format!("{}results", q.prefix()))
        .query_async(&mut q.connection())
        .await
        .unwrap()
}

async fn kept(q: &Queue, id: &str) -> Option<String> {
    q.connection()
        .hget(format!("{}result", q.prefix()), id)
        .await
        .unwrap()
}

fn ack(lease: atr_dist::queue::Lease, outcome: AckOutcome, result: &str) -> Ack {
    Ack {
        lease,
        outcome,
        result: result.to_owned(),
    }
}

#[tokio::test]
async fn every_end_is_reported_once_by_the_script_that_makes_it() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    for n in 0..4 {
        q.enqueue(&jobs::stage(n), None, 1).await.unwrap();
    }
    let leased = q.fetch("w1", Duration::from_secs(30), 3).await.unwrap();
    assert_eq!(leased.len(), 3);
    let report = r#"{"kind":"stage","outcome":"completed"}"#;
    q.ack(&[
        ack(leased[0].lease(), AckOutcome::Done, report),
        ack(
            leased[1].lease(),
            AckOutcome::Dead {
                class: ErrorClass::Permanent,
                message: "refused".into(),
            },
            r#"{"outcome":"revision_changed"}"#,
        ),
        // Out of attempts (max 1): a retry becomes dead, BROKEN for ATR.
        ack(
            leased[2].lease(),
            AckOutcome::Retry {
                delay: Duration::ZERO,
                class: ErrorClass::Transient,
                message: "503".into(),
            },
            "",
        ),
    ])
    .await
    .unwrap();
    // The fourth is cancelled while it waits.
    let waiting = q
        .list(&Default::default(), None, atr_dist_tests::cases::limit(100))
        .await
        .unwrap()
        .jobs
        .into_iter()
        .find(|j| j.state == JobState::Queued)
        .unwrap();
    q.cancel(std::slice::from_ref(&waiting.id), "not wanted")
        .await
        .unwrap();

    let got = entries(q).await;
    assert_eq!(got.len(), 4, "{got:?}");
    // One entry per state and ATR status of a script call: done, FAILED and BROKEN from
    // the ack, cancelled from the cancel.
    assert_eq!(stream_len(q).await, 4);
    let by_id: HashMap<&str, &Entry> = got.iter().map(|e| (e["id"].as_str(), e)).collect();
    let done = by_id[leased[0].id.as_str()];
    assert_eq!(
        (
            done["state"].as_str(),
            done["atr_status"].as_str(),
            done["attempt"].as_str()
        ),
        ("done", "COMPLETED", "1")
    );
    assert_eq!(done["result"], report);
    assert_eq!(done["error_class"], "");
    let dead = by_id[leased[1].id.as_str()];
    assert_eq!(
        (
            dead["state"].as_str(),
            dead["atr_status"].as_str(),
            dead["error_class"].as_str()
        ),
        ("dead", "FAILED", "permanent")
    );
    let broken = by_id[leased[2].id.as_str()];
    assert_eq!(
        (broken["state"].as_str(), broken["atr_status"].as_str()),
        ("dead", "BROKEN")
    );
    assert!(broken["message"].contains("gave up after 1 attempt(s)"));
    let cancelled = by_id[waiting.id.as_str()];
    assert_eq!(
        (
            cancelled["state"].as_str(),
            cancelled["atr_status"].as_str(),
            cancelled["attempt"].as_str(),
            cancelled["message"].as_str(),
            cancelled["result"].as_str()
        ),
        ("cancelled", "FAILED", "0", "not wanted", "")
    );
    // Each entry names the batch that holds the job's envelope.
    assert!(
        got.iter().all(|e| e["batch"].parse::<u64>().is_ok()),
        "{got:?}"
    );

    // Reports are kept by job; an empty one is not.
    assert_eq!(kept(q, &leased[0].id).await.as_deref(), Some(report));
    assert!(kept(q, &leased[1].id).await.is_some());
    assert_eq!(kept(q, &leased[2].id).await, None);

    // A retry queues the job again: its old report is no longer its result.
    q.retry(std::slice::from_ref(&leased[1].id), "again")
        .await
        .unwrap();
    assert_eq!(kept(q, &leased[1].id).await, None);
    // A purge takes the report with the job.
    assert_eq!(q.purge(JobState::Done, Duration::ZERO).await.unwrap(), 1);
    assert_eq!(kept(q, &leased[0].id).await, None);
    // Neither adds an entry: nothing ended.
    assert_eq!(stream_len(q).await, 4);
}

#[tokio::test]
async fn a_lease_that_runs_out_with_no_attempts_left_is_reported_broken() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    q.enqueue(&jobs::stage(0), None, 1).await.unwrap();
    let leased = q.fetch("w1", Duration::from_millis(1), 1).await.unwrap();
    assert_eq!(leased.len(), 1);
    // The lease has run out by Redis's clock once a later fetch sees it expired.
    let mut got = Vec::new();
    for _ in 0..200 {
        q.fetch("w2", Duration::from_secs(30), 1).await.unwrap();
        got = entries(q).await;
        if !got.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(got.len(), 1, "{got:?}");
    let e = &got[0];
    assert_eq!(e["id"], leased[0].id);
    assert_eq!(
        (
            e["state"].as_str(),
            e["atr_status"].as_str(),
            e["error_class"].as_str(),
            e["result"].as_str()
        ),
        ("dead", "BROKEN", "transient", "")
    );
    assert!(e["message"].contains("expired"), "{e:?}");
}

/// Notes from a running attempt (`note.lua`): written while the job runs that attempt, with
/// their numbers, and dropped once it does not.
#[tokio::test]
async fn notes_are_written_only_for_the_attempt_that_runs() {
    use atr_dist::queue::note::{Note, NoteKind};
    let t = TestQueue::new().await;
    let q = &t.queue;
    q.enqueue(&jobs::stage(0), None, 3).await.unwrap();
    let leased = q.fetch("w1", Duration::from_secs(30), 1).await.unwrap();
    let job = &leased[0];
    let note = Note {
        kind: NoteKind::HttpRetry,
        message: "PUT x: retrying".into(),
        http_status: Some(503),
        retry_after: Some(Duration::from_secs(2)),
        wait: Some(Duration::from_millis(1500)),
    };
    assert!(q.note(&job.id, job.attempt, &note).await.unwrap());
    // Another attempt's note is dropped.
    assert!(!q.note(&job.id, job.attempt + 1, &note).await.unwrap());
    let events: Vec<String> = q
        .connection()
        .lrange(format!("{}events:{}", q.prefix(), job.id), 0, -1)
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    let event: serde_json::Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(event["event"], "http_retry");
    assert_eq!(event["http_status"], 503);
    assert_eq!(event["retry_after_ms"], 2000);
    assert_eq!(event["wait_ms"], 1500);
    // Once the job ended, nothing more is written.
    q.ack(&[ack(job.lease(), AckOutcome::Done, "")])
        .await
        .unwrap();
    assert!(!q.note(&job.id, job.attempt, &note).await.unwrap());
}

/// The lock checker the platform write path uses says whether the attempt still holds it.
#[tokio::test]
async fn the_lock_checker_sees_a_lock_expire_or_pass_to_another() {
    use atr_dist::queue::lock::LockLost;
    let t = TestQueue::new().await;
    let q = &t.queue;
    q.enqueue(&jobs::stage(0), None, 3).await.unwrap();
    let leased = q.fetch("w1", Duration::from_secs(30), 1).await.unwrap();
    let guard = q
        .try_lock("dist-x", &leased[0].lease(), Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let checker = guard.checker();
    assert!(checker.check().await.is_ok());
    let key = q.lock_key("dist-x");
    let _: () = q.connection().del(&key).await.unwrap();
    assert!(
        matches!(checker.check().await, Err(LockLost::Expired { .. })),
        "a lock that is gone"
    );
    let _: () = q.connection().set(&key, "someone-else").await.unwrap();
    assert!(
        matches!(checker.check().await, Err(LockLost::Taken { .. })),
        "a lock another attempt holds"
    );
    let _: () = q.connection().del(&key).await.unwrap();
}

/// A report the handler leaves in its job's result slot reaches the `result` hash and the
/// stream through the pool's ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_hands_the_handlers_report_to_the_ack() {
    use atr_dist::queue::pool::{Completion, RunningJob};
    use atr_dist_tests::cases::{FAST_RETRY, FnHandler, RunningPool, eventually, pool_config};
    let t = TestQueue::new().await;
    let q = &t.queue;
    let e = q.enqueue(&jobs::stage(0), None, 3).await.unwrap();
    let handler = FnHandler(|job: RunningJob| async move {
        job.result.set(r#"{"outcome":"completed"}"#.to_owned());
        Ok(Completion::Done)
    });
    let pool = RunningPool::start(q, handler, pool_config(2, FAST_RETRY));
    eventually("the job is done", Duration::from_secs(20), || async {
        q.stats().await.unwrap().counts[&JobState::Done] == 1
    })
    .await;
    pool.stop().await;
    assert_eq!(
        kept(q, &e.id).await.as_deref(),
        Some(r#"{"outcome":"completed"}"#)
    );
    assert_eq!(entries(q).await[0]["result"], r#"{"outcome":"completed"}"#);
}
