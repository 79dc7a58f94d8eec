//! A job handler that acts on one distribution as the pipeline does (take the lock for its
//! attempt, `check` it right before writing, release it), with a gate before the write, and
//! a log in Redis of what each attempt did. The stall test (`tests/stall.rs`) runs it in a
//! worker process that it freezes (`src/bin/stall-worker.rs`) and in a pool of its own.

use std::time::Duration;

use atr_dist::queue::Queue;
use atr_dist::queue::pool::{Completion, JobError, JobHandler, RunningJob};
use redis::AsyncCommands;

/// The distribution lock every job of the test takes.
pub const LOCK: &str = "example-1.0.0|NPM||stall|1.0.0";

pub struct GatedWriter {
    pub queue: Queue,
    /// The lock's time to live: the job lease, as in the pipeline.
    pub ttl: Duration,
}

/// Where attempt `attempt`'s gate is: the attempt writes only once the key exists.
pub fn gate_key(queue: &Queue, attempt: u32) -> String {
    format!("{}stall:go:{attempt}", queue.prefix())
}

/// The log of what the attempts did, oldest first: `<attempt> holds`, `<attempt> refused
/// <holder>`, `<attempt> wrote`, `<attempt> check failed: <why>`.
pub fn log_key(queue: &Queue) -> String {
    format!("{}stall:log", queue.prefix())
}

pub async fn read_log(queue: &Queue) -> Vec<String> {
    queue
        .connection()
        .lrange(log_key(queue), 0, -1)
        .await
        .expect("read the stall log")
}

async fn log(queue: &Queue, line: String) -> Result<(), JobError> {
    let _: i64 = queue
        .connection()
        .rpush(log_key(queue), line)
        .await
        .map_err(|e| JobError::transient(format!("logging: {e}")))?;
    Ok(())
}

impl JobHandler for GatedWriter {
    async fn handle(&self, job: RunningJob) -> Result<Completion, JobError> {
        let queue = self.queue.clone();
        let n = job.attempt;
        let guard = match queue.try_lock(LOCK, &job.lease(), self.ttl).await {
            Ok(Ok(guard)) => guard,
            Ok(Err(holder)) => {
                log(&queue, format!("{n} refused {holder}")).await?;
                return Ok(Completion::Deferred {
                    delay: Duration::from_millis(50),
                    reason: format!("locked by job {holder}"),
                });
            }
            Err(e) => return Err(JobError::transient(format!("locking: {e}"))),
        };
        log(&queue, format!("{n} holds")).await?;
        // The write runs as a task of its own. When the pool learns that this attempt lost
        // its lease it drops the handler's future, but a write already under way on the
        // platform does not stop with it: the task stands for such a write, which only its
        // own `check` can stop.
        let write = tokio::spawn(async move {
            let gate = gate_key(&queue, n);
            loop {
                let open: bool = queue
                    .connection()
                    .exists(&gate)
                    .await
                    .map_err(|e| JobError::transient(format!("gate: {e}")))?;
                if open {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            match guard.check().await {
                Ok(()) => {
                    log(&queue, format!("{n} wrote")).await?;
                    guard.release().await;
                    Ok(Completion::Done)
                }
                Err(lost) => {
                    log(&queue, format!("{n} check failed: {lost}")).await?;
                    Err(JobError::transient(lost.to_string()))
                }
            }
        });
        write
            .await
            .map_err(|e| JobError::transient(format!("write task: {e}")))?
    }
}
