//! `/events`: queue statistics as server-sent events, for the dashboard's live updates.
//!
//! One task per server polls Redis once a second, and only while someone listens, whatever
//! the number of open dashboards; each stream gets a fresh snapshot at once, then every
//! change. Events:
//!
//! - `stats`: a `QueueStatsBody` (the same JSON as `GET /api/v1/queue/stats`);
//! - `unavailable`: an `ErrorBody` while Redis does not answer.
//!
//! Streams end when the server shuts down, so a graceful shutdown never waits on a browser.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{self, Stream, StreamExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::auth::ReadAccess;
use super::error::ApiError;
use super::types::QueueStatsBody;
use super::{AppState, Backend, bounded};
use crate::queue::Queue;

const PERIOD: Duration = Duration::from_secs(1);

/// The latest snapshot, as the event it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snapshot {
    /// Nothing polled yet.
    Pending,
    Stats(Arc<str>),
    Unavailable(Arc<str>),
}

impl Snapshot {
    fn event(&self) -> Option<Event> {
        match self {
            Snapshot::Pending => None,
            Snapshot::Stats(json) => Some(Event::default().event("stats").data(json.as_ref())),
            Snapshot::Unavailable(json) => {
                Some(Event::default().event("unavailable").data(json.as_ref()))
            }
        }
    }
}

pub async fn snapshot(queue: &Queue) -> Snapshot {
    match bounded(Backend::Redis, queue.stats()).await {
        Ok(stats) => Snapshot::Stats(to_json(&QueueStatsBody::from(stats))),
        Err(e) => Snapshot::Unavailable(to_json(&e.body())),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Arc<str> {
    // Both payloads are plain structs of strings and numbers: serialising cannot fail.
    Arc::from(serde_json::to_string(value).unwrap_or_default())
}

pub struct StatsFeed {
    tx: watch::Sender<Snapshot>,
}

impl StatsFeed {
    pub fn start(queue: Queue, shutdown: CancellationToken) -> StatsFeed {
        let (tx, _) = watch::channel(Snapshot::Pending);
        let feed = tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(PERIOD) => {}
                }
                if feed.receiver_count() == 0 {
                    continue;
                }
                let next = snapshot(&queue).await;
                feed.send_if_modified(|current| {
                    if *current == next {
                        return false;
                    }
                    *current = next;
                    true
                });
            }
        });
        StatsFeed { tx }
    }

    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.tx.subscribe()
    }
}

pub async fn events(
    _: ReadAccess,
    State(state): State<AppState>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let mut rx = state.feed().subscribe();
    // The feed's value may be stale or still pending: start from a fresh one.
    let first = snapshot(state.queue()).await;
    rx.mark_unchanged();
    let changes = stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let next = rx.borrow_and_update().clone();
        Some((next, rx))
    });
    let stream = stream::once(async move { first })
        .chain(changes)
        .filter_map(|snap| async move { snap.event().map(Ok) })
        .take_until(state.shutdown().clone().cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(state.sse_keep_alive())))
}
