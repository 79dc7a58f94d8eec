//! The process's open-file limit (`RLIMIT_NOFILE`), and the share of it the HTTP server may
//! use.
//!
//! Many systems start a process with a soft limit of 1024 descriptors and a much higher hard
//! limit. `atr-dist run` and `atr-dist serve` raise the soft limit to the hard one at start,
//! and the HTTP server's connection cap is kept `RESERVED_FOR_WORKER` descriptors below the
//! soft limit, so that a flood of connections can never leave the worker without
//! descriptors for its database, Redis, revision files and platform calls.

/// Descriptors the HTTP server never takes: the database pool, Redis, revision files being
/// read, temporary files and platform connections of the jobs in flight, with room to spare.
pub const RESERVED_FOR_WORKER: u64 = 256;

/// The fewest connections the server is left with however low the limit: below this the
/// dashboard could not load its page and assets at once.
pub const MIN_CONNECTIONS: usize = 8;

/// Soft and hard open-file limits; `None` is unlimited (or unknown on this platform).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot raise the open-file limit from {from} to {to}: {source}")]
pub struct RaiseError {
    pub from: u64,
    pub to: u64,
    pub source: std::io::Error,
}

/// The limits in force now.
#[cfg(unix)]
pub fn current() -> FileLimit {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    FileLimit {
        soft: limit.current,
        hard: limit.maximum,
    }
}

#[cfg(not(unix))]
pub fn current() -> FileLimit {
    FileLimit {
        soft: None,
        hard: None,
    }
}

/// Raises the soft limit to the hard one (an unprivileged process may), and returns the
/// limits then in force. An unlimited hard limit is left alone: Linux refuses an unlimited
/// soft limit for open files, and the soft one in force is then kept.
#[cfg(unix)]
pub fn raise_to_hard() -> Result<FileLimit, RaiseError> {
    let now = current();
    let (Some(soft), Some(hard)) = (now.soft, now.hard) else {
        return Ok(now);
    };
    if soft >= hard {
        return Ok(now);
    }
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        },
    )
    .map_err(|e| RaiseError {
        from: soft,
        to: hard,
        source: e.into(),
    })?;
    Ok(current())
}

#[cfg(not(unix))]
pub fn raise_to_hard() -> Result<FileLimit, RaiseError> {
    Ok(current())
}

/// Lowers the soft limit to `soft` (at most the hard one); for tests that reproduce running
/// out of descriptors without exhausting the machine's.
#[cfg(unix)]
pub fn set_soft(soft: u64) -> std::io::Result<()> {
    let now = current();
    let soft = now.hard.map_or(soft, |hard| soft.min(hard));
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(soft),
            maximum: now.hard,
        },
    )
    .map_err(std::io::Error::from)
}

/// The most connections the HTTP server may hold: `configured`, but never closer than
/// `RESERVED_FOR_WORKER` to the soft limit `soft` (nor fewer than `MIN_CONNECTIONS`).
pub fn connection_cap(configured: usize, soft: Option<u64>) -> usize {
    let Some(soft) = soft else {
        return configured;
    };
    let room = usize::try_from(soft.saturating_sub(RESERVED_FOR_WORKER)).unwrap_or(usize::MAX);
    configured.min(room.max(MIN_CONNECTIONS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_the_worker_its_descriptors() {
        assert_eq!(connection_cap(512, Some(1024)), 512);
        assert_eq!(connection_cap(1000, Some(1024)), 768);
        assert_eq!(connection_cap(512, None), 512);
        assert_eq!(connection_cap(512, Some(100)), MIN_CONNECTIONS);
        assert_eq!(connection_cap(4, Some(100)), 4);
    }
}
