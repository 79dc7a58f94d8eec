//! The Redis queue of `docs/wire-format.md`: enqueue, fetch with leases, heartbeat, fenced
//! acks, and the operator's admin operations. Each state transition is one Lua script in
//! `lua/`, shared with every other client of the queue.

mod admin;
pub mod backend;
pub mod backoff;
pub mod conn;
pub mod lock;
mod migrate;
pub mod note;
pub mod pool;
mod scripts;
pub mod shards;

use std::collections::BTreeMap;
use std::time::Duration;

use atr_dist_shared::{Envelope, ErrorClass};
use chrono::{DateTime, Utc};
use redis::Value;

pub use admin::{
    AdminAction, AdminReply, IdLookup, JobDetail, JobEvent, JobFilter, JobPage, JobSummary,
    MinuteStats, PageLimit, QueueStats, Retention, SHORT_ID_LEN, ambiguous_id, short_id,
};
pub use conn::RedisConn;
pub use migrate::{FORMAT, FORMAT_SHARDED, MigrationReport};
pub use scripts::ENQUEUE_LUA;
pub use shards::{MAX_SHARDS, ShardCount, ShardResize, shard_key, shard_of, shard_prefix};

use scripts::SCRIPTS;

/// Jobs per script call when enqueuing in bulk: large enough to amortise the round trip,
/// small enough that one call never blocks Redis for long.
pub const ENQUEUE_CHUNK: usize = 1000;

/// Acks per script call; `ack.lua` takes at most 1000.
const ACK_CHUNK: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unreadable reply from Redis: {0}")]
    Parse(#[from] redis::ParsingError),
    #[error("unexpected reply from {script}: {detail}")]
    Protocol {
        script: &'static str,
        detail: String,
    },
    #[error("job {id} was refused: {reason}")]
    Refused { id: String, reason: String },
    /// The operation cannot be done in the queue's present state; the message says what to
    /// change.
    #[error("{0}")]
    NotNow(String),
}

fn protocol(script: &'static str, detail: impl Into<String>) -> QueueError {
    QueueError::Protocol {
        script,
        detail: detail.into(),
    }
}

/// A handle on one queue. Cheap to clone: the connection is multiplexed.
///
/// A queue may be sharded over several hash tags (docs/wire-format.md, "Shards"). A handle
/// addresses one shard, shard 0 unless made by [`Queue::shard`]: the worker's operations
/// (fetch, heartbeat, ack, note) act on the handle's shard; enqueue and the operator's views
/// and levers (stats, list, show, retry, cancel, purge, pause, resume) act on the whole
/// queue, whichever shard the handle addresses.
#[derive(Clone)]
pub struct Queue {
    conn: RedisConn,
    name: String,
    /// The shard this handle addresses; 0 for an unsharded queue.
    shard: u32,
    prefix: String,
    queued_key: String,
    /// Where distribution locks live: outside every queue ([`lock::LOCKS`]).
    locks: String,
    /// The queue's shard count as last read, shared by the clones of a handle.
    shards: std::sync::Arc<shards::ShardCache>,
}

/// What a producer hands to `enqueue_raw`: the envelope as JSON, its idempotency key and
/// when and how often to run it. `enqueue` builds these from a validated `Envelope`; tests use
/// this to enqueue bad JSON.
#[derive(Debug, Clone)]
pub struct RawJob {
    pub id: String,
    /// Must be the envelope's `idempotency_key` (purge finds it there).
    pub idempotency_key: String,
    pub envelope: String,
    pub run_at: Option<DateTime<Utc>>,
    pub max_attempts: u32,
}

/// What one `fetch.lua` call gave a worker: jobs, or how long it may wait for a wake-up.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub jobs: Vec<Leased>,
    /// How long the worker may block in `Queue::wait_for_wake` before it fetches again:
    /// zero when jobs were leased or no wait was asked for.
    pub wait: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    pub id: String,
    /// False when the idempotency key already named a job (whose id this is).
    pub created: bool,
}

/// A job leased to this worker by `fetch`.
#[derive(Debug, Clone)]
pub struct Leased {
    pub id: String,
    /// The shard the job was leased from: its ack, heartbeat and notes go there.
    pub shard: u32,
    /// The lease token,
    /// `<max_attempts> <enqueued_ms> <batch> <attempt> <started_ms> <worker_id>`:
    /// acks and heartbeats present it, and Redis honours them only while the job's record
    /// is `running <token>`.
    pub token: String,
    pub attempt: u32,
    pub max_attempts: u32,
    /// The envelope exactly as stored, as bytes: parsed by the worker, which dead-letters
    /// what it cannot read (bytes that are not UTF-8 included).
    pub envelope: Vec<u8>,
    /// How long the job waited between becoming queued and this lease (Redis's clock).
    pub waited: Duration,
    /// Why the envelope does not belong to this job, found at fetch: its `id` is not the
    /// job's, or its `idempotency_key` is not the key the job was enqueued under.
    pub mismatch: Option<String>,
}

impl Leased {
    pub fn lease(&self) -> Lease {
        Lease {
            id: self.id.clone(),
            token: self.token.clone(),
        }
    }

    /// The job's envelope, parsed and checked; the message of an error is what the job is
    /// dead-lettered with (error class `malformed`).
    pub fn parse_envelope(&self) -> Result<Envelope, String> {
        // What is wrong with the envelope itself first, then whether it is this job's.
        let envelope = Envelope::parse(&self.envelope).map_err(|e| e.to_string())?;
        match &self.mismatch {
            Some(mismatch) => Err(mismatch.clone()),
            None => Ok(envelope),
        }
    }
}

/// The two top-level fields of an envelope that tie it to its job; the rest is left to
/// `Envelope::parse`.
#[derive(serde::Deserialize)]
struct EnvelopeIdentity {
    id: Option<String>,
    idempotency_key: Option<String>,
}

/// What is wrong with `envelope` as the envelope of job `id` whose idempotency key names
/// `holder` (`None`: the key names no job), or `None` if nothing is.
fn identity_mismatch(
    id: &str,
    envelope: &EnvelopeIdentity,
    holder: Option<&str>,
) -> Option<String> {
    if let Some(own) = &envelope.id
        && own != id
    {
        return Some(format!(
            "envelope id {own:?} is not the id {id:?} the job was enqueued under: enqueue.lua's id for a job must be its envelope's id"
        ));
    }
    let key = envelope.idempotency_key.as_deref()?;
    if holder != Some(id) {
        return Some(format!(
            "envelope idempotency_key {key:?} is not the key job {id} was enqueued with: enqueue.lua's idempotency_key for a job must be its envelope's idempotency_key"
        ));
    }
    None
}

/// One job's lease as a worker holds it: what `heartbeat.lua` renews and `ack.lua` checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: String,
    pub token: String,
}

/// How an attempt ended, as `ack.lua` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckOutcome {
    Done,
    Retry {
        delay: Duration,
        class: ErrorClass,
        message: String,
    },
    Dead {
        class: ErrorClass,
        message: String,
    },
    Cancelled {
        message: String,
    },
    /// Handed back unfinished (shutdown); the attempt does not count.
    Release {
        message: String,
    },
    /// Not this job's turn (its distribution is locked): try again after `delay`, without
    /// spending an attempt.
    Defer {
        delay: Duration,
        message: String,
    },
}

#[derive(Debug, Clone)]
pub struct Ack {
    pub lease: Lease,
    pub outcome: AckOutcome,
    /// The worker's report of the job, JSON (docs/wire-format.md, "Results"), or empty.
    /// Kept for jobs that end (done, dead, cancelled); ignored otherwise.
    pub result: String,
}

/// The state a job is in after its ack, or `Stale` when this worker no longer held it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckResult {
    Applied(atr_dist_shared::JobState),
    Stale,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeartbeatReply {
    /// Jobs this worker no longer holds: stop acting on them.
    pub lost: Vec<String>,
    /// Jobs an operator asked to cancel.
    pub cancel: Vec<String>,
}

impl Queue {
    pub async fn connect(
        url: &str,
        cluster_nodes: &[String],
        name: &str,
    ) -> Result<Queue, QueueError> {
        let conn = RedisConn::connect(url, cluster_nodes).await?;
        Ok(Queue::new(conn, name))
    }

    pub fn new(conn: RedisConn, name: &str) -> Queue {
        let prefix = key_prefix(name);
        Queue {
            conn,
            name: name.to_owned(),
            shard: 0,
            queued_key: format!("{prefix}queued"),
            prefix,
            locks: lock::LOCKS.to_owned(),
            shards: Default::default(),
        }
    }

    /// A handle on shard `shard` of this queue (docs/wire-format.md, "Shards"), sharing this
    /// one's connection, lock namespace and shard count.
    pub fn shard(&self, shard: u32) -> Queue {
        if shard == self.shard {
            return self.clone();
        }
        let prefix = shard_prefix(&self.name, shard);
        Queue {
            conn: self.conn.clone(),
            name: self.name.clone(),
            shard,
            queued_key: format!("{prefix}queued"),
            prefix,
            locks: self.locks.clone(),
            shards: std::sync::Arc::clone(&self.shards),
        }
    }

    /// The shard this handle addresses.
    pub fn shard_index(&self) -> u32 {
        self.shard
    }

    /// This handle with its distribution locks under `namespace` instead of
    /// [`lock::LOCKS`]: for tests, which share one Redis and must not share locks, and for
    /// two atr-dist deployments that share a Redis but not their platforms.
    pub fn with_lock_namespace(mut self, namespace: &str) -> Queue {
        self.locks = namespace.to_owned();
        self
    }

    /// The Redis key of the lock `name` (a distribution's `lock_id`): outside every queue's
    /// keys, so that one distribution has one lock whichever queue its jobs come from, and
    /// under a hash tag of its own, so that Redis Cluster spreads locks over its masters.
    pub fn lock_key(&self, name: &str) -> String {
        format!("{}{{{name}}}", self.locks)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key prefix of the shard this handle addresses (`atr-dist:{<queue>}:` for shard 0).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }

    /// Enqueues one validated job.
    pub async fn enqueue(
        &self,
        envelope: &Envelope,
        run_at: Option<DateTime<Utc>>,
        max_attempts: u32,
    ) -> Result<Enqueued, QueueError> {
        let mut out = self
            .enqueue_bulk(std::slice::from_ref(envelope), run_at, max_attempts)
            .await?;
        out.pop()
            .ok_or_else(|| protocol("enqueue.lua", "no result"))
    }

    /// Enqueues many validated jobs, `ENQUEUE_CHUNK` per round trip.
    pub async fn enqueue_bulk(
        &self,
        envelopes: &[Envelope],
        run_at: Option<DateTime<Utc>>,
        max_attempts: u32,
    ) -> Result<Vec<Enqueued>, QueueError> {
        let jobs: Vec<RawJob> = envelopes
            .iter()
            .map(|e| raw_job(e, run_at, max_attempts))
            .collect();
        let out = self.enqueue_raw(&jobs).await?;
        for (e, result) in envelopes.iter().zip(&out) {
            if result.created {
                crate::metrics::job_enqueued(e.kind(), e.distribution().platform);
            }
        }
        Ok(out)
    }

    /// Enqueues jobs as given, without validating the envelopes: the worker dead-letters what
    /// it cannot read. For producers that validated already, and for tests of that path.
    /// Ids must differ within a call of `enqueue.lua` (`ENQUEUE_CHUNK` jobs); a repeated id is
    /// refused before anything is sent.
    ///
    /// On a sharded queue each job goes to the shard of its distribution ([`shard_key`],
    /// [`shard_of`]), one call per shard and run of jobs; calls to different shards are
    /// separate transactions. The answers come back in the order of `jobs`.
    pub async fn enqueue_raw(&self, jobs: &[RawJob]) -> Result<Vec<Enqueued>, QueueError> {
        // The script refuses it too, but only for its own call: refused here, nothing of a
        // bulk enqueue is sent.
        if let Some(job) = jobs.iter().find(|job| job.max_attempts == 0) {
            return Err(QueueError::Refused {
                id: job.id.clone(),
                reason: "max_attempts must be a whole number >= 1, not 0".into(),
            });
        }
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let count = self.shard_count().await?.get();
        let mut by_shard: BTreeMap<u32, Vec<&RawJob>> = BTreeMap::new();
        let mut positions: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, job) in jobs.iter().enumerate() {
            // A job whose envelope names no distribution (it is dead-lettered when leased)
            // goes to shard 0.
            let shard = match count {
                1 => 0,
                n => shard_key(&job.envelope).map_or(0, |key| shard_of(&key, n)),
            };
            by_shard.entry(shard).or_default().push(job);
            positions.entry(shard).or_default().push(i);
        }
        // Every call of every shard is checked before anything is sent.
        let mut plans = Vec::with_capacity(by_shard.len());
        for (shard, jobs) in &by_shard {
            plans.push((*shard, enqueue_calls(jobs)?));
        }
        // The shards' calls go at once: on a cluster they are served by several masters.
        let sent =
            futures::future::try_join_all(plans.into_iter().map(|(shard, calls)| async move {
                let answers = self.shard(shard).send_enqueue_calls(calls).await?;
                Ok::<_, QueueError>((shard, answers))
            }))
            .await?;
        let mut out: Vec<Option<Enqueued>> = vec![None; jobs.len()];
        for (shard, answers) in sent {
            for (&i, answer) in positions[&shard].iter().zip(answers) {
                out[i] = Some(answer);
            }
        }
        out.into_iter()
            .map(|answer| answer.ok_or_else(|| protocol("enqueue.lua", "a job without an answer")))
            .collect()
    }

    /// Sends the calls of `enqueue_calls` to this handle's shard, and reads their answers.
    async fn send_enqueue_calls(
        &self,
        calls: Vec<&[&RawJob]>,
    ) -> Result<Vec<Enqueued>, QueueError> {
        let mut out = Vec::with_capacity(calls.iter().map(|c| c.len()).sum());
        for chunk in calls {
            let (run_at, max_attempts) = call_timing(chunk[0]);
            let reply = self.enqueue_call(chunk, run_at, max_attempts).await?;
            if reply.len() != 2 * chunk.len() {
                return Err(protocol(
                    "enqueue.lua",
                    format!("{} values for {} jobs", reply.len(), chunk.len()),
                ));
            }
            for pair in reply.chunks(2) {
                let [id, status] = pair else {
                    return Err(protocol("enqueue.lua", "odd number of values"));
                };
                let id: String = redis::from_redis_value_ref(id)?;
                let status: i64 = redis::from_redis_value_ref(status)?;
                match status {
                    1 => out.push(Enqueued { id, created: true }),
                    0 => out.push(Enqueued { id, created: false }),
                    _ => {
                        return Err(QueueError::Refused {
                            id,
                            reason: "a job with this id exists under another idempotency key"
                                .into(),
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// One call of `enqueue.lua`, in the transaction docs/wire-format.md prescribes: the
    /// envelopes go to `incoming` with a plain HSET (never through Lua), and the script
    /// turns that hash into the call's envelope batch. `DEL` first clears what a transaction
    /// whose script was not loaded left behind.
    async fn enqueue_call(
        &self,
        chunk: &[&RawJob],
        run_at: i64,
        max_attempts: u32,
    ) -> Result<Vec<Value>, QueueError> {
        let incoming = format!("{}incoming", self.prefix);
        let mut pipe = redis::pipe();
        pipe.atomic().del(&incoming).ignore();
        let hset = pipe.cmd("HSET").arg(&incoming);
        for job in chunk {
            hset.arg(&job.id).arg(&job.envelope);
        }
        hset.ignore();
        let eval = pipe
            .cmd("EVALSHA")
            .arg(SCRIPTS.enqueue.get_hash())
            .arg(1)
            .arg(&self.queued_key)
            .arg(&self.prefix)
            .arg(run_at)
            .arg(max_attempts);
        for job in chunk {
            eval.arg(&job.id).arg(&job.idempotency_key);
        }
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<(Vec<Value>,)> = pipe.query_async(&mut conn).await;
        match result {
            Ok((reply,)) => Ok(reply),
            // Redis restarted, or its scripts were flushed: load the script and run the
            // whole transaction again. (`SCRIPT LOAD` cannot go inside the transaction: Redis
            // checks the script exists when EVALSHA runs, not when it is queued.)
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                SCRIPTS.enqueue.load_async(&mut conn).await?;
                let (reply,): (Vec<Value>,) = pipe.query_async(&mut conn).await?;
                Ok(reply)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Leases up to `max` jobs to `worker` for `lease`.
    pub async fn fetch(
        &self,
        worker: &str,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<Leased>, QueueError> {
        Ok(self
            .fetch_or_wait(worker, lease, max, Duration::ZERO)
            .await?
            .jobs)
    }

    /// Leases up to `max` jobs to `worker` for `lease`; when there is none, registers the
    /// worker as waiting for work for at most `wait` (`ZERO`: not at all), and says how long
    /// it may block in `wait_for_wake` (docs/wire-format.md, "Waking idle workers").
    pub async fn fetch_or_wait(
        &self,
        worker: &str,
        lease: Duration,
        max: usize,
        wait: Duration,
    ) -> Result<Fetched, QueueError> {
        let reply: Vec<Value> = SCRIPTS
            .fetch
            .key(&self.queued_key)
            .arg(&self.prefix)
            .arg(worker)
            .arg(lease.as_millis() as u64)
            .arg(max.clamp(1, 1000))
            .arg(wait.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let [now, wait, jobs @ ..] = reply.as_slice() else {
            return Err(protocol("fetch.lua", "reply without now_ms and wait_ms"));
        };
        let now: i64 = redis::from_redis_value_ref(now)?;
        let wait: u64 = redis::from_redis_value_ref(wait)?;
        let mut out = Vec::with_capacity(jobs.len() / 3);
        // Each job's envelope batch, in `out`'s order.
        let mut batches = Vec::with_capacity(jobs.len() / 3);
        for three in jobs.chunks(3) {
            let [id, token, queued_at] = three else {
                return Err(protocol("fetch.lua", "values not in groups of 3"));
            };
            let token: String = redis::from_redis_value_ref(token)?;
            // The token is the job record after its state word.
            let lease = JobRecord::after_state(&token);
            let (Some(max_attempts), Some(enqueued_at), Some(batch), attempt @ 1..) = (
                lease.max_attempts,
                lease.enqueued_at,
                lease.batch,
                lease.attempt,
            ) else {
                return Err(protocol("fetch.lua", format!("lease token {token:?}")));
            };
            let queued_at: String = redis::from_redis_value_ref(queued_at)?;
            let since = queued_at.parse::<i64>().unwrap_or(enqueued_at);
            batches.push(batch);
            out.push(Leased {
                id: redis::from_redis_value_ref(id)?,
                shard: self.shard,
                token,
                attempt,
                max_attempts,
                envelope: Vec::new(),
                waited: Duration::from_millis((now - since).max(0) as u64),
                mismatch: None,
            });
        }
        // The envelopes, read outside the script (see fetch.lua), from each job's batch. A
        // leased job's envelope stays until the job is purged, long after it finishes. If this
        // read fails, the jobs stay leased to this worker until their leases run out, as when
        // fetch.lua's own reply is lost, and then go to another worker.
        let wanted: Vec<(u64, &str)> = batches
            .into_iter()
            .zip(out.iter().map(|job| job.id.as_str()))
            .collect();
        let envelopes = self.read_envelopes(&wanted).await?;
        for (job, envelope) in out.iter_mut().zip(envelopes) {
            // A job without an envelope (written by hand) is still leased, and then
            // dead-lettered as malformed.
            job.envelope = envelope.unwrap_or_default();
        }
        self.check_identities(&mut out).await?;
        Ok(Fetched {
            jobs: out,
            wait: Duration::from_millis(wait),
        })
    }

    /// Blocks on `conn`, a connection of its own (`RedisConn::dedicated`), until a script
    /// that made work ready wakes this worker, or `wait` (at most `conn::LONGEST_BLOCK`)
    /// has passed. True when woken.
    pub async fn wait_for_wake(
        &self,
        conn: &mut RedisConn,
        wait: Duration,
    ) -> Result<bool, QueueError> {
        let wait = wait.min(conn::LONGEST_BLOCK);
        // BLPOP's timeout is in seconds, with decimals; 0 would mean forever.
        let secs = (wait.as_millis().max(1) as f64) / 1000.0;
        let token: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(format!("{}wake", self.prefix))
            .arg(secs)
            .query_async(conn)
            .await?;
        Ok(token.is_some())
    }

    /// Marks the leased jobs whose envelope names another job id, or another idempotency
    /// key than the one the job was enqueued with (docs/wire-format.md, "Rules every client
    /// keeps"). `enqueue.lua` cannot check this without reading every envelope into Lua,
    /// which the queue's cost targets rule out; here it costs one HMGET of `idempotency`
    /// per fetch. Envelopes that are not JSON objects are left to `Envelope::parse`.
    async fn check_identities(&self, jobs: &mut [Leased]) -> Result<(), QueueError> {
        let identities: Vec<Option<EnvelopeIdentity>> = jobs
            .iter()
            .map(|job| serde_json::from_slice(&job.envelope).ok())
            .collect();
        let keys: Vec<&str> = identities
            .iter()
            .flatten()
            .filter_map(|i| i.idempotency_key.as_deref())
            .collect();
        let mut holders = if keys.is_empty() {
            Vec::new()
        } else {
            let reply: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(format!("{}idempotency", self.prefix))
                .arg(&keys)
                .query_async(&mut self.conn.clone())
                .await?;
            if reply.len() != keys.len() {
                return Err(protocol("HMGET idempotency", "reply of the wrong length"));
            }
            reply
        }
        .into_iter();
        for (job, identity) in jobs.iter_mut().zip(&identities) {
            let Some(identity) = identity else {
                continue;
            };
            let holder = match identity.idempotency_key {
                Some(_) => holders.next().flatten(),
                None => None,
            };
            job.mismatch = identity_mismatch(&job.id, identity, holder.as_deref());
        }
        Ok(())
    }

    /// The envelopes of jobs given as `(batch, id)`, each read from its batch's hash: one
    /// HMGET per batch, all in one round trip (jobs leased or listed together were mostly
    /// enqueued together, so there are few). In the order given, as stored; `None` where
    /// the batch holds no envelope for the id.
    async fn read_envelopes(
        &self,
        jobs: &[(u64, &str)],
    ) -> Result<Vec<Option<Vec<u8>>>, QueueError> {
        let mut batches: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, (batch, _)) in jobs.iter().enumerate() {
            batches.entry(*batch).or_default().push(i);
        }
        let mut out = vec![None; jobs.len()];
        if batches.is_empty() {
            return Ok(out);
        }
        let mut pipe = redis::pipe();
        for (batch, members) in &batches {
            let hmget = pipe.cmd("HMGET").arg(self.envelope_key(*batch));
            for &i in members {
                hmget.arg(jobs[i].1);
            }
        }
        let replies: Vec<Vec<Option<Vec<u8>>>> = pipe.query_async(&mut self.conn.clone()).await?;
        if replies.len() != batches.len() {
            return Err(protocol("HMGET env:<batch>", "reply of the wrong length"));
        }
        for (members, values) in batches.values().zip(replies) {
            if values.len() != members.len() {
                return Err(protocol("HMGET env:<batch>", "reply of the wrong length"));
            }
            for (&i, envelope) in members.iter().zip(values) {
                out[i] = envelope;
            }
        }
        Ok(out)
    }

    /// The hash that holds the envelopes of a batch of jobs (docs/wire-format.md, "Keys").
    fn envelope_key(&self, batch: u64) -> String {
        format!("{}env:{batch}", self.prefix)
    }

    /// Renews `leases`; says which were lost and which should be cancelled. With no leases it
    /// only registers the worker as alive.
    pub async fn heartbeat(
        &self,
        worker: &str,
        lease: Duration,
        leases: &[Lease],
    ) -> Result<HeartbeatReply, QueueError> {
        let mut inv = SCRIPTS.heartbeat.key(&self.queued_key);
        inv.arg(&self.prefix)
            .arg(worker)
            .arg(lease.as_millis() as u64);
        for held in leases {
            inv.arg(&held.id).arg(&held.token);
        }
        let (lost, cancel): (Vec<String>, Vec<String>) =
            inv.invoke_async(&mut self.conn.clone()).await?;
        Ok(HeartbeatReply { lost, cancel })
    }

    /// Takes the worker out of `workers` when it stops cleanly, so that `queue stats`, the
    /// `atr_dist_workers` gauge and `queue migrate` stop counting it at once instead of
    /// when its heartbeat runs out (`lease_secs` later). A plain `ZREM`: it removes only
    /// this worker's own member, and a worker that dies without it still ages out in
    /// `heartbeat.lua`.
    pub async fn deregister(&self, worker: &str) -> Result<(), QueueError> {
        let _removed: i64 = redis::cmd("ZREM")
            .arg(format!("{}workers", self.prefix))
            .arg(worker)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Records how attempts ended, one round trip per `ACK_CHUNK` acks.
    pub async fn ack(&self, acks: &[Ack]) -> Result<Vec<AckResult>, QueueError> {
        let mut out = Vec::with_capacity(acks.len());
        for chunk in acks.chunks(ACK_CHUNK) {
            out.extend(self.ack_chunk(chunk).await?);
        }
        Ok(out)
    }

    async fn ack_chunk(&self, acks: &[Ack]) -> Result<Vec<AckResult>, QueueError> {
        if acks.is_empty() {
            return Ok(Vec::new());
        }
        // `ack.lua` takes successes first, as (id, lease, result) triples, then the rest; its
        // answers come back in that order and are put back in the caller's.
        let (done, other): (Vec<usize>, Vec<usize>) =
            (0..acks.len()).partition(|&i| acks[i].outcome == AckOutcome::Done);
        let mut inv = SCRIPTS.ack.key(&self.queued_key);
        inv.arg(&self.prefix).arg(done.len());
        for &i in &done {
            inv.arg(&acks[i].lease.id)
                .arg(&acks[i].lease.token)
                .arg(&acks[i].result);
        }
        for &i in &other {
            let ack = &acks[i];
            let (outcome, delay, class, message) = match &ack.outcome {
                // Sent above.
                AckOutcome::Done => continue,
                AckOutcome::Retry {
                    delay,
                    class,
                    message,
                } => (
                    "retry",
                    delay.as_millis() as u64,
                    class.as_str(),
                    message.as_str(),
                ),
                AckOutcome::Dead { class, message } => {
                    ("dead", 0, class.as_str(), message.as_str())
                }
                AckOutcome::Cancelled { message } => ("cancelled", 0, "", message.as_str()),
                AckOutcome::Release { message } => ("release", 0, "", message.as_str()),
                AckOutcome::Defer { delay, message } => {
                    ("defer", delay.as_millis() as u64, "", message.as_str())
                }
            };
            inv.arg(&ack.lease.id)
                .arg(&ack.lease.token)
                .arg(outcome)
                .arg(delay)
                .arg(class)
                .arg(message)
                .arg(&ack.result);
        }
        let reply: Vec<String> = inv.invoke_async(&mut self.conn.clone()).await?;
        if reply.len() != acks.len() {
            return Err(protocol(
                "ack.lua",
                format!("{} answers for {} acks", reply.len(), acks.len()),
            ));
        }
        let mut out = vec![AckResult::Stale; acks.len()];
        for (&i, answer) in done.iter().chain(&other).zip(&reply) {
            out[i] = match answer.as_str() {
                "stale" => AckResult::Stale,
                state => state
                    .parse()
                    .map(AckResult::Applied)
                    .map_err(|_| protocol("ack.lua", format!("unknown state {state:?}")))?,
            };
        }
        Ok(out)
    }
}

/// `run_at_ms` and `max_attempts` of a job as `enqueue.lua` takes them, once per call.
fn call_timing(job: &RawJob) -> (i64, u32) {
    (
        job.run_at.map(|t| t.timestamp_millis().max(0)).unwrap_or(0),
        job.max_attempts,
    )
}

/// The `enqueue.lua` calls for `jobs` of one shard: one per run of jobs that share their
/// `run_at` and `max_attempts` (the script takes them once per call), of at most
/// `ENQUEUE_CHUNK` jobs; refused when a call would repeat an id.
fn enqueue_calls<'a>(jobs: &'a [&'a RawJob]) -> Result<Vec<&'a [&'a RawJob]>, QueueError> {
    let calls: Vec<&[&RawJob]> = jobs
        .chunk_by(|a, b| call_timing(a) == call_timing(b))
        .flat_map(|run| run.chunks(ENQUEUE_CHUNK))
        .collect();
    for chunk in &calls {
        let mut seen = std::collections::HashSet::with_capacity(chunk.len());
        if let Some(job) = chunk.iter().find(|job| !seen.insert(job.id.as_str())) {
            return Err(QueueError::Refused {
                id: job.id.clone(),
                reason: "more than one job of this call has this id".into(),
            });
        }
    }
    Ok(calls)
}

/// A job record in the queue's `jobs` hash (docs/wire-format.md, "Keys"):
/// `<state> <max_attempts> <enqueued_ms> <batch>`, then, once the job has been leased,
/// ` <attempt> <started_ms> <worker_id>`, and for a done job ` <finished_ms>`.
/// Read leniently: a part that does not parse is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct JobRecord {
    pub state: Option<atr_dist_shared::JobState>,
    pub max_attempts: Option<u32>,
    pub enqueued_at: Option<i64>,
    /// The envelope batch: the job's envelope is in `env:<batch>`.
    pub batch: Option<u64>,
    pub attempt: u32,
    pub started_at: Option<i64>,
    pub worker: Option<String>,
    pub finished_at: Option<i64>,
}

impl JobRecord {
    pub(crate) fn parse(text: &str) -> JobRecord {
        let (state, rest) = text.split_once(' ').unwrap_or((text, ""));
        JobRecord {
            state: state.parse().ok(),
            ..JobRecord::after_state(rest)
        }
    }

    /// The record's fields after its state word, which is also what a lease token holds
    /// (`<max_attempts> <enqueued_ms> <batch> <attempt> <started_ms> <worker_id>`); no
    /// state.
    fn after_state(text: &str) -> JobRecord {
        let mut parts = text.split(' ');
        let mut next = || parts.next().filter(|p| !p.is_empty());
        JobRecord {
            state: None,
            max_attempts: next().and_then(|p| p.parse().ok()),
            enqueued_at: next().and_then(|p| p.parse().ok()),
            batch: next().and_then(|p| p.parse().ok()),
            attempt: next().and_then(|p| p.parse().ok()).unwrap_or(0),
            started_at: next().and_then(|p| p.parse().ok()),
            worker: next().map(str::to_owned),
            finished_at: next().and_then(|p| p.parse().ok()),
        }
    }
}

/// `atr-dist:{<queue>}:`: the hash tag keeps all of a queue's keys in one cluster slot.
pub fn key_prefix(queue: &str) -> String {
    format!("atr-dist:{{{queue}}}:")
}

/// A worker id unique to this process: host, pid and a random part, so that a restarted or
/// replicated worker never collides with a previous one. The host part is cut to 40 bytes so
/// the id, and the lease tokens that carry it, stay short (docs/wire-format.md).
pub fn new_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned());
    format!(
        "{}-{}-{:08x}",
        host_part(&host),
        std::process::id(),
        fastrand::u32(..)
    )
}

/// The longest a worker id's host part may be, in bytes.
const MAX_HOST: usize = 40;

/// `host` cut to at most [`MAX_HOST`] bytes, at a character boundary.
fn host_part(host: &str) -> &str {
    let mut cut = MAX_HOST.min(host.len());
    while !host.is_char_boundary(cut) {
        cut -= 1;
    }
    &host[..cut]
}

pub fn raw_job(envelope: &Envelope, run_at: Option<DateTime<Utc>>, max_attempts: u32) -> RawJob {
    RawJob {
        id: envelope.id.to_string(),
        idempotency_key: envelope.idempotency_key.to_string(),
        envelope: envelope.to_json(),
        run_at,
        max_attempts,
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_HOST, host_part};

    #[test]
    fn a_long_host_name_is_cut_at_a_character_boundary() {
        let short = "worker-1.apache.org";
        assert_eq!(host_part(short), short);
        let exact = "h".repeat(MAX_HOST);
        assert_eq!(host_part(&exact), exact);
        let long = "h".repeat(MAX_HOST + 1);
        assert_eq!(host_part(&long), &long[..MAX_HOST]);
        // "é" takes bytes 39 and 40: the cut falls before it.
        let accented = format!("{}é{}", "h".repeat(MAX_HOST - 1), "h".repeat(5));
        assert_eq!(host_part(&accented), "h".repeat(MAX_HOST - 1));
    }
}
