//! `atr-dist enqueue stage|promote|file`: put jobs on the queue from the command line.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use atr_dist_shared::job::{DistributionSpec, ReleaseRef, RevisionSourceSpec};
use atr_dist_shared::names::{
    ArtifactPath, AsfUid, DistTag, IdempotencyKey, PackageName, ProjectKey, RevisionNumber,
    Version, VersionKey,
};
use atr_dist_shared::{Envelope, Job, Platform, PromoteJob, StageJob};
use clap::{Args, Subcommand, ValueEnum};

use super::CliError;
use super::output::json;
use crate::queue::Queue;

#[derive(Debug, Subcommand)]
pub enum EnqueueCommand {
    /// Stage a revision's files on a platform.
    Stage {
        #[command(flatten)]
        common: CommonArgs,
        /// A file to publish, relative to the revision root; repeat for several.
        #[arg(long = "artifact", required_unless_present = "artifact_dir")]
        artifacts: Vec<String>,
        /// An OCI image layout directory in the revision (`.` for the revision root): its
        /// index.json, oci-layout and blobs become the artifacts. Reads the revision
        /// directory, so it needs --source dir.
        #[arg(long, value_name = "DIR", conflicts_with = "artifacts")]
        artifact_dir: Option<String>,
        /// Staging dist-tag or image tag (default: the platform's configured one).
        #[arg(long)]
        staging_tag: Option<String>,
    },
    /// Promote a staged distribution, if the voted revision has the same files.
    Promote {
        #[command(flatten)]
        common: CommonArgs,
        /// Production dist-tag or image tag (default: latest on npm, the version on OCI).
        #[arg(long)]
        release_tag: Option<String>,
    },
    /// Enqueue envelopes from a JSON file (one envelope, or an array), or `-` for stdin.
    File {
        /// The JSON file, or `-` for standard input.
        path: PathBuf,
        #[command(flatten)]
        timing: TimingArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SourceArg {
    /// The revision directory under the configured revisions root.
    Dir,
    /// ATR's published file manifest.
    Atr,
}

#[derive(Debug, Args)]
pub struct TimingArgs {
    /// Run no earlier than this long from now (e.g. 10m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub delay: Option<Duration>,
    /// Attempts before the job is dead (default: the platform's retry policy).
    #[arg(long)]
    pub max_attempts: Option<u32>,
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    /// ATR project key, e.g. example.
    #[arg(long)]
    pub project: String,
    /// ATR release version, e.g. 1.0.0.
    #[arg(long = "release-version")]
    pub release_version: String,
    /// ARTIFACT_HUB, DOCKER_HUB, MAVEN, NPM, NPM_SCOPED, PYPI, GITHUB or HEX.
    #[arg(long)]
    pub platform: Platform,
    /// The platform's owner or namespace (the npm scope without `@`, the OCI repository's
    /// namespace); empty for none.
    #[arg(long, default_value = "")]
    pub owner_namespace: String,
    /// The package (npm name without scope, OCI repository name).
    #[arg(long)]
    pub package: String,
    /// The version on the platform.
    #[arg(long)]
    pub version: String,
    /// Revision number, e.g. 00002.
    #[arg(long)]
    pub revision: String,
    /// Where the worker reads the revision from.
    #[arg(long, value_enum, default_value = "dir")]
    pub source: SourceArg,
    /// Who asks (ASF user id); recorded as created_by.
    #[arg(long)]
    pub asf_uid: String,
    /// Describe the platform writes instead of making them.
    #[arg(long)]
    pub dry_run: bool,
    /// Defaults to kind:release:platform:namespace:package:version:revision.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub timing: TimingArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Wait until the job ends (a worker must be running) and print how; exit 1 unless it
    /// is done.
    #[arg(long)]
    pub wait: bool,
}

fn usage<E: std::fmt::Display>(e: E) -> CliError {
    CliError::Usage(e.to_string())
}

impl CommonArgs {
    fn parts(
        &self,
    ) -> Result<
        (
            ReleaseRef,
            DistributionSpec,
            RevisionNumber,
            RevisionSourceSpec,
            AsfUid,
        ),
        CliError,
    > {
        Ok((
            ReleaseRef {
                project_key: ProjectKey::new(&self.project).map_err(usage)?,
                version_key: VersionKey::new(&self.release_version).map_err(usage)?,
            },
            DistributionSpec {
                platform: self.platform,
                owner_namespace: self.owner_namespace.clone(),
                package: PackageName::new(&self.package).map_err(usage)?,
                version: Version::new(&self.version).map_err(usage)?,
            },
            RevisionNumber::new(&self.revision).map_err(usage)?,
            match self.source {
                SourceArg::Dir => RevisionSourceSpec::Dir,
                SourceArg::Atr => RevisionSourceSpec::Atr,
            },
            AsfUid::new(&self.asf_uid).map_err(usage)?,
        ))
    }
}

fn tag(value: &Option<String>) -> Result<Option<DistTag>, CliError> {
    value
        .as_deref()
        .map(DistTag::new)
        .transpose()
        .map_err(usage)
}

pub async fn enqueue(
    queue: &Queue,
    config: &crate::config::Config,
    command: EnqueueCommand,
) -> Result<ExitCode, CliError> {
    let mut from_file = false;
    let mut wait = false;
    let (envelopes, timing, as_json) = match command {
        EnqueueCommand::Stage {
            common,
            artifacts,
            artifact_dir,
            staging_tag,
        } => {
            let (release, distribution, revision, source, asf_uid) = common.parts()?;
            let artifacts = match &artifact_dir {
                Some(dir) => layout_files(config, &common, dir)?,
                None => artifacts,
            };
            let artifacts = artifacts
                .iter()
                .map(ArtifactPath::new)
                .collect::<Result<Vec<_>, _>>()
                .map_err(usage)?;
            let job = Job::Stage(StageJob {
                release,
                distribution,
                revision,
                source,
                artifacts,
                staging_tag: tag(&staging_tag)?,
                dry_run: common.dry_run,
                asf_uid,
            });
            wait = common.wait;
            (
                vec![build(job, &common.idempotency_key)?],
                common.timing,
                common.json,
            )
        }
        EnqueueCommand::Promote {
            common,
            release_tag,
        } => {
            let (release, distribution, revision, source, asf_uid) = common.parts()?;
            let job = Job::Promote(PromoteJob {
                release,
                distribution,
                revision,
                source,
                release_tag: tag(&release_tag)?,
                dry_run: common.dry_run,
                asf_uid,
            });
            wait = common.wait;
            (
                vec![build(job, &common.idempotency_key)?],
                common.timing,
                common.json,
            )
        }
        EnqueueCommand::File { path, timing, json } => {
            from_file = true;
            (read_envelopes(&path)?, timing, json)
        }
    };
    // A delay counts from Redis's clock, which the scripts compare run_at with, not this
    // machine's (docs/wire-format.md, "Scripts").
    let run_at = match timing.delay {
        None => None,
        Some(d) => {
            let (secs, micros): (i64, i64) = redis::cmd("TIME")
                .query_async(&mut queue.connection())
                .await
                .map_err(anyhow::Error::from)?;
            let now = chrono::DateTime::from_timestamp_micros(secs * 1_000_000 + micros)
                .unwrap_or_else(chrono::Utc::now);
            Some(now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero()))
        }
    };
    let jobs = envelopes
        .iter()
        .map(|env| {
            let attempts = timing
                .max_attempts
                .unwrap_or_else(|| config.retry_for(env.distribution().platform).max_attempts);
            crate::queue::raw_job(env, run_at, attempts)
        })
        .collect::<Vec<_>>();
    let enqueued = enqueue_in_bulk(queue, &jobs).await?;
    let mut results = Vec::new();
    for (env, e) in envelopes.iter().zip(enqueued) {
        let distribution = env
            .distribution_key()
            .map(|k| k.to_string())
            .unwrap_or_default();
        // The same idempotency key returns the job it already names, however long ago that
        // job ended: say so, or a second run of the same command looks like a new job.
        let existing = if e.created {
            None
        } else {
            queue
                .show(&e.id)
                .await
                .map_err(anyhow::Error::from)?
                .map(|d| d.summary)
        };
        let mut result = serde_json::json!({"id": e.id, "created": e.created, "kind": env.kind(), "distribution": distribution});
        if let Some(job) = &existing {
            result["state"] = serde_json::json!(job.state);
        }
        results.push(result);
        if !as_json {
            let what = match (&existing, e.created) {
                (_, true) => "enqueued".to_owned(),
                (Some(job), false) => already(job, from_file, chrono::Utc::now()),
                (None, false) => "already enqueued with this idempotency key".to_owned(),
            };
            outln!("{}  {what}: {} {distribution}", e.id, env.kind());
        }
    }
    if as_json {
        outln!("{}", json(&results));
    }
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let mut all_done = true;
    for result in &results {
        let id = result["id"].as_str().unwrap_or_default();
        let job = wait_for_end(queue, id).await?;
        all_done &= job.state == atr_dist_shared::JobState::Done;
        let error = job
            .last_error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        outln!("{id}  {}{error}", job.state);
    }
    Ok(if all_done {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Enqueues the jobs through the queue's batched path (`enqueue.lua` takes up to
/// `ENQUEUE_CHUNK` jobs a call, in one transaction), in the file's order, and answers one
/// result per job, in that order. A file that names one job twice (the same envelope id)
/// enqueues it once; the second is answered as its first. The same id under two idempotency
/// keys is refused before anything is sent. A long file reports its progress on stderr.
async fn enqueue_in_bulk(
    queue: &Queue,
    jobs: &[crate::queue::RawJob],
) -> Result<Vec<crate::queue::Enqueued>, CliError> {
    use std::collections::HashMap;
    use std::collections::hash_map::Entry;
    // Where each job's result comes from: its own place among the unique jobs.
    let mut first: HashMap<&str, (usize, &str)> = HashMap::with_capacity(jobs.len());
    let mut unique = Vec::with_capacity(jobs.len());
    let mut source = Vec::with_capacity(jobs.len());
    for job in jobs {
        match first.entry(job.id.as_str()) {
            Entry::Occupied(seen) => {
                let (at, key) = *seen.get();
                if key != job.idempotency_key {
                    return Err(usage(format!(
                        "job {} appears twice with different idempotency keys ({key:?} and {:?}); nothing was enqueued",
                        job.id, job.idempotency_key
                    )));
                }
                source.push((at, true));
            }
            Entry::Vacant(slot) => {
                slot.insert((unique.len(), job.idempotency_key.as_str()));
                source.push((unique.len(), false));
                unique.push(job.clone());
            }
        }
    }
    let total = unique.len();
    // Progress after each step once a file holds more than one step's jobs: a step is
    // several `enqueue.lua` calls, so the report costs nothing measurable.
    let step = crate::queue::ENQUEUE_CHUNK * 10;
    let mut created = Vec::with_capacity(total);
    for part in unique.chunks(step) {
        created.extend(queue.enqueue_raw(part).await.map_err(anyhow::Error::from)?);
        if total > step {
            eprintln!("enqueued {} of {total}", created.len());
        }
    }
    Ok(source
        .into_iter()
        .map(|(at, repeat)| crate::queue::Enqueued {
            id: created[at].id.clone(),
            created: created[at].created && !repeat,
        })
        .collect())
}

/// Polls the job until it is done, dead or cancelled. A human is waiting: a short poll
/// costs Redis one small read, and Ctrl-C ends the wait, not the job.
async fn wait_for_end(queue: &Queue, id: &str) -> Result<crate::queue::JobSummary, CliError> {
    loop {
        let Some(detail) = queue.show(id).await.map_err(anyhow::Error::from)? else {
            return Err(CliError::Failed(anyhow::anyhow!(
                "job {id} is gone from the queue (purged?) while waiting for it"
            )));
        };
        if detail.summary.state.is_terminal() {
            return Ok(detail.summary);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What `enqueue` says when the idempotency key already named `job`.
fn already(
    job: &crate::queue::JobSummary,
    from_file: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    let since = job
        .finished_at
        .filter(|_| job.state.is_terminal())
        .or(job.enqueued_at);
    let when = since
        .map(|t| format!(" {} ago", ago(now - t)))
        .unwrap_or_default();
    let again = if from_file {
        "give the envelope another idempotency_key to run again"
    } else {
        "pass --idempotency-key to run again"
    };
    if job.state.is_terminal() {
        format!(
            "already enqueued as {}, {}{when}; {again}",
            job.id, job.state
        )
    } else {
        format!(
            "already enqueued as {}, {} (enqueued{when}); nothing new enqueued",
            job.id, job.state
        )
    }
}

/// A duration as people say it: `40 s`, `12 min`, `3 h`, `5 d`.
fn ago(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86400),
    }
}

/// The files of the OCI image layout `dir` in the revision (`.` = its root): `index.json`,
/// `oci-layout` and every `blobs/<alg>/<hex>`, as artifact paths. The worker checks them
/// against the manifest and the layout again; this only saves naming every blob by hand.
fn layout_files(
    config: &crate::config::Config,
    common: &CommonArgs,
    dir: &str,
) -> Result<Vec<String>, CliError> {
    if !matches!(common.source, SourceArg::Dir) {
        return Err(usage(
            "--artifact-dir reads the revision directory, so it needs --source dir; with --source atr name each file with --artifact",
        ));
    }
    let prefix = match dir.trim_end_matches('/') {
        "" | "." => String::new(),
        d => {
            ArtifactPath::new(d).map_err(|e| usage(format!("--artifact-dir: {e}")))?;
            format!("{d}/")
        }
    };
    let root = config
        .revisions
        .root
        .join(&common.project)
        .join(&common.release_version)
        .join(&common.revision)
        .join(&prefix);
    for required in ["index.json", "oci-layout"] {
        if !root.join(required).is_file() {
            return Err(usage(format!(
                "--artifact-dir {dir}: {} has no {required}, so it is not an OCI image layout",
                root.display()
            )));
        }
    }
    let mut files = vec![format!("{prefix}index.json"), format!("{prefix}oci-layout")];
    let blobs = root.join("blobs");
    let read = |path: &std::path::Path| {
        std::fs::read_dir(path).map_err(|e| usage(format!("reading {}: {e}", path.display())))
    };
    if blobs.is_dir() {
        for alg in read(&blobs)? {
            let alg = alg.map_err(|e| usage(format!("reading {}: {e}", blobs.display())))?;
            if !alg.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let alg_name = alg.file_name().to_string_lossy().into_owned();
            for blob in read(&alg.path())? {
                let blob = blob.map_err(|e| usage(format!("reading {alg_name}: {e}")))?;
                // Regular files only: the worker refuses a symbolic link in a revision.
                if blob.file_type().is_ok_and(|t| t.is_file()) {
                    files.push(format!(
                        "{prefix}blobs/{alg_name}/{}",
                        blob.file_name().to_string_lossy()
                    ));
                }
            }
        }
    }
    files[2..].sort();
    Ok(files)
}

fn build(job: Job, key: &Option<String>) -> Result<Envelope, CliError> {
    let key = match key {
        Some(k) => IdempotencyKey::new(k).map_err(usage)?,
        None => Envelope::default_idempotency_key(&job),
    };
    let envelope = Envelope::new(job, key);
    // Same checks a worker makes, before anything reaches the queue.
    Envelope::parse(envelope.to_json().as_bytes()).map_err(usage)
}

fn read_envelopes(path: &PathBuf) -> Result<Vec<Envelope>, CliError> {
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| usage(format!("reading stdin: {e}")))?;
    } else {
        text = std::fs::read_to_string(path)
            .map_err(|e| usage(format!("reading {}: {e}", path.display())))?;
    }
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| usage(format!("{}: not JSON: {e}", path.display())))?;
    let items = if let serde_json::Value::Array(items) = value {
        items
    } else {
        vec![value]
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            Envelope::parse(v.to_string().as_bytes())
                .map_err(|e| usage(format!("envelope {i}: {e}")))
        })
        .collect()
}
