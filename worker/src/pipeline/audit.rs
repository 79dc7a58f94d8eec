//! Closing the rows of attempts that will never record their end themselves.
//!
//! A worker that dies (SIGKILL, a lost machine) or cannot write an attempt's result leaves
//! that attempt's `job_run` row open. The job's next attempt closes it (`record::start_run`),
//! but a job may have no next attempt: `fetch.lua` moves a job whose lease expired on its last
//! attempt to `dead`, and an operator may cancel or purge a job waiting after a lost attempt.
//! Those transitions happen in Redis, where no worker hears of them; so every worker looks,
//! once per lease, at the open rows of its queue and closes, as `abandoned`, each one whose
//! job is no longer running that attempt.

use std::time::Duration;

use atr_dist_shared::JobState;
use sea_orm::{DatabaseConnection, DbErr};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::record;
use crate::queue::{Queue, QueueError};

/// Open rows looked at per round trip.
const BATCH: u64 = 500;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("reading or closing open attempts in the results database: {0}")]
    Db(#[from] DbErr),
    #[error("reading the jobs of open attempts from the queue: {0}")]
    Queue(#[from] QueueError),
}

/// One pass over the open rows of `queue`'s attempts: closes, as `abandoned`, those whose job
/// is not running that attempt any more. Returns how many it closed. Rows closed meanwhile by
/// their own attempt are left as that attempt wrote them.
pub async fn close_abandoned(db: &DatabaseConnection, queue: &Queue) -> Result<usize, AuditError> {
    let mut closed = 0;
    let mut after = 0;
    loop {
        let rows = record::open_runs(db, queue.name(), after, BATCH).await?;
        let ids: Vec<String> = rows.iter().map(|r| r.job_id.clone()).collect();
        let positions = queue.positions(&ids).await?;
        for (row, position) in rows.iter().zip(positions) {
            let now = match position {
                Some((JobState::Running, attempt))
                    if i64::from(attempt) == i64::from(row.attempt) =>
                {
                    continue;
                }
                Some((JobState::Running, attempt)) => format!("the job runs attempt {attempt} now"),
                Some((state, _)) => format!("the job is {state} now"),
                None => "the job is no longer in the queue".to_owned(),
            };
            let why = format!("{}; {now}", record::abandoned_reason(row.attempt));
            if record::abandon_run(db, row.id, &why).await? {
                tracing::info!(job = %row.job_id, attempt = row.attempt, "{why}");
                closed += 1;
            }
        }
        // A batch short of full (an empty one too) was the last; a full one reads on after
        // its last row. (Only this ends the pass: a second check for an empty batch would
        // just save a query, and could be broken unseen.)
        if (rows.len() as u64) < BATCH {
            return Ok(closed);
        }
        after = rows.last().map_or(after, |r| r.id);
    }
}

/// Runs `close_abandoned` now and then every `every` until `stop` fires.
pub fn spawn(
    db: DatabaseConnection,
    queue: Queue,
    every: Duration,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Err(e) = close_abandoned(&db, &queue).await {
                tracing::warn!(error = %e, "closing the rows of abandoned attempts failed; trying again later");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    })
}
