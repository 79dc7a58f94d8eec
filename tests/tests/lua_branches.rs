//! One test per branch of the queue's Lua scripts (`lua/`), named `<script>_<branch>`. No
//! mutation tool reaches Lua, so each branch has a test that fails when the branch is
//! broken. Calls go through the Rust client where it can make them; branches that only a
//! misbehaving client reaches are called directly, with the script files as they are in the
//! checkout (which the worker embeds). Each test has a queue of its own.

use std::time::Duration;

use atr_dist::queue::lock::LockLost;
use atr_dist::queue::{Ack, AckOutcome, AckResult, AdminReply, Lease, Leased, Queue, RawJob};
use atr_dist_shared::{Envelope, ErrorClass, JobState};
use atr_dist_tests::cases::{count, finish, state_of};
use atr_dist_tests::redis_support::TestQueue;
use atr_dist_tests::{checkout_path, jobs};
use redis::{AsyncCommands, Value};

const LEASE: Duration = Duration::from_secs(60);
const KEEPER: &str = "~keeper: a permanent member that keeps this set out of the listpack encoding (docs/wire-format.md)";

/// A script as the checkout has it, to call where the Rust client never would.
fn script(name: &str) -> redis::Script {
    let path = checkout_path(&format!("../lua/{name}.lua"));
    redis::Script::new(&std::fs::read_to_string(&path).expect("read the script"))
}

/// Calls `name` directly with `args` after the prefix; the error's text on failure.
async fn call<T: redis::FromRedisValue>(
    q: &Queue,
    name: &str,
    args: &[String],
) -> Result<T, String> {
    let s = script(name);
    let mut inv = s.key(format!("{}queued", q.prefix()));
    inv.arg(q.prefix());
    for a in args {
        inv.arg(a);
    }
    inv.invoke_async(&mut q.connection())
        .await
        .map_err(|e| e.to_string())
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// Redis's clock, in ms: what the scripts compare scores with.
async fn redis_now(q: &Queue) -> i64 {
    let (secs, micros): (i64, i64) = redis::cmd("TIME")
        .query_async(&mut q.connection())
        .await
        .unwrap();
    secs * 1000 + micros / 1000
}

async fn record(q: &Queue, id: &str) -> Option<String> {
    q.connection()
        .hget(format!("{}jobs", q.prefix()), id)
        .await
        .unwrap()
}

async fn hget(q: &Queue, hash: &str, field: &str) -> Option<String> {
    q.connection()
        .hget(format!("{}{hash}", q.prefix()), field)
        .await
        .unwrap()
}

async fn score(q: &Queue, set: &str, id: &str) -> Option<f64> {
    q.connection()
        .zscore(format!("{}{set}", q.prefix()), id)
        .await
        .unwrap()
}

async fn list(q: &Queue, name: &str) -> Vec<String> {
    q.connection()
        .lrange(format!("{}{name}", q.prefix()), 0, -1)
        .await
        .unwrap()
}

async fn exists(q: &Queue, key: &str) -> bool {
    q.connection()
        .exists(format!("{}{key}", q.prefix()))
        .await
        .unwrap()
}

async fn total(q: &Queue, counter: &str) -> u64 {
    q.stats()
        .await
        .unwrap()
        .totals
        .get(counter)
        .copied()
        .unwrap_or(0)
}

async fn events(q: &Queue, id: &str) -> Vec<String> {
    q.show(id)
        .await
        .unwrap()
        .unwrap()
        .events
        .into_iter()
        .map(|e| e.event)
        .collect()
}

/// Enqueues the stage job `n` with `max_attempts` and leases it.
async fn leased(q: &Queue, n: usize, max_attempts: u32) -> Leased {
    let e = q
        .enqueue(&jobs::stage(n), None, max_attempts)
        .await
        .unwrap();
    let mut got = q.fetch("w1", LEASE, 1).await.unwrap();
    assert_eq!(got.len(), 1);
    let job = got.remove(0);
    assert_eq!(job.id, e.id);
    job
}

async fn ack(q: &Queue, job: &Leased, outcome: AckOutcome) -> AckResult {
    ack_with(q, job, outcome, "").await
}

/// An ack that sends the worker's report `result` with it.
async fn ack_with(q: &Queue, job: &Leased, outcome: AckOutcome, result: &str) -> AckResult {
    q.ack(&[Ack {
        lease: job.lease(),
        outcome,
        result: result.to_owned(),
    }])
    .await
    .unwrap()
    .remove(0)
}

type Entry = std::collections::HashMap<String, String>;

/// The entries of the `results` stream, oldest first.
async fn results(q: &Queue) -> Vec<Entry> {
    let reply: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(format!("{}results", q.prefix()))
        .arg("-")
        .arg("+")
        .query_async(&mut q.connection())
        .await
        .unwrap();
    reply
        .into_iter()
        .map(|(_, fields)| {
            fields
                .chunks(2)
                .map(|kv| (kv[0].clone(), kv[1].clone()))
                .collect()
        })
        .collect()
}

/// The one results entry, naming one job, as a consumer sees it: `(id, state,
/// atr_status)` from the entry, the attempt from the job's record and the report from the
/// `result` hash, as `(id, state, atr_status, attempt, result)`.
async fn the_result(q: &Queue) -> (String, String, String, String, String) {
    let got = results(q).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let e = &got[0];
    let id = e["ids"].clone();
    assert!(!id.contains(' '), "one job: {id}");
    let record = record(q, &id).await.unwrap_or_default();
    let attempt = record.split(' ').nth(4).unwrap_or("0").to_owned();
    (
        id.clone(),
        e["state"].clone(),
        e["atr_status"].clone(),
        attempt,
        hget(q, "result", &id).await.unwrap_or_default(),
    )
}

const REPORT: &str = r#"{"kind":"stage","outcome":"completed"}"#;

fn retry_in(delay: Duration) -> AckOutcome {
    AckOutcome::Retry {
        delay,
        class: ErrorClass::Transient,
        message: "503 from the registry".into(),
    }
}

/// The stage job `n`, enqueued, leased and acked dead: a job to purge.
async fn dead_job(q: &Queue, n: usize) -> Leased {
    let job = leased(q, n, 5).await;
    let outcome = AckOutcome::Dead {
        class: ErrorClass::Permanent,
        message: "404".into(),
    };
    assert_eq!(
        ack_with(q, &job, outcome, REPORT).await,
        AckResult::Applied(JobState::Dead)
    );
    job
}

async fn done_job(q: &Queue, n: usize) -> Leased {
    let job = leased(q, n, 5).await;
    assert_eq!(
        ack(q, &job, AckOutcome::Done).await,
        AckResult::Applied(JobState::Done)
    );
    job
}

// ---------------------------------------------------------------------------------------
// fetch.lua

#[tokio::test]
async fn fetch_refuses_a_queue_in_another_wire_format() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let _: () = q
        .connection()
        .set(format!("{}format", q.prefix()), "9")
        .await
        .unwrap();
    let err = q.fetch("w1", LEASE, 10).await.unwrap_err().to_string();
    assert!(
        err.contains("wire format 9") && err.contains("speaks formats 7 and 8"),
        "{err}"
    );
}

#[tokio::test]
async fn fetch_refuses_jobs_without_a_format_key_as_wire_format_1() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let _: () = q
        .connection()
        .rpush(format!("{}queued", q.prefix()), "old-job")
        .await
        .unwrap();
    let err = q.fetch("w1", LEASE, 10).await.unwrap_err().to_string();
    assert!(err.contains("no format key"), "{err}");
    assert_eq!(list(q, "queued").await, ["old-job"], "nothing was taken");
}

#[tokio::test]
async fn fetch_on_a_new_queue_returns_nothing_and_sets_no_format() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    assert!(q.fetch("w1", LEASE, 10).await.unwrap().is_empty());
    assert!(t.keys().await.is_empty(), "{:?}", t.keys().await);
}

#[tokio::test]
async fn fetch_hands_out_nothing_while_the_queue_is_paused() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let e = q.enqueue(&jobs::stage(1), None, 3).await.unwrap();
    q.pause().await.unwrap();
    assert!(q.fetch("w1", LEASE, 10).await.unwrap().is_empty());
    assert_eq!(state_of(q, &e.id).await, JobState::Queued);
    q.resume().await.unwrap();
    assert_eq!(q.fetch("w1", LEASE, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn fetch_queues_a_scheduled_job_whose_time_has_come() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let due = q.enqueue(&jobs::stage(1), Some(later), 3).await.unwrap();
    let not_due = q.enqueue(&jobs::stage(2), Some(later), 3).await.unwrap();
    assert!(q.fetch("w1", LEASE, 10).await.unwrap().is_empty());
    // Its time comes: its score in `scheduled` is now behind Redis's clock.
    let now = redis_now(q).await;
    let _: () = q
        .connection()
        .zadd(format!("{}scheduled", q.prefix()), &due.id, now - 1)
        .await
        .unwrap();
    let got = q.fetch("w1", LEASE, 10).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].id.as_str(), got[0].attempt), (due.id.as_str(), 1));
    assert_eq!(score(q, "scheduled", &due.id).await, None);
    assert_eq!(state_of(q, &not_due.id).await, JobState::Scheduled);
}

#[tokio::test]
async fn fetch_queues_a_retrying_job_whose_backoff_has_passed() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let waiting = leased(q, 1, 3).await;
    ack(q, &waiting, retry_in(Duration::from_secs(3600))).await;
    let due = leased(q, 2, 3).await;
    ack(q, &due, retry_in(Duration::ZERO)).await;
    let got = q.fetch("w1", LEASE, 10).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].id.as_str(), got[0].attempt), (due.id.as_str(), 2));
    assert_eq!(state_of(q, &waiting.id).await, JobState::Retrying);
}

#[tokio::test]
async fn fetch_drops_a_due_entry_without_a_job_record() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    q.enqueue(&jobs::stage(1), None, 3).await.unwrap();
    let mut conn = q.connection();
    for set in ["scheduled", "retrying"] {
        let _: () = conn
            .zadd(format!("{}{set}", q.prefix()), "ghost", 0)
            .await
            .unwrap();
    }
    let got = q.fetch("w1", LEASE, 10).await.unwrap();
    assert_eq!(got.len(), 1, "only the real job");
    assert_eq!(score(q, "scheduled", "ghost").await, None);
    assert_eq!(score(q, "retrying", "ghost").await, None);
    assert!(list(q, "queued").await.is_empty());
    assert_eq!(record(q, "ghost").await, None);
}

#[tokio::test]
async fn fetch_requeues_an_expired_lease_with_attempts_left_at_the_front() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let first = q.enqueue(&jobs::stage(1), None, 3).await.unwrap();
    let second = q.enqueue(&jobs::stage(2), None, 3).await.unwrap();
    let expired = q.fetch("w1", Duration::ZERO, 1).await.unwrap();
    assert_eq!(expired[0].id, first.id);
    let got = q.fetch("w2", LEASE, 1).await.unwrap();
    assert_eq!(
        (got[0].id.as_str(), got[0].attempt),
        (first.id.as_str(), 2),
        "the recovered job goes before the one queued behind it"
    );
    assert_eq!(list(q, "queued").await, [second.id.as_str()]);
    let last_error = hget(q, "last_error", &first.id).await.unwrap();
    assert_eq!(
        last_error,
        "lease of worker w1 expired (worker died or stalled)"
    );
    assert_eq!(events(q, &first.id).await, ["lease_expired"]);
    assert!(results(q).await.is_empty(), "nothing ended");
    assert_eq!(total(q, "recovered").await, 1);
    assert_eq!(total(q, "dead").await, 0);
}

#[tokio::test]
async fn fetch_moves_an_expired_lease_with_no_attempts_left_to_dead() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let e = q.enqueue(&jobs::stage(1), None, 1).await.unwrap();
    assert_eq!(q.fetch("w1", Duration::ZERO, 1).await.unwrap().len(), 1);
    assert!(q.fetch("w2", LEASE, 10).await.unwrap().is_empty());
    let s = q.show(&e.id).await.unwrap().unwrap();
    assert_eq!((s.summary.state, s.summary.attempt), (JobState::Dead, 1));
    assert_eq!(s.summary.error_class.as_deref(), Some("transient"));
    assert_eq!(
        s.summary.last_error.as_deref(),
        Some("lease of worker w1 expired (worker died or stalled); no attempts left")
    );
    assert!(s.summary.finished_at.is_some());
    assert_eq!(events(q, &e.id).await, ["dead"]);
    assert_eq!(score(q, "running", &e.id).await, None);
    assert!(list(q, "queued").await.is_empty());
    assert_eq!(total(q, "dead").await, 1);
    assert_eq!(total(q, "recovered").await, 0);
    // No worker is left to report on it: an entry without a result.
    assert_eq!(
        the_result(q).await,
        (
            e.id.clone(),
            "dead".into(),
            "BROKEN".into(),
            "1".into(),
            String::new()
        )
    );
}

/// A running job whose cancel was requested, and whose worker died before it heard of it:
/// the fetch that finds its lease expired honours the cancel instead of queueing the job
/// again (or moving it to dead), and the request does not outlive it. (Found by
/// tests/props_lua.rs: the entry stayed behind a dead job, and a job queued again ran.)
#[tokio::test]
async fn fetch_cancels_an_expired_lease_whose_cancel_was_pending() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let with_attempts = q.enqueue(&jobs::stage(1), None, 3).await.unwrap();
    let last_attempt = q.enqueue(&jobs::stage(2), None, 1).await.unwrap();
    assert_eq!(q.fetch("w1", Duration::ZERO, 2).await.unwrap().len(), 2);
    let ids = [with_attempts.id.clone(), last_attempt.id.clone()];
    q.cancel(&ids, "not wanted").await.unwrap();
    assert!(q.fetch("w2", LEASE, 10).await.unwrap().is_empty());
    for id in &ids {
        let s = q.show(id).await.unwrap().unwrap();
        assert_eq!(
            (s.summary.state, s.summary.attempt),
            (JobState::Cancelled, 1)
        );
        assert_eq!(
            s.summary.last_error.as_deref(),
            Some(
                "lease of worker w1 expired (worker died or stalled) while its cancel was pending; cancelled"
            )
        );
        assert_eq!(events(q, id).await, ["cancel_requested", "cancelled"]);
        assert_eq!(hget(q, "cancel_requested", id).await, None);
        assert!(score(q, "cancelled", id).await.is_some());
    }
    assert!(list(q, "queued").await.is_empty());
    assert_eq!(total(q, "cancelled").await, 2);
    assert_eq!(
        (total(q, "dead").await, total(q, "recovered").await),
        (0, 0)
    );
    let ended = results(q).await;
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(
        (ended[0]["state"].as_str(), ended[0]["atr_status"].as_str()),
        ("cancelled", "FAILED")
    );
    let mut named: Vec<&str> = ended[0]["ids"].split(' ').collect();
    named.sort_unstable();
    let mut want = vec![ids[0].as_str(), ids[1].as_str()];
    want.sort_unstable();
    assert_eq!(named, want);
}

#[tokio::test]
async fn fetch_drops_an_expired_lease_without_a_job_record() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    q.enqueue(&jobs::stage(1), None, 3).await.unwrap();
    let _: () = q
        .connection()
        .zadd(format!("{}running", q.prefix()), "ghost", 0)
        .await
        .unwrap();
    assert_eq!(q.fetch("w1", LEASE, 10).await.unwrap().len(), 1);
    assert_eq!(score(q, "running", "ghost").await, None);
    assert_eq!(record(q, "ghost").await, None);
    assert!(list(q, "queued").await.is_empty());
    assert_eq!(total(q, "recovered").await, 0);
}

#[tokio::test]
async fn fetch_drops_a_queued_entry_whose_job_is_not_queued() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let done = done_job(q, 1).await;
    let mut conn = q.connection();
    let _: () = conn
        .rpush(
            format!("{}queued", q.prefix()),
            &[done.id.as_str(), "purged"],
        )
        .await
        .unwrap();
    let before = record(q, &done.id).await;
    assert!(q.fetch("w2", LEASE, 10).await.unwrap().is_empty());
    assert!(list(q, "queued").await.is_empty());
    assert_eq!(
        record(q, &done.id).await,
        before,
        "the done job is untouched"
    );
    assert_eq!(score(q, "running", &done.id).await, None);
}

#[tokio::test]
async fn fetch_leases_a_first_attempt_as_1_and_later_ones_one_higher() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let job = leased(q, 1, 5).await;
    assert_eq!(job.attempt, 1);
    let parts: Vec<&str> = job.token.split(' ').collect();
    assert_eq!((parts[0], parts[3], parts[5]), ("5", "1", "w1"));
    assert_eq!(
        record(q, &job.id).await,
        Some(format!("running {}", job.token))
    );
    ack(q, &job, retry_in(Duration::ZERO)).await;
    let again = q.fetch("w2", LEASE, 1).await.unwrap().remove(0);
    assert_eq!(again.attempt, 2);
    assert_eq!(again.token.split(' ').nth(3), Some("2"));
}

#[tokio::test]
async fn fetch_reports_when_a_requeued_job_became_queued_and_forgets_it() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let e = q.enqueue(&jobs::stage(1), None, 3).await.unwrap();
    // Enqueued an hour ago, queued again a minute ago.
    let now = redis_now(q).await;
    let old = record(q, &e.id).await.unwrap();
    let words: Vec<&str> = old.split(' ').collect();
    let aged = format!("{} {} {} {}", words[0], words[1], now - 3_600_000, words[3]);
    let mut conn = q.connection();
    let _: () = conn
        .hset(format!("{}jobs", q.prefix()), &e.id, aged)
        .await
        .unwrap();
    let _: () = conn
        .hset(format!("{}queued_at", q.prefix()), &e.id, now - 60_000)
        .await
        .unwrap();
    let got = q.fetch("w1", LEASE, 1).await.unwrap().remove(0);
    let waited = got.waited.as_secs();
    assert!((60..600).contains(&waited), "waited {waited} s");
    assert_eq!(hget(q, "queued_at", &e.id).await, None);
}

#[tokio::test]
async fn fetch_without_requeued_jobs_counts_the_wait_from_the_enqueue() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let e = q.enqueue(&jobs::stage(1), None, 3).await.unwrap();
    let now = redis_now(q).await;
    let old = record(q, &e.id).await.unwrap();
    let words: Vec<&str> = old.split(' ').collect();
    let aged = format!("{} {} {} {}", words[0], words[1], now - 3_600_000, words[3]);
    let _: () = q
        .connection()
        .hset(format!("{}jobs", q.prefix()), &e.id, aged)
        .await
        .unwrap();
    let got = q.fetch("w1", LEASE, 1).await.unwrap().remove(0);
    assert!(got.waited.as_secs() >= 3600, "{:?}", got.waited);
}

#[tokio::test]
async fn fetch_adds_the_keeper_to_running() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    assert!(q.fetch("w1", LEASE, 1).await.unwrap().is_empty());
    assert!(!exists(q, "running").await, "no keeper without a lease");
    let job = leased(q, 1, 3).await;
    assert_eq!(score(q, "running", KEEPER).await, Some(f64::INFINITY));
    let expiry = score(q, "running", &job.id).await.unwrap() as i64;
    let now = redis_now(q).await;
    assert!(
        expiry > now + LEASE.as_millis() as i64 - 10_000,
        "lease expiry {expiry}, now {now}"
    );
}

#[tokio::test]
async fn fetch_leases_at_most_max_jobs() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let envelopes: Vec<_> = (1..=5).map(jobs::stage).collect();
    q.enqueue_bulk(&envelopes, None, 3).await.unwrap();
    assert_eq!(q.fetch("w1", LEASE, 2).await.unwrap().len(), 2);
    assert_eq!(count(q, JobState::Queued).await, 3);
    assert_eq!(count(q, JobState::Running).await, 2);
}

// ---------------------------------------------------------------------------------------
// ack.lua

#[tokio::test]
async fn ack_refuses_arguments_not_in_groups() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    for args in [
        vec!["x"],
        vec!["1", "id", "lease"],
        vec!["0", "id", "lease", "retry", "0", "transient", "message"],
    ] {
        let err = call::<Value>(q, "ack", &strings(&args)).await.unwrap_err();
        assert!(err.contains("expected n_done"), "{args:?}: {err}");
    }
}

#[tokio::test]
async fn ack_refuses_an_unknown_outcome_and_changes_nothing() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let job = leased(q, 1, 3).await;
    let other = leased(q, 2, 3).await;
    let args = vec![
        "1".to_owned(),
        job.id.clone(),
        job.token.clone(),
        String::new(),
        other.id.clone(),
        other.token.clone(),
        "publish".to_owned(),
        "0".to_owned(),
        String::new(),
        "?".to_owned(),
        String::new(),
    ];
    let err = call::<Value>(q, "ack", &args).await.unwrap_err();
    assert!(err.contains("unknown outcome publish"), "{err}");
    assert_eq!(state_of(q, &job.id).await, JobState::Running);
    assert_eq!(state_of(q, &other.id).await, JobState::Running);
}

#[tokio::test]
async fn ack_refuses_more_than_1000_jobs() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let mut args = vec!["1001".to_owned()];
    for i in 0..1001 {
        args.push(format!("id-{i}"));
        args.push("lease".to_owned());
        args.push(String::new());
    }
    let err = call::<Value>(q, "ack", &args).await.unwrap_err();
    assert!(err.contains("at most 1000 jobs"), "{err}");
}

#[tokio::test]
async fn ack_of_no_jobs_answers_nothing() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let out: Vec<String> = call(q, "ack", &strings(&["0"])).await.unwrap();
    assert!(out.is_empty());
    assert!(t.keys().await.is_empty(), "{:?}", t.keys().await);
}

#[tokio::test]
async fn ack_is_stale_for_a_lease_the_job_no_longer_has() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let job = leased(q, 1, 3).await;
    let held = record(q, &job.id).await;
    // The same job and start, another attempt or another worker.
    let words: Vec<&str> = job.token.split(' ').collect();
    for (attempt, worker) in [("2", "w1"), ("1", "w2")] {
        let token = format!(
            "{} {} {} {attempt} {} {worker}",
            words[0], words[1], words[2], words[4]
        );
        for outcome in [AckOutcome::Done, retry_in(Duration::ZERO)] {
            let out = q
                .ack(&[Ack {
                    lease: Lease {
                        id: job.id.clone(),
                        token: token.clone(),
                    },
                    outcome,
                    result: String::new(),
                }])
                .await
                .unwrap();
            assert_eq!(out, [AckResult::Stale]);
        }
    }
    assert_eq!(record(q, &job.id).await, held);
    assert!(score(q, "running", &job.id).await.is_some());
    // An ack applied once is stale the second time.
    assert_eq!(
        ack(q, &job, AckOutcome::Done).await,
        AckResult::Applied(JobState::Done)
    );
    assert_eq!(ack(q, &job, AckOutcome::Done).await, AckResult::Stale);
    assert_eq!(total(q, "done").await, 1);
}

#[tokio::test]
async fn ack_done_records_the_finish_and_appends_to_done() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let job = leased(q, 1, 3).await;
    let before = redis_now(q).await;
    assert_eq!(
        ack(q, &job, AckOutcome::Done).await,
        AckResult::Applied(JobState::Done)
    );
    let after = redis_now(q).await;
    let rec = record(q, &job.id).await.unwrap();
    let prefix = format!("done {} ", job.token);
    assert!(rec.starts_with(&prefix), "{rec}");
    let finished: i64 = rec[prefix.len()..].parse().unwrap();
    assert!((before..=after).contains(&finished), "{rec}");
    assert_eq!(list(q, "done").await, [job.id.as_str()]);
    assert_eq!(score(q, "running", &job.id).await, None);
    assert_eq!(
        the_result(q).await,
        (
            job.id.clone(),
            "done".into(),
            "COMPLETED".into(),
            "1".into(),
            String::new()
        )
    );
    assert_eq!(
        hget(q, "result", &job.id).await,
        None,
        "no report, none kept"
    );
    let stats = q.stats().await.unwrap();
    assert_eq!(stats.totals.get("done"), Some(&1));
    assert_eq!(stats.last_hour.iter().map(|m| m.done).sum::<u64>(), 1);
}

#[tokio::test]
async fn ack_done_keeps_the_report_it_was_sent() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let job = leased(q, 1, 3).await;
    let other = leased(q, 2, 3).await;
    let out = q
        .ack(&[
            Ack {
                lease: job.lease(),
                outcome: AckOutcome::Done,
                result: REPORT.to_owned(),
            },
            Ack {
                lease: other.lease(),
                outcome: AckOutcome::Done,
                result: String::new(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(out, [AckResult::Applied(JobState::Done); 2]);
    assert_eq!(hget(q, "result", &job.id).await.as_deref(), Some(REPORT));
    assert_eq!(hget(q, "result", &other.id).await, None);
    // One entry names both: the jobs one ack ended in one state.
    let got = results(q).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["ids"], format!("{} {}", job.id, other.id));
    assert_eq!(
        (got[0]["state"].as_str(), got[0]["atr_status"].as_str()),
        ("done", "COMPLETED")
    );
    assert_eq!(got[0].len(), 3, "{got:?}");
}

/// `show` gives a running job's lease deadline (its score in `running`), and none once the
/// job has left `running`.
#[tokio::test]
async fn show_gives_a_running_jobs_lease() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let job = leased(q, 1, 3).await;
    let deadline = score(q, "running", &job.id).await.unwrap() as i64;
    let s = q.show(&job.id).await.unwrap().unwrap();
    assert_eq!(s.summary.state, JobState::Running);
    assert_eq!(s.lease_until.map(|t| t.timestamp_millis()), Some(deadline));
    assert_eq!(
        ack(q, &job, AckOutcome::Done).await,
        AckResult::Applied(JobState::Done)
    );
    assert_eq!(q.show(&job.id).await.unwrap().unwrap().lease_until, None);
}

#[tokio::test]
async fn ack_retry_with_attempts_left_schedules_the_next_attempt() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let job = leased(q, 1, 3).await;
    let before = redis_now(q).await;
    assert_eq!(
        ack(q, &job, retry_in(Duration::from_secs(3600))).await,
        AckResult::Applied(JobState::Retrying)
    );
    let after = redis_now(q).await;
    let at = score(q, "retrying", &job.id).await.unwrap() as i64;
    assert!(
        (before + 3_600_000..=after + 3_600_000).contains(&at),
        "{at}"
    );
    assert_eq!(
        record(q, &job.id).await,
        Some(format!("retrying {}", job.token))
    );
    let s = q.show(&job.id).await.unwrap().unwrap();
    assert_eq!(s.summary.error_class.as_deref(), Some("transient"));
    assert_eq!(
        s.summary.last_error.as_deref(),
        Some("503 from the registry")
    );
    assert_eq!(s.events.len(), 1);
    assert_eq!(s.events[0].event, "retry_scheduled");
    assert_eq!(s.events[0].error_class.as_deref(), Some("transient"));
    assert_eq!(
        s.events[0].message.as_deref(),
        Some("503 from the registry (next attempt in 3600000 ms)")
    );
    assert_eq!(score(q, "running", &job.id).await, None);
    assert_eq!(
        (total(q, "retried").await, total(q, "failed").await),
        (1, 1)
    );
    assert_eq!(total(q, "dead").await, 0);
    assert!(results(q).await.is_empty(), "nothing ended");
}

#[tokio::test]
async fn ack_retry_with_no_attempts_left_goes_to_dead() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let job = leased(q, 1, 1).await;
    assert_eq!(
        ack(q, &job, retry_in(Duration::ZERO)).await,
        AckResult::Applied(JobState::Dead)
    );
    let s = q.show(&job.id).await.unwrap().unwrap().summary;
    assert_eq!(
        s.last_error.as_deref(),
        Some("gave up after 1 attempt(s); last error: 503 from the registry")
    );
    assert_eq!(s.error_class.as_deref(), Some("transient"));
    assert!(score(q, "dead", &job.id).await.is_some());
    assert_eq!(score(q, "retrying", &job.id).await, None);
    assert_eq!(events(q, &job.id).await, ["dead"]);
    assert_eq!((total(q, "dead").await, total(q, "failed").await), (1, 1));
    assert_eq!(total(q, "retried").await, 0);
    // Out of attempts after transient failures: BROKEN for ATR.
    assert_eq!(
        the_result(q).await,
        (
            job.id.clone(),
            "dead".into(),
            "BROKEN".into(),
            "1".into(),
            String::new()
        )
    );
    assert_eq!(
        hget(q, "result", &job.id).await,
        None,
        "no report, none kept"
    );
}

#[tokio::test]
async fn ack_dead_goes_to_dead_with_attempts_left() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let job = leased(q, 1, 5).await;
    let outcome = AckOutcome::Dead {
        class: ErrorClass::Auth,
        message: "401 bad token".into(),
    };
    assert_eq!(
        ack_with(q, &job, outcome, REPORT).await,
        AckResult::Applied(JobState::Dead)
    );
    assert_eq!(
        the_result(q).await,
        (
            job.id.clone(),
            "dead".into(),
            "FAILED".into(),
            "1".into(),
            REPORT.into()
        )
    );
    assert_eq!(hget(q, "result", &job.id).await.as_deref(), Some(REPORT));
    assert_eq!(
        record(q, &job.id).await,
        Some(format!("dead {}", job.token))
    );
    let s = q.show(&job.id).await.unwrap().unwrap().summary;
    assert_eq!(s.error_class.as_deref(), Some("auth"));
    assert_eq!(s.last_error.as_deref(), Some("401 bad token"));
    assert_eq!(score(q, "running", &job.id).await, None);
    assert_eq!(events(q, &job.id).await, ["dead"]);
    assert_eq!(total(q, "dead").await, 1);
}

#[tokio::test]
async fn ack_cancelled_records_the_cancellation() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let job = leased(q, 1, 5).await;
    let outcome = AckOutcome::Cancelled {
        message: "stopped by the operator".into(),
    };
    assert_eq!(
        ack_with(q, &job, outcome, REPORT).await,
        AckResult::Applied(JobState::Cancelled)
    );
    assert_eq!(
        the_result(q).await,
        (
            job.id.clone(),
            "cancelled".into(),
            "FAILED".into(),
            "1".into(),
            REPORT.into()
        )
    );
    assert_eq!(hget(q, "result", &job.id).await.as_deref(), Some(REPORT));
    assert_eq!(
        record(q, &job.id).await,
        Some(format!("cancelled {}", job.token))
    );
    assert!(score(q, "cancelled", &job.id).await.is_some());
    assert_eq!(score(q, "running", &job.id).await, None);
    assert_eq!(
        hget(q, "last_error", &job.id).await.as_deref(),
        Some("stopped by the operator")
    );
    assert_eq!(events(q, &job.id).await, ["cancelled"]);
    assert_eq!(total(q, "cancelled").await, 1);
    assert_eq!(total(q, "failed").await, 0);
}

#[tokio::test]
async fn ack_defer_waits_without_spending_an_attempt() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let first = leased(q, 1, 5).await;
    ack(q, &first, retry_in(Duration::ZERO)).await;
    let second = q.fetch("w2", LEASE, 1).await.unwrap().remove(0);
    assert_eq!(second.attempt, 2);
    let before = redis_now(q).await;
    let outcome = AckOutcome::Defer {
        delay: Duration::from_secs(3600),
        message: "locked by another job".into(),
    };
    assert_eq!(
        ack(q, &second, outcome).await,
        AckResult::Applied(JobState::Retrying)
    );
    let at = score(q, "retrying", &second.id).await.unwrap() as i64;
    assert!(at >= before + 3_600_000, "{at}");
    // The record holds the previous attempt again: attempt 1, its start and worker.
    let words: Vec<&str> = second.token.split(' ').collect();
    assert_eq!(
        record(q, &second.id).await,
        Some(format!(
            "retrying {} {} {} 1 {} w2",
            words[0], words[1], words[2], words[4]
        ))
    );
    assert_eq!(events(q, &second.id).await, ["retry_scheduled", "deferred"]);
    assert!(results(q).await.is_empty(), "nothing ended");
    assert_eq!(
        (total(q, "failed").await, total(q, "retried").await),
        (1, 1)
    );
}

#[tokio::test]
async fn ack_defer_of_a_first_attempt_leaves_no_attempt_on_record() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let job = leased(q, 1, 5).await;
    let outcome = AckOutcome::Defer {
        delay: Duration::ZERO,
        message: "locked".into(),
    };
    ack(q, &job, outcome).await;
    let words: Vec<&str> = job.token.split(' ').collect();
    assert_eq!(
        record(q, &job.id).await,
        Some(format!("retrying {} {} {}", words[0], words[1], words[2]))
    );
    let again = q.fetch("w1", LEASE, 1).await.unwrap().remove(0);
    assert_eq!(again.attempt, 1);
}

#[tokio::test]
async fn ack_release_hands_the_job_back_to_the_front_uncounted() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let job = leased(q, 1, 5).await;
    let behind = q.enqueue(&jobs::stage(2), None, 5).await.unwrap();
    let outcome = AckOutcome::Release {
        message: "worker shut down".into(),
    };
    assert_eq!(
        ack(q, &job, outcome).await,
        AckResult::Applied(JobState::Queued)
    );
    assert_eq!(list(q, "queued").await, [job.id.clone(), behind.id.clone()]);
    let words: Vec<&str> = job.token.split(' ').collect();
    assert_eq!(
        record(q, &job.id).await,
        Some(format!("queued {} {} {}", words[0], words[1], words[2]))
    );
    assert!(hget(q, "queued_at", &job.id).await.is_some());
    assert_eq!(score(q, "running", &job.id).await, None);
    assert_eq!(events(q, &job.id).await, ["released"]);
    assert!(results(q).await.is_empty(), "nothing ended");
    assert_eq!(total(q, "failed").await, 0);
}

#[tokio::test]
async fn ack_clears_a_pending_cancel_request() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let done = leased(q, 1, 5).await;
    let failed = leased(q, 2, 5).await;
    let ids = [done.id.clone(), failed.id.clone()];
    assert_eq!(
        q.cancel(&ids, "stop").await.unwrap(),
        [
            AdminReply::Changed(JobState::Running),
            AdminReply::Changed(JobState::Running)
        ]
    );
    ack(q, &done, AckOutcome::Done).await;
    ack(q, &failed, retry_in(Duration::from_secs(3600))).await;
    assert_eq!(hget(q, "cancel_requested", &done.id).await, None);
    assert_eq!(hget(q, "cancel_requested", &failed.id).await, None);
}

/// An attempt that ends without honouring a cancel its worker has not heard of yet (a
/// retry, a hand-back at shutdown, a deferral) does not put the job back in line: it ends
/// cancelled, as asked. (Found by tests/props_lua.rs: the job ran again, and its worker
/// could write to the platform before its first heartbeat stopped it.)
#[tokio::test]
async fn ack_cancels_a_job_whose_cancel_is_pending_instead_of_running_it_again() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let retried = leased(q, 1, 5).await;
    let released = leased(q, 2, 5).await;
    let deferred = leased(q, 3, 5).await;
    let ids = [retried.id.clone(), released.id.clone(), deferred.id.clone()];
    q.cancel(&ids, "stop").await.unwrap();
    for (job, outcome) in [
        (&retried, retry_in(Duration::ZERO)),
        (
            &released,
            AckOutcome::Release {
                message: "shutdown".into(),
            },
        ),
        (
            &deferred,
            AckOutcome::Defer {
                delay: Duration::ZERO,
                message: "locked".into(),
            },
        ),
    ] {
        assert_eq!(
            ack(q, job, outcome).await,
            AckResult::Applied(JobState::Cancelled)
        );
        assert_eq!(state_of(q, &job.id).await, JobState::Cancelled);
        assert_eq!(hget(q, "cancel_requested", &job.id).await, None);
        assert!(score(q, "cancelled", &job.id).await.is_some());
        let message = hget(q, "last_error", &job.id).await.unwrap_or_default();
        assert!(
            message.starts_with("cancelled while its attempt ran; the attempt ended with: "),
            "{message}"
        );
        assert_eq!(events(q, &job.id).await, ["cancel_requested", "cancelled"]);
    }
    assert!(q.fetch("w2", LEASE, 10).await.unwrap().is_empty());
    assert_eq!(total(q, "cancelled").await, 3);
    assert_eq!(
        (total(q, "retried").await, total(q, "failed").await),
        (0, 0)
    );
    let ended: Vec<String> = results(q)
        .await
        .iter()
        .map(|e| format!("{} {} {}", e["state"], e["atr_status"], e["ids"]))
        .collect();
    // One entry per ack call, each naming the job it ended.
    let want: Vec<String> = ids
        .iter()
        .map(|id| format!("cancelled FAILED {id}"))
        .collect();
    assert_eq!(ended, want);
}

#[tokio::test]
async fn ack_answers_in_argument_order_with_successes_sent_first() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let a = leased(q, 1, 5).await;
    let b = leased(q, 2, 5).await;
    let c = leased(q, 3, 5).await;
    let stale = Lease {
        id: c.id.clone(),
        token: "1 1 1 1 1 nobody".into(),
    };
    let out = q
        .ack(&[
            Ack {
                lease: a.lease(),
                outcome: retry_in(Duration::from_secs(3600)),
                result: String::new(),
            },
            Ack {
                lease: stale,
                outcome: AckOutcome::Done,
                result: String::new(),
            },
            Ack {
                lease: b.lease(),
                outcome: AckOutcome::Done,
                result: REPORT.to_owned(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        out,
        [
            AckResult::Applied(JobState::Retrying),
            AckResult::Stale,
            AckResult::Applied(JobState::Done),
        ]
    );
}

// ---------------------------------------------------------------------------------------
// enqueue.lua

/// One direct call of enqueue.lua in its transaction, with `incoming` holding `envelopes`.
async fn enqueue_call(
    q: &Queue,
    envelopes: &[(&str, &str)],
    args: &[String],
) -> Result<Vec<Value>, String> {
    let s = script("enqueue");
    let mut conn = q.connection();
    let _: String = s
        .prepare_invoke()
        .load_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let incoming = format!("{}incoming", q.prefix());
    let mut pipe = redis::pipe();
    pipe.atomic().del(&incoming).ignore();
    if !envelopes.is_empty() {
        let hset = pipe.cmd("HSET").arg(&incoming);
        for (id, env) in envelopes {
            hset.arg(*id).arg(*env);
        }
        hset.ignore();
    }
    let eval = pipe
        .cmd("EVALSHA")
        .arg(s.get_hash())
        .arg(1)
        .arg(format!("{}queued", q.prefix()))
        .arg(q.prefix());
    for a in args {
        eval.arg(a);
    }
    let out: redis::RedisResult<(Vec<Value>,)> = pipe.query_async(&mut conn).await;
    out.map(|(v,)| v).map_err(|e| e.to_string())
}

/// The refusal of an enqueue.lua call, which must leave `incoming` deleted and no job.
async fn refused(q: &Queue, envelopes: &[(&str, &str)], args: &[&str]) -> String {
    let err = enqueue_call(q, envelopes, &strings(args))
        .await
        .unwrap_err();
    assert!(!exists(q, "incoming").await, "incoming is deleted: {err}");
    assert!(!exists(q, "jobs").await, "no job was created: {err}");
    err
}

#[tokio::test]
async fn enqueue_refuses_a_queue_in_another_wire_format() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let _: () = q
        .connection()
        .set(format!("{}format", q.prefix()), "4")
        .await
        .unwrap();
    let err = refused(q, &[("a", "{}")], &["0", "3", "a", "k"]).await;
    assert!(
        err.contains("wire format 4") && err.contains("queue migrate"),
        "{err}"
    );
}

#[tokio::test]
async fn enqueue_refuses_a_bad_run_at_or_max_attempts() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    // Not numbers, not whole, out of range, or not finite (Lua reads "inf" and "1e309" as
    // infinity, "nan" as not a number).
    for (run_at, max) in [
        ("soon", "3"),
        ("0", "0"),
        ("0", "1.5"),
        ("0", "x"),
        ("inf", "3"),
        ("1e309", "3"),
        ("nan", "3"),
        ("0", "inf"),
        ("0", "4294967296"),
    ] {
        let err = refused(q, &[("a", "{}")], &[run_at, max, "a", "k"]).await;
        assert!(
            err.contains("max_attempts a whole number from 1 to 4294967295"),
            "{run_at} {max}: {err}"
        );
    }
    assert!(t.keys().await.is_empty(), "a refused call writes nothing");
}

#[tokio::test]
async fn enqueue_refuses_arguments_not_in_pairs() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let err = refused(q, &[("a", "{}")], &["0", "3", "a"]).await;
    assert!(err.contains("must come in pairs"), "{err}");
}

#[tokio::test]
async fn enqueue_refuses_more_than_1000_jobs() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let mut args = vec!["0".to_owned(), "3".to_owned()];
    for i in 0..1001 {
        args.push(format!("id-{i}"));
        args.push(format!("key-{i}"));
    }
    let err = enqueue_call(q, &[("id-0", "{}")], &args).await.unwrap_err();
    assert!(err.contains("at most 1000 jobs"), "{err}");
    assert!(!exists(q, "incoming").await);
}

#[tokio::test]
async fn enqueue_refuses_a_call_whose_envelopes_do_not_match_its_jobs_in_number() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let err = refused(q, &[], &["0", "3", "a", "k"]).await;
    assert!(err.contains("1 job(s) but 0 envelope(s)"), "{err}");
    let err = refused(q, &[("a", "{}"), ("b", "{}")], &["0", "3", "a", "k"]).await;
    assert!(err.contains("1 job(s) but 2 envelope(s)"), "{err}");
}

#[tokio::test]
async fn enqueue_of_no_jobs_answers_nothing_and_sets_no_format() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let out = enqueue_call(q, &[], &strings(&["0", "3"])).await.unwrap();
    assert!(out.is_empty());
    assert!(t.keys().await.is_empty(), "{:?}", t.keys().await);
}

#[tokio::test]
async fn enqueue_refuses_an_empty_id_or_key() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let err = refused(q, &[("a", "{}")], &["0", "3", "a", ""]).await;
    assert!(err.contains("must not be empty"), "{err}");
    let err = refused(q, &[("", "{}")], &["0", "3", "", "k"]).await;
    assert!(err.contains("must not be empty"), "{err}");
}

#[tokio::test]
async fn enqueue_refuses_a_job_without_its_envelope_or_with_a_repeated_id() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let err = refused(
        q,
        &[("a", "{}"), ("b", "{}")],
        &["0", "3", "a", "k1", "c", "k2"],
    )
    .await;
    assert!(err.contains("no envelope for job c"), "{err}");
    let err = refused(
        q,
        &[("a", "{}"), ("b", "{}")],
        &["0", "3", "a", "k1", "a", "k2"],
    )
    .await;
    assert!(
        err.contains("no envelope for job a, or the id is repeated"),
        "{err}"
    );
}

#[tokio::test]
async fn enqueue_refuses_a_queue_without_a_format_key_that_holds_jobs() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let _: () = q
        .connection()
        .zadd(format!("{}dead", q.prefix()), "old-job", 1)
        .await
        .unwrap();
    let err = enqueue_call(q, &[("a", "{}")], &strings(&["0", "3", "a", "k"]))
        .await
        .unwrap_err();
    assert!(err.contains("wire format 1"), "{err}");
    assert!(!exists(q, "incoming").await);
    assert!(!exists(q, "format").await);
}

#[tokio::test]
async fn enqueue_sets_the_format_of_a_new_queue() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    q.enqueue(&jobs::stage(1), None, 3).await.unwrap();
    let format: String = q
        .connection()
        .get(format!("{}format", q.prefix()))
        .await
        .unwrap();
    assert_eq!(format, "7");
}

#[tokio::test]
async fn enqueue_returns_the_job_a_key_already_names() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let env = jobs::stage(1);
    let first = q.enqueue(&env, None, 3).await.unwrap();
    let mut again = jobs::stage(1);
    again.id = atr_dist_shared::JobId::new_v7();
    let out = q.enqueue(&again, None, 3).await.unwrap();
    assert_eq!((out.id.as_str(), out.created), (first.id.as_str(), false));
    assert_eq!(record(q, &again.id.to_string()).await, None);
    assert!(!exists(q, "incoming").await);
    assert_eq!(count(q, JobState::Queued).await, 1);
    assert_eq!(total(q, "enqueued").await, 1);
}

#[tokio::test]
async fn enqueue_treats_a_key_whose_job_is_gone_as_free() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    // A malformed job: purge cannot read its key from its envelope, and leaves it behind.
    let key = "stage:pkg-1";
    let raw = RawJob {
        id: uuid::Uuid::now_v7().to_string(),
        idempotency_key: key.to_owned(),
        envelope: "{not json".to_owned(),
        run_at: None,
        max_attempts: 3,
    };
    let gone = q.enqueue_raw(&[raw]).await.unwrap().remove(0);
    let job = q.fetch("w1", LEASE, 1).await.unwrap().remove(0);
    let outcome = AckOutcome::Dead {
        class: ErrorClass::Malformed,
        message: "envelope is not valid JSON".into(),
    };
    ack(q, &job, outcome).await;
    assert_eq!(q.purge(JobState::Dead, Duration::ZERO).await.unwrap(), 1);
    assert_eq!(hget(q, "idempotency", key).await, Some(gone.id.clone()));

    // `jobs::stage(1)` has that key.
    let env = jobs::stage(1);
    let out = q.enqueue(&env, None, 3).await.unwrap();
    assert_eq!((out.id, out.created), (env.id.to_string(), true));
    assert_eq!(hget(q, "idempotency", key).await, Some(env.id.to_string()));
    assert_eq!(state_of(q, &env.id.to_string()).await, JobState::Queued);
}

#[tokio::test]
async fn enqueue_gives_a_key_claimed_earlier_in_the_same_call_to_that_job() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let first = jobs::stage(1);
    let mut twin = jobs::stage(1);
    twin.id = atr_dist_shared::JobId::new_v7();
    let out = q
        .enqueue_bulk(&[first.clone(), twin.clone()], None, 3)
        .await
        .unwrap();
    assert_eq!(
        out.iter()
            .map(|e| (e.id.clone(), e.created))
            .collect::<Vec<_>>(),
        [(first.id.to_string(), true), (first.id.to_string(), false)]
    );
    assert_eq!(record(q, &twin.id.to_string()).await, None);
}

#[tokio::test]
async fn enqueue_refuses_an_id_taken_under_another_key() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let env = jobs::stage(1);
    q.enqueue_bulk(&[env.clone(), jobs::stage(9)], None, 3)
        .await
        .unwrap();
    let batches: String = q
        .connection()
        .get(format!("{}batches", q.prefix()))
        .await
        .unwrap();
    assert_eq!(batches, "1");
    let mut clash = jobs::stage(2);
    clash.id = env.id;
    let err = q.enqueue(&clash, None, 3).await.unwrap_err().to_string();
    assert!(err.contains("another idempotency key"), "{err}");
    let out = enqueue_call(
        q,
        &[(&env.id.to_string(), "{}")],
        &strings(&["0", "3", &env.id.to_string(), "other-key"]),
    )
    .await
    .unwrap();
    let status: i64 = redis::from_redis_value_ref(&out[1]).unwrap();
    assert_eq!(status, -1);
    let batch = record(q, &env.id.to_string()).await.unwrap();
    let batch = batch.split(' ').nth(3).unwrap();
    let kept: Option<String> = hget(q, &format!("env:{batch}"), &env.id.to_string()).await;
    assert_eq!(kept, Some(env.to_json()), "the job's envelope is untouched");
    let after: String = q
        .connection()
        .get(format!("{}batches", q.prefix()))
        .await
        .unwrap();
    assert_eq!(after, batches, "a call that creates nothing takes no batch");
    assert_eq!(hget(q, "idempotency", "other-key").await, None);
}

#[tokio::test]
async fn enqueue_that_creates_nothing_takes_no_batch_and_keeps_no_envelopes() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let env = jobs::stage(1);
    q.enqueue_bulk(&[env.clone(), jobs::stage(2)], None, 3)
        .await
        .unwrap();
    let keys_before = t.keys().await;
    let mut again = jobs::stage(1);
    again.id = atr_dist_shared::JobId::new_v7();
    assert!(!q.enqueue(&again, None, 3).await.unwrap().created);
    let mut keys_after = t.keys().await;
    let mut keys_before = keys_before;
    keys_before.sort();
    keys_after.sort();
    assert_eq!(keys_after, keys_before);
    let batches: String = q
        .connection()
        .get(format!("{}batches", q.prefix()))
        .await
        .unwrap();
    assert_eq!(batches, "1");
}

/// Enqueues job 1 alone, then, in one call, a duplicate of it (its key under a new id)
/// followed by `fresh`, and checks that only `fresh` were created. Returns job 1.
async fn enqueue_after_a_duplicate(q: &Queue, fresh: &[Envelope]) -> Envelope {
    let old = jobs::stage(1);
    q.enqueue(&old, None, 3).await.unwrap();
    let mut dup = jobs::stage(1);
    dup.id = atr_dist_shared::JobId::new_v7();
    let call: Vec<Envelope> = std::iter::once(dup).chain(fresh.iter().cloned()).collect();
    let out = q.enqueue_bulk(&call, None, 3).await.unwrap();
    let created: Vec<bool> = out.iter().map(|e| e.created).collect();
    let expected: Vec<bool> = call.iter().enumerate().map(|(i, _)| i > 0).collect();
    assert_eq!(created, expected);
    old
}

#[tokio::test]
async fn enqueue_keeps_only_the_envelopes_of_the_jobs_it_created() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let new = jobs::stage(2);
    let newer = jobs::stage(3);
    enqueue_after_a_duplicate(q, &[new.clone(), newer.clone()]).await;
    // The first call created one job (batch 0, shared); this one is batch 1, its own.
    let mut fields: Vec<String> = q
        .connection()
        .hkeys(format!("{}env:1", q.prefix()))
        .await
        .unwrap();
    fields.sort();
    let mut expected = [new.id.to_string(), newer.id.to_string()];
    expected.sort();
    assert_eq!(fields, expected);
    assert_eq!(
        record(q, &new.id.to_string())
            .await
            .unwrap()
            .split(' ')
            .nth(3),
        Some("1")
    );
    assert_eq!(total(q, "enqueued").await, 3);
}

#[tokio::test]
async fn enqueue_that_creates_one_job_adds_its_envelope_to_the_shared_batch_0() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    // One job created of two sent: only the created job's envelope is kept, in batch 0.
    let new = jobs::stage(2);
    let old = enqueue_after_a_duplicate(q, std::slice::from_ref(&new)).await;
    let kept: std::collections::BTreeMap<String, String> = q
        .connection()
        .hgetall(format!("{}env:0", q.prefix()))
        .await
        .unwrap();
    assert_eq!(
        kept,
        [
            (old.id.to_string(), old.to_json()),
            (new.id.to_string(), new.to_json())
        ]
        .into_iter()
        .collect()
    );
    for id in [&old.id, &new.id] {
        let record = record(q, &id.to_string()).await.unwrap();
        assert_eq!(record.split(' ').nth(3), Some("0"), "{record}");
    }
    // No batch number is taken, and nothing else is left behind.
    let mut keys = t.keys().await;
    keys.sort();
    for key in ["batches", "env:1", "incoming"] {
        assert!(!keys.iter().any(|k| k.ends_with(key)), "{key} in {keys:?}");
    }
    // The worker reads such a job's envelope from batch 0.
    let got = q
        .fetch("w1", std::time::Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    for job in &got {
        let expected = if job.id == old.id.to_string() {
            &old
        } else {
            &new
        };
        assert_eq!(job.envelope, expected.to_json().into_bytes());
        assert_eq!(job.mismatch, None);
    }
}

#[tokio::test]
async fn enqueue_schedules_a_job_whose_run_at_is_ahead_of_redis_clock() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let run_at = redis_now(q).await + 3_600_000;
    let out = enqueue_call(
        q,
        &[("a", "{}"), ("b", "{}")],
        &strings(&[&run_at.to_string(), "3", "a", "ka", "b", "kb"]),
    )
    .await
    .unwrap();
    assert_eq!(out.len(), 4);
    assert_eq!(score(q, "scheduled", "a").await, Some(run_at as f64));
    assert_eq!(score(q, "scheduled", "b").await, Some(run_at as f64));
    assert!(list(q, "queued").await.is_empty());
    assert!(record(q, "a").await.unwrap().starts_with("scheduled 3 "));
}

#[tokio::test]
async fn enqueue_queues_a_job_whose_run_at_has_passed() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let run_at = redis_now(q).await - 1;
    enqueue_call(
        q,
        &[("a", "{}"), ("b", "{}")],
        &strings(&[&run_at.to_string(), "3", "a", "ka", "b", "kb"]),
    )
    .await
    .unwrap();
    assert_eq!(list(q, "queued").await, ["a", "b"]);
    assert!(!exists(q, "scheduled").await);
    let rec = record(q, "a").await.unwrap();
    let words: Vec<&str> = rec.split(' ').collect();
    assert_eq!((words[0], words[1], words[3]), ("queued", "3", "1"));
    assert_eq!(words.len(), 4, "{rec}");
}

// ---------------------------------------------------------------------------------------
// retry.lua

#[tokio::test]
async fn retry_of_an_unknown_job_is_not_found() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    assert_eq!(
        q.retry(&["nope".to_owned()], "again").await.unwrap(),
        [AdminReply::NotFound]
    );
    assert!(t.keys().await.is_empty());
}

#[tokio::test]
async fn retry_queues_a_dead_job_with_fresh_attempts() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let job = dead_job(q, 1).await;
    let ahead = q.enqueue(&jobs::stage(2), None, 3).await.unwrap();
    assert_eq!(
        q.retry(std::slice::from_ref(&job.id), "operator retry")
            .await
            .unwrap(),
        [AdminReply::Changed(JobState::Queued)]
    );
    let words: Vec<&str> = job.token.split(' ').collect();
    assert_eq!(
        record(q, &job.id).await,
        Some(format!("queued {} {} {}", words[0], words[1], words[2]))
    );
    assert_eq!(score(q, "dead", &job.id).await, None);
    assert_eq!(list(q, "queued").await, [ahead.id.clone(), job.id.clone()]);
    assert!(hget(q, "queued_at", &job.id).await.is_some());
    assert_eq!(
        hget(q, "last_error", &job.id).await.as_deref(),
        Some("404"),
        "the last error stays on view"
    );
    assert_eq!(
        hget(q, "result", &job.id).await,
        None,
        "its earlier end is no longer its result"
    );
    assert_eq!(results(q).await.len(), 1, "a retry ends nothing");
    let s = q.show(&job.id).await.unwrap().unwrap();
    assert_eq!(s.events.last().unwrap().event, "retried");
    assert_eq!(
        s.events.last().unwrap().message.as_deref(),
        Some("operator retry")
    );
    q.fetch("w1", LEASE, 1).await.unwrap();
    let again = q.fetch("w1", LEASE, 1).await.unwrap().remove(0);
    assert_eq!((again.id.as_str(), again.attempt), (job.id.as_str(), 1));
}

#[tokio::test]
async fn retry_queues_a_cancelled_job_and_drops_its_cancel_request() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let e = q.enqueue(&jobs::stage(1), None, 3).await.unwrap();
    q.cancel(std::slice::from_ref(&e.id), "not now")
        .await
        .unwrap();
    // A request left over from when it ran.
    let _: () = q
        .connection()
        .hset(format!("{}cancel_requested", q.prefix()), &e.id, "1")
        .await
        .unwrap();
    assert_eq!(
        q.retry(std::slice::from_ref(&e.id), "now").await.unwrap(),
        [AdminReply::Changed(JobState::Queued)]
    );
    assert_eq!(score(q, "cancelled", &e.id).await, None);
    assert_eq!(hget(q, "cancel_requested", &e.id).await, None);
    assert_eq!(state_of(q, &e.id).await, JobState::Queued);
    assert_eq!(list(q, "queued").await, [e.id.as_str()]);
}

#[tokio::test]
async fn retry_leaves_jobs_that_are_not_finished_or_are_done_alone() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let done = done_job(q, 1).await;
    let running = leased(q, 2, 3).await;
    let queued = q.enqueue(&jobs::stage(3), None, 3).await.unwrap();
    let ids = [done.id.clone(), running.id.clone(), queued.id.clone()];
    let mut before = Vec::new();
    for id in &ids {
        before.push((record(q, id).await, events(q, id).await));
    }
    assert_eq!(
        q.retry(&ids, "again").await.unwrap(),
        [
            AdminReply::Refused(JobState::Done),
            AdminReply::Unchanged(JobState::Running),
            AdminReply::Unchanged(JobState::Queued)
        ]
    );
    let mut after = Vec::new();
    for id in &ids {
        after.push((record(q, id).await, events(q, id).await));
    }
    assert_eq!(after, before);
    assert_eq!(list(q, "queued").await, [queued.id.as_str()]);
}

// ---------------------------------------------------------------------------------------
// cancel.lua

#[tokio::test]
async fn cancel_of_an_unknown_job_is_not_found() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    assert_eq!(
        q.cancel(&["nope".to_owned()], "stop").await.unwrap(),
        [AdminReply::NotFound]
    );
    assert!(t.keys().await.is_empty());
}

/// Whether `jobs show` says a cancel was requested for job `id`.
async fn cancel_requested(q: &Queue, id: &str) -> bool {
    q.show(id).await.unwrap().unwrap().summary.cancel_requested
}

#[tokio::test]
async fn cancel_of_a_running_job_asks_its_worker() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let job = leased(q, 1, 3).await;
    assert!(!cancel_requested(q, &job.id).await);
    assert_eq!(
        q.cancel(std::slice::from_ref(&job.id), "stop")
            .await
            .unwrap(),
        [AdminReply::Changed(JobState::Running)]
    );
    assert_eq!(state_of(q, &job.id).await, JobState::Running);
    assert!(cancel_requested(q, &job.id).await, "`jobs show` says so");
    assert_eq!(
        hget(q, "cancel_requested", &job.id).await.as_deref(),
        Some("1")
    );
    let hb = q.heartbeat("w1", LEASE, &[job.lease()]).await.unwrap();
    assert_eq!(hb.cancel, [job.id.as_str()]);
    assert_eq!(events(q, &job.id).await, ["cancel_requested"]);
    assert_eq!(total(q, "cancelled").await, 0);
    assert!(results(q).await.is_empty(), "it ends when its worker acks");
    // Asked again while the request is pending: nothing to do, and no second event.
    assert_eq!(
        q.cancel(std::slice::from_ref(&job.id), "stop, really")
            .await
            .unwrap(),
        [AdminReply::Unchanged(JobState::Running)]
    );
    assert_eq!(events(q, &job.id).await, ["cancel_requested"]);
}

#[tokio::test]
async fn cancel_of_a_queued_job_takes_it_out_of_the_list() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let a = q.enqueue(&jobs::stage(1), None, 3).await.unwrap();
    let b = q.enqueue(&jobs::stage(2), None, 3).await.unwrap();
    // `a` was queued again after a release, so it has a `queued_at`.
    let _: () = q
        .connection()
        .hset(format!("{}queued_at", q.prefix()), &a.id, 1)
        .await
        .unwrap();
    let before = record(q, &a.id).await.unwrap();
    assert_eq!(
        q.cancel(std::slice::from_ref(&a.id), "not needed")
            .await
            .unwrap(),
        [AdminReply::Changed(JobState::Cancelled)]
    );
    assert_eq!(list(q, "queued").await, [b.id.as_str()]);
    assert_eq!(hget(q, "queued_at", &a.id).await, None);
    assert_eq!(
        record(q, &a.id).await,
        Some(before.replacen("queued", "cancelled", 1))
    );
    assert!(score(q, "cancelled", &a.id).await.is_some());
    assert_eq!(
        hget(q, "last_error", &a.id).await.as_deref(),
        Some("not needed")
    );
    assert_eq!(events(q, &a.id).await, ["cancelled"]);
    assert_eq!(total(q, "cancelled").await, 1);
    assert_eq!(
        the_result(q).await,
        (
            a.id.clone(),
            "cancelled".into(),
            "FAILED".into(),
            "0".into(),
            String::new()
        )
    );
}

#[tokio::test]
async fn cancel_of_a_scheduled_job_takes_it_out_of_scheduled() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let e = q.enqueue(&jobs::stage(1), Some(later), 3).await.unwrap();
    assert_eq!(
        q.cancel(std::slice::from_ref(&e.id), "stop").await.unwrap(),
        [AdminReply::Changed(JobState::Cancelled)]
    );
    assert_eq!(score(q, "scheduled", &e.id).await, None);
    assert!(score(q, "cancelled", &e.id).await.is_some());
    assert!(record(q, &e.id).await.unwrap().starts_with("cancelled 3 "));
    assert_eq!(total(q, "cancelled").await, 1);
}

#[tokio::test]
async fn cancel_of_a_retrying_job_takes_it_out_of_retrying() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let job = leased(q, 1, 3).await;
    ack(q, &job, retry_in(Duration::from_secs(3600))).await;
    assert_eq!(
        q.cancel(std::slice::from_ref(&job.id), "stop")
            .await
            .unwrap(),
        [AdminReply::Changed(JobState::Cancelled)]
    );
    assert_eq!(score(q, "retrying", &job.id).await, None);
    assert_eq!(
        record(q, &job.id).await,
        Some(format!("cancelled {}", job.token))
    );
    assert_eq!(
        the_result(q).await,
        (
            job.id.clone(),
            "cancelled".into(),
            "FAILED".into(),
            "1".into(),
            String::new()
        )
    );
    assert!(q.fetch("w1", LEASE, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn cancel_of_a_finished_job_says_its_state_and_changes_nothing() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let done = done_job(q, 1).await;
    let dead = dead_job(q, 2).await;
    let cancelled = q.enqueue(&jobs::stage(3), None, 3).await.unwrap();
    q.cancel(std::slice::from_ref(&cancelled.id), "stop")
        .await
        .unwrap();
    let ids = [done.id.clone(), dead.id.clone(), cancelled.id.clone()];
    let reported = results(q).await.len();
    let mut before = Vec::new();
    for id in &ids {
        before.push((record(q, id).await, events(q, id).await));
    }
    assert_eq!(
        q.cancel(&ids, "stop again").await.unwrap(),
        [
            AdminReply::Refused(JobState::Done),
            AdminReply::Refused(JobState::Dead),
            AdminReply::Unchanged(JobState::Cancelled)
        ]
    );
    for (id, was) in ids.iter().zip(before) {
        assert_eq!((record(q, id).await, events(q, id).await), was, "{id}");
    }
    assert_eq!(
        hget(q, "last_error", &cancelled.id).await.as_deref(),
        Some("stop")
    );
    assert_eq!(total(q, "cancelled").await, 1);
    assert_eq!(results(q).await.len(), reported, "no end reported twice");
}

// ---------------------------------------------------------------------------------------
// purge.lua

#[tokio::test]
async fn purge_refuses_a_state_that_is_not_finished() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let err = call::<u64>(q, "purge", &strings(&["queued", "0", "10"]))
        .await
        .unwrap_err();
    assert!(err.contains("only done, dead or cancelled"), "{err}");
}

#[tokio::test]
async fn purge_refuses_a_limit_outside_1_to_1000() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    for limit in ["0", "1001", "x"] {
        let err = call::<u64>(q, "purge", &strings(&["dead", "0", limit]))
            .await
            .unwrap_err();
        assert!(err.contains("limit must be 1 to 1000"), "{limit}: {err}");
    }
}

/// A fetch with arguments no worker of ours sends is refused before it writes anything:
/// it used to pop jobs off `queued` and then fail on a lease that was not a number, leaving
/// them in no list at all (found by tests/props_lua.rs).
#[tokio::test]
async fn fetch_refuses_arguments_that_would_lose_jobs() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let e = q.enqueue(&jobs::stage(1), None, 3).await.unwrap();
    for args in [
        ["w1", "soon", "1", "0"],
        ["w1", "inf", "1", "0"],
        ["w1", "nan", "1", "0"],
        ["w1", "-1", "1", "0"],
        ["w1", "1000", "0", "0"],
        ["w1", "1000", "1001", "0"],
        ["w1", "1000", "1.5", "0"],
        ["w1", "1000", "x", "0"],
        ["w1", "1000", "1", "-5"],
        ["w1", "1000", "1", "1e309"],
        ["two words", "1000", "1", "0"],
        ["", "1000", "1", "0"],
    ] {
        let err = call::<Value>(q, "fetch", &strings(&args))
            .await
            .unwrap_err();
        assert!(
            err.contains("atr-dist fetch: expected worker_id"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(list(q, "queued").await, [e.id.as_str()]);
    assert_eq!(state_of(q, &e.id).await, JobState::Queued);
}

/// A heartbeat whose lease is not a finite number of ms would give the leases it renews an
/// expiry of +inf (never recovered) or fail half-way: it is refused and changes nothing.
#[tokio::test]
async fn heartbeat_refuses_a_lease_that_is_not_a_finite_number() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let job = leased(q, 1, 3).await;
    let before = score(q, "running", &job.id).await;
    for (worker, lease) in [
        ("w1", "inf"),
        ("w1", "nan"),
        ("w1", "x"),
        ("w1", "-1"),
        ("a b", "1000"),
    ] {
        let err = call::<Value>(
            q,
            "heartbeat",
            &strings(&[worker, lease, &job.id, &job.token]),
        )
        .await
        .unwrap_err();
        assert!(
            err.contains("expected worker_id (no spaces) and lease_ms"),
            "{lease}: {err}"
        );
    }
    assert_eq!(score(q, "running", &job.id).await, before);
}

/// An ack whose delay is not a finite number of ms >= 0 is refused before any job of the
/// call is written: `inf` used to put the job in `retrying` for ever, `nan` to fail after
/// its record said `retrying` and before `retrying` held it.
#[tokio::test]
async fn ack_refuses_a_delay_that_is_not_a_finite_number() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let first = leased(q, 1, 3).await;
    let second = leased(q, 2, 3).await;
    for delay in ["inf", "1e309", "nan", "-1", "soon"] {
        let args = [
            "0",
            &first.id,
            &first.token,
            "retry",
            "0",
            "transient",
            "503",
            "",
            &second.id,
            &second.token,
            "retry",
            delay,
            "transient",
            "503",
            "",
        ];
        let err = call::<Value>(q, "ack", &strings(&args)).await.unwrap_err();
        assert!(
            err.contains("delay_ms must be a number >= 0"),
            "{delay}: {err}"
        );
    }
    for job in [&first, &second] {
        assert_eq!(
            record(q, &job.id).await,
            Some(format!("running {}", job.token))
        );
    }
    assert_eq!(total(q, "retried").await, 0);
    // A fraction of a success is not a count either.
    let err = call::<Value>(q, "ack", &strings(&["0.5", &first.id, &first.token, ""]))
        .await
        .unwrap_err();
    assert!(err.contains("expected n_done"), "{err}");
}

/// `purge.lua` deletes at most 1000 jobs a call (`LIMIT` in `Queue::purge`); `purge` calls
/// it again until a call deletes fewer, so 1001 done jobs all go in one purge.
#[tokio::test]
async fn purge_deletes_more_than_one_call_takes() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let all: Vec<Envelope> = (0..1001).map(jobs::stage).collect();
    q.enqueue_bulk(&all, None, 3).await.unwrap();
    finish(q, all.len()).await;
    assert_eq!(count(q, JobState::Done).await, 1001);
    assert_eq!(q.purge(JobState::Done, Duration::ZERO).await.unwrap(), 1001);
    assert_eq!(count(q, JobState::Done).await, 0);
}

#[tokio::test]
async fn purge_of_an_empty_done_list_deletes_nothing() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    assert_eq!(q.purge(JobState::Done, Duration::ZERO).await.unwrap(), 0);
    assert!(t.keys().await.is_empty());
}

/// Sets when a done job finished: the last word of its record.
async fn finished_at(q: &Queue, id: &str, ms: i64) {
    let rec = record(q, id).await.unwrap();
    let (head, _) = rec.rsplit_once(' ').unwrap();
    let _: () = q
        .connection()
        .hset(format!("{}jobs", q.prefix()), id, format!("{head} {ms}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn purge_takes_done_jobs_from_the_head_until_one_is_too_young() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let jobs: Vec<Leased> = {
        let mut v = Vec::new();
        for n in 1..=4 {
            v.push(done_job(q, n).await);
        }
        v
    };
    let now = redis_now(q).await;
    let hour = 3_600_000;
    // Finished in list order, except the last one, stamped old although behind a young one.
    finished_at(q, &jobs[0].id, now - 3 * hour).await;
    finished_at(q, &jobs[1].id, now - 2 * hour).await;
    finished_at(q, &jobs[3].id, now - 3 * hour).await;
    let purged = q
        .purge(JobState::Done, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(purged, 2);
    assert_eq!(
        list(q, "done").await,
        [jobs[2].id.clone(), jobs[3].id.clone()]
    );
    assert_eq!(record(q, &jobs[0].id).await, None);
    assert!(record(q, &jobs[2].id).await.is_some());
}

#[tokio::test]
async fn purge_of_done_jobs_that_are_all_too_young_deletes_nothing() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let job = done_job(q, 1).await;
    assert_eq!(
        q.purge(JobState::Done, Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(list(q, "done").await, [job.id.as_str()]);
    assert!(record(q, &job.id).await.is_some());
}

#[tokio::test]
async fn purge_takes_a_done_entry_without_a_record_too() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let job = done_job(q, 1).await;
    let _: () = q
        .connection()
        .lpush(format!("{}done", q.prefix()), "ghost")
        .await
        .unwrap();
    assert_eq!(
        q.purge(JobState::Done, Duration::from_secs(3600))
            .await
            .unwrap(),
        1
    );
    assert_eq!(list(q, "done").await, [job.id.as_str()]);
}

#[tokio::test]
async fn purge_takes_dead_and_cancelled_jobs_older_than_the_cutoff() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let old = dead_job(q, 1).await;
    let young = dead_job(q, 2).await;
    let cancelled = q.enqueue(&jobs::stage(3), None, 3).await.unwrap();
    q.cancel(std::slice::from_ref(&cancelled.id), "stop")
        .await
        .unwrap();
    let now = redis_now(q).await;
    let mut conn = q.connection();
    for (set, id) in [("dead", &old.id), ("cancelled", &cancelled.id)] {
        let _: () = conn
            .zadd(format!("{}{set}", q.prefix()), id, now - 7_200_000)
            .await
            .unwrap();
    }
    let hour = Duration::from_secs(3600);
    assert_eq!(q.purge(JobState::Dead, hour).await.unwrap(), 1);
    assert_eq!(q.purge(JobState::Cancelled, hour).await.unwrap(), 1);
    assert_eq!(record(q, &old.id).await, None);
    assert_eq!(record(q, &cancelled.id).await, None);
    assert!(score(q, "dead", &young.id).await.is_some());
    assert_eq!(q.purge(JobState::Dead, hour).await.unwrap(), 0);
    assert_eq!(q.purge(JobState::Cancelled, hour).await.unwrap(), 0);
}

#[tokio::test]
async fn purge_deletes_every_trace_of_a_job_and_frees_its_key() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let job = leased(q, 1, 5).await;
    ack(q, &job, retry_in(Duration::ZERO)).await;
    let again = q.fetch("w1", LEASE, 1).await.unwrap().remove(0);
    q.cancel(std::slice::from_ref(&job.id), "stop")
        .await
        .unwrap();
    let outcome = AckOutcome::Dead {
        class: ErrorClass::Permanent,
        message: "gone".into(),
    };
    ack_with(q, &again, outcome, REPORT).await;
    assert!(exists(q, "result").await);
    // A cancel request left behind (acks clear theirs).
    let _: () = q
        .connection()
        .hset(format!("{}cancel_requested", q.prefix()), &job.id, "1")
        .await
        .unwrap();
    assert_eq!(q.purge(JobState::Dead, Duration::ZERO).await.unwrap(), 1);
    let left: Vec<String> = t
        .keys()
        .await
        .into_iter()
        .filter(|k| {
            !["format", "batches", "stats", "running", "results"]
                .iter()
                .any(|s| k.ends_with(&format!(":{s}")))
                && !k.contains(":tp:")
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let running: Vec<String> = q
        .connection()
        .zrange(format!("{}running", q.prefix()), 0, -1)
        .await
        .unwrap();
    assert_eq!(running, [KEEPER]);
    // Its key is free: the same job can be enqueued again.
    let env = jobs::stage(1);
    assert!(q.enqueue(&env, None, 3).await.unwrap().created);
}

#[tokio::test]
async fn purge_leaves_a_key_that_names_another_job() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let dead = dead_job(q, 1).await;
    // The dead job's key names another job now.
    let other = q.enqueue(&jobs::stage(2), None, 3).await.unwrap();
    let _: () = q
        .connection()
        .hset(
            format!("{}idempotency", q.prefix()),
            "stage:pkg-1",
            &other.id,
        )
        .await
        .unwrap();
    assert_eq!(q.purge(JobState::Dead, Duration::ZERO).await.unwrap(), 1);
    assert_eq!(record(q, &dead.id).await, None);
    assert_eq!(
        hget(q, "idempotency", "stage:pkg-1").await,
        Some(other.id.clone())
    );
}

#[tokio::test]
async fn purge_leaves_the_key_of_a_job_whose_envelope_is_not_json() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let raw = RawJob {
        id: uuid::Uuid::now_v7().to_string(),
        idempotency_key: "broken".to_owned(),
        envelope: "[1, 2".to_owned(),
        run_at: None,
        max_attempts: 3,
    };
    let e = q.enqueue_raw(&[raw]).await.unwrap().remove(0);
    let job = q.fetch("w1", LEASE, 1).await.unwrap().remove(0);
    let outcome = AckOutcome::Dead {
        class: ErrorClass::Malformed,
        message: "not JSON".into(),
    };
    ack(q, &job, outcome).await;
    assert_eq!(q.purge(JobState::Dead, Duration::ZERO).await.unwrap(), 1);
    assert_eq!(record(q, &e.id).await, None);
    assert_eq!(hget(q, "idempotency", "broken").await, Some(e.id));
}

#[tokio::test]
async fn purge_deletes_at_most_limit_jobs_per_call() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    for n in 1..=3 {
        dead_job(q, n).await;
    }
    let n: u64 = call(q, "purge", &strings(&["dead", "0", "2"]))
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(count(q, JobState::Dead).await, 1);
    let n: u64 = call(q, "purge", &strings(&["dead", "0", "2"]))
        .await
        .unwrap();
    assert_eq!(n, 1);
}

// ---------------------------------------------------------------------------------------
// lock.lua

const LOCK: &str = "example-1.0.0|NPM||pkg|1.0.0";

fn attempt(id: &str, n: u32, worker: &str) -> Lease {
    Lease {
        id: id.to_owned(),
        token: format!("3 1764300000000 1 {n} 1764300001000 {worker}"),
    }
}

fn owner(lease: &Lease) -> String {
    format!("{} {}", lease.id, lease.token)
}

async fn lock_value(q: &Queue) -> Option<String> {
    q.connection().get(q.lock_key(LOCK)).await.unwrap()
}

async fn lock_pttl(q: &Queue) -> i64 {
    q.connection().pttl(q.lock_key(LOCK)).await.unwrap()
}

/// lock.lua as docs/wire-format.md gives it: the lock's own key, then op, owner, ttl_ms.
async fn lock_call<T: redis::FromRedisValue>(q: &Queue, args: &[String]) -> Result<T, String> {
    let s = script("lock");
    let mut inv = s.key(q.lock_key(LOCK));
    for a in args {
        inv.arg(a);
    }
    inv.invoke_async(&mut q.connection())
        .await
        .map_err(|e| e.to_string())
}

async fn lock_op(q: &Queue, op: &str, lease: &Lease, ttl_ms: u64) -> (i64, String) {
    lock_call(q, &[op.to_owned(), owner(lease), ttl_ms.to_string()])
        .await
        .unwrap()
}

#[tokio::test]
async fn lock_acquire_takes_a_free_lock_for_the_attempt() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let a = attempt("job-a", 1, "w1");
    let guard = q
        .try_lock(LOCK, &a, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("free");
    assert_eq!(lock_value(q).await, Some(owner(&a)));
    let ttl = lock_pttl(q).await;
    assert!((1..=30_000).contains(&ttl), "{ttl}");
    guard.release().await;
}

#[tokio::test]
async fn lock_acquire_by_its_holder_again_extends_it() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let a = attempt("job-a", 1, "w1");
    assert_eq!(lock_op(q, "acquire", &a, 1_000).await, (1, owner(&a)));
    // The reply was lost, and the same attempt asks again.
    assert_eq!(lock_op(q, "acquire", &a, 60_000).await, (1, owner(&a)));
    assert!(lock_pttl(q).await > 1_000);
}

#[tokio::test]
async fn lock_acquire_is_refused_while_another_attempt_holds_it() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let a = attempt("job-a", 1, "w1");
    assert_eq!(lock_op(q, "acquire", &a, 60_000).await.0, 1);
    for other in [attempt("job-a", 2, "w2"), attempt("job-b", 1, "w1")] {
        assert_eq!(lock_op(q, "acquire", &other, 600_000).await, (0, owner(&a)));
    }
    assert_eq!(lock_value(q).await, Some(owner(&a)));
    assert!(lock_pttl(q).await <= 60_000, "a refusal extends nothing");
}

#[tokio::test]
async fn lock_renew_extends_a_lock_its_holder_still_has() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let a = attempt("job-a", 1, "w1");
    lock_op(q, "acquire", &a, 1_000).await;
    assert_eq!(lock_op(q, "renew", &a, 60_000).await, (1, owner(&a)));
    assert!(lock_pttl(q).await > 1_000);
}

#[tokio::test]
async fn lock_renew_fails_once_another_attempt_holds_it() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let a = attempt("job-a", 1, "w1");
    let b = attempt("job-a", 2, "w2");
    lock_op(q, "acquire", &b, 1_000).await;
    assert_eq!(lock_op(q, "renew", &a, 60_000).await, (0, owner(&b)));
    assert!(lock_pttl(q).await <= 1_000);

    // The guard's renewal sees it, and says so through `lost`.
    let c = attempt("job-c", 1, "w3");
    let _: () = q.connection().del(q.lock_key(LOCK)).await.unwrap();
    let guard = q
        .try_lock(LOCK, &c, Duration::from_millis(300))
        .await
        .unwrap()
        .expect("free");
    let _: () = q
        .connection()
        .set(q.lock_key(LOCK), owner(&a))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), guard.lost.cancelled())
        .await
        .expect("the renewal found the lock gone to another");
}

/// Renewed every third of its time to live, a held lock outlives that time many times over.
/// (A renewal more than a second late would let it expire: this guards the renewal's
/// period, not a machine's punctuality.)
#[tokio::test]
async fn lock_renewal_keeps_a_held_lock_past_its_time_to_live() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let a = attempt("job-a", 1, "w1");
    let ttl = Duration::from_millis(1500);
    let guard = q.try_lock(LOCK, &a, ttl).await.unwrap().expect("free");
    let until = redis_now(q).await + 2 * ttl.as_millis() as i64;
    while redis_now(q).await <= until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    guard.check().await.expect("still held, by its renewals");
    assert!(!guard.lost.is_cancelled());
    guard.release().await;
}

/// A guard dropped without `release` (its attempt stopped) stops renewing: the lock expires
/// after its time to live instead of staying held for good.
#[tokio::test]
async fn lock_renewal_stops_when_the_guard_is_dropped() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let a = attempt("job-a", 1, "w1");
    let ttl = Duration::from_millis(300);
    let guard = q.try_lock(LOCK, &a, ttl).await.unwrap().expect("free");
    drop(guard);
    // Long past its time to live by Redis's clock, the lock is gone.
    let until = redis_now(q).await + 4 * ttl.as_millis() as i64;
    while redis_now(q).await <= until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lock_value(q).await, None);
}

#[tokio::test]
async fn lock_renew_fails_once_the_lock_expired() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let a = attempt("job-a", 1, "w1");
    assert_eq!(lock_op(q, "renew", &a, 60_000).await, (0, String::new()));
    assert_eq!(lock_value(q).await, None, "renew does not take a free lock");
}

#[tokio::test]
async fn lock_release_deletes_a_lock_its_holder_has() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let a = attempt("job-a", 1, "w1");
    let guard = q
        .try_lock(LOCK, &a, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("free");
    guard.release().await;
    assert_eq!(lock_value(q).await, None);
    let b = attempt("job-b", 1, "w1");
    assert!(
        q.try_lock(LOCK, &b, Duration::from_secs(30))
            .await
            .unwrap()
            .is_ok()
    );
}

#[tokio::test]
async fn lock_release_leaves_another_attempts_lock_alone() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let a = attempt("job-a", 1, "w1");
    let b = attempt("job-a", 2, "w2");
    lock_op(q, "acquire", &b, 60_000).await;
    assert_eq!(lock_op(q, "release", &a, 60_000).await, (0, owner(&b)));
    assert_eq!(lock_value(q).await, Some(owner(&b)));
    let _: () = q.connection().del(q.lock_key(LOCK)).await.unwrap();
    assert_eq!(lock_op(q, "release", &a, 60_000).await, (0, String::new()));
}

#[tokio::test]
async fn lock_check_confirms_the_holder_and_extends_nothing() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let a = attempt("job-a", 1, "w1");
    let guard = q
        .try_lock(LOCK, &a, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("free");
    let _: () = redis::cmd("PEXPIRE")
        .arg(q.lock_key(LOCK))
        .arg(50_000)
        .query_async(&mut q.connection())
        .await
        .unwrap();
    guard.check().await.expect("held");
    assert_eq!(lock_op(q, "check", &a, 600_000).await, (1, owner(&a)));
    let ttl = lock_pttl(q).await;
    assert!((30_000..=50_000).contains(&ttl), "{ttl}");
    guard.release().await;
}

#[tokio::test]
async fn lock_check_fails_once_another_attempt_holds_it() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let a = attempt("job-a", 1, "w1");
    let b = attempt("job-a", 2, "w2");
    let guard = q
        .try_lock(LOCK, &a, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("free");
    let _: () = q
        .connection()
        .set(q.lock_key(LOCK), owner(&b))
        .await
        .unwrap();
    match guard.check().await {
        Err(LockLost::Taken { holder, .. }) => {
            assert_eq!(
                (
                    holder.job.as_str(),
                    holder.attempt,
                    holder.worker.as_deref()
                ),
                ("job-a", Some(2), Some("w2"))
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(lock_op(q, "check", &a, 0).await, (0, owner(&b)));
    assert_eq!(lock_value(q).await, Some(owner(&b)));
}

#[tokio::test]
async fn lock_check_fails_once_the_lock_expired() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let a = attempt("job-a", 1, "w1");
    let guard = q
        .try_lock(LOCK, &a, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("free");
    let _: () = q.connection().del(q.lock_key(LOCK)).await.unwrap();
    assert!(matches!(guard.check().await, Err(LockLost::Expired { .. })));
    assert_eq!(lock_value(q).await, None, "check takes nothing");
}

#[tokio::test]
async fn lock_refuses_an_unknown_op() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let err = lock_call::<Value>(q, &strings(&["steal", "job-a 1", "1000"]))
        .await
        .unwrap_err();
    assert!(err.contains("unknown op steal"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Waking idle workers (docs/wire-format.md, "Waking idle workers")

/// How long fetch.lua lets `worker` wait, when it finds nothing to lease.
async fn wait_of(q: &Queue, worker: &str, asked: Duration) -> Duration {
    let fetched = q.fetch_or_wait(worker, LEASE, 10, asked).await.unwrap();
    assert!(fetched.jobs.is_empty(), "nothing to lease");
    fetched.wait
}

async fn idle_members(q: &Queue) -> Vec<(String, f64)> {
    q.connection()
        .zrange_withscores(format!("{}idle", q.prefix()), 0, -1)
        .await
        .unwrap()
}

async fn tokens(q: &Queue) -> usize {
    list(q, "wake").await.len()
}

/// A queue with its format key, and nothing to lease.
async fn empty_queue(q: &Queue) {
    let done = leased(q, 1000, 3).await;
    assert_eq!(
        ack(q, &done, AckOutcome::Done).await,
        AckResult::Applied(JobState::Done)
    );
}

#[tokio::test]
async fn fetch_without_a_wait_registers_nobody() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    empty_queue(q).await;
    assert_eq!(wait_of(q, "w1", Duration::ZERO).await, Duration::ZERO);
    assert!(!exists(q, "idle").await);
}

#[tokio::test]
async fn fetch_with_nothing_due_registers_the_worker_for_its_whole_wait() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    empty_queue(q).await;
    let before = redis_now(q).await;
    assert_eq!(
        wait_of(q, "w1", Duration::from_secs(5)).await,
        Duration::from_secs(5)
    );
    let idle = idle_members(q).await;
    assert_eq!(idle.len(), 1, "{idle:?}");
    assert_eq!(idle[0].0, "w1");
    assert!(idle[0].1 >= (before + 5000) as f64, "{idle:?}");
}

#[tokio::test]
async fn fetch_ends_the_wait_when_the_next_job_falls_due() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    empty_queue(q).await;
    for (n, due_in) in [(1, 3000), (2, 1500)] {
        let at = chrono::DateTime::from_timestamp_millis(redis_now(q).await + due_in).unwrap();
        q.enqueue(&jobs::stage(n), Some(at), 3).await.unwrap();
    }
    let wait = wait_of(q, "w1", Duration::from_secs(60)).await;
    assert!(
        wait <= Duration::from_millis(1500) && wait > Duration::from_millis(1000),
        "{wait:?}"
    );
}

#[tokio::test]
async fn fetch_ends_the_wait_when_a_retry_or_a_lease_falls_due() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let retrying = leased(q, 1, 3).await;
    ack(q, &retrying, retry_in(Duration::from_secs(2))).await;
    let wait = wait_of(q, "w1", Duration::from_secs(60)).await;
    assert!(
        wait <= Duration::from_secs(2) && wait > Duration::from_secs(1),
        "{wait:?}"
    );
    // A lease that runs out in 1 s (another worker's): its job is recovered then.
    q.enqueue(&jobs::stage(2), None, 3).await.unwrap();
    assert_eq!(
        q.fetch("w2", Duration::from_secs(1), 1)
            .await
            .unwrap()
            .len(),
        1
    );
    let wait = wait_of(q, "w1", Duration::from_secs(60)).await;
    assert!(wait <= Duration::from_secs(1), "{wait:?}");
}

#[tokio::test]
async fn fetch_of_a_paused_queue_registers_for_the_whole_wait() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let retrying = leased(q, 1, 3).await;
    ack(q, &retrying, retry_in(Duration::from_secs(1))).await;
    q.pause().await.unwrap();
    assert_eq!(
        wait_of(q, "w1", Duration::from_secs(5)).await,
        Duration::from_secs(5)
    );
    assert_eq!(idle_members(q).await.len(), 1);
}

#[tokio::test]
async fn fetch_of_a_new_queue_registers_the_worker() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    assert_eq!(
        wait_of(q, "w1", Duration::from_secs(5)).await,
        Duration::from_secs(5)
    );
    q.enqueue(&jobs::stage(1), None, 3).await.unwrap();
    assert_eq!(tokens(q).await, 1, "the first enqueue wakes the worker");
}

#[tokio::test]
async fn fetch_drops_registrations_whose_wait_ended() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    empty_queue(q).await;
    let _: () = q
        .connection()
        .zadd(
            format!("{}idle", q.prefix()),
            "gone",
            redis_now(q).await - 1,
        )
        .await
        .unwrap();
    wait_of(q, "w1", Duration::from_secs(5)).await;
    let names: Vec<String> = idle_members(q).await.into_iter().map(|m| m.0).collect();
    assert_eq!(names, ["w1"]);
}

#[tokio::test]
async fn enqueue_wakes_every_waiting_worker_once() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    empty_queue(q).await;
    wait_of(q, "w1", Duration::from_secs(5)).await;
    wait_of(q, "w2", Duration::from_secs(5)).await;
    // A registration whose wait ended gets no token.
    let _: () = q
        .connection()
        .zadd(
            format!("{}idle", q.prefix()),
            "gone",
            redis_now(q).await - 1,
        )
        .await
        .unwrap();
    q.enqueue(&jobs::stage(1), None, 3).await.unwrap();
    assert_eq!(tokens(q).await, 2);
    assert!(!exists(q, "idle").await, "woken workers register again");
    q.enqueue(&jobs::stage(2), None, 3).await.unwrap();
    assert_eq!(tokens(q).await, 2, "nobody waits any more");
}

#[tokio::test]
async fn enqueue_of_a_delayed_job_wakes_waiting_workers_too() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    empty_queue(q).await;
    wait_of(q, "w1", Duration::from_secs(5)).await;
    let at = chrono::DateTime::from_timestamp_millis(redis_now(q).await + 1000).unwrap();
    q.enqueue(&jobs::stage(1), Some(at), 3).await.unwrap();
    assert_eq!(
        tokens(q).await,
        1,
        "its wait may end later than the job falls due"
    );
}

#[tokio::test]
async fn enqueue_that_creates_nothing_wakes_nobody() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    empty_queue(q).await;
    let job = jobs::stage(1);
    q.enqueue(&job, None, 3).await.unwrap();
    q.fetch("w9", LEASE, 10).await.unwrap();
    wait_of(q, "w1", Duration::from_secs(5)).await;
    assert!(!q.enqueue(&job, None, 3).await.unwrap().created);
    assert_eq!(tokens(q).await, 0);
}

#[tokio::test]
async fn ack_of_successes_wakes_nobody() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let job = leased(q, 1, 3).await;
    wait_of(q, "w2", Duration::from_secs(5)).await;
    ack(q, &job, AckOutcome::Done).await;
    assert_eq!(tokens(q).await, 0);
    assert_eq!(idle_members(q).await.len(), 1);
}

#[tokio::test]
async fn ack_wakes_waiting_workers_for_release_retry_and_defer() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let outcomes = [
        AckOutcome::Release {
            message: "shutdown".into(),
        },
        retry_in(Duration::from_secs(60)),
        AckOutcome::Defer {
            delay: Duration::from_secs(60),
            message: "locked".into(),
        },
    ];
    for (n, outcome) in outcomes.into_iter().enumerate() {
        let job = leased(q, n, 3).await;
        wait_of(q, "w2", Duration::from_secs(5)).await;
        let before = tokens(q).await;
        ack(q, &job, outcome.clone()).await;
        assert_eq!(tokens(q).await, before + 1, "{outcome:?}");
        if matches!(outcome, AckOutcome::Release { .. }) {
            // The released job is queued again: lease it, so the next fetch finds nothing.
            assert_eq!(q.fetch("w9", LEASE, 10).await.unwrap().len(), 1);
        }
    }
}

#[tokio::test]
async fn retry_wakes_waiting_workers() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let job = dead_job(q, 1).await;
    wait_of(q, "w2", Duration::from_secs(5)).await;
    assert_eq!(
        q.retry(std::slice::from_ref(&job.id), "again")
            .await
            .unwrap(),
        [AdminReply::Changed(JobState::Queued)]
    );
    assert_eq!(tokens(q).await, 1);
}

#[tokio::test]
async fn wake_on_resume_wakes_the_workers_a_pause_kept_waiting() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    q.enqueue(&jobs::stage(1), None, 3).await.unwrap();
    q.pause().await.unwrap();
    wait_of(q, "w1", Duration::from_secs(5)).await;
    q.resume().await.unwrap();
    assert_eq!(tokens(q).await, 1);
    assert_eq!(
        call::<u64>(q, "wake", &[]).await.unwrap(),
        0,
        "nobody waits now"
    );
}

#[tokio::test]
async fn fetch_wakes_others_when_it_queues_more_due_jobs_than_it_takes() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let at = chrono::DateTime::from_timestamp_millis(redis_now(q).await + 100).unwrap();
    let due: Vec<_> = (1..=3).map(jobs::stage).collect();
    q.enqueue_bulk(&due, Some(at), 3).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Another worker waits (registered by hand: a fetch would take the due jobs).
    let waiting = async || {
        let _: () = q
            .connection()
            .zadd(
                format!("{}idle", q.prefix()),
                "w2",
                redis_now(q).await + 5000,
            )
            .await
            .unwrap();
    };
    waiting().await;
    assert_eq!(q.fetch("w1", LEASE, 1).await.unwrap().len(), 1);
    assert_eq!(tokens(q).await, 1, "two due jobs are left for others");
    // Taking what is queued, with no job falling due, wakes nobody.
    waiting().await;
    assert_eq!(q.fetch("w1", LEASE, 10).await.unwrap().len(), 2);
    assert_eq!(tokens(q).await, 1);
}

#[tokio::test]
async fn wait_for_wake_returns_on_a_token_and_times_out_without() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let mut blocking = q.connection().dedicated().await.unwrap();
    let start = std::time::Instant::now();
    assert!(
        !q.wait_for_wake(&mut blocking, Duration::from_millis(200))
            .await
            .unwrap()
    );
    assert!(start.elapsed() >= Duration::from_millis(150));
    empty_queue(q).await;
    wait_of(q, "w1", Duration::from_secs(5)).await;
    q.enqueue(&jobs::stage(1), None, 3).await.unwrap();
    assert!(
        q.wait_for_wake(&mut blocking, Duration::from_secs(5))
            .await
            .unwrap()
    );
}

// ---------------------------------------------------------------------------------------
// purge.lua with `keep` (docs/wire-format.md, "Retention")

#[tokio::test]
async fn purge_keeps_the_newest_done_jobs() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let mut done = Vec::new();
    for n in 0..5 {
        done.push(done_job(q, n).await.id);
    }
    let keep_two = atr_dist::queue::Retention {
        max_age_secs: None,
        max_jobs: Some(2),
    };
    assert_eq!(
        q.retention_step(JobState::Done, keep_two, 100)
            .await
            .unwrap(),
        3
    );
    assert_eq!(list(q, "done").await, done[3..]);
    assert_eq!(record(q, &done[0]).await, None);
    assert_eq!(
        q.retention_step(JobState::Done, keep_two, 100)
            .await
            .unwrap(),
        0
    );
    assert_eq!(total(q, "purged").await, 3);
}

#[tokio::test]
async fn purge_takes_done_jobs_beyond_keep_in_steps_of_limit() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    for n in 0..5 {
        done_job(q, n).await;
    }
    let keep_one = atr_dist::queue::Retention {
        max_age_secs: None,
        max_jobs: Some(1),
    };
    assert_eq!(
        q.retention_step(JobState::Done, keep_one, 3).await.unwrap(),
        3
    );
    assert_eq!(
        q.retention_step(JobState::Done, keep_one, 3).await.unwrap(),
        1
    );
    assert_eq!(list(q, "done").await.len(), 1);
}

#[tokio::test]
async fn purge_keeps_the_newest_dead_and_cancelled_jobs() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let mut dead = Vec::new();
    for n in 0..4 {
        dead.push(dead_job(q, n).await.id);
        // Distinct scores: each later than the one before.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let keep = |n| atr_dist::queue::Retention {
        max_age_secs: None,
        max_jobs: Some(n),
    };
    assert_eq!(
        q.retention_step(JobState::Dead, keep(3), 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(score(q, "dead", &dead[0]).await, None);
    assert!(score(q, "dead", &dead[1]).await.is_some());
    // More than `limit` beyond: `limit` of them.
    assert_eq!(
        q.retention_step(JobState::Dead, keep(0), 2).await.unwrap(),
        2
    );
    assert!(score(q, "dead", &dead[3]).await.is_some());
    let job = q.enqueue(&jobs::stage(9), None, 3).await.unwrap();
    q.cancel(std::slice::from_ref(&job.id), "no").await.unwrap();
    assert_eq!(
        q.retention_step(JobState::Cancelled, keep(1), 100)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        q.retention_step(JobState::Cancelled, keep(0), 100)
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn purge_by_age_takes_more_than_keep_would() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    for n in 0..3 {
        dead_job(q, n).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let rule = atr_dist::queue::Retention {
        max_age_secs: Some(0),
        max_jobs: Some(2),
    };
    assert_eq!(
        q.retention_step(JobState::Dead, rule, 100).await.unwrap(),
        3
    );
}

#[tokio::test]
async fn purge_refuses_a_keep_that_is_not_a_count() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let err = call::<u64>(q, "purge", &strings(&["done", "0", "10", "-1"]))
        .await
        .unwrap_err();
    assert!(err.contains("keep must be"), "{err}");
}

/// `queue stats` gives the age of the job at the head of `queued` in seconds, from when it
/// became ready (`queued_at`).
#[tokio::test]
async fn stats_give_the_oldest_queued_jobs_age_in_seconds() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    assert_eq!(q.stats().await.unwrap().oldest_queued_age_secs, None);
    let id = q.enqueue(&jobs::stage(1), None, 3).await.unwrap().id;
    let ready = chrono::Utc::now().timestamp_millis() - 90_000;
    let _: () = q
        .connection()
        .hset(format!("{}queued_at", q.prefix()), &id, ready)
        .await
        .unwrap();
    let age = q.stats().await.unwrap().oldest_queued_age_secs.unwrap();
    assert!((90.0..100.0).contains(&age), "{age}");
}

/// `queue stats`' last hour: the 60 whole minutes up to and including the current one,
/// oldest first, each named by its first instant; an enqueue counts in the current one.
#[tokio::test]
async fn stats_last_hour_is_the_sixty_minutes_up_to_now() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    let before = chrono::Utc::now();
    q.enqueue(&jobs::stage(1), None, 3).await.unwrap();
    let hour = q.stats().await.unwrap().last_hour;
    let after = chrono::Utc::now();
    assert_eq!(hour.len(), 60);
    for pair in hour.windows(2) {
        assert_eq!(
            pair[1].minute - pair[0].minute,
            chrono::Duration::minutes(1)
        );
    }
    let current = hour.last().unwrap();
    assert_eq!(current.minute.timestamp_millis() % 60_000, 0);
    assert!(
        current.minute <= after && after - current.minute < chrono::Duration::minutes(2),
        "{} (now {after})",
        current.minute
    );
    // The enqueue fell in the last minute, or (across a minute's turn) the one before.
    let counted: Vec<u64> = hour.iter().rev().take(2).map(|m| m.enqueued).collect();
    assert_eq!(counted.iter().sum::<u64>(), 1, "{counted:?}");
    assert!(before - hour[0].minute >= chrono::Duration::minutes(58));
}

#[tokio::test]
async fn stats_show_the_announced_retention() {
    let t = TestQueue::new().await;
    let q = &t.queue;
    assert!(q.stats().await.unwrap().retention.is_empty());
    let rules = atr_dist::queue::pool::retention_rules(&Default::default());
    q.announce_retention(&rules).await.unwrap();
    let shown = q.stats().await.unwrap().retention;
    assert_eq!(shown.len(), 3);
    assert_eq!(
        shown[&JobState::Done],
        atr_dist::queue::Retention {
            max_age_secs: Some(7 * 86_400),
            max_jobs: Some(100_000),
        }
    );
    assert_eq!(
        shown[&JobState::Dead].describe(),
        "90 day(s) or the newest 10000, whichever is fewer"
    );
}
