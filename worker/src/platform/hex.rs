//! Hex (hex.pm): no staging place (`Staging::Local`), and promotion is the one upload
//! (`PromotionMechanism::Reupload`): a Hex release is public the moment it is published.
//!
//! - **Stage** checks the voted package tarball and sends nothing: the outer tar holds
//!   exactly `VERSION` (`3`), `CHECKSUM`, `metadata.config` and `contents.tar.gz`, each once
//!   and as a regular file; `CHECKSUM` is the package's inner checksum (hexpm/specifications
//!   `package_tarball.md`: sha256 over `VERSION`, `metadata.config` and `contents.tar.gz`
//!   concatenated, base16, upper case by the specification; either case is read) and must
//!   match; `metadata.config` (Erlang terms, `file:consult/1` format) must name the
//!   distribution's package and version. The digest recorded is the sha256 of the whole
//!   tarball.
//! - **Promote** publishes the voted tarball, sealed again from the voted revision by the
//!   pipeline: `POST <api>/publish`, body the tarball (`application/octet-stream`),
//!   `Accept: application/json`, `Authorization: <API key>` (no scheme), then reads the
//!   release back, `GET <api>/packages/<name>/releases/<version>`, and compares its
//!   `checksum`.
//!
//! Which checksum the API reports: the release's `checksum` is the **outer** checksum, the
//! lower-case hex sha256 of the entire tarball (hexpm's `ReleaseView` renders
//! `release.outer_checksum`; apiary.apib: "SHA-256 checksum of the package tarball"; the
//! inner checksum in `CHECKSUM` is deprecated for verification, `package_tarball.md`). So
//! the platform digest is the sealed file's own sha256, which stage records and promote
//! compares, and nothing computed from the tarball's parts is taken on trust.
//!
//! A release that is there already with the voted checksum counts as published, and
//! promote writes nothing; with another checksum it is refused. hex.pm lets an owner
//! replace a release for an hour after publishing it (`?replace=true`); atr-dist never asks
//! for that: a voted release is not overwritten, and neither is someone else's. A publish
//! whose answer is lost, or refused (hex.pm answers 422 "has already been published" or
//! "can only modify a release up to one hour after creation" for a version that exists), is
//! settled by reading the release back (`write.rs`).
//!
//! Refusals: a 401/403 asking for a one-time password (`x-hex-otp`, hex.pm's two-factor
//! authentication for writes) is an `auth` failure saying which key to configure; a 422 is
//! permanent and carries hex.pm's `errors`; a 429 (the rate limit used up) waits, without
//! spending an attempt, until `X-RateLimit-Reset`, and so does a publish that a read found
//! `X-RateLimit-Remaining: 0` before.

use std::time::Duration;

use atr_dist_shared::names::DistTag;
use atr_dist_shared::{Digest, DigestAlgorithm, DistributionKey, ErrorClass, PromotionMechanism};
use futures::FutureExt;
use futures::future::BoxFuture;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue,
};
use reqwest::{Response, StatusCode};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use url::Url;

use super::http::{PlatformHttp, error_for};
use super::write::{Found, Written, confirmed};
use super::{
    Observed, PlannedWrite, PlatformAdapter, PlatformError, PromoteRequest, Sealed, StageRequest,
    Staging, refuse_above,
};
use crate::blocking::{self, Cancel};
use crate::config::{ConfigError, PlatformConfig};
use crate::secret::Secret;

pub const DEFAULT_API: &str = "https://hex.pm/api";
const SECTION: &str = "platforms.hex";

/// hex.pm refuses tarballs above 8 MB (16 MB for a few); 64 MiB is far above any of them,
/// and the tarball is read whole for the check.
const MAX_TARBALL: u64 = 64 * 1024 * 1024;
/// `metadata.config` is a few kilobytes in practice.
const MAX_METADATA: u64 = 1024 * 1024;
/// `VERSION` is one ASCII integer; `CHECKSUM` 64 hex digits.
const MAX_SMALL: u64 = 128;
/// How deep Erlang terms may nest in `metadata.config` (requirements nest three deep).
const MAX_DEPTH: usize = 32;
/// A rate limit without `X-RateLimit-Reset` waits this long (hex.pm's window is a minute).
const DEFAULT_RESET: Duration = Duration::from_secs(60);
/// The longest wait a reset time is believed for.
const MAX_RESET: Duration = Duration::from_secs(3600);

/// The four files of a package tarball, in the order the inner checksum covers the first
/// three.
const VERSION: &str = "VERSION";
const METADATA: &str = "metadata.config";
const CONTENTS: &str = "contents.tar.gz";
const CHECKSUM: &str = "CHECKSUM";

pub struct HexAdapter {
    http: PlatformHttp,
    /// The API's base, ending in `/` (`https://hex.pm/api/`).
    api: Url,
    /// `Authorization: <key>`, marked sensitive.
    auth: Option<HeaderValue>,
}

/// What a valid package tarball says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// The inner checksum, as `CHECKSUM` holds it (checked).
    pub inner_checksum: [u8; 32],
}

/// A release as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Release {
    checksum: String,
    html_url: Option<String>,
    inserted_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A read of a release: the release, if hex.pm has it, and whether the read used up the
/// rate limit (`X-RateLimit-Remaining: 0`), with the wait until its reset.
struct Read {
    release: Option<Release>,
    exhausted: Option<Duration>,
}

/// The wait until hex.pm's rate limit resets: `X-RateLimit-Reset` (UNIX epoch seconds) less
/// now, at least a second, at most an hour; a minute when the header is absent or unreadable.
fn until_reset(headers: &HeaderMap) -> Duration {
    let Some(reset) = headers
        .get("x-ratelimit-reset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
    else {
        return DEFAULT_RESET;
    };
    let secs = reset - chrono::Utc::now().timestamp();
    Duration::from_secs(secs.clamp(1, MAX_RESET.as_secs() as i64) as u64)
}

/// `X-RateLimit-Remaining: 0`: the next request would be refused until the reset.
fn exhausted(headers: &HeaderMap) -> Option<Duration> {
    let remaining = headers
        .get("x-ratelimit-remaining")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())?;
    (remaining == 0).then(|| until_reset(headers))
}

/// The hold rule (`PlatformHttp::holding`): a 429 waits until the reset.
fn rate_limited(resp: &Response) -> Option<Duration> {
    (resp.status() == StatusCode::TOO_MANY_REQUESTS).then(|| until_reset(resp.headers()))
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

fn hex_of(d: &Digest) -> String {
    hex::encode(d.bytes())
}

/// The release's checksum as a digest: 64 hex digits, read in either case.
fn checksum_digest(checksum: &str) -> Result<Digest, String> {
    let bytes = hex::decode(checksum).map_err(|_| format!("checksum {checksum:?} is not hex"))?;
    if bytes.len() != 32 {
        return Err(format!("checksum {checksum:?} is not a sha256"));
    }
    Digest::from_bytes(DigestAlgorithm::Sha256, &bytes).map_err(|e| e.to_string())
}

/// Checks a package tarball and reads what it says of itself (see the module
/// documentation). Runs on the blocking pool.
pub fn inspect(bytes: &[u8], cancel: &Cancel) -> Result<Package, String> {
    if bytes.len() as u64 > MAX_TARBALL {
        return Err(format!(
            "{} bytes; package tarballs above {MAX_TARBALL} bytes are refused",
            bytes.len()
        ));
    }
    let mut archive = tar::Archive::new(bytes);
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    let mut files: [Option<Vec<u8>>; 4] = [None, None, None, None];
    for entry in entries {
        cancel.check().map_err(|c| c.to_string())?;
        let mut entry =
            entry.map_err(|e| format!("not a package tarball: unreadable entry: {e}"))?;
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::XGlobalHeader {
            // pax global settings, not a file.
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| format!("an entry's path is unreadable: {e}"))?
            .to_string_lossy()
            .into_owned();
        let (slot, limit) = match path.as_str() {
            VERSION => (0, MAX_SMALL),
            METADATA => (1, MAX_METADATA),
            CONTENTS => (2, MAX_TARBALL),
            CHECKSUM => (3, MAX_SMALL),
            _ => {
                return Err(format!(
                    "holds {path:?}; a package tarball holds only VERSION, CHECKSUM, metadata.config and contents.tar.gz"
                ));
            }
        };
        if !kind.is_file() {
            return Err(format!("{path} is not a regular file"));
        }
        if files[slot].is_some() {
            return Err(format!(
                "holds {path} more than once; which one hex.pm reads is not clear"
            ));
        }
        let size = entry.header().size().map_err(|e| format!("{path}: {e}"))?;
        if size > limit {
            return Err(format!("{path} is {size} bytes, more than {limit}"));
        }
        let mut content = Vec::with_capacity(size as usize);
        std::io::Read::read_to_end(&mut entry, &mut content)
            .map_err(|e| format!("{path} is unreadable: {e}"))?;
        files[slot] = Some(content);
    }
    let [
        Some(version),
        Some(metadata),
        Some(contents),
        Some(checksum),
    ] = files
    else {
        let missing: Vec<&str> = [VERSION, METADATA, CONTENTS, CHECKSUM]
            .iter()
            .zip(&files)
            .filter(|(_, f)| f.is_none())
            .map(|(name, _)| *name)
            .collect();
        return Err(format!("not a package tarball: no {}", missing.join(", ")));
    };
    if version != b"3" {
        return Err(format!(
            "VERSION is {:?}; only package tarball version 3 is published",
            String::from_utf8_lossy(&version)
        ));
    }
    let stated: [u8; 32] = std::str::from_utf8(&checksum)
        .ok()
        .and_then(|s| hex::decode(s).ok())
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            format!(
                "CHECKSUM is {:?}, not 64 hex digits",
                String::from_utf8_lossy(&checksum)
            )
        })?;
    let mut h = Sha256::new();
    h.update(&version);
    h.update(&metadata);
    h.update(&contents);
    let actual: [u8; 32] = h.finalize().into();
    if actual != stated {
        return Err(format!(
            "CHECKSUM says {}, but VERSION, metadata.config and contents.tar.gz come to {}",
            hex::encode_upper(stated),
            hex::encode_upper(actual)
        ));
    }
    if !contents.starts_with(&[0x1f, 0x8b]) {
        return Err("contents.tar.gz is not gzipped (no gzip header)".into());
    }
    let text =
        std::str::from_utf8(&metadata).map_err(|e| format!("metadata.config is not UTF-8: {e}"))?;
    let terms = erl::consult(text).map_err(|e| format!("metadata.config: {e}"))?;
    let field = |want: &str| -> Result<String, String> {
        let mut found: Option<String> = None;
        for term in &terms {
            let erl::Term::Tuple(pair) = term else {
                return Err(format!(
                    "metadata.config: a term is not a {{key, value}} pair: {term}"
                ));
            };
            let [key, value] = pair.as_slice() else {
                return Err(format!(
                    "metadata.config: a term is not a {{key, value}} pair: {term}"
                ));
            };
            if key.text().as_deref() != Some(want) {
                continue;
            }
            if found.is_some() {
                return Err(format!(
                    "metadata.config names {want} twice; which one hex.pm reads is not clear"
                ));
            }
            found = Some(
                value
                    .text()
                    .ok_or_else(|| format!("metadata.config: {want} is {value}, not a string"))?,
            );
        }
        found.ok_or_else(|| format!("metadata.config has no {want}"))
    };
    Ok(Package {
        name: field("name")?,
        version: field("version")?,
        inner_checksum: stated,
    })
}

impl HexAdapter {
    pub fn new(api: Url, token: Option<Secret>) -> Result<HexAdapter, PlatformError> {
        let api = with_slash(api);
        let http = PlatformHttp::new(&[&api], None)?.holding(rate_limited);
        let auth = match &token {
            Some(key) => {
                let mut v = HeaderValue::from_str(key.expose()).map_err(|_| {
                    PlatformError::permanent("the Hex API key is not usable in an HTTP header")
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(HexAdapter { http, api, auth })
    }

    /// The adapter from `[platforms.hex]` (enabled by `platform::enablement` once a
    /// `base_url` or an API key is set).
    pub fn from_config(config: &PlatformConfig) -> Result<HexAdapter, ConfigError> {
        let api = match &config.base_url {
            Some(url) => url.clone(),
            None => Url::parse(DEFAULT_API).unwrap_or_else(|e| unreachable!("{DEFAULT_API}: {e}")),
        };
        HexAdapter::new(api, config.token.clone()).map_err(|e| ConfigError::Invalid {
            key: SECTION.to_owned(),
            reason: e.message,
        })
    }

    fn publish_url(&self) -> Url {
        let mut url = self.api.clone();
        url.path_segments_mut()
            .map(|mut s| {
                s.pop_if_empty().push("publish");
            })
            .unwrap_or_else(|()| unreachable!("an http(s) URL has a path"));
        url
    }

    fn release_url(&self, key: &DistributionKey) -> Url {
        let mut url = self.api.clone();
        url.path_segments_mut()
            .map(|mut s| {
                s.pop_if_empty().extend([
                    "packages",
                    key.package.as_str(),
                    "releases",
                    key.version.as_str(),
                ]);
            })
            .unwrap_or_else(|()| unreachable!("an http(s) URL has a path"));
        url
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Some(auth) => req.header(AUTHORIZATION, auth.clone()),
            None => req,
        }
    }

    /// The release, or None when hex.pm has no such version.
    async fn release(&self, key: &DistributionKey) -> Result<Option<Release>, PlatformError> {
        Ok(self.read(key).await?.release)
    }

    async fn read(&self, key: &DistributionKey) -> Result<Read, PlatformError> {
        let url = self.release_url(key);
        let what = format!("GET {url}");
        let resp = self
            .http
            .send(&what, |c| {
                self.authorized(c.get(url.clone()).header(ACCEPT, "application/json"))
            })
            .await?;
        let exhausted = exhausted(resp.headers());
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(Read {
                release: None,
                exhausted,
            });
        }
        if !resp.status().is_success() {
            return Err(error_for(resp, &what).await);
        }
        let doc: Value = resp
            .json()
            .await
            .map_err(|e| PlatformError::transient(format!("{what}: unreadable JSON: {e}")))?;
        let checksum = doc
            .get("checksum")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                PlatformError::permanent(format!(
                    "{what}: the release has no checksum; cannot verify it"
                ))
            })?
            .to_ascii_lowercase();
        let release = Release {
            checksum,
            html_url: doc
                .get("html_url")
                .and_then(Value::as_str)
                .map(str::to_owned),
            inserted_at: doc
                .get("inserted_at")
                .and_then(Value::as_str)
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc)),
        };
        Ok(Read {
            release: Some(release),
            exhausted,
        })
    }

    fn observe(&self, key: &DistributionKey, r: &Release) -> Result<Observed, PlatformError> {
        let digest = checksum_digest(&r.checksum).map_err(|e| {
            PlatformError::permanent(format!(
                "{} {}: hex.pm reports {e}; cannot verify the release",
                key.package, key.version
            ))
        })?;
        Ok(Observed {
            digest,
            api_url: Some(self.release_url(key).to_string()),
            web_url: r.html_url.clone(),
            upload_date: r.inserted_at,
        })
    }

    /// The one voted tarball, checked against the distribution.
    async fn tarball<'a>(
        key: &DistributionKey,
        artifacts: &'a [Sealed],
    ) -> Result<&'a Sealed, PlatformError> {
        let [sealed] = artifacts else {
            return Err(PlatformError::permanent(format!(
                "a Hex release is one package tarball; the job names {} files",
                artifacts.len()
            )));
        };
        refuse_above(sealed, MAX_TARBALL, "package tarballs")?;
        let bytes = sealed
            .bytes()
            .await
            .map_err(|e| PlatformError::transient(e.to_string()))?;
        let path = sealed.path().to_string();
        let package = blocking::run(move |cancel: &Cancel| inspect(&bytes, cancel))
            .await
            .map_err(|e| PlatformError::transient(format!("inspecting {path}: {e}")))?
            .map_err(|e| PlatformError::permanent(format!("{path}: {e}")))?;
        let (want_name, want_version) = (key.package.as_str(), key.version.as_str());
        if package.name != want_name || package.version != want_version {
            return Err(PlatformError::permanent(format!(
                "{path} is {} {}, not {want_name} {want_version}: refusing to publish it under that name",
                package.name, package.version
            )));
        }
        Ok(sealed)
    }
}

/// hex.pm's refusals, with what to do about them.
async fn classify(resp: Response, what: &str) -> PlatformError {
    let status = resp.status();
    let otp = resp
        .headers()
        .get("x-hex-otp")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.text().await.unwrap_or_default();
    let doc: Option<Value> = serde_json::from_str(&body).ok();
    let message = doc
        .as_ref()
        .and_then(|d| d.get("message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| body.chars().take(512).collect());
    let lower = message.to_ascii_lowercase();
    let two_factor = otp.is_some()
        || lower.contains("one-time password")
        || lower.contains("two-factor")
        || lower.contains("x-hex-otp");
    let err = |class: ErrorClass, text: String| PlatformError {
        class,
        message: text,
        http_status: Some(status.as_u16()),
        retry_after: None,
        not_yet: false,
    };
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN if two_factor => err(
            ErrorClass::Auth,
            format!(
                "{what}: {status}: hex.pm asks for a one-time password (x-hex-otp{}), which an unattended worker cannot give: set [platforms.hex] token (ATR_DIST_PLATFORMS__HEX__TOKEN or token_file) to a Hex API key with the api:write permission (`mix hex.user key generate --key-name atr-dist --permission api:write`), not an OAuth token, on an account whose publishing does not require two-factor codes ({message})",
                otp.map(|o| format!(": {o}")).unwrap_or_default()
            ),
        ),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => err(
            ErrorClass::Auth,
            format!(
                "{what}: {status}: hex.pm refused the API key; set [platforms.hex] token to a key with the api:write permission owned by an owner of the package ({message})"
            ),
        ),
        StatusCode::UNPROCESSABLE_ENTITY => {
            let errors = doc
                .as_ref()
                .and_then(|d| d.get("errors"))
                .map(Value::to_string)
                .unwrap_or_else(|| "none given".into());
            err(
                ErrorClass::Permanent,
                format!(
                    "{what}: {status}: hex.pm refused the package: {message}; errors: {errors}"
                ),
            )
        }
        _ if status.is_server_error() => err(
            ErrorClass::Transient,
            format!("{what}: {status}: {message}"),
        ),
        _ => err(
            ErrorClass::Permanent,
            format!("{what}: {status}: {message}"),
        ),
    }
}

impl PlatformAdapter for HexAdapter {
    /// The sha256 of the whole tarball: what hex.pm reports as the release's `checksum`.
    fn expected_digest<'a>(
        &'a self,
        req: &'a StageRequest,
    ) -> BoxFuture<'a, Result<Digest, PlatformError>> {
        async move {
            let tarball = Self::tarball(&req.key, &req.artifacts).await?;
            Ok(tarball.sha256().clone())
        }
        .boxed()
    }

    /// Nothing: Hex has no staging place.
    fn plan_stage(&self, _req: &StageRequest) -> Vec<PlannedWrite> {
        Vec::new()
    }

    /// Checks the tarball (`expected_digest` did the same); sends nothing.
    fn stage<'a>(&'a self, req: &'a StageRequest) -> BoxFuture<'a, Result<(), PlatformError>> {
        async move {
            Self::tarball(&req.key, &req.artifacts).await?;
            Ok(())
        }
        .boxed()
    }

    /// Nothing is ever staged on hex.pm ([`Staging::Local`]; the pipeline does not ask).
    fn read_staged<'a>(
        &'a self,
        _key: &'a DistributionKey,
        _staging_tag: &'a DistTag,
    ) -> BoxFuture<'a, Result<Option<Observed>, PlatformError>> {
        async move { Ok(None) }.boxed()
    }

    fn plan_promote(&self, req: &PromoteRequest) -> Vec<PlannedWrite> {
        req.artifacts
            .iter()
            .map(|a| PlannedWrite {
                method: "POST",
                url: self.publish_url().to_string(),
                what: format!(
                    "publish {} {} from {} (sha256 {})",
                    req.key.package,
                    req.key.version,
                    a.path(),
                    hex_of(a.sha256())
                ),
            })
            .collect()
    }

    fn promote<'a>(&'a self, req: &'a PromoteRequest) -> BoxFuture<'a, Result<(), PlatformError>> {
        async move {
            let key = &req.key;
            let tarball = Self::tarball(key, &req.artifacts).await?;
            // The pipeline checked this against the staged digest; an adapter called on its
            // own checks again, so that only what was staged reaches hex.pm.
            if tarball.sha256() != &req.staged_digest {
                return Err(PlatformError::permanent(format!(
                    "{} {}: the tarball to publish is {}, not the staged {}; nothing published",
                    key.package,
                    key.version,
                    tarball.sha256(),
                    req.staged_digest
                )));
            }
            let voted = hex_of(tarball.sha256());
            let before = self.read(key).await?;
            match before.release {
                Some(r) if r.checksum == voted => return Ok(()),
                Some(r) => {
                    return Err(PlatformError::permanent(format!(
                        "hex.pm holds {} {} with checksum {}, not the voted {voted}; atr-dist never replaces a Hex release; nothing published",
                        key.package, key.version, r.checksum
                    )));
                }
                None => {}
            }
            // A publish now would be refused: the read's answer says so already.
            if let Some(after) = before.exhausted {
                return Err(PlatformError::not_yet(
                    format!(
                        "hex.pm's rate limit is used up (X-RateLimit-Remaining: 0); publishing {} {} in {}s, when it resets",
                        key.package,
                        key.version,
                        after.as_secs()
                    ),
                    after,
                ));
            }
            let publish = self.publish_url();
            let what = format!("POST {publish} ({} {})", key.package, key.version);
            let written = confirmed(
                &self.http,
                &what,
                || {
                    self.http.write(&what, |c| {
                        self.authorized(
                            c.post(publish.clone())
                                .header(ACCEPT, "application/json")
                                .header(CONTENT_TYPE, "application/octet-stream")
                                .header(CONTENT_LENGTH, tarball.size())
                                .body(tarball.body()),
                        )
                    })
                },
                || async {
                    Ok(match self.release(key).await? {
                        Some(r) if r.checksum == voted => Found::Expected,
                        Some(r) => Found::Other(format!(
                            "hex.pm holds {} {} with checksum {}, not the voted {voted}",
                            key.package, key.version, r.checksum
                        )),
                        None => Found::Nothing,
                    })
                },
                |resp| classify(resp, &what),
            )
            .await?;
            let resp = match written {
                Written::Answered(resp) => resp,
                Written::FoundDone => {
                    tracing::info!(package = %key.package, version = %key.version, "the publish's answer was lost or refused; hex.pm holds the voted tarball");
                    return Ok(());
                }
            };
            // The answer is the release: its checksum must be the voted one already.
            let doc: Value = resp.json().await.unwrap_or(Value::Null);
            match doc.get("checksum").and_then(Value::as_str) {
                Some(c) if c.eq_ignore_ascii_case(&voted) => Ok(()),
                Some(c) => Err(PlatformError::permanent(format!(
                    "{what}: hex.pm reports checksum {c} for the published release, not the voted {voted}"
                ))),
                // No readable answer: the pipeline's read-back decides.
                None => Ok(()),
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
            match self.release(key).await? {
                Some(r) => self.observe(key, &r).map(Some),
                None => Ok(None),
            }
        }
        .boxed()
    }

    /// Tags mean nothing on Hex; they are only recorded.
    fn default_tags(&self, _key: &DistributionKey) -> (DistTag, DistTag) {
        (
            DistTag::new("staging").unwrap_or_else(|_| DistTag::latest()),
            DistTag::latest(),
        )
    }

    fn staging(&self) -> Staging {
        Staging::Local
    }

    fn promotion(&self) -> PromotionMechanism {
        PromotionMechanism::Reupload
    }
}

/// Just enough of the Erlang term syntax to read `metadata.config` as `file:consult/1`
/// would: tuples, lists, maps, binaries (`<<"…">>`, `<<"…"/utf8>>`, `<<1,2>>`), strings,
/// atoms, numbers, `%` comments, each top-level term ended by `.`. Nesting is bounded, and
/// anything else (variables, improper lists, expressions) is refused rather than guessed.
pub mod erl {
    use std::fmt;

    #[derive(Debug, Clone, PartialEq)]
    pub enum Term {
        Binary(Vec<u8>),
        /// A string literal: a list of characters.
        Chars(String),
        Atom(String),
        /// A number, as written.
        Number(String),
        Tuple(Vec<Term>),
        List(Vec<Term>),
        Map(Vec<(Term, Term)>),
    }

    impl Term {
        /// The text a binary (as UTF-8) or a string holds.
        pub fn text(&self) -> Option<String> {
            match self {
                Term::Binary(b) => String::from_utf8(b.clone()).ok(),
                Term::Chars(s) => Some(s.clone()),
                Term::Atom(_) | Term::Number(_) | Term::Tuple(_) | Term::List(_) | Term::Map(_) => {
                    None
                }
            }
        }
    }

    impl fmt::Display for Term {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let list = |f: &mut fmt::Formatter<'_>, items: &[Term]| -> fmt::Result {
                for (i, t) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{t}")?;
                }
                Ok(())
            };
            match self {
                Term::Binary(b) => write!(f, "<<{:?}>>", String::from_utf8_lossy(b)),
                Term::Chars(s) => write!(f, "{s:?}"),
                Term::Atom(a) | Term::Number(a) => f.write_str(a),
                Term::Tuple(items) => {
                    f.write_str("{")?;
                    list(f, items)?;
                    f.write_str("}")
                }
                Term::List(items) => {
                    f.write_str("[")?;
                    list(f, items)?;
                    f.write_str("]")
                }
                Term::Map(pairs) => {
                    f.write_str("#{")?;
                    for (i, (k, v)) in pairs.iter().enumerate() {
                        if i > 0 {
                            f.write_str(",")?;
                        }
                        write!(f, "{k} => {v}")?;
                    }
                    f.write_str("}")
                }
            }
        }
    }

    struct Parser {
        c: Vec<char>,
        i: usize,
        depth: usize,
    }

    /// The terms of a file, in order.
    pub fn consult(text: &str) -> Result<Vec<Term>, String> {
        let mut p = Parser {
            c: text.chars().collect(),
            i: 0,
            depth: 0,
        };
        let mut out = Vec::new();
        loop {
            p.ws();
            if p.peek().is_none() {
                return Ok(out);
            }
            out.push(p.term()?);
            p.ws();
            if !p.eat('.') {
                return Err(p.err("expected '.' after a term"));
            }
            match p.peek() {
                None | Some('%') => {}
                Some(c) if c.is_whitespace() => {}
                Some(_) => return Err(p.err("expected white space after '.'")),
            }
        }
    }

    impl Parser {
        fn peek(&self) -> Option<char> {
            self.c.get(self.i).copied()
        }

        fn peek_at(&self, n: usize) -> Option<char> {
            self.c.get(self.i + n).copied()
        }

        fn eat(&mut self, ch: char) -> bool {
            if self.peek() == Some(ch) {
                self.i += 1;
                return true;
            }
            false
        }

        fn err(&self, what: &str) -> String {
            let line = self.c[..self.i.min(self.c.len())]
                .iter()
                .filter(|c| **c == '\n')
                .count()
                + 1;
            format!("{what} (line {line})")
        }

        fn ws(&mut self) {
            while let Some(c) = self.peek() {
                if c.is_whitespace() {
                    self.i += 1;
                } else if c == '%' {
                    while let Some(c) = self.peek() {
                        if c == '\n' {
                            break;
                        }
                        self.i += 1;
                    }
                } else {
                    break;
                }
            }
        }

        fn term(&mut self) -> Result<Term, String> {
            self.ws();
            if self.depth >= super::MAX_DEPTH {
                return Err(self.err("terms nested too deep"));
            }
            self.depth += 1;
            let t = self.term_inner();
            self.depth -= 1;
            t
        }

        fn term_inner(&mut self) -> Result<Term, String> {
            let Some(c) = self.peek() else {
                return Err(self.err("expected a term, found the end"));
            };
            match c {
                '{' => {
                    self.i += 1;
                    Ok(Term::Tuple(self.items('}')?))
                }
                '[' => {
                    self.i += 1;
                    Ok(Term::List(self.items(']')?))
                }
                '#' if self.peek_at(1) == Some('{') => {
                    self.i += 2;
                    self.map()
                }
                '<' if self.peek_at(1) == Some('<') => {
                    self.i += 2;
                    self.binary()
                }
                '"' => Ok(Term::Chars(self.strings()?.into_iter().collect())),
                '\'' => {
                    self.i += 1;
                    Ok(Term::Atom(self.quoted('\'')?.into_iter().collect()))
                }
                '$' => {
                    self.i += 1;
                    let ch = self.char_literal()?;
                    Ok(Term::Number(u32::from(ch).to_string()))
                }
                '-' | '0'..='9' => self.number(),
                'a'..='z' => {
                    let start = self.i;
                    while let Some(c) = self.peek() {
                        if c.is_ascii_alphanumeric() || c == '_' || c == '@' {
                            self.i += 1;
                        } else {
                            break;
                        }
                    }
                    Ok(Term::Atom(self.c[start..self.i].iter().collect()))
                }
                _ => Err(self.err(&format!("unexpected {c:?}"))),
            }
        }

        /// Comma-separated terms up to `close`.
        fn items(&mut self, close: char) -> Result<Vec<Term>, String> {
            let mut out = Vec::new();
            self.ws();
            if self.eat(close) {
                return Ok(out);
            }
            loop {
                out.push(self.term()?);
                self.ws();
                if self.eat(',') {
                    continue;
                }
                if self.eat(close) {
                    return Ok(out);
                }
                if self.peek() == Some('|') {
                    return Err(self.err("improper lists are not read"));
                }
                return Err(self.err(&format!("expected ',' or '{close}'")));
            }
        }

        fn map(&mut self) -> Result<Term, String> {
            let mut out = Vec::new();
            self.ws();
            if self.eat('}') {
                return Ok(Term::Map(out));
            }
            loop {
                let k = self.term()?;
                self.ws();
                if !(self.eat('=') && self.eat('>')) {
                    return Err(self.err("expected '=>' in a map"));
                }
                let v = self.term()?;
                out.push((k, v));
                self.ws();
                if self.eat(',') {
                    continue;
                }
                if self.eat('}') {
                    return Ok(Term::Map(out));
                }
                return Err(self.err("expected ',' or '}' in a map"));
            }
        }

        /// `<<` seen: segments up to `>>`, each a string (`/utf8` or Latin-1) or a byte.
        fn binary(&mut self) -> Result<Term, String> {
            let mut out = Vec::new();
            self.ws();
            if self.eat('>') {
                if self.eat('>') {
                    return Ok(Term::Binary(out));
                }
                return Err(self.err("expected '>>'"));
            }
            loop {
                self.ws();
                match self.peek() {
                    Some('"') => {
                        let chars = self.strings()?;
                        self.ws();
                        let utf8 = if self.eat('/') {
                            let start = self.i;
                            while self.peek().is_some_and(|c| c.is_ascii_alphanumeric()) {
                                self.i += 1;
                            }
                            let spec: String = self.c[start..self.i].iter().collect();
                            match spec.as_str() {
                                "utf8" => true,
                                "latin1" | "binary" => false,
                                _ => return Err(self.err(&format!("unknown type /{spec}"))),
                            }
                        } else {
                            false
                        };
                        for ch in chars {
                            if utf8 {
                                let mut buf = [0u8; 4];
                                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                            } else {
                                let b = u8::try_from(u32::from(ch)).map_err(|_| {
                                    self.err(&format!(
                                        "{ch:?} in a binary without /utf8 is not one byte"
                                    ))
                                })?;
                                out.push(b);
                            }
                        }
                    }
                    Some('0'..='9' | '$') => {
                        let n = match self.peek() {
                            Some('$') => {
                                self.i += 1;
                                u32::from(self.char_literal()?)
                            }
                            _ => {
                                let Term::Number(n) = self.number()? else {
                                    unreachable!("number() makes numbers")
                                };
                                n.parse::<u32>()
                                    .map_err(|_| self.err(&format!("{n} is not a byte")))?
                            }
                        };
                        let b =
                            u8::try_from(n).map_err(|_| self.err(&format!("{n} is not a byte")))?;
                        out.push(b);
                    }
                    _ => return Err(self.err("expected a string or a byte in a binary")),
                }
                self.ws();
                if self.eat(',') {
                    continue;
                }
                if self.eat('>') && self.eat('>') {
                    return Ok(Term::Binary(out));
                }
                return Err(self.err("expected ',' or '>>' in a binary"));
            }
        }

        /// Adjacent string literals, joined (as the Erlang parser joins them).
        fn strings(&mut self) -> Result<Vec<char>, String> {
            let mut out = Vec::new();
            loop {
                if !self.eat('"') {
                    return Ok(out);
                }
                out.extend(self.quoted('"')?);
                let save = self.i;
                self.ws();
                if self.peek() != Some('"') {
                    self.i = save;
                    return Ok(out);
                }
            }
        }

        /// The characters up to the closing `quote` (the opening one consumed).
        fn quoted(&mut self, quote: char) -> Result<Vec<char>, String> {
            let mut out = Vec::new();
            loop {
                match self.peek() {
                    None => return Err(self.err("a string is not closed")),
                    Some(c) if c == quote => {
                        self.i += 1;
                        return Ok(out);
                    }
                    Some('\\') => {
                        self.i += 1;
                        out.push(self.escape()?);
                    }
                    Some(c) => {
                        self.i += 1;
                        out.push(c);
                    }
                }
            }
        }

        /// After `$`: one character or an escape.
        fn char_literal(&mut self) -> Result<char, String> {
            match self.peek() {
                None => Err(self.err("'$' at the end")),
                Some('\\') => {
                    self.i += 1;
                    self.escape()
                }
                Some(c) => {
                    self.i += 1;
                    Ok(c)
                }
            }
        }

        /// After a backslash: Erlang's escapes.
        fn escape(&mut self) -> Result<char, String> {
            let Some(c) = self.peek() else {
                return Err(self.err("an escape at the end"));
            };
            self.i += 1;
            let simple = match c {
                'b' => Some('\u{8}'),
                'd' => Some('\u{7f}'),
                'e' => Some('\u{1b}'),
                'f' => Some('\u{c}'),
                'n' => Some('\n'),
                'r' => Some('\r'),
                's' => Some(' '),
                't' => Some('\t'),
                'v' => Some('\u{b}'),
                _ => None,
            };
            if let Some(ch) = simple {
                return Ok(ch);
            }
            let code = match c {
                '0'..='7' => {
                    let mut n = c.to_digit(8).unwrap_or(0);
                    for _ in 0..2 {
                        match self.peek().and_then(|d| d.to_digit(8)) {
                            Some(d) => {
                                n = n * 8 + d;
                                self.i += 1;
                            }
                            None => break,
                        }
                    }
                    n
                }
                'x' if self.eat('{') => {
                    let start = self.i;
                    while self.peek().is_some_and(|d| d.is_ascii_hexdigit()) {
                        self.i += 1;
                    }
                    let digits: String = self.c[start..self.i].iter().collect();
                    if !self.eat('}') || digits.is_empty() || digits.len() > 6 {
                        return Err(self.err("a malformed \\x{…} escape"));
                    }
                    u32::from_str_radix(&digits, 16).unwrap_or(u32::MAX)
                }
                'x' => {
                    let digits: String = (0..2).filter_map(|n| self.peek_at(n)).collect();
                    if digits.len() != 2 || !digits.chars().all(|d| d.is_ascii_hexdigit()) {
                        return Err(self.err("a malformed \\x escape"));
                    }
                    self.i += 2;
                    u32::from_str_radix(&digits, 16).unwrap_or(u32::MAX)
                }
                '^' => {
                    let Some(ctl) = self.peek() else {
                        return Err(self.err("a \\^ escape at the end"));
                    };
                    self.i += 1;
                    u32::from(ctl) & 0x1f
                }
                // \\, \", \' and any other character stand for themselves.
                other => u32::from(other),
            };
            char::from_u32(code).ok_or_else(|| self.err(&format!("{code:#x} is not a character")))
        }

        /// An integer (with `_` separators or a `base#digits` radix) or a float, as written.
        fn number(&mut self) -> Result<Term, String> {
            let start = self.i;
            self.eat('-');
            let digits = |p: &mut Parser| {
                let from = p.i;
                while p
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    p.i += 1;
                }
                p.i > from
            };
            if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                return Err(self.err("expected a number"));
            }
            digits(self);
            if self.peek() == Some('#') {
                self.i += 1;
                if !digits(self) {
                    return Err(self.err("a radix without digits"));
                }
            } else if self.peek() == Some('.')
                && self.peek_at(1).is_some_and(|c| c.is_ascii_digit())
            {
                self.i += 1;
                digits(self);
                if matches!(self.c.get(self.i - 1), Some('e' | 'E'))
                    && matches!(self.peek(), Some('-' | '+'))
                {
                    self.i += 1;
                    digits(self);
                }
            }
            Ok(Term::Number(self.c[start..self.i].iter().collect()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::erl::{Term, consult};
    use super::*;

    /// A package tarball with these parts (checksum computed unless given).
    fn tarball(meta: &str, checksum: Option<&str>, extra: &[(&str, &[u8])]) -> Vec<u8> {
        tarball_holding(meta, &gzipped(b"not really a tar"), checksum, extra)
    }

    fn gzipped(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, bytes).unwrap();
        gz.finish().unwrap()
    }

    /// The same, with this `contents.tar.gz`.
    fn tarball_holding(
        meta: &str,
        contents: &[u8],
        checksum: Option<&str>,
        extra: &[(&str, &[u8])],
    ) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update(b"3");
        h.update(meta.as_bytes());
        h.update(contents);
        let sum = checksum
            .map(str::to_owned)
            .unwrap_or_else(|| hex::encode_upper(h.finalize()));
        let mut b = tar::Builder::new(Vec::new());
        let mut parts: Vec<(&str, &[u8])> = vec![
            ("VERSION", b"3"),
            ("CHECKSUM", sum.as_bytes()),
            ("metadata.config", meta.as_bytes()),
            ("contents.tar.gz", contents),
        ];
        parts.extend_from_slice(extra);
        for (path, data) in parts {
            let mut header = tar::Header::new_ustar();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            b.append_data(&mut header, path, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    const META: &str = "{<<\"name\">>,<<\"plug_x\">>}.\n{<<\"version\">>,<<\"1.2.0\">>}.\n{<<\"app\">>,<<\"plug_x\">>}.\n{<<\"description\">>,\n <<\"A long description \"\n   \"over two lines, caf\\303\\251\"/utf8>>}.\n{<<\"licenses\">>,[<<\"Apache-2.0\">>]}.\n{<<\"requirements\">>,\n [[{<<\"name\">>,<<\"plug\">>},\n   {<<\"app\">>,<<\"plug\">>},\n   {<<\"optional\">>,false},\n   {<<\"requirement\">>,<<\"~> 1.0\">>},\n   {<<\"repository\">>,<<\"hexpm\">>}]]}.\n% a comment\n{<<\"build_tools\">>,[<<\"mix\">>]}.\n";

    #[test]
    fn metadata_config_is_read_as_erlang_terms() {
        let terms = consult(META).unwrap();
        assert_eq!(terms.len(), 7);
        assert_eq!(
            terms[0],
            Term::Tuple(vec![
                Term::Binary(b"name".to_vec()),
                Term::Binary(b"plug_x".to_vec())
            ])
        );
        // Adjacent strings join; octal escapes are characters, /utf8 encodes them.
        let Term::Tuple(desc) = &terms[3] else {
            panic!()
        };
        assert_eq!(
            desc[1].text().unwrap(),
            "A long description over two lines, caf\u{c3}\u{a9}"
        );
        let t = consult("{<<\"d\">>, <<\"é\"/utf8>>}. {x, 'quoted atom', \"chars\", 1.5e-3, 16#ff, $a, #{k => [1,2]}}.").unwrap();
        let Term::Tuple(d) = &t[0] else { panic!() };
        assert_eq!(d[1].text().unwrap(), "é");
        assert_eq!(
            t[1].to_string(),
            "{x,quoted atom,\"chars\",1.5e-3,16#ff,97,#{k => [1,2]}}"
        );
        assert_eq!(
            consult("#{a => 1, b => [x, y]}.").unwrap()[0].to_string(),
            "#{a => 1,b => [x,y]}"
        );
        // Latin-1 binaries take bytes only.
        assert_eq!(consult("<<\"é\">>.").unwrap()[0], Term::Binary(vec![0xe9]));
        assert!(consult("<<\"€\">>.").is_err());
        for bad in [
            "{a, b}",
            "{a, b}.{c, d}.",
            "{a, B}.",
            "[a | b].",
            "{a, \"open}.",
            "<<256>>.",
            "<<\"x\"/utf16>>.",
            "{1 + 2}.",
            // A sign goes only after a float's exponent: this is an expression.
            "{1.5-3}.",
        ] {
            assert!(consult(bad).is_err(), "{bad}");
        }
        let err = consult("{16#}.").unwrap_err();
        assert!(err.contains("a radix without digits"), "{err}");
        // Atoms take '_' and '@'; '#' and '<' open a map and a binary only when doubled up.
        assert_eq!(consult("{a_b@c, x}.").unwrap()[0].to_string(), "{a_b@c,x}");
        for (bad, want) in [("#x.", "unexpected '#'"), ("<a>.", "unexpected '<'")] {
            let err = consult(bad).unwrap_err();
            assert!(err.contains(want), "{bad}: {err}");
        }
        // /latin1 and /binary take a string's characters as bytes, as no type does.
        for spec in ["", "/latin1", "/binary"] {
            assert_eq!(
                consult(&format!("<<\"\u{e9}\"{spec}>>.")).unwrap()[0],
                Term::Binary(vec![0xe9]),
                "{spec}"
            );
        }
        // Bytes in a binary are numbers or characters; a list is closed or goes on.
        assert_eq!(
            consult("<<1,2,$a>>.").unwrap()[0],
            Term::Binary(vec![1, 2, 97])
        );
        for (bad, want) in [
            ("[a | b].", "improper lists are not read"),
            ("[a b].", "expected ',' or ']'"),
        ] {
            let err = consult(bad).unwrap_err();
            assert!(err.contains(want), "{bad}: {err}");
        }
        // Erlang's escapes, in strings and after '$'.
        assert_eq!(
            consult(r#""\b\d\e\f\n\r\s\t\v\101\x41\x{263a}\^a\\\q"."#).unwrap()[0],
            Term::Chars("\u{8}\u{7f}\u{1b}\u{c}\n\r \t\u{b}AA\u{263a}\u{1}\\q".into())
        );
        assert_eq!(
            consult(r"[$\n, $a, $\101].").unwrap()[0].to_string(),
            "[10,97,65]"
        );
        assert_eq!(
            consult(r#""\x{10fffd}"."#).unwrap()[0],
            Term::Chars("\u{10fffd}".into())
        );
        for bad in [r#""\x{}"."#, r#""\x{1234567}"."#, r#""\x{41"."#] {
            let err = consult(bad).unwrap_err();
            assert!(err.contains("a malformed \\x{…} escape"), "{bad}: {err}");
        }
        for bad in [r#""\x4"."#, r#""\xZZ"."#, r#""\x"#] {
            let err = consult(bad).unwrap_err();
            assert!(err.contains("a malformed \\x escape"), "{bad}: {err}");
        }
        // An error names its line.
        let err = consult("{a, b}.\n% two\n{c, D}.").unwrap_err();
        assert!(err.contains("(line 3)"), "{err}");
        let deep = format!("{}{}.", "[".repeat(100), "]".repeat(100));
        let err = consult(&deep).unwrap_err();
        assert!(err.contains("nested too deep"), "{err}");
    }

    #[test]
    fn a_valid_tarball_says_its_name_and_version() {
        let p = inspect(&tarball(META, None, &[]), &Cancel::never()).unwrap();
        assert_eq!((p.name.as_str(), p.version.as_str()), ("plug_x", "1.2.0"));
        // A lower-case CHECKSUM reads the same.
        let upper = inspect(&tarball(META, None, &[]), &Cancel::never()).unwrap();
        let lower = hex::encode(upper.inner_checksum);
        assert!(inspect(&tarball(META, Some(&lower), &[]), &Cancel::never()).is_ok());
    }

    #[test]
    fn malformed_tarballs_are_refused() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not a tar at all".to_vec(), "not a package tarball"),
            (
                tarball(META, Some(&"AB".repeat(32)), &[]),
                "CHECKSUM says ABAB",
            ),
            (tarball(META, Some("xyz"), &[]), "not 64 hex digits"),
            (
                tarball(META, None, &[("extra.txt", b"x")]),
                "holds \"extra.txt\"",
            ),
            (
                tarball(META, None, &[("VERSION", b"3")]),
                "holds VERSION more than once",
            ),
            (
                tarball("{<<\"version\">>,<<\"1.0.0\">>}.\n", None, &[]),
                "metadata.config has no name",
            ),
            (
                tarball(
                    "{<<\"name\">>,<<\"a\">>}.\n{<<\"name\">>,<<\"b\">>}.\n{<<\"version\">>,<<\"1\">>}.\n",
                    None,
                    &[],
                ),
                "names name twice",
            ),
            (
                tarball(
                    "{<<\"name\">>,plug}.\n{<<\"version\">>,<<\"1\">>}.\n",
                    None,
                    &[],
                ),
                "name is plug, not a string",
            ),
            (tarball("not erlang", None, &[]), "metadata.config:"),
        ];
        for (bytes, want) in cases {
            let err = inspect(&bytes, &Cancel::never()).unwrap_err();
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    /// The size limits are hex.pm's and more: a package past a megabyte of contents and with
    /// a large metadata.config is read, and only what is above our limits is refused.
    #[test]
    fn packages_up_to_the_size_limits_are_read() {
        // inspect reads contents.tar.gz whole and looks only at its gzip header.
        let mut contents = vec![0u8; 2 * 1024 * 1024];
        contents[..2].copy_from_slice(&[0x1f, 0x8b]);
        let p = inspect(
            &tarball_holding(META, &contents, None, &[]),
            &Cancel::never(),
        )
        .unwrap();
        assert_eq!(p.name, "plug_x");
        // A metadata.config of 16 kB (a long description) is read.
        let long = format!(
            "{META}{{<<\"extra\">>,<<\"{}\">>}}.\n",
            "d".repeat(16 * 1000)
        );
        assert!(inspect(&tarball(&long, None, &[]), &Cancel::never()).is_ok());
        // Above the limits: refused, saying which part and the limit.
        let too_long = format!(
            "{META}{{<<\"extra\">>,<<\"{}\">>}}.\n",
            "d".repeat(1024 * 1024)
        );
        let err = inspect(&tarball(&too_long, None, &[]), &Cancel::never()).unwrap_err();
        assert!(err.contains("more than 1048576"), "{err}");
        let huge = vec![0u8; 64 * 1024 * 1024 + 1];
        let err = inspect(&huge, &Cancel::never()).unwrap_err();
        assert!(err.contains("above 67108864 bytes"), "{err}");
        // A part at its limit is read (128 bytes of CHECKSUM are read, then found not hex).
        let err = inspect(
            &tarball(META, Some(&"Z".repeat(128)), &[]),
            &Cancel::never(),
        )
        .unwrap_err();
        assert!(err.contains("not 64 hex digits"), "{err}");
        let err = inspect(
            &tarball(META, Some(&"Z".repeat(129)), &[]),
            &Cancel::never(),
        )
        .unwrap_err();
        assert!(
            err.contains("CHECKSUM is 129 bytes, more than 128"),
            "{err}"
        );
        // At the limit itself, the size is not what is refused (zeros are an empty archive).
        let err = inspect(&huge[1..], &Cancel::never()).unwrap_err();
        assert!(err.contains("not a package tarball: no VERSION"), "{err}");
    }

    async fn classified(status: u16, otp: Option<&str>, message: &str) -> PlatformError {
        let mut resp = axum::http::Response::builder().status(status);
        if let Some(otp) = otp {
            resp = resp.header("x-hex-otp", otp);
        }
        let body = serde_json::json!({ "message": message }).to_string();
        classify(
            reqwest::Response::from(resp.body(body).unwrap()),
            "POST /publish",
        )
        .await
    }

    /// Any one sign that hex.pm wants a one-time password (the header, or the words in its
    /// message) is told as such; a refused key without them is told as a refused key.
    #[tokio::test]
    async fn refusals_are_told_apart() {
        let cases = [
            (401, Some("required"), "invalid API key"),
            (401, None, "a one-time password is required"),
            (403, None, "two-factor authentication is required"),
            (401, None, "missing X-Hex-OTP header"),
        ];
        for (status, otp, message) in cases {
            let err = classified(status, otp, message).await;
            assert_eq!(err.class, ErrorClass::Auth, "{message}");
            assert!(
                err.message.contains("asks for a one-time password"),
                "{message}: {}",
                err.message
            );
        }
        let err = classified(401, None, "invalid API key").await;
        assert_eq!(err.class, ErrorClass::Auth);
        assert!(
            err.message.contains("hex.pm refused the API key"),
            "{}",
            err.message
        );
        // 5xx is worth another try; another refusal is not.
        let err = classified(503, None, "down for maintenance").await;
        assert_eq!(err.class, ErrorClass::Transient, "{}", err.message);
        assert_eq!(err.http_status, Some(503));
        let err = classified(404, None, "not found").await;
        assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
        assert!(
            err.message.contains("404 Not Found: not found"),
            "{}",
            err.message
        );
    }

    #[test]
    fn rate_limit_headers_give_the_wait() {
        let mut h = HeaderMap::new();
        assert_eq!(until_reset(&h), DEFAULT_RESET);
        assert_eq!(exhausted(&h), None);
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("3"));
        assert_eq!(exhausted(&h), None);
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        let reset = (chrono::Utc::now().timestamp() + 42).to_string();
        h.insert("x-ratelimit-reset", HeaderValue::from_str(&reset).unwrap());
        let wait = exhausted(&h).unwrap();
        assert!(
            wait <= Duration::from_secs(42) && wait >= Duration::from_secs(40),
            "{wait:?}"
        );
        // A reset in the past still waits a second; one far away at most an hour.
        h.insert("x-ratelimit-reset", HeaderValue::from_static("1"));
        assert_eq!(until_reset(&h), Duration::from_secs(1));
        h.insert("x-ratelimit-reset", HeaderValue::from_static("99999999999"));
        assert_eq!(until_reset(&h), MAX_RESET);
    }

    fn plug_x(version: &str) -> DistributionKey {
        DistributionKey::new(
            atr_dist_shared::names::ReleaseKey::new("example-1.0.0").unwrap(),
            atr_dist_shared::Platform::Hex,
            "",
            atr_dist_shared::names::PackageName::new("plug_x").unwrap(),
            atr_dist_shared::names::Version::new(version).unwrap(),
        )
        .unwrap()
    }

    /// A dry run of a promote lists the one publish it would send; Hex has no staging
    /// place, so a stage sends nothing.
    #[test]
    fn a_promote_plans_one_publish() {
        let a = HexAdapter::new(Url::parse("http://127.0.0.1:9/api").unwrap(), None).unwrap();
        let tarball = crate::seal::sealed_for_test("plug_x-1.2.0.tar", b"the tarball");
        let req = PromoteRequest {
            key: plug_x("1.2.0"),
            staged_digest: tarball.sha256().clone(),
            staging_tag: DistTag::new("staging").unwrap(),
            release_tag: DistTag::latest(),
            artifacts: vec![tarball.clone()],
            companions: Vec::new(),
        };
        assert_eq!(
            a.plan_promote(&req),
            vec![PlannedWrite {
                method: "POST",
                url: "http://127.0.0.1:9/api/publish".into(),
                what: format!(
                    "publish plug_x 1.2.0 from plug_x-1.2.0.tar (sha256 {})",
                    hex_of(tarball.sha256())
                ),
            }]
        );
    }

    #[test]
    fn urls_are_built_under_the_api_base() {
        let a = HexAdapter::new(Url::parse("http://127.0.0.1:9/api").unwrap(), None).unwrap();
        assert_eq!(a.publish_url().as_str(), "http://127.0.0.1:9/api/publish");
        let key = plug_x("1.0.0-rc.1");
        assert_eq!(
            a.release_url(&key).as_str(),
            "http://127.0.0.1:9/api/packages/plug_x/releases/1.0.0-rc.1"
        );
        assert_eq!(a.staging(), Staging::Local);
        assert_eq!(a.promotion(), PromotionMechanism::Reupload);
    }
}
