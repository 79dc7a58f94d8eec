//! The seam between the pipeline and a platform: one adapter per platform, each in its own
//! file, behind `PlatformAdapter`. An adapter knows its platform's HTTP API and nothing of
//! queues, databases or revisions; the pipeline decides when to call it.
//!
//! Two rules hold for every adapter, present and future:
//! - It publishes only [`Sealed`] artifacts: private copies the pipeline made and checked
//!   against the voted manifest (`seal.rs`). No adapter ever sees a path into a revision,
//!   and the digests a platform will report (npm's integrity, a blob's sha256) come from the
//!   same sealed bytes.
//! - A write whose outcome is unknown is followed by a read-back before anything else
//!   (`write.rs`), and retries inside an attempt draw on the attempt's bounded budget
//!   (`http.rs`).
//!
//! Two ways of promoting sit side by side ([`PlatformAdapter::promotion`], decided in one
//! place, `pipeline/promote.rs`):
//! - **in place** (npm dist-tags, OCI retag, ...): the platform turns the staged object into
//!   the production one; [`PromoteRequest::artifacts`] is empty and the adapter checks that
//!   the staged object still carries the staged digest.
//! - **re-upload** (PyPI: Test PyPI is another registry, and nothing there becomes
//!   production; Hex: nothing is staged at all): promote uploads the voted bytes again. The pipeline reads them from the
//!   **voted** revision, only after it has found the voted files equal to the staged ones
//!   (`revision_changed` otherwise), and seals them exactly as stage does; the adapter gets
//!   them in [`PromoteRequest::artifacts`]. Which files: the paths the stage published,
//!   recorded in `distribution.staged_artifacts`. Not "every file of the voted manifest the
//!   adapter accepts": a revision also holds signatures, checksums and files meant for other
//!   platforms, and the vote approved publishing what was staged, no more. A row staged
//!   before the paths were recorded cannot be promoted by re-upload; stage it again.
//!
//! A third kind, **verify only** ([`PromotionMechanism::None`], Artifact Hub), is never
//! written to: someone else puts the distribution there (Artifact Hub indexes the chart
//! repository), and the adapter only reads. It goes through the same path as the others,
//! with `plan_stage` and `plan_promote` empty: `read_staged` finds the distribution as the
//! vote wants it or not (then `stage` says why, as a refusal, and writes nothing);
//! `read_promoted` finds it in production or not (then `promote` waits with
//! [`PlatformError::not_yet`], or refuses when it can never appear). What the pipeline does
//! differently for it is only what it reports (`pipeline/stage.rs`, `pipeline/promote.rs`):
//! since nothing is ever written, a step that finds the platform as wanted is `completed`
//! when the record did not say so yet and `unchanged` after, and dry runs say that nothing
//! is ever sent rather than listing writes.
//!
//! Adapters whose platform is not ready yet (a rate limit until its reset, a version still
//! being indexed, a repository still being released) return [`PlatformError::not_yet`]: the
//! job waits in Redis without spending an attempt, up to the platform's deadline, instead
//! of sleeping inside an attempt.

pub mod artifact_hub;
pub mod github;
pub mod hex;
pub mod http;
pub mod maven;
pub mod npm;
pub mod oci;
pub mod pypi;
pub mod write;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use atr_dist_shared::names::{ArtifactPath, DistTag, ProjectKey, RevisionKey};
use atr_dist_shared::{Digest, DistributionKey, ErrorClass, Platform, PromotionMechanism};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::Serialize;

pub use crate::seal::Sealed;

#[derive(Debug, Clone)]
pub struct StageRequest {
    pub key: DistributionKey,
    pub revision: RevisionKey,
    /// The job's artifacts, in the job's order, each a sealed copy of the voted bytes.
    pub artifacts: Vec<Sealed>,
    /// The companion files of the artifacts that the revision holds
    /// ([`PlatformAdapter::companions`]), sealed as the artifacts are.
    pub companions: Vec<Sealed>,
    pub staging_tag: DistTag,
}

#[derive(Debug, Clone)]
pub struct PromoteRequest {
    pub key: DistributionKey,
    /// What the platform reported when the distribution was staged.
    pub staged_digest: Digest,
    pub staging_tag: DistTag,
    pub release_tag: DistTag,
    /// For [`PromotionMechanism::Reupload`] adapters: the staged files read again from the
    /// voted revision, each a sealed copy checked against the voted manifest, in the order
    /// they were staged. Empty for every other mechanism, which promotes the staged object
    /// in place and sends no file.
    pub artifacts: Vec<Sealed>,
    /// With `artifacts`: their companion files the voted revision holds
    /// ([`PlatformAdapter::companions`]), sealed as they are. Empty otherwise.
    pub companions: Vec<Sealed>,
}

/// What the platform holds, read back from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub digest: Digest,
    pub api_url: Option<String>,
    pub web_url: Option<String>,
    pub upload_date: Option<DateTime<Utc>>,
}

/// One HTTP write an adapter would make, for dry runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedWrite {
    pub method: &'static str,
    pub url: String,
    pub what: String,
}

impl fmt::Display for PlannedWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ({})", self.method, self.url, self.what)
    }
}

/// The platform digest of a set of files on a platform that reports each file's sha256
/// (PyPI's version, a GitHub release, a Maven version directory): one sha256 over the lines
/// `<name> <sha256 hex>\n`, sorted by name. The same files under the same names give the
/// same digest, computed from the sealed voted bytes or read back from the platform.
pub fn files_digest<'a>(files: impl Iterator<Item = (&'a str, &'a str)>) -> Digest {
    let sorted: std::collections::BTreeMap<&str, &str> = files.collect();
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    for (name, sha) in sorted {
        for part in [name.as_bytes(), b" ", sha.as_bytes(), b"\n"] {
            sha2::Digest::update(&mut h, part);
        }
    }
    Digest::from_bytes(
        atr_dist_shared::DigestAlgorithm::Sha256,
        &sha2::Digest::finalize(h),
    )
    .unwrap_or_else(|_| unreachable!("a sha256 is a sha256 digest"))
}

/// A failed platform call, classed for the retry decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PlatformError {
    pub class: ErrorClass,
    pub message: String,
    pub http_status: Option<u16>,
    pub retry_after: Option<Duration>,
    /// The platform has not got there yet, and time is the whole remedy (see
    /// [`PlatformError::not_yet`]).
    pub not_yet: bool,
}

impl PlatformError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> PlatformError {
        PlatformError {
            class,
            message: message.into(),
            http_status: None,
            retry_after: None,
            not_yet: false,
        }
    }

    /// The platform is not there yet, and asking again later is the whole remedy: a rate
    /// limit until its reset, a version Artifact Hub has not indexed yet, a staging
    /// repository Nexus is still releasing. Not a failure: the attempt ends `waiting`, and
    /// the job runs again after at least `after` **without spending an attempt**; the wait is
    /// a deferral in Redis, so a worker restart does not lose it. Waits grow with each one
    /// (`pipeline/wait.rs`) and are bounded by the platform's `wait_deadline_secs`, counted
    /// from the job's first wait: past it, the job ends dead as `transient` (ATR's `BROKEN`),
    /// with this message and how long it waited.
    pub fn not_yet(message: impl Into<String>, after: Duration) -> PlatformError {
        PlatformError {
            class: ErrorClass::Transient,
            message: message.into(),
            http_status: None,
            retry_after: Some(after),
            not_yet: true,
        }
    }

    pub fn permanent(message: impl Into<String>) -> PlatformError {
        PlatformError::new(ErrorClass::Permanent, message)
    }

    pub fn transient(message: impl Into<String>) -> PlatformError {
        PlatformError::new(ErrorClass::Transient, message)
    }

    pub fn with_status(mut self, status: u16) -> PlatformError {
        self.http_status = Some(status);
        self
    }
}

/// Where a stage leaves the distribution, which decides how the pipeline checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staging {
    /// On the platform. The pipeline reads the staging place (`read_staged`) before
    /// calling `stage` and again after it, and records what it read back. Most adapters
    /// write there (npm, OCI, PyPI, GitHub). Verify-only platforms, whose staging place
    /// someone else fills (Maven's Nexus staging repository, Artifact Hub's index), write
    /// nothing: their `stage` explains, as a refusal, why what `read_staged` found is not
    /// the vote, and their `plan_stage` is empty.
    Platform,
    /// Nowhere: the platform has no staging place (Hex publishes straight to production).
    /// `stage` checks the sealed artifacts themselves and sends nothing; `read_staged` is
    /// not called, and the staged digest recorded is `expected_digest`, which promote then
    /// requires of the voted bytes it uploads.
    Local,
}

/// A platform's stage, promote and read-back operations.
///
/// Reads (`expected_digest`, `read_staged`, `read_promoted`) never change the platform and
/// are used in dry runs too; writes (`stage`, `promote`) are only called after the pipeline
/// has checked that they are needed and allowed.
pub trait PlatformAdapter: Send + Sync {
    /// The digest the platform will report for these artifacts once staged (the tarball's
    /// SRI for npm, the manifest digest for OCI), computed locally.
    fn expected_digest<'a>(
        &'a self,
        req: &'a StageRequest,
    ) -> BoxFuture<'a, Result<Digest, PlatformError>>;

    /// The writes `stage` would make.
    fn plan_stage(&self, req: &StageRequest) -> Vec<PlannedWrite>;

    /// Puts the artifacts on the staging place.
    fn stage<'a>(&'a self, req: &'a StageRequest) -> BoxFuture<'a, Result<(), PlatformError>>;

    /// What the staging place holds for this key and tag now, if anything.
    fn read_staged<'a>(
        &'a self,
        key: &'a DistributionKey,
        staging_tag: &'a DistTag,
    ) -> BoxFuture<'a, Result<Option<Observed>, PlatformError>>;

    /// The writes `promote` would make.
    fn plan_promote(&self, req: &PromoteRequest) -> Vec<PlannedWrite>;

    /// Makes the staged distribution the production one.
    fn promote<'a>(&'a self, req: &'a PromoteRequest) -> BoxFuture<'a, Result<(), PlatformError>>;

    /// What production holds for this key and release tag now, if anything.
    fn read_promoted<'a>(
        &'a self,
        key: &'a DistributionKey,
        release_tag: &'a DistTag,
    ) -> BoxFuture<'a, Result<Option<Observed>, PlatformError>>;

    /// The tags used when a job names none.
    fn default_tags(&self, key: &DistributionKey) -> (DistTag, DistTag);

    /// Whether stage leaves the distribution on the platform, and so how the pipeline
    /// checks it (see [`Staging`]).
    fn staging(&self) -> Staging;

    /// Files that go with `artifact` when it is published, if the revision holds them beside
    /// it (PyPI: a PEP 740 attestation, `<file>.publish.attestation`). The pipeline seals
    /// each one the voted manifest lists, exactly as it seals the artifacts, and hands them
    /// over in [`StageRequest::companions`] and [`PromoteRequest::companions`]: an adapter
    /// reads a companion from there, never from a path. None by default.
    fn companions(&self, _artifact: &ArtifactPath) -> Vec<ArtifactPath> {
        Vec::new()
    }

    /// How this adapter promotes: in place, or by uploading the voted files again
    /// ([`PromotionMechanism::Reupload`], which makes the pipeline fill
    /// [`PromoteRequest::artifacts`]). Equal to the platform's `promotion_mechanism` in
    /// `shared/src/platform.rs`.
    fn promotion(&self) -> PromotionMechanism;

    /// Whether this worker may promote the distributions of `project` on this platform;
    /// `Err` says why not, for the operator. A refusal is policy, not a failure: the promote
    /// job ends `disabled_by_policy`, having read and sent nothing (`pipeline/promote.rs`).
    /// Allowed unless an adapter says otherwise (Maven promotes only the projects its
    /// configuration lists).
    fn promotion_allowed(&self, project: &ProjectKey) -> Result<(), String> {
        let _ = project;
        Ok(())
    }
}

/// The adapters this worker has, by platform.
#[derive(Clone, Default)]
pub struct Adapters {
    by_platform: HashMap<Platform, Arc<dyn PlatformAdapter>>,
}

impl Adapters {
    pub fn with(mut self, platform: Platform, adapter: Arc<dyn PlatformAdapter>) -> Adapters {
        self.by_platform.insert(platform, adapter);
        self
    }

    pub fn get(&self, platform: Platform) -> Option<Arc<dyn PlatformAdapter>> {
        self.by_platform.get(&platform).cloned()
    }

    pub fn platforms(&self) -> Vec<Platform> {
        let mut p: Vec<Platform> = self.by_platform.keys().copied().collect();
        p.sort();
        p
    }
}

/// Whether `atr-dist run` gives a platform an adapter, and why; `atr-dist config` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enablement {
    pub platform: Platform,
    pub enabled: bool,
    pub reason: String,
}

/// Which platforms get an adapter. The rule: only platforms the operator configured. A
/// platform's public default (`https://registry.npmjs.org/`, Docker Hub) is used only once
/// its `[platforms.<name>]` section says something that makes it a target: a `base_url`, a
/// token (or `token_file`), or for OCI a `username`. A worker left on defaults publishes
/// nowhere, so a test or first run can never reach a public registry by accident.
pub fn enablement(config: &crate::config::Config) -> Vec<Enablement> {
    Platform::ALL
        .iter()
        .map(|&platform| {
            let section = crate::config::section_name(platform);
            let p = config.platforms.get(platform);
            let env = format!("ATR_DIST_PLATFORMS__{}__TOKEN", section.to_ascii_uppercase());
            let (enabled, reason) = match platform {
                Platform::Npm | Platform::NpmScoped | Platform::DockerHub | Platform::Hex => {
                    let default = match platform {
                        Platform::DockerHub => oci::DEFAULT_REGISTRY,
                        Platform::Npm | Platform::NpmScoped => npm::DEFAULT_REGISTRY,
                        Platform::Hex => hex::DEFAULT_API,
                        Platform::ArtifactHub
                        | Platform::Maven
                        | Platform::Pypi
                        | Platform::Github => unreachable!("matched above"),
                    };
                    let username = p.username.is_some() && platform == Platform::DockerHub;
                    match (&p.base_url, p.token.is_some() || username) {
                        (Some(url), _) => (true, format!("base_url = {url}")),
                        (None, true) => (
                            true,
                            format!("credentials set; base_url defaults to {default}"),
                        ),
                        (None, false) => (
                            false,
                            format!(
                                "not configured: set [platforms.{section}] base_url (ATR_DIST_PLATFORMS__{}__BASE_URL) or {env}",
                                section.to_ascii_uppercase()
                            ),
                        ),
                    }
                }
                // Test PyPI and PyPI once an index URL or a token is set.
                Platform::Pypi => match pypi::configured(p) {
                    Some((staging, production)) => (
                        true,
                        format!("stages to {staging}, promotes to {production}"),
                    ),
                    None => (
                        false,
                        "not configured: set [platforms.pypi] staging_base_url and base_url (ATR_DIST_PLATFORMS__PYPI__STAGING_BASE_URL, ATR_DIST_PLATFORMS__PYPI__BASE_URL) or ATR_DIST_PLATFORMS__PYPI__STAGING_TOKEN and ATR_DIST_PLATFORMS__PYPI__TOKEN".to_owned(),
                    ),
                },
                // Only read, and with no credentials: enabled once an instance is named.
                Platform::ArtifactHub => match artifact_hub::configured(p) {
                    Some((staging, production)) => (
                        true,
                        format!("stage checks {staging}, promote waits for {production}"),
                    ),
                    None => (
                        false,
                        "not configured: set [platforms.artifact_hub] base_url or staging_base_url (ATR_DIST_PLATFORMS__ARTIFACT_HUB__BASE_URL, ATR_DIST_PLATFORMS__ARTIFACT_HUB__STAGING_BASE_URL)".to_owned(),
                    ),
                },
                // The API and the uploads host once a URL or a token is set.
                Platform::Github => match github::configured(p) {
                    Some((api, uploads)) => (
                        true,
                        format!("releases at {api}, assets uploaded to {uploads}"),
                    ),
                    None => (
                        false,
                        "not configured: set [platforms.github] base_url (ATR_DIST_PLATFORMS__GITHUB__BASE_URL) or ATR_DIST_PLATFORMS__GITHUB__TOKEN".to_owned(),
                    ),
                },
                // Verification reads Nexus and Maven Central; still only once configured.
                Platform::Maven => match maven::MavenAdapter::from_config(p) {
                    Ok(Some(a)) => (true, a.describe()),
                    Ok(None) => (
                        false,
                        "not configured: set [platforms.maven] staging_base_url (ATR_DIST_PLATFORMS__MAVEN__STAGING_BASE_URL, Nexus 2's REST base, e.g. https://repository.apache.org/service/local/) or ATR_DIST_PLATFORMS__MAVEN__STAGING_TOKEN".to_owned(),
                    ),
                    Err(e) => (false, format!("misconfigured: {e}")),
                },
            };
            Enablement {
                platform,
                enabled,
                reason,
            }
        })
        .collect()
}

/// The adapters of the configured platforms (see [`enablement`] for the rule).
pub fn from_config(config: &crate::config::Config) -> Result<Adapters, crate::config::ConfigError> {
    let mut adapters = Adapters::default();
    for Enablement {
        platform, enabled, ..
    } in enablement(config)
    {
        if !enabled {
            continue;
        }
        match platform {
            Platform::Npm | Platform::NpmScoped => {
                let npm = npm::adapter_for(platform, config).map_err(|e| {
                    crate::config::ConfigError::Invalid {
                        key: format!("platforms.{}", crate::config::section_name(platform)),
                        reason: e.message,
                    }
                })?;
                adapters = adapters.with(platform, Arc::new(npm));
            }
            Platform::DockerHub => {
                if let Some(oci) = oci::OciAdapter::from_config(&config.platforms.docker_hub)? {
                    adapters = adapters.with(Platform::DockerHub, Arc::new(oci));
                }
            }
            Platform::Pypi => {
                if let Some(pypi) = pypi::PypiAdapter::from_config(&config.platforms.pypi)? {
                    adapters = adapters.with(Platform::Pypi, Arc::new(pypi));
                }
            }
            Platform::ArtifactHub => {
                if let Some(hub) =
                    artifact_hub::ArtifactHubAdapter::from_config(&config.platforms.artifact_hub)?
                {
                    adapters = adapters.with(Platform::ArtifactHub, Arc::new(hub));
                }
            }
            Platform::Github => {
                if let Some(github) = github::GithubAdapter::from_config(&config.platforms.github)?
                {
                    adapters = adapters.with(Platform::Github, Arc::new(github));
                }
            }
            Platform::Hex => {
                let hex = hex::HexAdapter::from_config(&config.platforms.hex)?;
                adapters = adapters.with(Platform::Hex, Arc::new(hex));
            }
            Platform::Maven => {
                if let Some(maven) = maven::MavenAdapter::from_config(&config.platforms.maven)? {
                    adapters = adapters.with(Platform::Maven, Arc::new(maven));
                }
            }
        }
    }
    Ok(adapters)
}

/// Refuses a sealed file above `limit` bytes by its size alone, before anything reads it
/// into memory; `kind` names such files in the message ("npm tarballs").
pub(crate) fn refuse_above(sealed: &Sealed, limit: u64, kind: &str) -> Result<(), PlatformError> {
    if sealed.size() <= limit {
        return Ok(());
    }
    Err(PlatformError::permanent(format!(
        "{} is {} bytes; {kind} above {limit} bytes are refused",
        sealed.path(),
        sealed.size()
    )))
}

/// A platform section with one URL or token set, for each of the six that enable an index
/// platform (`configured()` of pypi and maven), named for the test's messages.
#[cfg(test)]
pub(crate) fn one_setting_each() -> Vec<(&'static str, crate::config::PlatformConfig)> {
    let url = || Some(url::Url::parse("http://127.0.0.1:1/").unwrap_or_else(|e| panic!("{e}")));
    let token = || Some(crate::secret::Secret::new("x"));
    let d = crate::config::PlatformConfig::default;
    vec![
        (
            "base_url",
            crate::config::PlatformConfig {
                base_url: url(),
                ..d()
            },
        ),
        (
            "staging_base_url",
            crate::config::PlatformConfig {
                staging_base_url: url(),
                ..d()
            },
        ),
        (
            "read_url",
            crate::config::PlatformConfig {
                read_url: url(),
                ..d()
            },
        ),
        (
            "staging_read_url",
            crate::config::PlatformConfig {
                staging_read_url: url(),
                ..d()
            },
        ),
        (
            "token",
            crate::config::PlatformConfig {
                token: token(),
                ..d()
            },
        ),
        (
            "staging_token",
            crate::config::PlatformConfig {
                staging_token: token(),
                ..d()
            },
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_above_a_size_limit_are_refused_by_their_size() {
        let five = crate::seal::sealed_for_test("dist/a.tgz", b"12345");
        assert!(refuse_above(&five, 5, "tarballs").is_ok());
        assert!(refuse_above(&five, 6, "tarballs").is_ok());
        let err = refuse_above(&five, 4, "tarballs").unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent);
        assert_eq!(
            err.message,
            "dist/a.tgz is 5 bytes; tarballs above 4 bytes are refused"
        );
    }

    #[test]
    fn only_configured_platforms_get_adapters() {
        let config = crate::config::Config::default();
        assert_eq!(from_config(&config).unwrap().platforms(), vec![]);
        let why = enablement(&config);
        // What `atr-dist config` tells operators agrees.
        let enabled: Vec<_> = why.iter().filter(|e| e.enabled).collect();
        assert!(enabled.is_empty(), "{enabled:?}");
        let npm = why.iter().find(|e| e.platform == Platform::Npm).unwrap();
        assert!(!npm.enabled);
        assert!(
            npm.reason
                .contains("set [platforms.npm] base_url (ATR_DIST_PLATFORMS__NPM__BASE_URL) or ATR_DIST_PLATFORMS__NPM__TOKEN"),
            "{}",
            npm.reason
        );

        // A token alone means the public registry; a base_url alone, that registry.
        let mut config = crate::config::Config::default();
        config.platforms.npm.token = Some(crate::secret::Secret::new("npm_x"));
        config.platforms.npm_scoped.base_url = Some("http://127.0.0.1:4873/".parse().unwrap());
        config.platforms.docker_hub.username = Some("apache".into());
        config.platforms.docker_hub.token = Some(crate::secret::Secret::new("dckr_pat_x"));
        assert_eq!(
            from_config(&config).unwrap().platforms(),
            vec![Platform::DockerHub, Platform::Npm, Platform::NpmScoped]
        );
        let why = enablement(&config);
        let reason = |p: Platform| why.iter().find(|e| e.platform == p).unwrap().reason.clone();
        assert_eq!(
            reason(Platform::Npm),
            "credentials set; base_url defaults to https://registry.npmjs.org/"
        );
        assert_eq!(
            reason(Platform::NpmScoped),
            "base_url = http://127.0.0.1:4873/"
        );
        assert_eq!(
            reason(Platform::Pypi),
            "not configured: set [platforms.pypi] staging_base_url and base_url (ATR_DIST_PLATFORMS__PYPI__STAGING_BASE_URL, ATR_DIST_PLATFORMS__PYPI__BASE_URL) or ATR_DIST_PLATFORMS__PYPI__STAGING_TOKEN and ATR_DIST_PLATFORMS__PYPI__TOKEN"
        );
        assert_eq!(
            reason(Platform::Hex),
            "not configured: set [platforms.hex] base_url (ATR_DIST_PLATFORMS__HEX__BASE_URL) or ATR_DIST_PLATFORMS__HEX__TOKEN"
        );
        assert_eq!(
            reason(Platform::Github),
            "not configured: set [platforms.github] base_url (ATR_DIST_PLATFORMS__GITHUB__BASE_URL) or ATR_DIST_PLATFORMS__GITHUB__TOKEN"
        );
        let maven = why.iter().find(|e| e.platform == Platform::Maven).unwrap();
        assert!(!maven.enabled);
        assert!(
            maven
                .reason
                .starts_with("not configured: set [platforms.maven] staging_base_url"),
            "{}",
            maven.reason
        );
        config.platforms.pypi.token = Some(crate::secret::Secret::new("pypi-x"));
        // Artifact Hub takes no credentials: an instance's URL enables it.
        config.platforms.artifact_hub.staging_base_url =
            Some("https://staging.artifacthub.io".parse().unwrap());
        let why = enablement(&config);
        let hub = why
            .iter()
            .find(|e| e.platform == Platform::ArtifactHub)
            .unwrap();
        assert_eq!(
            hub.reason,
            "stage checks https://staging.artifacthub.io/, promote waits for https://artifacthub.io/"
        );
        config.platforms.hex.token = Some(crate::secret::Secret::new("hex-key"));
        let why = enablement(&config);
        assert_eq!(
            why.iter()
                .find(|e| e.platform == Platform::Hex)
                .unwrap()
                .reason,
            "credentials set; base_url defaults to https://hex.pm/api"
        );
        config.platforms.maven.staging_base_url =
            Some("http://127.0.0.1:8081/service/local/".parse().unwrap());
        let why = enablement(&config);
        let maven = why.iter().find(|e| e.platform == Platform::Maven).unwrap();
        assert!(maven.enabled);
        assert_eq!(
            maven.reason,
            "verifies staging at http://127.0.0.1:8081/service/local/ (https://repository.apache.org/content/groups/staging/); promotion disabled by policy for every project"
        );
        let pypi = why.iter().find(|e| e.platform == Platform::Pypi).unwrap();
        assert_eq!(
            pypi.reason,
            "stages to https://test.pypi.org/legacy/, promotes to https://upload.pypi.org/legacy/"
        );
        let adapters = from_config(&config).unwrap();
        assert_eq!(
            adapters.platforms(),
            vec![
                Platform::ArtifactHub,
                Platform::DockerHub,
                Platform::Maven,
                Platform::Npm,
                Platform::NpmScoped,
                Platform::Pypi,
                Platform::Hex
            ]
        );
        // GitHub: a token alone means github.com, with its separate uploads host.
        config.platforms.github.token = Some(crate::secret::Secret::new("ghp_x"));
        let why = enablement(&config);
        let github = why.iter().find(|e| e.platform == Platform::Github).unwrap();
        assert_eq!(
            github.reason,
            "releases at https://api.github.com/, assets uploaded to https://uploads.github.com/"
        );
        let adapters = from_config(&config).unwrap();
        assert!(adapters.get(Platform::Github).is_some());
        // Each adapter promotes the way the platform table says.
        for platform in adapters.platforms() {
            assert_eq!(
                adapters.get(platform).unwrap().promotion(),
                platform.value().promotion_mechanism,
                "{platform}"
            );
        }
    }

    /// A username is a credential for OCI registries only: alone, it enables Docker Hub
    /// (whose adapter then asks for the token that must go with it), and nothing else.
    #[test]
    fn a_username_alone_enables_only_docker_hub() {
        let mut config = crate::config::Config::default();
        config.platforms.npm.username = Some("apache".into());
        config.platforms.hex.username = Some("apache".into());
        config.platforms.docker_hub.username = Some("apache".into());
        let enabled: Vec<Platform> = enablement(&config)
            .into_iter()
            .filter(|e| e.enabled)
            .map(|e| e.platform)
            .collect();
        assert_eq!(enabled, vec![Platform::DockerHub]);
        let err = from_config(&config).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("a username is set without a token"), "{err}");
    }
}
