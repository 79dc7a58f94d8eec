//! `/metrics` in Prometheus text format.
//!
//! Two kinds of series:
//!
//! - **This process's** counters and histograms, kept in a process-wide registry and fed by
//!   hooks: `job_enqueued` (every job this process enqueues: the API, the CLI) and
//!   `attempt_started`/`AttemptMetrics::finished` (every attempt the worker pool runs). Sum
//!   them over instances, as usual.
//! - **The queue's** state, read from Redis at each scrape (the same numbers for every
//!   instance): jobs per state, oldest queued age, live workers, the queue's own counters
//!   (which include jobs enqueued by ATR's Python producer), and whether Redis and the
//!   database answer.
//!
//! Labels carry platform, kind, state and error class only, never release or job ids:
//! cardinality stays bounded, and the endpoint shows no job data, so it needs no token.

use std::sync::LazyLock;
use std::time::Instant;

use atr_dist_shared::Envelope;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use super::types::QueueStatsBody;
use super::{AppState, Backend, bounded};
use crate::queue::AckOutcome;

/// Attempt durations: from a dry run's milliseconds to an hour-long image upload.
const DURATION_BUCKETS: [f64; 15] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
];
/// Queue latency: from an idle pool's milliseconds to a backlog of an hour.
const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];

struct Process {
    registry: Registry,
    enqueued: IntCounterVec,
    processed: IntCounterVec,
    failed: IntCounterVec,
    attempt_duration: HistogramVec,
    queue_latency: HistogramVec,
}

// The definitions below are constants: registering them cannot fail unless two share a name,
// which the unit test at the end would show at once.
static PROCESS: LazyLock<Process> = LazyLock::new(|| {
    let registry = Registry::new();
    let counter = |name: &str, help: &str, labels: &[&str]| {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        registry
            .register(Box::new(c.clone()))
            .expect("unique metric name");
        c
    };
    let histogram = |name: &str, help: &str, buckets: &[f64]| {
        let h = HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            &["platform", "kind"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(h.clone()))
            .expect("unique metric name");
        h
    };
    Process {
        enqueued: counter(
            "atr_dist_jobs_enqueued_total",
            "Jobs this process enqueued (API, CLI), by platform and kind.",
            &["platform", "kind"],
        ),
        processed: counter(
            "atr_dist_jobs_processed_total",
            "Attempts this process ran to an end (done, failed or cancelled), by platform and kind.",
            &["platform", "kind"],
        ),
        failed: counter(
            "atr_dist_jobs_failed_total",
            "Attempts this process ran that failed, by platform, kind and error class.",
            &["platform", "kind", "error_class"],
        ),
        attempt_duration: histogram(
            "atr_dist_attempt_duration_seconds",
            "How long attempts ran in this process.",
            &DURATION_BUCKETS,
        ),
        queue_latency: histogram(
            "atr_dist_queue_latency_seconds",
            "How long jobs this process started had waited as queued (queued_at to started_at, Redis time).",
            &LATENCY_BUCKETS,
        ),
        registry,
    }
});

/// A job this process put on the queue (not a repeat of an idempotency key).
pub fn job_enqueued(kind: &str, platform: &str) {
    PROCESS.enqueued.with_label_values(&[platform, kind]).inc();
}

/// An attempt in progress; `finished` records how it ended.
pub struct AttemptMetrics {
    platform: &'static str,
    kind: &'static str,
    started: Instant,
}

/// Called by the worker pool as an attempt starts. Also records the job's queue latency,
/// `waited`, which `fetch.lua` measures between two Redis timestamps (producers' and
/// workers' clocks play no part).
pub fn attempt_started(waited: std::time::Duration, envelope: &Envelope) -> AttemptMetrics {
    let platform = envelope.distribution().platform.member_name();
    let kind = envelope.kind().as_str();
    // fetch.lua reports the wait on Redis's clock: no extra round trip per job, no skew.
    PROCESS
        .queue_latency
        .with_label_values(&[platform, kind])
        .observe(waited.as_secs_f64());
    AttemptMetrics {
        platform,
        kind,
        started: Instant::now(),
    }
}

impl AttemptMetrics {
    pub fn finished(self, outcome: &AckOutcome) {
        let labels = [self.platform, self.kind];
        PROCESS
            .attempt_duration
            .with_label_values(&labels)
            .observe(self.started.elapsed().as_secs_f64());
        let failed_class = match outcome {
            AckOutcome::Done | AckOutcome::Cancelled { .. } => None,
            AckOutcome::Retry { class, .. } | AckOutcome::Dead { class, .. } => Some(*class),
            // Handed back or deferred: the attempt did not count, so it is not "processed".
            AckOutcome::Release { .. } | AckOutcome::Defer { .. } => return,
        };
        PROCESS.processed.with_label_values(&labels).inc();
        if let Some(class) = failed_class {
            PROCESS
                .failed
                .with_label_values(&[self.platform, self.kind, class.as_str()])
                .inc();
        }
    }
}

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

    let mut families = PROCESS.registry.gather();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_metrics_register_and_render() {
        job_enqueued("stage", "NPM");
        let families = PROCESS.registry.gather();
        let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
        assert!(names.contains(&"atr_dist_jobs_enqueued_total"), "{names:?}");
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("atr_dist_jobs_enqueued_total{kind=\"stage\",platform=\"NPM\"}"),
            "{text}"
        );
    }
}
