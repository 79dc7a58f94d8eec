//! Moving a queue from wire format 1 or 2 to 3 (`docs/wire-format.md`, "Versions"), for
//! `atr-dist queue migrate`.

use atr_dist_shared::JobState;
use redis::AsyncCommands;
use serde::Serialize;

use super::admin::state_order;
use super::scripts::SCRIPTS;
use super::{Queue, QueueError};

/// The wire format this code speaks (docs/wire-format.md).
pub const FORMAT: &str = "3";

/// Jobs per script call: a step stays short, so Redis keeps answering others meanwhile.
const STEP: u64 = 500;

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MigrationReport {
    /// Jobs looked at.
    pub jobs: u64,
    /// Jobs that were in an older layout and were moved.
    pub moved: u64,
}

impl Queue {
    /// Fails unless the queue is in wire format 3 or new: the check `enqueue.lua` and
    /// `fetch.lua` make on every call, made once at start so that a worker facing an older
    /// queue stops with the fix instead of logging the error on every fetch.
    pub async fn check_format(&self) -> Result<(), QueueError> {
        let mut pipe = redis::pipe();
        pipe.get(format!("{}format", self.prefix));
        for state in JobState::ALL {
            let key = format!("{}{}", self.prefix, state_order(state).0);
            match state {
                JobState::Queued => pipe.llen(key),
                JobState::Scheduled
                | JobState::Retrying
                | JobState::Running
                | JobState::Done
                | JobState::Dead
                | JobState::Cancelled => pipe.zcard(key),
            };
        }
        let (format, counts): (Option<String>, Vec<u64>) = {
            let mut values: Vec<redis::Value> = pipe.query_async(&mut self.conn.clone()).await?;
            if values.is_empty() {
                return Err(super::protocol("format check", "empty pipeline reply"));
            }
            let format = redis::from_redis_value(values.remove(0))?;
            let counts = values
                .into_iter()
                .map(redis::from_redis_value)
                .collect::<Result<_, _>>()?;
            (format, counts)
        };
        match format.as_deref() {
            Some(FORMAT) => Ok(()),
            Some("2") => Err(QueueError::NotNow(format!(
                "queue {} is in wire format 2; this atr-dist speaks format {FORMAT}: stop its \
                 workers and producers and run `atr-dist queue migrate`",
                self.name
            ))),
            Some(other) => Err(QueueError::NotNow(format!(
                "queue {} is in wire format {other}; this atr-dist speaks format {FORMAT} \
                 (docs/wire-format.md, \"Versions\")",
                self.name
            ))),
            None if counts.iter().any(|&n| n > 0) => Err(QueueError::NotNow(format!(
                "queue {} holds jobs but has no format key, so it is in wire format 1; \
                 stop its workers and producers and run `atr-dist queue migrate`",
                self.name
            ))),
            None => Ok(()),
        }
    }

    /// Moves every job of a version 1 or 2 queue to the version 3 layout, then marks the
    /// queue as version 3. Refuses while workers have a live heartbeat: an older worker would
    /// go on writing the old layout. Safe to run again; a version 3 queue is left as it is.
    pub async fn migrate(&self) -> Result<MigrationReport, QueueError> {
        let workers = self.live_workers().await?;
        if workers > 0 {
            // A worker that was killed rather than stopped keeps its entry until the lease it
            // last renewed runs out: say how long that is, so the operator knows to wait.
            let last: Vec<(String, f64)> = self
                .conn
                .clone()
                .zrevrange_withscores(format!("{}workers", self.prefix), 0, 0)
                .await?;
            let wait = last.first().map_or(0, |(_, until)| {
                ((*until as i64 - chrono::Utc::now().timestamp_millis()).max(0) + 999) / 1000
            });
            return Err(QueueError::NotNow(format!(
                "{workers} worker(s) of queue {} have a live heartbeat; stop every worker \
                 and producer before migrating (the last heartbeat runs out in {wait} s \
                 unless its worker is still running and renews it)",
                self.name
            )));
        }
        let mut report = MigrationReport::default();
        // Every job is in exactly one state's list or set: walking them all reaches each once.
        for state in JobState::ALL {
            let mut offset = 0;
            loop {
                let (looked, moved): (u64, u64) = SCRIPTS
                    .migrate
                    .key(&self.queued_key)
                    .arg(&self.prefix)
                    .arg(state.as_str())
                    .arg(offset)
                    .arg(STEP)
                    .invoke_async(&mut self.conn.clone())
                    .await?;
                report.jobs += looked;
                report.moved += moved;
                if looked < STEP {
                    break;
                }
                offset += STEP;
            }
        }
        let _: () = self
            .conn
            .clone()
            .set(format!("{}format", self.prefix), FORMAT)
            .await?;
        Ok(report)
    }
}
