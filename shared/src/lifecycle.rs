//! The job lifecycle: the states a job is in and the only transitions between them.
//!
//! Every part of atr-dist (the Lua scripts, the worker, the CLI, the API, the dashboard and
//! `docs/wire-format.md`) uses these names. Each transition is one Lua script in `lua/`.
//!
//! ```text
//!            enqueue (run_at > now)          enqueue
//!   ─────────────────► scheduled ─── due ──► queued ◄──────────────────────── (none)
//!                          │                   │  ▲  ▲
//!                    cancel│             fetch │  │  └─ lease expired / released ─┐
//!                          ▼                   ▼  │                               │
//!                      cancelled ◄─ cancel ─ running ───────────────────────────────┘
//!                          ▲                   │ │ │
//!                          │ cancel      ack ok│ │ └─ failure, permanent or out of attempts ─► dead
//!                          │                   ▼ │                                              │
//!                      retrying ◄── transient ─┘ done                 admin retry ──► queued ◄──┘
//!                          └──────── due ──► queued
//! ```

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its `run_at` time (a delayed job).
    Scheduled,
    /// Ready; the next free worker takes it.
    Queued,
    /// Leased to a worker, which renews the lease while it works.
    Running,
    /// Failed transiently; waits for its backoff delay, then is queued again.
    Retrying,
    /// Finished successfully. Terminal (until purged).
    Done,
    /// Failed permanently, ran out of attempts, or was malformed. An operator may retry it.
    Dead,
    /// Cancelled by an operator. An operator may retry it.
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Scheduled,
        JobState::Queued,
        JobState::Running,
        JobState::Retrying,
        JobState::Done,
        JobState::Dead,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::Done => "done",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    /// No further transition happens without an operator.
    pub fn is_terminal(self) -> bool {
        match self {
            JobState::Done | JobState::Dead | JobState::Cancelled => true,
            JobState::Scheduled | JobState::Queued | JobState::Running | JobState::Retrying => {
                false
            }
        }
    }

    /// Whether `self -> to` is a transition of the lifecycle.
    pub fn can_become(self, to: JobState) -> bool {
        use JobState as S;
        match self {
            S::Scheduled => matches!(to, S::Queued | S::Cancelled),
            S::Queued => matches!(to, S::Running | S::Cancelled),
            S::Running => matches!(
                to,
                S::Done | S::Retrying | S::Dead | S::Queued | S::Cancelled
            ),
            S::Retrying => matches!(to, S::Queued | S::Cancelled),
            S::Done => false,
            S::Dead | S::Cancelled => matches!(to, S::Queued),
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "unknown job state {0:?}; expected one of scheduled, queued, running, retrying, done, dead, cancelled"
)]
pub struct UnknownState(pub String);

impl FromStr for JobState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// How a failed attempt is classed; decides between retrying and the dead set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Worth another attempt after a backoff (network errors, 429, 5xx).
    Transient,
    /// Another attempt would fail the same way (bad input, revision changed, 4xx).
    Permanent,
    /// Credentials are missing, wrong or lack a permission; an operator must act.
    Auth,
    /// The job could not be read at all (bad JSON, unknown version or kind, oversized).
    Malformed,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Auth => "auth",
            ErrorClass::Malformed => "malformed",
        }
    }

    /// The class named by its wire spelling (`transient`, `permanent`, `auth`, `malformed`).
    pub fn parse(s: &str) -> Option<ErrorClass> {
        [
            ErrorClass::Transient,
            ErrorClass::Permanent,
            ErrorClass::Auth,
            ErrorClass::Malformed,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }

    pub fn is_retryable(self) -> bool {
        match self {
            ErrorClass::Transient => true,
            ErrorClass::Permanent | ErrorClass::Auth | ErrorClass::Malformed => false,
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_only_leave_through_an_operator() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), s);
            if s.is_terminal() {
                for to in JobState::ALL {
                    assert!(!s.can_become(to) || to == JobState::Queued, "{s} -> {to}");
                }
            }
        }
        assert!(!JobState::Done.can_become(JobState::Queued));
        assert!(JobState::Dead.can_become(JobState::Queued));
        assert!(JobState::Running.can_become(JobState::Queued));
        assert!(!JobState::Queued.can_become(JobState::Done));
    }
}
