//! What an attempt came to (`job_run.outcome`), and how a job's end maps onto ATR's task
//! vocabulary so ATR can show it.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::lifecycle::{ErrorClass, JobState};

/// The outcome of one attempt, as recorded in `job_run.outcome`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The platform now holds what was asked, and the database says so.
    Completed,
    /// The platform already held exactly this (a repeated job, or a retry after the result
    /// write failed): nothing was sent, the record was brought up to date.
    Unchanged,
    /// A dry run: the writes were described, not made.
    DryRun,
    /// Policy does not let this worker promote the distribution (Maven, unless the operator
    /// lists the project in `[platforms.maven] promote_projects`): nothing was read or sent,
    /// and the job ends `done`. Not a failure, nobody is paged; not a success either, as
    /// nothing was promoted (the report says `promoted: false`).
    DisabledByPolicy,
    /// The voted revision's files differ from the staged ones: nothing was promoted.
    RevisionChanged,
    /// Not this job's turn (the distribution was locked by another job).
    Deferred,
    /// The platform is not there yet (a rate limit until its reset, a version still being
    /// indexed, a repository still being released): the job runs again later without
    /// spending an attempt, until the platform's wait deadline.
    Waiting,
    /// The attempt failed; `job_run.error_class` says how.
    Failed,
    /// The attempt outlasted the job timeout (`worker.job_timeout_secs`) and was stopped; the
    /// job is retried like after any transient failure.
    TimedOut,
    /// An operator cancelled the job while this attempt ran, and the attempt was stopped.
    Cancelled,
    /// The attempt's worker stopped before recording how it ended: it died or stalled until
    /// its lease expired, lost its lease, shut down, or could not write the result. The row
    /// was closed afterwards (by the job's next attempt, by the worker that stopped it, or by
    /// a worker that found the job no longer running), and its message says which.
    Abandoned,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Completed => "completed",
            AttemptOutcome::Unchanged => "unchanged",
            AttemptOutcome::DryRun => "dry_run",
            AttemptOutcome::DisabledByPolicy => "disabled_by_policy",
            AttemptOutcome::RevisionChanged => "revision_changed",
            AttemptOutcome::Deferred => "deferred",
            AttemptOutcome::Waiting => "waiting",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::TimedOut => "timed_out",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::Abandoned => "abandoned",
        }
    }

    pub const ALL: [AttemptOutcome; 11] = [
        AttemptOutcome::Completed,
        AttemptOutcome::Unchanged,
        AttemptOutcome::DryRun,
        AttemptOutcome::DisabledByPolicy,
        AttemptOutcome::RevisionChanged,
        AttemptOutcome::Deferred,
        AttemptOutcome::Waiting,
        AttemptOutcome::Failed,
        AttemptOutcome::TimedOut,
        AttemptOutcome::Cancelled,
        AttemptOutcome::Abandoned,
    ];

    /// The outcome named `text` (`job_run.outcome`).
    pub fn parse(text: &str) -> Option<AttemptOutcome> {
        AttemptOutcome::ALL.into_iter().find(|o| o.as_str() == text)
    }

    /// Whether the attempt ended without doing its work, for a reason an operator must look
    /// at. A cancel is the operator's own doing, and a deferral is not an attempt at all.
    pub fn is_failure(self) -> bool {
        match self {
            AttemptOutcome::RevisionChanged
            | AttemptOutcome::Failed
            | AttemptOutcome::TimedOut
            | AttemptOutcome::Abandoned => true,
            AttemptOutcome::Completed
            | AttemptOutcome::Unchanged
            | AttemptOutcome::DryRun
            | AttemptOutcome::DisabledByPolicy
            | AttemptOutcome::Deferred
            | AttemptOutcome::Waiting
            | AttemptOutcome::Cancelled => false,
        }
    }

    /// Whether the attempt did its work (or, for a dry run, described it).
    pub fn is_success(self) -> bool {
        match self {
            AttemptOutcome::Completed | AttemptOutcome::Unchanged | AttemptOutcome::DryRun => true,
            AttemptOutcome::RevisionChanged
            | AttemptOutcome::Failed
            | AttemptOutcome::TimedOut
            | AttemptOutcome::Abandoned
            | AttemptOutcome::DisabledByPolicy
            | AttemptOutcome::Deferred
            | AttemptOutcome::Waiting
            | AttemptOutcome::Cancelled => false,
        }
    }
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// ATR's `TaskStatus` (stored upper-case, as ATR stores it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AtrTaskStatus {
    Queued,
    Active,
    Completed,
    /// Failed for good: a permanent or auth error, a changed revision, a malformed job, or
    /// an operator's cancel.
    Failed,
    /// Failed for a transient reason that outlasted every attempt: worth restarting later.
    Broken,
}

impl AtrTaskStatus {
    /// The task status ATR shows for a job in `state` whose last error was `class`.
    pub fn of(state: JobState, class: Option<ErrorClass>) -> AtrTaskStatus {
        match state {
            JobState::Scheduled | JobState::Queued | JobState::Retrying => AtrTaskStatus::Queued,
            JobState::Running => AtrTaskStatus::Active,
            JobState::Done => AtrTaskStatus::Completed,
            JobState::Cancelled => AtrTaskStatus::Failed,
            JobState::Dead => match class {
                Some(ErrorClass::Transient) => AtrTaskStatus::Broken,
                Some(ErrorClass::Permanent | ErrorClass::Auth | ErrorClass::Malformed) | None => {
                    AtrTaskStatus::Failed
                }
            },
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AtrTaskStatus::Queued => "QUEUED",
            AtrTaskStatus::Active => "ACTIVE",
            AtrTaskStatus::Completed => "COMPLETED",
            AtrTaskStatus::Failed => "FAILED",
            AtrTaskStatus::Broken => "BROKEN",
        }
    }
}

impl fmt::Display for AtrTaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_read_back_from_their_names() {
        for o in AttemptOutcome::ALL {
            assert_eq!(AttemptOutcome::parse(o.as_str()), Some(o));
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
        assert_eq!(AttemptOutcome::parse("transient"), None);
    }

    #[test]
    fn terminal_outcomes_map_to_atr() {
        use AtrTaskStatus as T;
        assert_eq!(T::of(JobState::Done, None), T::Completed);
        assert_eq!(
            T::of(JobState::Dead, Some(ErrorClass::Transient)),
            T::Broken
        );
        assert_eq!(
            T::of(JobState::Dead, Some(ErrorClass::Permanent)),
            T::Failed
        );
        assert_eq!(
            T::of(JobState::Dead, Some(ErrorClass::Malformed)),
            T::Failed
        );
        assert_eq!(
            T::of(JobState::Retrying, Some(ErrorClass::Transient)),
            T::Queued
        );
        assert_eq!(T::of(JobState::Running, None), T::Active);
        assert_eq!(serde_json::to_string(&T::Broken).unwrap(), "\"BROKEN\"");
    }
}
