//! `atr-dist run`: the worker pool with the distribution pipeline, on the configured (or
//! embedded default) database and Redis, until SIGTERM or SIGINT.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use atr_dist_shared::Platform;
use atr_dist_shared::names::DistTag;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, section_name};
use crate::pipeline::Pipeline;
use crate::platform::Adapters;
use crate::queue::Queue;
use crate::queue::pool::{self, PoolConfig};
use crate::source::{AtrSource, DirSource, RevisionSource, Sources};
use crate::{db, embedded};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Db(#[from] db::DbError),
    #[error("{0}")]
    Embedded(#[from] embedded::EmbeddedError),
    #[error("cannot reach Redis at {url}: {source}")]
    Redis {
        url: String,
        source: crate::queue::QueueError,
    },
    #[error(
        "the results database has {0} pending migration(s); run `atr-dist migrate` or set database.auto_migrate"
    )]
    PendingMigrations(usize),
    #[error("config key `{0}`: {1}")]
    Config(String, String),
    #[error("{0}")]
    Queue(#[from] crate::queue::QueueError),
    #[error("{0}")]
    Http(#[from] crate::http::HttpError),
    #[error("{0}")]
    BadConfig(#[from] crate::config::ConfigError),
}

/// Builds the sources the configuration names.
pub fn sources(config: &Config) -> Result<Sources, RunError> {
    let dir: Option<Arc<dyn RevisionSource>> =
        Some(Arc::new(DirSource::new(config.revisions.root.clone())));
    let atr: Option<Arc<dyn RevisionSource>> = match (
        &config.revisions.atr_manifest_url,
        &config.revisions.atr_file_url,
    ) {
        (Some(manifest), Some(file)) => Some(Arc::new(
            AtrSource::new(manifest.clone(), file.clone()).map_err(|e| {
                RunError::Config("revisions.atr_manifest_url".into(), e.to_string())
            })?,
        )),
        (None, None) => None,
        _ => {
            return Err(RunError::Config(
                "revisions".into(),
                "set both atr_manifest_url and atr_file_url, or neither".into(),
            ));
        }
    };
    Ok(Sources { dir, atr })
}

pub fn staging_tags(config: &Config) -> HashMap<Platform, DistTag> {
    Platform::ALL
        .into_iter()
        .filter_map(|p| {
            let tag = config.platforms.get(p).staging_tag.as_deref()?;
            DistTag::new(tag).ok().map(|t| (p, t))
        })
        .collect()
}

/// The platforms whose `wait_deadline_secs` is set.
pub fn wait_deadlines(config: &Config) -> HashMap<Platform, Duration> {
    Platform::ALL
        .into_iter()
        .filter_map(|p| {
            let secs = config.platforms.get(p).wait_deadline_secs?;
            Some((p, Duration::from_secs(secs)))
        })
        .collect()
}

pub fn per_platform_limits(config: &Config) -> HashMap<Platform, Arc<Semaphore>> {
    Platform::ALL
        .into_iter()
        .filter_map(|p| {
            let n = config.platforms.get(p).concurrency?;
            tracing::debug!(platform = %section_name(p), n, "per-platform concurrency");
            Some((p, Arc::new(Semaphore::new(n))))
        })
        .collect()
}

/// Resolves on SIGTERM or SIGINT (`atr-dist serve` waits on it too).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// The Redis the worker uses, for its logs: the cluster nodes when `redis.cluster_nodes`
/// names any (`redis.url` is then not used), else `redis.url`; passwords redacted.
fn redis_in_use(config: &Config) -> String {
    let nodes = config.redis_cluster_nodes();
    if nodes.is_empty() {
        return db::redacted(config.redis_url().expose());
    }
    let nodes: Vec<String> = nodes.iter().map(|n| db::redacted(n.expose())).collect();
    format!("cluster {}", nodes.join(","))
}

/// Runs the worker until a shutdown signal; `adapters` are the platforms this build serves.
pub async fn run(config: Config, adapters: Adapters) -> Result<(), RunError> {
    let redis_url = config.redis_url();
    let _embedded = if config.redis.cluster_nodes.is_empty() {
        embedded::ensure(redis_url.expose(), Path::new("./atr-dist-redis"))?
    } else {
        None
    };
    let queue = Queue::connect(
        redis_url.expose(),
        &crate::secret::exposed(&config.redis_cluster_nodes()),
        &config.redis.queue,
    )
    .await
    .map_err(|source| RunError::Redis {
        url: redis_in_use(&config),
        source,
    })?;
    // Before connecting: a second worker process on one SQLite file is refused, not left to
    // fail its attempts with "database is locked".
    let _sqlite_lock = db::lock_sqlite_for_run(&config.database_url())?;
    let conn = db::connect(&config.database_url(), config.database.max_connections).await?;
    if config.database.auto_migrate {
        let applied = db::migrate_up(&conn).await?;
        if applied > 0 {
            tracing::info!(applied, "applied database migrations");
        }
    } else {
        let pending = db::pending_migrations(&conn).await?;
        if !pending.is_empty() {
            return Err(RunError::PendingMigrations(pending.len()));
        }
    }
    let platforms: Vec<String> = adapters
        .platforms()
        .iter()
        .map(ToString::to_string)
        .collect();
    tracing::info!(
        database = %db::redacted(config.database_url().expose()),
        redis = %redis_in_use(&config),
        queue = %config.redis.queue,
        platforms = %platforms.join(","),
        "atr-dist starting"
    );
    // One token stops both the pool and the HTTP server. Binding first makes a port conflict
    // fail the start, before any job is taken.
    let shutdown = CancellationToken::new();
    let http = if config.http.enabled {
        let listener = crate::http::bind(config.http.listen_addr()?).await?;
        let state =
            crate::http::AppState::new(queue.clone(), conn.clone(), &config, shutdown.clone());
        Some(tokio::spawn(crate::http::serve(listener, state)))
    } else {
        None
    };
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        on_signal.cancel();
    });
    let pipeline = Pipeline {
        db: conn,
        queue: queue.clone(),
        adapters,
        sources: sources(&config)?,
        lock_ttl: config.lease(),
        staging_tags: staging_tags(&config),
        per_platform: per_platform_limits(&config),
        wait_deadlines: wait_deadlines(&config),
        waits: crate::pipeline::wait::Schedule::default(),
        sealer: config.worker.sealer(),
        retry_limits: config.worker.retry_limits(),
        closing: Default::default(),
    };
    // Rows of attempts whose worker died are closed by the job's next attempt; this closes
    // those of jobs that have none (docs/wire-format.md, "Job lifecycle").
    let audit = crate::pipeline::audit::spawn(
        pipeline.db.clone(),
        queue.clone(),
        config.lease(),
        shutdown.clone(),
    );
    pool::run(
        queue,
        Arc::new(pipeline),
        PoolConfig::from_config(&config),
        shutdown.clone().cancelled_owned(),
        |_| {},
    )
    .await?;
    // The pool is done (on the signal, or on its own): the server follows.
    shutdown.cancel();
    if let Err(e) = audit.await {
        tracing::warn!(error = %e, "the audit task failed");
    }
    if let Some(server) = http {
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP server stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "the HTTP server task failed"),
        }
    }
    Ok(())
}
