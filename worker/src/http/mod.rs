//! The operator surface over HTTP, served by `atr-dist run` next to the worker pool and by
//! `atr-dist serve` on its own:
//!
//! | path | what |
//! |---|---|
//! | `/api/v1/...` | JSON API (`api.rs`), described by `/api/v1/openapi.json` (`openapi.rs`) |
//! | `/`, `/jobs`, `/jobs/{id}`, `/releases`, `/releases/{key}` | the dashboard (`dashboard.rs`) |
//! | `/events` | server-sent queue statistics, for the dashboard's live updates (`sse.rs`) |
//! | `/metrics` | Prometheus text format (`metrics.rs`) |
//! | `/healthz`, `/readyz` | liveness and readiness (`health.rs`) |
//!
//! Reads and writes are authorised as `auth.rs` describes. Every response carries a strict
//! Content-Security-Policy: job data is untrusted, and the dashboard needs no inline script.

mod api;
mod auth;
mod chart;
mod dashboard;
mod error;
mod health;
pub mod metrics;
pub mod openapi;
mod params;
pub mod results;
pub mod server;
mod sse;
pub mod types;
mod views;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use atr_dist_shared::Platform;
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;

use crate::config::Config;
use crate::db;
use crate::queue::Queue;

/// Longest a request waits on Redis or the database before it answers 503: an operator
/// looking at a dashboard, or a probe, wants "down" quickly rather than a hung page.
pub const BACKEND_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "cannot listen on {addr} (http.listen): {source}; choose another address with ATR_DIST_HTTP__LISTEN (for `atr-dist run`, http.enabled = false serves nothing)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    queue: Queue,
    db: DatabaseConnection,
    auth: auth::Auth,
    max_attempts: BTreeMap<Platform, u32>,
    feed: sse::StatsFeed,
    shutdown: CancellationToken,
    limits: server::Limits,
}

impl AppState {
    /// Must be called inside a Tokio runtime: it starts the statistics feed, which stops
    /// when `shutdown` is cancelled.
    pub fn new(
        queue: Queue,
        db: DatabaseConnection,
        config: &Config,
        shutdown: CancellationToken,
    ) -> AppState {
        let max_attempts = Platform::ALL
            .into_iter()
            .map(|p| (p, config.retry_for(p).max_attempts))
            .collect();
        AppState(Arc::new(Inner {
            feed: sse::StatsFeed::start(queue.clone(), shutdown.clone()),
            queue,
            db,
            auth: auth::Auth::new(
                config.http.admin_token.as_ref(),
                config.http.reads_open(),
                auth::AllowedHosts::new(&config.http.allowed_hosts),
            ),
            max_attempts,
            shutdown,
            limits: server::Limits {
                header_read_timeout: Duration::from_secs(config.http.header_read_timeout_secs),
                idle_timeout: Duration::from_secs(config.http.idle_timeout_secs),
                max_connections: config.http.max_connections,
            },
        }))
    }

    fn queue(&self) -> &Queue {
        &self.0.queue
    }

    fn db(&self) -> &DatabaseConnection {
        &self.0.db
    }

    fn auth(&self) -> &auth::Auth {
        &self.0.auth
    }

    fn feed(&self) -> &sse::StatsFeed {
        &self.0.feed
    }

    fn shutdown(&self) -> &CancellationToken {
        &self.0.shutdown
    }

    /// How often an `/events` stream sends a comment when nothing changes: well inside the
    /// idle timeout, which would otherwise close a quiet stream.
    fn sse_keep_alive(&self) -> Duration {
        (self.0.limits.idle_timeout / 2).min(Duration::from_secs(15))
    }

    /// Attempts a job gets when its enqueue names none: the platform's retry policy.
    fn max_attempts(&self, platform: Platform) -> u32 {
        self.0.max_attempts.get(&platform).copied().unwrap_or(1)
    }
}

/// The services a request may wait on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Redis,
    Database,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Redis => "Redis",
            Backend::Database => "the results database",
        }
    }

    fn code(self) -> &'static str {
        match self {
            Backend::Redis => "redis_unavailable",
            Backend::Database => "database_unavailable",
        }
    }
}

/// Runs `fut` for at most `BACKEND_TIMEOUT`; past it, a 503 naming `backend`.
async fn bounded<T, E>(
    backend: Backend,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, ApiError>
where
    ApiError: From<E>,
{
    match tokio::time::timeout(BACKEND_TIMEOUT, fut).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(_) => Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            backend.code(),
            format!(
                "{} did not answer within {} s",
                backend.name(),
                BACKEND_TIMEOUT.as_secs()
            ),
        )),
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .nest("/api/v1", api::routes())
        .merge(dashboard::routes())
        .route("/events", get(sse::events))
        .route("/metrics", get(metrics::scrape))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(not_found)
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

/// A path nothing serves. Under `/api/` it is the API's JSON error, as for any other API
/// path: the API's own fallback does not see `/api/v1/` itself (a client's `..` or `%2E%2E`
/// ends there), nor another version; elsewhere it is the dashboard's page.
async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    if uri.path() == "/api" || uri.path().starts_with("/api/") {
        return api::not_found(method, uri).await.into_response();
    }
    dashboard::not_found().await.into_response()
}

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    let defaults: [(HeaderName, &'static str); 5] = [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        // Live data, some of it job payloads: never from a cache. Assets set their own.
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in defaults {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    response
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

/// Serves until the state's shutdown token is cancelled, then finishes the requests in
/// flight (server-sent event streams end on the same token). Connections are held to the
/// timeouts and the cap of `[http]` (`server.rs`); the cap is lowered, with a warning, when
/// the process's open-file limit would not leave the worker its descriptors.
pub async fn serve(listener: TcpListener, state: AppState) -> Result<(), HttpError> {
    let shutdown = state.shutdown().clone();
    let mut limits = state.0.limits;
    let files = crate::fd_limit::current();
    let cap = crate::fd_limit::connection_cap(limits.max_connections, files.soft);
    if cap < limits.max_connections {
        tracing::warn!(
            configured = limits.max_connections,
            cap,
            open_file_limit = files.soft,
            reserved = crate::fd_limit::RESERVED_FOR_WORKER,
            "http.max_connections lowered to leave the worker its file descriptors; raise the open-file limit (ulimit -n) to allow more"
        );
        limits.max_connections = cap;
    }
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(
            %addr,
            open_reads = state.auth().reads_open(),
            writes = state.auth().writes_enabled(),
            max_connections = limits.max_connections,
            "dashboard and API at http://{addr}/"
        );
    }
    server::run(listener, router(state), limits, shutdown)
        .await
        .map_err(HttpError::Serve)
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error(
        "cannot reach Redis at {url} ({source}); start one with `redis-server --daemonize yes --bind 127.0.0.1` or set ATR_DIST_REDIS__URL"
    )]
    Redis {
        url: String,
        source: crate::queue::QueueError,
    },
    #[error("{0}")]
    Db(#[from] db::DbError),
    #[error("{0}")]
    Http(#[from] HttpError),
}

/// `atr-dist serve`: the API, dashboard and metrics without a worker pool, until `signal`.
pub async fn serve_only(
    config: &Config,
    signal: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // Bind first: a port in use fails the start before anything else is touched.
    let listener = bind(config.http.listen_addr()?).await?;
    let redis_url = config.redis_url();
    let queue = Queue::connect(
        redis_url.expose(),
        &crate::secret::exposed(&config.redis_cluster_nodes()),
        &config.redis.queue,
    )
    .await
    .map_err(|source| ServeError::Redis {
        url: db::redacted(redis_url.expose()),
        source,
    })?;
    let conn = db::connect(&config.database_url(), config.database.max_connections).await?;
    // Same rule as `run`: a dashboard over an unmigrated database would only show errors.
    // Without auto_migrate it starts anyway, and /readyz names the pending migrations.
    if config.database.auto_migrate {
        db::migrate_up(&conn).await?;
    }
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        signal.await;
        tracing::info!("shutdown requested: closing the HTTP server");
        on_signal.cancel();
    });
    serve(listener, AppState::new(queue, conn, config, shutdown)).await?;
    Ok(())
}
