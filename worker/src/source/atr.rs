//! `atr`: ATR's published per-revision file manifest, and the files, over HTTP.
//!
//! URLs are templates in the configuration (`revisions.atr_manifest_url`,
//! `revisions.atr_file_url`) with `{project}`, `{version}`, `{revision}` and `{path}`, so the
//! worker follows ATR's routes without code changes. The manifest is JSON:
//! `{"entries": [{"path", "size", "sha3_256"}]}`. Downloads are streamed to a temporary file
//! and hashed on the way; a file that does not match the manifest is refused.

use std::time::Duration;

use atr_dist_shared::RevisionManifest;
use atr_dist_shared::job::ReleaseRef;
use atr_dist_shared::manifest::Sha3Hex;
use atr_dist_shared::names::{ArtifactPath, RevisionNumber};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use sha3::{Digest as _, Sha3_256};
use tokio::io::AsyncWriteExt;

use super::{LocalFile, RevisionSource, SourceError};

pub struct AtrSource {
    client: reqwest::Client,
    manifest_url: String,
    file_url: String,
}

/// The largest manifest accepted: far above any real release.
const MAX_MANIFEST_BYTES: usize = 16 * 1024 * 1024;

impl AtrSource {
    pub fn new(manifest_url: String, file_url: String) -> Result<AtrSource, SourceError> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("atr-dist/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| SourceError::Invalid(format!("HTTP client: {e}")))?;
        Ok(AtrSource {
            client,
            manifest_url,
            file_url,
        })
    }

    fn fill(
        template: &str,
        release: &ReleaseRef,
        revision: &RevisionNumber,
        path: Option<&ArtifactPath>,
    ) -> String {
        let mut url = template
            .replace("{project}", release.project_key.as_str())
            .replace("{version}", release.version_key.as_str())
            .replace("{revision}", revision.as_str());
        if let Some(path) = path {
            let encoded: Vec<String> = path.as_str().split('/').map(urlencode).collect();
            url = url.replace("{path}", &encoded.join("/"));
        }
        url
    }

    async fn get(&self, url: &str, what: &str) -> Result<reqwest::Response, SourceError> {
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| SourceError::Unavailable(format!("GET {url}: {e}")))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(SourceError::NotFound(format!("{what} (404 from {url})")));
        }
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(SourceError::Unavailable(format!("GET {url}: {status}")));
        }
        if !status.is_success() {
            return Err(SourceError::Invalid(format!("GET {url}: {status}")));
        }
        Ok(response)
    }
}

fn urlencode(part: &str) -> String {
    part.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl RevisionSource for AtrSource {
    fn manifest<'a>(
        &'a self,
        release: &'a ReleaseRef,
        revision: &'a RevisionNumber,
    ) -> BoxFuture<'a, Result<RevisionManifest, SourceError>> {
        async move {
            let url = AtrSource::fill(&self.manifest_url, release, revision, None);
            let what = format!("{} {revision}", release.key());
            let response = self.get(&url, &what).await?;
            let body = response
                .bytes()
                .await
                .map_err(|e| SourceError::Unavailable(format!("GET {url}: {e}")))?;
            if body.len() > MAX_MANIFEST_BYTES {
                return Err(SourceError::Invalid(format!(
                    "manifest at {url} is over {MAX_MANIFEST_BYTES} bytes"
                )));
            }
            serde_json::from_slice(&body)
                .map_err(|e| SourceError::Invalid(format!("manifest at {url}: {e}")))
        }
        .boxed()
    }

    fn fetch<'a>(
        &'a self,
        release: &'a ReleaseRef,
        revision: &'a RevisionNumber,
        path: &'a ArtifactPath,
    ) -> BoxFuture<'a, Result<LocalFile, SourceError>> {
        async move {
            let url = AtrSource::fill(&self.file_url, release, revision, Some(path));
            let response = self
                .get(&url, &format!("{} {revision} {path}", release.key()))
                .await?;
            let dir = tempfile::tempdir()
                .map_err(|e| SourceError::Unavailable(format!("temporary directory: {e}")))?;
            let local = dir.path().join("artifact");
            let mut file = tokio::fs::File::create(&local)
                .await
                .map_err(|e| SourceError::Unavailable(format!("{}: {e}", local.display())))?;
            let mut hasher = Sha3_256::new();
            let mut size = 0u64;
            let mut stream = response.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk =
                    chunk.map_err(|e| SourceError::Unavailable(format!("GET {url}: {e}")))?;
                size += chunk.len() as u64;
                hasher.update(&chunk);
                file.write_all(&chunk)
                    .await
                    .map_err(|e| SourceError::Unavailable(format!("{}: {e}", local.display())))?;
            }
            file.flush()
                .await
                .map_err(|e| SourceError::Unavailable(e.to_string()))?;
            let digest = Sha3Hex::from_bytes(hasher.finalize().into());
            tracing::debug!(%url, size, sha3_256 = %digest, "downloaded artifact");
            Ok(LocalFile::downloaded(local, (size, digest), dir))
        }
        .boxed()
    }
}
