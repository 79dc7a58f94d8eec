//! `atr-dist jobs …` and `atr-dist queue …`: the operator's commands over the queue.

use std::process::ExitCode;
use std::time::Duration;

use atr_dist_shared::entities::job_run;
use atr_dist_shared::{AttemptOutcome, JobState};
use clap::{Args, Subcommand};

use super::output::{ago, attempt_label, json, table, truncate};
use super::{CliError, EXIT_NOT_FOUND, EXIT_NOTHING_TO_DO, EXIT_REFUSED};
use crate::http::types::{AttemptBody, JobDetailBody};
use crate::queue::{
    AdminAction, AdminReply, IdLookup, JobFilter, PageLimit, Queue, ambiguous_id, short_id,
};

#[derive(Debug, Args, Clone, Default)]
pub struct FilterArgs {
    /// scheduled, queued, running, retrying, done, dead or cancelled.
    #[arg(long)]
    pub state: Option<JobState>,
    /// Platform member name, e.g. NPM or DOCKER_HUB.
    #[arg(long)]
    pub platform: Option<String>,
    /// Release key, e.g. example-1.0.0.
    #[arg(long)]
    pub release: Option<String>,
    /// stage or promote.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only jobs enqueued at least this long ago (e.g. 30m, 2h, 7d).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub older_than: Option<Duration>,
    /// Only jobs enqueued at most this long ago.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub newer_than: Option<Duration>,
}

impl FilterArgs {
    pub fn to_filter(&self) -> JobFilter {
        JobFilter {
            state: self.state,
            platform: self.platform.clone(),
            release: self.release.clone(),
            kind: self.kind.clone(),
            older_than: self.older_than,
            newer_than: self.newer_than,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first for finished states.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Jobs per page, from 1 to 1000 (the API's `limit` takes the same).
        #[arg(long, default_value = "50", value_parser = PageLimit::parse)]
        limit: PageLimit,
        /// Continue from a previous page.
        #[arg(long)]
        cursor: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one job: payload, attempts, errors and timeline.
    Show {
        /// The job's id: in full, as `enqueue` prints it, or any part of it (4 characters or
        /// more) that it starts or ends with, such as the short id `jobs list` shows.
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Queue dead (or cancelled) jobs again: the given ids, or with --all-dead every dead job
    /// matching the filters.
    Retry {
        /// Ids of dead or cancelled jobs (in full, or short, as for `show`).
        ids: Vec<String>,
        /// Every dead job matching the filters below, instead of ids.
        #[arg(long, conflicts_with = "ids")]
        all_dead: bool,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Cancel jobs: waiting ones at once, running ones as soon as their worker hears.
    Cancel {
        /// Ids of the jobs to cancel (in full, or short, as for `show`).
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Delete finished jobs older than an age.
    Purge {
        /// done, dead or cancelled.
        #[arg(long, default_value = "done")]
        state: JobState,
        /// Only jobs that finished at least this long ago (e.g. 7d).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Counts per state, oldest queued age, throughput over the last hour.
    Stats {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stop handing out jobs (running ones finish).
    Pause,
    /// Hand out jobs again.
    Resume,
    /// Move a queue written in wire format 1 to 6 to format 7 (docs/wire-format.md, "Versions").
    /// Stop every worker and producer first; running it again changes nothing.
    Migrate,
    /// Show the queue's shard count, or set it (docs/wire-format.md, "Shards"): a sharded
    /// queue spreads over several Redis Cluster masters. Lowering it is refused while the
    /// shards to be dropped hold jobs.
    Shards {
        /// The new count, from 1 to 64; without it, the count is shown.
        #[arg(value_parser = crate::queue::ShardCount::parse)]
        count: Option<crate::queue::ShardCount>,
    },
}

pub async fn jobs(
    queue: &Queue,
    config: &crate::config::Config,
    command: JobsCommand,
) -> Result<ExitCode, CliError> {
    match command {
        JobsCommand::List {
            filter,
            limit,
            cursor,
            json: as_json,
        } => {
            let page = queue
                .list(&filter.to_filter(), cursor.as_deref(), limit)
                .await
                .map_err(anyhow::Error::from)?;
            if as_json {
                outln!("{}", json(&page));
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = page
                .jobs
                .iter()
                .map(|j| {
                    vec![
                        short_id(&j.id).to_owned(),
                        j.state.to_string(),
                        j.kind.clone(),
                        j.platform.clone(),
                        j.release.clone(),
                        format!("{}/{}", j.attempt, j.max_attempts),
                        ago(j.enqueued_at),
                        truncate(j.last_error.as_deref().unwrap_or(""), 60),
                    ]
                })
                .collect();
            out!(
                "{}",
                table(
                    &[
                        "ID",
                        "STATE",
                        "KIND",
                        "PLATFORM",
                        "RELEASE",
                        "ATTEMPT",
                        "ENQUEUED",
                        "LAST ERROR"
                    ],
                    &rows
                )
            );
            if let Some(next) = page.next_cursor {
                outln!("more: --cursor {next}");
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Show { id, json: as_json } => {
            let Some(id) = resolve(queue, &id).await? else {
                eprintln!("atr-dist: no job {id} in queue {}", queue.name());
                return Ok(ExitCode::from(EXIT_NOT_FOUND));
            };
            let Some(detail) = queue.show(&id).await.map_err(anyhow::Error::from)? else {
                eprintln!("atr-dist: no job {id} in queue {}", queue.name());
                return Ok(ExitCode::from(EXIT_NOT_FOUND));
            };
            let attempts = read_attempts(config, &id).await;
            let d = JobDetailBody::new(detail, attempts);
            if as_json {
                // The API's shape for a job in full (docs/openapi.json, `JobDetailBody`).
                outln!("{}", json(&d));
                return Ok(ExitCode::SUCCESS);
            }
            print_detail(&d);
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Retry {
            ids,
            all_dead,
            filter,
        } => {
            if all_dead {
                let n = queue
                    .retry_matching(&filter.to_filter(), "retried from the CLI")
                    .await
                    .map_err(anyhow::Error::from)?;
                outln!("queued {n} dead job(s) again");
                return Ok(ExitCode::SUCCESS);
            }
            if ids.is_empty() {
                return Err(CliError::Usage("give job ids, or --all-dead".into()));
            }
            act(queue, &ids, AdminAction::Retry).await
        }
        JobsCommand::Cancel { ids } => act(queue, &ids, AdminAction::Cancel).await,
        JobsCommand::Purge { state, older_than } => {
            if !state.is_terminal() {
                return Err(CliError::Usage(format!(
                    "only done, dead or cancelled jobs can be purged, not {state}"
                )));
            }
            let n = queue
                .purge(state, older_than)
                .await
                .map_err(anyhow::Error::from)?;
            outln!(
                "purged {n} {state} job(s) older than {}",
                humantime::format_duration(older_than)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn queue_cmd(queue: &Queue, command: QueueCommand) -> Result<ExitCode, CliError> {
    match command {
        QueueCommand::Stats { json: as_json } => {
            let stats = queue.stats().await.map_err(anyhow::Error::from)?;
            if as_json {
                outln!("{}", json(&stats));
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = stats
                .counts
                .iter()
                .map(|(s, n)| vec![s.to_string(), n.to_string()])
                .collect();
            outln!(
                "queue {}{}{}",
                stats.queue,
                match stats.shards {
                    1 => String::new(),
                    n => format!(", {n} shards"),
                },
                if stats.paused { " (paused)" } else { "" }
            );
            out!("{}", table(&["STATE", "JOBS"], &rows));
            let hour = |f: fn(&crate::queue::MinuteStats) -> u64| {
                stats.last_hour.iter().map(f).sum::<u64>()
            };
            outln!(
                "oldest queued: {}\nlast hour: {} enqueued, {} done, {} failed attempts, {} dead\nlive workers: {}",
                stats
                    .oldest_queued_age_secs
                    .map(|s| format!("{s:.1}s"))
                    .unwrap_or_else(|| "-".into()),
                hour(|m| m.enqueued),
                hour(|m| m.done),
                hour(|m| m.failed),
                hour(|m| m.dead),
                stats.workers
            );
            if stats.retention.is_empty() {
                outln!("retention: not announced yet (no worker has started on this queue)");
            }
            for (state, rule) in &stats.retention {
                outln!("retention of {state} jobs: {}", rule.describe());
            }
            outln!(
                "purged since the queue was created: {}",
                stats.totals.get("purged").copied().unwrap_or(0)
            );
            Ok(ExitCode::SUCCESS)
        }
        QueueCommand::Pause => {
            queue.pause().await.map_err(anyhow::Error::from)?;
            outln!(
                "queue {} paused: running jobs finish, no new ones start",
                queue.name()
            );
            Ok(ExitCode::SUCCESS)
        }
        QueueCommand::Resume => {
            queue.resume().await.map_err(anyhow::Error::from)?;
            outln!("queue {} resumed", queue.name());
            Ok(ExitCode::SUCCESS)
        }
        QueueCommand::Shards { count: None } => {
            let count = queue
                .read_shard_count()
                .await
                .map_err(anyhow::Error::from)?;
            outln!("queue {} has {} shard(s)", queue.name(), count.get());
            Ok(ExitCode::SUCCESS)
        }
        QueueCommand::Shards { count: Some(to) } => {
            let resize = queue.resize(to).await.map_err(anyhow::Error::from)?;
            if resize.from == resize.to {
                outln!("queue {} has {} shard(s) already", queue.name(), to.get());
            } else {
                outln!(
                    "queue {} now has {} shard(s), from {}; workers serve the new count from \
                     their next heartbeat (a third of a lease)",
                    queue.name(),
                    resize.to.get(),
                    resize.from.get()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        QueueCommand::Migrate => {
            let report = queue.migrate().await.map_err(anyhow::Error::from)?;
            outln!(
                "queue {} is in wire format {}: {} job(s) looked at, {} moved from an older format",
                queue.name(),
                crate::queue::FORMAT,
                report.jobs,
                report.moved
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The job `given` names, in full (`None` when none does). A part of more than one job's id
/// is a usage error that lists them.
async fn resolve(queue: &Queue, given: &str) -> Result<Option<String>, CliError> {
    match queue.resolve_id(given).await.map_err(anyhow::Error::from)? {
        IdLookup::Found(id) => Ok(Some(id)),
        IdLookup::NotFound => Ok(None),
        IdLookup::Ambiguous { ids, more } => Err(CliError::Usage(ambiguous_id(given, &ids, more))),
    }
}

/// Retries or cancels the jobs `given` names, and reports on each.
async fn act(queue: &Queue, given: &[String], action: AdminAction) -> Result<ExitCode, CliError> {
    // Every id is looked up before anything is done: an ambiguous one changes nothing.
    let mut ids = Vec::with_capacity(given.len());
    for g in given {
        ids.push(resolve(queue, g).await?);
    }
    let known: Vec<String> = ids.iter().flatten().cloned().collect();
    let message = match action {
        AdminAction::Retry => "retried from the CLI",
        AdminAction::Cancel => "cancelled from the CLI",
    };
    let done = match action {
        AdminAction::Retry => queue.retry(&known, message).await,
        AdminAction::Cancel => queue.cancel(&known, message).await,
    }
    .map_err(anyhow::Error::from)?;
    let mut done = done.into_iter();
    let mut shown = Vec::with_capacity(given.len());
    let mut replies = Vec::with_capacity(given.len());
    for (g, id) in given.iter().zip(ids) {
        let reply = match &id {
            Some(_) => done.next().unwrap_or(AdminReply::NotFound),
            None => AdminReply::NotFound,
        };
        shown.push(id.unwrap_or_else(|| g.clone()));
        replies.push(reply);
    }
    Ok(report(&shown, &replies, action))
}

/// Prints what a retry or cancel did to each job, and gives the exit code `EXIT_CODES`
/// describes.
fn report(ids: &[String], replies: &[AdminReply], action: AdminAction) -> ExitCode {
    for (id, reply) in ids.iter().zip(replies) {
        outln!("{id}  {}", reply.describe(action));
    }
    ExitCode::from(exit_code(replies))
}

/// A retry's or cancel's exit code: the most serious of its replies.
pub fn exit_code(replies: &[AdminReply]) -> u8 {
    let any = |f: fn(&AdminReply) -> bool| replies.iter().any(f);
    if any(|r| matches!(r, AdminReply::Refused(_))) {
        EXIT_REFUSED
    } else if any(|r| matches!(r, AdminReply::NotFound)) {
        EXIT_NOT_FOUND
    } else if any(|r| matches!(r, AdminReply::Unchanged(_))) {
        EXIT_NOTHING_TO_DO
    } else {
        0
    }
}

/// A job in full, for people: a changed revision first, then the job's fields, its timeline,
/// its attempts and its payload.
fn print_detail(d: &JobDetailBody) {
    // A changed revision is what the operator has to act on: before anything else.
    if let Some(changed) = d
        .attempts
        .iter()
        .rev()
        .find(|a| a.outcome.as_deref() == Some(AttemptOutcome::RevisionChanged.as_str()))
    {
        outln!(
            "REVISION CHANGED (attempt {}): the voted revision's files differ from the staged ones; nothing was promoted",
            changed.attempt
        );
        match &changed.revision_diff {
            Some(diff) => {
                for (what, paths) in [
                    ("added", &diff.added),
                    ("removed", &diff.removed),
                    ("changed", &diff.changed),
                ] {
                    for path in paths {
                        outln!("  {what:<8} {path}");
                    }
                }
            }
            None => outln!(
                "  {}",
                changed.message.as_deref().unwrap_or("no paths recorded")
            ),
        }
        outln!("");
    }
    let s = &d.job;
    let mut rows = vec![
        vec!["id".into(), s.id.clone()],
        vec!["state".into(), s.state.to_string()],
        vec!["kind".into(), s.kind.clone()],
        vec!["release".into(), s.release.clone()],
        vec!["platform".into(), s.platform.clone()],
        vec![
            "attempt".into(),
            format!("{} of {}", s.attempt, s.max_attempts),
        ],
        vec!["idempotency key".into(), s.idempotency_key.clone()],
        vec!["enqueued".into(), fmt_time(s.enqueued_at)],
        vec!["started".into(), fmt_time(s.started_at)],
        vec!["finished".into(), fmt_time(s.finished_at)],
        vec![
            "worker".into(),
            s.worker.clone().unwrap_or_else(|| "-".into()),
        ],
    ];
    if s.state == JobState::Done {
        // Failures before the success are history: counted here, listed below.
        let failed = d.attempts.iter().filter(|a| failed(a)).count();
        if failed > 0 {
            rows.push(vec![
                "earlier failures".into(),
                format!("{failed} failed attempt(s) before it succeeded; see attempts"),
            ]);
        }
    } else {
        rows.push(vec![
            "error class".into(),
            s.error_class.clone().unwrap_or_else(|| "-".into()),
        ]);
        rows.push(vec![
            "last error".into(),
            s.last_error.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    rows.push(vec![
        "ATR task status".into(),
        s.atr_task_status.to_string(),
    ]);
    out!("{}", table(&["FIELD", "VALUE"], &rows));
    outln!("\ntimeline:");
    let runs = d.timeline.iter().map(|e| e.run).max().unwrap_or(1);
    let timeline: Vec<Vec<String>> = d
        .timeline
        .iter()
        .map(|e| {
            vec![
                fmt_time(e.at),
                e.event.clone(),
                e.attempt
                    .map(|a| attempt_label(runs, e.run, a))
                    .unwrap_or_default(),
                e.message.clone().unwrap_or_default(),
            ]
        })
        .collect();
    out!(
        "{}",
        table(&["AT", "EVENT", "ATTEMPT", "MESSAGE"], &timeline)
    );
    match &d.attempts_error {
        Some(e) => outln!("\nattempts: not shown ({e})"),
        None => print_attempts(&d.attempts),
    }
    // Stored text that is not JSON is shown as it is.
    let envelope = if let serde_json::Value::String(text) = &d.envelope {
        text.clone()
    } else {
        serde_json::to_string_pretty(&d.envelope).unwrap_or_default()
    };
    outln!("\npayload:\n{envelope}");
}

fn fmt_time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    match t {
        Some(t) => format!(
            "{} ({})",
            t.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
            ago(Some(t))
        ),
        None => "-".to_owned(),
    }
}

/// Whether an attempt failed (by its recorded outcome).
fn failed(a: &AttemptBody) -> bool {
    a.outcome
        .as_deref()
        .and_then(AttemptOutcome::parse)
        .is_some_and(AttemptOutcome::is_failure)
}

/// The job's attempts from the results database (`job_run`), or why they cannot be read.
/// The queue is what `show` is about: a missing or unreachable database is a note, not a
/// failure, and an absent SQLite file is not created.
async fn read_attempts(
    config: &crate::config::Config,
    id: &str,
) -> Result<Vec<job_run::Model>, String> {
    let url = config.database_url();
    let sqlite_file = url
        .expose()
        .strip_prefix("sqlite://")
        .map(|rest| rest.split('?').next().unwrap_or(rest))
        .filter(|path| !path.contains(":memory:"));
    if let Some(path) = sqlite_file
        && !std::path::Path::new(path).exists()
    {
        return Err(format!("no results database at {path}"));
    }
    let read = async {
        let conn = crate::db::connect(&url, 1)
            .await
            .map_err(|e| e.to_string())?;
        crate::http::results::attempts_for_job(&conn, id)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(Duration::from_secs(5), read).await {
        Ok(read) => read,
        Err(_) => Err("the results database did not answer in 5 s".to_owned()),
    }
}

fn print_attempts(rows: &[AttemptBody]) {
    if rows.is_empty() {
        outln!("\nattempts: none recorded in the results database");
        return;
    }
    outln!("\nattempts:");
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.run.to_string(),
                r.attempt.to_string(),
                fmt_time(Some(r.started_at)),
                r.duration_ms
                    .map(|ms| format!("{ms} ms"))
                    .unwrap_or_default(),
                r.outcome.clone().unwrap_or_else(|| "running".into()),
                r.error_class.clone().unwrap_or_default(),
                r.http_status.map(|s| s.to_string()).unwrap_or_default(),
                r.message.clone().unwrap_or_default(),
            ]
        })
        .collect();
    out!(
        "{}",
        table(
            &[
                "RUN", "ATTEMPT", "STARTED", "DURATION", "OUTCOME", "CLASS", "HTTP", "MESSAGE"
            ],
            &rows
        )
    );
}
