//! The worker pool: apalis runs `RedisBackend` with a concurrency limit and graceful
//! shutdown; this module turns each attempt's result into a fenced ack, keeps leases alive
//! with a heartbeat, and hands cancel requests to the running job.
//!
//! Retries live in Redis, not in the pool: a failed attempt is acked `retry` with a backoff
//! delay and comes back through `fetch.lua`. No apalis retry layer is used, so attempts are
//! never counted twice.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use apalis::prelude::WorkerBuilderExt;
use apalis_core::monitor::Monitor;
use apalis_core::task::data::Data;
use apalis_core::worker::builder::WorkerBuilder;
use apalis_core::worker::ext::parallelize::ParallelizeExt;
use atr_dist_shared::{Envelope, ErrorClass, JobState};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::backend::{Feed, RedisBackend};
use super::{
    Ack, AckOutcome, AckResult, Fetched, Lease, Leased, Queue, QueueError, RedisConn, Retention,
    backoff,
};
use crate::config::{RetentionConfig, RetryConfig};
use crate::metrics::AttemptEnd;

/// How an attempt's outcome counts in the metrics.
fn metrics_end(outcome: &AckOutcome) -> AttemptEnd {
    match outcome {
        AckOutcome::Done | AckOutcome::Cancelled { .. } => AttemptEnd::Ended { failed: None },
        AckOutcome::Retry { class, .. } | AckOutcome::Dead { class, .. } => AttemptEnd::Ended {
            failed: Some(*class),
        },
        // Handed back or deferred: the attempt did not count.
        AckOutcome::Release { .. } | AckOutcome::Defer { .. } => AttemptEnd::NotCounted,
    }
}

/// Why an attempt failed, and so what happens next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    pub class: ErrorClass,
    pub message: String,
    /// A platform's Retry-After, honoured within the backoff cap.
    pub retry_after: Option<Duration>,
    /// No attempt is left to try, whatever the class: the job ends dead now (a wait on the
    /// platform that outlasted its deadline ends `BROKEN`, not after more attempts).
    pub last: bool,
}

impl JobError {
    pub fn transient(message: impl Into<String>) -> JobError {
        JobError {
            class: ErrorClass::Transient,
            message: message.into(),
            retry_after: None,
            last: false,
        }
    }

    pub fn permanent(message: impl Into<String>) -> JobError {
        JobError {
            class: ErrorClass::Permanent,
            message: message.into(),
            retry_after: None,
            last: false,
        }
    }
}

/// How a successful attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// The job is done.
    Done,
    /// Not the job's turn yet: run it again after `delay`, without spending an attempt.
    Deferred { delay: Duration, reason: String },
}

/// One attempt of one job, as the handler sees it.
#[derive(Debug, Clone)]
pub struct RunningJob {
    pub id: String,
    /// The shard the job was leased from (docs/wire-format.md, "Shards"): where its notes go.
    pub shard: u32,
    /// The attempt's lease token (docs/wire-format.md, "lease token"): what tells this
    /// attempt from an earlier or later one of the same job.
    pub token: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub envelope: Envelope,
    /// Fires when an operator cancels the job or this worker loses its lease.
    pub cancel: CancellationToken,
    /// Why the pool stopped the attempt, set just before it drops the handler's future: what
    /// a handler that must clean up after itself (close its records, release its locks)
    /// reads when that future is dropped.
    pub stop: StopSignal,
    /// Where the handler leaves its report of the job (JSON, docs/wire-format.md,
    /// "Results"); it goes to the results stream with the job's end.
    pub result: ResultSlot,
}

/// Why the pool stopped an attempt before its handler returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// It ran longer than the job timeout.
    TimedOut(Duration),
    /// An operator cancelled the job.
    Cancelled,
    /// This worker no longer holds the job's lease (it expired and the job went elsewhere).
    LeaseLost,
    /// The worker is shutting down; the job is handed back and runs again.
    Shutdown,
}

/// Where the pool leaves the `Stop` of an attempt; the first reason given is kept.
#[derive(Debug, Clone, Default)]
pub struct StopSignal(Arc<OnceLock<Stop>>);

impl StopSignal {
    pub fn get(&self) -> Option<Stop> {
        self.0.get().copied()
    }

    fn set(&self, stop: Stop) {
        let _ = self.0.set(stop);
    }
}

/// A handler's report of a job, handed to `ack.lua` with the attempt's end. Empty when the
/// handler leaves none.
#[derive(Debug, Clone, Default)]
pub struct ResultSlot(Arc<Mutex<Option<String>>>);

impl ResultSlot {
    pub fn set(&self, json: String) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(json);
    }

    fn take(&self) -> String {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default()
    }
}

impl RunningJob {
    /// This attempt's lease: what owns the distribution lock (`Queue::try_lock`).
    pub fn lease(&self) -> Lease {
        Lease {
            id: self.id.clone(),
            token: self.token.clone(),
        }
    }
}

/// What the pool runs for each job: the distribution pipeline in production, a recorder in
/// tests. `Ok(Completion::Done)` marks the job done.
pub trait JobHandler: Send + Sync + 'static {
    fn handle(&self, job: RunningJob) -> impl Future<Output = Result<Completion, JobError>> + Send;

    /// Called once when the pool stops, after every attempt has ended or been stopped:
    /// resolves when the work the handler left running in the background (such as ending
    /// the records of stopped attempts) is done. The pool waits for it up to its shutdown
    /// timeout.
    fn drain(&self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// The longest an idle worker waits between fetches (`PoolConfig::idle_wait`).
pub const IDLE_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct PoolConfig {
    /// Jobs run at once in this process.
    pub concurrency: usize,
    pub lease: Duration,
    /// Most jobs leased per fetch; each fetch is also capped by the pool's free room (twice
    /// its concurrency, less what it holds), so a large value adapts to the pool.
    pub fetch_batch: usize,
    /// Longest wait between fetches while there is nothing to run. Idle workers are woken
    /// when work arrives and when the next scheduled job, retry or lease falls due; this
    /// bounds the wait should a wake-up be lost (a Redis restart).
    pub idle_wait: Duration,
    /// Wait for wake-ups (`BLPOP` on a connection of its own) rather than poll: polling
    /// starts at 5 ms and backs off to `idle_wait`. Off only for a Redis that does not serve
    /// blocking commands, and to measure what the wake-ups change.
    pub wake_ups: bool,
    /// Longest one attempt may run before it counts as a transient failure.
    pub job_timeout: Duration,
    /// On shutdown, how long running jobs get before they are released.
    pub shutdown_timeout: Duration,
    /// Backoff policy per job.
    pub retry: Arc<dyn Fn(&Envelope) -> RetryConfig + Send + Sync>,
    /// How long finished jobs are kept; the pool deletes older ones in small steps.
    pub retention: RetentionConfig,
}

impl PoolConfig {
    pub fn from_config(config: &crate::config::Config) -> PoolConfig {
        let config = config.clone();
        PoolConfig {
            concurrency: config.worker.concurrency,
            lease: config.lease(),
            fetch_batch: config.worker.fetch_batch,
            idle_wait: IDLE_WAIT,
            wake_ups: true,
            job_timeout: Duration::from_secs(config.worker.job_timeout_secs),
            shutdown_timeout: Duration::from_secs(config.worker.shutdown_timeout_secs),
            retention: config.retention,
            retry: Arc::new(move |env: &Envelope| config.retry_for(env.distribution().platform)),
        }
    }
}

struct Held {
    /// The shard the job was leased from.
    shard: u32,
    token: String,
    cancel: CancellationToken,
    stop: StopSignal,
}

/// What to do with Redis's answer to an ack (or the error that kept it from being recorded).
type AckDone = Box<dyn FnOnce(Result<AckResult, String>) + Send>;

/// A request to the acker: record an ack, or answer once every earlier ack is recorded.
enum AckRequest {
    /// An ack for a job of the given shard.
    Ack(u32, Ack, AckDone),
    Flush(oneshot::Sender<()>),
}

/// State shared by the job futures, the heartbeat and the acker, and (as its `Feed`) the
/// backend. The pool owns it; the backend sees only the `Feed`.
pub(super) struct Shared {
    queue: Queue,
    worker_id: String,
    config: PoolConfig,
    held: Mutex<HashMap<String, Held>>,
    acks: mpsc::UnboundedSender<AckRequest>,
    counters: Counters,
    /// Attempts whose handler is running now; `attempts_ended` is notified as each ends.
    running_attempts: std::sync::atomic::AtomicUsize,
    attempts_ended: tokio::sync::Notify,
    /// The shards this pool serves, as the heartbeat last read their count.
    shards: Mutex<Arc<ShardSet>>,
    /// Where the next fetch starts, counted up by each: shards take turns.
    next_shard: AtomicUsize,
    /// How long each shard let this pool wait, by the last fetch round that leased nothing.
    waits: Mutex<Vec<Duration>>,
    /// Rung by a shard's waiter when a wake-up arrives.
    wake: Arc<WakeSignal>,
    /// Stops the shards' waiters when the pool stops.
    stop_waiters: CancellationToken,
}

/// The shards a pool serves: a handle and (with wake-ups) a waiter per shard, shard 0 first.
struct ShardSet {
    queues: Vec<Queue>,
    waiters: Vec<Arc<Waiter>>,
}

/// One shard's wake-ups: while `until` is ahead, its task blocks on the shard's `wake`
/// list (`BLPOP`, on a connection of its own), because this pool is registered in the
/// shard's `idle` set until then. A blocking command cannot wait on keys of several
/// cluster slots, so a sharded queue needs one such wait per shard; and as a `BLPOP` cannot
/// be taken back once sent, each runs to its end in its own task, and its token is never
/// lost: it was pushed for this pool's registration.
struct Waiter {
    until: Mutex<Option<tokio::time::Instant>>,
    armed: tokio::sync::Notify,
    stop: CancellationToken,
}

impl Waiter {
    fn arm(&self, until: tokio::time::Instant) {
        if let Ok(mut at) = self.until.lock() {
            *at = Some(until);
        }
        self.armed.notify_one();
    }
}

/// What a waiter rings: the pool waiting for work wakes, and fetches first from `shard`.
#[derive(Default)]
struct WakeSignal {
    notify: tokio::sync::Notify,
    /// The shard of the last wake-up, plus one; 0: none since the last fetch.
    shard: AtomicU32,
}

/// Blocks on `queue`'s `wake` list whenever `waiter` is armed, until its stop.
async fn run_waiter(queue: Queue, mut conn: RedisConn, waiter: Arc<Waiter>, wake: Arc<WakeSignal>) {
    loop {
        // Made before `until` is read, so that an arming in between is not missed.
        let armed = waiter.armed.notified();
        let until = waiter.until.lock().ok().and_then(|at| *at);
        let now = tokio::time::Instant::now();
        let Some(until) = until.filter(|at| *at > now) else {
            tokio::select! {
                () = waiter.stop.cancelled() => return,
                () = armed => continue,
            }
        };
        let woken = tokio::select! {
            () = waiter.stop.cancelled() => return,
            woken = queue.wait_for_wake(&mut conn, until - now) => woken,
        };
        match woken {
            Ok(true) => {
                if let Ok(mut at) = waiter.until.lock() {
                    *at = None;
                }
                wake.shard.store(queue.shard_index() + 1, Ordering::Relaxed);
                wake.notify.notify_one();
            }
            Ok(false) => {}
            Err(e) => {
                // The fetch worked, so Redis is there: it may not serve blocking commands
                // (some proxies do not). The pool fetches again when its wait is over.
                tracing::warn!(error = %e, shard = queue.shard_index(), "waiting for a wake-up failed; sleeping instead");
                tokio::select! {
                    () = waiter.stop.cancelled() => return,
                    () = tokio::time::sleep_until(until) => {}
                }
            }
        }
    }
}

impl Feed for Shared {
    fn capacity(&self) -> usize {
        self.config.concurrency
    }

    fn held_count(&self) -> usize {
        self.held.lock().map(|h| h.len()).unwrap_or(0)
    }

    fn fetch_batch(&self) -> usize {
        self.config.fetch_batch
    }

    fn idle_wait(&self) -> Duration {
        self.config.idle_wait
    }

    fn wakes(&self) -> bool {
        self.config.wake_ups
    }

    /// Fetches from one shard after another, starting where the last wake-up came from, or
    /// else one shard further than the last fetch, until one leases jobs: so every shard
    /// gets its turn, and one fetch costs one round trip under load. A round that leases
    /// nothing has registered this pool as waiting in every shard.
    fn lease(
        self: Arc<Self>,
        n: usize,
        wait: Duration,
    ) -> BoxFuture<'static, Result<Fetched, QueueError>> {
        async move {
            let set = self.shard_set();
            let count = set.queues.len();
            // Taken modulo the count below: a wake-up from a shard since dropped starts
            // the round at another.
            let first = match self.wake.shard.swap(0, Ordering::Relaxed) {
                0 => self.next_shard.fetch_add(1, Ordering::Relaxed) % count,
                woken => woken as usize - 1,
            };
            let mut waits = vec![Duration::ZERO; count];
            let mut failed = None;
            for k in 0..count {
                let shard = (first + k) % count;
                match set.queues[shard]
                    .fetch_or_wait(&self.worker_id, self.config.lease, n, wait)
                    .await
                {
                    Ok(fetched) if !fetched.jobs.is_empty() => {
                        self.hold(&fetched.jobs);
                        return Ok(fetched);
                    }
                    Ok(fetched) => waits[shard] = fetched.wait,
                    // One shard away (its master failing over) does not stop the others.
                    Err(e) if count > 1 => {
                        tracing::warn!(error = %e, shard, "fetching from a shard failed");
                        failed = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
            // The soonest any shard has work due; zero when one has some now.
            let wait = waits.iter().copied().min().unwrap_or_default();
            if let Ok(mut last) = self.waits.lock() {
                *last = waits;
            }
            Ok(Fetched {
                jobs: Vec::new(),
                wait,
            })
        }
        .boxed()
    }

    fn wait_for_work(
        self: Arc<Self>,
        wait: Duration,
    ) -> BoxFuture<'static, Result<(), QueueError>> {
        async move {
            if !self.config.wake_ups {
                tokio::time::sleep(wait).await;
                return Ok(());
            }
            let set = self.shard_set();
            let waits = self.waits.lock().map(|w| w.clone()).unwrap_or_default();
            let now = tokio::time::Instant::now();
            for (waiter, shard_wait) in set.waiters.iter().zip(waits) {
                if !shard_wait.is_zero() {
                    waiter.arm(now + shard_wait);
                }
            }
            tokio::select! {
                () = self.wake.notify.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
            Ok(())
        }
        .boxed()
    }

    fn release(self: Arc<Self>, jobs: Vec<Leased>, why: &'static str) -> BoxFuture<'static, ()> {
        async move {
            self.release_leases(jobs.iter().map(|job| (job.shard, job.lease())), why)
                .await
        }
        .boxed()
    }
}

/// What this pool did since it started.
#[derive(Debug, Default)]
pub struct Counters {
    pub done: AtomicU64,
    pub retried: AtomicU64,
    pub dead: AtomicU64,
    pub cancelled: AtomicU64,
    pub deferred: AtomicU64,
    pub released: AtomicU64,
    pub stale: AtomicU64,
}

impl Shared {
    fn shard_set(&self) -> Arc<ShardSet> {
        match self.shards.lock() {
            Ok(set) => Arc::clone(&set),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// A handle on `shard`: the pool's own, or a new one for a shard beyond the queue's
    /// count (a job leased before the count was lowered).
    fn shard_queue(&self, shard: u32) -> Queue {
        self.shard_set()
            .queues
            .get(shard as usize)
            .cloned()
            .unwrap_or_else(|| self.queue.shard(shard))
    }

    /// Reads the queue's shard count, and serves the shards it adds or stops serving those
    /// it drops (their jobs this pool holds still get their heartbeats and acks).
    async fn refresh_shards(&self) -> Result<(), QueueError> {
        let count = self.queue.read_shard_count().await?.get() as usize;
        let set = self.shard_set();
        if count == set.queues.len() {
            return Ok(());
        }
        let mut waiters: Vec<Arc<Waiter>> = set.waiters.iter().take(count).cloned().collect();
        for gone in set.waiters.iter().skip(count) {
            gone.stop.cancel();
        }
        let queues: Vec<Queue> = (0..count as u32).map(|i| self.queue.shard(i)).collect();
        if self.config.wake_ups {
            for queue in queues.iter().skip(waiters.len()) {
                waiters.push(self.start_waiter(queue.clone()).await?);
            }
        }
        tracing::info!(
            queue = self.queue.name(),
            from = set.queues.len(),
            to = count,
            "the queue's shard count changed"
        );
        if let Ok(mut shards) = self.shards.lock() {
            *shards = Arc::new(ShardSet { queues, waiters });
        }
        Ok(())
    }

    /// A waiter for `queue`'s shard, on a connection of its own.
    async fn start_waiter(&self, queue: Queue) -> Result<Arc<Waiter>, QueueError> {
        let conn = queue.connection().dedicated().await?;
        let waiter = Arc::new(Waiter {
            until: Mutex::new(None),
            armed: tokio::sync::Notify::new(),
            stop: self.stop_waiters.child_token(),
        });
        tokio::spawn(run_waiter(
            queue,
            conn,
            Arc::clone(&waiter),
            Arc::clone(&self.wake),
        ));
        Ok(waiter)
    }

    fn hold(&self, jobs: &[Leased]) {
        if let Ok(mut held) = self.held.lock() {
            for job in jobs {
                held.insert(
                    job.id.clone(),
                    Held {
                        shard: job.shard,
                        token: job.token.clone(),
                        cancel: CancellationToken::new(),
                        stop: StopSignal::default(),
                    },
                );
            }
        }
    }

    /// The job's cancel token and stop signal.
    fn stop_handles(&self, id: &str) -> (CancellationToken, StopSignal) {
        self.held
            .lock()
            .ok()
            .and_then(|h| {
                h.get(id)
                    .map(|held| (held.cancel.clone(), held.stop.clone()))
            })
            .unwrap_or_default()
    }

    /// Stops the running attempt of job `id`, if any, for `why`.
    fn stop_job(&self, id: &str, why: Stop) {
        let (cancel, stop) = self.stop_handles(id);
        stop.set(why);
        cancel.cancel();
    }

    /// Stops every attempt still running, for `why`, and waits (at most `within`) until
    /// their handlers' futures are dropped and their acks handed to the acker.
    async fn stop_running(&self, why: Stop, within: Duration) {
        let ids: Vec<String> = self
            .held
            .lock()
            .map(|h| h.keys().cloned().collect())
            .unwrap_or_default();
        for id in &ids {
            self.stop_job(id, why);
        }
        let all_ended = async {
            loop {
                let ended = self.attempts_ended.notified();
                if self.running_attempts.load(Ordering::SeqCst) == 0 {
                    return;
                }
                ended.await;
            }
        };
        if tokio::time::timeout(within, all_ended).await.is_err() {
            tracing::warn!(
                running = self.running_attempts.load(Ordering::SeqCst),
                "attempts still running after being stopped"
            );
        }
    }

    /// The leases held, each with its shard.
    fn held_leases(&self) -> Vec<(u32, Lease)> {
        self.held
            .lock()
            .map(|h| {
                h.iter()
                    .map(|(id, held)| {
                        let lease = Lease {
                            id: id.clone(),
                            token: held.token.clone(),
                        };
                        (held.shard, lease)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn forget(&self, id: &str) {
        if let Ok(mut held) = self.held.lock() {
            held.remove(id);
        }
    }

    /// Hands an ack to the batching acker, which calls `done` with Redis's answer. The job
    /// stays held (its lease renewed, counted against the room for new fetches) until then,
    /// but its concurrency slot is free at once: a slot waiting for an ack round trip would
    /// leave the pool's throughput bounded by Redis's latency rather than its capacity.
    fn ack(&self, shard: u32, ack: Ack, done: AckDone) {
        if let Err(mpsc::error::SendError(request)) =
            self.acks.send(AckRequest::Ack(shard, ack, done))
            && let AckRequest::Ack(_, ack, done) = request
        {
            self.forget(&ack.lease.id);
            done(Err("the acker has stopped".to_owned()));
        }
    }

    /// Waits until every ack handed over so far is recorded.
    async fn flush_acks(&self) {
        let (tx, rx) = oneshot::channel();
        if self.acks.send(AckRequest::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Hands jobs back unfinished, each to its shard; their attempts do not count.
    async fn release_leases(&self, leases: impl IntoIterator<Item = (u32, Lease)>, why: &str) {
        let mut by_shard: std::collections::BTreeMap<u32, Vec<Ack>> = Default::default();
        for (shard, lease) in leases {
            self.forget(&lease.id);
            by_shard.entry(shard).or_default().push(Ack {
                lease,
                outcome: AckOutcome::Release {
                    message: why.to_owned(),
                },
                result: String::new(),
            });
        }
        for (shard, acks) in by_shard {
            if let Err(e) = self.shard_queue(shard).ack(&acks).await {
                tracing::warn!(error = %e, jobs = acks.len(), shard, "releasing jobs failed; their leases will expire instead");
            }
        }
    }

    /// Releases every job still held, under the lease it was fetched with.
    async fn release_all(&self, why: &str) {
        self.release_leases(self.held_leases(), why).await;
    }
}

/// Collects acks from all running jobs and sends them to Redis in one script call per batch:
/// whatever arrived while the previous call was in flight goes together.
async fn run_acker(shared: Weak<Shared>, mut rx: mpsc::UnboundedReceiver<AckRequest>) {
    const MAX_BATCH: usize = 500;
    let mut batch: Vec<AckRequest> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Under load, jobs finish every few microseconds. Letting the running ones go on for
        // a moment gathers one larger batch instead of several small ones, and each script
        // call has a fixed cost in Redis. As soon as a moment brings nothing more, the batch
        // goes: an idle pool acks at once.
        while batch.len() < MAX_BATCH {
            tokio::task::yield_now().await;
            let before = batch.len();
            while batch.len() < MAX_BATCH
                && let Ok(request) = rx.try_recv()
            {
                batch.push(request);
            }
            if batch.len() == before {
                break;
            }
        }
        let mut shards = Vec::with_capacity(batch.len());
        let mut acks = Vec::with_capacity(batch.len());
        let mut callbacks = Vec::with_capacity(batch.len());
        let mut flushes = Vec::new();
        for request in batch.drain(..) {
            match request {
                AckRequest::Ack(shard, ack, done) => {
                    shards.push(shard);
                    acks.push(ack);
                    callbacks.push(done);
                }
                AckRequest::Flush(tx) => flushes.push(tx),
            }
        }
        let Some(pool) = shared.upgrade() else {
            return;
        };
        // One script call per shard among the acks (one, unsharded), all sent at once: on a
        // cluster they are served by several masters.
        let mut order: Vec<usize> = (0..acks.len()).collect();
        order.sort_by_key(|&i| shards[i]);
        let mut acks: Vec<Option<Ack>> = acks.into_iter().map(Some).collect();
        let mut callbacks: Vec<Option<AckDone>> = callbacks.into_iter().map(Some).collect();
        let groups: Vec<(Queue, Vec<Ack>, Vec<AckDone>)> = order
            .chunk_by(|&a, &b| shards[a] == shards[b])
            .map(|group| {
                (
                    pool.shard_queue(shards[group[0]]),
                    group.iter().filter_map(|&i| acks[i].take()).collect(),
                    group.iter().filter_map(|&i| callbacks[i].take()).collect(),
                )
            })
            .collect();
        let sent = futures::future::join_all(groups.into_iter().map(
            |(queue, acks, callbacks)| async move {
                let mut result = queue.ack(&acks).await;
                if let Err(e) = &result {
                    // One retry after a pause covers a Redis failover or a dropped
                    // connection. An ack that was applied before the connection dropped is
                    // `stale` the second time, and changes nothing.
                    tracing::warn!(error = %e, jobs = acks.len(), "ack failed; retrying once");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    result = queue.ack(&acks).await;
                }
                (acks, callbacks, result)
            },
        ))
        .await;
        for (acks, callbacks, result) in sent {
            let results: Vec<Result<AckResult, String>> = match result {
                Ok(results) => results.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e.to_string()); acks.len()],
            };
            for ((ack, done), r) in acks.iter().zip(callbacks).zip(results) {
                pool.forget(&ack.lease.id);
                done(r);
            }
        }
        for tx in flushes {
            let _ = tx.send(());
        }
    }
}

/// Renews the leases of every held job every third of the lease, and tells running jobs
/// when they were lost or cancelled.
async fn run_heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    let period = shared.config.lease / 3;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        // Each heartbeat also learns whether the queue gained or lost shards.
        if let Err(e) = shared.refresh_shards().await {
            tracing::warn!(error = %e, "reading the queue's shard count failed; serving the shards known");
        }
        // Every shard served gets a heartbeat, with or without leases there: it registers the
        // worker as live in each (and shard 0's is what operators count).
        let mut by_shard: std::collections::BTreeMap<u32, Vec<Lease>> =
            (0..shared.shard_set().queues.len() as u32)
                .map(|shard| (shard, Vec::new()))
                .collect();
        for (shard, lease) in shared.held_leases() {
            by_shard.entry(shard).or_default().push(lease);
        }
        for (shard, leases) in by_shard {
            match shared
                .shard_queue(shard)
                .heartbeat(&shared.worker_id, shared.config.lease, &leases)
                .await
            {
                Ok(reply) => {
                    for id in &reply.lost {
                        shared.stop_job(id, Stop::LeaseLost);
                    }
                    for id in &reply.cancel {
                        shared.stop_job(id, Stop::Cancelled);
                    }
                    for id in &reply.lost {
                        tracing::warn!(job = %id, "lease lost; stopping work on the job");
                        shared.forget(id);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, shard, "heartbeat failed; leases may expire")
                }
            }
        }
    }
}

/// How often a pool applies the retention; each round deletes until nothing is left to.
const RETENTION_PERIOD: Duration = Duration::from_secs(10);
/// Jobs deleted per `purge.lua` call: a call of this size takes Redis well under a
/// millisecond, so retention never holds up fetches and acks for long.
const RETENTION_STEP: u64 = 100;

/// The retention rules of `config`, per finished state.
pub fn retention_rules(config: &RetentionConfig) -> [(JobState, Retention); 3] {
    let rule = |keep: &crate::config::KeepConfig| Retention {
        max_age_secs: keep.max_age().map(|d| d.as_secs()),
        max_jobs: keep.max_jobs(),
    };
    [
        (JobState::Done, rule(&config.done)),
        (JobState::Dead, rule(&config.dead)),
        (JobState::Cancelled, rule(&config.cancelled)),
    ]
}

/// Deletes finished jobs past the retention, every `RETENTION_PERIOD` (the first round soon
/// after the start, spread so that workers started together do not run theirs at once), in
/// steps of `RETENTION_STEP` jobs. Several workers may trim one queue at once: each step is
/// one script call, and a job deleted by one is not found by the other.
async fn run_retention(shared: Arc<Shared>, stop: CancellationToken) {
    let rules = retention_rules(&shared.config.retention);
    let mut pause = Duration::from_millis(fastrand::u64(0..=1000));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = RETENTION_PERIOD;
        let shards = shared.shard_set().queues.clone();
        let steps: Vec<((JobState, Retention), Queue)> = rules
            .iter()
            .flat_map(|rule| shards.iter().map(|queue| (*rule, queue.clone())))
            .collect();
        for ((state, rule), queue) in steps {
            if rule == Retention::default() {
                continue;
            }
            // The newest `max_jobs` of the queue, spread evenly over its shards.
            let rule = rule.per_shard(shards.len() as u32);
            let mut deleted = 0;
            loop {
                if stop.is_cancelled() {
                    return;
                }
                match queue.retention_step(state, rule, RETENTION_STEP).await {
                    Ok(n) => {
                        deleted += n;
                        if n < RETENTION_STEP {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, %state, "deleting finished jobs past their retention failed; trying again in {RETENTION_PERIOD:?}");
                        break;
                    }
                }
                // Let fetches and acks in between.
                tokio::task::yield_now().await;
            }
            if deleted > 0 {
                tracing::debug!(%state, deleted, shard = queue.shard_index(), "deleted finished jobs past their retention");
            }
        }
    }
}

/// Runs one attempt and acks it. Always returns Ok to apalis: the outcome is in Redis.
async fn run_job<H: JobHandler>(
    job: Leased,
    shared: Data<Arc<Shared>>,
    handler: Data<Arc<H>>,
) -> Result<(), std::convert::Infallible> {
    let shared = shared.0;
    // Until its ack is handed over: what a shutdown waits for after stopping attempts.
    let _running = RunningAttempt::new(&shared);
    let started = Instant::now();
    let (outcome, result) = match job.parse_envelope() {
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "malformed job moved to the dead set");
            let dead = AckOutcome::Dead {
                class: ErrorClass::Malformed,
                message: e,
            };
            (dead, String::new())
        }
        Ok(envelope) => {
            // Prometheus: queue latency, attempt duration, processed and failed counts.
            let observed = crate::metrics::attempt_started(
                job.waited,
                envelope.distribution().platform,
                envelope.kind(),
            );
            let slot = ResultSlot::default();
            let outcome = attempt(&shared, handler.0.as_ref(), &job, envelope, &slot).await;
            observed.finished(metrics_end(&outcome));
            (outcome, slot.take())
        }
    };
    let counter: fn(&Counters) -> &AtomicU64 = match &outcome {
        AckOutcome::Done => |c| &c.done,
        AckOutcome::Retry { .. } => |c| &c.retried,
        AckOutcome::Dead { .. } => |c| &c.dead,
        AckOutcome::Cancelled { .. } => |c| &c.cancelled,
        AckOutcome::Release { .. } => |c| &c.released,
        AckOutcome::Defer { .. } => |c| &c.deferred,
    };
    let ack = Ack {
        lease: job.lease(),
        outcome,
        result,
    };
    let pool = Arc::clone(&shared);
    shared.ack(
        job.shard,
        ack,
        Box::new(move |result| match result {
            Ok(AckResult::Applied(state)) => {
                counter(&pool.counters).fetch_add(1, Ordering::Relaxed);
                tracing::debug!(job = %job.id, attempt = job.attempt, %state, elapsed_ms = started.elapsed().as_millis() as u64, "attempt recorded");
            }
            Ok(AckResult::Stale) => {
                pool.counters.stale.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(job = %job.id, attempt = job.attempt, "ack refused: the lease had passed to another worker");
            }
            Err(e) => {
                tracing::error!(job = %job.id, error = %e, "ack failed; the lease will expire and the job run again")
            }
        }),
    );
    Ok(())
}

/// Counts an attempt as running while it lives.
struct RunningAttempt<'a>(&'a Shared);

impl<'a> RunningAttempt<'a> {
    fn new(shared: &'a Shared) -> RunningAttempt<'a> {
        shared.running_attempts.fetch_add(1, Ordering::SeqCst);
        RunningAttempt(shared)
    }
}

impl Drop for RunningAttempt<'_> {
    fn drop(&mut self) {
        self.0.running_attempts.fetch_sub(1, Ordering::SeqCst);
        self.0.attempts_ended.notify_waiters();
    }
}

async fn attempt<H: JobHandler>(
    shared: &Shared,
    handler: &H,
    job: &Leased,
    envelope: Envelope,
    result: &ResultSlot,
) -> AckOutcome {
    let (cancel, stop) = shared.stop_handles(&job.id);
    let policy = (shared.config.retry)(&envelope);
    let span = tracing::info_span!(
        "job",
        job_id = %job.id,
        kind = %envelope.kind(),
        release = %envelope.release().key(),
        platform = %envelope.distribution().platform,
        attempt = job.attempt,
    );
    let running = RunningJob {
        id: job.id.clone(),
        shard: job.shard,
        token: job.token.clone(),
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        envelope,
        cancel: cancel.clone(),
        stop: stop.clone(),
        result: result.clone(),
    };
    // Pinned here rather than inside the select, so that it is dropped only after the reason
    // for stopping it is set.
    let work = std::pin::pin!(
        AssertUnwindSafe(tracing::Instrument::instrument(
            handler.handle(running),
            span,
        ))
        .catch_unwind()
    );
    let timeout = shared.config.job_timeout;
    let result = tokio::select! {
        r = work => match r {
            Ok(result) => result,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                Err(JobError::permanent(format!("the job handler panicked: {msg}")))
            }
        },
        () = tokio::time::sleep(timeout) => {
            stop.set(Stop::TimedOut(timeout));
            Err(JobError::transient(format!("attempt timed out after {timeout:?}")))
        }
        () = cancel.cancelled() => {
            // The heartbeat or the shutdown set the reason before cancelling.
            return match stop.get() {
                Some(Stop::Shutdown) => AckOutcome::Release {
                    message: "worker shut down before the job finished".to_owned(),
                },
                Some(Stop::Cancelled | Stop::LeaseLost | Stop::TimedOut(_)) | None => {
                    AckOutcome::Cancelled { message: "cancelled while running".to_owned() }
                }
            };
        }
    };
    match result {
        Ok(Completion::Done) => AckOutcome::Done,
        Ok(Completion::Deferred { delay, reason }) => AckOutcome::Defer {
            delay,
            message: reason,
        },
        Err(e) if e.class.is_retryable() && !e.last => AckOutcome::Retry {
            delay: backoff::delay(&policy, job.attempt, e.retry_after),
            class: e.class,
            message: e.message,
        },
        Err(e) => AckOutcome::Dead {
            class: e.class,
            message: e.message,
        },
    }
}

/// A running pool's handle: its worker id and counters.
pub struct PoolHandle {
    pub worker_id: String,
    shared: Arc<Shared>,
}

impl PoolHandle {
    pub fn done(&self) -> u64 {
        self.shared.counters.done.load(Ordering::Relaxed)
    }

    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }
}

/// Runs the pool until `shutdown` resolves, then stops fetching, gives running jobs
/// `shutdown_timeout` to finish, and releases what is still held.
pub async fn run<H: JobHandler>(
    queue: Queue,
    handler: Arc<H>,
    config: PoolConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_start: impl FnOnce(PoolHandle),
) -> Result<(), QueueError> {
    let worker_id = super::new_worker_id();
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let queue = queue.shard(0);
    let shards = queue.shards().await?;
    // Every shard must speak this format; a version 7 worker refuses a sharded queue.
    for shard in &shards {
        shard.check_format().await?;
    }
    let shared = Arc::new(Shared {
        shards: Mutex::new(Arc::new(ShardSet {
            queues: shards.clone(),
            waiters: Vec::new(),
        })),
        next_shard: AtomicUsize::new(0),
        waits: Mutex::new(Vec::new()),
        wake: Arc::new(WakeSignal::default()),
        stop_waiters: CancellationToken::new(),
        queue: queue.clone(),
        worker_id: worker_id.clone(),
        config: config.clone(),
        held: Mutex::new(HashMap::new()),
        acks: ack_tx,
        counters: Counters::default(),
        running_attempts: std::sync::atomic::AtomicUsize::new(0),
        attempts_ended: tokio::sync::Notify::new(),
    });
    // However `run` ends, the shards' waiters stop with it.
    let _stop_waiters = shared.stop_waiters.clone().drop_guard();
    // Idle waits block on a connection of their own per shard.
    if config.wake_ups {
        let mut waiters = Vec::with_capacity(shards.len());
        for shard in &shards {
            waiters.push(shared.start_waiter(shard.clone()).await?);
        }
        if let Ok(mut set) = shared.shards.lock() {
            *set = Arc::new(ShardSet {
                queues: shards.clone(),
                waiters,
            });
        }
    }
    // Register with a first heartbeat so operators see the worker at once.
    for shard in &shards {
        shard.heartbeat(&worker_id, config.lease, &[]).await?;
    }
    queue
        .announce_retention(&retention_rules(&config.retention))
        .await?;
    let acker = tokio::spawn(run_acker(Arc::downgrade(&shared), ack_rx));
    let stop_heartbeat = CancellationToken::new();
    let heartbeat = tokio::spawn(run_heartbeat(Arc::clone(&shared), stop_heartbeat.clone()));
    let retention = tokio::spawn(run_retention(Arc::clone(&shared), stop_heartbeat.clone()));
    on_start(PoolHandle {
        worker_id: worker_id.clone(),
        shared: Arc::clone(&shared),
    });
    tracing::info!(worker = %worker_id, queue = queue.name(), shards = shards.len(), concurrency = config.concurrency, "worker pool started");

    let monitor_shared = Arc::clone(&shared);
    let concurrency = config.concurrency;
    let drained = Arc::clone(&handler);
    let monitor = Monitor::new()
        .register(move |_| {
            WorkerBuilder::new(format!("atr-dist-{}", monitor_shared.worker_id))
                .backend(RedisBackend::new(
                    Arc::clone(&monitor_shared) as Arc<dyn Feed>
                ))
                .data(Arc::clone(&monitor_shared))
                .data(Arc::clone(&handler))
                .concurrency(concurrency)
                .parallelize(tokio::spawn)
                .build(run_job::<H>)
        })
        .shutdown_timeout(config.shutdown_timeout);
    let result = monitor
        .run_with_signal(async move {
            shutdown.await;
            tracing::info!("shutdown requested: no new jobs; waiting for running ones");
            Ok(())
        })
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "worker pool stopped with an error");
    }
    // Attempts that outlasted the shutdown timeout are stopped now, rather than left to run
    // on after their jobs are handed back: their handlers see `Stop::Shutdown` (and end
    // their records), and they ack `release`.
    shared
        .stop_running(Stop::Shutdown, config.shutdown_timeout)
        .await;
    // Acks of finished jobs first, so that only jobs still running are released.
    shared.flush_acks().await;
    // Whatever is still held did not finish in time: hand it back before leaving, so it does
    // not wait for its lease to expire.
    shared
        .release_all("worker shut down before the job finished")
        .await;
    if tokio::time::timeout(config.shutdown_timeout, drained.drain())
        .await
        .is_err()
    {
        tracing::warn!("the job handler's background work did not finish in time");
    }
    stop_heartbeat.cancel();
    let _ = heartbeat.await;
    let _ = retention.await;
    // No heartbeat follows: leave the live workers now, not a lease later.
    for shard in shared.shard_set().queues.iter() {
        if let Err(e) = shard.deregister(&worker_id).await {
            tracing::warn!(error = %e, shard = shard.shard_index(), "could not leave the queue's live workers; the entry expires with its heartbeat");
        }
    }
    drop(shared);
    acker.abort();
    tracing::info!(worker = %worker_id, "worker pool stopped");
    Ok(())
}
