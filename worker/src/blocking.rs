//! Blocking work in a job's path that ends when the job does.
//!
//! `tokio::task::spawn_blocking` runs a closure to its end whatever happens to the future
//! that awaits it: a job timeout or a cancel drops the future, and the thread goes on
//! reading, hashing or decompressing, holding files open and a slot of tokio's blocking
//! pool. Enough such jobs stall every job, and the runtime's shutdown waits for them.
//!
//! [`run`] hands the closure a [`Cancel`] flag that is raised when the awaiting future is
//! dropped; the closure checks it between pieces of work (a read, a tar entry, a directory
//! entry) and stops with [`Cancelled`]. Every blocking step in a job's path goes through
//! here, and none of them may block without bound between two checks: files are opened
//! without following links and without blocking (`source/dir.rs`), and reads are bounded
//! in size.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Raised when the job that started the work no longer waits for it.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

/// The work stopped because its job went away (timed out, cancelled, shut down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stopped: the job no longer waits for this work (timed out, cancelled or shut down)")]
pub struct Cancelled;

impl Cancel {
    /// A flag nobody raises, for work outside a job (tools, tests).
    pub fn never() -> Cancel {
        Cancel::default()
    }

    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// `Err(Cancelled)` once raised: call between pieces of work.
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.is_raised() {
            return Err(Cancelled);
        }
        Ok(())
    }

    /// Raised by the future of [`run`] when it is dropped; callable directly where work
    /// is cancelled some other way.
    pub fn raise(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Raises the flag when dropped: the future of [`run`] owns one.
struct RaiseOnDrop(Cancel);

impl Drop for RaiseOnDrop {
    fn drop(&mut self) {
        self.0.raise();
    }
}

/// Why blocking work returned no value of its own.
#[derive(Debug, thiserror::Error)]
pub enum BlockingError {
    #[error("{0}")]
    Cancelled(#[from] Cancelled),
    /// The closure panicked; the panic's message is kept.
    #[error("the blocking task failed: {0}")]
    Panicked(String),
}

/// Runs `work` on tokio's blocking pool; dropping the returned future raises the flag the
/// closure was given, so the thread stops at its next check.
pub async fn run<T, E, F>(work: F) -> Result<Result<T, E>, BlockingError>
where
    F: FnOnce(&Cancel) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    let cancel = Cancel::default();
    let guard = RaiseOnDrop(cancel.clone());
    let joined = tokio::task::spawn_blocking(move || work(&cancel)).await;
    // Finished normally: nobody needs the flag any more.
    drop(guard);
    match joined {
        Ok(result) => Ok(result),
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".to_owned());
            Err(BlockingError::Panicked(message))
        }
        Err(e) => Err(BlockingError::Panicked(e.to_string())),
    }
}

/// A reader that fails once more than `limit` bytes have come through it: what an archive
/// unpacks to is bounded however small its compressed form (a gzip bomb stops here).
pub struct Bounded<R> {
    inner: R,
    left: u64,
    limit: u64,
    /// What is read, for the message: "the tarball", "the archive".
    what: &'static str,
}

impl<R> Bounded<R> {
    pub fn new(inner: R, limit: u64, what: &'static str) -> Bounded<R> {
        Bounded {
            inner,
            left: limit,
            limit,
            what,
        }
    }
}

impl<R: std::io::Read> std::io::Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(std::io::Error::other(format!(
                "{} unpacks to more than {} bytes; refused",
                self.what, self.limit
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn dropping_the_future_stops_the_thread_at_its_next_check() {
        let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
        let work = run(move |cancel: &Cancel| -> Result<(), Cancelled> {
            loop {
                if cancel.check().is_err() {
                    tx.send("stopped").ok();
                    return Err(Cancelled);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        // The job's timeout fires: the future is dropped while the thread runs.
        let timed_out = tokio::time::timeout(Duration::from_millis(50), work).await;
        assert!(timed_out.is_err());
        let said = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
            .await
            .unwrap();
        assert_eq!(said, Ok("stopped"));
    }

    #[tokio::test]
    async fn values_errors_and_panics_come_back() {
        let ok = run(|_c: &Cancel| Ok::<_, String>(7)).await.unwrap();
        assert_eq!(ok, Ok(7));
        let err = run(|_c: &Cancel| Err::<u8, _>("no".to_owned()))
            .await
            .unwrap();
        assert_eq!(err, Err("no".to_owned()));
        let panicked = run(|_c: &Cancel| -> Result<(), ()> { panic!("boom") }).await;
        assert!(
            matches!(&panicked, Err(BlockingError::Panicked(m)) if m == "boom"),
            "{panicked:?}"
        );
    }
}
