//! The apalis `Backend` over our Redis queue: it leases jobs with `fetch.lua`, in batches no
//! larger than the pool's free capacity, and when there is nothing to lease waits on `wake`
//! until a script that makes work ready wakes it, or the next job falls due
//! (docs/wire-format.md, "Waking idle workers").
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

use super::pool::Shared;
use super::{Fetched, Leased, QueueError, RedisConn};

/// Idle polling (without wake-ups): start fast, back off to `idle_wait` while the queue
/// stays empty.
const IDLE_MIN: Duration = Duration::from_millis(5);
/// With wake-ups, a fetch that leased nothing and may not wait (a job fell due meanwhile) is
/// repeated after this pause, so a queue that keeps answering so cannot make it spin.
const REFETCH_PAUSE: Duration = Duration::from_millis(1);
/// After an error talking to Redis, wait this long before the next fetch.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

pub struct RedisBackend {
    shared: Arc<Shared>,
    buffer: VecDeque<Leased>,
    fetching: Option<BoxFuture<'static, Result<Fetched, QueueError>>>,
    /// Until the next fetch: a sleep, or a wait for a wake-up.
    sleeping: Option<BoxFuture<'static, ()>>,
    /// The polling interval, without wake-ups.
    idle: Duration,
    /// The connection idle waits block on; `None`: poll instead.
    blocking: Option<RedisConn>,
    closing: Option<BoxFuture<'static, ()>>,
}

fn sleep(d: Duration) -> BoxFuture<'static, ()> {
    tokio::time::sleep(d).boxed()
}

impl RedisBackend {
    pub fn new(shared: Arc<Shared>, blocking: Option<RedisConn>) -> RedisBackend {
        RedisBackend {
            shared,
            buffer: VecDeque::new(),
            fetching: None,
            sleeping: None,
            idle: IDLE_MIN,
            blocking,
            closing: None,
        }
    }

    /// What to do when a fetch leased nothing: wait for a wake-up for as long as fetch.lua
    /// allowed, or without wake-ups poll again after a growing pause.
    fn wait(&mut self, allowed: Duration) -> BoxFuture<'static, ()> {
        let Some(conn) = self.blocking.clone() else {
            let pause = self.idle;
            self.idle = (self.idle * 2).min(self.shared.config.idle_wait);
            return sleep(pause);
        };
        if allowed.is_zero() {
            return sleep(REFETCH_PAUSE);
        }
        let shared = Arc::clone(&self.shared);
        async move {
            let mut conn = conn;
            if let Err(e) = shared.queue.wait_for_wake(&mut conn, allowed).await {
                // The fetch worked, so Redis is there: it may not serve blocking commands
                // (some proxies do not). Wait out the time without them.
                tracing::warn!(error = %e, "waiting for a wake-up failed; sleeping instead");
                tokio::time::sleep(allowed).await;
            }
        }
        .boxed()
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
        let n = room.min(shared.config.fetch_batch);
        let wait = match self.blocking {
            Some(_) => shared.config.idle_wait,
            None => Duration::ZERO,
        };
        self.fetching = Some(
            async move {
                let fetched = shared
                    .queue
                    .fetch_or_wait(&shared.worker_id, shared.config.lease, n, wait)
                    .await?;
                shared.hold(&fetched.jobs);
                Ok(fetched)
            }
            .boxed(),
        );
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
                        .release(&jobs, "worker shutting down before the job started")
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
