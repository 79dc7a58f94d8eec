//! Maven: stage = **verify** the staging repository an Apache project deployed from its own
//! build; promote = release it to Maven Central, only where the operator allows it.
//!
//! Apache projects deploy their jars, poms and signatures to Apache's Nexus staging
//! repository themselves; atr-dist uploads nothing there. What it adds is proof that the
//! staged repository holds exactly the voted files, and, where a project wants it, a
//! promotion that is refused unless it still does. So this is a verify-only adapter
//! ([`Staging::Platform`] with an empty `plan_stage`): `read_staged` reads the staging
//! place, and `stage` writes nothing and refuses, naming every difference, when what it found
//! is not the vote.
//!
//! # The distribution on Maven
//!
//! groupId = the owner namespace (dots become slashes in paths), artifactId = the package,
//! version = the version. Every artifact the job names is a file of that version's directory,
//! by its file name (the path in the revision may have directories; Maven's layout is flat),
//! and must be named like one: `<artifactId>-<version>` then `.` or `-` (classifier).
//!
//! # What stage verifies (requests)
//!
//! - the repository: `GET <nexus>staging/profile_repositories` (Nexus 2,
//!   `staging_base_url`, default `https://repository.apache.org/service/local/`) lists the
//!   staging repositories; the one whose `GET <nexus>repositories/<id>/content/<g>/<a>/<v>/`
//!   listing exists holds the version. A stage job's `staging_tag` other than `staging` names
//!   the repository (`orgapache-1234`); with the default, exactly one repository may hold the
//!   version (two staged copies are refused: which one would be released is not clear). The
//!   repository must be closed (rules run at close; a failed close is reported with its rule
//!   failures); one still closing is waited for.
//! - `maven-metadata.xml` at ATR's staging URL (`staging_read_url`, default
//!   `https://repository.apache.org/content/groups/staging/`, then `<g>/<a>/maven-metadata.xml`,
//!   ATR's `template_staging_url`) lists the version; it is recorded as the `api_url`.
//! - every file of the version directory is read (the JSON `content` listing, bounded to
//!   [`MAX_FILES`] entries, each file to [`MAX_FILE`] bytes) and hashed while it streams. The
//!   listing must be exactly the voted files: a voted file missing, served with other bytes,
//!   or a file nobody voted on (an unvoted class file is exactly what the promise forbids)
//!   is refused, each named. There is no switch to let unvoted files through.
//! - checksum files (`.md5`, `.sha1`, `.sha256`, `.sha512` beside another file of the
//!   version) are verified by what they state: it must be the digest of the file they
//!   describe. Nexus and Central generate them, so a checksum file need not be voted; a voted
//!   one must state the voted file's digest too. Their formatting (a bare hex digest, or one
//!   followed by the file name) is not compared.
//!
//! The staged platform digest is one sha256 over the version's files without their checksum
//! files: the lines `<file name> <sha256 hex>\n`, sorted by file name, hashed together
//! ([`digest_of`]). The same construction over the voted files gives `expected_digest`, and
//! over what Maven Central serves gives `read_promoted`'s, so staged, voted and released
//! compare as one value. The staging repository id is recorded in the `web_url` (its
//! `content` listing URL) and named in every message about it.
//!
//! # Promotion
//!
//! Off unless `[platforms.maven] promote_projects` lists the release's project
//! ([`PlatformAdapter::promotion_allowed`]): ATR has decided not to release Maven artifacts
//! itself, so by default a promote job ends `disabled_by_policy`, which is not a failure.
//! Where it is allowed, promote verifies the staging repository again (the pipeline has just
//! read it too) and then, by `promote_backend`:
//! - `portal` (the default): the Central Publisher Portal deployment named by the stage
//!   job's staging tag `portal-<deployment id>` (its files are compared with the verified
//!   staging repository's while it is `VALIDATED`; the Portal lists no files, so its
//!   `purls` must name this version only). `POST <portal>status?id=<id>` gives its
//!   `deploymentState`; `VALIDATED` is published with `POST <portal>deployment/<id>`;
//!   `PENDING`, `VALIDATING`, `PUBLISHING` and `PUBLISHED` until Central shows it are waits;
//!   `FAILED` is refused with the Portal's `errors`.
//! - `nexus2`: `POST <nexus>staging/bulk/promote` with the repository id
//!   (`autoDropAfterRelease: false`, so the verified repository stays readable until the
//!   release is seen on Central), then the repository's `activity` is polled: `repositoryReleased`
//!   means waiting for Central; a `ruleFailed` event, or any event of nonzero severity, refuses.
//!
//! Polls are waits ([`PlatformError::not_yet`]): the job sits in Redis without spending an
//! attempt, bounded by `wait_deadline_secs`; no attempt sleeps. Each write goes through
//! `write.rs` with a read-back (the release or publish state), so a lost answer is never
//! sent twice blindly. Maven Central is read back at `read_url` (default
//! `https://repo1.maven.org/maven2/`): `maven-metadata.xml` must list the version, and the
//! version directory's HTML index gives the files hashed for the digest.
//!
//! Why `portal` is the default: Nexus Repository 2 reached its end of life on 2025-06-30,
//! whether repository.apache.org still serves its staging API is not confirmed, and ATR's
//! own Maven workflow releases through the Portal.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use atr_dist_shared::names::{DistTag, ProjectKey};
use atr_dist_shared::{Digest, DistributionKey, PromotionMechanism};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use md5::{Digest as _, Md5};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::{Response, StatusCode};
use serde_json::Value;
use sha1::Sha1;
use sha2::{Digest as _, Sha256, Sha512};
use url::Url;

use super::http::{PlatformHttp, error_for};
use super::write::{Found, confirmed};
use super::{
    Observed, PlannedWrite, PlatformAdapter, PlatformError, PromoteRequest, Sealed, StageRequest,
    Staging,
};
use crate::config::{ConfigError, PlatformConfig, PromoteBackend};
use crate::secret::Secret;

pub const DEFAULT_NEXUS_URL: &str = "https://repository.apache.org/service/local/";
pub const DEFAULT_STAGING_CONTENT_URL: &str =
    "https://repository.apache.org/content/groups/staging/";
pub const DEFAULT_CENTRAL_URL: &str = "https://repo1.maven.org/maven2/";
pub const DEFAULT_PORTAL_URL: &str = "https://central.sonatype.com/api/v1/publisher/";
const SECTION: &str = "platforms.maven";

/// The default staging tag: "the one staging repository that holds the version".
pub const FIND_TAG: &str = "staging";
/// A staging tag naming a Central Publisher Portal deployment: `portal-<deployment id>`.
pub const PORTAL_TAG_PREFIX: &str = "portal-";

/// Files read in one version directory; a release has a few dozen.
pub const MAX_FILES: usize = 1000;
/// One file's size; Maven Central's own limit on a component's files is far lower.
pub const MAX_FILE: u64 = 2 * 1024 * 1024 * 1024;
/// A listing, a metadata document or an API answer.
const MAX_DOCUMENT: usize = 4 * 1024 * 1024;
/// A checksum file: a digest and perhaps a file name.
const MAX_CHECKSUM_FILE: usize = 4096;
/// Staging repositories looked through for the one holding the version.
const MAX_REPOSITORIES: usize = 100;
/// The least wait before a release or publish is looked at again: none of its own, so the
/// pipeline's wait schedule (`pipeline/wait.rs`: 30 seconds, doubling to 15 minutes) decides.
const POLL: Duration = Duration::ZERO;

/// Where the adapter reads and writes, with which credentials and policy.
#[derive(Debug, Clone)]
pub struct MavenSettings {
    /// Nexus 2's REST base (`.../service/local/`).
    pub nexus: Url,
    /// ATR's staging content base (`.../content/groups/staging/`).
    pub staging_content: Url,
    /// Maven Central's content base.
    pub central: Url,
    /// The Central Publisher Portal's API base (`.../api/v1/publisher/`).
    pub portal: Url,
    /// Nexus user name and password (or token), for the staging API.
    pub nexus_username: Option<String>,
    pub nexus_password: Option<Secret>,
    /// The Portal user token, `<token name>:<token password>` as the Portal shows it.
    pub portal_token: Option<Secret>,
    pub backend: PromoteBackend,
    pub promote_projects: Vec<ProjectKey>,
}

pub struct MavenAdapter {
    http: PlatformHttp,
    s: MavenSettings,
    nexus_auth: Option<HeaderValue>,
    portal_auth: Option<HeaderValue>,
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

/// `base` with `segments` appended (each percent-encoded as a path segment), and a final
/// `/` when `dir`.
fn under(base: &Url, segments: &[&str], dir: bool) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty();
        path.extend(segments);
        if dir {
            path.push("");
        }
    }
    url
}

fn sensitive(value: String, what: &str) -> Result<HeaderValue, PlatformError> {
    let mut v = HeaderValue::from_str(&value).map_err(|_| {
        PlatformError::permanent(format!("the {what} is not usable in an HTTP header"))
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// groupId, artifactId and version of a distribution.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Gav {
    group: Vec<String>,
    artifact: String,
    version: String,
}

impl Gav {
    fn of(key: &DistributionKey) -> Result<Gav, PlatformError> {
        let ns = key.owner_namespace.as_str();
        let group: Vec<String> = ns.split('.').map(str::to_owned).collect();
        let valid = !ns.is_empty()
            && group.iter().all(|s| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
            });
        if !valid {
            return Err(PlatformError::permanent(format!(
                "MAVEN takes the groupId as the owner namespace (e.g. org.apache.example); {ns:?} is not one"
            )));
        }
        Ok(Gav {
            group,
            artifact: key.package.to_string(),
            version: key.version.to_string(),
        })
    }

    fn coords(&self) -> String {
        format!(
            "{}:{}:{}",
            self.group.join("."),
            self.artifact,
            self.version
        )
    }

    fn artifact_dir(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.group.iter().map(String::as_str).collect();
        v.push(&self.artifact);
        v
    }

    fn version_dir(&self) -> Vec<&str> {
        let mut v = self.artifact_dir();
        v.push(&self.version);
        v
    }

    /// Whether `name` is named like a file of this version.
    fn names(&self, name: &str) -> bool {
        let stem = format!("{}-{}", self.artifact, self.version);
        name.strip_prefix(&stem)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('-'))
    }

    fn purl(&self) -> String {
        format!(
            "pkg:maven/{}/{}@{}",
            self.group.join("."),
            self.artifact,
            self.version
        )
    }
}

/// The checksum a checksum file states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sum {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

const SUMS: [(&str, Sum); 4] = [
    (".md5", Sum::Md5),
    (".sha1", Sum::Sha1),
    (".sha256", Sum::Sha256),
    (".sha512", Sum::Sha512),
];

impl Sum {
    fn name(self) -> &'static str {
        match self {
            Sum::Md5 => "md5",
            Sum::Sha1 => "sha1",
            Sum::Sha256 => "sha256",
            Sum::Sha512 => "sha512",
        }
    }
}

/// The file a checksum-named file describes, and which checksum it holds.
fn checksum_name(name: &str) -> Option<(&str, Sum)> {
    SUMS.iter()
        .find_map(|(ext, sum)| name.strip_suffix(ext).map(|base| (base, *sum)))
}

/// The names among `names` that are checksum files: a checksum name whose described file is
/// among `names` and is not itself checksum-named.
fn checksum_files<'a>(names: &BTreeSet<&'a str>) -> BTreeMap<&'a str, (&'a str, Sum)> {
    names
        .iter()
        .filter_map(|name| {
            let (base, sum) = checksum_name(name)?;
            let described = names.get(base)?;
            checksum_name(described)
                .is_none()
                .then_some((*name, (*described, sum)))
        })
        .collect()
}

/// The hex digests of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sums {
    size: u64,
    md5: String,
    sha1: String,
    sha256: String,
    sha512: String,
}

impl Sums {
    fn get(&self, sum: Sum) -> &str {
        match sum {
            Sum::Md5 => &self.md5,
            Sum::Sha1 => &self.sha1,
            Sum::Sha256 => &self.sha256,
            Sum::Sha512 => &self.sha512,
        }
    }
}

#[derive(Default)]
struct Hasher {
    size: u64,
    md5: Md5,
    sha1: Sha1,
    sha256: Sha256,
    sha512: Sha512,
}

impl Hasher {
    fn update(&mut self, piece: &[u8]) {
        self.size += piece.len() as u64;
        self.md5.update(piece);
        self.sha1.update(piece);
        self.sha256.update(piece);
        self.sha512.update(piece);
    }

    fn finish(self) -> Sums {
        Sums {
            size: self.size,
            md5: hex::encode(self.md5.finalize()),
            sha1: hex::encode(self.sha1.finalize()),
            sha256: hex::encode(self.sha256.finalize()),
            sha512: hex::encode(self.sha512.finalize()),
        }
    }
}

/// What a checksum file states: its first word, lower-cased, when that is hex.
fn stated(text: &str) -> Option<String> {
    let word = text.split_whitespace().next()?;
    word.chars()
        .all(|c| c.is_ascii_hexdigit())
        .then(|| word.to_ascii_lowercase())
}

/// A version's platform digest (`platform::files_digest`).
pub use super::files_digest as digest_of;

/// The versions a `maven-metadata.xml` lists in `<versioning><versions>`, and its
/// `<lastUpdated>` (`%Y%m%d%H%M%S`, UTC), read as ATR reads them.
fn metadata_versions(
    xml: &str,
) -> Result<(Vec<String>, Option<chrono::DateTime<chrono::Utc>>), String> {
    let inner = |text: &str, tag: &str| -> Option<(usize, usize)> {
        let open = format!("<{tag}>");
        let close = format!("</{tag}>");
        let start = text.find(&open)? + open.len();
        let end = start + text[start..].find(&close)?;
        Some((start, end))
    };
    let (vs, ve) = inner(xml, "versioning").ok_or("no <versioning> element")?;
    let versioning = &xml[vs..ve];
    let (s, e) = inner(versioning, "versions").ok_or("no <versions> element in <versioning>")?;
    let mut rest = &versioning[s..e];
    let mut versions = Vec::new();
    while let Some((s, e)) = inner(rest, "version") {
        versions.push(rest[s..e].trim().to_owned());
        rest = &rest[e..];
    }
    let updated = inner(versioning, "lastUpdated").and_then(|(s, e)| {
        chrono::NaiveDateTime::parse_from_str(versioning[s..e].trim(), "%Y%m%d%H%M%S")
            .ok()
            .map(|t| t.and_utc())
    });
    Ok((versions, updated))
}

/// The file names an HTML directory index links to (Maven Central's, Nexus's): relative
/// links without a path, a query or a fragment; directories and parents are left out.
fn html_index_files(html: &str) -> Vec<String> {
    let mut out = BTreeSet::new();
    let lower = html.to_ascii_lowercase();
    let mut at = 0;
    while let Some(i) = lower[at..].find("href=") {
        let start = at + i + 5;
        at = start;
        let Some(quote) = html[start..].chars().next() else {
            break;
        };
        if quote != '"' && quote != '\'' {
            continue;
        }
        let Some(len) = html[start + 1..].find(quote) else {
            break;
        };
        let href = &html[start + 1..start + 1 + len];
        at = start + 1 + len;
        let href = href.strip_prefix("./").unwrap_or(href);
        if href.is_empty()
            || href.contains(['/', '?', '#', ':', '%', '\\'])
            || href.starts_with('.')
        {
            continue;
        }
        out.insert(href.to_owned());
    }
    out.into_iter().collect()
}

/// A staging repository, as `profile_repositories` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Repository {
    id: String,
    /// `open`, `closed` or `released`.
    kind: String,
    transitioning: bool,
}

/// One event of a repository's activity.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    name: String,
    severity: i64,
    properties: Vec<(String, String)>,
}

impl Event {
    fn failed(&self) -> bool {
        self.name == "ruleFailed" || self.severity != 0
    }

    fn describe(&self) -> String {
        let props: Vec<String> = self
            .properties
            .iter()
            .filter(|(n, _)| n != "id")
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        if props.is_empty() {
            self.name.clone()
        } else {
            format!("{} ({})", self.name, props.join(", "))
        }
    }
}

/// One stage of a repository's activity (`open`, `close`, `release`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Activity {
    name: String,
    stopped: bool,
    events: Vec<Event>,
}

impl Activity {
    fn failures(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| e.failed())
            .map(Event::describe)
            .collect()
    }

    fn has(&self, event: &str) -> bool {
        self.events.iter().any(|e| e.name == event)
    }
}

fn parse_activity(doc: &Value) -> Result<Vec<Activity>, String> {
    let list = doc
        .as_array()
        .or_else(|| doc.get("data").and_then(Value::as_array))
        .ok_or("not a list of activities")?;
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other @ (Value::Bool(_) | Value::Number(_) | Value::Array(_) | Value::Object(_)) => {
            other.to_string()
        }
    };
    list.iter()
        .map(|a| {
            let name = a.get("name").map(text).unwrap_or_default();
            let stopped = a.get("stopped").is_some_and(|s| !s.is_null());
            let events = a
                .get("events")
                .and_then(Value::as_array)
                .map(|events| {
                    events
                        .iter()
                        .map(|e| {
                            let severity = match e.get("severity") {
                                Some(Value::Number(n)) => n.as_i64().unwrap_or(1),
                                Some(Value::String(s)) => s.trim().parse().unwrap_or(1),
                                None | Some(Value::Null) => 0,
                                // A severity of another shape is not read as harmless.
                                Some(Value::Bool(_) | Value::Array(_) | Value::Object(_)) => 1,
                            };
                            // `properties` (a list of name/value pairs) in Nexus's JSON; a
                            // single `property` in some renderings.
                            let props = e
                                .get("properties")
                                .or_else(|| e.get("property"))
                                .map(|p| match p {
                                    Value::Array(items) => items.clone(),
                                    other @ (Value::Null
                                    | Value::Bool(_)
                                    | Value::Number(_)
                                    | Value::String(_)
                                    | Value::Object(_)) => vec![other.clone()],
                                })
                                .unwrap_or_default()
                                .iter()
                                .map(|p| {
                                    (
                                        p.get("name").map(text).unwrap_or_default(),
                                        p.get("value").map(text).unwrap_or_default(),
                                    )
                                })
                                .collect();
                            Event {
                                name: e.get("name").map(text).unwrap_or_default(),
                                severity,
                                properties: props,
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            Ok(Activity {
                name,
                stopped,
                events,
            })
        })
        .collect()
}

/// What a version directory serves: its files (checksum files aside) with their digests,
/// and what was wrong with its checksum files.
#[derive(Debug, Default)]
struct Served {
    files: BTreeMap<String, Sums>,
    /// Checksum files, by name: the file they describe and what they state.
    checksums: BTreeMap<String, (String, Sum, Option<String>)>,
    /// Entries that are not files (directories inside the version directory).
    other: Vec<String>,
}

impl Served {
    fn digest(&self) -> Digest {
        digest_of(
            self.files
                .iter()
                .map(|(n, s)| (n.as_str(), s.sha256.as_str())),
        )
    }

    /// Every checksum file whose statement is not the digest of the file it describes.
    fn checksum_problems(&self) -> Vec<String> {
        self.checksums
            .iter()
            .filter_map(|(name, (base, sum, stated))| {
                let actual = self.files.get(base)?.get(*sum);
                match stated {
                    Some(s) if s == actual => None,
                    Some(s) => Some(format!(
                        "{name} states {s}, but {base} has {} {actual}",
                        sum.name()
                    )),
                    None => Some(format!("{name} holds no {} digest", sum.name())),
                }
            })
            .collect()
    }
}

/// The staging repository holding the version, read and checked.
struct StagedState {
    repository: Repository,
    served: Served,
    api_url: Url,
    listing_url: Url,
    upload_date: Option<chrono::DateTime<chrono::Utc>>,
}

/// A Portal deployment's status.
#[derive(Debug, Clone)]
struct Deployment {
    id: String,
    state: String,
    purls: Vec<String>,
    errors: String,
}

impl MavenAdapter {
    pub fn new(s: MavenSettings) -> Result<MavenAdapter, PlatformError> {
        let s = MavenSettings {
            nexus: with_slash(s.nexus),
            staging_content: with_slash(s.staging_content),
            central: with_slash(s.central),
            portal: with_slash(s.portal),
            ..s
        };
        let http = PlatformHttp::new(&[&s.nexus, &s.staging_content, &s.central, &s.portal], None)?;
        let nexus_auth = match (&s.nexus_username, &s.nexus_password) {
            (Some(user), Some(password)) => Some(sensitive(
                format!(
                    "Basic {}",
                    STANDARD.encode(format!("{user}:{}", password.expose()))
                ),
                "Nexus password",
            )?),
            (None, Some(_)) => {
                return Err(PlatformError::permanent(format!(
                    "[{SECTION}] staging_token is set without username; Nexus takes both"
                )));
            }
            (_, None) => None,
        };
        let portal_auth = match &s.portal_token {
            Some(token) => Some(sensitive(
                format!("Bearer {}", STANDARD.encode(token.expose())),
                "Portal token",
            )?),
            None => None,
        };
        Ok(MavenAdapter {
            http,
            s,
            nexus_auth,
            portal_auth,
        })
    }

    /// The adapter `[platforms.maven]` describes, or `None` when the section leaves Maven
    /// unconfigured (see [`configured`]).
    pub fn from_config(config: &PlatformConfig) -> Result<Option<MavenAdapter>, ConfigError> {
        if !configured(config) {
            return Ok(None);
        }
        let parse = |s: &str| Url::parse(s).unwrap_or_else(|e| unreachable!("{s}: {e}"));
        let projects = config
            .promote_projects
            .iter()
            .map(ProjectKey::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::Invalid {
                key: format!("{SECTION}.promote_projects"),
                reason: e.to_string(),
            })?;
        let settings = MavenSettings {
            nexus: config
                .staging_base_url
                .clone()
                .unwrap_or_else(|| parse(DEFAULT_NEXUS_URL)),
            staging_content: config
                .staging_read_url
                .clone()
                .unwrap_or_else(|| parse(DEFAULT_STAGING_CONTENT_URL)),
            central: config
                .read_url
                .clone()
                .unwrap_or_else(|| parse(DEFAULT_CENTRAL_URL)),
            portal: config
                .base_url
                .clone()
                .unwrap_or_else(|| parse(DEFAULT_PORTAL_URL)),
            nexus_username: config.username.clone(),
            nexus_password: config.staging_token.clone(),
            portal_token: config.token.clone(),
            backend: config.promote_backend.unwrap_or(PromoteBackend::Portal),
            promote_projects: projects,
        };
        MavenAdapter::new(settings)
            .map(Some)
            .map_err(|e| ConfigError::Invalid {
                key: SECTION.to_owned(),
                reason: e.message,
            })
    }

    /// What `atr-dist config` says about the adapter.
    pub fn describe(&self) -> String {
        let promotion = if self.s.promote_projects.is_empty() {
            "promotion disabled by policy for every project".to_owned()
        } else {
            let projects: Vec<&str> = self.s.promote_projects.iter().map(|p| p.as_str()).collect();
            format!(
                "promotes through {} for {}",
                match self.s.backend {
                    PromoteBackend::Portal =>
                        format!("the Central Publisher Portal at {}", self.s.portal),
                    PromoteBackend::Nexus2 => format!("Nexus 2 at {}", self.s.nexus),
                },
                projects.join(", ")
            )
        };
        format!(
            "verifies staging at {} ({}); {promotion}",
            self.s.nexus, self.s.staging_content
        )
    }

    fn nexus_url(&self, segments: &[&str], dir: bool) -> Url {
        under(&self.s.nexus, segments, dir)
    }

    /// Reads `url`, returning `None` for 404, the response for success, and the classed
    /// error otherwise.
    async fn get(
        &self,
        url: &Url,
        accept: &'static str,
        auth: Option<&HeaderValue>,
    ) -> Result<Option<Response>, PlatformError> {
        let what = format!("GET {url}");
        let resp = self
            .http
            .send(&what, |c| {
                let mut r = c.get(url.clone()).header(ACCEPT, accept);
                if let Some(a) = auth {
                    r = r.header(AUTHORIZATION, a.clone());
                }
                r
            })
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(resp)),
            _ => Err(error_for(resp, &what).await),
        }
    }

    /// A response body of at most `max` bytes.
    async fn body(resp: Response, max: usize, what: &str) -> Result<Bytes, PlatformError> {
        let mut out = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|e| {
                PlatformError::transient(format!(
                    "{what}: reading the answer: {}",
                    super::http::describe(&e)
                ))
            })?;
            if out.len() + piece.len() > max {
                return Err(PlatformError::permanent(format!(
                    "{what}: the answer is larger than {max} bytes; refused"
                )));
            }
            out.extend_from_slice(&piece);
        }
        Ok(Bytes::from(out))
    }

    async fn json(resp: Response, what: &str) -> Result<Value, PlatformError> {
        let body = Self::body(resp, MAX_DOCUMENT, what).await?;
        serde_json::from_slice(&body)
            .map_err(|e| PlatformError::permanent(format!("{what}: not the JSON expected: {e}")))
    }

    /// Streams a file at `url` through the hashes, up to [`MAX_FILE`] bytes.
    async fn hash(
        &self,
        url: &Url,
        auth: Option<&HeaderValue>,
    ) -> Result<Option<Sums>, PlatformError> {
        let what = format!("GET {url}");
        let Some(resp) = self.get(url, "*/*", auth).await? else {
            return Ok(None);
        };
        let mut h = Hasher::default();
        let mut stream = resp.bytes_stream();
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|e| {
                PlatformError::transient(format!(
                    "{what}: reading the file: {}",
                    super::http::describe(&e)
                ))
            })?;
            h.update(&piece);
            if h.size > MAX_FILE {
                return Err(PlatformError::permanent(format!(
                    "{what}: the file is larger than {MAX_FILE} bytes; refused"
                )));
            }
        }
        Ok(Some(h.finish()))
    }

    /// Reads every entry of a version directory at `base` (checksum files as text, others
    /// hashed). An entry listed but gone when read is an error: the directory changed while
    /// it was read.
    async fn read_dir(
        &self,
        base: &Url,
        names: &[String],
        others: Vec<String>,
        auth: Option<&HeaderValue>,
    ) -> Result<Served, PlatformError> {
        if names.len() > MAX_FILES {
            return Err(PlatformError::permanent(format!(
                "{base} lists {} files, more than the {MAX_FILES} atr-dist reads; refused",
                names.len()
            )));
        }
        let set: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        let checksums = checksum_files(&set);
        let mut served = Served {
            other: others,
            ..Served::default()
        };
        for name in names {
            let url = under(base, &[name], false);
            if let Some((described, sum)) = checksums.get(name.as_str()) {
                let what = format!("GET {url}");
                let resp = self.get(&url, "*/*", auth).await?.ok_or_else(|| {
                    PlatformError::transient(format!("{what}: listed, but 404 when read"))
                })?;
                let text = Self::body(resp, MAX_CHECKSUM_FILE, &what).await?;
                served.checksums.insert(
                    name.clone(),
                    (
                        (*described).to_owned(),
                        *sum,
                        stated(&String::from_utf8_lossy(&text)),
                    ),
                );
                continue;
            }
            let sums = self.hash(&url, auth).await?.ok_or_else(|| {
                PlatformError::transient(format!("GET {url}: listed, but 404 when read"))
            })?;
            served.files.insert(name.clone(), sums);
        }
        Ok(served)
    }

    /// The staging repositories the configured Nexus user can see.
    async fn repositories(&self) -> Result<Vec<Repository>, PlatformError> {
        let url = self.nexus_url(&["staging", "profile_repositories"], false);
        let what = format!("GET {url}");
        let resp = self
            .get(&url, "application/json", self.nexus_auth.as_ref())
            .await?
            .ok_or_else(|| {
                PlatformError::permanent(format!(
                    "{what}: 404; is {} a Nexus 2 REST base?",
                    self.s.nexus
                ))
            })?;
        let doc = Self::json(resp, &what).await?;
        let list = doc
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| PlatformError::permanent(format!("{what}: no data list")))?;
        list.iter()
            .map(|r| {
                let id = r
                    .get("repositoryId")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        PlatformError::permanent(format!(
                            "{what}: a repository without repositoryId"
                        ))
                    })?;
                Ok(Repository {
                    id: id.to_owned(),
                    kind: r
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    transitioning: r
                        .get("transitioning")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                })
            })
            .collect()
    }

    fn listing_url(&self, repository: &str, gav: &Gav) -> Url {
        let mut segments = vec!["repositories", repository, "content"];
        segments.extend(gav.version_dir());
        self.nexus_url(&segments, true)
    }

    /// A repository's listing of the version directory: file names and other entries, or
    /// `None` when it does not hold the version.
    async fn listing(
        &self,
        repository: &str,
        gav: &Gav,
    ) -> Result<Option<(Vec<String>, Vec<String>)>, PlatformError> {
        let url = self.listing_url(repository, gav);
        let what = format!("GET {url}");
        let Some(resp) = self
            .get(&url, "application/json", self.nexus_auth.as_ref())
            .await?
        else {
            return Ok(None);
        };
        let doc = Self::json(resp, &what).await?;
        let items = doc
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| PlatformError::permanent(format!("{what}: no data list")))?;
        if items.len() > MAX_FILES {
            return Err(PlatformError::permanent(format!(
                "{what}: {} entries, more than the {MAX_FILES} atr-dist reads; refused",
                items.len()
            )));
        }
        let (mut files, mut others) = (Vec::new(), Vec::new());
        for item in items {
            let name = item.get("text").and_then(Value::as_str).ok_or_else(|| {
                PlatformError::permanent(format!("{what}: an entry without text"))
            })?;
            if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
                return Err(PlatformError::permanent(format!(
                    "{what}: an entry named {name:?}"
                )));
            }
            if item.get("leaf").and_then(Value::as_bool).unwrap_or(false) {
                files.push(name.to_owned());
            } else {
                others.push(format!("{name}/"));
            }
        }
        files.sort();
        Ok(Some((files, others)))
    }

    /// The staging repository holding the version: the one `tag` names, or, for the default
    /// tag (and a Portal tag), the only one that holds it.
    async fn find(
        &self,
        gav: &Gav,
        tag: &DistTag,
    ) -> Result<Option<(Repository, Vec<String>, Vec<String>)>, PlatformError> {
        let all = self.repositories().await?;
        let named = tag.as_str() != FIND_TAG && !tag.as_str().starts_with(PORTAL_TAG_PREFIX);
        let candidates: Vec<Repository> = if named {
            let one: Vec<Repository> = all.into_iter().filter(|r| r.id == tag.as_str()).collect();
            if one.is_empty() {
                return Err(PlatformError::permanent(format!(
                    "{}: the staging tag names staging repository {tag}, but {} lists no such repository",
                    gav.coords(),
                    self.s.nexus
                )));
            }
            one
        } else {
            all
        };
        if candidates.len() > MAX_REPOSITORIES {
            return Err(PlatformError::permanent(format!(
                "{} lists {} staging repositories, more than the {MAX_REPOSITORIES} atr-dist looks through; name the one holding {} as the stage job's staging_tag",
                self.s.nexus,
                candidates.len(),
                gav.coords()
            )));
        }
        let mut holding = Vec::new();
        for r in candidates {
            if let Some((files, others)) = self.listing(&r.id, gav).await? {
                holding.push((r, files, others));
            }
        }
        if holding.len() > 1 {
            let ids: Vec<&str> = holding.iter().map(|(r, ..)| r.id.as_str()).collect();
            return Err(PlatformError::permanent(format!(
                "{} is in {} staging repositories ({}); which one was voted on is not clear: drop the others, or name one as the stage job's staging_tag",
                gav.coords(),
                holding.len(),
                ids.join(", ")
            )));
        }
        Ok(holding.pop())
    }

    async fn activity(&self, repository: &str) -> Result<Vec<Activity>, PlatformError> {
        let url = self.nexus_url(&["staging", "repository", repository, "activity"], false);
        let what = format!("GET {url}");
        let Some(resp) = self
            .get(&url, "application/json", self.nexus_auth.as_ref())
            .await?
        else {
            return Ok(Vec::new());
        };
        let doc = Self::json(resp, &what).await?;
        parse_activity(&doc).map_err(|e| PlatformError::permanent(format!("{what}: {e}")))
    }

    /// `maven-metadata.xml` under `base`: whether it lists the version, and its date.
    async fn metadata(
        &self,
        base: &Url,
        gav: &Gav,
    ) -> Result<
        (
            Url,
            Option<Vec<String>>,
            Option<chrono::DateTime<chrono::Utc>>,
        ),
        PlatformError,
    > {
        let mut segments = gav.artifact_dir();
        segments.push("maven-metadata.xml");
        let url = under(base, &segments, false);
        let what = format!("GET {url}");
        let Some(resp) = self
            .get(&url, "application/xml, text/xml, */*", None)
            .await?
        else {
            return Ok((url, None, None));
        };
        let body = Self::body(resp, MAX_DOCUMENT, &what).await?;
        let (versions, updated) = metadata_versions(&String::from_utf8_lossy(&body))
            .map_err(|e| PlatformError::permanent(format!("{what}: {e}")))?;
        Ok((url, Some(versions), updated))
    }

    /// Reads and checks the staging repository holding the version (see the module
    /// documentation), or `None` when no repository holds it.
    async fn staged(
        &self,
        key: &DistributionKey,
        tag: &DistTag,
    ) -> Result<Option<StagedState>, PlatformError> {
        let gav = Gav::of(key)?;
        let Some((repository, files, others)) = self.find(&gav, tag).await? else {
            return Ok(None);
        };
        let id = repository.id.clone();
        match repository.kind.as_str() {
            "closed" | "released" if !repository.transitioning => {}
            "open" | "closed" | "released" if repository.transitioning => {
                return Err(PlatformError::not_yet(
                    format!(
                        "staging repository {id} holding {} is changing state (closing, releasing or dropping); waiting for it",
                        gav.coords()
                    ),
                    POLL,
                ));
            }
            "open" => {
                let failed: Vec<String> = self
                    .activity(&id)
                    .await?
                    .iter()
                    .filter(|a| a.name == "close")
                    .flat_map(Activity::failures)
                    .collect();
                return Err(PlatformError::permanent(if failed.is_empty() {
                    format!(
                        "staging repository {id} holding {} is still open: close it (Nexus runs its rules at close) before atr-dist verifies it",
                        gav.coords()
                    )
                } else {
                    format!(
                        "closing staging repository {id} holding {} failed: {}; fix the deployment and close it again",
                        gav.coords(),
                        failed.join("; ")
                    )
                }));
            }
            other => {
                return Err(PlatformError::permanent(format!(
                    "staging repository {id} holding {} is of type {other:?}, not open, closed or released",
                    gav.coords()
                )));
            }
        }
        let (api_url, versions, upload_date) = self.metadata(&self.s.staging_content, &gav).await?;
        // A released repository has left the staging group, whose metadata then no longer
        // lists it; its files are still read from the repository itself.
        if repository.kind == "closed" {
            match versions {
                Some(v) if v.iter().any(|x| x == &gav.version) => {}
                Some(v) => {
                    return Err(PlatformError::permanent(format!(
                        "{api_url} does not list version {} (it lists {}), although staging repository {id} holds it",
                        gav.version,
                        if v.is_empty() {
                            "none".to_owned()
                        } else {
                            v.join(", ")
                        }
                    )));
                }
                None => {
                    return Err(PlatformError::permanent(format!(
                        "{api_url} is not there (404), although staging repository {id} holds {}",
                        gav.coords()
                    )));
                }
            }
        }
        let listing_url = self.listing_url(&id, &gav);
        let served = self
            .read_dir(&listing_url, &files, others, self.nexus_auth.as_ref())
            .await?;
        let mut problems = served.checksum_problems();
        if !served.other.is_empty() {
            problems.push(format!(
                "entries that are not files: {}",
                served.other.join(", ")
            ));
        }
        if let Some(deployment) = tag.as_str().strip_prefix(PORTAL_TAG_PREFIX) {
            problems.extend(self.portal_differences(&gav, deployment, &served).await?);
        }
        if !problems.is_empty() {
            return Err(PlatformError::permanent(format!(
                "staging repository {id} holding {}: {}",
                gav.coords(),
                problems.join("; ")
            )));
        }
        Ok(Some(StagedState {
            repository,
            served,
            api_url,
            listing_url,
            upload_date,
        }))
    }

    /// How the Portal deployment differs from the verified staging repository, while it can
    /// still be published: its `purls` must name this version only, and each staged file must
    /// be in it with the same bytes.
    async fn portal_differences(
        &self,
        gav: &Gav,
        id: &str,
        served: &Served,
    ) -> Result<Vec<String>, PlatformError> {
        let d = self.deployment(id).await?;
        match d.state.as_str() {
            "VALIDATED" => {}
            "PENDING" | "VALIDATING" => {
                return Err(PlatformError::not_yet(
                    format!(
                        "Portal deployment {id} is {}; waiting for it to be validated",
                        d.state
                    ),
                    POLL,
                ));
            }
            // Being published or published: its files are compared on Central instead.
            "PUBLISHING" | "PUBLISHED" => return Ok(Vec::new()),
            "FAILED" => {
                return Err(PlatformError::permanent(format!(
                    "Portal deployment {id} FAILED: {}",
                    d.errors
                )));
            }
            other => {
                return Err(PlatformError::permanent(format!(
                    "Portal deployment {id} is in state {other:?}, which atr-dist does not know"
                )));
            }
        }
        let mut problems = Vec::new();
        let purl = gav.purl();
        let others: Vec<&String> = d
            .purls
            .iter()
            .filter(|p| !(p.as_str() == purl || p.starts_with(&format!("{purl}?"))))
            .collect();
        if !others.is_empty() {
            problems.push(format!(
                "Portal deployment {id} also holds {}",
                others
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let base = under(&self.s.portal, &["deployment", id, "download"], true);
        let base = under(&base, &gav.version_dir(), true);
        for (name, sums) in &served.files {
            let url = under(&base, &[name], false);
            match self.hash(&url, self.portal_auth.as_ref()).await? {
                None => problems.push(format!("Portal deployment {id} lacks {name}")),
                Some(p) if p.sha256 != sums.sha256 => problems.push(format!(
                    "Portal deployment {id} has {name} with sha256 {}, staging has {}",
                    p.sha256, sums.sha256
                )),
                Some(_) => {}
            }
        }
        Ok(problems)
    }

    async fn deployment(&self, id: &str) -> Result<Deployment, PlatformError> {
        let mut url = under(&self.s.portal, &["status"], false);
        url.query_pairs_mut().append_pair("id", id);
        let what = format!("POST {url}");
        let auth = self.portal_auth.clone();
        let resp = self
            .http
            .send(&what, |c| {
                let mut r = c.post(url.clone()).header(ACCEPT, "application/json");
                if let Some(a) = &auth {
                    r = r.header(AUTHORIZATION, a.clone());
                }
                r
            })
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(PlatformError::permanent(format!(
                "{what}: the Portal has no deployment {id}"
            )));
        }
        if !resp.status().is_success() {
            return Err(error_for(resp, &what).await);
        }
        let doc = Self::json(resp, &what).await?;
        let state = doc
            .get("deploymentState")
            .and_then(Value::as_str)
            .ok_or_else(|| PlatformError::permanent(format!("{what}: no deploymentState")))?;
        Ok(Deployment {
            id: id.to_owned(),
            state: state.to_owned(),
            purls: doc
                .get("purls")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            errors: doc
                .get("errors")
                .map(Value::to_string)
                .unwrap_or_else(|| "no errors given".into()),
        })
    }

    /// What Maven Central serves for the version, read and checked, or `None` when its
    /// metadata does not list it yet.
    async fn central(&self, key: &DistributionKey) -> Result<Option<Observed>, PlatformError> {
        let gav = Gav::of(key)?;
        let (api_url, versions, upload_date) = self.metadata(&self.s.central, &gav).await?;
        if !versions.is_some_and(|v| v.contains(&gav.version)) {
            return Ok(None);
        }
        let dir = under(&self.s.central, &gav.version_dir(), true);
        let what = format!("GET {dir}");
        let resp = self.get(&dir, "text/html", None).await?.ok_or_else(|| {
            PlatformError::not_yet(
                format!("{api_url} lists {} but {dir} is not there yet", gav.version),
                POLL,
            )
        })?;
        let html = Self::body(resp, MAX_DOCUMENT, &what).await?;
        let names = html_index_files(&String::from_utf8_lossy(&html));
        let served = self.read_dir(&dir, &names, Vec::new(), None).await?;
        let problems = served.checksum_problems();
        if !problems.is_empty() {
            return Err(PlatformError::permanent(format!(
                "Maven Central's {}: {}",
                gav.coords(),
                problems.join("; ")
            )));
        }
        Ok(Some(Observed {
            digest: served.digest(),
            api_url: Some(api_url.to_string()),
            web_url: Some(dir.to_string()),
            upload_date,
        }))
    }

    /// The voted files by file name, each checked to be a file of this version.
    fn voted<'a>(
        gav: &Gav,
        artifacts: &'a [Sealed],
    ) -> Result<BTreeMap<String, &'a Sealed>, PlatformError> {
        let mut out: BTreeMap<String, &Sealed> = BTreeMap::new();
        for a in artifacts {
            let path = a.path().as_str();
            let name = path.rsplit('/').next().unwrap_or(path).to_owned();
            if !gav.names(&name) {
                return Err(PlatformError::permanent(format!(
                    "{path} is not a file of {}: Maven names them {}-{}[-classifier].<extension>",
                    gav.coords(),
                    gav.artifact,
                    gav.version
                )));
            }
            if let Some(other) = out.insert(name.clone(), a) {
                return Err(PlatformError::permanent(format!(
                    "{} and {path} are both {name} in the version directory",
                    other.path()
                )));
            }
        }
        Ok(out)
    }

    /// The voted content files (checksum files aside) with their sums, after checking that
    /// each voted checksum file states the digest of the voted file it describes.
    async fn voted_sums(
        gav: &Gav,
        artifacts: &[Sealed],
    ) -> Result<(BTreeMap<String, Sums>, BTreeSet<String>), PlatformError> {
        let voted = Self::voted(gav, artifacts)?;
        let names: BTreeSet<&str> = voted.keys().map(String::as_str).collect();
        let checksums = checksum_files(&names);
        let mut files = BTreeMap::new();
        for (name, sealed) in &voted {
            if checksums.contains_key(name.as_str()) {
                continue;
            }
            // md5 is not among the digests sealing computes; it is needed rarely (a voted
            // .md5 file), and then the file is read once more from its sealed copy.
            let md5 = match voted.keys().any(|n| n == &format!("{name}.md5")) {
                true => {
                    let bytes = sealed
                        .bytes()
                        .await
                        .map_err(|e| PlatformError::transient(e.to_string()))?;
                    hex::encode(Md5::digest(&bytes))
                }
                false => String::new(),
            };
            files.insert(
                name.clone(),
                Sums {
                    size: sealed.size(),
                    md5,
                    sha1: sealed.sha1_hex().to_owned(),
                    sha256: hex::encode(sealed.sha256().bytes()),
                    sha512: hex::encode(sealed.sha512().bytes()),
                },
            );
        }
        for (name, (described, sum)) in &checksums {
            let sealed = voted[*name];
            let text = sealed
                .bytes()
                .await
                .map_err(|e| PlatformError::transient(e.to_string()))?;
            let want = files[*described].get(*sum);
            match stated(&String::from_utf8_lossy(
                &text[..text.len().min(MAX_CHECKSUM_FILE)],
            )) {
                Some(s) if s == want => {}
                other => {
                    return Err(PlatformError::permanent(format!(
                        "the voted {name} states {}, but the voted {described} has {} {want}",
                        other.as_deref().unwrap_or("no digest"),
                        sum.name()
                    )));
                }
            }
        }
        Ok((files, checksums.keys().map(|s| (*s).to_owned()).collect()))
    }

    /// Every difference between the vote and the staging repository, named.
    fn differences(
        voted: &BTreeMap<String, Sums>,
        voted_checksums: &BTreeSet<String>,
        served: &Served,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for (name, sums) in voted {
            match served.files.get(name) {
                None => out.push(format!("{name} is voted but not staged")),
                Some(s) if s.sha256 != sums.sha256 => out.push(format!(
                    "{name} is staged with other bytes (sha256 {}, {} bytes; the vote has {}, {} bytes)",
                    s.sha256, s.size, sums.sha256, sums.size
                )),
                Some(_) => {}
            }
        }
        let unvoted: Vec<&str> = served
            .files
            .keys()
            .filter(|n| !voted.contains_key(*n))
            .map(String::as_str)
            .collect();
        if !unvoted.is_empty() {
            out.push(format!(
                "staged but not voted: {} (nothing unvoted may be released)",
                unvoted.join(", ")
            ));
        }
        let missing: Vec<&str> = voted_checksums
            .iter()
            .filter(|n| !served.checksums.contains_key(*n))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            out.push(format!(
                "voted checksum files not staged: {}",
                missing.join(", ")
            ));
        }
        out
    }

    fn observed(s: &StagedState) -> Observed {
        Observed {
            digest: s.served.digest(),
            api_url: Some(s.api_url.to_string()),
            web_url: Some(s.listing_url.to_string()),
            upload_date: s.upload_date,
        }
    }

    fn bulk_promote_url(&self) -> Url {
        self.nexus_url(&["staging", "bulk", "promote"], false)
    }

    fn publish_url(&self, id: &str) -> Url {
        under(&self.s.portal, &["deployment", id], false)
    }

    /// Releases the Nexus 2 staging repository, or says where its release stands.
    async fn release_nexus(&self, gav: &Gav, repository: &Repository) -> Result<(), PlatformError> {
        let id = &repository.id;
        if repository.kind == "released" {
            return Err(PlatformError::not_yet(
                format!(
                    "staging repository {id} is released; waiting for Maven Central to list {}",
                    gav.coords()
                ),
                POLL,
            ));
        }
        let activity = self.activity(id).await?;
        if let Some(release) = activity.iter().find(|a| a.name == "release") {
            return Err(Self::release_state(gav, id, release));
        }
        let url = self.bulk_promote_url();
        let what = format!("POST {url}");
        let body = serde_json::json!({"data": {
            "stagedRepositoryIds": [id],
            "description": format!("{} released by atr-dist after the vote", gav.coords()),
            "autoDropAfterRelease": false,
        }})
        .to_string();
        let auth = self.nexus_auth.clone();
        confirmed(
            &self.http,
            &what,
            || {
                let (url, body, auth) = (url.clone(), body.clone(), auth.clone());
                let what = what.clone();
                async move {
                    self.http
                        .write(&what, move |c| {
                            let mut r = c
                                .post(url.clone())
                                .header(ACCEPT, "application/json")
                                .header(CONTENT_TYPE, "application/json")
                                .body(body.clone());
                            if let Some(a) = &auth {
                                r = r.header(AUTHORIZATION, a.clone());
                            }
                            r
                        })
                        .await
                }
            },
            || async {
                let activity = self.activity(id).await?;
                Ok(match activity.iter().find(|a| a.name == "release") {
                    Some(r) if !r.failures().is_empty() => {
                        Found::Other(format!("a failed release: {}", r.failures().join("; ")))
                    }
                    Some(_) => Found::Expected,
                    None => Found::Nothing,
                })
            },
            |resp| {
                let what = what.clone();
                async move { error_for(resp, &what).await }
            },
        )
        .await?;
        Err(PlatformError::not_yet(
            format!(
                "asked Nexus to release staging repository {id} ({}); waiting for repositoryReleased and for Maven Central to list it",
                gav.coords()
            ),
            POLL,
        ))
    }

    /// Where a started release stands, as the error the attempt ends with: a wait, or the
    /// rule failures that refused it.
    fn release_state(gav: &Gav, id: &str, release: &Activity) -> PlatformError {
        let failures = release.failures();
        if !failures.is_empty() {
            return PlatformError::permanent(format!(
                "Nexus refused to release staging repository {id} ({}): {}",
                gav.coords(),
                failures.join("; ")
            ));
        }
        if release.has("repositoryReleased") {
            return PlatformError::not_yet(
                format!(
                    "staging repository {id} is released; waiting for Maven Central to list {}",
                    gav.coords()
                ),
                POLL,
            );
        }
        PlatformError::not_yet(
            format!(
                "the release of staging repository {id} ({}) is in progress{}",
                gav.coords(),
                if release.stopped {
                    ""
                } else {
                    " (not stopped yet)"
                }
            ),
            POLL,
        )
    }

    /// Publishes the Portal deployment, or says where its publication stands.
    async fn publish_portal(
        &self,
        key: &DistributionKey,
        gav: &Gav,
        id: &str,
    ) -> Result<(), PlatformError> {
        let d = self.deployment(id).await?;
        match d.state.as_str() {
            "VALIDATED" => {}
            "PENDING" | "VALIDATING" | "PUBLISHING" => {
                return Err(PlatformError::not_yet(
                    format!(
                        "Portal deployment {id} ({}) is {}; waiting",
                        gav.coords(),
                        d.state
                    ),
                    POLL,
                ));
            }
            "PUBLISHED" => {
                return match self.central(key).await? {
                    Some(_) => Ok(()),
                    None => Err(PlatformError::not_yet(
                        format!(
                            "Portal deployment {id} is PUBLISHED; waiting for Maven Central to list {}",
                            gav.coords()
                        ),
                        POLL,
                    )),
                };
            }
            "FAILED" => {
                return Err(PlatformError::permanent(format!(
                    "Portal deployment {id} ({}) FAILED: {}",
                    gav.coords(),
                    d.errors
                )));
            }
            other => {
                return Err(PlatformError::permanent(format!(
                    "Portal deployment {id} is in state {other:?}, which atr-dist does not know"
                )));
            }
        }
        let url = self.publish_url(id);
        let what = format!("POST {url}");
        let auth = self.portal_auth.clone();
        confirmed(
            &self.http,
            &what,
            || {
                let (url, auth, what) = (url.clone(), auth.clone(), what.clone());
                async move {
                    self.http
                        .write(&what, move |c| {
                            let mut r = c.post(url.clone()).header(ACCEPT, "application/json");
                            if let Some(a) = &auth {
                                r = r.header(AUTHORIZATION, a.clone());
                            }
                            r
                        })
                        .await
                }
            },
            || async {
                let d = self.deployment(id).await?;
                Ok(match d.state.as_str() {
                    "PUBLISHING" | "PUBLISHED" => Found::Expected,
                    "VALIDATED" => Found::Nothing,
                    other => Found::Other(format!("deployment {} is {other}: {}", d.id, d.errors)),
                })
            },
            |resp| {
                let what = what.clone();
                async move { error_for(resp, &what).await }
            },
        )
        .await?;
        Err(PlatformError::not_yet(
            format!(
                "asked the Portal to publish deployment {id} ({}); waiting for PUBLISHED and for Maven Central to list it",
                gav.coords()
            ),
            POLL,
        ))
    }
}

/// Whether `[platforms.maven]` makes Maven a target: any of its URLs or credentials set.
/// Verification reads public places, but a worker left on defaults contacts nothing.
pub fn configured(p: &PlatformConfig) -> bool {
    p.base_url.is_some()
        || p.staging_base_url.is_some()
        || p.read_url.is_some()
        || p.staging_read_url.is_some()
        || p.token.is_some()
        || p.staging_token.is_some()
}

impl PlatformAdapter for MavenAdapter {
    fn expected_digest<'a>(
        &'a self,
        req: &'a StageRequest,
    ) -> BoxFuture<'a, Result<Digest, PlatformError>> {
        async move {
            let gav = Gav::of(&req.key)?;
            let (files, _) = Self::voted_sums(&gav, &req.artifacts).await?;
            Ok(digest_of(
                files.iter().map(|(n, s)| (n.as_str(), s.sha256.as_str())),
            ))
        }
        .boxed()
    }

    /// Nothing: Maven staging is filled by the project's own deploy.
    fn plan_stage(&self, _req: &StageRequest) -> Vec<PlannedWrite> {
        Vec::new()
    }

    /// Writes nothing. Called when the staging repository is not the vote (or holds nothing):
    /// says exactly how it differs.
    fn stage<'a>(&'a self, req: &'a StageRequest) -> BoxFuture<'a, Result<(), PlatformError>> {
        async move {
            let gav = Gav::of(&req.key)?;
            let (voted, voted_checksums) = Self::voted_sums(&gav, &req.artifacts).await?;
            let Some(state) = self.staged(&req.key, &req.staging_tag).await? else {
                return Err(PlatformError::permanent(format!(
                    "no staging repository on {} holds {}: deploy the voted files to Apache's Nexus staging and close the repository; atr-dist only verifies Maven staging, it uploads nothing",
                    self.s.nexus,
                    gav.coords()
                )));
            };
            let diff = Self::differences(&voted, &voted_checksums, &state.served);
            if diff.is_empty() {
                // Equal now (it changed between the two reads): the pipeline reads it again.
                return Ok(());
            }
            Err(PlatformError::permanent(format!(
                "staging repository {} does not hold exactly the voted files of {}: {}",
                state.repository.id,
                gav.coords(),
                diff.join("; ")
            )))
        }
        .boxed()
    }

    fn read_staged<'a>(
        &'a self,
        key: &'a DistributionKey,
        staging_tag: &'a DistTag,
    ) -> BoxFuture<'a, Result<Option<Observed>, PlatformError>> {
        async move {
            Ok(self
                .staged(key, staging_tag)
                .await?
                .as_ref()
                .map(Self::observed))
        }
        .boxed()
    }

    fn plan_promote(&self, req: &PromoteRequest) -> Vec<PlannedWrite> {
        let coords = Gav::of(&req.key).map(|g| g.coords()).unwrap_or_default();
        match self.s.backend {
            PromoteBackend::Nexus2 => vec![PlannedWrite {
                method: "POST",
                url: self.bulk_promote_url().to_string(),
                what: format!("release the staging repository holding {coords} to Maven Central"),
            }],
            PromoteBackend::Portal => {
                let id = req
                    .staging_tag
                    .as_str()
                    .strip_prefix(PORTAL_TAG_PREFIX)
                    .unwrap_or("<none: stage with staging_tag portal-<deployment id>>");
                vec![PlannedWrite {
                    method: "POST",
                    url: self.publish_url(id).to_string(),
                    what: format!("publish Portal deployment {id} ({coords}) to Maven Central"),
                }]
            }
        }
    }

    fn promote<'a>(&'a self, req: &'a PromoteRequest) -> BoxFuture<'a, Result<(), PlatformError>> {
        async move {
            let gav = Gav::of(&req.key)?;
            // The pipeline has just compared the staging place with the staged digest; this
            // is the adapter's own check, right before the write.
            let Some(state) = self.staged(&req.key, &req.staging_tag).await? else {
                return Err(PlatformError::permanent(format!(
                    "{}: the verified staging repository is gone; nothing promoted",
                    gav.coords()
                )));
            };
            let now = state.served.digest();
            if now != req.staged_digest {
                return Err(PlatformError::permanent(format!(
                    "staging repository {} now comes to {now}, not the verified {}; nothing promoted",
                    state.repository.id, req.staged_digest
                )));
            }
            match self.s.backend {
                PromoteBackend::Nexus2 => self.release_nexus(&gav, &state.repository).await,
                PromoteBackend::Portal => {
                    let Some(id) = req.staging_tag.as_str().strip_prefix(PORTAL_TAG_PREFIX) else {
                        return Err(PlatformError::permanent(format!(
                            "{} was staged under {:?}, which names no Central Publisher Portal deployment: with promote_backend = \"portal\", stage it with staging_tag {PORTAL_TAG_PREFIX}<deployment id>",
                            gav.coords(),
                            req.staging_tag.as_str()
                        )));
                    };
                    self.publish_portal(&req.key, &gav, id).await
                }
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
            if let Some(o) = self.central(key).await? {
                return Ok(Some(o));
            }
            match self.s.backend {
                // The Portal's deployment is polled by promote, which the pipeline calls
                // again while Central does not list the version.
                PromoteBackend::Portal => Ok(None),
                // A released Nexus repository leaves the staging group, so the staged files
                // would look gone: a release under way is found here, first.
                PromoteBackend::Nexus2 => {
                    let gav = Gav::of(key)?;
                    let Some((repository, ..)) = self.find(&gav, &DistTag::new(FIND_TAG).unwrap_or_else(|_| DistTag::latest())).await? else {
                        return Ok(None);
                    };
                    let activity = self.activity(&repository.id).await?;
                    match activity.iter().find(|a| a.name == "release") {
                        Some(release) => Err(Self::release_state(&gav, &repository.id, release)),
                        None if repository.kind == "released" => Err(PlatformError::not_yet(
                            format!("staging repository {} is released; waiting for Maven Central to list {}", repository.id, gav.coords()),
                            POLL,
                        )),
                        None => Ok(None),
                    }
                }
            }
        }
        .boxed()
    }

    fn default_tags(&self, _key: &DistributionKey) -> (DistTag, DistTag) {
        (
            DistTag::new(FIND_TAG).unwrap_or_else(|_| DistTag::latest()),
            DistTag::latest(),
        )
    }

    fn staging(&self) -> Staging {
        Staging::Platform
    }

    fn promotion(&self) -> PromotionMechanism {
        PromotionMechanism::NexusRelease
    }

    fn promotion_allowed(&self, project: &ProjectKey) -> Result<(), String> {
        if self.s.promote_projects.contains(project) {
            return Ok(());
        }
        Err(format!(
            "promotion to Maven Central is disabled by policy for project {project}: ATR does not release Maven artifacts itself unless an operator lists the project in [{SECTION}] promote_projects; nothing was sent, and the staging repository stays as it is (stage jobs still verify it)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use atr_dist_shared::Platform;
    use atr_dist_shared::names::{PackageName, ReleaseKey, Version};

    use super::*;

    fn key(ns: &str) -> DistributionKey {
        DistributionKey::new(
            ReleaseKey::new("example-1.0.0").unwrap(),
            Platform::Maven,
            ns,
            PackageName::new("example-lib").unwrap(),
            Version::new("1.0.0").unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn the_group_id_is_the_owner_namespace() {
        let gav = Gav::of(&key("org.apache.example")).unwrap();
        assert_eq!(gav.coords(), "org.apache.example:example-lib:1.0.0");
        assert_eq!(
            gav.version_dir(),
            ["org", "apache", "example", "example-lib", "1.0.0"]
        );
        assert_eq!(gav.purl(), "pkg:maven/org.apache.example/example-lib@1.0.0");
        // Malformed groupIds never get here: DistributionKey refuses them (key.rs).
        assert!(gav.names("example-lib-1.0.0.jar"));
        assert!(gav.names("example-lib-1.0.0-sources.jar.asc"));
        assert!(!gav.names("example-lib-1.0.01.jar"));
        assert!(!gav.names("other-1.0.0.jar"));
    }

    #[test]
    fn urls_encode_each_segment() {
        let base = Url::parse("http://127.0.0.1:1/service/local/").unwrap();
        assert_eq!(
            under(
                &base,
                &["repositories", "orgapache-1", "content", "a", "b"],
                true
            )
            .as_str(),
            "http://127.0.0.1:1/service/local/repositories/orgapache-1/content/a/b/"
        );
        assert_eq!(
            under(&base, &["x?y#z"], false).as_str(),
            "http://127.0.0.1:1/service/local/x%3Fy%23z"
        );
    }

    #[test]
    fn checksum_files_describe_another_file_of_the_version() {
        let names: BTreeSet<&str> = [
            "a.jar",
            "a.jar.sha1",
            "a.jar.md5",
            "a.jar.asc",
            "a.jar.asc.sha512",
            "b.pom.sha1",
            "a.jar.sha1.md5",
        ]
        .into_iter()
        .collect();
        let c = checksum_files(&names);
        assert_eq!(c.get("a.jar.sha1"), Some(&("a.jar", Sum::Sha1)));
        assert_eq!(c.get("a.jar.asc.sha512"), Some(&("a.jar.asc", Sum::Sha512)));
        // No file to describe, or a checksum of a checksum: content like any other.
        assert!(!c.contains_key("b.pom.sha1"));
        assert!(!c.contains_key("a.jar.sha1.md5"));
        assert_eq!(stated("ABCD12  a.jar\n"), Some("abcd12".into()));
        assert_eq!(stated("not hex"), None);
    }

    #[test]
    fn the_version_digest_is_over_sorted_names_and_sha256s() {
        let a = digest_of([("b.pom", "22"), ("a.jar", "11")].into_iter());
        let want = Digest::from_bytes(
            atr_dist_shared::DigestAlgorithm::Sha256,
            &Sha256::digest(b"a.jar 11\nb.pom 22\n"),
        )
        .unwrap();
        assert_eq!(a, want);
        assert_ne!(a, digest_of([("a.jar", "11")].into_iter()));
    }

    #[test]
    fn metadata_lists_versions_and_its_date() {
        let xml = "<?xml version=\"1.0\"?><metadata><groupId>g</groupId><artifactId>a</artifactId>\
            <versioning><latest>1.1</latest><release>1.1</release><versions>\n<version>1.0</version>\n<version> 1.1 </version></versions>\
            <lastUpdated>20261201100000</lastUpdated></versioning></metadata>";
        let (v, updated) = metadata_versions(xml).unwrap();
        assert_eq!(v, ["1.0", "1.1"]);
        assert_eq!(updated.unwrap().to_rfc3339(), "2026-12-01T10:00:00+00:00");
        assert!(
            metadata_versions("<metadata/>")
                .unwrap_err()
                .contains("versioning")
        );
    }

    #[test]
    fn html_indexes_give_the_files_only() {
        let html = r#"<html><body><a href="../">../</a>
            <a href="example-lib-1.0.0.jar" title="x">example-lib-1.0.0.jar</a>
            <A HREF='example-lib-1.0.0.pom'>pom</A> <a href="sub/">sub/</a>
            <a href="https://elsewhere/x.jar">x</a><a href="?C=N;O=D">Name</a>
            <a href="./example-lib-1.0.0.jar.sha1">sha1</a></body></html>"#;
        assert_eq!(
            html_index_files(html),
            [
                "example-lib-1.0.0.jar",
                "example-lib-1.0.0.jar.sha1",
                "example-lib-1.0.0.pom"
            ]
        );
    }

    #[test]
    fn activity_failures_are_rule_failures_or_severe_events() {
        let doc = serde_json::json!([
            {"name": "close", "started": "x", "stopped": "y", "events": [
                {"name": "ruleEvaluate", "severity": 0, "properties": [{"name": "typeId", "value": "sources"}]},
                {"name": "ruleFailed", "severity": 1, "properties": [{"name": "typeId", "value": "signature-staging"}, {"name": "failureMessage", "value": "No public key"}]}
            ]},
            {"name": "release", "events": [{"name": "repositoryReleased", "severity": "0", "properties": [{"name": "id", "value": "orgapache-1"}]}]}
        ]);
        let a = parse_activity(&doc).unwrap();
        assert_eq!(
            a[0].failures(),
            ["ruleFailed (typeId=signature-staging, failureMessage=No public key)"]
        );
        assert!(a[0].stopped && !a[1].stopped);
        assert!(a[1].failures().is_empty() && a[1].has("repositoryReleased"));
    }

    /// Any one URL or credential makes Maven a target; none leaves it off.
    #[test]
    fn any_url_or_credential_enables_the_section() {
        assert!(!configured(&PlatformConfig::default()));
        for (name, c) in crate::platform::one_setting_each() {
            assert!(configured(&c), "{name} alone");
        }
    }

    /// A rule failure is a failure whatever its severity, and so is any severe event.
    #[test]
    fn a_failure_is_a_failed_rule_or_a_severe_event() {
        let event = |name: &str, severity| Event {
            name: name.into(),
            severity,
            properties: Vec::new(),
        };
        assert!(event("ruleFailed", 0).failed());
        assert!(event("ruleFailed", 1).failed());
        assert!(event("repositoryCloseFailed", 2).failed());
        assert!(!event("ruleEvaluate", 0).failed());
    }

    /// Each voted checksum file must state the digest of the voted file it describes; md5
    /// is worked out only for a file with a voted `.md5` beside it.
    #[tokio::test]
    async fn voted_checksum_files_must_state_the_voted_digests() {
        let gav = Gav::of(&key("org.apache.example")).unwrap();
        let dir = "maven/org/apache/example/example-lib/1.0.0";
        let file = |name: &str, bytes: &[u8]| {
            crate::seal::sealed_for_test(&format!("{dir}/{name}"), bytes)
        };
        let jar = b"PK the classes";
        let md5 = hex::encode(Md5::digest(jar));
        let sha1 = hex::encode(Sha1::digest(jar));
        let voted = [
            file("example-lib-1.0.0.jar", jar),
            file("example-lib-1.0.0.pom", b"<project/>"),
            file(
                "example-lib-1.0.0.jar.md5",
                format!("{md5}  example-lib-1.0.0.jar\n").as_bytes(),
            ),
        ];
        let (files, checksums) = MavenAdapter::voted_sums(&gav, &voted).await.unwrap();
        assert_eq!(files["example-lib-1.0.0.jar"].md5, md5);
        assert_eq!(files["example-lib-1.0.0.pom"].md5, "", "not read again");
        assert_eq!(
            checksums.into_iter().collect::<Vec<_>>(),
            ["example-lib-1.0.0.jar.md5"]
        );

        let mut wrong = voted.to_vec();
        wrong[2] = file(
            "example-lib-1.0.0.jar.sha1",
            b"0123abcd  example-lib-1.0.0.jar",
        );
        let err = MavenAdapter::voted_sums(&gav, &wrong).await.unwrap_err();
        assert_eq!(
            err.message,
            format!(
                "the voted example-lib-1.0.0.jar.sha1 states 0123abcd, but the voted example-lib-1.0.0.jar has sha1 {sha1}"
            )
        );
    }

    /// A promote's plan is the one release request to Nexus, or the publish of the Portal
    /// deployment the staging tag names.
    #[test]
    fn a_promote_plans_the_release_or_the_publish() {
        let mut c = PlatformConfig {
            staging_base_url: Some(Url::parse("http://127.0.0.1:1/service/local/").unwrap()),
            promote_backend: Some(PromoteBackend::Nexus2),
            ..PlatformConfig::default()
        };
        let req = |tag: &str| PromoteRequest {
            key: key("org.apache.example"),
            staged_digest: Digest::parse(format!("sha256:{}", "0".repeat(64))).unwrap(),
            staging_tag: DistTag::new(tag).unwrap(),
            release_tag: DistTag::latest(),
            artifacts: Vec::new(),
            companions: Vec::new(),
        };
        let plan = |c: &PlatformConfig, tag: &str| -> Vec<(&'static str, String, String)> {
            MavenAdapter::from_config(c)
                .unwrap()
                .unwrap()
                .plan_promote(&req(tag))
                .into_iter()
                .map(|p| (p.method, p.url, p.what))
                .collect()
        };
        assert_eq!(
            plan(&c, FIND_TAG),
            [(
                "POST",
                "http://127.0.0.1:1/service/local/staging/bulk/promote".to_owned(),
                "release the staging repository holding org.apache.example:example-lib:1.0.0 to Maven Central".to_owned()
            )]
        );
        c.promote_backend = Some(PromoteBackend::Portal);
        assert_eq!(
            plan(&c, "portal-b3c1"),
            [(
                "POST",
                format!("{DEFAULT_PORTAL_URL}deployment/b3c1"),
                "publish Portal deployment b3c1 (org.apache.example:example-lib:1.0.0) to Maven Central".to_owned()
            )]
        );
    }

    #[test]
    fn promotion_is_off_unless_the_project_is_listed() {
        let mut c = PlatformConfig::default();
        assert!(
            MavenAdapter::from_config(&c).unwrap().is_none(),
            "not configured"
        );
        c.staging_base_url = Some(Url::parse("http://127.0.0.1:1/service/local").unwrap());
        let a = MavenAdapter::from_config(&c).unwrap().unwrap();
        assert_eq!(a.s.backend, PromoteBackend::Portal);
        assert_eq!(a.s.nexus.as_str(), "http://127.0.0.1:1/service/local/");
        let example = ProjectKey::new("example").unwrap();
        let why = a.promotion_allowed(&example).unwrap_err();
        assert!(
            why.contains("disabled by policy for project example"),
            "{why}"
        );
        assert!(
            a.describe().contains("promotion disabled by policy"),
            "{}",
            a.describe()
        );
        c.promote_projects = vec!["example".into()];
        c.promote_backend = Some(PromoteBackend::Nexus2);
        let a = MavenAdapter::from_config(&c).unwrap().unwrap();
        assert_eq!(a.promotion_allowed(&example), Ok(()));
        assert!(
            a.promotion_allowed(&ProjectKey::new("other").unwrap())
                .is_err()
        );
        assert_eq!(a.promotion(), PromotionMechanism::NexusRelease);
        // A Nexus password without a user name cannot be sent.
        c.staging_token = Some(Secret::new("x"));
        assert!(MavenAdapter::from_config(&c).is_err());
    }
}
