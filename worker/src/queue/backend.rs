//! The apalis `Backend` over our Redis queue: it leases jobs with `fetch.lua`, in batches no
//! larger than the pool's free capacity, and when there is nothing to lease waits until a
//! script that makes work ready wakes it, or the next job falls due (docs/wire-format.md,
//! "Waking idle workers").
//!
//! apalis drives it (and the worker pool's concurrency limit, tracing and shutdown); acks,
//! retries and leases are ours, in `pool.rs`, because apalis-redis's versions of them do not
//! persist retry state and do not scale with the backlog (see `docs/wire-format.md`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::layers::Identity;
use apalis_core::task::Task;
use apalis_core::task::task_id::RandomId;
use apalis_core::worker::context::WorkerContext;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::{Fetched, Leased, QueueError};

/// Idle polling (without wake-ups): start fast, back off to `idle_wait` while the queue
/// stays empty.
const IDLE_MIN: Duration = Duration::from_millis(5);
/// With wake-ups, a fetch that leased nothing and may not wait (a job fell due meanwhile) is
/// repeated after this pause, so a queue that keeps answering so cannot make it spin.
const REFETCH_PAUSE: Duration = Duration::from_millis(1);
/// After an error talking to Redis, wait this long before the next fetch.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// What the backend needs of the pool it feeds. The pool's state (`pool::Shared`) implements
/// it; the backend knows nothing else of the pool, and the pool owns that state.
pub trait Feed: Send + Sync + 'static {
    /// Attempts the pool runs at once.
    fn capacity(&self) -> usize;
    /// Jobs the pool holds a lease on: running, or leased and waiting to start.
    fn held_count(&self) -> usize;
    /// The most jobs one fetch leases (`worker.fetch_batch`).
    fn fetch_batch(&self) -> usize;
    /// The longest wait between fetches while there is nothing to run.
    fn idle_wait(&self) -> Duration;
    /// Whether idle waits are for wake-ups (`wait_for_work`) rather than sleeps.
    fn wakes(&self) -> bool;
    /// Leases up to `n` jobs with `fetch.lua`, held by the pool from then on; when there is
    /// none, says how long the pool may wait for work (`wait` at most; zero without wake-ups).
    fn lease(
        self: Arc<Self>,
        n: usize,
        wait: Duration,
    ) -> BoxFuture<'static, Result<Fetched, QueueError>>;
    /// Waits up to `wait` for a wake-up (a script made work ready).
    fn wait_for_work(self: Arc<Self>, wait: Duration)
    -> BoxFuture<'static, Result<(), QueueError>>;
    /// Hands leased jobs that never started back to the queue.
    fn release(self: Arc<Self>, jobs: Vec<Leased>, why: &'static str) -> BoxFuture<'static, ()>;
}

pub struct RedisBackend {
    shared: Arc<dyn Feed>,
    buffer: VecDeque<Leased>,
    fetching: Option<BoxFuture<'static, Result<Fetched, QueueError>>>,
    /// Until the next fetch: a sleep, or a wait for a wake-up.
    sleeping: Option<BoxFuture<'static, ()>>,
    /// The polling interval, without wake-ups.
    idle: Duration,
    closing: Option<BoxFuture<'static, ()>>,
}

fn sleep(d: Duration) -> BoxFuture<'static, ()> {
    tokio::time::sleep(d).boxed()
}

impl RedisBackend {
    pub fn new(shared: Arc<dyn Feed>) -> RedisBackend {
        RedisBackend {
            shared,
            buffer: VecDeque::new(),
            fetching: None,
            sleeping: None,
            idle: IDLE_MIN,
            closing: None,
        }
    }

    fn start_fetch(&mut self) {
        let shared = Arc::clone(&self.shared);
        // Lease no more than the pool can start soon: a leased job waiting in a buffer is a
        // job another worker could be running. "Soon" is one more round of the pool's
        // capacity, so the next batch is at hand when slots free up instead of a few jobs per
        // round trip.
        let room = (2 * shared.capacity())
            .saturating_sub(shared.held_count())
            .max(1);
        let n = room.min(shared.fetch_batch());
        let wait = if shared.wakes() {
            shared.idle_wait()
        } else {
            Duration::ZERO
        };
        self.fetching = Some(shared.lease(n, wait));
    }

    /// What to do when a fetch leased nothing: wait for a wake-up for as long as fetch.lua
    /// allowed, or without wake-ups poll again after a growing pause.
    fn wait(&mut self, allowed: Duration) -> BoxFuture<'static, ()> {
        if !self.shared.wakes() {
            let pause = self.idle;
            self.idle = (self.idle * 2).min(self.shared.idle_wait());
            return sleep(pause);
        }
        if allowed.is_zero() {
            return sleep(REFETCH_PAUSE);
        }
        let waiting = Arc::clone(&self.shared).wait_for_work(allowed);
        async move {
            if let Err(e) = waiting.await {
                // The fetch worked, so Redis is there: it may not serve blocking commands
                // (some proxies do not). Wait out the time without them.
                tracing::warn!(error = %e, "waiting for a wake-up failed; sleeping instead");
                tokio::time::sleep(allowed).await;
            }
        }
        .boxed()
    }
}

impl Backend for RedisBackend {
    type Task = Task<Leased>;
    type Error = QueueError;

    fn poll_ready(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        loop {
            if let Some(job) = self.buffer.pop_front() {
                return Poll::Ready(Some(Ok(Task::new(job))));
            }
            if let Some(fut) = self.fetching.as_mut() {
                let result = match fut.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => r,
                };
                self.fetching = None;
                match result {
                    Ok(fetched) if fetched.jobs.is_empty() => {
                        self.sleeping = Some(self.wait(fetched.wait));
                    }
                    Ok(fetched) => {
                        self.idle = IDLE_MIN;
                        self.buffer.extend(fetched.jobs);
                    }
                    Err(e) => {
                        // Redis away: keep the worker alive and try again; the leases of jobs
                        // in flight are renewed by the heartbeat once Redis is back.
                        tracing::warn!(error = %e, "fetching jobs failed; retrying in {ERROR_PAUSE:?}");
                        self.sleeping = Some(sleep(ERROR_PAUSE));
                    }
                }
                continue;
            }
            if let Some(sleeping) = self.sleeping.as_mut() {
                if sleeping.poll_unpin(cx).is_pending() {
                    return Poll::Pending;
                }
                self.sleeping = None;
            }
            self.start_fetch();
        }
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        if self.closing.is_none() {
            // Jobs leased but never started go straight back to the queue.
            let jobs: Vec<Leased> = self.buffer.drain(..).collect();
            let shared = Arc::clone(&self.shared);
            let pending_fetch = self.fetching.take();
            self.closing = Some(
                async move {
                    let mut jobs = jobs;
                    if let Some(fetch) = pending_fetch
                        && let Ok(more) = fetch.await
                    {
                        jobs.extend(more.jobs);
                    }
                    shared
                        .release(jobs, "worker shutting down before the job started")
                        .await;
                }
                .boxed(),
            );
        }
        match self.closing.as_mut().map(|f| f.poll_unpin(cx)) {
            Some(Poll::Pending) => Poll::Pending,
            _ => Poll::Ready(Ok(())),
        }
    }
}

impl BackendConfig for RedisBackend {
    type Args = Leased;
    type Id = RandomId;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = Identity;

    fn config(&self) -> &Self::Config {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        Identity::new()
    }
}
