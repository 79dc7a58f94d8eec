//! OCI registries (Docker Hub, and any registry speaking the distribution API): stage =
//! push an image from an OCI image layout under a staging tag; promote = PUT the staged
//! manifest's exact bytes under the version tag.
//!
//! # The layout a job names
//!
//! A job's artifacts are the files of one [OCI image layout] in the voted revision:
//! `<dir>/index.json`, `<dir>/oci-layout` and the `<dir>/blobs/sha256/<hex>` files the image
//! needs (`<dir>` may be the revision's root). The layout is found by its `index.json`
//! with an `oci-layout` beside it; exactly one layout, and no other file, may be listed.
//! Blobs the layout holds but no manifest needs are not pushed; non-distributable
//! ("foreign") layers are never pushed, as with every client.
//!
//! The image is the manifest `index.json` points at: its only entry, or, when it lists
//! several (a layout holding several tagged images), the one annotated
//! `org.opencontainers.image.ref.name` = the distribution's version. `index.json` itself is
//! never pushed: it is the layout's table of contents, and an index made of several tagged
//! images would be an image nobody built. For a multi-arch image, `index.json` points at an
//! image index (or Docker manifest list) blob, which is the image.
//!
//! Before anything is sent, every manifest and blob is checked: present, of the size its
//! descriptor says, and with the sha256 its name says. A blob the registry already has is
//! not uploaded again, so without this check a corrupt file in the revision could stand
//! for content that was never voted on.
//!
//! # Digests
//!
//! The distribution's digest (`expected_digest`, and what `read_*` report) is the sha256 of
//! the top manifest's or index's bytes, which is the registry's `Docker-Content-Digest`.
//! When the project's CI already pushed exactly that image under the staging tag, the
//! pipeline sees the expected digest there and stage writes nothing ("adopt").
//!
//! # Tags
//!
//! `DistTag` is npm's rule (a letter first), and an OCI release is tagged with its version
//! (`2.4.62`), so the two cannot be the same value. Staging tags are `DistTag`s (`rc-<version>`
//! by default, or `platforms.docker_hub.staging_tag`, or the job's); every `DistTag` is a
//! valid OCI tag. The release tag is always the distribution's version, checked against
//! the OCI tag grammar ([`OciTag`]); the pipeline's release `DistTag` for this platform is
//! the word `version`, which names that rule. A job asking for another release tag
//! (`latest`) is refused before anything is sent: atr-dist publishes the voted version and
//! does not move alias tags. A version tag that already holds another digest is never
//! overwritten: a published version is final.
//!
//! # Staging repository and cross-repository mounts
//!
//! By default staging and release share the repository `<namespace>/<package>`, and promote
//! is one manifest PUT. With `staging_base_url` set to the registry's origin plus a path,
//! that path is the staging namespace: `https://registry-1.docker.io/apache-staging` stages
//! to `apache-staging/<package>`. Then stage mounts blobs the release repository already
//! has (`POST …/blobs/uploads/?mount=<digest>&from=<release>`; 202 means "not mounted",
//! and the blob is uploaded into the session the registry opened instead), and promote
//! mounts every blob from the staging repository and copies child manifests by digest
//! before the tag PUT. Promote has no local files, so a registry that refuses a mount fails
//! the promote (permanent, with the account's missing pull access as the likely cause)
//! instead of downloading and re-uploading. A staging registry on another origin is refused
//! when the configuration is loaded: blobs cannot be mounted across registries.
//!
//! # Requests
//!
//! Blobs: `HEAD /v2/<repo>/blobs/<digest>` (200: skip), `POST /v2/<repo>/blobs/uploads/`
//! (202 + `Location`), `PUT <Location>&digest=<digest>` with the file streamed from disk
//! (201). The single-request form (`POST …/uploads/?digest=` with a body) is not used:
//! distribution 2.8 answers it 202 and drops the body. Manifests: `PUT /v2/<repo>/manifests/
//! <digest-or-tag>` with the layout's bytes and media type, children before their index.
//! Reads: `HEAD` (promote: `GET`) `/v2/<repo>/manifests/<tag>` with every manifest type in
//! `Accept` (without the list types a registry answers with one platform's manifest).
//!
//! Writes follow the read-back protocol (`write.rs`). A manifest PUT whose answer is lost
//! is judged by what its reference resolves to: the manifest (done), what it resolved to
//! just before the PUT (the PUT did not arrive: sent again; stage HEADs the staging tag
//! first, since it may hold an earlier stage's image), or anything else (refused: written
//! by someone else meanwhile).
//!
//! # Authentication
//!
//! Registries challenge with 401 `WWW-Authenticate: Bearer realm=…,service=…,scope=…`; the
//! adapter then asks the realm for a token (Basic auth with `username` and the token from
//! `ATR_DIST_PLATFORMS__DOCKER_HUB__TOKEN` when configured), caches it by scope until
//! shortly before `expires_in` (60 s when absent) runs out, and sends the request again. A
//! 401 with `insufficient_scope` gets a token for the union of the scopes. Registries with
//! a Basic challenge get the credentials directly. The realm receives the credentials, so
//! it must be on the registry's own origin, or Docker Hub's `https://auth.docker.io` when the
//! registry is Docker Hub, or listed in [`OciSettings::token_realms`]; any other realm is a
//! permanent error and is never contacted.
//!
//! # Errors
//!
//! 401/403 that survive a fresh token are `Auth`; the registry's error codes
//! (`MANIFEST_BLOB_UNKNOWN`, `DIGEST_INVALID`, `MANIFEST_INVALID`, …) are in the message of
//! the permanent error other 4xx make; 429/502/503/504 are transient with `Retry-After`
//! (retried inside the attempt by `PlatformHttp` when short).
//!
//! [OCI image layout]: https://github.com/opencontainers/image-spec/blob/main/image-layout.md

mod auth;
mod layout;
mod registry;

use std::sync::atomic::AtomicBool;

use atr_dist_shared::names::DistTag;
use atr_dist_shared::{Digest, DistributionKey};
use futures::FutureExt;
use futures::future::BoxFuture;
use url::Url;

use self::auth::{Scopes, TokenCache};
use self::layout::Layout;
pub use self::layout::{ACCEPT_ALL, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use super::http::PlatformHttp;
use super::{Observed, PlannedWrite, PlatformAdapter, PlatformError, PromoteRequest, StageRequest};
use crate::config::{ConfigError, PlatformConfig};
use crate::secret::Secret;

/// Docker Hub's registry, the default `base_url`.
pub const DEFAULT_REGISTRY: &str = "https://registry-1.docker.io";
/// Docker Hub's token realm, allowed whenever the registry is Docker Hub.
pub const DOCKER_HUB_REALM: &str = "https://auth.docker.io/token";
/// The release `DistTag` of this platform: "tag the image with the distribution's version".
pub const RELEASE_TAG_VERSION: &str = "version";
/// Default staging tags are this followed by the version.
pub const STAGING_PREFIX: &str = "rc-";

const DOCKER_HUB_HOSTS: [&str; 2] = ["registry-1.docker.io", "index.docker.io"];

/// An OCI tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}` (distribution-spec).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciTag(String);

impl OciTag {
    pub fn new(value: &str) -> Result<OciTag, PlatformError> {
        let ok = !value.is_empty()
            && value.len() <= 128
            && value.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(PlatformError::permanent(format!(
                "{value:?} is not a valid OCI tag (1 to 128 of A-Z a-z 0-9 . _ -, not starting with . or -)"
            )));
        }
        Ok(OciTag(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The default staging tag: `rc-<version>`, or, for a version too long for a `DistTag`,
/// `rc-` and the start of the version's sha256 (still one tag per version).
pub fn default_staging_tag(version: &str) -> DistTag {
    DistTag::new(format!("{STAGING_PREFIX}{version}")).unwrap_or_else(|_| {
        let hash = layout::sha256_of(version.as_bytes());
        let hex = hash.as_str().trim_start_matches("sha256:");
        DistTag::new(format!("{STAGING_PREFIX}{}", &hex[..16]))
            .unwrap_or_else(|e| unreachable!("rc- and 16 hex digits is a valid dist-tag: {e}"))
    })
}

/// An adapter's settings; `from_config` builds them from `[platforms.docker_hub]`.
#[derive(Debug, Clone)]
pub struct OciSettings {
    /// The registry's origin (the API is under `/v2/`).
    pub registry: Url,
    /// A namespace to stage in instead of the release repository's (see the module docs).
    pub staging_namespace: Option<String>,
    pub username: Option<String>,
    pub token: Option<Secret>,
    /// Token realms on other origins that may receive the credentials.
    pub token_realms: Vec<Url>,
}

pub struct OciAdapter {
    http: PlatformHttp,
    registry: Url,
    staging_namespace: Option<String>,
    credentials: Option<(String, Secret)>,
    /// Origins of the token realms allowed besides the registry's own.
    realms: Vec<String>,
    docker_hub: bool,
    tokens: TokenCache,
    /// Set once the registry asked for Basic auth: send the credentials from then on.
    basic: AtomicBool,
}

fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

fn config_error(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// Checks a repository name against the distribution-spec grammar: `/`-separated
/// components of lower-case letters and digits, joined by `.`, `_`, `__` or runs of `-`.
fn check_repository(name: &str) -> Result<(), PlatformError> {
    fn component_ok(c: &str) -> bool {
        let bytes = c.as_bytes();
        let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
            return false;
        };
        let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !alnum(first) || !alnum(last) {
            return false;
        }
        // Separators: one '.', one or two '_', or any run of '-'; never mixed.
        let mut run = String::new();
        for &b in bytes {
            if alnum(&b) {
                let ok =
                    matches!(run.as_str(), "" | "." | "_" | "__") || run.chars().all(|c| c == '-');
                if !ok {
                    return false;
                }
                run.clear();
            } else if matches!(b, b'.' | b'_' | b'-') {
                run.push(char::from(b));
            } else {
                return false;
            }
        }
        true
    }
    if name.len() > 255 || !name.split('/').all(component_ok) {
        return Err(PlatformError::permanent(format!(
            "{name:?} is not a valid repository name: lower-case letters and digits, separated by '.', '_', '__' or '-', in '/'-separated parts"
        )));
    }
    Ok(())
}

impl OciAdapter {
    pub fn new(settings: OciSettings) -> Result<OciAdapter, PlatformError> {
        let OciSettings {
            registry,
            staging_namespace,
            username,
            token,
            token_realms,
        } = settings;
        if !matches!(registry.path(), "" | "/") || registry.query().is_some() {
            return Err(PlatformError::permanent(format!(
                "registry URL {registry} has a path or query; give its origin only (the API is at /v2/)"
            )));
        }
        if let Some(ns) = &staging_namespace {
            check_repository(ns)?;
        }
        let credentials = match (username, token) {
            (Some(user), Some(token)) => Some((user, token)),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                return Err(PlatformError::permanent(
                    "registry credentials need both a username and a token",
                ));
            }
        };
        let docker_hub = registry
            .host_str()
            .is_some_and(|h| DOCKER_HUB_HOSTS.contains(&h));
        let mut realm_urls = token_realms;
        if docker_hub {
            realm_urls.push(Url::parse(DOCKER_HUB_REALM).unwrap_or_else(|e| unreachable!("{e}")));
        }
        let mut http = PlatformHttp::new(&[&registry], None)?;
        for realm in &realm_urls {
            http.allow(realm);
        }
        Ok(OciAdapter {
            http,
            registry,
            staging_namespace,
            credentials,
            realms: realm_urls.iter().map(origin).collect(),
            docker_hub,
            tokens: TokenCache::default(),
            basic: AtomicBool::new(false),
        })
    }

    /// The adapter `[platforms.docker_hub]` describes, or `None` when the section sets
    /// none of `base_url`, `username` and the token: a worker without Docker Hub
    /// credentials does not take Docker Hub jobs (anonymous pushes are impossible there).
    pub fn from_config(config: &PlatformConfig) -> Result<Option<OciAdapter>, ConfigError> {
        const SECTION: &str = "platforms.docker_hub";
        if config.base_url.is_none() && config.username.is_none() && config.token.is_none() {
            return Ok(None);
        }
        let registry = match &config.base_url {
            Some(url) => url.clone(),
            None => Url::parse(DEFAULT_REGISTRY).unwrap_or_else(|e| unreachable!("{e}")),
        };
        if !matches!(registry.path(), "" | "/") {
            return Err(config_error(
                &format!("{SECTION}.base_url"),
                format!(
                    "{registry} has a path; give the registry's origin, e.g. {DEFAULT_REGISTRY}"
                ),
            ));
        }
        match (&config.username, &config.token) {
            (Some(_), None) => {
                return Err(config_error(
                    &format!("{SECTION}.token"),
                    "a username is set without a token; set ATR_DIST_PLATFORMS__DOCKER_HUB__TOKEN or token_file",
                ));
            }
            (None, Some(_)) => {
                return Err(config_error(
                    &format!("{SECTION}.username"),
                    "required with a token: registries take the token as that user's password",
                ));
            }
            (Some(_), Some(_)) | (None, None) => {}
        }
        let staging_namespace = match &config.staging_base_url {
            None => None,
            Some(staging) => {
                if origin(staging) != origin(&registry) {
                    return Err(config_error(
                        &format!("{SECTION}.staging_base_url"),
                        format!(
                            "{} is another registry than {}; blobs cannot be mounted across registries, so staging must be on the same registry (its path names the staging namespace)",
                            origin(staging),
                            origin(&registry)
                        ),
                    ));
                }
                let ns = staging.path().trim_matches('/');
                (!ns.is_empty()).then(|| ns.to_owned())
            }
        };
        OciAdapter::new(OciSettings {
            registry,
            staging_namespace,
            username: config.username.clone(),
            token: config.token.clone(),
            token_realms: Vec::new(),
        })
        .map(Some)
        .map_err(|e| config_error(SECTION, e.message))
    }

    fn release_repo(&self, key: &DistributionKey) -> Result<String, PlatformError> {
        let repo = if key.owner_namespace.is_empty() {
            key.package.to_string()
        } else {
            format!("{}/{}", key.owner_namespace, key.package)
        };
        check_repository(&repo)?;
        Ok(repo)
    }

    fn staging_repo(&self, key: &DistributionKey) -> Result<String, PlatformError> {
        match &self.staging_namespace {
            Some(ns) => {
                let repo = format!("{ns}/{}", key.package);
                check_repository(&repo)?;
                Ok(repo)
            }
            None => self.release_repo(key),
        }
    }

    /// The OCI tag a release `DistTag` stands for: only `version` exists (module docs).
    fn release_tag(&self, key: &DistributionKey, tag: &DistTag) -> Result<OciTag, PlatformError> {
        if tag.as_str() != RELEASE_TAG_VERSION {
            return Err(PlatformError::permanent(format!(
                "release tag \"{tag}\" cannot be used on an OCI registry: the release is tagged with its version ({}), and atr-dist moves no alias tags such as latest; omit release_tag (or give {RELEASE_TAG_VERSION:?})",
                key.version
            )));
        }
        OciTag::new(key.version.as_str())
    }

    fn url(&self, path: &str) -> Result<Url, PlatformError> {
        self.registry.join(path).map_err(|e| {
            PlatformError::permanent(format!("building a registry URL for {path}: {e}"))
        })
    }

    fn manifest_url(&self, repo: &str, reference: &str) -> Result<Url, PlatformError> {
        self.url(&format!("/v2/{repo}/manifests/{reference}"))
    }

    fn uploads_url(
        &self,
        repo: &str,
        mount: Option<(&Digest, &str)>,
    ) -> Result<Url, PlatformError> {
        let mut url = self.url(&format!("/v2/{repo}/blobs/uploads/"))?;
        if let Some((digest, from)) = mount {
            url.query_pairs_mut()
                .append_pair("mount", digest.as_str())
                .append_pair("from", from);
        }
        Ok(url)
    }

    fn web_url(&self, repo: &str) -> Option<String> {
        self.docker_hub
            .then(|| format!("https://hub.docker.com/r/{repo}/tags"))
    }

    async fn read(&self, repo: &str, tag: &OciTag) -> Result<Option<Observed>, PlatformError> {
        let scopes = Scopes::repository(repo, ["pull"]);
        let Some(digest) = self.head_manifest(repo, tag.as_str(), &scopes).await? else {
            return Ok(None);
        };
        Ok(Some(Observed {
            digest,
            api_url: Some(self.manifest_url(repo, tag.as_str())?.to_string()),
            web_url: self.web_url(repo),
            upload_date: None,
        }))
    }

    async fn layout(&self, req: &StageRequest) -> Result<Layout, PlatformError> {
        let artifacts = req.artifacts.clone();
        let version = req.key.version.to_string();
        crate::blocking::run(move |cancel: &crate::blocking::Cancel| {
            Layout::read(&artifacts, &version, cancel)
        })
        .await
        .map_err(|e| PlatformError::transient(format!("reading the OCI layout: {e}")))?
    }

    /// The staging repository and tag, refusing a staging tag that is the release tag of
    /// the same repository (staging would publish).
    fn staging_place(
        &self,
        key: &DistributionKey,
        tag: &DistTag,
    ) -> Result<(String, OciTag), PlatformError> {
        let repo = self.staging_repo(key)?;
        let tag = OciTag::new(tag.as_str())?;
        if repo == self.release_repo(key)? && tag.as_str() == key.version.as_str() {
            return Err(PlatformError::permanent(format!(
                "the staging tag {} is the release tag of {repo}: staging would publish; choose another staging tag",
                tag.as_str()
            )));
        }
        Ok((repo, tag))
    }

    async fn stage_layout(&self, req: &StageRequest) -> Result<(), PlatformError> {
        let (staging, tag) = self.staging_place(&req.key, &req.staging_tag)?;
        let release = self.release_repo(&req.key)?;
        let layout = self.layout(req).await?;
        tracing::info!(
            layout = %layout.dir,
            %staging,
            tag = tag.as_str(),
            digest = %layout.top.digest,
            blobs = layout.blobs.len(),
            manifests_read = layout.manifests_read,
            manifests = layout.children.len() + 1,
            "pushing the OCI layout"
        );
        let mount_from = (staging != release).then_some(release.as_str());
        let mut scopes = Scopes::repository(&staging, ["pull", "push"]);
        if let Some(from) = mount_from {
            scopes.add("repository", from, ["pull"]);
        }
        for blob in &layout.blobs {
            self.push_blob(&staging, blob, mount_from, &scopes).await?;
        }
        for child in &layout.children {
            self.put_manifest(&staging, child.digest.as_str(), None, child, &scopes)
                .await?;
        }
        // A staging tag may hold an earlier stage's image, which this one replaces: where it
        // points now tells a put that did not arrive from one written over by someone else.
        let was = self.head_manifest(&staging, tag.as_str(), &scopes).await?;
        self.put_manifest(&staging, tag.as_str(), was.as_ref(), &layout.top, &scopes)
            .await
    }

    async fn promote_staged(&self, req: &PromoteRequest) -> Result<(), PlatformError> {
        let release_tag = self.release_tag(&req.key, &req.release_tag)?;
        let (staging, staging_tag) = self.staging_place(&req.key, &req.staging_tag)?;
        let release = self.release_repo(&req.key)?;
        let mut scopes = Scopes::repository(&release, ["pull", "push"]);
        if staging != release {
            scopes.add("repository", &staging, ["pull"]);
        }
        let Some(staged) = self
            .get_manifest(&staging, staging_tag.as_str(), &scopes)
            .await?
        else {
            return Err(PlatformError::permanent(format!(
                "{staging}:{} is gone from the registry; nothing promoted",
                staging_tag.as_str()
            )));
        };
        if staged.digest != req.staged_digest {
            return Err(PlatformError::permanent(format!(
                "{staging}:{} now holds {}, not the staged {}; nothing promoted",
                staging_tag.as_str(),
                staged.digest,
                req.staged_digest
            )));
        }
        match self
            .head_manifest(&release, release_tag.as_str(), &scopes)
            .await?
        {
            Some(current) if current == staged.digest => {
                tracing::info!(%release, tag = release_tag.as_str(), "release tag already holds the staged digest");
                return Ok(());
            }
            Some(current) => {
                return Err(PlatformError::permanent(format!(
                    "{release}:{} already holds {current}; a published version is not overwritten with {}",
                    release_tag.as_str(),
                    staged.digest
                )));
            }
            None => {}
        }
        if staging != release {
            self.copy_references(&staging, &release, &staged, &scopes, 0)
                .await?;
        }
        // The release tag was free just above.
        self.put_manifest(&release, release_tag.as_str(), None, &staged, &scopes)
            .await
    }
}

impl PlatformAdapter for OciAdapter {
    fn expected_digest<'a>(
        &'a self,
        req: &'a StageRequest,
    ) -> BoxFuture<'a, Result<Digest, PlatformError>> {
        async move { Ok(self.layout(req).await?.top.digest) }.boxed()
    }

    fn plan_stage(&self, req: &StageRequest) -> Vec<PlannedWrite> {
        // The pipeline calls expected_digest (which reports these errors) before this;
        // a plan cannot fail, so a layout or name error here yields no writes.
        let planned = (|| -> Result<Vec<PlannedWrite>, PlatformError> {
            let (staging, tag) = self.staging_place(&req.key, &req.staging_tag)?;
            let release = self.release_repo(&req.key)?;
            let layout = Layout::read(
                &req.artifacts,
                req.key.version.as_str(),
                &crate::blocking::Cancel::never(),
            )?;
            let mount_from = (staging != release).then_some(release.as_str());
            let mut writes = Vec::new();
            for blob in &layout.blobs {
                writes.push(PlannedWrite {
                    method: "POST",
                    url: self
                        .uploads_url(&staging, mount_from.map(|from| (&blob.digest, from)))?
                        .to_string(),
                    what: format!(
                        "{}upload {} {} ({} bytes), then PUT to the session with ?digest=; skipped when HEAD finds the blob",
                        if mount_from.is_some() { "mount, or " } else { "" },
                        blob.media_type,
                        blob.digest,
                        blob.size
                    ),
                });
            }
            for child in &layout.children {
                writes.push(PlannedWrite {
                    method: "PUT",
                    url: self
                        .manifest_url(&staging, child.digest.as_str())?
                        .to_string(),
                    what: format!(
                        "{} {} ({} bytes)",
                        child.media_type,
                        child.digest,
                        child.bytes.len()
                    ),
                });
            }
            writes.push(PlannedWrite {
                method: "PUT",
                url: self.manifest_url(&staging, tag.as_str())?.to_string(),
                what: format!(
                    "{} {} under tag {} ({} bytes)",
                    layout.top.media_type,
                    layout.top.digest,
                    tag.as_str(),
                    layout.top.bytes.len()
                ),
            });
            Ok(writes)
        })();
        planned.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "planning the OCI stage");
            Vec::new()
        })
    }

    fn stage<'a>(&'a self, req: &'a StageRequest) -> BoxFuture<'a, Result<(), PlatformError>> {
        self.stage_layout(req).boxed()
    }

    fn read_staged<'a>(
        &'a self,
        key: &'a DistributionKey,
        staging_tag: &'a DistTag,
    ) -> BoxFuture<'a, Result<Option<Observed>, PlatformError>> {
        async move {
            let (repo, tag) = self.staging_place(key, staging_tag)?;
            self.read(&repo, &tag).await
        }
        .boxed()
    }

    fn plan_promote(&self, req: &PromoteRequest) -> Vec<PlannedWrite> {
        // As in plan_stage: read_promoted reports these errors first.
        let planned = (|| -> Result<Vec<PlannedWrite>, PlatformError> {
            let tag = self.release_tag(&req.key, &req.release_tag)?;
            let (staging, _) = self.staging_place(&req.key, &req.staging_tag)?;
            let release = self.release_repo(&req.key)?;
            let mut writes = Vec::new();
            if staging != release {
                writes.push(PlannedWrite {
                    method: "POST",
                    url: self.uploads_url(&release, None)?.to_string() + "?mount=<digest>&from=" + &staging,
                    what: format!(
                        "mount each blob of {} from {staging} (and PUT its child manifests by digest) where {release} lacks it",
                        req.staged_digest
                    ),
                });
            }
            writes.push(PlannedWrite {
                method: "PUT",
                url: self.manifest_url(&release, tag.as_str())?.to_string(),
                what: format!(
                    "the staged manifest's exact bytes ({}) under tag {}",
                    req.staged_digest,
                    tag.as_str()
                ),
            });
            Ok(writes)
        })();
        planned.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "planning the OCI promote");
            Vec::new()
        })
    }

    fn promote<'a>(&'a self, req: &'a PromoteRequest) -> BoxFuture<'a, Result<(), PlatformError>> {
        self.promote_staged(req).boxed()
    }

    fn read_promoted<'a>(
        &'a self,
        key: &'a DistributionKey,
        release_tag: &'a DistTag,
    ) -> BoxFuture<'a, Result<Option<Observed>, PlatformError>> {
        async move {
            let tag = self.release_tag(key, release_tag)?;
            let repo = self.release_repo(key)?;
            self.read(&repo, &tag).await
        }
        .boxed()
    }

    fn default_tags(&self, key: &DistributionKey) -> (DistTag, DistTag) {
        let release = DistTag::new(RELEASE_TAG_VERSION)
            .unwrap_or_else(|e| unreachable!("\"version\" is a valid dist-tag: {e}"));
        (default_staging_tag(key.version.as_str()), release)
    }

    fn staging(&self) -> crate::platform::Staging {
        crate::platform::Staging::Platform
    }

    fn promotion(&self) -> atr_dist_shared::PromotionMechanism {
        atr_dist_shared::PromotionMechanism::Retag
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atr_dist_shared::names::{PackageName, ReleaseKey, Version};
    use atr_dist_shared::{ErrorClass, Platform};

    fn key(ns: &str, version: &str) -> DistributionKey {
        DistributionKey::new(
            ReleaseKey::new("example-1.0.0").unwrap(),
            Platform::DockerHub,
            ns,
            PackageName::new("httpd").unwrap(),
            Version::new(version).unwrap(),
        )
        .unwrap()
    }

    fn adapter(registry: &str, staging_namespace: Option<&str>) -> OciAdapter {
        OciAdapter::new(OciSettings {
            registry: Url::parse(registry).unwrap(),
            staging_namespace: staging_namespace.map(str::to_owned),
            username: None,
            token: None,
            token_realms: Vec::new(),
        })
        .unwrap()
    }

    #[test]
    fn default_tags_are_valid_and_per_version() {
        let a = adapter(DEFAULT_REGISTRY, None);
        let (staging, release) = a.default_tags(&key("apache", "2.4.62"));
        assert_eq!(staging.as_str(), "rc-2.4.62");
        assert_eq!(release.as_str(), RELEASE_TAG_VERSION);
        let k = key("apache", "2.4.62");
        assert_eq!(a.release_tag(&k, &release).unwrap().as_str(), "2.4.62");
        let err = a.release_tag(&k, &DistTag::latest()).unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent);
        assert!(
            err.message.contains("moves no alias tags"),
            "{}",
            err.message
        );

        let long = "1".repeat(100);
        let tag = default_staging_tag(&long);
        assert!(
            tag.as_str().starts_with("rc-") && tag.as_str().len() == 19,
            "{tag}"
        );
        assert_ne!(tag, default_staging_tag(&"2".repeat(100)));
    }

    #[test]
    fn oci_tags_and_repository_names() {
        for good in ["2.4.62", "_x", "rc-1.0", &"a".repeat(128)] {
            assert!(OciTag::new(good).is_ok(), "{good}");
        }
        for bad in ["", ".x", "-x", "a+b", "a/b", &"a".repeat(129)] {
            assert!(OciTag::new(bad).is_err(), "{bad}");
        }
        // Names are at most 255 bytes (the limit Docker's reference grammar sets).
        for good in [
            "apache/httpd",
            "library/a.b",
            "a__b/c-d",
            "a---b",
            "x/y/z",
            &"a".repeat(255),
        ] {
            assert!(check_repository(good).is_ok(), "{good}");
        }
        for bad in [
            "Apache/httpd",
            "a/",
            "/a",
            "a..b",
            "a_-b",
            "a___b",
            "-a",
            "a-",
            "a b",
            &"a".repeat(256),
        ] {
            assert!(check_repository(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn repositories_urls_and_web_pages() {
        let hub = adapter(DEFAULT_REGISTRY, None);
        let k = key("apache", "1.0");
        assert_eq!(hub.release_repo(&k).unwrap(), "apache/httpd");
        assert_eq!(
            hub.manifest_url("apache/httpd", "1.0").unwrap().as_str(),
            "https://registry-1.docker.io/v2/apache/httpd/manifests/1.0"
        );
        assert_eq!(
            hub.web_url("apache/httpd").as_deref(),
            Some("https://hub.docker.com/r/apache/httpd/tags")
        );
        // The default namespace fills in, as ATR's forms do.
        assert_eq!(hub.release_repo(&key("", "1.0")).unwrap(), "library/httpd");

        let local = adapter("http://127.0.0.1:5000", Some("staging"));
        assert_eq!(local.web_url("apache/httpd"), None);
        assert_eq!(local.staging_repo(&k).unwrap(), "staging/httpd");
        let d = layout::sha256_of(b"x");
        assert_eq!(
            local
                .uploads_url("apache/httpd", Some((&d, "staging/httpd")))
                .unwrap()
                .as_str(),
            format!(
                "http://127.0.0.1:5000/v2/apache/httpd/blobs/uploads/?mount=sha256%3A{}&from=staging%2Fhttpd",
                &d.as_str()[7..]
            )
        );
    }

    #[test]
    fn a_staging_tag_equal_to_the_release_tag_is_refused() {
        let a = adapter(DEFAULT_REGISTRY, None);
        let k = key("apache", "beta");
        let err = a
            .staging_place(&k, &DistTag::new("beta").unwrap())
            .unwrap_err();
        assert!(
            err.message.contains("staging would publish"),
            "{}",
            err.message
        );
        // In a separate staging repository the same tag is fine.
        let b = adapter(DEFAULT_REGISTRY, Some("apache-staging"));
        assert!(b.staging_place(&k, &DistTag::new("beta").unwrap()).is_ok());
    }

    #[test]
    fn realms_elsewhere_are_not_contacted() {
        let a = adapter("http://127.0.0.1:9", None);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt
            .block_on(a.fetch_token(
                "http://127.0.0.2:9/token",
                Some("x"),
                &Scopes::repository("a/b", ["pull"]),
            ))
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent);
        assert!(
            err.message.contains("refusing to send credentials there"),
            "{}",
            err.message
        );
        // Docker Hub's realm is allowed for Docker Hub only.
        let hub = adapter(DEFAULT_REGISTRY, None);
        assert!(hub.realms.contains(&"https://auth.docker.io".to_owned()));
        assert!(a.realms.is_empty());
    }

    #[test]
    fn configuration() {
        let none = PlatformConfig::default();
        assert!(OciAdapter::from_config(&none).unwrap().is_none());
        let hub = PlatformConfig {
            username: Some("apachebot".into()),
            token: Some(Secret::new("dckr_pat_x")),
            ..PlatformConfig::default()
        };
        let a = OciAdapter::from_config(&hub).unwrap().unwrap();
        assert_eq!(a.registry.as_str(), "https://registry-1.docker.io/");
        assert!(a.docker_hub);

        let staged = PlatformConfig {
            base_url: Some(Url::parse("http://127.0.0.1:5000").unwrap()),
            staging_base_url: Some(Url::parse("http://127.0.0.1:5000/apache-staging/").unwrap()),
            ..PlatformConfig::default()
        };
        let a = OciAdapter::from_config(&staged).unwrap().unwrap();
        assert_eq!(a.staging_namespace.as_deref(), Some("apache-staging"));

        let cases = [
            (
                PlatformConfig {
                    token: Some(Secret::new("t")),
                    ..PlatformConfig::default()
                },
                "platforms.docker_hub.username",
            ),
            (
                PlatformConfig {
                    base_url: Some(Url::parse("https://r.example/v2/").unwrap()),
                    ..PlatformConfig::default()
                },
                "platforms.docker_hub.base_url",
            ),
            (
                PlatformConfig {
                    base_url: Some(Url::parse("https://r.example").unwrap()),
                    staging_base_url: Some(Url::parse("https://other.example/ns").unwrap()),
                    ..PlatformConfig::default()
                },
                "platforms.docker_hub.staging_base_url",
            ),
            (
                PlatformConfig {
                    base_url: Some(Url::parse("https://r.example").unwrap()),
                    staging_base_url: Some(Url::parse("https://r.example/Bad_-ns").unwrap()),
                    ..PlatformConfig::default()
                },
                "platforms.docker_hub",
            ),
        ];
        for (config, key) in cases {
            let err = OciAdapter::from_config(&config)
                .err()
                .expect("refused")
                .to_string();
            assert!(err.contains(&format!("config key `{key}`")), "{key}: {err}");
        }
    }
}
