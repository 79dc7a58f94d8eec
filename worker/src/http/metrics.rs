//! `/metrics` in Prometheus text format.
//!
//! Two kinds of series:
//!
//! - **This process's** counters and histograms, kept by `crate::metrics` (which the queue
//!   and the worker pool write to): jobs this process enqueued (the API, the CLI), and the
//!   attempts its worker pool ran. Every series is there from the first scrape, at zero. Sum
//!   them over instances, as usual.
//! - **The queue's** state, read from Redis at each scrape (the same numbers for every
//!   instance): jobs per state, oldest queued age, live workers, the queue's own counters
//!   (which include jobs enqueued by ATR's Python producer), and whether Redis and the
//!   database answer.
//!
//! Labels carry platform, kind, state and error class only, never release or job ids:
//! cardinality stays bounded, and the endpoint shows no job data, so it needs no token.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, Gauge, GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::types::QueueStatsBody;
use super::{AppState, Backend, bounded};

/// The queue's series, read at scrape time into a registry of their own.
fn queue_series(registry: &Registry, stats: &QueueStatsBody) -> prometheus::Result<()> {
    let queue = stats.queue.as_str();
    let jobs = IntGaugeVec::new(
        Opts::new("atr_dist_jobs", "Jobs in the queue per state."),
        &["queue", "state"],
    )?;
    for state in atr_dist_shared::JobState::ALL {
        jobs.with_label_values(&[queue, state.as_str()])
            .set(i64::try_from(stats.counts.get(state)).unwrap_or(i64::MAX));
    }
    registry.register(Box::new(jobs))?;
    let oldest = GaugeVec::new(
        Opts::new(
            "atr_dist_oldest_queued_age_seconds",
            "How long the job at the head of the queue has been ready (0 when none waits).",
        ),
        &["queue"],
    )?;
    oldest
        .with_label_values(&[queue])
        .set(stats.oldest_queued_age_secs.unwrap_or(0.0));
    registry.register(Box::new(oldest))?;
    let paused = IntGaugeVec::new(
        Opts::new("atr_dist_queue_paused", "1 while the queue is paused."),
        &["queue"],
    )?;
    paused
        .with_label_values(&[queue])
        .set(i64::from(stats.paused));
    registry.register(Box::new(paused))?;
    let workers = IntGaugeVec::new(
        Opts::new(
            "atr_dist_workers",
            "Worker processes with a live heartbeat.",
        ),
        &["queue"],
    )?;
    workers
        .with_label_values(&[queue])
        .set(i64::try_from(stats.workers).unwrap_or(i64::MAX));
    registry.register(Box::new(workers))?;
    let events = IntCounterVec::new(
        Opts::new(
            "atr_dist_queue_events_total",
            "The queue's own counters since it was created, from every producer and worker.",
        ),
        &["queue", "event"],
    )?;
    let t = &stats.totals;
    for (event, n) in [
        ("enqueued", t.enqueued),
        ("done", t.done),
        ("failed", t.failed),
        ("retried", t.retried),
        ("dead", t.dead),
        ("cancelled", t.cancelled),
        ("recovered", t.recovered),
    ] {
        events.with_label_values(&[queue, event]).inc_by(n);
    }
    registry.register(Box::new(events))?;
    Ok(())
}

fn up_gauge(registry: &Registry, name: &str, help: &str, up: bool) -> prometheus::Result<()> {
    let g = IntGauge::new(name, help)?;
    g.set(i64::from(up));
    registry.register(Box::new(g))
}

async fn render(state: &AppState) -> prometheus::Result<String> {
    let scrape = Registry::new();
    let stats = bounded(Backend::Redis, state.queue().stats()).await;
    up_gauge(
        &scrape,
        "atr_dist_redis_up",
        "1 when the queue's Redis answered this scrape.",
        stats.is_ok(),
    )?;
    if let Ok(stats) = stats {
        queue_series(&scrape, &QueueStatsBody::from(stats))?;
    }
    let db_up = bounded(Backend::Database, state.db().ping()).await.is_ok();
    up_gauge(
        &scrape,
        "atr_dist_database_up",
        "1 when the results database answered this scrape.",
        db_up,
    )?;
    let build = Gauge::with_opts(
        Opts::new("atr_dist_build_info", "This build; the value is always 1.")
            .const_label("version", env!("CARGO_PKG_VERSION")),
    )?;
    build.set(1.0);
    scrape.register(Box::new(build))?;

    let mut families = crate::metrics::gather();
    families.extend(scrape.gather());
    let mut out = Vec::new();
    TextEncoder::new().encode(&families, &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

pub async fn scrape(State(state): State<AppState>) -> Response {
    match render(&state).await {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render metrics: {e}\n"),
        )
            .into_response(),
    }
}
