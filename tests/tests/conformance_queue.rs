//! The queue fixtures in `tests/conformance/queue.json`, which any client can run (see the
//! README there): enqueue calls and the Redis state they must leave, and lifecycle walks with
//! what a client must read after each step. Here the Rust client (`atr_dist::queue::Queue`)
//! makes the calls and reads the state; `clients/python/tests/test_conformance_queue.py`
//! does the same with the Python producer and the scripts called as the document says.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use atr_dist::queue::{Ack, AckOutcome, Lease, Queue, QueueError};
use atr_dist_shared::{AtrTaskStatus, Envelope, ErrorClass, JobState};
use atr_dist_tests::redis_support::TestQueue;
use redis::AsyncCommands;
use serde_json::Value;

fn doc() -> Value {
    let checkout = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .join("..");
    let text = std::fs::read_to_string(checkout.join("tests/conformance/queue.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The fixture's envelopes by name, and names by job id.
struct Jobs {
    envelopes: HashMap<String, Value>,
}

impl Jobs {
    fn new(doc: &Value) -> Jobs {
        Jobs {
            envelopes: doc["envelopes"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    fn id(&self, name: &str) -> String {
        self.envelopes[name]["id"].as_str().unwrap().to_owned()
    }

    fn name(&self, id: &str) -> String {
        // The first name with this id: "a" before "a-other-key", which shares it.
        let mut names: Vec<&String> = self
            .envelopes
            .iter()
            .filter(|(_, e)| e["id"] == id)
            .map(|(n, _)| n)
            .collect();
        names.sort_by_key(|n| n.len());
        names
            .first()
            .map(|n| (*n).clone())
            .unwrap_or_else(|| id.to_owned())
    }

    fn envelope(&self, name: &str) -> Envelope {
        Envelope::parse(self.envelopes[name].to_string().as_bytes()).unwrap()
    }
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}

async fn redis_ms(q: &Queue) -> i64 {
    atr_dist_tests::cases::redis_now(q).await
}

/// Whether `record` matches `pattern` word by word (`<ms>`: a 13-digit time, `<n>`: a
/// whole number).
fn record_matches(record: &str, pattern: &str) -> bool {
    let (r, p): (Vec<&str>, Vec<&str>) =
        (record.split(' ').collect(), pattern.split(' ').collect());
    r.len() == p.len()
        && r.iter().zip(&p).all(|(w, pat)| match *pat {
            "<ms>" => w.len() == 13 && w.bytes().all(|b| b.is_ascii_digit()),
            "<n>" => !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()),
            literal => *w == literal,
        })
}

async fn check_state(
    q: &Queue,
    jobs: &Jobs,
    state: &Value,
    window: (i64, i64),
    case: &str,
) -> Vec<String> {
    let mut conn = q.connection();
    let key = |k: &str| format!("{}{k}", q.prefix());
    let mut failures = Vec::new();
    for (k, want) in state.as_object().unwrap() {
        match k.as_str() {
            "format" | "batches" => {
                let got: Option<String> = conn.get(key(k)).await.unwrap();
                if got.as_deref() != want.as_str() {
                    failures.push(format!("{case}: {k} is {got:?}, not {want}"));
                }
            }
            "queued" => {
                let got: Vec<String> = conn.lrange(key(k), 0, -1).await.unwrap();
                let got: Vec<String> = got.iter().map(|id| jobs.name(id)).collect();
                if got != names(want) {
                    failures.push(format!("{case}: queued is {got:?}, not {want}"));
                }
            }
            "scheduled" => {
                let got: Vec<(String, i64)> = conn.zrange_withscores(key(k), 0, -1).await.unwrap();
                let want = want.as_object().unwrap();
                if got.len() != want.len() {
                    failures.push(format!("{case}: scheduled is {got:?}, not {want:?}"));
                }
                for (id, score) in got {
                    let offset: i64 = want[&jobs.name(&id)]
                        .as_str()
                        .unwrap()
                        .trim_start_matches('+')
                        .parse()
                        .unwrap();
                    if !(window.0 + offset..=window.1 + offset).contains(&score) {
                        failures.push(format!(
                            "{case}: {id} is scheduled at {score}, not {offset} ms after the call"
                        ));
                    }
                }
            }
            "jobs" => {
                for (name, pattern) in want.as_object().unwrap() {
                    let got: Option<String> = conn.hget(key("jobs"), jobs.id(name)).await.unwrap();
                    let pattern = pattern.as_str().unwrap();
                    if !got.as_deref().is_some_and(|r| record_matches(r, pattern)) {
                        failures.push(format!("{case}: {name}'s record is {got:?}, not {pattern}"));
                    }
                }
            }
            "idempotency" => {
                for (idem, name) in want.as_object().unwrap() {
                    let got: Option<String> = conn.hget(key(k), idem).await.unwrap();
                    let want_id = jobs.id(name.as_str().unwrap());
                    if got.as_deref() != Some(want_id.as_str()) {
                        failures.push(format!("{case}: key {idem} names {got:?}, not {want_id}"));
                    }
                }
            }
            "stats" => {
                for (field, value) in want.as_object().unwrap() {
                    let got: Option<String> = conn.hget(key(k), field).await.unwrap();
                    if got.as_deref() != value.as_str() {
                        failures.push(format!("{case}: stats {field} is {got:?}, not {value}"));
                    }
                }
            }
            "absent" => {
                for absent in names(want) {
                    let there: bool = conn.exists(key(&absent)).await.unwrap();
                    if there {
                        failures.push(format!("{case}: {absent} exists"));
                    }
                }
            }
            "absent_jobs" => {
                for name in names(want) {
                    let got: Option<String> = conn.hget(key("jobs"), jobs.id(&name)).await.unwrap();
                    if got.is_some() {
                        failures.push(format!("{case}: {name} has a record: {got:?}"));
                    }
                }
            }
            batch if batch.starts_with("env:") => {
                for (name, envelope_name) in want.as_object().unwrap() {
                    let got: Option<String> = conn.hget(key(batch), jobs.id(name)).await.unwrap();
                    let got: Option<Value> = got.map(|t| serde_json::from_str(&t).unwrap());
                    let want = &jobs.envelopes[envelope_name.as_str().unwrap()];
                    if got.as_ref() != Some(want) {
                        failures.push(format!("{case}: {batch} holds {got:?} for {name}"));
                    }
                }
            }
            other => failures.push(format!("{case}: the fixture names an unknown key {other}")),
        }
    }
    failures
}

#[tokio::test]
async fn enqueue_calls_leave_the_documented_state() {
    let doc = doc();
    let jobs = Jobs::new(&doc);
    let mut failures = Vec::new();
    let cases = doc["enqueue"].as_array().unwrap();
    assert!(cases.len() >= 6);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let t = TestQueue::new().await;
        let q = &t.queue;
        let mut window = (0, 0);
        for call in case["calls"].as_array().unwrap() {
            let envelopes: Vec<Envelope> = names(&call["jobs"])
                .iter()
                .map(|n| jobs.envelope(n))
                .collect();
            let max = call["max_attempts"].as_u64().unwrap() as u32;
            let before = redis_ms(q).await;
            let run_at = match call["run_at"].as_str().unwrap() {
                "now" => None,
                offset => {
                    let ms: i64 = offset.trim_start_matches('+').parse().unwrap();
                    chrono::DateTime::from_timestamp_millis(before + ms)
                }
            };
            let got = q.enqueue_bulk(&envelopes, run_at, max).await;
            window = (before, redis_ms(q).await);
            match (got, call.get("error"), call.get("reply")) {
                (Err(e), Some(error), _) => {
                    let error = error.as_str().unwrap();
                    if !e.to_string().contains(error) {
                        failures.push(format!("{name}: the error is {e}, not {error}"));
                    }
                }
                (Err(QueueError::Refused { .. }), None, Some(reply)) => {
                    let want: Vec<(String, String)> = reply
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| {
                            (
                                p[0].as_str().unwrap().to_owned(),
                                p[1].as_str().unwrap().to_owned(),
                            )
                        })
                        .collect();
                    if !want.iter().any(|(_, s)| s == "refused") {
                        failures.push(format!("{name}: refused, the fixture says {want:?}"));
                    }
                }
                (Ok(out), None, Some(reply)) => {
                    let got: Vec<(String, String)> = out
                        .iter()
                        .map(|e| {
                            (
                                jobs.name(&e.id),
                                if e.created { "created" } else { "existing" }.to_owned(),
                            )
                        })
                        .collect();
                    let want: Vec<(String, String)> = reply
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| {
                            (
                                p[0].as_str().unwrap().to_owned(),
                                p[1].as_str().unwrap().to_owned(),
                            )
                        })
                        .collect();
                    if got != want {
                        failures.push(format!("{name}: the reply is {got:?}, not {want:?}"));
                    }
                }
                (got, _, _) => failures.push(format!("{name}: the call gave {got:?}")),
            }
        }
        failures.extend(check_state(q, &jobs, &case["state"], window, name).await);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn class(v: &Value) -> ErrorClass {
    ErrorClass::parse(v.as_str().unwrap()).unwrap()
}

fn ack_of(step: &Value, lease: Lease) -> Ack {
    let message = step["message"].as_str().unwrap_or_default().to_owned();
    let delay = Duration::from_millis(step["delay_ms"].as_u64().unwrap_or(0));
    let outcome = match step["outcome"].as_str().unwrap() {
        "done" => AckOutcome::Done,
        "retry" => AckOutcome::Retry {
            delay,
            class: class(&step["error_class"]),
            message,
        },
        "dead" => AckOutcome::Dead {
            class: class(&step["error_class"]),
            message,
        },
        "cancelled" => AckOutcome::Cancelled { message },
        "release" => AckOutcome::Release { message },
        "defer" => AckOutcome::Defer { delay, message },
        other => panic!("unknown outcome {other}"),
    };
    Ack {
        lease,
        outcome,
        result: if step["result"].is_null() {
            String::new()
        } else {
            step["result"].to_string()
        },
    }
}

#[tokio::test]
async fn lifecycle_walks_read_as_documented() {
    let doc = doc();
    let jobs = Jobs::new(&doc);
    let mut failures = Vec::new();
    let walks = doc["lifecycle"].as_array().unwrap();
    assert!(walks.len() >= 6);
    for walk in walks {
        let name = walk["name"].as_str().unwrap();
        let t = TestQueue::new().await;
        let q = &t.queue;
        let max = walk["max_attempts"].as_u64().unwrap() as u32;
        let mut leases: HashMap<String, Lease> = HashMap::new();
        for (i, step) in walk["steps"].as_array().unwrap().iter().enumerate() {
            let at = format!("{name}, step {}", i + 1);
            if let Some(enqueue) = step.get("enqueue") {
                let envelopes: Vec<Envelope> =
                    names(enqueue).iter().map(|n| jobs.envelope(n)).collect();
                q.enqueue_bulk(&envelopes, None, max).await.unwrap();
            } else if let Some(n) = step.get("fetch") {
                let leased = q
                    .fetch(
                        "conformance",
                        Duration::from_secs(60),
                        n.as_u64().unwrap() as usize,
                    )
                    .await
                    .unwrap();
                let got: Vec<String> = leased.iter().map(|l| jobs.name(&l.id)).collect();
                if got != names(&step["leased"]) {
                    failures.push(format!("{at}: leased {got:?}, not {}", step["leased"]));
                }
                for l in leased {
                    leases.insert(jobs.name(&l.id), l.lease());
                }
            } else if let Some(job) = step.get("ack") {
                let ack = ack_of(step, leases[job.as_str().unwrap()].clone());
                q.ack(&[ack]).await.unwrap();
            } else if let Some(all) = step.get("ack_all") {
                let acks: Vec<Ack> = all
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| ack_of(a, leases[a["job"].as_str().unwrap()].clone()))
                    .collect();
                q.ack(&acks).await.unwrap();
            } else if let Some(ids) = step.get("retry").or(step.get("cancel")) {
                let ids: Vec<String> = names(ids).iter().map(|n| jobs.id(n)).collect();
                let message = step["message"]
                    .as_str()
                    .unwrap_or("by the conformance walk");
                let got = if step.get("retry").is_some() {
                    q.retry(&ids, message).await.unwrap()
                } else {
                    q.cancel(&ids, message).await.unwrap()
                };
                // As the scripts write them.
                let got: Vec<String> = got.iter().map(ToString::to_string).collect();
                if got != names(&step["replies"]) {
                    failures.push(format!(
                        "{at}: the replies are {got:?}, not {}",
                        step["replies"]
                    ));
                }
            } else if let Some(state) = step.get("purge") {
                let state: JobState = state.as_str().unwrap().parse().unwrap();
                let age = Duration::from_millis(step["older_than_ms"].as_u64().unwrap());
                let deleted = q.purge(state, age).await.unwrap();
                if deleted != step["deleted"].as_u64().unwrap() {
                    failures.push(format!("{at}: purged {deleted}, not {}", step["deleted"]));
                }
            }
            if let Some(expect) = step.get("expect") {
                for (job, want) in expect.as_object().unwrap() {
                    let shown = q.show(&jobs.id(job)).await.unwrap();
                    let Some(shown) = shown else {
                        if !want.is_null() {
                            failures.push(format!("{at}: {job} is gone"));
                        }
                        continue;
                    };
                    if want.is_null() {
                        failures.push(format!("{at}: {job} is still there"));
                        continue;
                    }
                    let s = shown.summary;
                    let atr = AtrTaskStatus::of(
                        s.state,
                        s.error_class.as_deref().and_then(ErrorClass::parse),
                    );
                    let report: Option<String> = q
                        .connection()
                        .hget(format!("{}result", q.prefix()), jobs.id(job))
                        .await
                        .unwrap();
                    let outcome = report
                        .map(|r| serde_json::from_str::<Value>(&r).unwrap()["outcome"].clone());
                    let got: HashMap<&str, Value> = HashMap::from([
                        ("state", Value::from(s.state.as_str())),
                        ("attempt", Value::from(s.attempt)),
                        ("atr_status", Value::from(atr.as_str())),
                        (
                            "error_class",
                            s.error_class.clone().map_or(Value::Null, Value::from),
                        ),
                        (
                            "last_error",
                            s.last_error.clone().map_or(Value::Null, Value::from),
                        ),
                        ("report_outcome", outcome.unwrap_or(Value::Null)),
                    ]);
                    for (field, value) in want.as_object().unwrap() {
                        if got.get(field.as_str()) != Some(value) {
                            failures.push(format!(
                                "{at}: {job}'s {field} is {:?}, not {value}",
                                got.get(field.as_str())
                            ));
                        }
                    }
                }
            }
            if let Some(want) = step.get("results") {
                let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
                    .arg(format!("{}results", q.prefix()))
                    .arg("-")
                    .arg("+")
                    .query_async(&mut q.connection())
                    .await
                    .unwrap();
                let got: Vec<Value> = entries
                    .iter()
                    .map(|(_, f)| {
                        let f: HashMap<&str, &str> = f
                            .chunks(2)
                            .map(|kv| (kv[0].as_str(), kv[1].as_str()))
                            .collect();
                        serde_json::json!({
                            "state": f["state"],
                            "atr_status": f["atr_status"],
                            "ids": f["ids"].split(' ').map(|id| jobs.name(id)).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                if &Value::from(got.clone()) != want {
                    failures.push(format!(
                        "{at}: the results stream holds {got:?}, not {want}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `shards`: the distribution key of each envelope and the shard it goes to, for each shard
/// count; then, on a queue of 3 shards, each envelope of the fixture is enqueued onto the
/// shard the fixture names.
#[tokio::test]
async fn shard_choice_is_as_documented() {
    let doc = doc();
    let jobs = Jobs::new(&doc);
    let mut failures = Vec::new();
    for (i, case) in doc["shards"]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let envelope = match (case.get("envelope"), case.get("envelope_json")) {
            (Some(name), _) => jobs.envelopes[name.as_str().unwrap()].to_string(),
            (None, Some(text)) => text.as_str().unwrap().to_owned(),
            (None, None) => panic!("case {i} names no envelope"),
        };
        let key = atr_dist::queue::shard_key(&envelope);
        if key.as_deref() != case["key"].as_str() {
            failures.push(format!("case {i}: key {key:?}, not {}", case["key"]));
        }
        if let Some(prefix) = case.get("sha256_first_8_bytes") {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(key.clone().unwrap_or_default().as_bytes());
            let got: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            if got != prefix.as_str().unwrap() {
                failures.push(format!("case {i}: digest {got}, not {prefix}"));
            }
        }
        for (count, want) in case["shard"].as_object().unwrap() {
            let count: u32 = count.parse().unwrap();
            let got = key
                .as_deref()
                .map_or(0, |k| atr_dist::queue::shard_of(k, count));
            if Some(u64::from(got)) != want.as_u64() {
                failures.push(format!("case {i}: shard {got} of {count}, not {want}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let t = TestQueue::new().await;
    let q = &t.queue;
    q.resize(atr_dist::queue::ShardCount::new(3).unwrap())
        .await
        .unwrap();
    for case in doc["shards"]["cases"].as_array().unwrap() {
        let Some(name) = case.get("envelope").and_then(Value::as_str) else {
            continue;
        };
        let shard = case["shard"]["3"].as_u64().unwrap() as u32;
        q.enqueue(&jobs.envelope(name), None, 3).await.unwrap();
        let held: bool = q
            .connection()
            .hexists(format!("{}jobs", q.shard(shard).prefix()), jobs.id(name))
            .await
            .unwrap();
        assert!(held, "{name} is on shard {shard} of 3");
    }
}
