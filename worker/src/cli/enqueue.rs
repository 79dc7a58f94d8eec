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
        #[arg(long = "artifact", required = true)]
        artifacts: Vec<String>,
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
        path: PathBuf,
        #[command(flatten)]
        timing: TimingArgs,
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
    #[arg(long, default_value = "")]
    pub owner_namespace: String,
    #[arg(long)]
    pub package: String,
    /// The version on the platform.
    #[arg(long)]
    pub version: String,
    /// Revision number, e.g. 00002.
    #[arg(long)]
    pub revision: String,
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
    #[arg(long)]
    pub json: bool,
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
    let (envelopes, timing, as_json) = match command {
        EnqueueCommand::Stage {
            common,
            artifacts,
            staging_tag,
        } => {
            let (release, distribution, revision, source, asf_uid) = common.parts()?;
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
            (
                vec![build(job, &common.idempotency_key)?],
                common.timing,
                common.json,
            )
        }
        EnqueueCommand::File { path, timing, json } => (read_envelopes(&path)?, timing, json),
    };
    let run_at = timing.delay.map(|d| {
        chrono::Utc::now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero())
    });
    let mut results = Vec::new();
    for env in &envelopes {
        let attempts = timing
            .max_attempts
            .unwrap_or_else(|| config.retry_for(env.distribution().platform).max_attempts);
        let e = queue
            .enqueue(env, run_at, attempts)
            .await
            .map_err(anyhow::Error::from)?;
        results.push(serde_json::json!({"id": e.id, "created": e.created, "kind": env.kind(), "distribution": env.distribution_key().map(|k| k.to_string()).unwrap_or_default()}));
        if !as_json {
            let what = if e.created {
                "enqueued"
            } else {
                "already enqueued (same idempotency key)"
            };
            outln!(
                "{}  {what}: {} {}",
                e.id,
                env.kind(),
                env.distribution_key()
                    .map(|k| k.to_string())
                    .unwrap_or_default()
            );
        }
    }
    if as_json {
        outln!("{}", json(&results));
    }
    Ok(ExitCode::SUCCESS)
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
