//! Configuration: a TOML file, then `ATR_DIST_*` environment variables over it.
//!
//! Nesting in variable names uses a double underscore: `ATR_DIST_WORKER__CONCURRENCY=4` sets
//! `[worker] concurrency`. Secrets (`*.token`, `*.password`) are accepted only from the
//! environment, or read from a file named by the matching `*_file` key; `load` refuses a
//! secret written into the TOML file. Every error names the key and says what is wrong.
//!
//! `deploy/atr-dist.example.toml` documents every key; a test loads it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use atr_dist_shared::Platform;
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::secret::Secret;

pub const ENV_PREFIX: &str = "ATR_DIST_";

/// The embedded default: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://./atr-dist.db";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config error: {0}")]
    Figment(#[from] Box<figment::Error>),
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub worker: WorkerConfig,
    pub retry: RetryConfig,
    pub retention: RetentionConfig,
    pub log: LogConfig,
    pub revisions: RevisionsConfig,
    pub platforms: PlatformsConfig,
    pub http: HttpConfig,
    pub tls: TlsConfig,
}

/// HTTPS calls to platforms and ATR (`crate::tls`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// A PEM file of certificate authorities to trust besides the built-in roots and the
    /// system's store (or `SSL_CERT_FILE` / `SSL_CERT_DIR`): e.g. a company proxy's.
    pub ca_file: Option<PathBuf>,
}

pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8440";

/// The operator surface (`worker/src/http/`): JSON API, dashboard, `/metrics`, health checks.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve it from `atr-dist run` too (`atr-dist serve` always serves it). Turn it off
    /// when several workers share a host, and run one `atr-dist serve` instead.
    pub enabled: bool,
    /// host:port to listen on.
    pub listen: String,
    /// Whether reads (the dashboard, `GET /api/v1/...`, `/events`) need no token. Unset:
    /// open when `listen` is a loopback address, closed otherwise, so that exposing the port
    /// never exposes job payloads by accident. Writes always need the admin token.
    pub open_reads: Option<bool>,
    /// Host names, besides loopback names (`localhost`) and IP addresses, that a request
    /// may be addressed to (`Host`) for a read without the token, and that a write's
    /// `Origin` may name: e.g. a reverse proxy's name in front of atr-dist.
    pub allowed_hosts: Vec<String>,
    /// The bearer token writes (retry, cancel, purge, pause, enqueue) must present.
    /// Environment (`ATR_DIST_HTTP__ADMIN_TOKEN`) or `admin_token_file` only.
    #[serde(skip_serializing)]
    pub admin_token: Option<Secret>,
    pub admin_token_file: Option<PathBuf>,
    /// Longest a client may take to send a request's headers, counted from when the server
    /// starts waiting for them; also how long an idle keep-alive connection stays open.
    pub header_read_timeout_secs: u64,
    /// A connection on which no byte moves either way for this long is closed (a stalled
    /// upload, a client that stopped reading). `/events` streams send a comment often
    /// enough to stay open.
    pub idle_timeout_secs: u64,
    /// Connections open at once. At the cap, the quietest idle connection makes room for a
    /// new one; the server also stays `fd_limit::RESERVED_FOR_WORKER` descriptors below the
    /// process's open-file limit, so the worker's own files always open.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            listen: DEFAULT_HTTP_LISTEN.to_owned(),
            open_reads: None,
            allowed_hosts: Vec::new(),
            admin_token: None,
            admin_token_file: None,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_connections: 512,
        }
    }
}

impl HttpConfig {
    /// The validated listen address (`Config::load` has checked it parses).
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_listen("http.listen", &self.listen)
    }

    /// Whether reads are open: the explicit setting, else open only on loopback.
    pub fn reads_open(&self) -> bool {
        match self.open_reads {
            Some(open) => open,
            None => self.listen_addr().is_ok_and(|a| a.ip().is_loopback()),
        }
    }
}

/// Shortest admin token accepted: a guessable token on an API that can purge jobs is worse
/// than none, and `openssl rand -hex 32` costs nothing.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// Where revisions are read from (see `source/`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RevisionsConfig {
    /// ATR's revision directories: `<root>/<project>/<version>/<revision>/`.
    pub root: PathBuf,
    /// ATR's per-revision file manifest, with `{project}`, `{version}`, `{revision}`.
    #[serde(serialize_with = "ser::opt_str")]
    pub atr_manifest_url: Option<String>,
    /// A file of a revision, with `{project}`, `{version}`, `{revision}`, `{path}`.
    #[serde(serialize_with = "ser::opt_str")]
    pub atr_file_url: Option<String>,
}

impl Default for RevisionsConfig {
    fn default() -> Self {
        RevisionsConfig {
            root: PathBuf::from("./revisions"),
            atr_manifest_url: None,
            atr_file_url: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://path` or `postgres://user@host/db`. Put no password here: use
    /// `ATR_DIST_DATABASE__PASSWORD` or `password_file`.
    #[serde(serialize_with = "ser::str")]
    pub url: String,
    #[serde(skip_serializing)]
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    pub max_connections: u32,
    /// Apply pending migrations when `atr-dist run` starts.
    pub auto_migrate: bool,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: DEFAULT_DATABASE_URL.to_owned(),
            password: None,
            password_file: None,
            max_connections: 10,
            auto_migrate: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    #[serde(serialize_with = "ser::str")]
    pub url: String,
    #[serde(skip_serializing)]
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    /// The queue name: every key lives under `atr-dist:{<queue>}:`.
    pub queue: String,
    /// Redis Cluster seed nodes (`redis://host:port`); when set, `url` is not used, and
    /// `password` applies to every node.
    #[serde(serialize_with = "ser::strs")]
    pub cluster_nodes: Vec<String>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: DEFAULT_REDIS_URL.to_owned(),
            password: None,
            password_file: None,
            queue: "default".to_owned(),
            cluster_nodes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Jobs run at once in this process, over all platforms.
    pub concurrency: usize,
    /// How long a job stays leased to a worker without a heartbeat before another takes it.
    pub lease_secs: u64,
    /// On SIGTERM: how long in-flight jobs get to finish before their leases are released.
    pub shutdown_timeout_secs: u64,
    /// Most jobs taken from Redis in one round trip; each fetch also takes no more than the
    /// pool has room for (twice `concurrency`, less the jobs it holds), so the default lets
    /// the batch follow the concurrency.
    pub fetch_batch: usize,
    /// Longest one attempt may run before it counts as a transient failure.
    pub job_timeout_secs: u64,
    /// Retries of platform requests one attempt may make, all requests together; past
    /// them the attempt ends transient and the job's persisted backoff takes over.
    pub http_retries: u32,
    /// Time one attempt may spend waiting between retries of platform requests, together.
    pub http_retry_wait_secs: u64,
    /// Where private copies of artifacts above `seal_memory_bytes` are kept while a job
    /// runs (unnamed files: nothing else can open them). Unset: the system's temporary
    /// directory.
    pub scratch_dir: Option<PathBuf>,
    /// Artifacts up to this size are sealed in memory, larger ones in `scratch_dir`.
    pub seal_memory_bytes: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: 8,
            lease_secs: 60,
            shutdown_timeout_secs: 30,
            fetch_batch: 256,
            job_timeout_secs: 3600,
            http_retries: 3,
            http_retry_wait_secs: 30,
            scratch_dir: None,
            seal_memory_bytes: crate::seal::DEFAULT_MEMORY_LIMIT,
        }
    }
}

impl WorkerConfig {
    pub fn retry_limits(&self) -> crate::platform::http::RetryLimits {
        crate::platform::http::RetryLimits {
            retries: self.http_retries,
            wait: Duration::from_secs(self.http_retry_wait_secs),
        }
    }

    pub fn sealer(&self) -> crate::seal::Sealer {
        crate::seal::Sealer {
            scratch: self.scratch_dir.clone().unwrap_or_else(std::env::temp_dir),
            memory_limit: self.seal_memory_bytes,
        }
    }
}

/// How long finished jobs stay in Redis (docs/wire-format.md, "Retention"): workers delete,
/// in small steps, the jobs of each finished state that are older than its age limit or
/// beyond its newest `max_jobs`, whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    pub done: KeepConfig,
    pub dead: KeepConfig,
    pub cancelled: KeepConfig,
}

/// One finished state's limits; 0 = no limit of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeepConfig {
    /// Days a job is kept after it entered the state.
    pub max_age_days: u64,
    /// The newest jobs of the state kept; older ones go.
    pub max_jobs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            done: KeepConfig {
                max_age_days: 7,
                max_jobs: 100_000,
            },
            dead: KeepConfig {
                max_age_days: 90,
                max_jobs: 10_000,
            },
            cancelled: KeepConfig {
                max_age_days: 90,
                max_jobs: 10_000,
            },
        }
    }
}

impl KeepConfig {
    pub fn max_age(&self) -> Option<Duration> {
        (self.max_age_days > 0).then(|| Duration::from_secs(self.max_age_days * 86_400))
    }

    pub fn max_jobs(&self) -> Option<u64> {
        (self.max_jobs > 0).then_some(self.max_jobs)
    }
}

/// Backoff between attempts: exponential with full jitter, capped. Per platform overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub base_ms: u64,
    pub cap_ms: u64,
    pub max_attempts: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            base_ms: 2_000,
            cap_ms: 10 * 60 * 1_000,
            max_attempts: 10,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info,atr_dist=debug`. `RUST_LOG` wins when set.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            filter: "info".to_owned(),
        }
    }
}

/// One section per platform; the names are the lower-case member names.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlatformsConfig {
    pub artifact_hub: PlatformConfig,
    pub docker_hub: PlatformConfig,
    pub maven: PlatformConfig,
    pub npm: PlatformConfig,
    pub npm_scoped: PlatformConfig,
    pub pypi: PlatformConfig,
    pub github: PlatformConfig,
    pub hex: PlatformConfig,
}

impl PlatformsConfig {
    pub fn get(&self, platform: Platform) -> &PlatformConfig {
        match platform {
            Platform::ArtifactHub => &self.artifact_hub,
            Platform::DockerHub => &self.docker_hub,
            Platform::Maven => &self.maven,
            Platform::Npm => &self.npm,
            Platform::NpmScoped => &self.npm_scoped,
            Platform::Pypi => &self.pypi,
            Platform::Github => &self.github,
            Platform::Hex => &self.hex,
        }
    }

    fn get_mut(&mut self, platform: Platform) -> &mut PlatformConfig {
        match platform {
            Platform::ArtifactHub => &mut self.artifact_hub,
            Platform::DockerHub => &mut self.docker_hub,
            Platform::Maven => &mut self.maven,
            Platform::Npm => &mut self.npm,
            Platform::NpmScoped => &mut self.npm_scoped,
            Platform::Pypi => &mut self.pypi,
            Platform::Github => &mut self.github,
            Platform::Hex => &mut self.hex,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlatformConfig {
    /// Production API base URL; the platform's public default when absent.
    #[serde(serialize_with = "ser::opt_url")]
    pub base_url: Option<Url>,
    /// Staging API base URL, where the platform has a separate one.
    #[serde(serialize_with = "ser::opt_url")]
    pub staging_base_url: Option<Url>,
    /// Where production is read back, when that is not `base_url` (PyPI uploads to
    /// upload.pypi.org and is read at pypi.org).
    #[serde(serialize_with = "ser::opt_url")]
    pub read_url: Option<Url>,
    /// Where staging is read back, when that is not `staging_base_url`.
    #[serde(serialize_with = "ser::opt_url")]
    pub staging_read_url: Option<Url>,
    /// Where files are uploaded, when that is another origin than `base_url`'s: GitHub's
    /// release assets (`https://uploads.github.com` for github.com). Requests go only to
    /// configured origins, so an upload URL the platform names elsewhere is refused.
    #[serde(serialize_with = "ser::opt_url")]
    pub upload_url: Option<Url>,
    pub username: Option<String>,
    #[serde(skip_serializing)]
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
    /// The staging place's own credential, where staging is another service with its own
    /// accounts (Test PyPI).
    #[serde(skip_serializing)]
    pub staging_token: Option<Secret>,
    pub staging_token_file: Option<PathBuf>,
    /// Jobs for this platform run at once in this process (at most `worker.concurrency`).
    pub concurrency: Option<usize>,
    /// The staging dist-tag or image tag when a job names none.
    pub staging_tag: Option<String>,
    pub retry: Option<RetryConfig>,
    /// How long a job may wait on this platform when it is not there yet (a rate limit's
    /// reset, a version being indexed, a release in progress), from the job's first wait;
    /// past it the job ends dead as `transient` (ATR's `BROKEN`). Default 21600 (6 hours).
    pub wait_deadline_secs: Option<u64>,
    /// Maven only: the ATR projects (project keys, e.g. `example`) whose distributions this
    /// worker may promote to Maven Central. Empty, the default, promotes none: a promote job
    /// then ends `disabled_by_policy` (not a failure), because ATR has decided not to release
    /// Maven artifacts itself. Stage (verifying the staging repository) is always allowed.
    pub promote_projects: Vec<String>,
    /// Maven only: how promotion reaches Maven Central, `portal` (the Central Publisher
    /// Portal: publish a validated deployment; the default) or `nexus2` (release the Nexus 2
    /// staging repository with `bulk/promote`). See the README's Maven section.
    pub promote_backend: Option<PromoteBackend>,
}

/// How the Maven adapter promotes (`[platforms.maven] promote_backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PromoteBackend {
    /// Publish a validated Central Publisher Portal deployment.
    Portal,
    /// Release the Nexus 2 staging repository (`bulk/promote`).
    Nexus2,
}

/// Where a secret's value may come from; checked against figment's record of each value's
/// source, so that a secret typed into the TOML file is refused rather than used.
const SECRET_KEYS: [&str; 3] = ["database.password", "redis.password", "http.admin_token"];

/// The config section of a platform: its member name in lower case (`npm_scoped`).
pub fn section_name(platform: Platform) -> String {
    platform.member_name().to_ascii_lowercase()
}

impl Config {
    /// Loads `path` (when given) under the `ATR_DIST_*` environment, then checks the result.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            // Read it ourselves first: figment treats a missing file as empty, but a config
            // file named on the command line and not there is an operator's mistake.
            std::fs::metadata(path).map_err(|source| ConfigError::Unreadable {
                path: path.to_owned(),
                source,
            })?;
            figment = figment.merge(Toml::file_exact(path));
        }
        // Two ATR_DIST_ variables are not configuration keys: ATR_DIST_CONFIG (a config file
        // named by the environment) and ATR_DIST_OTLP_ENDPOINT (where the `otel` build exports
        // its spans, read by `telemetry`). Every other one must name a key.
        figment = figment.merge(
            Env::prefixed(ENV_PREFIX)
                .split("__")
                .ignore(&["config", "otlp_endpoint"]),
        );
        Config::from_figment(&figment)
    }

    pub fn from_figment(figment: &Figment) -> Result<Config, ConfigError> {
        let secret_keys =
            SECRET_KEYS
                .iter()
                .map(|k| (*k).to_owned())
                .chain(Platform::ALL.iter().flat_map(|p| {
                    ["token", "staging_token"]
                        .map(|key| format!("platforms.{}.{key}", section_name(*p)))
                }));
        for key in secret_keys {
            if let Some(meta) = figment.find_metadata(&key)
                && let Some(figment::Source::File(file)) = &meta.source
            {
                let env = format!("{ENV_PREFIX}{}", key.to_uppercase().replace('.', "__"));
                return Err(invalid(
                    key.clone(),
                    format!(
                        "secrets are not read from config files ({}); set {env} or `{key}_file`",
                        file.display()
                    ),
                ));
            }
        }
        let mut config: Config = figment.extract().map_err(Box::new)?;
        config.resolve_secret_files()?;
        config.validate()?;
        config.register_secrets();
        Ok(config)
    }

    fn resolve_secret_files(&mut self) -> Result<(), ConfigError> {
        fn read(
            key: &str,
            file: &Option<PathBuf>,
            slot: &mut Option<Secret>,
        ) -> Result<(), ConfigError> {
            let Some(path) = file else { return Ok(()) };
            if slot.is_some() {
                return Err(invalid(
                    key,
                    "set both in the environment and as a file; choose one",
                ));
            }
            let secret = Secret::from_file(path).map_err(|e| {
                invalid(
                    format!("{key}_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            if secret.expose().is_empty() {
                return Err(invalid(
                    format!("{key}_file"),
                    format!("{} is empty", path.display()),
                ));
            }
            *slot = Some(secret);
            Ok(())
        }
        read(
            "database.password",
            &self.database.password_file,
            &mut self.database.password,
        )?;
        read(
            "redis.password",
            &self.redis.password_file,
            &mut self.redis.password,
        )?;
        read(
            "http.admin_token",
            &self.http.admin_token_file,
            &mut self.http.admin_token,
        )?;
        for platform in Platform::ALL {
            let p = self.platforms.get_mut(platform);
            let file = p.token_file.clone();
            read(
                &format!("platforms.{}.token", section_name(platform)),
                &file,
                &mut p.token,
            )?;
            let file = p.staging_token_file.clone();
            read(
                &format!("platforms.{}.staging_token", section_name(platform)),
                &file,
                &mut p.staging_token,
            )?;
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let db = Url::parse(&self.database.url)
            .map_err(|e| invalid("database.url", format!("not a URL: {e}")))?;
        match db.scheme() {
            "sqlite" | "postgres" | "postgresql" => {}
            other => {
                return Err(invalid(
                    "database.url",
                    format!("scheme {other:?} is not supported; use sqlite:// or postgres://"),
                ));
            }
        }
        if db.password().is_some() || has_password_param(&db) {
            return Err(invalid(
                "database.url",
                "contains a password; set ATR_DIST_DATABASE__PASSWORD or database.password_file instead",
            ));
        }
        let redis = Url::parse(&self.redis.url)
            .map_err(|e| invalid("redis.url", format!("not a URL: {e}")))?;
        if !matches!(redis.scheme(), "redis" | "rediss" | "redis+unix" | "unix") {
            return Err(invalid(
                "redis.url",
                "use redis://host:port or rediss://host:port",
            ));
        }
        if redis.password().is_some() || has_password_param(&redis) {
            return Err(invalid(
                "redis.url",
                "contains a password; set ATR_DIST_REDIS__PASSWORD or redis.password_file instead",
            ));
        }
        for (i, node) in self.redis.cluster_nodes.iter().enumerate() {
            let key = format!("redis.cluster_nodes[{i}]");
            let parsed =
                Url::parse(node).map_err(|e| invalid(key.clone(), format!("not a URL: {e}")))?;
            if parsed.password().is_some() || has_password_param(&parsed) {
                return Err(invalid(
                    key,
                    "contains a password; set ATR_DIST_REDIS__PASSWORD or redis.password_file instead (it applies to every node)",
                ));
            }
        }
        if self.redis.queue.is_empty()
            || !self
                .redis
                .queue
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(invalid("redis.queue", "use 1 or more of A-Z a-z 0-9 - _ ."));
        }
        if self.worker.concurrency == 0 {
            return Err(invalid("worker.concurrency", "must be at least 1"));
        }
        if self.worker.fetch_batch == 0 || self.worker.fetch_batch > 1000 {
            return Err(invalid("worker.fetch_batch", "must be 1 to 1000"));
        }
        for (key, url) in [
            (
                "revisions.atr_manifest_url",
                &self.revisions.atr_manifest_url,
            ),
            ("revisions.atr_file_url", &self.revisions.atr_file_url),
        ] {
            let Some(url) = url else { continue };
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(invalid(key, "must be an http(s) URL template"));
            }
            if userinfo(url).is_some() {
                return Err(invalid(
                    key,
                    "contains credentials (user:password@); atr-dist sends none to ATR's revision endpoints, and this URL is shown by `atr-dist config` and in error messages: remove them",
                ));
            }
        }
        if self.worker.lease_secs < 5 {
            return Err(invalid(
                "worker.lease_secs",
                "must be at least 5 (heartbeats renew it every third of it)",
            ));
        }
        validate_retry("retry", &self.retry)?;
        self.http.listen_addr()?;
        for (key, secs) in [
            (
                "http.header_read_timeout_secs",
                self.http.header_read_timeout_secs,
            ),
            ("http.idle_timeout_secs", self.http.idle_timeout_secs),
        ] {
            if secs == 0 {
                return Err(invalid(
                    key,
                    "must be at least 1 (a connection without it can be held open for ever)",
                ));
            }
        }
        for (i, host) in self.http.allowed_hosts.iter().enumerate() {
            let name = host.trim_end_matches('.');
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
            {
                return Err(invalid(
                    format!("http.allowed_hosts[{i}]"),
                    format!(
                        "{host:?} is not a host name; give the name alone, without scheme or port (e.g. \"atr-dist.example.org\")"
                    ),
                ));
            }
        }
        if self.http.max_connections == 0 {
            return Err(invalid("http.max_connections", "must be at least 1"));
        }
        if let Some(token) = &self.http.admin_token
            && token.expose().chars().count() < MIN_ADMIN_TOKEN_LEN
        {
            return Err(invalid(
                "http.admin_token",
                format!(
                    "must be at least {MIN_ADMIN_TOKEN_LEN} characters; generate one with `openssl rand -hex 32`"
                ),
            ));
        }
        for platform in Platform::ALL {
            let name = section_name(platform);
            let p = self.platforms.get(platform);
            if let Some(retry) = &p.retry {
                validate_retry(&format!("platforms.{name}.retry"), retry)?;
            }
            if let Some(tag) = &p.staging_tag
                && let Err(e) = atr_dist_shared::names::DistTag::new(tag)
            {
                return Err(invalid(
                    format!("platforms.{name}.staging_tag"),
                    e.to_string(),
                ));
            }
            if p.concurrency == Some(0) {
                return Err(invalid(
                    format!("platforms.{name}.concurrency"),
                    "must be at least 1",
                ));
            }
            if p.wait_deadline_secs == Some(0) {
                return Err(invalid(
                    format!("platforms.{name}.wait_deadline_secs"),
                    "must be at least 1 (a platform that must never be waited on has no waits to bound)",
                ));
            }
            // Promotion policy and backend exist for Maven only; anywhere else they would be
            // read by nobody, and an operator would believe a switch works that does not.
            if platform != Platform::Maven
                && (!p.promote_projects.is_empty() || p.promote_backend.is_some())
            {
                return Err(invalid(
                    format!("platforms.{name}"),
                    "promote_projects and promote_backend are read for [platforms.maven] only",
                ));
            }
            for project in &p.promote_projects {
                if let Err(e) = atr_dist_shared::names::ProjectKey::new(project) {
                    return Err(invalid(
                        format!("platforms.{name}.promote_projects"),
                        e.to_string(),
                    ));
                }
            }
            for (key, url) in [
                ("base_url", &p.base_url),
                ("staging_base_url", &p.staging_base_url),
                ("read_url", &p.read_url),
                ("staging_read_url", &p.staging_read_url),
                ("upload_url", &p.upload_url),
            ] {
                let Some(url) = url else { continue };
                if !matches!(url.scheme(), "https" | "http") {
                    return Err(invalid(
                        format!("platforms.{name}.{key}"),
                        "must be an http(s) URL",
                    ));
                }
                if !url.username().is_empty() || url.password().is_some() {
                    let env = format!("{ENV_PREFIX}PLATFORMS__{}__TOKEN", name.to_uppercase());
                    return Err(invalid(
                        format!("platforms.{name}.{key}"),
                        format!(
                            "contains credentials (user:password@); set the token with {env} or platforms.{name}.token_file, and a user name with platforms.{name}.username, instead"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Hands every secret to `secret::scrub`, which takes them out of what platforms answer
    /// before it is logged or recorded. HTTP Basic sends `<user>:<secret>` in base64: the
    /// user is the section's `username`, or `__token__` (PyPI's default).
    fn register_secrets(&self) {
        for secret in [
            &self.database.password,
            &self.redis.password,
            &self.http.admin_token,
        ]
        .into_iter()
        .flatten()
        {
            crate::secret::register(secret, &[]);
        }
        for platform in Platform::ALL {
            let p = self.platforms.get(platform);
            let mut users = vec!["__token__"];
            users.extend(p.username.as_deref());
            for secret in [&p.token, &p.staging_token].into_iter().flatten() {
                crate::secret::register(secret, &users);
            }
        }
    }

    /// The database URL with the password (from the environment or a file) filled in.
    pub fn database_url(&self) -> Secret {
        with_password(&self.database.url, self.database.password.as_ref())
    }

    pub fn redis_url(&self) -> Secret {
        with_password(&self.redis.url, self.redis.password.as_ref())
    }

    /// The Redis Cluster seed nodes, each with the password (from the environment or a
    /// file) filled in.
    pub fn redis_cluster_nodes(&self) -> Vec<Secret> {
        self.redis
            .cluster_nodes
            .iter()
            .map(|node| with_password(node, self.redis.password.as_ref()))
            .collect()
    }

    pub fn retry_for(&self, platform: Platform) -> RetryConfig {
        self.platforms.get(platform).retry.unwrap_or(self.retry)
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.worker.lease_secs)
    }
}

fn validate_retry(key: &str, r: &RetryConfig) -> Result<(), ConfigError> {
    if r.max_attempts == 0 {
        return Err(invalid(format!("{key}.max_attempts"), "must be at least 1"));
    }
    if r.base_ms == 0 || r.cap_ms < r.base_ms {
        return Err(invalid(key, "needs 0 < base_ms <= cap_ms"));
    }
    Ok(())
}

fn with_password(url: &str, password: Option<&Secret>) -> Secret {
    let Some(password) = password else {
        return Secret::new(url);
    };
    let Ok(mut parsed) = Url::parse(url) else {
        return Secret::new(url);
    };
    if parsed.set_password(Some(password.expose())).is_err() {
        return Secret::new(url);
    }
    Secret::new(parsed.to_string())
}

/// Whether a database or Redis URL carries a password as a query parameter, which both
/// drivers accept (`?password=`, `?pass=`).
fn has_password_param(url: &Url) -> bool {
    url.query_pairs()
        .any(|(name, _)| name.eq_ignore_ascii_case("password") || name.eq_ignore_ascii_case("pass"))
}

/// The authority of a URL or URL template, and where it ends, read from the text itself so
/// that a template's `{placeholders}` do not get in the way.
fn authority(url: &str) -> Option<(usize, &str)> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some((start, &rest[..end]))
}

/// The user information (`user:password`) of a URL or URL template, if it has any.
fn userinfo(url: &str) -> Option<&str> {
    let (_, authority) = authority(url)?;
    authority.rfind('@').map(|at| &authority[..at])
}

/// `url` for display, its secrets hidden: all user information of an http(s) URL (a token is
/// often written as the user name), the password of any other (`postgres://atr:***@db/atr`).
/// `load` refuses credentials in every URL setting; this is for values that got past it, and
/// for URLs that do not come from the configuration.
pub fn redacted_url(url: &str) -> String {
    let Some((start, authority)) = authority(url) else {
        return url.to_owned();
    };
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let info = &authority[..at];
    let scheme = url[..start - 3].to_ascii_lowercase();
    let shown = match info.split_once(':') {
        _ if scheme == "http" || scheme == "https" => "***".to_owned(),
        Some((user, _)) => format!("{user}:***"),
        None => info.to_owned(),
    };
    format!("{}{shown}{}", &url[..start], &url[start + at..])
}

/// Serialisers that show URLs redacted (`atr-dist config`).
mod ser {
    use serde::Serializer;
    use url::Url;

    use super::redacted_url;

    pub fn str<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&redacted_url(url))
    }

    pub fn strs<S: Serializer>(urls: &[String], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(urls.iter().map(|u| redacted_url(u)))
    }

    pub fn opt_str<S: Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        match url {
            Some(url) => s.serialize_some(&redacted_url(url)),
            None => s.serialize_none(),
        }
    }

    pub fn opt_url<S: Serializer>(url: &Option<Url>, s: S) -> Result<S::Ok, S::Error> {
        match url {
            Some(url) => s.serialize_some(&redacted_url(url.as_str())),
            None => s.serialize_none(),
        }
    }
}

/// A listen address, for the sections that serve HTTP.
pub fn parse_listen(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|e| invalid(key, format!("{value:?} is not host:port: {e}")))
}

#[cfg(test)]
// figment::Jail's closures return figment's own (large) error type; that is its API, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    fn load_in(jail: &Jail, toml: &str) -> Result<Config, ConfigError> {
        jail.create_file("atr-dist.toml", toml).unwrap();
        Config::load(Some(Path::new("atr-dist.toml")))
    }

    #[test]
    fn defaults_are_the_embedded_ones() {
        Jail::expect_with(|_| {
            let c = Config::load(None).unwrap();
            assert_eq!(c.database.url, DEFAULT_DATABASE_URL);
            assert_eq!(c.redis.url, DEFAULT_REDIS_URL);
            assert_eq!(c.worker.concurrency, 8);
            Ok(())
        });
    }

    #[test]
    fn maven_promotion_is_configured_in_its_own_section_only() {
        Jail::expect_with(|jail| {
            let c = load_in(
                jail,
                "[platforms.maven]\npromote_projects = [\"example\"]\npromote_backend = \"nexus2\"\n",
            )
            .unwrap();
            assert_eq!(c.platforms.maven.promote_projects, ["example"]);
            assert_eq!(
                c.platforms.maven.promote_backend,
                Some(PromoteBackend::Nexus2)
            );
            let err = load_in(jail, "[platforms.npm]\npromote_projects = [\"example\"]\n")
                .unwrap_err()
                .to_string();
            assert!(err.contains("read for [platforms.maven] only"), "{err}");
            let err = load_in(
                jail,
                "[platforms.maven]\npromote_projects = [\"Not A Key\"]\n",
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("platforms.maven.promote_projects"), "{err}");
            let err = load_in(jail, "[platforms.maven]\npromote_backend = \"nexus3\"\n")
                .unwrap_err()
                .to_string();
            assert!(err.contains("nexus3"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn environment_overrides_the_file() {
        Jail::expect_with(|jail| {
            jail.set_env("ATR_DIST_WORKER__CONCURRENCY", "3");
            jail.set_env("ATR_DIST_PLATFORMS__NPM__TOKEN", "123456");
            jail.set_env("ATR_DIST_CONFIG", "ignored.toml");
            jail.set_env("ATR_DIST_OTLP_ENDPOINT", "http://127.0.0.1:4318/v1/traces");
            let c = load_in(jail, "[worker]\nconcurrency = 5\nlease_secs = 20\n").unwrap();
            assert_eq!(c.worker.concurrency, 3);
            assert_eq!(c.worker.lease_secs, 20);
            assert_eq!(c.platforms.npm.token.as_ref().unwrap().expose(), "123456");
            Ok(())
        });
    }

    #[test]
    fn secrets_in_the_file_are_refused() {
        Jail::expect_with(|jail| {
            let err = load_in(jail, "[platforms.npm]\ntoken = \"npm_secret\"\n")
                .unwrap_err()
                .to_string();
            assert!(err.contains("config key `platforms.npm.token`"), "{err}");
            assert!(err.contains("ATR_DIST_PLATFORMS__NPM__TOKEN"), "{err}");
            assert!(
                !err.contains("npm_secret"),
                "the message leaks the secret: {err}"
            );
            let err = load_in(jail, "[platforms.pypi]\nstaging_token = \"pypi-secret\"\n")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("config key `platforms.pypi.staging_token`")
                    && err.contains("ATR_DIST_PLATFORMS__PYPI__STAGING_TOKEN")
                    && !err.contains("pypi-secret"),
                "{err}"
            );
            jail.create_file("staging-token", "pypi-from-file")?;
            let c = load_in(
                jail,
                "[platforms.pypi]\nstaging_token_file = \"staging-token\"\n",
            )
            .unwrap();
            assert_eq!(
                c.platforms.pypi.staging_token.as_ref().unwrap().expose(),
                "pypi-from-file"
            );
            let err = load_in(jail, "[database]\nurl = \"postgres://u:pw@db/x\"\n")
                .unwrap_err()
                .to_string();
            assert!(err.contains("`database.url`: contains a password"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn credentials_in_any_url_setting_are_refused_with_the_secret_setting_to_use() {
        Jail::expect_with(|jail| {
            let cases = [
                (
                    "[platforms.npm]\nbase_url = \"https://ci:hunter2@registry.example/\"\n",
                    "config key `platforms.npm.base_url`: contains credentials",
                    "ATR_DIST_PLATFORMS__NPM__TOKEN or platforms.npm.token_file",
                ),
                (
                    // A token written as the user name is a credential too.
                    "[platforms.docker_hub]\nstaging_base_url = \"https://hunter2@staging.example\"\n",
                    "config key `platforms.docker_hub.staging_base_url`: contains credentials",
                    "ATR_DIST_PLATFORMS__DOCKER_HUB__TOKEN",
                ),
                (
                    "[revisions]\natr_manifest_url = \"https://u:hunter2@atr.example/{project}/{version}/{revision}\"\n",
                    "config key `revisions.atr_manifest_url`: contains credentials",
                    "remove them",
                ),
                (
                    "[revisions]\natr_file_url = \"http://hunter2@atr.example/{path}\"\n",
                    "config key `revisions.atr_file_url`: contains credentials",
                    "remove them",
                ),
                (
                    "[redis]\ncluster_nodes = [\"redis://127.0.0.1:7000\", \"redis://:hunter2@127.0.0.1:7001\"]\n",
                    "config key `redis.cluster_nodes[1]`: contains a password",
                    "ATR_DIST_REDIS__PASSWORD or redis.password_file",
                ),
                (
                    "[redis]\nurl = \"redis://127.0.0.1:6379/?password=hunter2\"\n",
                    "config key `redis.url`: contains a password",
                    "ATR_DIST_REDIS__PASSWORD",
                ),
                (
                    "[database]\nurl = \"postgres://atr@db/atr?password=hunter2\"\n",
                    "config key `database.url`: contains a password",
                    "ATR_DIST_DATABASE__PASSWORD",
                ),
            ];
            for (toml, expected, instead) in cases {
                let err = load_in(jail, toml).unwrap_err().to_string();
                assert!(err.contains(expected), "{toml:?}: {err}");
                assert!(err.contains(instead), "{toml:?}: {err}");
                assert!(!err.contains("hunter2"), "the message leaks it: {err}");
            }
            // The same from the environment.
            jail.set_env(
                "ATR_DIST_PLATFORMS__PYPI__BASE_URL",
                "https://__token__:hunter2@upload.example/",
            );
            let err = load_in(jail, "").unwrap_err().to_string();
            assert!(
                err.contains("`platforms.pypi.base_url`: contains credentials"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn urls_are_shown_without_their_secrets() {
        assert_eq!(
            redacted_url("https://ci:hunter2@registry.example/x"),
            "https://***@registry.example/x"
        );
        assert_eq!(
            redacted_url("https://hunter2@atr.example/{project}/a@b"),
            "https://***@atr.example/{project}/a@b"
        );
        assert_eq!(
            redacted_url("postgres://atr:hunter2@db/atr"),
            "postgres://atr:***@db/atr"
        );
        assert_eq!(
            redacted_url("postgres://atr@db/atr"),
            "postgres://atr@db/atr"
        );
        assert_eq!(
            redacted_url("sqlite://./atr-dist.db"),
            "sqlite://./atr-dist.db"
        );
        // Belt and braces: values that never went through `load` print redacted too.
        let mut c = Config::default();
        c.platforms.npm.base_url = Some(Url::parse("https://ci:hunter2@registry.example").unwrap());
        c.platforms.npm.staging_base_url = Some(Url::parse("https://hunter2@s.example").unwrap());
        c.redis.cluster_nodes = vec!["redis://:hunter2@127.0.0.1:7000".to_owned()];
        c.redis.url = "redis://:hunter2@127.0.0.1:6379".to_owned();
        c.database.url = "postgres://atr:hunter2@db/atr".to_owned();
        c.revisions.atr_file_url = Some("https://u:hunter2@atr.example/{path}".to_owned());
        let shown = toml::to_string_pretty(&c).unwrap();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("https://***@registry.example/"), "{shown}");
    }

    #[test]
    fn the_redis_password_applies_to_every_cluster_node() {
        Jail::expect_with(|jail| {
            jail.set_env("ATR_DIST_REDIS__PASSWORD", "s3cret");
            let c = load_in(
                jail,
                "[redis]\ncluster_nodes = [\"redis://127.0.0.1:7000\", \"redis://127.0.0.1:7001\"]\n",
            )
            .unwrap();
            let nodes: Vec<String> = c
                .redis_cluster_nodes()
                .iter()
                .map(|n| n.expose().to_owned())
                .collect();
            assert_eq!(
                nodes,
                [
                    "redis://:s3cret@127.0.0.1:7000",
                    "redis://:s3cret@127.0.0.1:7001"
                ]
            );
            Ok(())
        });
    }

    #[test]
    fn secret_files_are_read() {
        Jail::expect_with(|jail| {
            jail.create_file("db-password", "s3cret\n")?;
            let c = load_in(jail, "[database]\nurl = \"postgres://atr@127.0.0.1/atr\"\npassword_file = \"db-password\"\n").unwrap();
            assert_eq!(
                c.database_url().expose(),
                "postgres://atr:s3cret@127.0.0.1/atr"
            );
            let err = load_in(jail, "[platforms.hex]\ntoken_file = \"missing\"\n")
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("config key `platforms.hex.token_file`: cannot read missing"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_their_key() {
        Jail::expect_with(|jail| {
            let cases = [
                (
                    "[worker]\nconcurrency = 0\n",
                    "config key `worker.concurrency`: must be at least 1",
                ),
                (
                    "[worker]\nconcurency = 2\n",
                    "unknown field: found `concurency`",
                ),
                ("[worker]\nconcurrency = \"many\"\n", "worker.concurrency"),
                (
                    "[database]\nurl = \"mysql://x/y\"\n",
                    "scheme \"mysql\" is not supported",
                ),
                ("[platforms.crates]\n", "unknown field: found `crates`"),
                (
                    "[platforms.npm.retry]\nmax_attempts = 0\n",
                    "platforms.npm.retry.max_attempts",
                ),
                (
                    "[platforms.npm]\nbase_url = \"ftp://x\"\n",
                    "platforms.npm.base_url",
                ),
                ("[redis]\nqueue = \"a b\"\n", "redis.queue"),
                (
                    "[http]\nheader_read_timeout_secs = 0\n",
                    "config key `http.header_read_timeout_secs`: must be at least 1",
                ),
                (
                    "[http]\nidle_timeout_secs = 0\n",
                    "config key `http.idle_timeout_secs`: must be at least 1",
                ),
                (
                    "[http]\nmax_connections = 0\n",
                    "config key `http.max_connections`: must be at least 1",
                ),
                (
                    "[http]\nallowed_hosts = [\"ok.example\", \"https://x.example:8440\"]\n",
                    "config key `http.allowed_hosts[1]`: \"https://x.example:8440\" is not a host name",
                ),
            ];
            for (toml, expected) in cases {
                let err = load_in(jail, toml).unwrap_err().to_string();
                assert!(
                    err.contains(expected),
                    "{toml:?}: expected {expected:?} in {err:?}"
                );
            }
            Ok(())
        });
    }

    #[test]
    fn http_reads_default_open_on_loopback_only_and_the_token_is_a_secret() {
        Jail::expect_with(|jail| {
            let c = load_in(jail, "").unwrap();
            assert_eq!(c.http.listen, DEFAULT_HTTP_LISTEN);
            assert!(c.http.reads_open() && c.http.admin_token.is_none());
            let c = load_in(jail, "[http]\nlisten = \"0.0.0.0:8440\"\n").unwrap();
            assert!(!c.http.reads_open(), "reads close when the port is exposed");
            let c = load_in(
                jail,
                "[http]\nlisten = \"0.0.0.0:8440\"\nopen_reads = true\n",
            )
            .unwrap();
            assert!(c.http.reads_open());
            let err = load_in(jail, "[http]\nadmin_token = \"0123456789abcdef\"\n")
                .unwrap_err()
                .to_string();
            assert!(err.contains("ATR_DIST_HTTP__ADMIN_TOKEN"), "{err}");
            jail.set_env("ATR_DIST_HTTP__ADMIN_TOKEN", "short");
            let err = load_in(jail, "").unwrap_err().to_string();
            assert!(
                err.contains("`http.admin_token`: must be at least 16"),
                "{err}"
            );
            jail.set_env("ATR_DIST_HTTP__ADMIN_TOKEN", "0123456789abcdef");
            let c = load_in(jail, "").unwrap();
            assert_eq!(c.http.admin_token.unwrap().expose(), "0123456789abcdef");
            let err = load_in(jail, "[http]\nlisten = \"localhost\"\n")
                .unwrap_err()
                .to_string();
            assert!(err.contains("`http.listen`"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/atr-dist.toml"))).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read config file /nonexistent/atr-dist.toml")
        );
    }

    #[test]
    fn example_config_loads() {
        // The checkout's path at run time, not the build's (see shared/tests/schema.rs).
        let example = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
            .join("../deploy/atr-dist.example.toml");
        Jail::expect_with(|_| {
            let stated = Config::load(Some(&example)).unwrap().worker;
            // The values it gives for the sealed copies and the retries inside an attempt
            // are the defaults, as its comments say.
            let default = Config::load(None).unwrap().worker;
            let limits =
                |w: &WorkerConfig| (w.seal_memory_bytes, w.http_retries, w.http_retry_wait_secs);
            assert_eq!(limits(&stated), limits(&default));
            Ok(())
        });
    }
}
