//! Artifact Hub (`ARTIFACT_HUB`): verify only. Artifact Hub pulls a Helm chart's metadata
//! from the chart repository it tracks; nobody uploads to it, so this adapter never writes
//! (`plan_stage` and `plan_promote` are empty) and only reads Artifact Hub's public API, with
//! no credentials.
//!
//! - **Stage** checks that Artifact Hub knows the package's repository: the staging instance
//!   (`staging_base_url`, e.g. `https://staging.artifacthub.io`) when one is configured,
//!   else production. The distribution's `owner_namespace` is the Artifact Hub repository
//!   name, its `package` the chart name. The version need not be indexed yet: a chart is
//!   usually published to its repository only after the vote. Files the job names are
//!   checked by name (`<package>-<version>.tgz`, Helm's archive name, and its `.prov`).
//! - **Promote** (`PromotionMechanism::None`) waits until the version is listed in
//!   `available_versions` of production, as persisted waits ([`PlatformError::not_yet`],
//!   bounded by `wait_deadline_secs`), then records its `ts` as the upload date and its web
//!   page `<base_url>/packages/helm/<repo>/<package>/<version>`.
//!
//! Requests (artifacthub/hub `docs/api/openapi.yaml`):
//! - `GET <base>/api/v1/packages/helm/<repo>/<package>`: `HelmPackage`, of which `name`,
//!   `repository.name` and `available_versions[].{version, ts}` are used; 404 when Artifact
//!   Hub has no such package.
//! - `GET <base>/api/v1/repositories/search?name=<repo>&kind=0&limit=60&offset=<n>`: the
//!   Helm repositories whose name matches (a pattern match: the exact name is picked out
//!   here), to tell a package not indexed yet from a repository Artifact Hub does not track.
//!
//! A 404 for the package is decided by the repository: known, the package is not indexed
//! yet (the first version of a new chart), and the job waits; unknown, the job is refused
//! (`permanent`), since only a person registering the repository on Artifact Hub can change
//! that. A 429, which Artifact Hub sends without `Retry-After`, is a wait too: after the
//! attempt's own bounded retries, at least a minute ([`RATE_LIMITED_WAIT`]) and longer as
//! the waits grow.
//!
//! **What is and is not verified.** Artifact Hub's API exposes no digest of a chart's
//! content: `Package` has none, and `Repository.digest` is a digest of the repository's
//! metadata that changes whenever anything in the repository does. So nothing here proves
//! that the chart Artifact Hub lists is the voted archive; what is verified is that the
//! repository is known, that Artifact Hub answers for this repository and chart name, and
//! that the version is listed. The platform digest recorded is therefore an identity, not a
//! content digest: `sha256` of the text `artifacthub:helm/<repo>/<package>@<version>`. It is
//! the same on staging and production, so the pipeline's "staged == promoted" checks hold,
//! and it changes if the job's repository, chart or version does.

use std::time::Duration;

use atr_dist_shared::names::DistTag;
use atr_dist_shared::{Digest, DistributionKey, PromotionMechanism};
use futures::FutureExt;
use futures::future::BoxFuture;
use reqwest::StatusCode;
use reqwest::header::ACCEPT;
use serde::Deserialize;
use url::Url;

use super::http::{PlatformHttp, error_for};
use super::{
    Observed, PlannedWrite, PlatformAdapter, PlatformError, PromoteRequest, StageRequest, Staging,
};
use crate::config::{ConfigError, PlatformConfig};

pub const DEFAULT_BASE_URL: &str = "https://artifacthub.io/";
const SECTION: &str = "platforms.artifact_hub";

/// The least wait after a 429: Artifact Hub sends no `Retry-After`, and asking again within
/// seconds would only prolong the limit.
pub const RATE_LIMITED_WAIT: Duration = Duration::from_secs(60);

/// Repository search pages of the API's largest size, and how many are read at most.
const PAGE: usize = 60;
const MAX_PAGES: usize = 20;

/// Artifact Hub's repository kind for Helm charts.
const HELM_KIND: u64 = 0;

/// Where the adapter reads and how it waits.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The production instance's site root (the API is under `api/v1/`).
    pub base_url: Url,
    /// The instance stage checks, when it is not production.
    pub staging_base_url: Option<Url>,
    /// The least wait after a 429 without `Retry-After`.
    pub rate_limited_wait: Duration,
}

pub struct ArtifactHubAdapter {
    http: PlatformHttp,
    production: Url,
    staging: Option<Url>,
    rate_limited_wait: Duration,
}

/// The fields of `HelmPackage` this adapter reads.
#[derive(Debug, Deserialize)]
struct Package {
    name: String,
    repository: RepositorySummary,
    available_versions: Vec<AvailableVersion>,
}

#[derive(Debug, Deserialize)]
struct RepositorySummary {
    name: String,
}

#[derive(Debug, Deserialize)]
struct AvailableVersion {
    version: String,
    ts: i64,
}

/// What production lists for a distribution.
enum Listing {
    /// The version, as recorded once promoted.
    Listed(Observed),
    /// The package, without this version.
    NotListed {
        count: usize,
        newest: Option<String>,
    },
    /// No package of this name in this repository (or no such repository).
    NoPackage,
}

/// The fields of `Repository` (search results) this adapter reads.
#[derive(Debug, Deserialize)]
struct Repository {
    name: String,
    kind: u64,
}

fn with_slash(url: Url) -> Url {
    if url.path().ends_with('/') {
        return url;
    }
    let mut url = url;
    let path = format!("{}/", url.path());
    url.set_path(&path);
    url
}

/// `base` with `segments` appended, each escaped as one path segment.
fn under(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// The repository (the key's owner namespace), the chart and the version.
fn names(key: &DistributionKey) -> (&str, &str, &str) {
    (
        key.owner_namespace.as_str(),
        key.package.as_str(),
        key.version.as_str(),
    )
}

/// The platform digest of a distribution on Artifact Hub: an identity, since Artifact Hub
/// reports no digest of a chart's content (see the module documentation).
pub fn identity_digest(key: &DistributionKey) -> Digest {
    let (repo, package, version) = names(key);
    crate::seal::sha256_of(format!("artifacthub:helm/{repo}/{package}@{version}").as_bytes())
}

/// The file names a job may name for a chart: the archive Helm packages it as, and its
/// provenance file.
fn chart_files(key: &DistributionKey) -> [String; 2] {
    let (_, package, version) = names(key);
    let archive = format!("{package}-{version}.tgz");
    let provenance = format!("{archive}.prov");
    [archive, provenance]
}

impl ArtifactHubAdapter {
    pub fn new(settings: Settings) -> Result<ArtifactHubAdapter, PlatformError> {
        let production = with_slash(settings.base_url);
        let staging = settings.staging_base_url.map(with_slash);
        let mut bases = vec![&production];
        bases.extend(staging.as_ref());
        let http = PlatformHttp::new(&bases, None)?;
        Ok(ArtifactHubAdapter {
            http,
            production,
            staging,
            rate_limited_wait: settings.rate_limited_wait,
        })
    }

    /// The adapter for `[platforms.artifact_hub]`, when the section configures an instance
    /// (see [`configured`]).
    pub fn from_config(config: &PlatformConfig) -> Result<Option<ArtifactHubAdapter>, ConfigError> {
        if configured(config).is_none() {
            return Ok(None);
        }
        // Keys that mean something elsewhere and nothing here: set, they would suggest the
        // adapter authenticates or reads elsewhere, which it does not.
        let unused = [
            ("username", config.username.is_some()),
            ("token", config.token.is_some()),
            ("staging_token", config.staging_token.is_some()),
            ("read_url", config.read_url.is_some()),
            ("staging_read_url", config.staging_read_url.is_some()),
        ];
        if let Some((key, _)) = unused.iter().find(|(_, set)| *set) {
            return Err(ConfigError::Invalid {
                key: format!("{SECTION}.{key}"),
                reason: "Artifact Hub is only read, through its public API, with no credentials and at base_url (and staging_base_url); remove this key".to_owned(),
            });
        }
        let base_url = config.base_url.clone().unwrap_or_else(|| {
            Url::parse(DEFAULT_BASE_URL).unwrap_or_else(|e| unreachable!("{e}"))
        });
        ArtifactHubAdapter::new(Settings {
            base_url,
            staging_base_url: config.staging_base_url.clone(),
            rate_limited_wait: RATE_LIMITED_WAIT,
        })
        .map(Some)
        .map_err(|e| ConfigError::Invalid {
            key: SECTION.to_owned(),
            reason: e.message,
        })
    }

    /// The instance stage checks.
    fn staging_base(&self) -> &Url {
        self.staging.as_ref().unwrap_or(&self.production)
    }

    fn package_url(base: &Url, key: &DistributionKey) -> Url {
        let (repo, package, _) = names(key);
        under(base, &["api", "v1", "packages", "helm", repo, package])
    }

    fn version_url(base: &Url, key: &DistributionKey) -> Url {
        let (repo, package, version) = names(key);
        under(
            base,
            &["api", "v1", "packages", "helm", repo, package, version],
        )
    }

    fn web_url(base: &Url, key: &DistributionKey) -> Url {
        let (repo, package, version) = names(key);
        under(base, &["packages", "helm", repo, package, version])
    }

    /// A 429 left after the attempt's own retries becomes a wait; anything else stays.
    fn waited_on(&self, e: PlatformError, base: &Url) -> PlatformError {
        if e.http_status != Some(StatusCode::TOO_MANY_REQUESTS.as_u16()) {
            return e;
        }
        let after = e
            .retry_after
            .unwrap_or(self.rate_limited_wait)
            .max(self.rate_limited_wait);
        PlatformError::not_yet(
            format!(
                "Artifact Hub at {base} is rate limiting this worker ({})",
                e.message
            ),
            after,
        )
        .with_status(StatusCode::TOO_MANY_REQUESTS.as_u16())
    }

    async fn get(
        &self,
        what: &str,
        url: &Url,
        base: &Url,
    ) -> Result<reqwest::Response, PlatformError> {
        let resp = self
            .http
            .send(what, |c| {
                c.get(url.clone()).header(ACCEPT, "application/json")
            })
            .await
            .map_err(|e| self.waited_on(e, base))?;
        Ok(resp)
    }

    /// The package as `base` lists it, or `None` when it has no such package.
    async fn package(
        &self,
        base: &Url,
        key: &DistributionKey,
    ) -> Result<Option<Package>, PlatformError> {
        let url = Self::package_url(base, key);
        let what = format!("GET {url}");
        let resp = self.get(&what, &url, base).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            s if s.is_success() => {}
            _ => return Err(self.waited_on(error_for(resp, &what).await, base)),
        }
        let package: Package = resp.json().await.map_err(|e| {
            PlatformError::transient(format!("{what}: not a package document: {e}"))
        })?;
        let (repo, name, _) = names(key);
        // Artifact Hub answering for another chart or repository would make every check
        // below meaningless.
        if package.name != name || package.repository.name != repo {
            return Err(PlatformError::permanent(format!(
                "{what}: Artifact Hub answered with chart {} of repository {}, not {name} of {repo}",
                package.name, package.repository.name
            )));
        }
        Ok(Some(package))
    }

    /// Whether `base` tracks a Helm repository named `repo`.
    async fn repository_known(&self, base: &Url, repo: &str) -> Result<bool, PlatformError> {
        let search = under(base, &["api", "v1", "repositories", "search"]);
        for page in 0..MAX_PAGES {
            let mut url = search.clone();
            url.query_pairs_mut()
                .append_pair("name", repo)
                .append_pair("kind", &HELM_KIND.to_string())
                .append_pair("limit", &PAGE.to_string())
                .append_pair("offset", &(page * PAGE).to_string());
            let what = format!("GET {url}");
            let resp = self.get(&what, &url, base).await?;
            if !resp.status().is_success() {
                return Err(self.waited_on(error_for(resp, &what).await, base));
            }
            let found: Vec<Repository> = resp.json().await.map_err(|e| {
                PlatformError::transient(format!("{what}: not a list of repositories: {e}"))
            })?;
            if found.iter().any(|r| r.name == repo && r.kind == HELM_KIND) {
                return Ok(true);
            }
            if found.len() < PAGE {
                return Ok(false);
            }
        }
        // Asking again would read the same pages: an operator has to look.
        Err(PlatformError::permanent(format!(
            "Artifact Hub at {base}: more than {} repositories match the name {repo} and none of those read is it; cannot tell whether it is tracked",
            PAGE * MAX_PAGES
        )))
    }

    /// What stage checks: the repository is known to the staging instance (production when
    /// none is configured). `None` when it is not.
    async fn staged(&self, key: &DistributionKey) -> Result<Option<Observed>, PlatformError> {
        let base = self.staging_base();
        let indexed = match self.package(base, key).await? {
            Some(package) => Some(package),
            None if self.repository_known(base, &key.owner_namespace).await? => None,
            None => return Ok(None),
        };
        let (_, _, version) = names(key);
        let listed = indexed
            .as_ref()
            .and_then(|p| p.available_versions.iter().find(|v| v.version == version));
        Ok(Some(Observed {
            digest: identity_digest(key),
            api_url: Some(Self::version_url(base, key).to_string()),
            web_url: listed.map(|_| Self::web_url(base, key).to_string()),
            upload_date: listed.and_then(|v| chrono::DateTime::from_timestamp(v.ts, 0)),
        }))
    }

    /// What production lists for the distribution.
    async fn listing(&self, key: &DistributionKey) -> Result<Listing, PlatformError> {
        let base = &self.production;
        let Some(package) = self.package(base, key).await? else {
            return Ok(Listing::NoPackage);
        };
        let (_, _, version) = names(key);
        let Some(listed) = package
            .available_versions
            .iter()
            .find(|v| v.version == version)
        else {
            return Ok(Listing::NotListed {
                count: package.available_versions.len(),
                newest: package
                    .available_versions
                    .iter()
                    .max_by_key(|v| v.ts)
                    .map(|v| v.version.clone()),
            });
        };
        Ok(Listing::Listed(Observed {
            digest: identity_digest(key),
            api_url: Some(Self::version_url(base, key).to_string()),
            web_url: Some(Self::web_url(base, key).to_string()),
            upload_date: chrono::DateTime::from_timestamp(listed.ts, 0),
        }))
    }

    /// Files named by the job must be this chart's archive or its provenance file: Artifact
    /// Hub takes no files, and those are the only ones it relates to the distribution.
    fn check_files(req: &StageRequest) -> Result<(), PlatformError> {
        let allowed = chart_files(&req.key);
        for artifact in &req.artifacts {
            let path = artifact.path().as_str();
            let file = path.rsplit('/').next().unwrap_or(path);
            if !allowed.iter().any(|a| a == file) {
                return Err(PlatformError::permanent(format!(
                    "{path}: Artifact Hub takes no files, and a job for it may name only the chart's archive {} and its provenance file {} (checked by name against the distribution)",
                    allowed[0], allowed[1]
                )));
            }
        }
        Ok(())
    }
}

/// The staging and production instances, when `[platforms.artifact_hub]` sets `base_url` or
/// `staging_base_url`; the production default is Artifact Hub's public instance.
pub fn configured(config: &PlatformConfig) -> Option<(String, String)> {
    if config.base_url.is_none() && config.staging_base_url.is_none() {
        return None;
    }
    let production = config
        .base_url
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned());
    let staging = config
        .staging_base_url
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_else(|| production.clone());
    Some((staging, production))
}

impl PlatformAdapter for ArtifactHubAdapter {
    fn expected_digest<'a>(
        &'a self,
        req: &'a StageRequest,
    ) -> BoxFuture<'a, Result<Digest, PlatformError>> {
        async move {
            Self::check_files(req)?;
            Ok(identity_digest(&req.key))
        }
        .boxed()
    }

    /// Artifact Hub is only read: no writes.
    fn plan_stage(&self, _req: &StageRequest) -> Vec<PlannedWrite> {
        Vec::new()
    }

    /// Called when `read_staged` found nothing: says why, as a refusal, unless the
    /// repository became known in between.
    fn stage<'a>(&'a self, req: &'a StageRequest) -> BoxFuture<'a, Result<(), PlatformError>> {
        async move {
            if self.staged(&req.key).await?.is_some() {
                return Ok(());
            }
            let (repo, package, version) = names(&req.key);
            Err(PlatformError::permanent(format!(
                "Artifact Hub at {} tracks no Helm repository named {repo}, so {package} {version} cannot appear there: a publisher must add the repository on Artifact Hub (or the job must name the right one as its owner_namespace); nothing was sent",
                self.staging_base()
            ))
            .with_status(StatusCode::NOT_FOUND.as_u16()))
        }
        .boxed()
    }

    fn read_staged<'a>(
        &'a self,
        key: &'a DistributionKey,
        _staging_tag: &'a DistTag,
    ) -> BoxFuture<'a, Result<Option<Observed>, PlatformError>> {
        self.staged(key).boxed()
    }

    /// Artifact Hub is only read: no writes.
    fn plan_promote(&self, _req: &PromoteRequest) -> Vec<PlannedWrite> {
        Vec::new()
    }

    /// Called when `read_promoted` found the version not listed: a wait while it may still
    /// come, a refusal when it cannot.
    fn promote<'a>(&'a self, req: &'a PromoteRequest) -> BoxFuture<'a, Result<(), PlatformError>> {
        async move {
            if req.staged_digest != identity_digest(&req.key) {
                return Err(PlatformError::permanent(format!(
                    "{}: staged as {}, which is not this distribution's Artifact Hub identity {}",
                    req.key,
                    req.staged_digest,
                    identity_digest(&req.key)
                )));
            }
            let base = &self.production;
            let (repo, package, version) = names(&req.key);
            match self.listing(&req.key).await? {
                // Listed since the pipeline's read: the read after promote records it.
                Listing::Listed(_) => Ok(()),
                Listing::NotListed { count, newest } => Err(PlatformError::not_yet(
                    format!(
                        "{repo}/{package} {version} is not in Artifact Hub's available_versions at {base} yet ({count} versions listed, newest {}); Artifact Hub lists a version once it has indexed the chart repository again",
                        newest.as_deref().unwrap_or("none")
                    ),
                    Duration::ZERO,
                )),
                // Decided by the repository: a person has to register an unknown one, while
                // a known one's new chart only needs indexing.
                Listing::NoPackage if self.repository_known(base, repo).await? => {
                    Err(PlatformError::not_yet(
                        format!(
                            "Artifact Hub at {base} tracks the repository {repo} but has not indexed the chart {package} yet; waiting for it to list {version}"
                        ),
                        Duration::ZERO,
                    ))
                }
                Listing::NoPackage => Err(PlatformError::permanent(format!(
                    "Artifact Hub at {base} tracks no Helm repository named {repo}, so {package} {version} can never appear there: a publisher must add the repository on Artifact Hub (or the job must name the right one as its owner_namespace)"
                ))
                .with_status(StatusCode::NOT_FOUND.as_u16())),
            }
        }
        .boxed()
    }

    fn read_promoted<'a>(
        &'a self,
        key: &'a DistributionKey,
        _release_tag: &'a DistTag,
    ) -> BoxFuture<'a, Result<Option<Observed>, PlatformError>> {
        async move {
            match self.listing(key).await? {
                Listing::Listed(observed) => Ok(Some(observed)),
                // `promote` tells a version still to come from a repository never to come.
                Listing::NotListed { .. } | Listing::NoPackage => Ok(None),
            }
        }
        .boxed()
    }

    /// Tags mean nothing on Artifact Hub: they are only recorded.
    fn default_tags(&self, _key: &DistributionKey) -> (DistTag, DistTag) {
        (
            DistTag::new("staging").unwrap_or_else(|_| DistTag::latest()),
            DistTag::latest(),
        )
    }

    fn staging(&self) -> Staging {
        Staging::Platform
    }

    fn promotion(&self) -> PromotionMechanism {
        PromotionMechanism::None
    }
}

#[cfg(test)]
mod tests {
    use atr_dist_shared::Platform;
    use atr_dist_shared::names::{PackageName, ReleaseKey, Version};

    use super::*;

    fn key(repo: &str, package: &str, version: &str) -> DistributionKey {
        DistributionKey::new(
            ReleaseKey::new(format!("example-{version}")).unwrap(),
            Platform::ArtifactHub,
            repo,
            PackageName::new(package).unwrap(),
            Version::new(version).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn urls_escape_each_segment_under_the_base() {
        let base = with_slash(Url::parse("https://hub.example/mirror").unwrap());
        let k = key("apache-airflow", "airflow", "1.2.0+build.1");
        assert_eq!(
            ArtifactHubAdapter::version_url(&base, &k).as_str(),
            "https://hub.example/mirror/api/v1/packages/helm/apache-airflow/airflow/1.2.0+build.1"
        );
        assert_eq!(
            ArtifactHubAdapter::web_url(&base, &k).as_str(),
            "https://hub.example/mirror/packages/helm/apache-airflow/airflow/1.2.0+build.1"
        );
        let slashed = under(&base, &["a/b", "c"]);
        assert_eq!(slashed.as_str(), "https://hub.example/mirror/a%2Fb/c");
    }

    #[test]
    fn the_identity_digest_names_repository_chart_and_version() {
        let a = identity_digest(&key("apache-airflow", "airflow", "1.2.0"));
        assert_eq!(
            a,
            crate::seal::sha256_of(b"artifacthub:helm/apache-airflow/airflow@1.2.0")
        );
        assert_ne!(
            a,
            identity_digest(&key("apache-airflow", "airflow", "1.2.1"))
        );
        assert_ne!(a, identity_digest(&key("other", "airflow", "1.2.0")));
        assert_ne!(
            a,
            identity_digest(&key("apache-airflow", "airflow2", "1.2.0"))
        );
    }

    #[test]
    fn enabled_only_with_an_instance_configured() {
        let mut c = PlatformConfig::default();
        assert_eq!(configured(&c), None);
        assert!(ArtifactHubAdapter::from_config(&c).unwrap().is_none());
        c.staging_base_url = Some(Url::parse("https://staging.artifacthub.io").unwrap());
        assert_eq!(
            configured(&c),
            Some((
                "https://staging.artifacthub.io/".to_owned(),
                DEFAULT_BASE_URL.to_owned()
            ))
        );
        assert!(ArtifactHubAdapter::from_config(&c).unwrap().is_some());
        c.token = Some(crate::secret::Secret::new("x"));
        let err = ArtifactHubAdapter::from_config(&c)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("platforms.artifact_hub.token") && err.contains("no credentials"),
            "{err}"
        );
    }
}
