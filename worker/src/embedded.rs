//! The embedded default: when no Redis answers at the default address and `redis-server`
//! is installed, `atr-dist run` starts a private one there, persisting to
//! `./atr-dist-redis/` (append-only file), and stops it on exit.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::DEFAULT_REDIS_URL;

pub struct EmbeddedRedis {
    child: Child,
}

impl Drop for EmbeddedRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    if url != DEFAULT_REDIS_URL || answers(6379) {
        return Ok(None);
    }
    let installed = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !installed {
        return Err(EmbeddedError::NotInstalled {
            url: url.to_owned(),
        });
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| EmbeddedError::Start(format!("{}: {e}", data_dir.display())))?;
    let child = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            "6379",
            "--protected-mode",
            "yes",
        ])
        .args(["--appendonly", "yes", "--save", ""])
        .arg("--dir")
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| EmbeddedError::Start(e.to_string()))?;
    let mut redis = EmbeddedRedis { child };
    let start = Instant::now();
    while !answers(6379) {
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
    tracing::info!(
        dir = %data_dir.display(),
        "no Redis was running at {url}: started a private redis-server there for the embedded default (stopped when atr-dist exits)"
    );
    eprintln!(
        "atr-dist: no Redis at {url}; started a private redis-server there (data in {}), stopped on exit",
        data_dir.display()
    );
    let _ = &mut redis;
    Ok(Some(redis))
}
