//! `atr`: ATR's published per-revision file manifest, and the files, over HTTP.
//!
//! URLs are templates in the configuration (`revisions.atr_manifest_url`,
//! `revisions.atr_file_url`) with `{project}`, `{version}`, `{revision}` and `{path}`, so the
//! worker follows ATR's routes without code changes. The manifest is JSON:
//! `{"entries": [{"path", "size", "sha3_256"}]}`.
//!
//! The manifest is read as a stream and refused as soon as it passes its size limit (a
//! `Content-Length` above it is refused before a byte is read). A file's download is handed
//! to the pipeline's sealer, which stops reading one byte past the manifest's size for it
//! and compares what it read with the manifest. Redirects are followed only within ATR's
//! own origin (same scheme, host and port), so neither a redirect to another host nor a
//! downgrade from https to http is followed.

use std::time::Duration;

use atr_dist_shared::RevisionManifest;
use atr_dist_shared::job::ReleaseRef;
use atr_dist_shared::names::{ArtifactPath, RevisionNumber};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};

use super::{RevisionSource, SourceError};
use crate::seal::ByteStream;

pub struct AtrSource {
    client: reqwest::Client,
    manifest_url: String,
    file_url: String,
}

/// The largest manifest accepted: far above any real release.
const MAX_MANIFEST_BYTES: usize = 16 * 1024 * 1024;
/// Redirects followed, each within the origin of the first URL.
const MAX_REDIRECTS: usize = 5;

/// Follows a redirect only to the origin the request started at.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let Some(first) = attempt.previous().first() else {
            return attempt.follow();
        };
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        if attempt.url().origin() != first.origin() {
            let to = attempt.url().origin().ascii_serialization();
            let from = first.origin().ascii_serialization();
            return attempt.error(format!(
                "redirected to {to}, outside ATR's origin {from}; not followed"
            ));
        }
        attempt.follow()
    })
}

impl AtrSource {
    pub fn new(manifest_url: String, file_url: String) -> Result<AtrSource, SourceError> {
        let client = crate::tls::client_builder()
            .user_agent(concat!("atr-dist/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(600))
            .redirect(same_origin_redirects())
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
            .map_err(|e| SourceError::Unavailable(format!("GET {url}: {}", crate::platform::http::describe(&e))))?;
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
            let too_big = || {
                SourceError::Invalid(format!(
                    "manifest at {url} is over {MAX_MANIFEST_BYTES} bytes"
                ))
            };
            if response
                .content_length()
                .is_some_and(|n| n > MAX_MANIFEST_BYTES as u64)
            {
                return Err(too_big());
            }
            let mut body = Vec::new();
            let mut stream = response.bytes_stream();
            while let Some(piece) = stream.next().await {
                let piece =
                    piece.map_err(|e| SourceError::Unavailable(format!("GET {url}: {e}")))?;
                if body.len() + piece.len() > MAX_MANIFEST_BYTES {
                    return Err(too_big());
                }
                body.extend_from_slice(&piece);
            }
            serde_json::from_slice(&body)
                .map_err(|e| SourceError::Invalid(format!("manifest at {url}: {e}")))
        }
        .boxed()
    }

    fn open<'a>(
        &'a self,
        release: &'a ReleaseRef,
        revision: &'a RevisionNumber,
        path: &'a ArtifactPath,
    ) -> BoxFuture<'a, Result<ByteStream, SourceError>> {
        async move {
            let url = AtrSource::fill(&self.file_url, release, revision, Some(path));
            let response = self
                .get(&url, &format!("{} {revision} {path}", release.key()))
                .await?;
            // The sealer bounds the read at the manifest's size and checks the bytes.
            Ok(response
                .bytes_stream()
                .map_err(move |e| std::io::Error::other(format!("GET {url}: {e}")))
                .boxed())
        }
        .boxed()
    }
}
