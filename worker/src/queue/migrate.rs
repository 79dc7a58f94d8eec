//! Moving a queue from wire format 1 to 6 to 7 (`docs/wire-format.md`, "Versions"), for
//! `atr-dist queue migrate`. Format 6 added keys (the `results` stream and the `result`
//! hash) and changed `ack.lua`'s arguments; format 7 names the jobs that ended in one stream
//! entry per script call. Both lay jobs out as format 5 does: a format 5 or 6 queue only
//! needs its `format` key set.

use atr_dist_shared::JobState;
use redis::AsyncCommands;
use serde::Serialize;

use super::admin::state_order;
use super::scripts::SCRIPTS;
use super::{Queue, QueueError};

/// The wire format of a queue that was never sharded, which this code speaks, and gives a
/// new queue (docs/wire-format.md).
pub const FORMAT: &str = "7";

/// The wire format of a queue that may be sharded: version 7's layout, marked so that
/// version 7 clients, which know one shard only, refuse it (docs/wire-format.md, "Shards").
pub const FORMAT_SHARDED: &str = "8";

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
    /// The `format` key, and whether any state's list or set exists (holds a job). EXISTS,
    /// because the type of `done` differs between versions.
    async fn format_and_holds_jobs(&self) -> Result<(Option<String>, bool), QueueError> {
        let keys: Vec<String> = JobState::ALL
            .iter()
            .map(|&state| format!("{}{}", self.prefix, state_order(state).0))
            .collect();
        let (format, existing): (Option<String>, u64) = redis::pipe()
            .get(format!("{}format", self.prefix))
            .exists(&keys)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok((format, existing > 0))
    }

    /// Fails unless the queue is in wire format 7 or new: the check `enqueue.lua` and
    /// `fetch.lua` make on every call, made once at start so that a worker facing an older
    /// queue stops with the fix instead of logging the error on every fetch.
    pub async fn check_format(&self) -> Result<(), QueueError> {
        let (format, holds_jobs) = self.format_and_holds_jobs().await?;
        match format.as_deref() {
            Some(FORMAT | FORMAT_SHARDED) => Ok(()),
            Some(old @ ("2" | "3" | "4" | "5" | "6")) => Err(QueueError::NotNow(format!(
                "queue {} is in wire format {old}; this atr-dist speaks format {FORMAT}: stop \
                 its workers and producers and run `atr-dist queue migrate`",
                self.name
            ))),
            Some(other) => Err(QueueError::NotNow(format!(
                "queue {} is in wire format {other}; this atr-dist speaks formats {FORMAT} and \
                 {FORMAT_SHARDED} (docs/wire-format.md, \"Versions\")",
                self.name
            ))),
            None if holds_jobs => Err(QueueError::NotNow(format!(
                "queue {} holds jobs but has no format key, so it is in wire format 1; \
                 stop its workers and producers and run `atr-dist queue migrate`",
                self.name
            ))),
            None => Ok(()),
        }
    }

    /// Moves every job of a version 1 to 4 queue to the version 5 layout (which versions 6
    /// and 7 keep), then marks the queue as version 7. Refuses while workers have a live
    /// heartbeat: an older worker would go on writing the old layout, or acking without
    /// reporting results. Safe to run again, also after an interruption; a version 7 queue is
    /// left as it is.
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
        let (format, _) = self.format_and_holds_jobs().await?;
        if format.as_deref().is_some_and(super::shards::speaks) {
            report.jobs = self.stats().await?.counts.values().sum();
            return Ok(report);
        }
        let rebuilds_done = match format.as_deref() {
            // Versions 1 and 2 keep `done` as a sorted set, which the steps rebuild as a list.
            None | Some("2") => true,
            Some("3" | "4") => false,
            // The same layout: only the format changes.
            Some("5" | "6") => {
                let _: () = self
                    .conn
                    .clone()
                    .set(format!("{}format", self.prefix), FORMAT)
                    .await?;
                report.jobs = self.stats().await?.counts.values().sum();
                return Ok(report);
            }
            Some(other) => {
                return Err(QueueError::NotNow(format!(
                    "queue {} is in wire format {other}, which this atr-dist (format \
                     {FORMAT}) cannot migrate (docs/wire-format.md, \"Versions\")",
                    self.name
                )));
            }
        };
        self.move_envelopes_to_batch_0().await?;
        let rebuilt_done = format!("{}migrating-done", self.prefix);
        // Left over from an interrupted run: rebuilt from the start below.
        let _: () = self.conn.clone().del(&rebuilt_done).await?;
        // Every job is in exactly one state's list or set: walking them all reaches each once.
        for state in JobState::ALL {
            let mut offset = 0;
            loop {
                let (looked, jobs, moved): (u64, u64, u64) = SCRIPTS
                    .migrate
                    .key(&self.queued_key)
                    .arg(&self.prefix)
                    .arg(state.as_str())
                    .arg(offset)
                    .arg(STEP)
                    .invoke_async(&mut self.conn.clone())
                    .await?;
                report.jobs += jobs;
                report.moved += moved;
                if looked < STEP {
                    break;
                }
                offset += STEP;
            }
        }
        // From version 1 or 2, `done` becomes the list of finished jobs, in finishing order;
        // and the queue speaks version 7; in one step.
        let done = format!("{}done", self.prefix);
        let mut pipe = redis::pipe();
        pipe.atomic();
        if rebuilds_done {
            pipe.del(&done).ignore();
            if self.conn.clone().exists::<_, bool>(&rebuilt_done).await? {
                pipe.rename(&rebuilt_done, &done).ignore();
            }
        }
        pipe.set(format!("{}format", self.prefix), FORMAT).ignore();
        let _: () = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(report)
    }

    /// Versions 2 to 4 keep every envelope in one `envelopes` hash; version 5 keeps them by
    /// batch, and batch 0 is the migrated jobs'. A rename moves them all at once. Should
    /// `env:0` exist already (an interrupted migration, after which an older producer
    /// enqueued again), the rest are moved in steps.
    async fn move_envelopes_to_batch_0(&self) -> Result<(), QueueError> {
        let envelopes = format!("{}envelopes", self.prefix);
        let batch_0 = self.envelope_key(0);
        let mut conn = self.conn.clone();
        if !conn.exists::<_, bool>(&envelopes).await? {
            return Ok(());
        }
        if conn.rename_nx::<_, _, bool>(&envelopes, &batch_0).await? {
            return Ok(());
        }
        // A full pass of HSCAN returns every field present throughout, whatever each step
        // deletes; a field added meanwhile (a producer still running) takes another pass.
        let mut cursor = 0u64;
        loop {
            let (next, pairs): (u64, Vec<(String, Vec<u8>)>) = redis::cmd("HSCAN")
                .arg(&envelopes)
                .arg(cursor)
                .arg("COUNT")
                .arg(STEP)
                .query_async(&mut conn)
                .await?;
            if !pairs.is_empty() {
                let ids: Vec<&String> = pairs.iter().map(|(id, _)| id).collect();
                let _: () = redis::pipe()
                    .atomic()
                    .hset_multiple(&batch_0, &pairs)
                    .ignore()
                    .hdel(&envelopes, ids)
                    .ignore()
                    .query_async(&mut conn)
                    .await?;
            }
            cursor = next;
            if cursor == 0 && !conn.exists::<_, bool>(&envelopes).await? {
                return Ok(());
            }
        }
    }
}
