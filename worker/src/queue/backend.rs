//! The apalis `Backend` over our Redis queue: it leases jobs with `fetch.lua`, in batches no
//! larger than the pool's free capacity, and sleeps briefly when the queue is empty.
//!
//! apalis drives it (and the worker pool's concurrency limit, tracing and shutdown); acks,
//! retries and leases are ours, in `pool.rs`, because apalis-redis's versions of them do not
//! persist retry state and do not scale with the backlog (see `docs/wire-format.md`).

use std::collections::VecDeque;
use std::pin::Pin;
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

use super::{Leased, QueueError};

/// Idle polling: start fast, back off to this when the queue stays empty.
const IDLE_MIN: Duration = Duration::from_millis(5);
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
    /// The longest sleep between fetches while the queue is empty.
    fn idle_poll(&self) -> Duration;
    /// Leases up to `n` jobs with `fetch.lua`, held by the pool from then on.
    fn lease(self: Arc<Self>, n: usize) -> BoxFuture<'static, Result<Vec<Leased>, QueueError>>;
    /// Hands leased jobs that never started back to the queue.
    fn release(self: Arc<Self>, jobs: Vec<Leased>, why: &'static str) -> BoxFuture<'static, ()>;
}

pub struct RedisBackend {
    shared: Arc<dyn Feed>,
    buffer: VecDeque<Leased>,
    fetching: Option<BoxFuture<'static, Result<Vec<Leased>, QueueError>>>,
    sleeping: Option<Pin<Box<tokio::time::Sleep>>>,
    idle: Duration,
    closing: Option<BoxFuture<'static, ()>>,
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
        self.fetching = Some(shared.lease(n));
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
                    Ok(jobs) if jobs.is_empty() => {
                        self.sleeping = Some(Box::pin(tokio::time::sleep(self.idle)));
                        self.idle = (self.idle * 2).min(self.shared.idle_poll());
                    }
                    Ok(jobs) => {
                        self.idle = IDLE_MIN;
                        self.buffer.extend(jobs);
                    }
                    Err(e) => {
                        // Redis away: keep the worker alive and try again; the leases of jobs
                        // in flight are renewed by the heartbeat once Redis is back.
                        tracing::warn!(error = %e, "fetching jobs failed; retrying in {ERROR_PAUSE:?}");
                        self.sleeping = Some(Box::pin(tokio::time::sleep(ERROR_PAUSE)));
                    }
                }
                continue;
            }
            if let Some(sleep) = self.sleeping.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
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
                        jobs.extend(more);
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
