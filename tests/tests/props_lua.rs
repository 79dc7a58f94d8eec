//! The queue's Lua scripts under random call sequences (proptest), against the real Redis,
//! on a queue of each case's own: enqueues (delayed, with keys used before), fetches with
//! leases that expire at once or never, acks of every outcome with current and stale leases,
//! heartbeats, operators' retries, cancels and purges, pause and resume, distribution locks,
//! and calls made directly with arguments no client of ours sends (missing, negative, not
//! numbers, unknown outcomes and ops). After every step the lifecycle invariants of
//! docs/wire-format.md hold: every job is in exactly one state's list or set, the one its
//! record names; nothing is in one without a record; the record, its envelope batch, its
//! idempotency key and the per-job hashes agree; the counters agree with the jobs kept.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use atr_dist::queue::{Ack, AckOutcome, AckResult, AdminReply, Leased, Queue};
use atr_dist_shared::{ErrorClass, JobState};
use atr_dist_tests::checkout_path;
use atr_dist_tests::jobs::{self, unique_key};
use atr_dist_tests::redis_support::TestQueue;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use redis::AsyncCommands;

const KEEPER: &str = "~keeper: a permanent member that keeps this set out of the listpack encoding (docs/wire-format.md)";

#[derive(Debug, Clone)]
enum Op {
    Enqueue {
        n: usize,
        delay_ms: Option<u64>,
        max_attempts: u32,
        /// Enqueue again under a key used before (answered with the existing job).
        again: Option<usize>,
    },
    Fetch {
        worker: u8,
        lease_ms: u64,
        max: usize,
    },
    Ack {
        lease: usize,
        outcome: u8,
        delay_ms: u64,
    },
    Heartbeat {
        worker: u8,
        lease_ms: u64,
    },
    Retry(usize),
    Cancel(usize),
    Purge {
        state: u8,
        all: bool,
    },
    Pause(bool),
    Lock {
        op: u8,
        owner: u8,
        ttl_ms: u64,
    },
    /// A script called directly, with arguments no client of ours sends.
    Raw {
        script: u8,
        args: Vec<Arg>,
    },
    Sleep(u64),
}

/// An argument of a direct call: a known job id or lease token, or odd text.
#[derive(Debug, Clone)]
enum Arg {
    Id(usize),
    Token(usize),
    Text(&'static str),
}

const ODD: [&str; 22] = [
    "",
    "0",
    "1",
    "2",
    "-1",
    "-5",
    "1.5",
    "abc",
    "nan",
    "inf",
    "-inf",
    "1e309",
    "99999999999999999999",
    " ",
    "done",
    "retry",
    "dead",
    "cancelled",
    "release",
    "defer",
    "transient",
    "acquire",
];

const SCRIPTS: [&str; 8] = [
    "fetch",
    "ack",
    "heartbeat",
    "cancel",
    "retry",
    "purge",
    "enqueue",
    "note",
];

fn op() -> impl Strategy<Value = Op> {
    let arg = prop_oneof![
        (0usize..64).prop_map(Arg::Id),
        (0usize..64).prop_map(Arg::Token),
        prop::sample::select(ODD.to_vec()).prop_map(Arg::Text),
    ];
    prop_oneof![
        4 => (1usize..4, prop::option::of(0u64..30), 1u32..4, prop::option::of(0usize..64))
            .prop_map(|(n, delay_ms, max_attempts, again)| Op::Enqueue { n, delay_ms, max_attempts, again }),
        5 => (0u8..3, prop::sample::select(vec![1u64, 40, 60_000]), 1usize..5)
            .prop_map(|(worker, lease_ms, max)| Op::Fetch { worker, lease_ms, max }),
        6 => (0usize..64, 0u8..6, 0u64..20)
            .prop_map(|(lease, outcome, delay_ms)| Op::Ack { lease, outcome, delay_ms }),
        1 => (0u8..3, prop::sample::select(vec![1u64, 60_000]))
            .prop_map(|(worker, lease_ms)| Op::Heartbeat { worker, lease_ms }),
        1 => (0usize..64).prop_map(Op::Retry),
        1 => (0usize..64).prop_map(Op::Cancel),
        1 => (0u8..3, any::<bool>()).prop_map(|(state, all)| Op::Purge { state, all }),
        1 => any::<bool>().prop_map(Op::Pause),
        1 => (0u8..5, 0u8..3, prop::sample::select(vec![1u64, 60_000]))
            .prop_map(|(op, owner, ttl_ms)| Op::Lock { op, owner, ttl_ms }),
        2 => (0u8..SCRIPTS.len() as u8, prop::collection::vec(arg, 0..9))
            .prop_map(|(script, args)| Op::Raw { script, args }),
        1 => (0u64..30).prop_map(Op::Sleep),
    ]
}

/// What the test knows of the queue: every job id it enqueued, every lease handed out.
struct Model {
    ids: Vec<String>,
    keys: Vec<atr_dist_shared::names::IdempotencyKey>,
    leases: Vec<Leased>,
    next_package: usize,
}

fn pick<T>(items: &[T], i: usize) -> Option<&T> {
    if items.is_empty() {
        None
    } else {
        items.get(i % items.len())
    }
}

fn script(name: &str) -> redis::Script {
    let path = checkout_path(&format!("../lua/{name}.lua"));
    redis::Script::new(&std::fs::read_to_string(&path).expect("read the script"))
}

async fn record(q: &Queue, id: &str) -> Option<String> {
    q.connection()
        .hget(format!("{}jobs", q.prefix()), id)
        .await
        .unwrap()
}

fn outcome(kind: u8, delay_ms: u64) -> AckOutcome {
    let delay = Duration::from_millis(delay_ms);
    match kind {
        0 => AckOutcome::Done,
        1 => AckOutcome::Retry {
            delay,
            class: ErrorClass::Transient,
            message: "503".into(),
        },
        2 => AckOutcome::Dead {
            class: ErrorClass::Permanent,
            message: "404".into(),
        },
        3 => AckOutcome::Cancelled {
            message: "stopped".into(),
        },
        4 => AckOutcome::Release {
            message: "shutdown".into(),
        },
        _ => AckOutcome::Defer {
            delay,
            message: "locked".into(),
        },
    }
}

async fn step(q: &Queue, m: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    match op {
        Op::Enqueue {
            n,
            delay_ms,
            max_attempts,
            again,
        } => {
            let mut envs = Vec::new();
            for _ in 0..*n {
                let mut env = jobs::stage(m.next_package);
                m.next_package += 1;
                env.idempotency_key = match again.and_then(|i| pick(&m.keys, i).cloned()) {
                    Some(key) if envs.is_empty() => key,
                    Some(_) | None => unique_key(),
                };
                envs.push(env);
            }
            let run_at =
                delay_ms.map(|d| chrono::Utc::now() + chrono::Duration::milliseconds(d as i64));
            let out = q.enqueue_bulk(&envs, run_at, *max_attempts).await.unwrap();
            for (env, e) in envs.iter().zip(out) {
                if e.created {
                    prop_assert_eq!(&e.id, &env.id.to_string());
                    m.ids.push(e.id);
                    m.keys.push(env.idempotency_key.clone());
                } else {
                    prop_assert!(
                        m.ids.contains(&e.id),
                        "an existing key named an unknown job"
                    );
                }
            }
        }
        Op::Fetch {
            worker,
            lease_ms,
            max,
        } => {
            let got = q
                .fetch(
                    &format!("w{worker}"),
                    Duration::from_millis(*lease_ms),
                    *max,
                )
                .await
                .unwrap();
            prop_assert!(got.len() <= *max);
            for l in got {
                prop_assert_eq!(
                    record(q, &l.id).await,
                    Some(format!("running {}", l.token)),
                    "a lease handed out is the record's"
                );
                prop_assert!(l.attempt >= 1 && l.attempt <= l.max_attempts);
                m.leases.push(l);
            }
        }
        Op::Ack {
            lease,
            outcome: kind,
            delay_ms,
        } => {
            let Some(l) = pick(&m.leases, *lease).cloned() else {
                return Ok(());
            };
            let current = record(q, &l.id).await == Some(format!("running {}", l.token));
            let cancel_pending: bool = q
                .connection()
                .hexists(format!("{}cancel_requested", q.prefix()), &l.id)
                .await
                .unwrap();
            let reply = q
                .ack(&[Ack {
                    lease: l.lease(),
                    outcome: outcome(*kind, *delay_ms),
                    result: String::new(),
                }])
                .await
                .unwrap();
            // Fenced: applied exactly when the lease is the job's current one.
            prop_assert_eq!(
                matches!(reply[0], AckResult::Applied(_)),
                current,
                "ack {:?} of {} ({}current): {:?}",
                kind,
                l.id,
                if current { "" } else { "not " },
                reply
            );
            if let AckResult::Applied(state) = reply[0] {
                let now = record(q, &l.id).await.unwrap_or_default();
                prop_assert!(now.starts_with(state.as_str()), "{} vs {:?}", now, state);
                // A job whose cancel was requested does not run again.
                if cancel_pending {
                    prop_assert!(state.is_terminal(), "cancel pending, yet {:?}", state);
                }
            }
        }
        Op::Heartbeat { worker, lease_ms } => {
            let worker = format!("w{worker}");
            // This worker's newest lease of each job (an older one of the same job would be
            // reported lost, by the job's id, beside a current one).
            let mut newest: HashMap<&str, &Leased> = HashMap::new();
            for l in m
                .leases
                .iter()
                .filter(|l| l.token.ends_with(&format!(" {worker}")))
            {
                newest.insert(l.id.as_str(), l);
            }
            let held: Vec<_> = newest.values().map(|l| l.lease()).collect();
            let reply = q
                .heartbeat(&worker, Duration::from_millis(*lease_ms), &held)
                .await
                .unwrap();
            for l in &held {
                let current = record(q, &l.id).await == Some(format!("running {}", l.token));
                prop_assert!(
                    !(current && reply.lost.contains(&l.id)),
                    "a current lease of {} was reported lost",
                    l.id
                );
            }
        }
        Op::Retry(i) => {
            if let Some(id) = pick(&m.ids, *i) {
                let before = record(q, id).await;
                let reply = q.retry(std::slice::from_ref(id), "operator").await.unwrap();
                if let AdminReply::Changed(state) = reply[0] {
                    prop_assert_eq!(state, JobState::Queued);
                    prop_assert!(
                        before
                            .is_some_and(|r| r.starts_with("dead ") || r.starts_with("cancelled ")),
                    );
                }
            }
        }
        Op::Cancel(i) => {
            if let Some(id) = pick(&m.ids, *i) {
                q.cancel(std::slice::from_ref(id), "operator")
                    .await
                    .unwrap();
            }
        }
        Op::Purge { state, all } => {
            let state = [JobState::Done, JobState::Dead, JobState::Cancelled][*state as usize];
            let age = if *all {
                Duration::ZERO
            } else {
                Duration::from_secs(3600)
            };
            let purged = q.purge(state, age).await.unwrap();
            if !*all {
                prop_assert_eq!(purged, 0, "nothing here is an hour old");
            }
        }
        Op::Pause(true) => q.pause().await.unwrap(),
        Op::Pause(false) => q.resume().await.unwrap(),
        Op::Lock { op, owner, ttl_ms } => {
            let op = ["acquire", "renew", "release", "check", "steal"][*op as usize];
            let key = q.lock_key("prop|NPM||pkg|1.0.0");
            let holder: Option<String> = q.connection().get(&key).await.unwrap();
            // A 1 ms lock may expire between this read and the call: its answer is then
            // not the model's to predict.
            let ttl: i64 = q.connection().pttl(&key).await.unwrap();
            let settled = holder.is_none() || ttl > 1000;
            let owner = format!("owner-{owner}");
            let reply: Result<(i64, String), _> = script("lock")
                .key(&key)
                .arg(op)
                .arg(&owner)
                .arg(*ttl_ms)
                .invoke_async(&mut q.connection())
                .await;
            match (op, reply) {
                ("steal", reply) => prop_assert!(reply.is_err(), "unknown op accepted"),
                (_, Err(e)) => return Err(TestCaseError::fail(format!("lock {op}: {e}"))),
                (_, Ok(_)) if !settled => {}
                (_, Ok((ok, named))) => {
                    let held_by_owner = holder.as_deref() == Some(owner.as_str());
                    let expected = held_by_owner || (op == "acquire" && holder.is_none());
                    prop_assert_eq!(
                        ok == 1,
                        expected,
                        "lock {} by {} held by {:?}",
                        op,
                        owner,
                        holder
                    );
                    let after: Option<String> = q.connection().get(&key).await.unwrap();
                    let want = match (op, ok) {
                        ("acquire", 1) | ("renew", 1) => Some(owner.clone()),
                        ("release", 1) => None,
                        _ => holder.clone(),
                    };
                    // A 1 ms lock may be gone already; a 60 s one is exactly as said.
                    if *ttl_ms > 1 || want.is_none() {
                        prop_assert_eq!(after, want);
                    }
                    prop_assert_eq!(
                        named,
                        if ok == 1 {
                            owner
                        } else {
                            holder.unwrap_or_default()
                        }
                    );
                }
            }
        }
        Op::Raw {
            script: which,
            args,
        } => {
            let name = SCRIPTS[*which as usize];
            let s = script(name);
            let mut inv = s.key(format!("{}queued", q.prefix()));
            inv.arg(q.prefix());
            for a in args {
                match a {
                    Arg::Id(i) => inv.arg(pick(&m.ids, *i).cloned().unwrap_or_default()),
                    Arg::Token(i) => inv.arg(
                        pick(&m.leases, *i)
                            .map(|l| l.token.clone())
                            .unwrap_or_default(),
                    ),
                    Arg::Text(t) => inv.arg(*t),
                };
            }
            // Refused or done: either is fine; what it leaves must be consistent.
            let _: Result<redis::Value, _> = inv.invoke_async(&mut q.connection()).await;
        }
        Op::Sleep(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
    }
    Ok(())
}

/// The lifecycle invariants of docs/wire-format.md, read from Redis.
async fn check(q: &Queue, m: &Model) -> Result<(), TestCaseError> {
    let p = q.prefix();
    let mut c = q.connection();
    let jobs: HashMap<String, String> = c.hgetall(format!("{p}jobs")).await.unwrap();
    let mut places: HashMap<String, Vec<&'static str>> = HashMap::new();
    let mut place = |id: String, where_: &'static str| places.entry(id).or_default().push(where_);
    for list in ["queued", "done"] {
        let ids: Vec<String> = c.lrange(format!("{p}{list}"), 0, -1).await.unwrap();
        for id in ids {
            place(id, list);
        }
    }
    for set in ["scheduled", "running", "retrying", "dead", "cancelled"] {
        let members: Vec<(String, f64)> = c
            .zrange_withscores(format!("{p}{set}"), 0, -1)
            .await
            .unwrap();
        for (id, score) in members {
            if set == "running" && id == KEEPER {
                prop_assert!(
                    score.is_infinite() && score > 0.0,
                    "keeper scored {}",
                    score
                );
                continue;
            }
            prop_assert!(score.is_finite(), "{} in {} scored {}", id, set, score);
            place(id, set);
        }
    }
    for (id, wheres) in &places {
        prop_assert!(
            jobs.contains_key(id),
            "{} is in {:?} without a record",
            id,
            wheres
        );
    }
    let mut per_state: HashMap<&str, usize> = HashMap::new();
    for (id, rec) in &jobs {
        let words: Vec<&str> = rec.split(' ').collect();
        let state = words[0];
        let wheres = places.get(id).cloned().unwrap_or_default();
        prop_assert_eq!(
            wheres.clone(),
            vec![state_place(state)?],
            "{} ({}) is in {:?}",
            id,
            rec,
            wheres
        );
        *per_state.entry(state).or_default() += 1;
        let ok_len = match state {
            "done" => words.len() == 8,
            _ => words.len() == 4 || words.len() == 7,
        };
        prop_assert!(ok_len, "record of {}: {:?}", id, rec);
        let max: u64 = words[1]
            .parse()
            .map_err(|_| TestCaseError::fail(format!("max_attempts of {rec:?}")))?;
        if words.len() >= 7 {
            let attempt: u64 = words[4]
                .parse()
                .map_err(|_| TestCaseError::fail(format!("attempt of {rec:?}")))?;
            prop_assert!(attempt <= max, "{} beyond max_attempts", rec);
            if state == "queued" || state == "scheduled" || state == "retrying" {
                // A job waiting to run has not started its next attempt yet.
                prop_assert!(
                    attempt < max || max == 0,
                    "{} queued with no attempt left",
                    rec
                );
            }
        }
        // Its envelope is in its batch, and its key names it.
        let envelope: Option<String> = c.hget(format!("{p}env:{}", words[3]), id).await.unwrap();
        let Some(envelope) = envelope else {
            return Err(TestCaseError::fail(format!(
                "{id} has no envelope in batch {}",
                words[3]
            )));
        };
        let env: serde_json::Value = serde_json::from_str(&envelope).unwrap();
        let key = env["idempotency_key"].as_str().unwrap_or_default();
        let named: Option<String> = c.hget(format!("{p}idempotency"), key).await.unwrap();
        prop_assert_eq!(named.as_deref(), Some(id.as_str()), "the key of {}", id);
        prop_assert!(m.ids.contains(id), "{} was never enqueued", id);
    }
    // The per-job hashes hold only jobs in the states they are for.
    let in_state = |field: &String, states: &[&str]| {
        jobs.get(field)
            .is_some_and(|r| states.iter().any(|s| r.split(' ').next() == Some(*s)))
    };
    let queued_at: Vec<String> = c.hkeys(format!("{p}queued_at")).await.unwrap();
    for id in &queued_at {
        prop_assert!(
            in_state(id, &["queued"]),
            "queued_at of {} ({:?})",
            id,
            jobs.get(id)
        );
    }
    let cancel: Vec<String> = c.hkeys(format!("{p}cancel_requested")).await.unwrap();
    for id in &cancel {
        prop_assert!(
            in_state(id, &["running"]),
            "cancel_requested of {} ({:?})",
            id,
            jobs.get(id)
        );
    }
    for hash in ["error_class", "last_error", "result"] {
        let ids: Vec<String> = c.hkeys(format!("{p}{hash}")).await.unwrap();
        for id in &ids {
            prop_assert!(
                jobs.contains_key(id),
                "{} of a job that is gone: {}",
                hash,
                id
            );
        }
    }
    let keys: HashMap<String, String> = c.hgetall(format!("{p}idempotency")).await.unwrap();
    let named: HashSet<&String> = keys.values().collect();
    prop_assert_eq!(named.len(), keys.len(), "one key per job");
    for id in keys.values() {
        prop_assert!(
            jobs.contains_key(id),
            "a key names a job that is gone: {}",
            id
        );
    }
    let incoming: bool = c.exists(format!("{p}incoming")).await.unwrap();
    prop_assert!(!incoming, "incoming outlived its transaction");
    // Counters.
    let stats: HashMap<String, u64> = c.hgetall(format!("{p}stats")).await.unwrap();
    let stat = |k: &str| stats.get(k).copied().unwrap_or(0);
    prop_assert_eq!(
        stat("enqueued"),
        jobs.len() as u64 + stat("purged"),
        "enqueued = kept + purged: {:?}",
        stats
    );
    for (state, counter) in [
        ("done", "done"),
        ("dead", "dead"),
        ("cancelled", "cancelled"),
    ] {
        let now = per_state.get(state).copied().unwrap_or(0) as u64;
        prop_assert!(
            now <= stat(counter),
            "{} {} jobs, counted {}",
            now,
            state,
            stat(counter)
        );
    }
    prop_assert!(stat("retried") <= stat("failed"), "{:?}", stats);
    Ok(())
}

fn state_place(state: &str) -> Result<&'static str, TestCaseError> {
    Ok(match state {
        "queued" => "queued",
        "done" => "done",
        "scheduled" => "scheduled",
        "running" => "running",
        "retrying" => "retrying",
        "dead" => "dead",
        "cancelled" => "cancelled",
        other => return Err(TestCaseError::fail(format!("a record in state {other:?}"))),
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        max_shrink_iters: 512,
        // A failure prints its minimal input; nothing is written into the checkout.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn scripts_keep_the_lifecycle_invariants(ops in prop::collection::vec(op(), 1..40)) {
        runtime().block_on(async {
            let t = TestQueue::new().await;
            let q = &t.queue;
            let mut m = Model { ids: Vec::new(), keys: Vec::new(), leases: Vec::new(), next_package: 0 };
            for (i, op) in ops.iter().enumerate() {
                step(q, &mut m, op).await.map_err(|e| TestCaseError::fail(format!("step {i} {op:?}: {e}")))?;
                check(q, &m).await.map_err(|e| TestCaseError::fail(format!("after step {i} {op:?}: {e}")))?;
            }
            Ok::<(), TestCaseError>(())
        })?;
    }
}

// ---------------------------------------------------------------------------------------
// No envelope makes a panic reach the worker loop.

/// An envelope as a producer might send it: a valid one, with a field removed or replaced
/// by odd JSON, or text that is no envelope at all; under the job's own id and key or not.
#[derive(Debug, Clone)]
struct Sent {
    mutation: Mutation,
    own_id: bool,
    own_key: bool,
}

#[derive(Debug, Clone)]
enum Mutation {
    None,
    Remove(&'static [&'static str]),
    Replace(&'static [&'static str], serde_json::Value),
    Text(String),
}

const FIELDS: [&[&str]; 9] = [
    &["v"],
    &["id"],
    &["idempotency_key"],
    &["kind"],
    &["payload"],
    &["payload", "distribution"],
    &["payload", "distribution", "package"],
    &["payload", "artifacts"],
    &["payload", "source"],
];

fn odd_json() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        ".{0,16}".prop_map(serde_json::Value::String),
        Just(serde_json::json!([])),
        Just(serde_json::json!({"type": "inline", "manifest": {"entries": [{"path": "../x"}]}})),
        Just(serde_json::json!("@scope/name")),
    ]
}

fn sent() -> impl Strategy<Value = Sent> {
    let field = prop::sample::select(FIELDS.to_vec());
    let mutation = prop_oneof![
        2 => Just(Mutation::None),
        2 => field.clone().prop_map(Mutation::Remove),
        3 => (field, odd_json()).prop_map(|(f, v)| Mutation::Replace(f, v)),
        1 => ".{0,40}".prop_map(Mutation::Text),
    ];
    (
        mutation,
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.8),
    )
        .prop_map(|(mutation, own_id, own_key)| Sent {
            mutation,
            own_id,
            own_key,
        })
}

/// The raw job for `sent`, built on the valid stage job `n`.
fn raw_job(n: usize, sent: &Sent) -> atr_dist::queue::RawJob {
    let env = jobs::stage(n);
    let mut value: serde_json::Value = serde_json::from_str(&env.to_json()).unwrap();
    let text = match &sent.mutation {
        Mutation::Text(t) => t.clone(),
        Mutation::None => env.to_json(),
        Mutation::Remove(path) | Mutation::Replace(path, _) => {
            let (last, parents) = path.split_last().unwrap();
            let mut target = &mut value;
            for p in parents {
                target = &mut target[*p];
            }
            if let serde_json::Value::Object(map) = target {
                match &sent.mutation {
                    Mutation::Replace(_, v) => {
                        map.insert((*last).to_owned(), v.clone());
                    }
                    Mutation::Remove(_) | Mutation::None | Mutation::Text(_) => {
                        map.remove(*last);
                    }
                }
            }
            value.to_string()
        }
    };
    atr_dist::queue::RawJob {
        id: if sent.own_id {
            env.id.to_string()
        } else {
            uuid::Uuid::now_v7().to_string()
        },
        idempotency_key: if sent.own_key {
            env.idempotency_key.to_string()
        } else {
            unique_key().to_string()
        },
        envelope: text,
        run_at: None,
        max_attempts: 2,
    }
}

/// Random envelopes, valid and not, run by one pool whose handler always succeeds: each job
/// ends done exactly when its envelope parses and is its own (its id and key), and `dead`
/// as malformed otherwise; the pool goes on (a valid job after them is done).
#[test]
fn no_envelope_makes_a_panic_reach_the_worker_loop() {
    use atr_dist::queue::pool::{Completion, RunningJob};
    use atr_dist_tests::cases::{FAST_RETRY, FnHandler, RunningPool, eventually, pool_config};

    let rt = runtime();
    let t = rt.block_on(TestQueue::new());
    let q = t.queue.clone();
    let handler = FnHandler(|_job: RunningJob| async { Ok(Completion::Done) });
    let pool = rt.block_on(async { RunningPool::start(&q, handler, pool_config(4, FAST_RETRY)) });
    let next = std::sync::atomic::AtomicUsize::new(1_000);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 24,
        max_shrink_iters: 64,
        // A failure prints its minimal input; nothing is written into the checkout.
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let outcome = runner.run(&prop::collection::vec(sent(), 1..8), |sents| {
        rt.block_on(async {
            let raws: Vec<_> = sents
                .iter()
                .map(|s| raw_job(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed), s))
                .collect();
            let ids: Vec<String> = match q.enqueue_raw(&raws).await {
                Ok(out) => out.into_iter().map(|e| e.id).collect(),
                // Two raw jobs with one id (the same valid job twice): refused whole.
                Err(_) => return Ok(()),
            };
            let sentinel = q
                .enqueue(
                    &jobs::stage(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
                    None,
                    2,
                )
                .await
                .unwrap();
            eventually("the jobs end", Duration::from_secs(30), || async {
                let mut all = true;
                for id in ids.iter().chain([&sentinel.id]) {
                    all &= q
                        .show(id)
                        .await
                        .unwrap()
                        .unwrap()
                        .summary
                        .state
                        .is_terminal();
                }
                all
            })
            .await;
            for (raw, id) in raws.iter().zip(&ids) {
                let parsed = atr_dist_shared::Envelope::parse(raw.envelope.as_bytes());
                let own = parsed.as_ref().is_ok_and(|e| {
                    e.id.to_string() == *id && e.idempotency_key.as_str() == raw.idempotency_key
                });
                let s = q.show(id).await.unwrap().unwrap().summary;
                if own {
                    prop_assert_eq!(
                        s.state,
                        JobState::Done,
                        "{}: {:?}",
                        raw.envelope,
                        s.last_error
                    );
                } else {
                    prop_assert_eq!(s.state, JobState::Dead, "{}", raw.envelope);
                    prop_assert_eq!(
                        s.error_class.as_deref(),
                        Some("malformed"),
                        "{}",
                        raw.envelope
                    );
                }
            }
            prop_assert_eq!(
                q.show(&sentinel.id).await.unwrap().unwrap().summary.state,
                JobState::Done,
                "the pool stopped taking jobs"
            );
            Ok(())
        })
    });
    rt.block_on(pool.stop());
    rt.block_on(async { drop(t) });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}
