//! The embedded default: when no Redis answers at the default address and `redis-server`
//! is installed, `atr-dist run` starts a private one there, persisting to
//! `./atr-dist-redis/` (append-only file, written to disk every second), and shuts it down
//! cleanly on exit. A crash of the whole machine can lose the last second of queue writes;
//! production runs its own Redis.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::config::DEFAULT_REDIS_URL;

pub struct EmbeddedRedis {
    child: Child,
    port: u16,
}

impl EmbeddedRedis {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Shuts the server down now (what dropping it does) and says how it exited.
    pub fn stop(mut self) -> Option<ExitStatus> {
        self.shutdown()
    }

    /// Asks the server to shut down, which flushes the append-only file (a kill could lose
    /// the last second of writes: the acks of jobs just finished), and kills it only if it
    /// has not exited within 10 s.
    fn shutdown(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        if let Ok(mut conn) = std::net::TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.port).into(),
            Duration::from_secs(1),
        ) {
            use std::io::Write;
            let _ = conn.write_all(b"*1\r\n$8\r\nSHUTDOWN\r\n");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for EmbeddedRedis {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "no Redis at {url} and redis-server is not installed; install it (Debian: apt-get install redis-server), run scripts/services.sh, or set ATR_DIST_REDIS__URL"
    )]
    NotInstalled { url: String },
    #[error("starting redis-server failed: {0}")]
    Start(String),
}

fn answers(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300))
        .is_ok()
}

/// Starts a private Redis on 127.0.0.1:6379 when the configured URL is the default and
/// nothing answers there. Returns `None` when a Redis is already there or the URL is not
/// the default (then connecting is the caller's business).
pub fn ensure(url: &str, data_dir: &Path) -> Result<Option<EmbeddedRedis>, EmbeddedError> {
    const DEFAULT_PORT: u16 = 6379;
    if url != DEFAULT_REDIS_URL || answers(DEFAULT_PORT) {
        return Ok(None);
    }
    // Its errors name redis://127.0.0.1:6379, which is `url`.
    let redis = start(DEFAULT_PORT, data_dir)?;
    tracing::info!(
        dir = %data_dir.display(),
        "no Redis was running at {url}: started a private redis-server there for the embedded default (stopped when atr-dist exits)"
    );
    eprintln!(
        "atr-dist: no Redis at {url}; started a private redis-server there (data in {}), stopped on exit",
        data_dir.display()
    );
    Ok(Some(redis))
}

/// Starts `redis-server` on 127.0.0.1:`port`, persisting to `data_dir` (append-only file),
/// and waits until it answers. The server stops when the returned value is dropped.
pub fn start(port: u16, data_dir: &Path) -> Result<EmbeddedRedis, EmbeddedError> {
    let installed = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !installed {
        return Err(EmbeddedError::NotInstalled {
            url: format!("redis://127.0.0.1:{port}"),
        });
    }
    // Whatever answers there is not ours, and would pass for it in the wait below.
    if answers(port) {
        return Err(EmbeddedError::Start(format!(
            "something already listens on 127.0.0.1:{port}"
        )));
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| EmbeddedError::Start(format!("{}: {e}", data_dir.display())))?;
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--protected-mode", "yes"])
        .arg("--port")
        .arg(port.to_string())
        .args(["--appendonly", "yes", "--save", ""])
        .arg("--dir")
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| EmbeddedError::Start(e.to_string()))?;
    let mut redis = EmbeddedRedis { child, port };
    let start = Instant::now();
    while !answers(port) {
        if let Ok(Some(status)) = redis.child.try_wait() {
            return Err(EmbeddedError::Start(format!(
                "redis-server exited with {status}"
            )));
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(EmbeddedError::Start(
                "redis-server did not answer within 10 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(redis)
}
