//! Requests to a registry's distribution API (`/v2/`): one `call` that answers the
//! registry's authentication challenges, then blobs (HEAD, upload sessions, mounts) and
//! manifests (HEAD, GET with the full Accept list, PUT of exact bytes), and the registry's
//! errors turned into classed `PlatformError`s.

use std::sync::atomic::Ordering;

use atr_dist_shared::{Digest, ErrorClass};
use futures::FutureExt;
use futures::future::BoxFuture;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION,
};
use reqwest::{Client, RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use url::Url;

use super::auth::{Challenge, Scopes, TokenResponse};
use super::layout::{self, ACCEPT_ALL, BlobFile, ManifestFile, References};
use super::{OciAdapter, origin};
use crate::platform::PlatformError;
use crate::platform::http::{Sent, is_retryable, retry_after};
use crate::platform::write::{Found, Written, confirmed};
use crate::secret::Secret;

/// Sends of one request (the first, then with a fresh token, then with a wider one).
const MAX_AUTH_ROUNDS: usize = 3;
/// The most of an error body quoted when it is not the registry's JSON.
const MAX_QUOTED_BODY: usize = 300;

/// Whether a request changes the registry (and so follows the read-back protocol).
#[derive(Clone, Copy)]
enum Mode {
    Read,
    Write,
}

/// What a request carries to authenticate.
enum Auth {
    Anonymous,
    Bearer(HeaderValue),
    Basic,
}

/// How a blob upload started.
enum Upload {
    /// The registry mounted the blob from the other repository: nothing to send.
    Mounted,
    /// An upload session to PUT the blob to.
    Session(Url),
}

/// `Docker-Content-Digest`, when the registry sent one.
fn content_digest(headers: &HeaderMap) -> Result<Option<Digest>, PlatformError> {
    let Some(value) = headers.get("docker-content-digest") else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| {
        PlatformError::permanent("the registry sent a Docker-Content-Digest that is not text")
    })?;
    layout::parse_sha256(text.trim()).map(Some)
}

/// The media type of a response, without parameters.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let bare = value.split(';').next().unwrap_or(value).trim();
    (!bare.is_empty()).then(|| bare.to_owned())
}

#[derive(Deserialize)]
struct ErrorsBody {
    #[serde(default)]
    errors: Vec<RegistryErrorEntry>,
}

#[derive(Deserialize)]
struct RegistryErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    detail: serde_json::Value,
}

/// The registry's errors as `CODE: message (detail)`, or the start of the body.
fn describe_body(body: &str) -> String {
    if let Ok(parsed) = serde_json::from_str::<ErrorsBody>(body)
        && !parsed.errors.is_empty()
    {
        return parsed
            .errors
            .iter()
            .map(|e| {
                let detail = match &e.detail {
                    serde_json::Value::Null => String::new(),
                    serde_json::Value::String(s) if s.is_empty() => String::new(),
                    serde_json::Value::String(s) => format!(" ({s})"),
                    other @ (serde_json::Value::Bool(_)
                    | serde_json::Value::Number(_)
                    | serde_json::Value::Array(_)
                    | serde_json::Value::Object(_)) => format!(" ({other})"),
                };
                format!("{}: {}{detail}", e.code, e.message)
            })
            .collect::<Vec<_>>()
            .join("; ");
    }
    let squashed = body.split_whitespace().collect::<Vec<_>>().join(" ");
    squashed.chars().take(MAX_QUOTED_BODY).collect()
}

/// A classed error for an unsuccessful registry response, classed as
/// `http::error_for` does (401/403 auth, 429 and 5xx transient with Retry-After, other 4xx
/// permanent), with the registry's error codes in the message.
async fn registry_error(resp: Response, what: &str) -> PlatformError {
    let status = resp.status();
    let wait = retry_after(resp.headers());
    let body = resp.text().await.unwrap_or_default();
    let class = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ErrorClass::Auth,
        s if is_retryable(s) => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    };
    let detail = describe_body(&body);
    let mut message = if detail.is_empty() {
        format!("{what}: HTTP {status}")
    } else {
        format!("{what}: HTTP {status}: {detail}")
    };
    // A 401 goes through `refused`, which says more; a 403 is final as it comes.
    if status == StatusCode::FORBIDDEN {
        message.push_str(
            "; the configured account (platforms.docker_hub.username) lacks access to this repository",
        );
    }
    PlatformError {
        class,
        message,
        http_status: Some(status.as_u16()),
        retry_after: wait,
        not_yet: false,
    }
}

fn bearer_header(token: &Secret) -> Result<HeaderValue, PlatformError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
        PlatformError::new(
            ErrorClass::Auth,
            "the token realm sent a token that is not a valid header value",
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

impl OciAdapter {
    fn initial_auth(&self, scopes: &Scopes) -> Auth {
        if self.basic.load(Ordering::Relaxed) && self.credentials.is_some() {
            return Auth::Basic;
        }
        match self.tokens.get(scopes).and_then(|t| bearer_header(&t).ok()) {
            Some(header) => Auth::Bearer(header),
            None => Auth::Anonymous,
        }
    }

    fn apply(&self, rb: RequestBuilder, auth: &Auth) -> RequestBuilder {
        match (auth, &self.credentials) {
            (Auth::Bearer(header), _) => rb.header(AUTHORIZATION, header.clone()),
            (Auth::Basic, Some((user, token))) => rb.basic_auth(user, Some(token.expose())),
            (Auth::Basic, None) | (Auth::Anonymous, _) => rb,
        }
    }

    /// Sends a read, answering the registry's authentication challenges: returns the
    /// first response that is not 401, or an `Auth` error when fresh credentials are
    /// refused too. Other statuses are the caller's to judge.
    async fn call(
        &self,
        what: &str,
        scopes: &Scopes,
        make: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Response, PlatformError> {
        match self.exchange(what, scopes, make, Mode::Read).await? {
            Sent::Answered(resp) => Ok(resp),
            Sent::Unknown(e) => Err(e),
        }
    }

    /// Sends a write as `call` sends a read; an outcome that is not known comes back as
    /// `Sent::Unknown` for the read-back protocol (`platform/write.rs`). A 401 is an answer:
    /// the registry did not act, and the write is sent again with fresh credentials.
    async fn call_write(
        &self,
        what: &str,
        scopes: &Scopes,
        make: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Sent, PlatformError> {
        self.exchange(what, scopes, make, Mode::Write).await
    }

    async fn exchange(
        &self,
        what: &str,
        scopes: &Scopes,
        make: impl Fn(&Client) -> RequestBuilder,
        mode: Mode,
    ) -> Result<Sent, PlatformError> {
        let mut auth = self.initial_auth(scopes);
        // The scopes of a token fetched during this call: asked again for no more than
        // these, the registry is refusing the credentials, not a stale token.
        let mut granted: Option<Scopes> = None;
        for _ in 0..MAX_AUTH_ROUNDS {
            let make = |c: &Client| self.apply(make(c), &auth);
            let resp = match mode {
                Mode::Read => self.http.send(what, make).await?,
                Mode::Write => match self.http.write(what, make).await? {
                    Sent::Answered(resp) => resp,
                    unknown @ Sent::Unknown(_) => return Ok(unknown),
                },
            };
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(Sent::Answered(resp));
            }
            match Challenge::from_headers(resp.headers()) {
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope,
                    error,
                }) => {
                    let mut want = scopes.clone();
                    want.merge(&scope);
                    if granted.as_ref().is_some_and(|g| g.covers(&want)) {
                        return Err(self.refused(resp, what, &want, error.as_deref()).await);
                    }
                    self.tokens.forget(scopes);
                    let (token, lifetime) =
                        self.fetch_token(&realm, service.as_deref(), &want).await?;
                    auth = Auth::Bearer(bearer_header(&token)?);
                    self.tokens.put(scopes, token, lifetime);
                    granted = Some(want);
                }
                Some(Challenge::Basic) => {
                    if matches!(auth, Auth::Basic) || self.credentials.is_none() {
                        return Err(self.refused(resp, what, scopes, None).await);
                    }
                    self.basic.store(true, Ordering::Relaxed);
                    auth = Auth::Basic;
                }
                None => return Err(self.refused(resp, what, scopes, None).await),
            }
        }
        Err(PlatformError::new(
            ErrorClass::Auth,
            format!("{what}: the registry still asks for authentication after {MAX_AUTH_ROUNDS} tries with new tokens"),
        )
        .with_status(401))
    }

    /// The `Auth` error for a 401 that fresh credentials did not cure.
    async fn refused(
        &self,
        resp: Response,
        what: &str,
        scopes: &Scopes,
        error: Option<&str>,
    ) -> PlatformError {
        let mut err = registry_error(resp, what).await;
        let who = match &self.credentials {
            Some((user, _)) => format!("user {user:?}"),
            None => "anonymous access (no username and token configured)".to_owned(),
        };
        let why = match error {
            Some("insufficient_scope") => "the account lacks a permission",
            Some(_) | None => "the credentials were refused",
        };
        err.class = ErrorClass::Auth;
        err.message = format!(
            "{}; {why} for {scopes} with {who}: check platforms.docker_hub.username and ATR_DIST_PLATFORMS__DOCKER_HUB__TOKEN, and that the account may push to the repository",
            err.message
        );
        err
    }

    /// Asks a token realm for a token for `scopes`.
    pub(super) async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &Scopes,
    ) -> Result<(Secret, std::time::Duration), PlatformError> {
        let mut url = Url::parse(realm).map_err(|e| {
            PlatformError::permanent(format!(
                "the registry named an unreadable token realm {realm:?}: {e}"
            ))
        })?;
        let realm_origin = origin(&url);
        if realm_origin != origin(&self.registry) && !self.realms.contains(&realm_origin) {
            return Err(PlatformError::permanent(format!(
                "the registry {} sends clients to the token realm {realm_origin}, which is neither its own origin nor a configured token realm; refusing to send credentials there",
                origin(&self.registry)
            )));
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = service {
                q.append_pair("service", service);
            }
            for scope in scopes.to_params() {
                q.append_pair("scope", &scope);
            }
        }
        let what = format!("GET token for {scopes} from {realm_origin}");
        let resp = self
            .http
            .send(&what, |c| {
                let rb = c.get(url.clone());
                match &self.credentials {
                    Some((user, token)) => rb.basic_auth(user, Some(token.expose())),
                    None => rb,
                }
            })
            .await?;
        if !resp.status().is_success() {
            let mut err = registry_error(resp, &what).await;
            if err.class == ErrorClass::Auth {
                err.message = format!(
                    "{}: the token realm refused the credentials; check platforms.docker_hub.username and ATR_DIST_PLATFORMS__DOCKER_HUB__TOKEN",
                    err.message
                );
            }
            return Err(err);
        }
        let body: TokenResponse = resp.json().await.map_err(|e| {
            PlatformError::transient(format!("{what}: the answer is not a token response: {e}"))
        })?;
        let Some(token) = body.bearer() else {
            return Err(PlatformError::new(
                ErrorClass::Auth,
                format!("{what}: the realm answered without a token"),
            ));
        };
        Ok((Secret::new(token), body.lifetime()))
    }

    /// The digest a manifest reference resolves to, by HEAD; `None` when unknown.
    pub(super) async fn head_manifest(
        &self,
        repo: &str,
        reference: &str,
        scopes: &Scopes,
    ) -> Result<Option<Digest>, PlatformError> {
        let url = self.manifest_url(repo, reference)?;
        let what = format!("HEAD {url}");
        let resp = self
            .call(&what, scopes, |c| {
                c.head(url.clone()).header(ACCEPT, ACCEPT_ALL)
            })
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(registry_error(resp, &what).await);
        }
        if let Some(digest) = content_digest(resp.headers())? {
            return Ok(Some(digest));
        }
        // No digest header (a proxy may strip it): read the bytes and hash them.
        Ok(self
            .get_manifest(repo, reference, scopes)
            .await?
            .map(|m| m.digest))
    }

    /// A manifest's exact bytes and media type, by GET with every manifest type accepted;
    /// `None` when unknown. The bytes must hash to what the registry says they are (and to
    /// the reference, when it is a digest).
    pub(super) async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        scopes: &Scopes,
    ) -> Result<Option<ManifestFile>, PlatformError> {
        let url = self.manifest_url(repo, reference)?;
        let what = format!("GET {url}");
        let resp = self
            .call(&what, scopes, |c| {
                c.get(url.clone()).header(ACCEPT, ACCEPT_ALL)
            })
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(registry_error(resp, &what).await);
        }
        let said = content_digest(resp.headers())?;
        let header_type = media_type(resp.headers());
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| PlatformError::transient(format!("{what}: reading the manifest: {e}")))?
            .to_vec();
        let digest = layout::sha256_of(&bytes);
        if let Some(said) = &said
            && *said != digest
        {
            return Err(PlatformError::permanent(format!(
                "{what}: the registry sent bytes with sha256 {digest}, but Docker-Content-Digest {said}"
            )));
        }
        if reference.starts_with("sha256:") && reference != digest.as_str() {
            return Err(PlatformError::permanent(format!(
                "{what}: the registry sent bytes with sha256 {digest} for {reference}"
            )));
        }
        let own_type = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                v.get("mediaType")
                    .and_then(|t| t.as_str())
                    .map(str::to_owned)
            });
        let Some(media_type) = header_type.or(own_type) else {
            return Err(PlatformError::permanent(format!(
                "{what}: the manifest has no media type"
            )));
        };
        Ok(Some(ManifestFile {
            digest,
            media_type,
            bytes,
        }))
    }

    async fn blob_exists(
        &self,
        repo: &str,
        digest: &Digest,
        scopes: &Scopes,
    ) -> Result<bool, PlatformError> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"))?;
        let what = format!("HEAD {url}");
        let resp = self.call(&what, scopes, |c| c.head(url.clone())).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(registry_error(resp, &what).await),
        }
    }

    /// Opens an upload session, or mounts the blob from `mount_from` when given.
    async fn start_upload(
        &self,
        repo: &str,
        digest: &Digest,
        mount_from: Option<&str>,
        scopes: &Scopes,
    ) -> Result<Upload, PlatformError> {
        let url = self.uploads_url(repo, mount_from.map(|from| (digest, from)))?;
        let what = format!("POST {url}");
        let resp = self
            .call(&what, scopes, |c| {
                c.post(url.clone()).header(CONTENT_LENGTH, 0)
            })
            .await?;
        match resp.status() {
            StatusCode::CREATED if mount_from.is_some() => Ok(Upload::Mounted),
            StatusCode::ACCEPTED => {
                let location = resp
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        PlatformError::permanent(format!("{what}: 202 without a Location header"))
                    })?;
                // Locations are opaque and may be relative to the registry.
                let session = self.registry.join(location).map_err(|e| {
                    PlatformError::permanent(format!(
                        "{what}: unreadable Location {location:?}: {e}"
                    ))
                })?;
                Ok(Upload::Session(session))
            }
            _ => Err(registry_error(resp, &what).await),
        }
    }

    /// Makes `blob` exist in `repo`: nothing when it is there, a mount when the other
    /// repository has it, else an upload of its sealed copy. A lost answer to the upload is
    /// judged by whether the registry has the blob; a send after that opens a fresh session,
    /// never reusing one whose PUT may have been taken.
    pub(super) async fn push_blob(
        &self,
        repo: &str,
        blob: &BlobFile,
        mount_from: Option<&str>,
        scopes: &Scopes,
    ) -> Result<(), PlatformError> {
        if self.blob_exists(repo, &blob.digest, scopes).await? {
            tracing::debug!(%repo, digest = %blob.digest, "blob already in the registry");
            return Ok(());
        }
        let first = match self
            .start_upload(repo, &blob.digest, mount_from, scopes)
            .await?
        {
            Upload::Mounted => {
                tracing::info!(%repo, digest = %blob.digest, from = ?mount_from, "blob mounted");
                return Ok(());
            }
            Upload::Session(url) => url,
        };
        let first = std::sync::Mutex::new(Some(first));
        let what = format!("PUT blob {} ({} bytes) to {repo}", blob.digest, blob.size);
        let upload = || async {
            // A session can expire between POST and PUT (404 BLOB_UPLOAD_UNKNOWN): one
            // fresh session is worth a try.
            let mut fresh_session_tried = false;
            loop {
                let taken = first.lock().unwrap_or_else(|e| e.into_inner()).take();
                let mut url = match taken {
                    Some(url) => url,
                    None => match self.start_upload(repo, &blob.digest, None, scopes).await? {
                        Upload::Session(url) => url,
                        Upload::Mounted => {
                            return Err(PlatformError::permanent(format!(
                                "{what}: the registry mounted a blob nobody asked to mount"
                            )));
                        }
                    },
                };
                url.query_pairs_mut()
                    .append_pair("digest", blob.digest.as_str());
                let sent = self
                    .call_write(&what, scopes, |c| {
                        c.put(url.clone())
                            .header(CONTENT_TYPE, "application/octet-stream")
                            .header(CONTENT_LENGTH, blob.size)
                            .body(blob.sealed.body())
                    })
                    .await?;
                match &sent {
                    Sent::Answered(resp)
                        if resp.status() == StatusCode::NOT_FOUND && !fresh_session_tried =>
                    {
                        tracing::warn!(%repo, digest = %blob.digest, "upload session gone; starting another");
                        fresh_session_tried = true;
                    }
                    Sent::Answered(_) | Sent::Unknown(_) => return Ok(sent),
                }
            }
        };
        let exists = || async {
            Ok(if self.blob_exists(repo, &blob.digest, scopes).await? {
                Found::Expected
            } else {
                Found::Nothing
            })
        };
        match confirmed(&self.http, &what, upload, exists, |resp| {
            registry_error(resp, &what)
        })
        .await?
        {
            Written::Answered(resp) => {
                if let Some(stored) = content_digest(resp.headers())?
                    && stored != blob.digest
                {
                    return Err(PlatformError::permanent(format!(
                        "{what}: the registry stored the blob as {stored}"
                    )));
                }
            }
            Written::FoundDone => {}
        }
        tracing::info!(%repo, digest = %blob.digest, size = blob.size, media_type = %blob.media_type, "blob uploaded");
        Ok(())
    }

    /// PUTs a manifest's exact bytes under `reference` (a tag or its digest), which resolved
    /// to `was` just before. A lost answer is judged by what `reference` resolves to now:
    /// the manifest (done), still `was` (the put did not arrive: sent again), or anything
    /// else (refused: written by someone else meanwhile, and not overwritten from here).
    pub(super) async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        was: Option<&Digest>,
        m: &ManifestFile,
        scopes: &Scopes,
    ) -> Result<(), PlatformError> {
        let url = self.manifest_url(repo, reference)?;
        let what = format!("PUT {url} ({} {})", m.media_type, m.digest);
        let body = bytes::Bytes::from(m.bytes.clone());
        let put = || {
            self.call_write(&what, scopes, |c| {
                c.put(url.clone())
                    .header(CONTENT_TYPE, m.media_type.as_str())
                    .body(body.clone())
            })
        };
        let resolves = || async {
            let now = self.head_manifest(repo, reference, scopes).await?;
            if now.as_ref() == Some(&m.digest) {
                return Ok(Found::Expected);
            }
            if now.as_ref() == was {
                return Ok(Found::Nothing);
            }
            let name = |d: Option<&Digest>| d.map_or("nothing".to_owned(), Digest::to_string);
            Ok(Found::Other(format!(
                "{repo}:{reference} holds {}, not {}, and held {} before: written by someone else meanwhile",
                name(now.as_ref()),
                m.digest,
                name(was)
            )))
        };
        let written = confirmed(&self.http, &what, put, resolves, |resp| {
            registry_error(resp, &what)
        })
        .await?;
        if let Written::Answered(resp) = written
            && let Some(stored) = content_digest(resp.headers())?
            && stored != m.digest
        {
            return Err(PlatformError::permanent(format!(
                "{what}: the registry stored the manifest as {stored}, not {}",
                m.digest
            )));
        }
        tracing::info!(%repo, %reference, digest = %m.digest, "manifest put");
        Ok(())
    }

    /// Mounts a blob of the staging repository into the release repository.
    async fn mount_blob(
        &self,
        from: &str,
        to: &str,
        digest: &Digest,
        scopes: &Scopes,
    ) -> Result<(), PlatformError> {
        if self.blob_exists(to, digest, scopes).await? {
            return Ok(());
        }
        match self.start_upload(to, digest, Some(from), scopes).await? {
            Upload::Mounted => Ok(()),
            Upload::Session(session) => {
                // Close the session the registry opened instead; failing that, it expires.
                let what = format!("DELETE {session}");
                if let Err(e) = self
                    .call(&what, scopes, |c| c.delete(session.clone()))
                    .await
                {
                    tracing::warn!(error = %e, "cancelling an upload session");
                }
                Err(PlatformError::permanent(format!(
                    "the registry did not mount blob {digest} from {from} into {to} (it answered 202, not 201): the account likely lacks pull access to {from}; nothing was tagged"
                )))
            }
        }
    }

    /// Makes everything `m` refers to exist in `to`, from `from`: blobs by mount, child
    /// manifests by their exact bytes under their digests.
    pub(super) fn copy_references<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
        m: &'a ManifestFile,
        scopes: &'a Scopes,
        depth: usize,
    ) -> BoxFuture<'a, Result<(), PlatformError>> {
        async move {
            if depth > layout::MAX_DEPTH {
                return Err(PlatformError::permanent(format!(
                    "manifest {} is nested more than {} indexes deep",
                    m.digest,
                    layout::MAX_DEPTH
                )));
            }
            match layout::references(&m.media_type, &m.bytes, &format!("manifest {}", m.digest))? {
                References::Blobs(blobs) => {
                    for blob in blobs.iter().filter(|b| !b.is_foreign()) {
                        self.mount_blob(from, to, &blob.sha256()?, scopes).await?;
                    }
                }
                References::Manifests(children) => {
                    for child in &children {
                        let digest = child.sha256()?;
                        if self
                            .head_manifest(to, digest.as_str(), scopes)
                            .await?
                            .is_some()
                        {
                            continue;
                        }
                        let Some(copy) = self.get_manifest(from, digest.as_str(), scopes).await?
                        else {
                            return Err(PlatformError::permanent(format!(
                                "manifest {digest}, listed by {}, is missing from {from}",
                                m.digest
                            )));
                        };
                        if copy.media_type != child.media_type {
                            return Err(PlatformError::permanent(format!(
                                "manifest {digest} is served as {}, but {} lists it as {}",
                                copy.media_type, m.digest, child.media_type
                            )));
                        }
                        self.copy_references(from, to, &copy, scopes, depth + 1)
                            .await?;
                        self.put_manifest(to, digest.as_str(), None, &copy, scopes)
                            .await?;
                    }
                }
            }
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_errors_show_their_codes() {
        let body = r#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:abc"}]}"#;
        assert_eq!(
            describe_body(body),
            "MANIFEST_BLOB_UNKNOWN: blob unknown to registry (sha256:abc)"
        );
        assert_eq!(
            describe_body("<html>\n  busy </html>"),
            "<html> busy </html>"
        );
        // An empty detail adds nothing; a structured one is quoted as JSON.
        let body = r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied","detail":""},{"code":"TOOMANYREQUESTS","message":"slow down","detail":{"limit":100}}]}"#;
        assert_eq!(
            describe_body(body),
            r#"DENIED: requested access to the resource is denied; TOOMANYREQUESTS: slow down ({"limit":100})"#
        );
    }

    #[test]
    fn a_response_media_type_is_read_without_parameters() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
            media_type(&headers)
        };
        assert_eq!(
            with("application/vnd.oci.image.manifest.v1+json; charset=utf-8").as_deref(),
            Some("application/vnd.oci.image.manifest.v1+json")
        );
        assert_eq!(
            with(" application/vnd.oci.image.index.v1+json ").as_deref(),
            Some("application/vnd.oci.image.index.v1+json")
        );
        assert_eq!(with(""), None);
        assert_eq!(with("; charset=utf-8"), None);
        assert_eq!(media_type(&HeaderMap::new()), None);
    }

    async fn error_of(status: u16, headers: &[(&str, &str)], body: &str) -> PlatformError {
        let mut resp = axum::http::Response::builder().status(status);
        for (name, value) in headers {
            resp = resp.header(*name, *value);
        }
        registry_error(
            reqwest::Response::from(resp.body(body.to_owned()).unwrap()),
            "GET /v2/apache/httpd/manifests/1.0",
        )
        .await
    }

    /// Registry refusals are classed as every platform's are, and say what to do.
    #[tokio::test]
    async fn registry_refusals_are_classed_and_explained() {
        let err = error_of(503, &[("retry-after", "7")], "").await;
        assert_eq!(err.class, ErrorClass::Transient, "{}", err.message);
        assert_eq!(err.retry_after, Some(std::time::Duration::from_secs(7)));
        assert_eq!(err.http_status, Some(503));
        assert_eq!(
            err.message,
            "GET /v2/apache/httpd/manifests/1.0: HTTP 503 Service Unavailable"
        );

        let err = error_of(
            403,
            &[],
            r#"{"errors":[{"code":"DENIED","message":"denied"}]}"#,
        )
        .await;
        assert_eq!(err.class, ErrorClass::Auth);
        assert_eq!(
            err.message,
            "GET /v2/apache/httpd/manifests/1.0: HTTP 403 Forbidden: DENIED: denied; the configured account (platforms.docker_hub.username) lacks access to this repository"
        );

        let err = error_of(401, &[], "").await;
        assert_eq!(err.class, ErrorClass::Auth);
        assert!(!err.message.contains("lacks access"), "{}", err.message);

        let err = error_of(
            404,
            &[],
            r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#,
        )
        .await;
        assert_eq!(err.class, ErrorClass::Permanent);
        assert!(
            err.message.ends_with(
                "HTTP 404 Not Found: NAME_UNKNOWN: repository name not known to registry"
            ),
            "{}",
            err.message
        );
    }
}
