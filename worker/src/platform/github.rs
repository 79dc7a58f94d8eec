//! GitHub Releases: stage = a pre-release for the version's git tag holding every voted file
//! as an asset; promote = the same release, in place, turned into a full release
//! (`PromotionMechanism::ApiPatch`).
//!
//! # Repository and tag
//!
//! A distribution's `owner_namespace` is the GitHub owner (user or organisation; the key's
//! rules: at most 39 letters, digits and hyphens) and its `package` the repository, as in
//! ATR's `template_url` (`/repos/{owner_namespace}/{package}/releases/tags/v{version}`).
//! The release is the one for a git tag. A `DistTag` cannot look like a version (npm's
//! rule), so the tags of a job name the git tag this way: the word `version` (the default
//! for both the staging and the release tag) means `v<version>`, as in ATR's template; any
//! other tag is the git tag's name itself (`apache-arrow-15.0.0`). Staging and production
//! are one release, so a promote job naming a release tag must name the staged one. The
//! tag must exist in the repository before staging: creating a release for a missing tag
//! makes GitHub tag the default branch's head, which is not what was voted on. atr-dist
//! never creates or moves tags.
//!
//! # Stage
//!
//! 1. Find the release for the tag: `GET /repos/{o}/{r}/releases/tags/{tag}` (published
//!    ones), else a draft for that tag in `GET /repos/{o}/{r}/releases` (drafts have no tag
//!    yet and are only listed). None: check the tag exists (`GET …/git/ref/tags/{tag}`)
//!    and create a **draft** pre-release, `POST …/releases {tag_name, name, draft: true,
//!    prerelease: true, make_latest: "false"}`.
//! 2. Read its assets (`GET …/releases/{id}/assets`, paginated). An asset with a voted
//!    file's name and its sha256 is adopted; one left in state `starter` by a failed
//!    upload is deleted (`DELETE …/releases/assets/{id}`) and uploaded again; one with
//!    another digest, or assets that were not voted, refuse the stage before anything is
//!    sent: an asset is never overwritten and nothing atr-dist did not upload is deleted.
//! 3. Upload each missing file through the release's `upload_url` (an RFC 6570 template,
//!    `https://uploads.github.com/repos/{o}/{r}/releases/{id}/assets{?name,label}`, expanded
//!    with `name`), the sealed bytes as `application/octet-stream`. The uploads host is not
//!    the API host: it must be the configured `upload_url`'s origin (by default
//!    `https://uploads.github.com` for github.com, the API's own origin elsewhere), else
//!    nothing is sent there, and the token never goes anywhere else.
//! 4. Read every asset back and require each voted file with state `uploaded` and
//!    `digest` = `sha256:<the sealed bytes' sha256>`, and no other asset.
//! 5. Publish the draft, still a pre-release and not latest: `PATCH …/releases/{id}
//!    {draft: false, prerelease: true, make_latest: "false"}`.
//!
//! Why a draft first: in a repository with immutable releases, a release is frozen when it
//! is published, and a pre-release created published would be frozen with no assets, its
//! tag burned for good. Uploading into a draft and publishing last works in every
//! repository, and nobody sees a half-uploaded release. A published pre-release that is
//! found instead (made by hand, or by a release that is not immutable) is completed in place
//! when it is mutable; an **immutable** release whose assets are not the voted ones is
//! refused, naming what it holds: GitHub allows no change to its assets, ever.
//!
//! # Promote
//!
//! Re-read the release and its assets; if the asset set or any digest differs from what was
//! staged, refuse (for an immutable release, saying that it can never be changed). Then
//! `PATCH …/releases/{id} {prerelease: false, make_latest: "true"}`, and read it back. A
//! release that is no longer a pre-release and holds the staged assets is promoted
//! already: nothing is written.
//!
//! # Digest
//!
//! The platform digest of a release is one sha256 over its assets: the lines
//! `<asset name> <sha256 hex>\n`, sorted by name, hashed together (the spelling PyPI's
//! adapter uses for a version's files). An asset GitHub reports without a sha256 digest
//! counts as `<name> no-digest`, one not yet uploaded as `<name> state-<state>`, so such a
//! release never equals a vote. The same files under the same names give the same digest
//! before and after promotion.
//!
//! # Writes, limits and permissions
//!
//! Every write whose outcome is not known (lost answer, 5xx) is settled by reading the
//! release back (`write.rs`). GitHub's limits are waits, not failures
//! ([`PlatformError::not_yet`]): a 403 or 429 with `x-ratelimit-remaining: 0` waits until
//! `x-ratelimit-reset`; a secondary limit (403 or 429 saying so, or with `retry-after`)
//! waits `retry-after`, or 60 s when GitHub names no time. A 429 is never retried inside
//! the attempt (the hold rule [`rate_limited`] given to `PlatformHttp::holding`): asking
//! again within seconds only spends the budget on refusals. Any other 403 means the token may not
//! do this: an `auth` failure naming the permission GitHub asks for
//! (`x-accepted-github-permissions`, `contents=write` for every write here). GitHub answers
//! 404 instead of 403 where the token cannot see a private repository; creating the
//! release, that is an `auth` failure too.

use std::collections::HashSet;
use std::time::Duration;

use atr_dist_shared::names::DistTag;
use atr_dist_shared::{Digest, DistributionKey, ErrorClass, PromotionMechanism};
use futures::FutureExt;
use futures::future::BoxFuture;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use url::Url;

use super::http::{PlatformHttp, error_for, retry_after};
use super::write::{Found, Written, confirmed};
use super::{
    Observed, PlannedWrite, PlatformAdapter, PlatformError, PromoteRequest, Sealed, StageRequest,
};
use crate::config::{ConfigError, PlatformConfig};
use crate::secret::Secret;

pub const DEFAULT_API: &str = "https://api.github.com/";
pub const DEFAULT_UPLOADS: &str = "https://uploads.github.com/";
/// The tag word meaning "the git tag `v<version>`" (module docs).
pub const TAG_VERSION: &str = "version";
/// The REST API version every request asks for.
pub const API_VERSION: &str = "2022-11-28";
const MEDIA_TYPE: &str = "application/vnd.github+json";
const SECTION: &str = "platforms.github";
/// GitHub's cap on a page.
const PER_PAGE: usize = 100;
/// Pages of releases searched for a draft, and of assets read (GitHub allows 1000 assets
/// per release).
const MAX_PAGES: usize = 10;
/// How long a secondary rate limit is waited out when GitHub names no time: its
/// documentation says "at least one minute".
const SECONDARY_WAIT: Duration = Duration::from_secs(60);

/// Where the adapter talks to GitHub.
#[derive(Debug, Clone)]
pub struct GithubSettings {
    /// The REST API's base (`https://api.github.com/`, `https://ghe.example/api/v3/`).
    pub api: Url,
    /// The origin release assets are uploaded to; a release's `upload_url` must be on it.
    pub uploads: Url,
    pub token: Option<Secret>,
}

pub struct GithubAdapter {
    http: PlatformHttp,
    api: Url,
    uploads: Url,
}

/// `owner/repo`, checked against GitHub's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Repo {
    owner: String,
    name: String,
}

impl std::fmt::Display for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

fn repo_of(key: &DistributionKey) -> Result<Repo, PlatformError> {
    // The owner was checked with the key (GitHub's owner rule); the repository name is a
    // package name (letters, digits, `._-`), which GitHub caps at 100 characters.
    let name = key.package.as_str();
    if name.len() > 100 {
        return Err(PlatformError::permanent(format!(
            "{name:?} is not a GitHub repository name: at most 100 characters"
        )));
    }
    if key.owner_namespace.is_empty() {
        return Err(PlatformError::permanent(
            "a GitHub distribution needs the repository's owner as its owner namespace",
        ));
    }
    Ok(Repo {
        owner: key.owner_namespace.clone(),
        name: name.to_owned(),
    })
}

/// The git tag a job's `DistTag` names: `version` is `v<version>`, anything else itself.
fn git_tag(key: &DistributionKey, tag: &DistTag) -> Result<String, PlatformError> {
    let name = match tag.as_str() {
        TAG_VERSION => format!("v{}", key.version),
        other => other.to_owned(),
    };
    // A DistTag or version has no '/', '~', '^', ':', spaces or "..": what is left of git's
    // ref name rules is the end.
    if name.ends_with(".lock") || name.ends_with('.') {
        return Err(PlatformError::permanent(format!(
            "{name:?} cannot be a git tag (it ends with \".lock\" or \".\")"
        )));
    }
    Ok(name)
}

/// A voted file as an asset: its name (the path's last component) and sha256.
struct File<'a> {
    name: String,
    sha256: String,
    sealed: &'a Sealed,
}

/// The asset names of the voted files, which GitHub must not rename: it renames names with
/// characters other than letters, digits and `._-`, or a leading or trailing `.`, and the
/// renamed asset could not be matched with its file.
fn files(artifacts: &[Sealed]) -> Result<Vec<File<'_>>, PlatformError> {
    if artifacts.is_empty() {
        return Err(PlatformError::permanent(
            "no files to upload; a GitHub release needs at least one asset",
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(artifacts.len());
    for sealed in artifacts {
        let path = sealed.path().as_str();
        let name = path.rsplit('/').next().unwrap_or(path).to_owned();
        let plain = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !plain || name.starts_with('.') || name.ends_with('.') {
            return Err(PlatformError::permanent(format!(
                "{name:?} would be renamed by GitHub (asset names keep only letters, digits and ._- and no leading or trailing dot), and the asset could not be matched with the voted file; rename it in the release"
            )));
        }
        if !seen.insert(name.clone()) {
            return Err(PlatformError::permanent(format!(
                "two files are named {name}; a release holds one asset per name"
            )));
        }
        out.push(File {
            name,
            sha256: hex::encode(sealed.sha256().bytes()),
            sealed,
        });
    }
    Ok(out)
}

/// A version's platform digest (`platform::files_digest`).
use super::files_digest as digest_of;

#[derive(Debug, Clone, Deserialize)]
struct Release {
    id: u64,
    tag_name: String,
    draft: bool,
    prerelease: bool,
    /// Absent from GitHub Enterprise Server releases before immutable releases existed.
    #[serde(default)]
    immutable: Option<bool>,
    url: String,
    html_url: Option<String>,
    upload_url: String,
    published_at: Option<String>,
}

impl Release {
    fn immutable(&self) -> bool {
        self.immutable == Some(true)
    }

    fn kind(&self) -> &'static str {
        match (self.draft, self.prerelease) {
            (true, _) => "a draft",
            (false, true) => "a published pre-release",
            (false, false) => "a published full release",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Asset {
    id: u64,
    name: String,
    state: String,
    #[serde(default)]
    digest: Option<String>,
}

impl Asset {
    /// The sha256 hex GitHub reports for a finished upload, if it reports one.
    fn sha256(&self) -> Option<&str> {
        if self.state != "uploaded" {
            return None;
        }
        self.digest.as_deref()?.strip_prefix("sha256:")
    }

    /// What the asset counts as in the release digest (module docs).
    fn digest_part(&self) -> String {
        match (self.state.as_str(), self.sha256()) {
            (_, Some(hex)) => hex.to_ascii_lowercase(),
            ("uploaded", None) => "no-digest".to_owned(),
            (state, None) => format!("state-{state}"),
        }
    }

    fn describe(&self) -> String {
        match (self.state.as_str(), &self.digest) {
            ("uploaded", Some(d)) => format!("{} ({d})", self.name),
            ("uploaded", None) => format!("{} (no digest)", self.name),
            (state, _) => format!("{} (state {state})", self.name),
        }
    }
}

fn release_digest(assets: &[Asset]) -> Digest {
    let parts: Vec<(&str, String)> = assets
        .iter()
        .map(|a| (a.name.as_str(), a.digest_part()))
        .collect();
    digest_of(parts.iter().map(|(n, d)| (*n, d.as_str())))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

/// The hold rule (`PlatformHttp::holding`): a 429 waits until `x-ratelimit-reset` when the
/// limit is used up, else `retry-after`, else [`SECONDARY_WAIT`]; never a retry inside the
/// attempt. (A 403 is not retried anyway: `classify` tells a limit from a permission.)
fn rate_limited(resp: &Response) -> Option<Duration> {
    if resp.status() != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let headers = resp.headers();
    if header_str(headers, "x-ratelimit-remaining") == Some("0") {
        let reset = header_str(headers, "x-ratelimit-reset").and_then(|r| r.parse::<i64>().ok());
        return Some(
            reset
                .map(|at| at - chrono::Utc::now().timestamp())
                .filter(|secs| *secs > 0)
                .map(|secs| Duration::from_secs(secs as u64 + 1))
                .unwrap_or(Duration::from_secs(1)),
        );
    }
    Some(retry_after(headers).unwrap_or(SECONDARY_WAIT))
}

/// GitHub's refusals, classed: rate limits are waits, a missing permission is `auth`
/// naming it, the rest as `error_for` classes them. `create` marks the request that
/// creates the release, where a 404 means the token cannot see or write the repository.
async fn classify(resp: Response, what: &str, create: bool) -> PlatformError {
    let status = resp.status();
    let headers = resp.headers().clone();
    let mut err = error_for(resp, what).await;
    let limited = matches!(
        status,
        StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
    );
    if limited && header_str(&headers, "x-ratelimit-remaining") == Some("0") {
        let reset = header_str(&headers, "x-ratelimit-reset").and_then(|r| r.parse::<i64>().ok());
        let wait = reset
            .map(|at| at - chrono::Utc::now().timestamp())
            .filter(|secs| *secs > 0)
            .map(|secs| Duration::from_secs(secs as u64 + 1))
            .unwrap_or(Duration::from_secs(1));
        let resource = header_str(&headers, "x-ratelimit-resource").unwrap_or("core");
        return PlatformError::not_yet(
            format!(
                "{}; GitHub's {resource} rate limit for this token is used up until {}",
                err.message,
                reset
                    .and_then(|at| chrono::DateTime::from_timestamp(at, 0))
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| "its reset".to_owned())
            ),
            wait,
        )
        .with_status(status.as_u16());
    }
    let secondary = err.message.to_ascii_lowercase().contains("rate limit")
        || headers.contains_key(reqwest::header::RETRY_AFTER);
    if limited && (secondary || status == StatusCode::TOO_MANY_REQUESTS) {
        let wait = retry_after(&headers).unwrap_or(SECONDARY_WAIT);
        return PlatformError::not_yet(
            format!(
                "{}; GitHub's secondary rate limit: waiting {}s",
                err.message,
                wait.as_secs()
            ),
            wait,
        )
        .with_status(status.as_u16());
    }
    if status == StatusCode::FORBIDDEN || (create && status == StatusCode::NOT_FOUND) {
        let wants = header_str(&headers, "x-accepted-github-permissions")
            .filter(|p| !p.is_empty())
            .unwrap_or("contents=write");
        err.class = ErrorClass::Auth;
        err.message = format!(
            "{}; the token lacks a permission this needs: GitHub accepts {wants} (a fine-grained token or GitHub App needs \"Contents: Read and write\" on the repository; a classic token, the repo or public_repo scope){}",
            err.message,
            if status == StatusCode::NOT_FOUND {
                "; GitHub answers 404 where the token cannot see a private repository"
            } else {
                ""
            }
        );
    } else if status == StatusCode::UNAUTHORIZED {
        err.message = format!(
            "{}; GitHub refused the token (missing, expired or revoked): set ATR_DIST_PLATFORMS__GITHUB__TOKEN",
            err.message
        );
    }
    err
}

/// A 429 the HTTP client retried inside the attempt until its budget ran out is a wait too
/// (module docs).
fn limited(err: PlatformError) -> PlatformError {
    if err.not_yet || err.http_status != Some(429) {
        return err;
    }
    let wait = err.retry_after.unwrap_or(SECONDARY_WAIT);
    PlatformError::not_yet(
        format!(
            "{}; GitHub's rate limit: waiting {}s",
            err.message,
            wait.as_secs()
        ),
        wait,
    )
    .with_status(429)
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

fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

impl GithubAdapter {
    pub fn new(s: GithubSettings) -> Result<GithubAdapter, PlatformError> {
        let api = with_slash(s.api);
        let http = PlatformHttp::new(&[&api, &s.uploads], s.token)?.holding(rate_limited);
        Ok(GithubAdapter {
            http,
            api,
            uploads: s.uploads,
        })
    }

    /// The adapter from `[platforms.github]`, or None when the section sets no URL and no
    /// token ([`configured`]).
    pub fn from_config(config: &PlatformConfig) -> Result<Option<GithubAdapter>, ConfigError> {
        let Some((api, uploads)) = configured(config) else {
            return Ok(None);
        };
        let unused = [
            ("staging_base_url", config.staging_base_url.is_some()),
            ("read_url", config.read_url.is_some()),
            ("staging_read_url", config.staging_read_url.is_some()),
            ("staging_token", config.staging_token.is_some()),
            ("username", config.username.is_some()),
        ];
        if let Some((key, _)) = unused.iter().find(|(_, set)| *set) {
            return Err(ConfigError::Invalid {
                key: format!("{SECTION}.{key}"),
                reason: "not used by GitHub: staging and production are one release on one API (base_url, upload_url, token)".to_owned(),
            });
        }
        if config.staging_tag.is_some() {
            return Err(ConfigError::Invalid {
                key: format!("{SECTION}.staging_tag"),
                reason: format!(
                    "a GitHub release is named by its git tag, v<version> by default; one configured tag would name every version's release the same. Name another tag in the job (staging_tag and release_tag) instead; {TAG_VERSION:?} means v<version>"
                ),
            });
        }
        GithubAdapter::new(GithubSettings {
            api,
            uploads,
            token: config.token.clone(),
        })
        .map(Some)
        .map_err(|e| ConfigError::Invalid {
            key: SECTION.to_owned(),
            reason: e.message,
        })
    }

    fn url(&self, path: &str) -> Result<Url, PlatformError> {
        self.api
            .join(path)
            .map_err(|e| PlatformError::permanent(format!("building a GitHub URL for {path}: {e}")))
    }

    fn repo_url(&self, repo: &Repo, rest: &str) -> Result<Url, PlatformError> {
        self.url(&format!("repos/{}/{}/{rest}", repo.owner, repo.name))
    }

    /// The headers every GitHub request carries.
    fn headers(&self, req: RequestBuilder) -> RequestBuilder {
        let req = req
            .header(ACCEPT, MEDIA_TYPE)
            .header("x-github-api-version", API_VERSION);
        match self.http.bearer() {
            Some(auth) => req.header(AUTHORIZATION, auth),
            None => req,
        }
    }

    /// A read; `Ok(None)` for 404.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &Url,
    ) -> Result<Option<T>, PlatformError> {
        let what = format!("GET {url}");
        let resp = self
            .http
            .send(&what, |c| self.headers(c.get(url.clone())))
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(classify(resp, &what, false).await);
        }
        resp.json::<T>()
            .await
            .map(Some)
            .map_err(|e| PlatformError::transient(format!("{what}: unreadable answer: {e}")))
    }

    /// Every page of a list, up to [`MAX_PAGES`].
    async fn pages<T: serde::de::DeserializeOwned>(
        &self,
        base: &Url,
    ) -> Result<Vec<T>, PlatformError> {
        let mut out = Vec::new();
        for page in 1..=MAX_PAGES {
            let mut url = base.clone();
            url.query_pairs_mut()
                .append_pair("per_page", &PER_PAGE.to_string())
                .append_pair("page", &page.to_string());
            let items: Vec<T> = self.get_json(&url).await?.unwrap_or_default();
            let last = items.len() < PER_PAGE;
            out.extend(items);
            if last {
                return Ok(out);
            }
        }
        Ok(out)
    }

    /// The published release (pre-release or not) for the tag.
    async fn published(&self, repo: &Repo, tag: &str) -> Result<Option<Release>, PlatformError> {
        let url = self.repo_url(repo, &format!("releases/tags/{tag}"))?;
        self.get_json(&url).await
    }

    /// The release for the tag: the published one, else the one draft for it.
    async fn find(&self, repo: &Repo, tag: &str) -> Result<Option<Release>, PlatformError> {
        if let Some(r) = self.published(repo, tag).await? {
            return Ok(Some(r));
        }
        let all: Vec<Release> = self.pages(&self.repo_url(repo, "releases")?).await?;
        let drafts: Vec<Release> = all
            .into_iter()
            .filter(|r| r.draft && r.tag_name == tag)
            .collect();
        match drafts.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one.clone())),
            many => Err(PlatformError::permanent(format!(
                "{repo} has {} draft releases for {tag} (ids {}); which one to complete is not clear: delete the others",
                many.len(),
                many.iter()
                    .map(|r| r.id.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    async fn by_id(&self, repo: &Repo, id: u64) -> Result<Option<Release>, PlatformError> {
        self.get_json(&self.repo_url(repo, &format!("releases/{id}"))?)
            .await
    }

    async fn assets(&self, repo: &Repo, id: u64) -> Result<Vec<Asset>, PlatformError> {
        self.pages(&self.repo_url(repo, &format!("releases/{id}/assets"))?)
            .await
    }

    async fn observe(&self, repo: &Repo, release: &Release) -> Result<Observed, PlatformError> {
        let assets = self.assets(repo, release.id).await?;
        Ok(Observed {
            digest: release_digest(&assets),
            api_url: Some(release.url.clone()),
            web_url: release.html_url.clone(),
            upload_date: release
                .published_at
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc)),
        })
    }

    /// Refuses a tag the repository does not have (module docs).
    async fn require_tag(&self, repo: &Repo, tag: &str) -> Result<(), PlatformError> {
        let url = self.repo_url(repo, &format!("git/ref/tags/{tag}"))?;
        match self.get_json::<serde_json::Value>(&url).await? {
            Some(_) => Ok(()),
            None => Err(PlatformError::permanent(format!(
                "{repo} has no tag {tag} (or the token cannot read the repository): push the release's tag first; atr-dist creates no tags, and a release for a missing tag would tag the default branch's head"
            ))),
        }
    }

    /// Creates the draft pre-release for the tag, or finds the one an earlier try created.
    async fn create(
        &self,
        repo: &Repo,
        tag: &str,
        key: &DistributionKey,
    ) -> Result<Release, PlatformError> {
        let url = self.repo_url(repo, "releases")?;
        let what = format!("POST {url} (draft pre-release {tag})");
        let body = json!({
            "tag_name": tag,
            "name": format!("{} {}", key.package, key.version),
            "draft": true,
            "prerelease": true,
            "make_latest": "false",
        });
        let written = confirmed(
            &self.http,
            &what,
            || {
                self.http
                    .write(&what, |c| self.headers(c.post(url.clone())).json(&body))
            },
            || async {
                Ok(match self.find(repo, tag).await? {
                    Some(r) if r.draft || r.prerelease => Found::Expected,
                    Some(r) => Found::Other(format!("{repo} holds {} for {tag}", r.kind())),
                    None => Found::Nothing,
                })
            },
            |resp| classify(resp, &what, true),
        )
        .await?;
        match written {
            Written::Answered(resp) => resp
                .json::<Release>()
                .await
                .map_err(|e| PlatformError::transient(format!("{what}: unreadable answer: {e}"))),
            Written::FoundDone => self.find(repo, tag).await?.ok_or_else(|| {
                PlatformError::transient(format!("{what}: the release is not visible yet"))
            }),
        }
    }

    /// Deletes an asset (one left in state `starter`).
    async fn delete_asset(&self, repo: &Repo, asset: &Asset) -> Result<(), PlatformError> {
        let url = self.repo_url(repo, &format!("releases/assets/{}", asset.id))?;
        let what = format!("DELETE {url} ({} in state {})", asset.name, asset.state);
        confirmed(
            &self.http,
            &what,
            || {
                self.http
                    .write(&what, |c| self.headers(c.delete(url.clone())))
            },
            || async {
                Ok(match self.get_json::<serde_json::Value>(&url).await? {
                    None => Found::Expected,
                    Some(_) => Found::Nothing,
                })
            },
            |resp| classify(resp, &what, false),
        )
        .await?;
        Ok(())
    }

    /// The upload URL for `name`: the release's `upload_url` template expanded, on the
    /// configured uploads origin only.
    fn upload_url(&self, release: &Release, name: &str) -> Result<Url, PlatformError> {
        // RFC 6570: `{?name,label}` is a form-style query expansion; with only `name`
        // defined it expands to `?name=<pct-encoded>`.
        let template = release.upload_url.as_str();
        let base = template.split('{').next().unwrap_or(template);
        let mut url = Url::parse(base).map_err(|e| {
            PlatformError::permanent(format!(
                "release {}: unusable upload_url {template:?}: {e}",
                release.id
            ))
        })?;
        if origin(&url) != origin(&self.uploads) {
            return Err(PlatformError::permanent(format!(
                "release {} names the upload host {}, which is not the configured one ({}); nothing is sent there. Set [platforms.github] upload_url if GitHub's uploads host is another",
                release.id,
                origin(&url),
                origin(&self.uploads)
            )));
        }
        if !url
            .path()
            .ends_with(&format!("/releases/{}/assets", release.id))
        {
            return Err(PlatformError::permanent(format!(
                "release {}: upload_url {template:?} is not this release's asset upload",
                release.id
            )));
        }
        url.set_query(None);
        url.query_pairs_mut().append_pair("name", name);
        Ok(url)
    }

    async fn upload(
        &self,
        repo: &Repo,
        release: &Release,
        file: &File<'_>,
    ) -> Result<(), PlatformError> {
        let url = self.upload_url(release, &file.name)?;
        let what = format!("POST {url} ({}, sha256 {})", file.name, file.sha256);
        let what_ref = &what;
        let written = confirmed(
            &self.http,
            &what,
            || {
                self.http.write(&what, |c| {
                    self.headers(c.post(url.clone()))
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_LENGTH, file.sealed.size())
                        .body(file.sealed.body())
                })
            },
            || async {
                let assets = self.assets(repo, release.id).await?;
                let Some(a) = assets.iter().find(|a| a.name == file.name) else {
                    return Ok(Found::Nothing);
                };
                if a.state == "starter" {
                    // The upload broke off: GitHub keeps the name until the asset is gone.
                    self.delete_asset(repo, a).await?;
                    return Ok(Found::Nothing);
                }
                Ok(match a.sha256() {
                    Some(hex) if hex.eq_ignore_ascii_case(&file.sha256) => Found::Expected,
                    _ => Found::Other(format!(
                        "the release holds {}, not sha256:{}",
                        a.describe(),
                        file.sha256
                    )),
                })
            },
            |resp| async move {
                let status = resp.status();
                let mut err = classify(resp, what_ref, false).await;
                // 422 `already_exists`: an asset has the name (a starter left by an upload
                // that broke off, or a concurrent one). The read-back decides; if it finds
                // nothing to adopt, the next attempt starts from the assets again.
                if status == StatusCode::UNPROCESSABLE_ENTITY
                    && err.message.contains("already_exists")
                {
                    err.class = ErrorClass::Transient;
                }
                err
            },
        )
        .await?;
        if let Written::FoundDone = written {
            tracing::info!(asset = %file.name, "the upload's answer was lost or refused; the release holds the voted bytes");
        }
        Ok(())
    }

    /// Publishes the draft as a pre-release that is not latest.
    async fn publish_draft(&self, repo: &Repo, release: &Release) -> Result<(), PlatformError> {
        let url = self.repo_url(repo, &format!("releases/{}", release.id))?;
        let what = format!(
            "PATCH {url} (publish the draft of {} as a pre-release)",
            release.tag_name
        );
        let body = json!({"draft": false, "prerelease": true, "make_latest": "false"});
        confirmed(
            &self.http,
            &what,
            || {
                self.http
                    .write(&what, |c| self.headers(c.patch(url.clone())).json(&body))
            },
            || async {
                Ok(match self.by_id(repo, release.id).await? {
                    Some(r) if !r.draft => Found::Expected,
                    Some(_) => Found::Nothing,
                    None => Found::Other(format!("release {} is gone", release.id)),
                })
            },
            |resp| classify(resp, &what, false),
        )
        .await?;
        Ok(())
    }

    async fn stage_release(&self, req: &StageRequest) -> Result<(), PlatformError> {
        let repo = repo_of(&req.key)?;
        let tag = git_tag(&req.key, &req.staging_tag)?;
        let files = files(&req.artifacts)?;
        let voted = digest_of(files.iter().map(|f| (f.name.as_str(), f.sha256.as_str())));
        let release = match self.find(&repo, &tag).await? {
            Some(r) => r,
            None => {
                self.require_tag(&repo, &tag).await?;
                self.create(&repo, &tag, &req.key).await?
            }
        };
        let assets = self.assets(&repo, release.id).await?;
        let holds = || {
            let mut d: Vec<String> = assets.iter().map(Asset::describe).collect();
            d.sort();
            if d.is_empty() {
                "no assets".to_owned()
            } else {
                d.join(", ")
            }
        };
        if !release.draft && release_digest(&assets) == voted {
            return Ok(());
        }
        if !release.draft && !release.prerelease {
            return Err(PlatformError::permanent(format!(
                "{repo}: the release for {tag} is {} holding {}, not the voted files; atr-dist stages only into a pre-release, and changes no published release",
                release.kind(),
                holds()
            )));
        }
        if release.immutable() {
            return Err(PlatformError::permanent(format!(
                "{repo}: the release for {tag} is immutable and holds {}, not the voted files; GitHub allows no change to an immutable release's assets, ever: stage under another tag",
                holds()
            )));
        }
        let ours: HashSet<&str> = files.iter().map(|f| f.name.as_str()).collect();
        let foreign: Vec<String> = assets
            .iter()
            .filter(|a| !ours.contains(a.name.as_str()))
            .map(Asset::describe)
            .collect();
        if !foreign.is_empty() {
            return Err(PlatformError::permanent(format!(
                "{repo}: the release for {tag} holds assets that were not voted ({}); atr-dist deletes nothing it did not upload: remove them, or stage under another tag; nothing uploaded",
                foreign.join(", ")
            )));
        }
        let mut upload: Vec<&File<'_>> = Vec::new();
        let mut starters: Vec<&Asset> = Vec::new();
        for f in &files {
            let Some(a) = assets.iter().find(|a| a.name == f.name) else {
                upload.push(f);
                continue;
            };
            if a.state == "starter" {
                starters.push(a);
                upload.push(f);
                continue;
            }
            match a.sha256() {
                Some(hex) if hex.eq_ignore_ascii_case(&f.sha256) => {}
                Some(hex) => {
                    return Err(PlatformError::permanent(format!(
                        "{repo}: the release for {tag} holds {} with sha256 {hex}, not the voted {}; an asset is never overwritten: delete it on GitHub, or stage under another tag; nothing uploaded",
                        a.name, f.sha256
                    )));
                }
                None => {
                    return Err(PlatformError::transient(format!(
                        "{repo}: GitHub reports {} for the release's asset, so it cannot be compared with the voted sha256 {}",
                        a.describe(),
                        f.sha256
                    )));
                }
            }
        }
        for a in starters {
            self.delete_asset(&repo, a).await?;
        }
        for f in upload {
            self.upload(&repo, &release, f).await?;
        }
        self.verify(&repo, &release, &tag, &files).await?;
        if release.draft {
            self.publish_draft(&repo, &release).await?;
        }
        Ok(())
    }

    /// Every voted file is an uploaded asset with its sha256, and nothing else is there.
    async fn verify(
        &self,
        repo: &Repo,
        release: &Release,
        tag: &str,
        files: &[File<'_>],
    ) -> Result<(), PlatformError> {
        let assets = self.assets(repo, release.id).await?;
        for f in files {
            let Some(a) = assets.iter().find(|a| a.name == f.name) else {
                return Err(PlatformError::transient(format!(
                    "{repo}: the release for {tag} does not list {} yet after uploading it",
                    f.name
                )));
            };
            match a.sha256() {
                Some(hex) if hex.eq_ignore_ascii_case(&f.sha256) => {}
                Some(hex) => {
                    return Err(PlatformError::permanent(format!(
                        "after uploading, GitHub reports sha256 {hex} for {}, not the voted {}",
                        f.name, f.sha256
                    )));
                }
                None => {
                    return Err(PlatformError::transient(format!(
                        "after uploading, GitHub reports {}; the voted sha256 is {}",
                        a.describe(),
                        f.sha256
                    )));
                }
            }
        }
        if assets.len() != files.len() {
            let ours: HashSet<&str> = files.iter().map(|f| f.name.as_str()).collect();
            let extra: Vec<String> = assets
                .iter()
                .filter(|a| !ours.contains(a.name.as_str()))
                .map(Asset::describe)
                .collect();
            return Err(PlatformError::permanent(format!(
                "{repo}: after uploading, the release for {tag} also holds assets that were not voted: {}",
                extra.join(", ")
            )));
        }
        Ok(())
    }

    async fn promote_release(&self, req: &PromoteRequest) -> Result<(), PlatformError> {
        let repo = repo_of(&req.key)?;
        let tag = git_tag(&req.key, &req.staging_tag)?;
        let release_tag = git_tag(&req.key, &req.release_tag)?;
        if release_tag != tag {
            return Err(PlatformError::permanent(format!(
                "the release tag names git tag {release_tag}, but {tag} was staged: a GitHub release is promoted in place, so name the staged tag ({}) as release_tag",
                req.staging_tag
            )));
        }
        let release = self.published(&repo, &tag).await?.ok_or_else(|| {
            PlatformError::permanent(format!(
                "{repo} has no published release for {tag}; stage it again; nothing promoted"
            ))
        })?;
        let assets = self.assets(&repo, release.id).await?;
        let now = release_digest(&assets);
        if now != req.staged_digest {
            let mut held: Vec<String> = assets.iter().map(Asset::describe).collect();
            held.sort();
            return Err(PlatformError::permanent(format!(
                "{repo}: the release for {tag} holds {now} ({}), not the staged {}; nothing promoted{}",
                held.join(", "),
                req.staged_digest,
                if release.immutable() {
                    ". The release is immutable: GitHub allows no change to its assets, so this tag cannot carry the vote; stage under another tag"
                } else {
                    ""
                }
            )));
        }
        if !release.prerelease {
            tracing::info!(%repo, tag, "the release is a full release already; nothing to write");
            return Ok(());
        }
        let url = self.repo_url(&repo, &format!("releases/{}", release.id))?;
        let what = format!("PATCH {url} (make {tag} a full release, latest)");
        let body = json!({"prerelease": false, "make_latest": "true"});
        confirmed(
            &self.http,
            &what,
            || {
                self.http
                    .write(&what, |c| self.headers(c.patch(url.clone())).json(&body))
            },
            || async {
                Ok(match self.by_id(&repo, release.id).await? {
                    Some(r) if !r.prerelease && !r.draft => Found::Expected,
                    Some(_) => Found::Nothing,
                    None => Found::Other(format!("release {} is gone", release.id)),
                })
            },
            |resp| classify(resp, &what, false),
        )
        .await?;
        Ok(())
    }

    async fn read(
        &self,
        key: &DistributionKey,
        tag: &DistTag,
        promoted: bool,
    ) -> Result<Option<Observed>, PlatformError> {
        let repo = repo_of(key)?;
        let tag = git_tag(key, tag)?;
        let Some(release) = self.published(&repo, &tag).await? else {
            return Ok(None);
        };
        if promoted && release.prerelease {
            return Ok(None);
        }
        self.observe(&repo, &release).await.map(Some)
    }
}

/// The API base and the uploads origin when `[platforms.github]` sets a URL or a token (the
/// rule of `platform::enablement`), else None. The uploads origin defaults to
/// `https://uploads.github.com` for github.com's API and to the API's own origin elsewhere
/// (GitHub Enterprise Server serves uploads under `/api/uploads` on its own host).
pub fn configured(config: &PlatformConfig) -> Option<(Url, Url)> {
    let set = config.base_url.is_some() || config.upload_url.is_some() || config.token.is_some();
    if !set {
        return None;
    }
    let parse = |s: &str| Url::parse(s).unwrap_or_else(|e| unreachable!("{s}: {e}"));
    let api = with_slash(
        config
            .base_url
            .clone()
            .unwrap_or_else(|| parse(DEFAULT_API)),
    );
    let uploads = match &config.upload_url {
        Some(u) => u.clone(),
        None if api.as_str() == DEFAULT_API => parse(DEFAULT_UPLOADS),
        None => parse(&format!("{}/", origin(&api))),
    };
    Some((api, uploads))
}

impl PlatformAdapter for GithubAdapter {
    fn expected_digest<'a>(
        &'a self,
        req: &'a StageRequest,
    ) -> BoxFuture<'a, Result<Digest, PlatformError>> {
        async move {
            let files = files(&req.artifacts)?;
            Ok(digest_of(
                files.iter().map(|f| (f.name.as_str(), f.sha256.as_str())),
            ))
        }
        .boxed()
    }

    fn plan_stage(&self, req: &StageRequest) -> Vec<PlannedWrite> {
        let (Ok(repo), Ok(tag)) = (repo_of(&req.key), git_tag(&req.key, &req.staging_tag)) else {
            return Vec::new();
        };
        let api = |rest: &str| format!("{}repos/{}/{}/{rest}", self.api, repo.owner, repo.name);
        let mut plan = vec![PlannedWrite {
            method: "POST",
            url: api("releases"),
            what: format!("create a draft pre-release for {tag} (unless there is one)"),
        }];
        let uploads = format!(
            "{}/repos/{}/{}/releases/{{id}}/assets",
            origin(&self.uploads),
            repo.owner,
            repo.name
        );
        plan.extend(req.artifacts.iter().map(|a| PlannedWrite {
            method: "POST",
            url: uploads.clone(),
            what: format!(
                "upload {} (sha256 {}) unless the release holds it",
                a.path(),
                hex::encode(a.sha256().bytes())
            ),
        }));
        plan.push(PlannedWrite {
            method: "PATCH",
            url: api("releases/{id}"),
            what: "publish the draft as a pre-release, not latest".to_owned(),
        });
        plan
    }

    fn stage<'a>(&'a self, req: &'a StageRequest) -> BoxFuture<'a, Result<(), PlatformError>> {
        async move { self.stage_release(req).await.map_err(limited) }.boxed()
    }

    fn read_staged<'a>(
        &'a self,
        key: &'a DistributionKey,
        staging_tag: &'a DistTag,
    ) -> BoxFuture<'a, Result<Option<Observed>, PlatformError>> {
        async move { self.read(key, staging_tag, false).await.map_err(limited) }.boxed()
    }

    fn plan_promote(&self, req: &PromoteRequest) -> Vec<PlannedWrite> {
        let (Ok(repo), Ok(tag)) = (repo_of(&req.key), git_tag(&req.key, &req.staging_tag)) else {
            return Vec::new();
        };
        vec![PlannedWrite {
            method: "PATCH",
            url: format!(
                "{}repos/{}/{}/releases/{{id}}",
                self.api, repo.owner, repo.name
            ),
            what: format!("make the pre-release for {tag} a full release, latest"),
        }]
    }

    fn promote<'a>(&'a self, req: &'a PromoteRequest) -> BoxFuture<'a, Result<(), PlatformError>> {
        async move { self.promote_release(req).await.map_err(limited) }.boxed()
    }

    fn read_promoted<'a>(
        &'a self,
        key: &'a DistributionKey,
        release_tag: &'a DistTag,
    ) -> BoxFuture<'a, Result<Option<Observed>, PlatformError>> {
        async move { self.read(key, release_tag, true).await.map_err(limited) }.boxed()
    }

    fn default_tags(&self, _key: &DistributionKey) -> (DistTag, DistTag) {
        let version = DistTag::new(TAG_VERSION)
            .unwrap_or_else(|e| unreachable!("\"version\" is a valid dist-tag: {e}"));
        (version.clone(), version)
    }

    fn staging(&self) -> crate::platform::Staging {
        crate::platform::Staging::Platform
    }

    fn promotion(&self) -> PromotionMechanism {
        PromotionMechanism::ApiPatch
    }
}

#[cfg(test)]
mod tests {
    use atr_dist_shared::DigestAlgorithm;
    use atr_dist_shared::Platform;
    use atr_dist_shared::names::{PackageName, ReleaseKey, Version};
    use sha2::{Digest as _, Sha256};

    use super::*;

    fn key(owner: &str, repo: &str, version: &str) -> DistributionKey {
        DistributionKey::new(
            ReleaseKey::new(format!("example-{version}")).unwrap(),
            Platform::Github,
            owner,
            PackageName::new(repo).unwrap(),
            Version::new(version).unwrap(),
        )
        .unwrap()
    }

    fn adapter(api: &str, uploads: &str) -> GithubAdapter {
        GithubAdapter::new(GithubSettings {
            api: Url::parse(api).unwrap(),
            uploads: Url::parse(uploads).unwrap(),
            token: Some(Secret::new("ghp_x")),
        })
        .unwrap()
    }

    fn release(upload_url: &str) -> Release {
        Release {
            id: 7,
            tag_name: "v1.0.0".into(),
            draft: true,
            prerelease: true,
            immutable: None,
            url: "https://api.github.com/repos/apache/x/releases/7".into(),
            html_url: None,
            upload_url: upload_url.into(),
            published_at: None,
        }
    }

    #[test]
    fn tags_name_the_version_tag_or_themselves() {
        let k = key("apache", "arrow", "15.0.0");
        assert_eq!(
            git_tag(&k, &DistTag::new(TAG_VERSION).unwrap()).unwrap(),
            "v15.0.0"
        );
        assert_eq!(
            git_tag(&k, &DistTag::new("apache-arrow-15.0.0").unwrap()).unwrap(),
            "apache-arrow-15.0.0"
        );
        assert!(git_tag(&k, &DistTag::new("x.lock").unwrap()).is_err());
        let a = adapter(DEFAULT_API, DEFAULT_UPLOADS);
        let (staging, release) = a.default_tags(&k);
        assert_eq!(staging, release);
        assert_eq!(staging.as_str(), TAG_VERSION);
        assert_eq!(repo_of(&k).unwrap().to_string(), "apache/arrow");
    }

    #[test]
    fn a_repository_name_has_at_most_100_characters() {
        let longest = "r".repeat(100);
        assert_eq!(
            repo_of(&key("apache", &longest, "1.0.0")).unwrap().name,
            longest
        );
        let err = repo_of(&key("apache", &"r".repeat(101), "1.0.0")).unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent);
        assert!(
            err.message.contains("at most 100 characters"),
            "{}",
            err.message
        );
    }

    #[test]
    fn the_release_digest_is_over_sorted_names_and_sha256s() {
        let a = digest_of([("b.zip", "22"), ("a.tar.gz", "11")].into_iter());
        assert_eq!(
            a,
            digest_of([("a.tar.gz", "11"), ("b.zip", "22")].into_iter())
        );
        let want = Digest::from_bytes(
            DigestAlgorithm::Sha256,
            &Sha256::digest(b"a.tar.gz 11\nb.zip 22\n"),
        )
        .unwrap();
        assert_eq!(a, want);
        let asset = |name: &str, state: &str, digest: Option<&str>| Asset {
            id: 1,
            name: name.into(),
            state: state.into(),
            digest: digest.map(Into::into),
        };
        assert_eq!(
            release_digest(&[
                asset("b.zip", "uploaded", Some("sha256:22")),
                asset("a.tar.gz", "uploaded", Some("sha256:11"))
            ]),
            a
        );
        // A starter or an asset without a digest never equals the vote.
        assert_ne!(
            release_digest(&[
                asset("b.zip", "starter", Some("sha256:22")),
                asset("a.tar.gz", "uploaded", Some("sha256:11"))
            ]),
            a
        );
        assert_ne!(
            release_digest(&[
                asset("b.zip", "uploaded", None),
                asset("a.tar.gz", "uploaded", Some("sha256:11"))
            ]),
            a
        );
    }

    #[test]
    fn the_upload_url_is_expanded_on_the_configured_host_only() {
        let a = adapter(DEFAULT_API, DEFAULT_UPLOADS);
        let r = release("https://uploads.github.com/repos/apache/x/releases/7/assets{?name,label}");
        assert_eq!(
            a.upload_url(&r, "x-1.0.0.tar.gz").unwrap().as_str(),
            "https://uploads.github.com/repos/apache/x/releases/7/assets?name=x-1.0.0.tar.gz"
        );
        let elsewhere =
            release("https://uploads.example/repos/apache/x/releases/7/assets{?name,label}");
        let err = a.upload_url(&elsewhere, "x").unwrap_err();
        assert!(
            err.message.contains(
                "names the upload host https://uploads.example, which is not the configured one"
            ),
            "{}",
            err.message
        );
        let other =
            release("https://uploads.github.com/repos/apache/x/releases/8/assets{?name,label}");
        assert!(a.upload_url(&other, "x").is_err());
    }

    #[test]
    fn asset_names_github_would_rename_are_refused() {
        let seal = |path: &str| crate::seal::sealed_for_test(path, b"x");
        let ok = [seal("dist/x-1.0.0.tar.gz"), seal("x-1.0.0.tar.gz.asc")];
        let names: Vec<String> = files(&ok).unwrap().into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["x-1.0.0.tar.gz", "x-1.0.0.tar.gz.asc"]);
        let err = files(&[seal("x-1.0+b.tar.gz")]).err().unwrap();
        assert!(
            err.message.contains("would be renamed by GitHub"),
            "{}",
            err.message
        );
        // A leading dot or a trailing one is enough: GitHub drops either.
        for name in [".x-1.0.0.tar.gz", "x-1.0.0.tar.gz."] {
            let err = files(&[seal(&format!("dist/{name}"))]).err().unwrap();
            assert!(
                err.message.contains("would be renamed by GitHub"),
                "{name}: {}",
                err.message
            );
        }
        let err = files(&[seal("a/x.zip"), seal("b/x.zip")]).err().unwrap();
        assert!(
            err.message.contains("two files are named x.zip"),
            "{}",
            err.message
        );
    }

    #[test]
    fn plans_name_the_writes_a_stage_and_a_promote_would_make() {
        use atr_dist_shared::names::{RevisionKey, RevisionNumber};
        let a = adapter("http://127.0.0.1:9/api/v3", "http://127.0.0.1:9");
        let k = key("apache", "example", "1.0.0");
        let sealed = crate::seal::sealed_for_test("example-1.0.0.tar.gz", b"x");
        let req = StageRequest {
            revision: RevisionKey::of(&k.release_key, &RevisionNumber::new("00001").unwrap()),
            artifacts: vec![sealed],
            companions: Vec::new(),
            staging_tag: DistTag::new(TAG_VERSION).unwrap(),
            key: k.clone(),
        };
        let plan: Vec<String> = a.plan_stage(&req).iter().map(ToString::to_string).collect();
        assert_eq!(
            plan,
            [
                "POST http://127.0.0.1:9/api/v3/repos/apache/example/releases (create a draft pre-release for v1.0.0 (unless there is one))".to_owned(),
                format!("POST http://127.0.0.1:9/repos/apache/example/releases/{{id}}/assets (upload example-1.0.0.tar.gz (sha256 {}) unless the release holds it)", &sha256_of(b"x")),
                "PATCH http://127.0.0.1:9/api/v3/repos/apache/example/releases/{id} (publish the draft as a pre-release, not latest)".to_owned(),
            ]
        );
        let promote = PromoteRequest {
            key: k,
            staged_digest: digest_of(std::iter::empty()),
            staging_tag: DistTag::new(TAG_VERSION).unwrap(),
            release_tag: DistTag::new(TAG_VERSION).unwrap(),
            artifacts: Vec::new(),
            companions: Vec::new(),
        };
        let plan: Vec<String> = a
            .plan_promote(&promote)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            plan,
            [
                "PATCH http://127.0.0.1:9/api/v3/repos/apache/example/releases/{id} (make the pre-release for v1.0.0 a full release, latest)"
            ]
        );
    }

    fn sha256_of(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn the_section_chooses_api_and_uploads_host() {
        let mut c = PlatformConfig::default();
        assert!(configured(&c).is_none());
        // Any one of the URLs or the token turns the adapter on.
        let ghe = Url::parse("https://ghe.example/api/v3").unwrap();
        for (base_url, upload_url) in [(Some(ghe.clone()), None), (None, Some(ghe))] {
            let c = PlatformConfig {
                base_url,
                upload_url,
                ..PlatformConfig::default()
            };
            assert!(configured(&c).is_some(), "{c:?}");
        }
        c.token = Some(Secret::new("ghp_x"));
        let (api, uploads) = configured(&c).unwrap();
        assert_eq!(api.as_str(), DEFAULT_API);
        assert_eq!(uploads.as_str(), DEFAULT_UPLOADS);
        c.base_url = Some(Url::parse("https://ghe.example/api/v3").unwrap());
        let (api, uploads) = configured(&c).unwrap();
        assert_eq!(api.as_str(), "https://ghe.example/api/v3/");
        assert_eq!(uploads.as_str(), "https://ghe.example/");
        let a = GithubAdapter::from_config(&c).unwrap().unwrap();
        assert_eq!(a.promotion(), PromotionMechanism::ApiPatch);
        c.staging_tag = Some("rc".into());
        let err = GithubAdapter::from_config(&c).err().unwrap().to_string();
        assert!(err.contains("platforms.github.staging_tag"), "{err}");
    }

    /// Only the request that creates the release reads a 404 as the token's missing
    /// permission (GitHub answers 404 where the token cannot see a private repository). A
    /// 404 to another request (a draft deleted meanwhile, an upload URL gone) and another
    /// refusal of the creation (422, the tag's release exists) are not auth failures: an
    /// operator told to fix the token there would look in the wrong place.
    #[tokio::test]
    async fn only_a_404_to_creating_the_release_is_an_auth_failure() {
        use crate::platform::http::test_server::serving;
        async fn answer(addr: std::net::SocketAddr) -> Response {
            reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap()
                .post(format!("http://{addr}/repos/apache/example/releases"))
                .send()
                .await
                .unwrap()
        }
        let (not_found, _) = serving(
            Some("404 Not Found\r\ncontent-type: application/json"),
            r#"{"message":"Not Found","documentation_url":"https://docs.github.com/rest","status":"404"}"#,
        )
        .await;
        let create = classify(answer(not_found).await, "creating the release", true).await;
        assert_eq!(create.class, ErrorClass::Auth, "{}", create.message);
        assert!(
            create.message.contains("cannot see a private repository"),
            "{}",
            create.message
        );
        let other = classify(answer(not_found).await, "updating the draft", false).await;
        assert_ne!(other.class, ErrorClass::Auth, "{}", other.message);
        assert!(!other.message.contains("permission"), "{}", other.message);
        let (exists, _) = serving(
            Some("422 Unprocessable Entity\r\ncontent-type: application/json"),
            r#"{"message":"Validation Failed","errors":[{"resource":"Release","code":"already_exists","field":"tag_name"}],"status":"422"}"#,
        )
        .await;
        let refused = classify(answer(exists).await, "creating the release", true).await;
        assert_ne!(refused.class, ErrorClass::Auth, "{}", refused.message);
        assert!(
            !refused.message.contains("permission"),
            "{}",
            refused.message
        );
    }
}
