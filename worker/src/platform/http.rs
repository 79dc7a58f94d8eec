//! The HTTP client every adapter uses: rustls, timeouts, a user agent naming atr-dist, the
//! platform's token (never logged), retries inside one attempt for connection errors, 429
//! and 5xx honouring Retry-After, and an allow-list of hosts: only the origins configured for
//! the platform can be contacted, so job data can never point the worker anywhere else.

use std::time::Duration;

use atr_dist_shared::ErrorClass;
use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Client, Request, RequestBuilder, Response, StatusCode};
use url::Url;

use super::PlatformError;
use crate::secret::Secret;

pub const USER_AGENT: &str = concat!(
    "atr-dist/",
    env!("CARGO_PKG_VERSION"),
    " (+https://github.com/apache/tooling-trusted-releases)"
);

/// Tries per request inside one attempt; past them, the job-level backoff (persisted in
/// Redis) takes over.
const TRIES: usize = 3;
/// A Retry-After longer than this is not waited out inside the attempt: the attempt fails
/// transiently and the job is rescheduled for then instead of holding a worker.
const MAX_IN_ATTEMPT_WAIT: Duration = Duration::from_secs(10);
/// The most of an error body kept for the message.
const MAX_ERROR_BODY: usize = 2048;

#[derive(Clone)]
pub struct PlatformHttp {
    client: Client,
    allowed: Vec<String>,
    token: Option<Secret>,
    backoff: ExponentialBuilder,
}

impl std::fmt::Debug for PlatformHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformHttp")
            .field("allowed", &self.allowed)
            .field("token", &self.token)
            .finish()
    }
}

fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

impl PlatformHttp {
    /// A client that may contact the origins of `bases` (scheme, host and port) only.
    pub fn new(bases: &[&Url], token: Option<Secret>) -> Result<PlatformHttp, PlatformError> {
        let client = Client::builder()
            .use_rustls_tls()
            .user_agent(USER_AGENT)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(600))
            // Redirects could lead off the allow-list; adapters follow the ones they expect.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| PlatformError::permanent(format!("HTTP client: {e}")))?;
        Ok(PlatformHttp {
            client,
            allowed: bases.iter().map(|u| origin(u)).collect(),
            token,
            backoff: ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(5))
                .with_max_times(TRIES - 1)
                .with_jitter(),
        })
    }

    /// Allows one more origin (an OCI token realm named by the registry, checked against
    /// configuration by the adapter first).
    pub fn allow(&mut self, url: &Url) {
        let o = origin(url);
        if !self.allowed.contains(&o) {
            self.allowed.push(o);
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `Authorization: Bearer <token>` when a token is configured, marked sensitive so
    /// that no debug output of the request shows it.
    pub fn bearer(&self) -> Option<HeaderValue> {
        let token = self.token.as_ref()?;
        let mut v = HeaderValue::from_str(&format!("Bearer {}", token.expose())).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    pub fn token(&self) -> Option<&Secret> {
        self.token.as_ref()
    }

    fn check(&self, req: &Request) -> Result<(), PlatformError> {
        let o = origin(req.url());
        if self.allowed.contains(&o) {
            return Ok(());
        }
        Err(PlatformError::permanent(format!(
            "refusing to contact {o}: not a host configured for this platform ({})",
            self.allowed.join(", ")
        )))
    }

    /// Sends a request built by `make` (called once per try), retrying connection errors,
    /// 429 and 5xx a few times. Returns the final response whatever its status; `error_for`
    /// turns an unsuccessful one into a classed error.
    pub async fn send(
        &self,
        what: &str,
        make: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Response, PlatformError> {
        let attempt = || async {
            let req = make(&self.client).build().map_err(|e| {
                PlatformError::permanent(format!("{what}: building the request: {e}"))
            })?;
            self.check(&req)?;
            let resp = self
                .client
                .execute(req)
                .await
                .map_err(|e| PlatformError::transient(format!("{what}: {}", describe(&e))))?;
            if is_retryable(resp.status()) {
                return Err(error_for(resp, what).await);
            }
            Ok(resp)
        };
        attempt
            .retry(self.backoff)
            .sleep(tokio::time::sleep)
            .when(|e: &PlatformError| e.class == ErrorClass::Transient)
            .adjust(|e: &PlatformError, planned| match e.retry_after {
                // Wait out a short Retry-After here; leave a long one to the job backoff.
                Some(wait) if wait > MAX_IN_ATTEMPT_WAIT => None,
                Some(wait) => Some(wait),
                None => planned,
            })
            .notify(
                |e: &PlatformError, wait| tracing::debug!(error = %e, ?wait, "retrying request"),
            )
            .await
    }
}

fn describe(e: &reqwest::Error) -> String {
    // reqwest's Display includes the URL, which never carries a secret here.
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

pub fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// Seconds or an HTTP date, as RFC 9110 allows.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (when.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}

/// A classed error for an unsuccessful response: 401/403 are auth, 429 and 5xx transient
/// (with Retry-After), other 4xx permanent. The message keeps the start of the body.
pub async fn error_for(resp: Response, what: &str) -> PlatformError {
    let status = resp.status();
    let wait = retry_after(resp.headers());
    let body = resp.text().await.unwrap_or_default();
    let mut body: String = body.chars().take(MAX_ERROR_BODY).collect();
    body = body.split_whitespace().collect::<Vec<_>>().join(" ");
    let class = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ErrorClass::Auth,
        s if is_retryable(s) => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    };
    let message = if body.is_empty() {
        format!("{what}: {status}")
    } else {
        format!("{what}: {status}: {body}")
    };
    PlatformError {
        class,
        message,
        http_status: Some(status.as_u16()),
        retry_after: wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_token() {
        let base = Url::parse("http://127.0.0.1:4873").unwrap();
        let http = PlatformHttp::new(&[&base], Some(Secret::new("npm_SECRET_TOKEN"))).unwrap();
        let header = http.bearer().unwrap();
        assert!(header.is_sensitive());
        let req = http
            .client()
            .get("http://127.0.0.1:4873/x")
            .header(reqwest::header::AUTHORIZATION, header)
            .build()
            .unwrap();
        let shown = format!("{http:?} {req:?} {:?}", req.headers());
        assert!(!shown.contains("npm_SECRET_TOKEN"), "{shown}");
        assert!(
            shown.contains("Sensitive") || shown.contains("redacted"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn only_configured_hosts_are_contacted() {
        let base = Url::parse("http://127.0.0.1:9").unwrap();
        let http = PlatformHttp::new(&[&base], None).unwrap();
        let err = http
            .send("GET elsewhere", |c| c.get("http://127.0.0.2:9/"))
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent);
        assert!(
            err.message
                .starts_with("refusing to contact http://127.0.0.2:9"),
            "{}",
            err.message
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("120"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(120)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d <= Duration::from_secs(30) && d >= Duration::from_secs(25),
            "{d:?}"
        );
    }
}
