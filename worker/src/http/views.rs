//! The dashboard's HTML fragments. Each is both part of its page and, under `/partials/...`,
//! what the page's script fetches again when the queue changes, so there is one rendering
//! path. maud escapes every interpolated value: job data (ids, errors, payloads) is
//! untrusted and is never written out raw.

use std::collections::BTreeMap;

use atr_dist_shared::{AttemptOutcome, JobState, Platform};
use chrono::{DateTime, Utc};
use maud::{Markup, html};

use super::api::actions_for;
use super::chart;
use super::params::JobsQuery;
use super::results::{PlatformTally, ReleaseSummary};
use super::types::{
    AttemptBody, DistributionBody, JobBody, JobDetailBody, JobPageBody, QueueStatsBody, ReleaseBody,
};
use crate::cli::output::{ago, attempt_label, truncate};

/// A time as "3m ago", with the exact UTC time on hover.
pub fn when(t: Option<DateTime<Utc>>) -> Markup {
    match t {
        Some(t) => html! {
            time datetime=(t.to_rfc3339()) title=(t.format("%Y-%m-%d %H:%M:%S%.3f UTC")) { (ago(Some(t))) }
        },
        None => html! { span.muted { "–" } },
    }
}

pub fn state_badge(state: JobState) -> Markup {
    html! { span class=(format!("badge state-{state}")) { (state.as_str()) } }
}

fn optional(text: Option<&str>) -> Markup {
    match text.filter(|t| !t.is_empty()) {
        Some(t) => html! { (t) },
        None => html! { span.muted { "–" } },
    }
}

/// The short id shown in tables and titles (`queue::short_id`), which every page, the API
/// and the CLI take back.
pub fn short_id(id: &str) -> &str {
    crate::queue::short_id(id)
}

/// A path segment with everything but RFC 3986's unreserved characters percent-encoded.
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn job_link(id: &str) -> String {
    format!("/jobs/{}", segment(id))
}

pub fn release_link(release: &str) -> String {
    format!("/releases/{}", segment(release))
}

/// Retry and Cancel buttons; the script asks for the admin token before it posts.
pub fn action_buttons(id: &str, state: JobState) -> Markup {
    let (retry, cancel) = actions_for(state);
    html! {
        @if retry {
            button.action type="button" data-action="retry" data-job-id=(id) { "Retry" }
        }
        @if cancel {
            button.action.danger type="button" data-action="cancel" data-job-id=(id) { "Cancel" }
        }
    }
}

/// The overview's live part: throughput chart, hour totals, per-platform tallies.
pub fn overview(
    stats: &QueueStatsBody,
    platforms: Result<&BTreeMap<Platform, PlatformTally>, &str>,
) -> Markup {
    let hour = |f: fn(&super::types::MinuteBody) -> u64| stats.last_hour.iter().map(f).sum::<u64>();
    html! {
        section.panel {
            h2 { "Throughput, last hour" }
            (chart::throughput(&stats.last_hour))
            p.legend {
                span.key.key-done {} "done "
                span.key.key-failed {} "failed attempts "
                span.key.key-enqueued {} "enqueued"
            }
            p {
                (hour(|m| m.enqueued)) " enqueued, " (hour(|m| m.done)) " done, "
                (hour(|m| m.failed)) " failed attempts, " (hour(|m| m.dead)) " dead in the last hour. "
                "Oldest queued job: "
                @match stats.oldest_queued_age_secs {
                    Some(secs) => { strong { (format!("{secs:.1} s")) } }
                    None => { "none waiting" }
                }
                ". Live workers: " strong { (stats.workers) } "."
            }
        }
        section.panel {
            h2 { "Attempts per platform, last 24 hours" }
            @match platforms {
                Err(e) => { p.error { "The results database could not be read: " (e) } }
                Ok(map) if map.is_empty() => { p.muted { "No attempts recorded in the last 24 hours." } }
                Ok(map) => {
                    table {
                        thead { tr { th { "Platform" } th.num { "Succeeded attempts" } th.num { "Failed attempts" } th { "Last attempt" } } }
                        tbody {
                            @for (platform, t) in map {
                                tr {
                                    td { a href=(format!("/jobs?platform={}", platform.member_name())) { (platform.member_name()) } }
                                    td.num.ok { (t.succeeded) }
                                    td.num.(if t.failed > 0 { "bad" } else { "" }) { (t.failed) }
                                    td { (when(t.last_attempt)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The jobs table with its pager; `query` is what produced `page`.
pub fn jobs_table(page: &JobPageBody, query: &JobsQuery) -> Markup {
    html! {
        table.jobs {
            thead {
                tr {
                    th { "Job" } th { "State" } th { "Kind" } th { "Platform" } th { "Release" }
                    th.num { "Attempt" } th { "Enqueued" } th { "Last error" } th { span.visually-hidden { "Actions" } }
                }
            }
            tbody {
                @if page.jobs.is_empty() {
                    tr.empty { td colspan="9" { "No jobs match." } }
                }
                @for job in &page.jobs {
                    (job_row(job))
                }
            }
        }
        nav.pager {
            @if query.cursor.as_deref().is_some_and(|c| !c.is_empty()) {
                a href=(format!("/jobs?{}", query.with_cursor(None))) { "First page" }
            }
            @if let Some(next) = &page.next_cursor {
                a href=(format!("/jobs?{}", query.with_cursor(Some(next)))) rel="next" { "Next page" }
            }
        }
    }
}

fn job_row(job: &JobBody) -> Markup {
    html! {
        tr data-job-id=(job.id) data-state=(job.state.as_str()) {
            td { a.mono href=(job_link(&job.id)) title=(job.id) { (short_id(&job.id)) } }
            td { (state_badge(job.state)) @if job.cancel_requested { " " span.badge.note { "cancel requested" } } }
            td { (job.kind) }
            td { (job.platform) }
            td {
                @if job.release.is_empty() { span.muted { "–" } }
                @else { a href=(release_link(&job.release)) { (job.release) } }
            }
            td.num { (job.attempt) "/" (job.max_attempts) }
            td { (when(job.enqueued_at)) }
            td class=[failure_state(job.state).then_some("error-text")] title=(job.last_error.clone().unwrap_or_default()) {
                (truncate(job.last_error.as_deref().unwrap_or(""), 80))
            }
            td.actions { (action_buttons(&job.id, job.state)) }
        }
    }
}

/// Whether a job's `last_error` is a failure it is in: not for a cancelled job (the message
/// is the cancel's); a done job has none.
fn failure_state(state: JobState) -> bool {
    match state {
        JobState::Scheduled
        | JobState::Queued
        | JobState::Running
        | JobState::Retrying
        | JobState::Dead => true,
        JobState::Done | JobState::Cancelled => false,
    }
}

/// Whether an attempt's recorded outcome is a failure: only those are styled as errors.
fn failed_attempt(a: &AttemptBody) -> bool {
    a.outcome
        .as_deref()
        .and_then(AttemptOutcome::parse)
        .is_some_and(AttemptOutcome::is_failure)
}

fn duration_ms(ms: Option<i64>) -> Markup {
    match ms {
        Some(ms) if ms < 1000 => html! { (ms) " ms" },
        Some(ms) => html! { (format!("{:.1} s", ms as f64 / 1000.0)) },
        None => html! { span.muted { "–" } },
    }
}

fn attempts_table(attempts: &[AttemptBody], with_job: bool) -> Markup {
    html! {
        table {
            thead {
                tr {
                    @if with_job { th { "Job" } th { "Kind" } th { "Distribution" } }
                    th.num { "Run" } th.num { "Attempt" } th { "Started" } th.num { "Duration" } th { "Outcome" }
                    th { "Error class" } th.num { "HTTP" } th { "Message" }
                }
            }
            tbody {
                @for a in attempts {
                    tr {
                        @if with_job {
                            td { a.mono href=(job_link(&a.job_id)) title=(a.job_id) { (short_id(&a.job_id)) } }
                            td { (a.kind) }
                            td { (a.platform.member_name()) " " (a.package) " " (a.version) }
                        }
                        td.num { (a.run) }
                        td.num { (a.attempt) }
                        td { (when(Some(a.started_at))) }
                        td.num { (duration_ms(a.duration_ms)) }
                        td {
                            @match a.outcome.as_deref() {
                                Some(o) => { span class=(format!("badge outcome-{o}")) { (o) } }
                                None => { span.muted { "running" } }
                            }
                        }
                        td { (optional(a.error_class.as_deref())) }
                        td.num { @if let Some(s) = a.http_status { (s) } @else { span.muted { "–" } } }
                        td class=[failed_attempt(a).then_some("error-text")] { (optional(a.message.as_deref())) }
                    }
                }
            }
        }
    }
}

/// The job page's live part.
pub fn job_detail(d: &JobDetailBody) -> Markup {
    let j = &d.job;
    let payload = serde_json::to_string_pretty(&d.envelope).unwrap_or_default();
    // A changed revision is what the operator has to act on: shown first.
    let changed = d
        .attempts
        .iter()
        .rev()
        .find(|a| a.outcome.as_deref() == Some(AttemptOutcome::RevisionChanged.as_str()));
    let earlier_failures = d.attempts.iter().filter(|a| failed_attempt(a)).count();
    let runs = d.timeline.iter().map(|e| e.run).max().unwrap_or(1);
    html! {
        @if let Some(a) = changed {
            (revision_changed(a))
        }
        div.job-head data-job-id=(j.id) data-state=(j.state.as_str()) {
            (state_badge(j.state))
            span.badge.atr { "ATR: " (j.atr_task_status.as_str()) }
            @if j.cancel_requested { span.badge.note { "cancel requested" } }
            span.actions { (action_buttons(&j.id, j.state)) }
        }
        section.panel {
            h2 { "Summary" }
            dl.summary {
                dt { "Id" } dd.mono { (j.id) }
                dt { "Kind" } dd { (j.kind) }
                dt { "Release" } dd { a href=(release_link(&j.release)) { (j.release) } }
                dt { "Platform" } dd { (j.platform) }
                dt { "Attempt" } dd { (j.attempt) " of " (j.max_attempts) }
                dt { "Idempotency key" } dd.mono { (j.idempotency_key) }
                dt { "Enqueued" } dd { (when(j.enqueued_at)) }
                dt { "Run at" } dd { (when(j.run_at)) }
                dt { "Started" } dd { (when(j.started_at)) }
                dt { "Finished" } dd { (when(j.finished_at)) }
                dt { "Lease until" } dd { (when(d.lease_until)) }
                dt { "Worker" } dd.mono { (optional(j.worker.as_deref())) }
                @if j.state == JobState::Done {
                    @if earlier_failures > 0 {
                        dt { "Earlier failures" }
                        dd #earlier-failures {
                            (earlier_failures) " failed attempt(s) before it succeeded; see Attempts"
                        }
                    }
                } @else {
                    dt { "Error class" } dd { (optional(j.error_class.as_deref())) }
                    dt { "Last error" }
                    dd #last-error class=[failure_state(j.state).then_some("error-text")] {
                        (optional(j.last_error.as_deref()))
                    }
                }
            }
        }
        section.panel {
            h2 { "Attempts" }
            @if let Some(e) = &d.attempts_error {
                p.error { "The results database could not be read: " (e) }
            } @else if d.attempts.is_empty() {
                p.muted { "No attempts recorded in the results database." }
            } @else {
                (attempts_table(&d.attempts, false))
            }
        }
        section.panel {
            h2 { "Timeline" }
            ol.timeline {
                @for e in &d.timeline {
                    li data-event=(e.event) {
                        (when(e.at)) " " strong { (e.event.replace('_', " ")) }
                        @if let Some(a) = e.attempt { " (" (attempt_label(runs, e.run, a)) ")" }
                        @if let Some(c) = &e.error_class { " " span.badge.note { (c) } }
                        @if let Some(m) = &e.message {
                            " " span class=[e.failure.then_some("error-text")] { (m) }
                        }
                    }
                }
            }
        }
        section.panel {
            h2 { "Payload" }
            @if let Some(e) = &d.envelope_error {
                p.error { "This envelope cannot be run: " (e) }
            }
            pre.payload { (payload) }
        }
    }
}

/// The panel of a `revision_changed` attempt: which paths differ.
fn revision_changed(a: &AttemptBody) -> Markup {
    html! {
        section.panel.revision-changed #revision-changed {
            h2 { "Revision changed" }
            p.error {
                "Attempt " (a.attempt) ": the voted revision's files differ from the staged ones; nothing was promoted."
            }
            @match &a.revision_diff {
                Some(diff) => {
                    @for (what, paths) in [("Added", &diff.added), ("Removed", &diff.removed), ("Changed", &diff.changed)] {
                        @if !paths.is_empty() {
                            h3 { (what) }
                            ul data-diff=(what.to_lowercase()) {
                                @for path in paths { li.mono { (path.as_str()) } }
                            }
                        }
                    }
                }
                None => { p { (optional(a.message.as_deref())) } }
            }
        }
    }
}

fn digest(d: Option<&str>) -> Markup {
    match d {
        Some(d) => html! { code.digest title=(d) { (truncate(d, 24)) } },
        None => html! { span.muted { "–" } },
    }
}

/// The release page's live part.
pub fn release(r: &ReleaseBody) -> Markup {
    html! {
        section.panel {
            h2 { "Distributions" }
            @if r.distributions.is_empty() {
                p.muted { "No distributions recorded for this release." }
            } @else {
                table.distributions {
                    thead {
                        tr {
                            th { "Platform" } th { "Package" } th { "Version" } th { "Status" }
                            th { "Staging tag" } th { "Staged revision" } th { "Manifest digest" }
                            th { "Platform digest" } th { "Uploaded" } th { "Promoted" } th { "Links" }
                        }
                    }
                    tbody { @for d in &r.distributions { (distribution_row(d)) } }
                }
            }
        }
        @if r.distributions.iter().any(|d| d.promoted) {
            section.panel #promotions {
                h2 { "Promotions" }
                p.muted {
                    "What each promotion was made of: the voted revision's manifest (which must equal the staged one), "
                    "the platform's digest after staging, and after promoting."
                }
                table.promotions {
                    thead {
                        tr {
                            th { "Platform" } th { "Package" } th { "Version" } th { "Voted revision" }
                            th { "Voted manifest" } th { "" } th { "Staged digest" } th { "" }
                            th { "Promoted digest" } th { "Promoted" }
                        }
                    }
                    tbody {
                        @for d in r.distributions.iter().filter(|d| d.promoted) { (promotion_row(d)) }
                    }
                }
            }
        }
        section.panel {
            h2 { "Attempts" }
            @if r.runs.is_empty() {
                p.muted { "No attempts recorded for this release." }
            } @else {
                (attempts_table(&r.runs, true))
            }
        }
    }
}

fn distribution_row(d: &DistributionBody) -> Markup {
    let package = if d.owner_namespace.is_empty() {
        d.package.clone()
    } else {
        format!("{}/{}", d.owner_namespace, d.package)
    };
    html! {
        tr data-status=(d.status.as_str()) {
            td { (d.platform.member_name()) }
            td { (package) }
            td { (d.version) }
            td { span class=(format!("badge dist-{}", d.status.as_str())) { (d.status.as_str()) } }
            td { (optional(d.staging_tag.as_deref())) }
            td { (optional(d.staging_revision_key.as_deref())) }
            td { (digest(d.staged_manifest_digest.as_deref())) }
            td { (digest(d.platform_digest.as_deref())) }
            td { (when(d.upload_date)) }
            td { (when(d.promoted_at)) }
            td {
                @if let Some(u) = d.web_url.as_deref().filter(|u| is_http(u)) { a href=(u) rel="noreferrer" { "web" } " " }
                @if let Some(u) = d.api_url.as_deref().filter(|u| is_http(u)) { a href=(u) rel="noreferrer" { "api" } }
            }
        }
    }
}

fn promotion_row(d: &DistributionBody) -> Markup {
    let package = if d.owner_namespace.is_empty() {
        d.package.clone()
    } else {
        format!("{}/{}", d.owner_namespace, d.package)
    };
    html! {
        tr.chain data-package=(package) {
            td { (d.platform.member_name()) }
            td { (package) }
            td { (d.version) }
            td { (optional(d.voted_revision_key.as_deref())) }
            td { (digest(d.voted_manifest_digest.as_deref())) }
            td { "→" }
            td { (digest(d.staged_platform_digest.as_deref())) }
            td { "→" }
            td { (digest(d.promoted_digest.as_deref())) }
            td { (when(d.promoted_at)) }
        }
    }
}

/// Links are only made of http(s) URLs: a stored `javascript:` URL must not become one.
fn is_http(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("http://")
}

pub fn releases_table(releases: &[ReleaseSummary]) -> Markup {
    html! {
        @if releases.is_empty() {
            p.muted { "No distributions recorded yet." }
        } @else {
            table {
                thead { tr { th { "Release" } th.num { "Distributions" } th.num { "Staged" } th.num { "Promoted" } th { "Last upload" } } }
                tbody {
                    @for r in releases {
                        tr {
                            td { a href=(release_link(&r.release_key)) { (r.release_key) } }
                            td.num { (r.distributions) }
                            td.num { (r.staged) }
                            td.num { (r.promoted) }
                            td { (when(r.last_upload)) }
                        }
                    }
                }
            }
        }
    }
}
