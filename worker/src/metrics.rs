//! This process's metrics: what it did, counted as it happens. The queue (jobs it enqueued)
//! and the worker pool (attempts it ran) write here; `http/metrics.rs` only renders them, with
//! the queue's own state read at each scrape. It depends on nothing of the queue's or the HTTP
//! surface's, so both can use it.
//!
//! Every family is registered, and every label combination it can take set to zero, the first
//! time any of them is touched, a scrape included: dashboards and alerts see each series from
//! the first scrape, not only after the first job of its kind. Labels carry platform, kind and
//! error class only, never release or job ids, so there are a bounded number of series
//! (8 platforms × 2 kinds, × 4 error classes for failures).

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use atr_dist_shared::{ErrorClass, JobKind, Platform};
use prometheus::proto::MetricFamily;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Attempt durations: from a dry run's milliseconds to an hour-long image upload.
const DURATION_BUCKETS: [f64; 15] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
];
/// Queue latency: from an idle pool's milliseconds to a backlog of an hour.
const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];

const KINDS: [JobKind; 2] = [JobKind::Stage, JobKind::Promote];
const ERROR_CLASSES: [ErrorClass; 4] = [
    ErrorClass::Transient,
    ErrorClass::Permanent,
    ErrorClass::Auth,
    ErrorClass::Malformed,
];

struct Process {
    registry: Registry,
    enqueued: IntCounterVec,
    attempts: IntCounterVec,
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
    let process = Process {
        enqueued: counter(
            "atr_dist_jobs_enqueued_total",
            "Jobs this process enqueued (API, CLI), by platform and kind.",
            &["platform", "kind"],
        ),
        attempts: counter(
            "atr_dist_attempts_total",
            "Attempts this process ran to an end (done, failed or cancelled), by platform and kind.",
            &["platform", "kind"],
        ),
        failed: counter(
            "atr_dist_attempts_failed_total",
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
    };
    // Every series at zero, so that each is there from the first scrape.
    for platform in Platform::ALL {
        for kind in KINDS {
            let labels = [platform.member_name(), kind.as_str()];
            process.enqueued.with_label_values(&labels);
            process.attempts.with_label_values(&labels);
            process.attempt_duration.with_label_values(&labels);
            process.queue_latency.with_label_values(&labels);
            for class in ERROR_CLASSES {
                process
                    .failed
                    .with_label_values(&[labels[0], labels[1], class.as_str()]);
            }
        }
    }
    process
});

/// Registers every family now (a scrape would, too): for a process to call as it starts.
pub fn init() {
    LazyLock::force(&PROCESS);
}

/// Every family of this process, for a scrape.
pub fn gather() -> Vec<MetricFamily> {
    PROCESS.registry.gather()
}

/// A job this process put on the queue (not a repeat of an idempotency key).
pub fn job_enqueued(kind: JobKind, platform: Platform) {
    PROCESS
        .enqueued
        .with_label_values(&[platform.member_name(), kind.as_str()])
        .inc();
}

/// How an attempt ended, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptEnd {
    /// It ran to an end: done, cancelled, or failed with this class.
    Ended { failed: Option<ErrorClass> },
    /// Handed back or deferred: the attempt did not count, so it is not "processed".
    NotCounted,
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
pub fn attempt_started(waited: Duration, platform: Platform, kind: JobKind) -> AttemptMetrics {
    let platform = platform.member_name();
    let kind = kind.as_str();
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
    pub fn finished(self, end: AttemptEnd) {
        let labels = [self.platform, self.kind];
        PROCESS
            .attempt_duration
            .with_label_values(&labels)
            .observe(self.started.elapsed().as_secs_f64());
        let failed = match end {
            AttemptEnd::Ended { failed } => failed,
            AttemptEnd::NotCounted => return,
        };
        PROCESS.attempts.with_label_values(&labels).inc();
        if let Some(class) = failed {
            PROCESS
                .failed
                .with_label_values(&[self.platform, self.kind, class.as_str()])
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder, TextEncoder};

    use super::*;

    #[test]
    fn every_family_and_series_is_there_before_anything_happens() {
        // Other tests in this process may have counted already: only presence is checked.
        let families = gather();
        let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
        for name in [
            "atr_dist_jobs_enqueued_total",
            "atr_dist_attempts_total",
            "atr_dist_attempts_failed_total",
            "atr_dist_attempt_duration_seconds",
            "atr_dist_queue_latency_seconds",
        ] {
            assert!(names.contains(&name), "{name} missing: {names:?}");
        }
        let failed = families
            .iter()
            .find(|f| f.name() == "atr_dist_attempts_failed_total")
            .unwrap();
        assert_eq!(failed.get_metric().len(), Platform::ALL.len() * 2 * 4);
        job_enqueued(JobKind::Stage, Platform::Npm);
        let mut out = Vec::new();
        TextEncoder::new().encode(&gather(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("atr_dist_jobs_enqueued_total{kind=\"stage\",platform=\"NPM\"}"),
            "{text}"
        );
        assert!(
            text.contains(
                "atr_dist_attempts_failed_total{error_class=\"auth\",kind=\"promote\",platform=\"HEX\"} 0"
            ),
            "{text}"
        );
    }
}
