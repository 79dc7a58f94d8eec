//! Waiting on a platform that is not there yet ([`PlatformError::not_yet`]): a rate limit
//! until its reset, a version Artifact Hub has not indexed, a staging repository Nexus is
//! still releasing.
//!
//! A wait is not a sleep inside an attempt, which would hold a worker slot and the
//! distribution's lock, and be lost with the worker. The attempt ends `waiting` and the job
//! is acked `defer`: it sits in Redis's schedule, and its next run spends no attempt. What
//! bounds the waiting is the database's record of them: the job's `waiting` rows in
//! `job_run` give how many waits there were (each next one longer) and when the first began
//! (the deadline counts from there), so a restart of every worker neither loses a wait nor
//! starts its deadline again.
//!
//! [`PlatformError::not_yet`]: crate::platform::PlatformError::not_yet

use std::time::Duration;

use atr_dist_shared::AttemptOutcome;
use atr_dist_shared::entities::job_run;
use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder};

/// How long a job may wait on its platform, from its first wait, when the platform's
/// `wait_deadline_secs` is not set: long enough for Artifact Hub's indexing rounds and a
/// Maven Central release, short enough that a version that never appears pages someone
/// the same day.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(6 * 3600);

/// How waits grow: doubling from `first` up to `max`. A platform may still ask for a longer
/// one: a rate limit's reset an hour away is waited for, not polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Schedule {
    /// 30 seconds, then 1, 2, 4, 8 minutes, then every 15 minutes.
    fn default() -> Schedule {
        Schedule {
            first: Duration::from_secs(30),
            max: Duration::from_secs(15 * 60),
        }
    }
}

/// The waits a job has had so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waited {
    pub count: u32,
    pub since: DateTime<Utc>,
}

/// What to do with a `not_yet` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run the job again after `delay`.
    Wait { delay: Duration },
    /// The deadline has passed: end the job, after it waited `waited`.
    GiveUp { waited: Duration },
}

/// The job's earlier waits, from its `waiting` rows.
pub async fn waited(db: &DatabaseConnection, job_id: &str) -> Result<Option<Waited>, DbErr> {
    let rows = job_run::Entity::find()
        .filter(job_run::Column::JobId.eq(job_id))
        .filter(job_run::Column::Outcome.eq(AttemptOutcome::Waiting.as_str()))
        .order_by_asc(job_run::Column::StartedAt)
        .all(db)
        .await?;
    Ok(rows.first().map(|first| Waited {
        count: u32::try_from(rows.len()).unwrap_or(u32::MAX),
        since: first.started_at,
    }))
}

impl Schedule {
    /// The wait after `count` earlier ones: doubling from `first` up to `max`, and never
    /// shorter than what the platform asked for.
    pub fn delay(&self, count: u32, at_least: Duration) -> Duration {
        let grown = self
            .first
            .checked_mul(1u32.checked_shl(count.min(16)).unwrap_or(u32::MAX))
            .unwrap_or(self.max)
            .min(self.max);
        grown.max(at_least)
    }

    /// Whether a job that began waiting at `earlier.since` (or now, when this is its first
    /// wait) waits again or gives up, `now`, under `deadline`.
    pub fn decide(
        &self,
        earlier: Option<Waited>,
        now: DateTime<Utc>,
        deadline: Duration,
        at_least: Duration,
    ) -> Decision {
        let Some(earlier) = earlier else {
            return Decision::Wait {
                delay: self.delay(0, at_least),
            };
        };
        let waited = (now - earlier.since).to_std().unwrap_or(Duration::ZERO);
        if waited >= deadline {
            return Decision::GiveUp { waited };
        }
        Decision::Wait {
            delay: self.delay(earlier.count, at_least),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_WAIT: Duration = Duration::from_secs(15 * 60);
    const FIRST_WAIT: Duration = Duration::from_secs(30);

    fn delay(count: u32, at_least: Duration) -> Duration {
        Schedule::default().delay(count, at_least)
    }

    fn decide(
        earlier: Option<Waited>,
        now: DateTime<Utc>,
        deadline: Duration,
        at_least: Duration,
    ) -> Decision {
        Schedule::default().decide(earlier, now, deadline, at_least)
    }

    #[test]
    fn waits_double_up_to_the_cap_and_honour_the_platform() {
        assert_eq!(delay(0, Duration::ZERO), Duration::from_secs(30));
        assert_eq!(delay(1, Duration::ZERO), Duration::from_secs(60));
        assert_eq!(delay(3, Duration::ZERO), Duration::from_secs(240));
        assert_eq!(delay(5, Duration::ZERO), MAX_WAIT);
        assert_eq!(delay(40, Duration::ZERO), MAX_WAIT);
        assert_eq!(delay(u32::MAX, Duration::ZERO), MAX_WAIT);
        // A rate limit's reset further away than the grown wait is waited for.
        assert_eq!(
            delay(1, Duration::from_secs(3000)),
            Duration::from_secs(3000)
        );
        assert_eq!(delay(3, Duration::from_secs(10)), Duration::from_secs(240));
    }

    #[test]
    fn without_a_configured_deadline_a_job_waits_six_hours() {
        let now = Utc::now();
        let waited = |minutes| Waited {
            count: 1,
            since: now - chrono::Duration::minutes(minutes),
        };
        assert_eq!(
            decide(Some(waited(359)), now, DEFAULT_DEADLINE, Duration::ZERO),
            Decision::Wait {
                delay: Duration::from_secs(60)
            }
        );
        assert_eq!(
            decide(Some(waited(360)), now, DEFAULT_DEADLINE, Duration::ZERO),
            Decision::GiveUp {
                waited: Duration::from_secs(6 * 3600)
            }
        );
    }

    #[test]
    fn the_deadline_counts_from_the_first_wait() {
        let now = Utc::now();
        let hour = Duration::from_secs(3600);
        assert_eq!(
            decide(None, now, hour, Duration::ZERO),
            Decision::Wait { delay: FIRST_WAIT }
        );
        let since = now - chrono::Duration::minutes(59);
        assert_eq!(
            decide(Some(Waited { count: 2, since }), now, hour, Duration::ZERO),
            Decision::Wait {
                delay: Duration::from_secs(120)
            }
        );
        let since = now - chrono::Duration::minutes(60);
        assert_eq!(
            decide(Some(Waited { count: 9, since }), now, hour, Duration::ZERO),
            Decision::GiveUp { waited: hour }
        );
        // A clock that went backwards waits rather than giving up.
        let since = now + chrono::Duration::minutes(5);
        assert_eq!(
            decide(Some(Waited { count: 1, since }), now, hour, Duration::ZERO),
            Decision::Wait {
                delay: Duration::from_secs(60)
            }
        );
    }
}
