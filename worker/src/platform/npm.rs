//! npm and scoped npm: stage = publish the voted tarball under a staging dist-tag; promote =
//! move `latest` (or the configured tag) to the staged version, after checking its integrity.
//!
//! Requests (npm registry API, as npm's CLI and libnpmpublish make them):
//! - publish: `PUT /<name>` with a packument carrying one version and the tarball as a base64
//!   attachment; 201, or 409 when the version exists (versions are immutable);
//! - dist-tags: `GET /-/package/<name>/dist-tags`, `PUT /-/package/<name>/dist-tags/<tag>`
//!   with the version as a JSON string;
//! - read back: `GET /<name>`, `versions[v].dist.{integrity, shasum}`, `time[v]`.
//!
//! Scoped names are escaped as `@scope%2fpkg` in paths. The tarball must be the package it
//! claims to be: its `package/package.json` must name the distribution's package and
//! version, or nothing is sent. Its metadata must be unambiguous: every entry lies under
//! `package/`, and no path appears twice (with two `package.json` entries, what the
//! registry shows and what `npm install` unpacks could differ). Inspection reads the
//! sealed copy (`seal.rs`), is bounded in entries and unpacked bytes, and stops when its job
//! is cancelled; the published bytes, `dist.integrity` and `dist.shasum` are the sealed
//! copy's.
//!
//! Writes follow the read-back protocol (`write.rs`): a publish whose answer is lost or
//! refused (409) is judged by reading the packument back, and a dist-tag move whose answer
//! is lost by reading the tag: at the new version it is done, still where it pointed before
//! the move it is sent again, anywhere else it was moved by someone else and is refused.
//!
//! npm makes the first version of a new package `latest`, whatever tag it is published
//! under, and every package must keep a `latest`. When publishing moves an existing
//! `latest`, stage moves it back; for a brand-new package it cannot, and says so.

use std::collections::HashSet;
use std::io::Read;

use atr_dist_shared::names::DistTag;
use atr_dist_shared::{Digest, DistributionKey, ErrorClass, Platform};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures::FutureExt;
use futures::future::BoxFuture;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use serde_json::{Value, json};
use url::Url;

use super::http::{PlatformHttp, error_for};
use super::write::{Found, Written, confirmed};
use super::{
    Observed, PlannedWrite, PlatformAdapter, PlatformError, PromoteRequest, Sealed, StageRequest,
    refuse_above,
};
use crate::blocking::{self, Bounded, Cancel};

pub const DEFAULT_REGISTRY: &str = "https://registry.npmjs.org/";

/// Tarballs go into the publish body as base64, so they are read whole; npm's own limit
/// on packages is far below this.
const MAX_TARBALL: u64 = 512 * 1024 * 1024;
/// Inspection unpacks at most this much (a gzip bomb stops here) ...
const MAX_UNPACKED: u64 = 2 * 1024 * 1024 * 1024;
/// ... and reads at most this many entries.
const MAX_ENTRIES: usize = 200_000;
/// The most of `package/package.json` read; a larger one is refused, not cut short.
const MAX_PACKAGE_JSON: u64 = 1024 * 1024;

pub struct NpmAdapter {
    http: PlatformHttp,
    base: Url,
}

/// What the tarball is: its package.json, sealed bytes and digests.
struct Tarball {
    manifest: serde_json::Map<String, Value>,
    bytes: bytes::Bytes,
    integrity: Digest,
    shasum: String,
}

impl NpmAdapter {
    pub fn new(
        base: Url,
        token: Option<crate::secret::Secret>,
    ) -> Result<NpmAdapter, PlatformError> {
        let base = if base.path().ends_with('/') {
            base
        } else {
            Url::parse(&format!("{base}/"))
                .map_err(|e| PlatformError::permanent(format!("npm base URL: {e}")))?
        };
        Ok(NpmAdapter {
            http: PlatformHttp::new(&[&base], token)?,
            base,
        })
    }

    /// `@scope/pkg` or `pkg`, as npm names the package.
    fn name(key: &DistributionKey) -> String {
        key.display_name()
    }

    /// The name as a single path segment: `@scope%2fpkg`.
    fn escaped(key: &DistributionKey) -> String {
        Self::name(key).replace('/', "%2f")
    }

    fn url(&self, path: &str) -> Url {
        // The base ends in '/', and paths here are built from validated names only.
        self.base.join(path).unwrap_or_else(|_| self.base.clone())
    }

    fn packument_url(&self, key: &DistributionKey) -> Url {
        self.url(&Self::escaped(key))
    }

    fn dist_tag_url(&self, key: &DistributionKey, tag: &DistTag) -> Url {
        self.url(&format!("-/package/{}/dist-tags/{tag}", Self::escaped(key)))
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.http.bearer() {
            Some(v) => req.header(AUTHORIZATION, v),
            None => req,
        }
    }

    /// The packument, or None when the package does not exist.
    async fn packument(&self, key: &DistributionKey) -> Result<Option<Value>, PlatformError> {
        let url = self.packument_url(key);
        let what = format!("GET {url}");
        let resp = self
            .http
            .send(&what, |c| {
                self.auth(c.get(url.clone()).header(ACCEPT, "application/json"))
            })
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(classify(resp, &what).await);
        }
        resp.json()
            .await
            .map(Some)
            .map_err(|e| PlatformError::transient(format!("{what}: unreadable packument: {e}")))
    }

    fn observe(
        &self,
        key: &DistributionKey,
        doc: &Value,
        version: &str,
    ) -> Result<Option<Observed>, PlatformError> {
        let Some(dist) = doc.pointer(&format!("/versions/{}/dist", escape_pointer(version))) else {
            return Ok(None);
        };
        let Some(integrity) = dist.get("integrity").and_then(Value::as_str) else {
            return Err(PlatformError::permanent(format!(
                "{} {version} has no dist.integrity on the registry; cannot verify it",
                Self::name(key)
            )));
        };
        // SRI may list several hashes; ours is the sha512 one.
        let sha512 = integrity
            .split_whitespace()
            .find(|h| h.starts_with("sha512-"))
            .ok_or_else(|| {
                PlatformError::permanent(format!(
                    "{} {version}: dist.integrity has no sha512 ({integrity})",
                    Self::name(key)
                ))
            })?;
        let digest = Digest::parse(sha512).map_err(|e| {
            PlatformError::permanent(format!(
                "{} {version}: dist.integrity: {e}",
                Self::name(key)
            ))
        })?;
        let upload_date = doc
            .pointer(&format!("/time/{}", escape_pointer(version)))
            .and_then(Value::as_str)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc));
        let web_url = (self.base.as_str() == DEFAULT_REGISTRY).then(|| {
            format!(
                "https://www.npmjs.com/package/{}/v/{version}",
                Self::name(key)
            )
        });
        Ok(Some(Observed {
            digest,
            api_url: Some(self.packument_url(key).to_string()),
            web_url,
            upload_date,
        }))
    }

    /// What `tag` points at, as observed.
    async fn read_tag(
        &self,
        key: &DistributionKey,
        tag: &DistTag,
    ) -> Result<Option<Observed>, PlatformError> {
        let Some(doc) = self.packument(key).await? else {
            return Ok(None);
        };
        let Some(version) = dist_tag(&doc, tag) else {
            return Ok(None);
        };
        self.observe(key, &doc, version)
    }

    /// Points `tag` at `version`, where it pointed at `was` (read by the caller just
    /// before). After a lost answer the tag is read back: at `version`, the move is done;
    /// still at `was`, the move did not arrive and is sent again; anywhere else, someone
    /// else moved it meanwhile, and that is refused rather than overwritten.
    async fn put_tag(
        &self,
        key: &DistributionKey,
        tag: &DistTag,
        version: &str,
        was: Option<&str>,
    ) -> Result<(), PlatformError> {
        let url = self.dist_tag_url(key, tag);
        let what = format!("PUT {url}");
        let body = serde_json::to_vec(version).unwrap_or_default();
        confirmed(
            &self.http,
            &what,
            || {
                self.http.write(&what, |c| {
                    self.auth(
                        c.put(url.clone())
                            .header(CONTENT_TYPE, "application/json")
                            .body(body.clone()),
                    )
                })
            },
            || async {
                let doc = self.packument(key).await?;
                let points = doc
                    .as_ref()
                    .and_then(|d| dist_tag(d, tag))
                    .map(str::to_owned);
                if points.as_deref() == Some(version) {
                    return Ok(Found::Expected);
                }
                if points.as_deref() == was {
                    return Ok(Found::Nothing);
                }
                Ok(Found::Other(format!(
                    "dist-tag {tag} of {} points at {}, not {version}, and at {} before the move: moved by someone else meanwhile",
                    Self::name(key),
                    points.as_deref().unwrap_or("nothing"),
                    was.unwrap_or("nothing")
                )))
            },
            |resp| classify(resp, &what),
        )
        .await
        .map(|_| ())
    }

    fn tarball(req: &StageRequest) -> Result<&Sealed, PlatformError> {
        match req.artifacts.as_slice() {
            [one] => Ok(one),
            _ => Err(PlatformError::permanent(format!(
                "npm publishes one tarball per version; the job names {} artifacts",
                req.artifacts.len()
            ))),
        }
    }

    async fn read_tarball(
        key: &DistributionKey,
        sealed: &Sealed,
    ) -> Result<Tarball, PlatformError> {
        refuse_above(sealed, MAX_TARBALL, "npm tarballs")?;
        let bytes = sealed
            .bytes()
            .await
            .map_err(|e| PlatformError::transient(e.to_string()))?;
        let (key, name, inspected) = (key.clone(), sealed.path().to_string(), bytes.clone());
        let manifest =
            blocking::run(move |cancel: &Cancel| inspect(&key, &name, &inspected, cancel))
                .await
                .map_err(|e| PlatformError::transient(format!("inspecting the tarball: {e}")))??;
        Ok(Tarball {
            manifest,
            bytes,
            integrity: sealed.sha512().clone(),
            shasum: sealed.sha1_hex().to_owned(),
        })
    }

    fn publish_body(&self, key: &DistributionKey, tag: &DistTag, t: &Tarball) -> Value {
        let name = Self::name(key);
        let version = key.version.as_str();
        let file = format!("{name}-{version}.tgz");
        let tarball_url = self.url(&format!(
            "{}/-/{}",
            Self::escaped(key),
            file.replace('/', "%2f")
        ));
        let mut manifest = t.manifest.clone();
        manifest.insert("_id".into(), json!(format!("{name}@{version}")));
        manifest.insert(
            "dist".into(),
            json!({"shasum": t.shasum, "integrity": t.integrity.as_str(), "tarball": tarball_url.as_str()}),
        );
        json!({
            "_id": name,
            "name": name,
            "description": manifest.get("description").cloned().unwrap_or(Value::Null),
            "dist-tags": { tag.as_str(): version },
            "versions": { version: Value::Object(manifest) },
            "access": Value::Null,
            "_attachments": {
                file: {
                    "content_type": "application/octet-stream",
                    "data": STANDARD.encode(&t.bytes),
                    "length": t.bytes.len(),
                }
            }
        })
    }
}

/// The version a packument's `tag` points at.
fn dist_tag<'d>(doc: &'d Value, tag: &DistTag) -> Option<&'d str> {
    doc.pointer(&format!("/dist-tags/{}", escape_pointer(tag.as_str())))
        .and_then(Value::as_str)
}

/// JSON pointer escaping for a single reference token.
fn escape_pointer(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Reads the tarball's entries once, to its end: every entry under `package/`, each path
/// once, `package/package.json` naming this distribution. Bounded in entries and unpacked
/// bytes, and stopped between entries when the job goes away.
fn inspect(
    key: &DistributionKey,
    name: &str,
    bytes: &[u8],
    cancel: &Cancel,
) -> Result<serde_json::Map<String, Value>, PlatformError> {
    let bad = |what: String| PlatformError::permanent(format!("{name}: {what}"));
    let unpacked = Bounded::new(
        flate2::read::GzDecoder::new(bytes),
        MAX_UNPACKED,
        "the tarball",
    );
    let mut archive = tar::Archive::new(unpacked);
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("not a gzipped tar: {e}")))?;
    let mut seen: HashSet<String> = HashSet::new();
    let mut manifest = None;
    for entry in entries {
        cancel
            .check()
            .map_err(|c| PlatformError::transient(format!("{name}: {c}")))?;
        let mut entry = entry.map_err(|e| bad(format!("unreadable tar entry: {e}")))?;
        if seen.len() >= MAX_ENTRIES {
            return Err(bad(format!("more than {MAX_ENTRIES} entries; refused")));
        }
        let raw = entry
            .path()
            .map_err(|e| bad(format!("an entry's path is unreadable: {e}")))?
            .to_string_lossy()
            .into_owned();
        // `package/./a` and `package//a` unpack where `package/a` does.
        let parts: Vec<&str> = raw
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        if parts.first() != Some(&"package") || parts.contains(&"..") {
            return Err(bad(format!(
                "entry {raw:?} is outside package/; npm tarballs hold only package/…"
            )));
        }
        let path = parts.join("/");
        if !seen.insert(path.clone()) {
            return Err(bad(format!(
                "the tarball holds {path} more than once; what the registry shows and what npm unpacks could differ"
            )));
        }
        if path != "package/package.json" {
            continue;
        }
        let mut text = String::new();
        entry
            .by_ref()
            .take(MAX_PACKAGE_JSON + 1)
            .read_to_string(&mut text)
            .map_err(|e| bad(format!("package/package.json: {e}")))?;
        if text.len() as u64 > MAX_PACKAGE_JSON {
            return Err(bad(format!(
                "package/package.json is larger than {MAX_PACKAGE_JSON} bytes; refused"
            )));
        }
        manifest = Some(text);
    }
    let Some(text) = manifest else {
        return Err(bad(
            "no package/package.json; it is not an npm package".into()
        ));
    };
    let Ok(Value::Object(manifest)) = serde_json::from_str::<Value>(&text) else {
        return Err(bad("package/package.json is not a JSON object".into()));
    };
    let want = NpmAdapter::name(key);
    let (got_name, got_version) = (
        manifest.get("name").and_then(Value::as_str).unwrap_or(""),
        manifest
            .get("version")
            .and_then(Value::as_str)
            .unwrap_or(""),
    );
    if got_name != want || got_version != key.version.as_str() {
        return Err(PlatformError::permanent(format!(
            "the tarball is {got_name}@{got_version}, not {want}@{}: refusing to publish it under that name",
            key.version
        )));
    }
    Ok(manifest)
}

/// npm's refusals that no retry can fix get messages saying what to do.
async fn classify(resp: reqwest::Response, what: &str) -> PlatformError {
    let challenge = resp
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let status = resp.status();
    let mut err = error_for(resp, what).await;
    if status == StatusCode::UNAUTHORIZED && challenge.contains("otp") {
        err.class = ErrorClass::Permanent;
        err.message = format!(
            "{what}: the registry wants a one-time password for this token; use a granular or automation token that can publish without 2FA ({})",
            err.message
        );
    } else if status == StatusCode::UNAUTHORIZED && challenge.contains("ipaddress") {
        err.class = ErrorClass::Permanent;
        err.message = format!(
            "{what}: this token is restricted to other IP addresses ({})",
            err.message
        );
    } else if status == StatusCode::CONFLICT {
        err.message = format!(
            "{what}: the version exists already and npm versions are immutable ({})",
            err.message
        );
    }
    err
}

impl PlatformAdapter for NpmAdapter {
    fn expected_digest<'a>(
        &'a self,
        req: &'a StageRequest,
    ) -> BoxFuture<'a, Result<Digest, PlatformError>> {
        async move {
            let artifact = Self::tarball(req)?;
            Ok(Self::read_tarball(&req.key, artifact).await?.integrity)
        }
        .boxed()
    }

    fn plan_stage(&self, req: &StageRequest) -> Vec<PlannedWrite> {
        let name = Self::name(&req.key);
        vec![PlannedWrite {
            method: "PUT",
            url: self.packument_url(&req.key).to_string(),
            what: format!(
                "publish {name}@{} under dist-tag {}",
                req.key.version, req.staging_tag
            ),
        }]
    }

    fn stage<'a>(&'a self, req: &'a StageRequest) -> BoxFuture<'a, Result<(), PlatformError>> {
        async move {
            let key = &req.key;
            let version = key.version.as_str();
            let artifact = Self::tarball(req)?;
            let tarball = Self::read_tarball(key, artifact).await?;
            let before = self.packument(key).await?;
            // The version is there already with our bytes (published earlier, its tag moved
            // since): only the tag needs setting. With other bytes, it is a conflict.
            if let Some(doc) = &before
                && let Some(existing) = self.observe(key, doc, version)?
            {
                if existing.digest != tarball.integrity {
                    return Err(PlatformError::permanent(format!(
                        "{}@{version} exists on the registry with {}, not the voted {}; npm versions are immutable",
                        Self::name(key),
                        existing.digest,
                        tarball.integrity
                    )));
                }
                let was = dist_tag(doc, &req.staging_tag);
                return self.put_tag(key, &req.staging_tag, version, was).await;
            }
            let latest_before = before
                .as_ref()
                .and_then(|d| dist_tag(d, &DistTag::latest()))
                .map(str::to_owned);

            let url = self.packument_url(key);
            let what = format!("PUT {url}");
            let body = bytes::Bytes::from(
                serde_json::to_vec(&self.publish_body(key, &req.staging_tag, &tarball)).unwrap_or_default(),
            );
            // A lost answer, or a 409 "version exists", is judged by what the registry holds.
            let written = confirmed(
                &self.http,
                &what,
                || self.http.write(&what, |c| self.auth(c.put(url.clone()).header(CONTENT_TYPE, "application/json").body(body.clone()))),
                || async {
                    let Some(doc) = self.packument(key).await? else {
                        return Ok(Found::Nothing);
                    };
                    Ok(match self.observe(key, &doc, version)? {
                        Some(o) if o.digest == tarball.integrity => Found::Expected,
                        Some(o) => Found::Other(format!(
                            "{}@{version} holds {}, not the voted {}",
                            Self::name(key),
                            o.digest,
                            tarball.integrity
                        )),
                        None => Found::Nothing,
                    })
                },
                |resp| classify(resp, &what),
            )
            .await?;
            if let Written::FoundDone = written {
                tracing::info!(package = %Self::name(key), %version, "the publish's answer was lost; the registry holds the voted tarball");
            }

            let after = self
                .packument(key)
                .await?
                .ok_or_else(|| PlatformError::transient(format!("{} is not readable after publishing", Self::name(key))))?;
            let shasum = after
                .pointer(&format!("/versions/{}/dist/shasum", escape_pointer(version)))
                .and_then(Value::as_str)
                .unwrap_or("");
            if shasum != tarball.shasum {
                return Err(PlatformError::permanent(format!(
                    "after publishing, the registry reports shasum {shasum:?} for {}@{version}, not {}",
                    Self::name(key),
                    tarball.shasum
                )));
            }
            let tagged = dist_tag(&after, &req.staging_tag);
            if tagged != Some(version) {
                self.put_tag(key, &req.staging_tag, version, tagged).await?;
            }
            let latest_after = dist_tag(&after, &DistTag::latest());
            if req.staging_tag.as_str() != "latest" && latest_after == Some(version) {
                // `latest` cannot have been this version before: the version was not there.
                match latest_before {
                    Some(previous) => {
                        tracing::info!(package = %Self::name(key), %previous, "publishing moved latest; moving it back");
                        self.put_tag(key, &DistTag::latest(), &previous, latest_after).await?;
                    }
                    None => tracing::warn!(
                        package = %Self::name(key),
                        "first publish of a new package: npm makes it latest and keeps a latest tag; it stays latest until another version is promoted"
                    ),
                }
            }
            Ok(())
        }
        .boxed()
    }

    fn read_staged<'a>(
        &'a self,
        key: &'a DistributionKey,
        staging_tag: &'a DistTag,
    ) -> BoxFuture<'a, Result<Option<Observed>, PlatformError>> {
        self.read_tag(key, staging_tag).boxed()
    }

    fn plan_promote(&self, req: &PromoteRequest) -> Vec<PlannedWrite> {
        vec![PlannedWrite {
            method: "PUT",
            url: self.dist_tag_url(&req.key, &req.release_tag).to_string(),
            what: format!("point dist-tag {} at {}", req.release_tag, req.key.version),
        }]
    }

    fn promote<'a>(&'a self, req: &'a PromoteRequest) -> BoxFuture<'a, Result<(), PlatformError>> {
        async move {
            let key = &req.key;
            let version = key.version.as_str();
            // The version the tag will point at must carry the staged bytes.
            let doc = self.packument(key).await?.ok_or_else(|| {
                PlatformError::permanent(format!(
                    "{} does not exist on the registry",
                    Self::name(key)
                ))
            })?;
            let observed = self.observe(key, &doc, version)?.ok_or_else(|| {
                PlatformError::permanent(format!(
                    "{}@{version} does not exist on the registry",
                    Self::name(key)
                ))
            })?;
            if observed.digest != req.staged_digest {
                return Err(PlatformError::permanent(format!(
                    "{}@{version} has {} on the registry, not the staged {}; nothing promoted",
                    Self::name(key),
                    observed.digest,
                    req.staged_digest
                )));
            }
            let was = dist_tag(&doc, &req.release_tag);
            self.put_tag(key, &req.release_tag, version, was).await
        }
        .boxed()
    }

    fn read_promoted<'a>(
        &'a self,
        key: &'a DistributionKey,
        release_tag: &'a DistTag,
    ) -> BoxFuture<'a, Result<Option<Observed>, PlatformError>> {
        self.read_tag(key, release_tag).boxed()
    }

    fn default_tags(&self, _key: &DistributionKey) -> (DistTag, DistTag) {
        (
            DistTag::new("rc").unwrap_or_else(|_| DistTag::latest()),
            DistTag::latest(),
        )
    }

    fn staging(&self) -> crate::platform::Staging {
        crate::platform::Staging::Platform
    }

    fn promotion(&self) -> atr_dist_shared::PromotionMechanism {
        atr_dist_shared::PromotionMechanism::DistTag
    }
}

/// The npm adapter for both NPM and NPM_SCOPED, from `[platforms.npm]` and
/// `[platforms.npm_scoped]` (each may have its own registry and token).
pub fn adapter_for(
    platform: Platform,
    config: &crate::config::Config,
) -> Result<NpmAdapter, PlatformError> {
    let p = config.platforms.get(platform);
    let base = match &p.base_url {
        Some(url) => url.clone(),
        None => {
            Url::parse(DEFAULT_REGISTRY).map_err(|e| PlatformError::permanent(e.to_string()))?
        }
    };
    NpmAdapter::new(base, p.token.clone())
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use atr_dist_shared::names::{PackageName, ReleaseKey, Version};

    use super::*;

    fn key() -> DistributionKey {
        DistributionKey::new(
            ReleaseKey::new("example-1.0.0").unwrap(),
            Platform::Npm,
            "",
            PackageName::new("pkg").unwrap(),
            Version::new("1.0.0").unwrap(),
        )
        .unwrap()
    }

    fn tgz(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, content) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            // Set the name in the header itself: `append_data` would refuse `..`.
            header.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_cksum();
            builder.append(&header, *content).unwrap();
        }
        let mut gz = builder.into_inner().unwrap();
        gz.flush().unwrap();
        gz.finish().unwrap()
    }

    const GOOD: &[u8] = br#"{"name":"pkg","version":"1.0.0"}"#;
    const EVIL: &[u8] = br#"{"name":"pkg","version":"1.0.0","scripts":{"install":"curl evil"}}"#;

    fn check(entries: &[(&str, &[u8])]) -> Result<serde_json::Map<String, Value>, PlatformError> {
        inspect(&key(), "pkg-1.0.0.tgz", &tgz(entries), &Cancel::never())
    }

    #[test]
    fn a_plain_package_is_read() {
        let m = check(&[("package/package.json", GOOD), ("package/index.js", b"x")]).unwrap();
        assert_eq!(m["name"], "pkg");
    }

    #[test]
    fn two_manifests_are_refused_whichever_comes_first() {
        for entries in [
            [
                ("package/package.json", GOOD),
                ("package/package.json", EVIL),
            ],
            [
                ("package/package.json", EVIL),
                ("package/./package.json", GOOD),
            ],
        ] {
            let err = check(&entries).unwrap_err();
            assert_eq!(err.class, ErrorClass::Permanent);
            assert!(
                err.message
                    .contains("holds package/package.json more than once"),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn entries_outside_package_are_refused() {
        for outside in ["other/index.js", "package/../escape.js", "index.js"] {
            let err = check(&[("package/package.json", GOOD), (outside, b"x")]).unwrap_err();
            assert!(
                err.message.contains("is outside package/"),
                "{outside}: {}",
                err.message
            );
        }
    }

    /// package.json is read whole up to 1 MiB, and one larger is refused as such, not cut
    /// short and then reported as malformed.
    #[test]
    fn a_package_json_is_read_whole_up_to_one_mib() {
        let of_size = |size: usize| {
            let frame = r#"{"name":"pkg","version":"1.0.0","description":""}"#.len();
            format!(
                r#"{{"name":"pkg","version":"1.0.0","description":"{}"}}"#,
                "x".repeat(size - frame)
            )
        };
        let whole = of_size(1024 * 1024);
        assert_eq!(whole.len(), 1024 * 1024);
        let m = check(&[("package/package.json", whole.as_bytes())]).unwrap();
        assert_eq!(m["name"], "pkg");
        let err =
            check(&[("package/package.json", of_size(1024 * 1024 + 1).as_bytes())]).unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent);
        assert!(
            err.message
                .contains("package/package.json is larger than 1048576 bytes; refused"),
            "{}",
            err.message
        );
    }

    /// The registry's record of a version, read into what atr-dist stores: the web page is
    /// npmjs.com's, and only for packages on the public registry (a private registry's pages
    /// are not npmjs.com's).
    #[test]
    fn an_observed_version_links_npmjs_only_for_the_public_registry() {
        let integrity = crate::seal::sealed_for_test("pkg-1.0.0.tgz", b"tarball")
            .sha512()
            .clone();
        let doc = json!({
            "versions": {"1.0.0": {"dist": {"integrity": format!("sha1-AAAA {}", integrity.as_str())}}},
            "time": {"1.0.0": "2026-12-01T10:00:00.000Z"},
        });
        let public = NpmAdapter::new(Url::parse(DEFAULT_REGISTRY).unwrap(), None).unwrap();
        let seen = public.observe(&key(), &doc, "1.0.0").unwrap().unwrap();
        assert_eq!(seen.digest, integrity);
        assert_eq!(
            seen.web_url.as_deref(),
            Some("https://www.npmjs.com/package/pkg/v/1.0.0")
        );
        assert_eq!(
            seen.api_url.as_deref(),
            Some("https://registry.npmjs.org/pkg")
        );
        assert_eq!(
            seen.upload_date.map(|t| t.to_rfc3339()),
            Some("2026-12-01T10:00:00+00:00".to_owned())
        );
        let private = NpmAdapter::new(Url::parse("http://127.0.0.1:4873").unwrap(), None).unwrap();
        let seen = private.observe(&key(), &doc, "1.0.0").unwrap().unwrap();
        assert_eq!(seen.web_url, None);
        assert_eq!(seen.api_url.as_deref(), Some("http://127.0.0.1:4873/pkg"));
        assert!(private.observe(&key(), &doc, "2.0.0").unwrap().is_none());
    }

    /// A tarball of 1.5 MiB that unpacks to 4.5 MiB is published: the limits (512 MiB
    /// packed, 2 GiB unpacked) are far above any package's size, not a few MiB.
    #[tokio::test]
    async fn a_tarball_of_some_mib_is_read_whole() {
        // Bytes gzip cannot shrink (xorshift), and zeros it shrinks to almost nothing.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let noise: Vec<u8> = (0..3 * 512 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let zeros = vec![0u8; 3 * 1024 * 1024];
        let bytes = tgz(&[
            ("package/package.json", GOOD),
            ("package/noise.bin", &noise),
            ("package/zeros.bin", &zeros),
        ]);
        assert!(bytes.len() > 1024 * 1024 + 512, "{} bytes", bytes.len());
        let sealed = crate::seal::sealed_for_test("pkg-1.0.0.tgz", &bytes);
        let t = NpmAdapter::read_tarball(&key(), &sealed).await.unwrap();
        assert_eq!(t.manifest["name"], "pkg");
        assert_eq!(t.bytes.len(), bytes.len());
    }

    #[test]
    fn inspection_stops_when_its_job_is_gone() {
        let cancel = Cancel::default();
        cancel.raise();
        let err = inspect(
            &key(),
            "pkg-1.0.0.tgz",
            &tgz(&[("package/package.json", GOOD)]),
            &cancel,
        )
        .unwrap_err();
        assert_eq!(err.class, ErrorClass::Transient);
        assert!(err.message.contains("no longer waits"), "{}", err.message);
    }
}
