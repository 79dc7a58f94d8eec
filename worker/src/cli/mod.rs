//! The `atr-dist` command line. Exit codes (`EXIT_CODES`): 0 success; 1 the operation failed
//! (e.g. Redis or the database unreachable); 2 bad usage, input or configuration (clap's own
//! usage errors too); 3 the job asked for does not exist; 4 a retry or cancel not allowed in a
//! job's state; 5 a retry or cancel with nothing to do.

use std::path::PathBuf;
use std::process::ExitCode;

/// `println!` for command output: a reader that stops early (`atr-dist jobs list | head`)
/// ends the command quietly instead of panicking on the broken pipe. Defined before the
/// submodules so they can use it.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for command output; see `outln!`.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::write_out(format_args!($($arg)*))
    };
}

use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::db;
use crate::queue::Queue;

mod enqueue;
mod jobs;
pub mod output;

/// The exit codes, as `--help` lists them (and README.md, "Exit codes").
pub const EXIT_CODES: &str = "Exit codes:
  0  success (retry, cancel: every given job was changed)
  1  the operation failed (Redis or the database unreachable, a worker error); for
     `migrate --status`, migrations are pending
  2  bad usage, input or configuration (the message names the flag, field or config
     key); a short job id that more than one job's id starts or ends with
  3  the job asked for does not exist (retry, cancel: some given job)
  4  retry, cancel: some given job is in a state that does not allow it (a done job
     retried, a done or dead one cancelled)
  5  retry, cancel: nothing to do for some given job (already queued or running, already
     cancelled), the others were changed; nothing was written for it
When the jobs of one retry or cancel fare differently, 4 goes before 3, and 3 before 5.";

/// Some of the given jobs are in a state that does not allow the action (retry, cancel).
pub const EXIT_REFUSED: u8 = 4;
/// The job asked for does not exist.
pub const EXIT_NOT_FOUND: u8 = 3;
/// Nothing to do for some of the given jobs (retry, cancel); the others were changed.
pub const EXIT_NOTHING_TO_DO: u8 = 5;

#[derive(Debug, Parser)]
#[command(
    name = "atr-dist",
    version,
    about = "Puts voted Apache releases onto third-party platforms, safely",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// TOML config file (see deploy/atr-dist.example.toml); ATR_DIST_* variables override it.
    #[arg(long, global = true, env = "ATR_DIST_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker pool until SIGTERM or SIGINT (embedded defaults: ./atr-dist.db and a
    /// local Redis, started privately when none is running).
    Run,
    /// Serve the dashboard, the HTTP API and /metrics without running jobs (see [http]).
    Serve,
    /// Apply (or revert) the results-database migrations.
    Migrate(MigrateArgs),
    /// Check the configuration and print it, secrets left out.
    Config,
    /// Print the JSON Schema of the job envelope (docs/job-envelope.schema.json).
    Schema,
    /// Put stage and promote jobs on the queue.
    #[command(subcommand)]
    Enqueue(enqueue::EnqueueCommand),
    /// List, show, retry, cancel and purge jobs.
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Queue statistics; pause and resume; wire-format migration; the shard count.
    #[command(subcommand)]
    Queue(jobs::QueueCommand),
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Database URL (sqlite://path or postgres://user@host/db); overrides the config.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Revert this many migrations instead of applying.
    #[arg(long, value_name = "N", conflicts_with = "status")]
    pub down: Option<u32>,
    /// Only list the migrations not yet applied; exit 1 when there are any.
    #[arg(long)]
    pub status: bool,
}

/// Failure of a subcommand, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(#[from] anyhow::Error),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Config(_) | CliError::Usage(_) => ExitCode::from(2),
            CliError::Failed(_) => ExitCode::from(1),
        }
    }
}

async fn connect_queue(config: &Config) -> Result<Queue, CliError> {
    let url = config.redis_url();
    let nodes = crate::secret::exposed(&config.redis_cluster_nodes());
    Queue::connect(url.expose(), &nodes, &config.redis.queue)
        .await
        .map_err(|e| {
            CliError::Failed(anyhow::anyhow!(
                "cannot reach Redis at {} ({e}); start one with `redis-server --daemonize yes --bind 127.0.0.1` or set ATR_DIST_REDIS__URL",
                db::redacted(url.expose())
            ))
        })
}

pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let mut config = Config::load(cli.config.as_deref())?;
    crate::telemetry::init(&config.log);
    if matches!(cli.command, Command::Run | Command::Serve) {
        // Every metric series from the first scrape on.
        crate::metrics::init();
    }
    let config_for_adapters = config.clone();
    match cli.command {
        Command::Run => {
            raise_file_limit();
            // Before any client is built: platform adapters and sources trust what it loads.
            crate::tls::init(&config)?;
            let adapters = crate::platform::from_config(&config_for_adapters)?;
            for e in crate::platform::enablement(&config_for_adapters) {
                if e.enabled {
                    tracing::info!(platform = %e.platform, reason = %e.reason, "platform enabled");
                }
            }
            if adapters.platforms().is_empty() {
                tracing::warn!(
                    "no platform is configured, so every job will be refused; `atr-dist config` says what to set"
                );
            }
            crate::run::run(config, adapters)
                .await
                .map_err(|e| CliError::Failed(anyhow::Error::from(e)))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve => {
            raise_file_limit();
            crate::http::serve_only(&config, crate::run::shutdown_signal())
                .await
                .map_err(|e| CliError::Failed(anyhow::Error::from(e)))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate(args) => {
            if let Some(url) = &args.database_url {
                config.database.url = url.clone();
            }
            migrate(&config, &args).await
        }
        Command::Config => {
            // Checks tls.ca_file as `run` would.
            crate::tls::init(&config)?;
            // Building the adapters checks what only they check (an OCI username without
            // a token, a base_url with a path).
            crate::platform::from_config(&config)?;
            let text = toml::to_string_pretty(&config).map_err(anyhow::Error::from)?;
            outln!("{text}");
            outln!("# Platforms `atr-dist run` publishes to, and why:");
            for e in crate::platform::enablement(&config) {
                outln!(
                    "#   {:<12} {}: {}",
                    e.platform.to_string(),
                    if e.enabled { "enabled" } else { "disabled" },
                    e.reason
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            out!("{}", atr_dist_shared::job::envelope_schema());
            Ok(ExitCode::SUCCESS)
        }
        Command::Enqueue(command) => {
            enqueue::enqueue(&connect_queue(&config).await?, &config, command).await
        }
        Command::Jobs(command) => {
            jobs::jobs(&connect_queue(&config).await?, &config, command).await
        }
        Command::Queue(command) => jobs::queue_cmd(&connect_queue(&config).await?, command).await,
    }
}

/// `run` and `serve` hold a connection per HTTP client besides the worker's own files: the
/// soft open-file limit (often 1024) is raised to the hard one, which the HTTP server's
/// connection cap then stays below (`crate::fd_limit`).
fn raise_file_limit() {
    match crate::fd_limit::raise_to_hard() {
        Ok(limit) => tracing::debug!(soft = ?limit.soft, hard = ?limit.hard, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "keeping the open-file limit in force"),
    }
}

async fn migrate(config: &Config, args: &MigrateArgs) -> Result<ExitCode, CliError> {
    let url = config.database_url();
    let conn = db::connect(&url, 2).await.map_err(anyhow::Error::from)?;
    let shown = db::redacted(url.expose());
    if args.status {
        let pending = db::pending_migrations(&conn)
            .await
            .map_err(anyhow::Error::from)?;
        if pending.is_empty() {
            outln!("{shown}: schema is current");
            return Ok(ExitCode::SUCCESS);
        }
        outln!(
            "{shown}: {} migration(s) pending: {}",
            pending.len(),
            pending.join(", ")
        );
        return Ok(ExitCode::from(1));
    }
    if let Some(steps) = args.down {
        db::migrate_down(&conn, steps)
            .await
            .map_err(anyhow::Error::from)?;
        outln!("{shown}: reverted {steps} migration(s)");
        return Ok(ExitCode::SUCCESS);
    }
    let applied = db::migrate_up(&conn).await.map_err(anyhow::Error::from)?;
    outln!("{shown}: applied {applied} migration(s); schema is current");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every subcommand, flag and argument, as `atr-dist <path> --<flag>`, that has no help.
    fn without_help(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                out.push(format!("{path} {id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            let path = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                out.push(path.clone());
            }
            without_help(sub, &path, out);
        }
    }

    #[test]
    fn every_command_flag_and_argument_has_help() {
        let mut missing = Vec::new();
        without_help(&Cli::command(), "atr-dist", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }
}
