//! Distribution locks (`lua/lock.lua`): at most one attempt acts on a distribution at a time.
//!
//! The lock's owner is one attempt of one job: its lease (`<job_id> <lease token>`), not the
//! job id. An attempt whose lease expired while it still ran (a stalled worker) keeps its
//! lock for as long as it renews it, and the job's next attempt is refused meanwhile, like
//! any other job; once the stalled attempt stops renewing, the lock expires after its time
//! to live (the job lease) and the next attempt takes it. A stalled attempt that wakes after
//! that learns it from [`LockGuard::check`], which the pipeline calls before every write.

use std::fmt;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::scripts::SCRIPTS;
use super::{JobRecord, Lease, Queue, QueueError};

/// A held lock, renewed in the background until released or dropped.
pub struct LockGuard {
    queue: Queue,
    name: String,
    owner: String,
    ttl: Duration,
    stop: CancellationToken,
    /// Fires when a renewal finds the lock gone to someone else: stop acting.
    pub lost: CancellationToken,
}

/// Confirms that an attempt still holds its lock (see `LockGuard::check`).
#[derive(Clone)]
pub struct LockChecker {
    queue: Queue,
    name: String,
    owner: String,
}

impl LockChecker {
    pub async fn check(&self) -> Result<(), LockLost> {
        check_held(&self.queue, &self.name, &self.owner).await
    }
}

async fn check_held(queue: &Queue, name: &str, owner: &str) -> Result<(), LockLost> {
    match queue.lock_op("check", name, owner, Duration::ZERO).await {
        Ok((true, _)) => Ok(()),
        Ok((false, holder)) if holder.is_empty() => Err(LockLost::Expired {
            lock: name.to_owned(),
        }),
        Ok((false, holder)) => Err(LockLost::Taken {
            lock: name.to_owned(),
            holder: LockHolder::parse(&holder),
        }),
        Err(error) => Err(LockLost::Unconfirmed {
            lock: name.to_owned(),
            error,
        }),
    }
}

/// Who holds a lock that an attempt could not take, or no longer has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    pub job: String,
    /// The holder's attempt and worker, from its lease token. `None` for a lock taken by a
    /// worker from before locks were fenced by attempt, whose owner was the bare job id.
    pub attempt: Option<u32>,
    pub worker: Option<String>,
}

impl LockHolder {
    /// Reads a lock's value, `<job_id> <lease token>`.
    fn parse(owner: &str) -> LockHolder {
        let Some((job, token)) = owner.split_once(' ') else {
            return LockHolder {
                job: owner.to_owned(),
                attempt: None,
                worker: None,
            };
        };
        let lease = JobRecord::after_state(token);
        LockHolder {
            job: job.to_owned(),
            attempt: Some(lease.attempt).filter(|&a| a > 0),
            worker: lease.worker,
        }
    }
}

/// `<job> (attempt <n> on worker <w>)`: what an operator needs to find the holder.
impl fmt::Display for LockHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.job)?;
        match (self.attempt, &self.worker) {
            (Some(attempt), Some(worker)) => write!(f, " (attempt {attempt} on worker {worker})"),
            (Some(attempt), None) => write!(f, " (attempt {attempt})"),
            (None, Some(worker)) => write!(f, " (on worker {worker})"),
            (None, None) => Ok(()),
        }
    }
}

/// Why an attempt may no longer act on its distribution: [`LockGuard::check`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LockLost {
    #[error(
        "the distribution lock {lock} is held by job {holder} now; this attempt stopped before writing (its lease ran out while it ran: a stalled worker)"
    )]
    Taken { lock: String, holder: LockHolder },
    #[error(
        "the distribution lock {lock} expired without being renewed (the worker stalled, or lost Redis); this attempt stopped before writing"
    )]
    Expired { lock: String },
    #[error(
        "could not confirm that this attempt still holds the distribution lock {lock}: {error}; it stopped before writing, and a later attempt will go on"
    )]
    Unconfirmed { lock: String, error: QueueError },
}

/// Where distribution locks live: `atr-dist:lock:{<distribution>}`, outside every queue.
pub const LOCKS: &str = "atr-dist:lock:";

/// The lock owner for one attempt: its job id and lease token. The token alone is not
/// enough: jobs enqueued in one call and leased in one fetch have the same token.
fn owner(attempt: &Lease) -> String {
    format!("{} {}", attempt.id, attempt.token)
}

impl Queue {
    async fn lock_op(
        &self,
        op: &str,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<(bool, String), QueueError> {
        let (ok, holder): (i64, String) = SCRIPTS
            .lock
            .key(self.lock_key(name))
            .arg(op)
            .arg(owner)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok((ok == 1, holder))
    }

    /// Takes the lock `name` for one attempt of a job (its lease, as fetched), or says who
    /// holds it. Another attempt of the same job is another holder.
    pub async fn try_lock(
        &self,
        name: &str,
        attempt: &Lease,
        ttl: Duration,
    ) -> Result<Result<LockGuard, LockHolder>, QueueError> {
        let owner = owner(attempt);
        let (ok, holder) = self.lock_op("acquire", name, &owner, ttl).await?;
        if !ok {
            return Ok(Err(LockHolder::parse(&holder)));
        }
        let guard = LockGuard {
            queue: self.clone(),
            name: name.to_owned(),
            owner,
            ttl,
            stop: CancellationToken::new(),
            lost: CancellationToken::new(),
        };
        guard.spawn_renewal();
        Ok(Ok(guard))
    }
}

impl LockGuard {
    fn spawn_renewal(&self) {
        let queue = self.queue.clone();
        let (name, owner, ttl) = (self.name.clone(), self.owner.clone(), self.ttl);
        let (stop, lost) = (self.stop.clone(), self.lost.clone());
        let period = ttl / 3;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(period) => {}
                }
                match queue.lock_op("renew", &name, &owner, ttl).await {
                    Ok((true, _)) => {}
                    Ok((false, holder)) => {
                        tracing::warn!(lock = %name, %holder, "distribution lock lost");
                        lost.cancel();
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(lock = %name, error = %e, "renewing the distribution lock failed")
                    }
                }
            }
        });
    }

    /// A handle that confirms the lock as `check` does, for code that does not own the
    /// guard (the platform write path, `platform/http.rs`).
    pub fn checker(&self) -> LockChecker {
        LockChecker {
            queue: self.queue.clone(),
            name: self.name.clone(),
            owner: self.owner.clone(),
        }
    }

    /// Confirms, with one round trip, that this attempt still holds the lock: call it right
    /// before each write to a platform, and write only on `Ok`. Extends nothing (renewal is
    /// the background task's business), so it never keeps alive a lock that is running out.
    /// What it cannot rule out is a pause between its answer and the write; the time to live
    /// of a lock is a whole lease, far longer than that round trip.
    pub async fn check(&self) -> Result<(), LockLost> {
        check_held(&self.queue, &self.name, &self.owner).await
    }

    /// Releases the lock now. A guard dropped without this stops renewing, and the lock
    /// expires after its time to live.
    pub async fn release(self) {
        self.stop.cancel();
        if let Err(e) = self
            .queue
            .lock_op("release", &self.name, &self.owner, self.ttl)
            .await
        {
            tracing::warn!(lock = %self.name, error = %e, "releasing the distribution lock failed; it expires by itself");
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_are_read_from_their_lease() {
        let holder = LockHolder::parse("0190-job 3 1764300000000 7 2 1764300001000 host-1-ab");
        assert_eq!(
            holder,
            LockHolder {
                job: "0190-job".into(),
                attempt: Some(2),
                worker: Some("host-1-ab".into()),
            }
        );
        assert_eq!(
            holder.to_string(),
            "0190-job (attempt 2 on worker host-1-ab)"
        );
        // A lock taken before locks were fenced by attempt holds the bare job id.
        let old = LockHolder::parse("0190-job");
        assert_eq!((old.attempt, old.worker.as_deref()), (None, None));
        assert_eq!(old.to_string(), "0190-job");
        // Whatever follows the id without an attempt number (written by hand) names none.
        let odd = LockHolder::parse("0190-job by hand");
        assert_eq!((odd.attempt, odd.worker.as_deref()), (None, None));
        assert_eq!(odd.to_string(), "0190-job");
    }

    #[test]
    fn the_owner_is_the_job_and_its_lease() {
        let lease = Lease {
            id: "j".into(),
            token: "3 1 7 2 5 w".into(),
        };
        assert_eq!(owner(&lease), "j 3 1 7 2 5 w");
    }
}
