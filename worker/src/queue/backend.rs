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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Instant;

    use super::*;

    /// A pool whose queue stays empty: it records the waits for a wake-up it is asked for.
    struct EmptyQueue {
        wakes: bool,
        idle_wait: Duration,
        /// What `wait_for_work` answers.
        wake_fails: bool,
        waited_for: Mutex<Vec<Duration>>,
    }

    impl EmptyQueue {
        fn new(wakes: bool, idle_wait: Duration) -> Arc<EmptyQueue> {
            Arc::new(EmptyQueue {
                wakes,
                idle_wait,
                wake_fails: false,
                waited_for: Mutex::new(Vec::new()),
            })
        }

        fn waits(&self) -> Vec<Duration> {
            self.waited_for.lock().unwrap().clone()
        }
    }

    impl Feed for EmptyQueue {
        fn capacity(&self) -> usize {
            1
        }
        fn held_count(&self) -> usize {
            0
        }
        fn fetch_batch(&self) -> usize {
            1
        }
        fn idle_wait(&self) -> Duration {
            self.idle_wait
        }
        fn wakes(&self) -> bool {
            self.wakes
        }
        fn lease(
            self: Arc<Self>,
            _: usize,
            wait: Duration,
        ) -> BoxFuture<'static, Result<Fetched, QueueError>> {
            async move {
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
            self.waited_for.lock().unwrap().push(wait);
            let fails = self.wake_fails;
            async move {
                if fails {
                    Err(QueueError::NotNow(
                        "this Redis serves no blocking commands".to_owned(),
                    ))
                } else {
                    Ok(())
                }
            }
            .boxed()
        }
        fn release(self: Arc<Self>, _: Vec<Leased>, _: &'static str) -> BoxFuture<'static, ()> {
            async {}.boxed()
        }
    }

    /// Without wake-ups, an empty queue is fetched from again after a pause that doubles from
    /// `IDLE_MIN` up to `idle_wait`; nothing waits for a wake-up.
    #[tokio::test]
    async fn without_wake_ups_an_empty_queue_is_polled_less_and_less_often() {
        let idle_wait = Duration::from_millis(40);
        let feed = EmptyQueue::new(false, idle_wait);
        let mut backend = RedisBackend::new(Arc::clone(&feed) as Arc<dyn Feed>);
        for pause in [5, 10, 20, 40, 40].map(Duration::from_millis) {
            let t0 = Instant::now();
            backend.wait(Duration::ZERO).await;
            assert!(t0.elapsed() >= pause, "{:?} < {pause:?}", t0.elapsed());
        }
        assert_eq!(backend.idle, idle_wait);
        assert_eq!(feed.waits(), Vec::<Duration>::new());
    }

    /// With wake-ups, an empty queue is waited on for as long as `fetch.lua` allowed, not
    /// polled; when it allowed no wait (a job fell due meanwhile), the next fetch follows at
    /// once.
    #[tokio::test]
    async fn with_wake_ups_an_empty_queue_is_waited_on_for_as_long_as_allowed() {
        let allowed = Duration::from_secs(30);
        let feed = EmptyQueue::new(true, allowed);
        let mut backend = RedisBackend::new(Arc::clone(&feed) as Arc<dyn Feed>);
        backend.start_fetch();
        let fetched = backend.fetching.take().unwrap().await.unwrap();
        assert_eq!(fetched.wait, allowed, "fetch.lua is asked for idle_wait");
        tokio::time::timeout(Duration::from_secs(10), backend.wait(fetched.wait))
            .await
            .expect("the wake-up ends the wait");
        assert_eq!(feed.waits(), [allowed]);
        backend.wait(Duration::ZERO).await;
        assert_eq!(feed.waits(), [allowed], "no wait when none is allowed");
        assert_eq!(backend.idle, IDLE_MIN, "the polling pause is not used");
    }

    /// A Redis that cannot wait for a wake-up (a proxy without blocking commands): the
    /// allowed time is slept instead, so the next fetch is no sooner.
    #[tokio::test]
    async fn a_wait_for_a_wake_up_that_fails_is_slept_instead() {
        let allowed = Duration::from_millis(50);
        let feed = Arc::new(EmptyQueue {
            wake_fails: true,
            ..Arc::into_inner(EmptyQueue::new(true, allowed)).unwrap()
        });
        let mut backend = RedisBackend::new(Arc::clone(&feed) as Arc<dyn Feed>);
        let t0 = Instant::now();
        backend.wait(allowed).await;
        assert!(t0.elapsed() >= allowed, "{:?}", t0.elapsed());
        assert_eq!(feed.waits(), [allowed]);
    }
}
