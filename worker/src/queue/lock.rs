//! Distribution locks (`lua/lock.lua`): at most one job acts on a distribution at a time.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::scripts::SCRIPTS;
use super::{Queue, QueueError};

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
            .key(format!("{}queued", self.prefix))
            .arg(&self.prefix)
            .arg(op)
            .arg(name)
            .arg(owner)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok((ok == 1, holder))
    }

    /// Takes the lock `name` for `owner`, or says who holds it.
    pub async fn try_lock(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Result<LockGuard, String>, QueueError> {
        let (ok, holder) = self.lock_op("acquire", name, owner, ttl).await?;
        if !ok {
            return Ok(Err(holder));
        }
        let guard = LockGuard {
            queue: self.clone(),
            name: name.to_owned(),
            owner: owner.to_owned(),
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
