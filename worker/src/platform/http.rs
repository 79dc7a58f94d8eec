//! The HTTP client every adapter uses: rustls, timeouts, a user agent naming atr-dist, the
//! platform's token (never logged), bounded retries inside one attempt, and an allow-list of
//! hosts: only the origins configured for the platform can be contacted, so job data can
//! never point the worker anywhere else.
//!
//! # Retries inside an attempt
//!
//! Reads (`send`) are retried after connection errors, 429 and 5xx, honouring
//! `Retry-After`. Writes (`write`) are retried only when the platform cannot have acted on
//! them: the connection was never made, or it answered 429. Any other failure of a write
//! (no answer, a timeout, a 5xx from the platform or a proxy in front of it) leaves its
//! outcome unknown, and the adapter reads the platform back before anything else
//! (`platform/write.rs`).
//!
//! Every retry of every request an attempt makes draws on one [`RetryBudget`]: a number of
//! retries and a total wait (`[worker] http_retries`, `http_retry_wait_secs`). The pipeline
//! scopes each attempt's step in its own budget ([`RetryBudget::scope`]); past either limit
//! the attempt ends `transient` and carries the platform's `Retry-After` into the job's
//! persisted backoff, so `max_attempts` governs and the job is visible in `retrying`, not
//! hidden inside a running attempt. Each retry is reported to the budget's listener, which
//! the pipeline turns into a job event, and the budget counts the requests the attempt
//! made for its `job_run` row. Code outside an attempt (tools, tests that drive an adapter
//! directly) gets a fresh budget of the default size per request.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atr_dist_shared::ErrorClass;
use backon::{BackoffBuilder, ExponentialBuilder};
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

/// The most of an error body kept for the message.
const MAX_ERROR_BODY: usize = 2048;

/// How a platform says "not now, and not before this long" (a rate limit used up): given an
/// answer, the wait until the platform takes requests again, or None for an answer that is
/// not that. See [`PlatformHttp::holding`].
pub type HoldRule = fn(&Response) -> Option<Duration>;

#[derive(Clone)]
pub struct PlatformHttp {
    client: Client,
    allowed: Vec<String>,
    token: Option<Secret>,
    backoff: ExponentialBuilder,
    hold: Option<HoldRule>,
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
        let client = crate::tls::client_builder()
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
            // Timing only: how many retries there are is the budget's to say.
            backoff: ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(5))
                .with_max_times(usize::MAX)
                .with_jitter(),
            hold: None,
        })
    }

    /// Answers matching `rule` end the request at once as [`PlatformError::not_yet`] instead
    /// of being retried inside the attempt: for a platform whose rate limit says when it
    /// resets (Hex's `X-RateLimit-Reset`), asking again within seconds only spends the
    /// attempt's budget on refusals, and the job's wait in Redis is the remedy.
    pub fn holding(mut self, rule: HoldRule) -> PlatformHttp {
        self.hold = Some(rule);
        self
    }

    /// The `not_yet` error for an answer the hold rule matched, if it did.
    fn held(&self, what: &str, resp: &Response) -> Option<PlatformError> {
        let after = (self.hold?)(resp)?;
        let mut err = PlatformError::not_yet(
            format!(
                "{what}: {}: the platform's rate limit is used up; asking again in {}s, when it resets",
                resp.status(),
                after.as_secs()
            ),
            after,
        );
        err.http_status = Some(resp.status().as_u16());
        Some(err)
    }

    /// Allows one more origin (an OCI token realm named by the registry, checked against
    /// configuration by the adapter first).
    pub fn allow(&mut self, url: &Url) {
        let o = origin(url);
        if !self.allowed.contains(&o) {
            self.allowed.push(o);
        }
    }

    /// The client itself, for a test that builds a request without sending it.
    #[cfg(test)]
    fn client(&self) -> &Client {
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

    /// Waits between retries, for callers that repeat a whole protocol step
    /// (`platform/write.rs`).
    pub fn delays(&self) -> impl Iterator<Item = Duration> + use<> {
        self.backoff.build()
    }

    /// Builds and checks one request.
    fn build(
        &self,
        what: &str,
        make: &impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Request, PlatformError> {
        let req = make(&self.client)
            .build()
            .map_err(|e| PlatformError::permanent(format!("{what}: building the request: {e}")))?;
        self.check(&req)?;
        Ok(req)
    }

    /// Sends a read built by `make` (called once per try), retrying connection errors, 429
    /// and 5xx within the attempt's budget. Returns the final response whatever its status;
    /// `error_for` turns an unsuccessful one into a classed error.
    pub async fn send(
        &self,
        what: &str,
        make: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Response, PlatformError> {
        let budget = RetryBudget::current();
        let mut delays = self.backoff.build();
        loop {
            let req = self.build(what, &make)?;
            budget.count_request();
            let sent = self.client.execute(req).await;
            if let Ok(resp) = &sent
                && let Some(held) = self.held(what, resp)
            {
                return Err(held);
            }
            let failed = match sent {
                Ok(resp) if is_retryable(resp.status()) => error_for(resp, what).await,
                Ok(resp) => return Ok(resp),
                Err(e) => PlatformError::transient(format!("{what}: {}", describe(&e))),
            };
            budget.wait_or_give_up(what, failed, &mut delays).await?;
        }
    }

    /// Sends a write built by `make` once, repeating it only where the platform cannot have
    /// acted on it (no connection was made, or it answered 429). Anything else that is not
    /// an answer from the platform itself is `Sent::Unknown`: the caller must read the
    /// platform back before it decides (`platform/write.rs`).
    pub async fn write(
        &self,
        what: &str,
        make: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Sent, PlatformError> {
        let budget = RetryBudget::current();
        let mut delays = self.backoff.build();
        loop {
            let req = self.build(what, &make)?;
            // Only the attempt that holds the distribution's lock writes: checked right
            // before every send, so an attempt that stalled past its lease writes nothing.
            if let Some(fence) = &budget.fence {
                fence()
                    .await
                    .map_err(|why| PlatformError::transient(format!("{what}: not sent: {why}")))?;
            }
            budget.count_request();
            let sent = self.client.execute(req).await;
            // A refusal: the platform did not act on the write.
            if let Ok(resp) = &sent
                && let Some(held) = self.held(what, resp)
            {
                return Err(held);
            }
            let failed = match sent {
                Ok(resp) if resp.status() == StatusCode::TOO_MANY_REQUESTS => {
                    error_for(resp, what).await
                }
                Ok(resp) if resp.status().is_server_error() => {
                    return Ok(Sent::Unknown(error_for(resp, what).await));
                }
                Ok(resp) => return Ok(Sent::Answered(resp)),
                // Nothing was sent: as safe to repeat as a read.
                Err(e) if e.is_connect() => {
                    PlatformError::transient(format!("{what}: {}", describe(&e)))
                }
                Err(e) => {
                    return Ok(Sent::Unknown(PlatformError::transient(format!(
                        "{what}: {}",
                        describe(&e)
                    ))));
                }
            };
            budget.wait_or_give_up(what, failed, &mut delays).await?;
        }
    }
}

/// What became of a write.
#[derive(Debug)]
pub enum Sent {
    /// The platform answered (any status but 429 and 5xx).
    Answered(Response),
    /// No answer, a timeout, or a 5xx: the write may or may not have taken effect.
    Unknown(PlatformError),
}

/// How much retrying one attempt may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryLimits {
    /// Retries of all the attempt's requests together.
    pub retries: u32,
    /// Time spent waiting between them, together.
    pub wait: Duration,
}

impl Default for RetryLimits {
    fn default() -> RetryLimits {
        RetryLimits {
            retries: 3,
            wait: Duration::from_secs(30),
        }
    }
}

/// Something an attempt's requests did that an operator should see in the job's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpNote {
    /// A request failed and is being tried again after `wait`.
    Retry {
        what: String,
        error: String,
        http_status: Option<u16>,
        retry_after: Option<Duration>,
        wait: Duration,
    },
    /// A write's outcome was unknown (or it was refused), and reading the platform back
    /// told what happened.
    ReadBack {
        what: String,
        error: String,
        found: String,
    },
}

/// What an attempt checks before each platform write: that it still holds its distribution
/// lock (`queue/lock.rs`). `Err` says why not; the write is then not sent.
pub type WriteFence =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The retry budget of one attempt; see the module documentation. It also carries the
/// attempt's write fence: every `write` is preceded by it.
pub struct RetryBudget {
    limits: RetryLimits,
    state: Mutex<BudgetState>,
    notes: Option<tokio::sync::mpsc::UnboundedSender<HttpNote>>,
    fence: Option<WriteFence>,
}

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryBudget")
            .field("limits", &self.limits)
            .field("state", &self.state)
            .field("fenced", &self.fence.is_some())
            .finish()
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BudgetState {
    /// Requests sent, first tries and retries.
    pub requests: u32,
    pub retries: u32,
    pub waited: Duration,
}

tokio::task_local! {
    static BUDGET: Arc<RetryBudget>;
}

impl RetryBudget {
    pub fn new(
        limits: RetryLimits,
        notes: Option<tokio::sync::mpsc::UnboundedSender<HttpNote>>,
    ) -> Arc<RetryBudget> {
        Arc::new(RetryBudget {
            limits,
            state: Mutex::new(BudgetState::default()),
            notes,
            fence: None,
        })
    }

    /// A budget whose writes are each preceded by `fence`.
    pub fn fenced(
        limits: RetryLimits,
        notes: Option<tokio::sync::mpsc::UnboundedSender<HttpNote>>,
        fence: WriteFence,
    ) -> Arc<RetryBudget> {
        Arc::new(RetryBudget {
            limits,
            state: Mutex::new(BudgetState::default()),
            notes,
            fence: Some(fence),
        })
    }

    /// Runs `work` with this budget: every request it makes draws on it.
    pub async fn scope<F: Future>(self: &Arc<Self>, work: F) -> F::Output {
        BUDGET.scope(Arc::clone(self), work).await
    }

    /// The budget of the attempt this task runs, or a fresh default one.
    fn current() -> Arc<RetryBudget> {
        BUDGET
            .try_with(Arc::clone)
            .unwrap_or_else(|_| RetryBudget::new(RetryLimits::default(), None))
    }

    pub fn used(&self) -> BudgetState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count_request(&self) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests += 1;
    }

    /// Tells the listener, if any.
    pub fn note(note: HttpNote) {
        let budget = RetryBudget::current();
        if let Some(tx) = &budget.notes {
            tx.send(note).ok();
        }
    }

    /// Takes one retry after `failed` from the budget and waits it out, or, when the budget
    /// has no retry or not enough wait left, gives up: the error, transient, with the
    /// platform's `Retry-After` for the job's backoff. Permanent and auth errors are never
    /// retried.
    async fn wait_or_give_up(
        &self,
        what: &str,
        failed: PlatformError,
        delays: &mut impl Iterator<Item = Duration>,
    ) -> Result<(), PlatformError> {
        if failed.class != ErrorClass::Transient {
            return Err(failed);
        }
        let wait = failed
            .retry_after
            .unwrap_or_else(|| delays.next().unwrap_or(Duration::from_secs(5)));
        let granted = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let fits =
                state.retries < self.limits.retries && state.waited + wait <= self.limits.wait;
            if fits {
                state.retries += 1;
                state.waited += wait;
            }
            fits.then_some(*state)
        };
        let Some(_) = granted else {
            let used = self.used();
            let mut failed = failed;
            failed.message = format!(
                "{} (gave up inside this attempt after {} retries and {:?} of waiting; the job's backoff takes over)",
                failed.message, used.retries, used.waited
            );
            return Err(failed);
        };
        tracing::debug!(error = %failed, ?wait, "retrying request");
        if let Some(tx) = &self.notes {
            tx.send(HttpNote::Retry {
                what: what.to_owned(),
                error: failed.message.clone(),
                http_status: failed.http_status,
                retry_after: failed.retry_after,
                wait,
            })
            .ok();
        }
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// Takes one retry of a write whose read-back found nothing, as `wait_or_give_up`.
    pub(super) async fn retry_write(
        what: &str,
        failed: PlatformError,
        delays: &mut impl Iterator<Item = Duration>,
    ) -> Result<(), PlatformError> {
        RetryBudget::current()
            .wait_or_give_up(what, failed, delays)
            .await
    }
}

/// The error with its chain of causes (reqwest's own Display stops at the first).
pub fn describe(e: &reqwest::Error) -> String {
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
    // A platform may echo the request's credentials back in its error (the whole body, so
    // that a token the cut below would split is still found whole).
    let body = crate::secret::scrub(&body);
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
        not_yet: false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

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
        // What it does show: the hosts it may contact.
        assert!(
            format!("{http:?}").contains(r#"allowed: ["http://127.0.0.1:4873"]"#),
            "{http:?}"
        );
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

    #[tokio::test]
    async fn a_write_is_not_sent_when_the_fence_says_the_lock_is_gone() {
        // A server that records whether anything reached it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reached = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = Arc::clone(&reached);
        let server = tokio::spawn(async move {
            if listener.accept().await.is_ok() {
                seen.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let base = Url::parse(&format!("http://{addr}")).unwrap();
        let http = PlatformHttp::new(&[&base], None).unwrap();
        let fence: WriteFence =
            Arc::new(|| Box::pin(async { Err("the distribution lock is held by job x".into()) }));
        let budget = RetryBudget::fenced(RetryLimits::default(), None, fence);
        let err = budget
            .scope(http.write("PUT x", |c| c.put(format!("http://{addr}/x"))))
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Transient);
        assert!(
            err.message
                .contains("PUT x: not sent: the distribution lock is held by job x"),
            "{}",
            err.message
        );
        assert_eq!(budget.used().requests, 0);
        assert!(format!("{budget:?}").contains("fenced: true"), "{budget:?}");
        server.abort();
        assert!(!reached.load(std::sync::atomic::Ordering::SeqCst));
    }

    /// A loopback address nothing listens on.
    async fn closed_port() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    #[tokio::test]
    async fn a_write_that_could_not_connect_is_retried_as_nothing_was_sent() {
        let addr = closed_port().await;
        let base = Url::parse(&format!("http://{addr}")).unwrap();
        let http = PlatformHttp::new(&[&base], None).unwrap();
        let limits = RetryLimits {
            retries: 1,
            wait: Duration::from_secs(10),
        };
        let budget = RetryBudget::new(limits, None);
        // Not `Sent::Unknown`, which would send the caller to read the platform back.
        let err = budget
            .scope(http.write("PUT x", |c| c.put(format!("http://{addr}/x"))))
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Transient);
        assert!(
            err.message.starts_with("PUT x: ")
                && err.message.contains("Connection refused")
                && err
                    .message
                    .contains("gave up inside this attempt after 1 retries"),
            "{}",
            err.message
        );
        assert_eq!(budget.used().requests, 2);
    }

    #[tokio::test]
    async fn an_origin_allowed_later_is_contacted() {
        let base = Url::parse("http://127.0.0.1:9").unwrap();
        let realm = closed_port().await;
        let realm_url = Url::parse(&format!("http://{realm}/token")).unwrap();
        let mut http = PlatformHttp::new(&[&base], None).unwrap();
        let no_retries = RetryLimits {
            retries: 0,
            wait: Duration::ZERO,
        };
        let get = |http: &PlatformHttp| {
            let http = http.clone();
            let url = realm_url.clone();
            async move {
                RetryBudget::new(no_retries, None)
                    .scope(http.send("GET token", |c| c.get(url.clone())))
                    .await
            }
        };
        let refused = get(&http).await.unwrap_err();
        assert_eq!(refused.class, ErrorClass::Permanent, "{refused}");
        http.allow(&realm_url);
        http.allow(&realm_url);
        // Now contacted (nothing listens there: a connection error, not a refusal).
        let err = get(&http).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Transient, "{err}");
        assert!(err.message.contains("Connection refused"), "{err}");
        assert_eq!(
            format!("{http:?}")
                .matches(&format!("http://{realm}"))
                .count(),
            1,
            "{http:?}"
        );
    }

    /// The test server answering with `head` and a short body (`None`: closing the
    /// connection without an answer).
    async fn serving(head: Option<&'static str>) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        super::test_server::serving(head, "platform says.").await
    }

    fn client_for(addr: std::net::SocketAddr) -> PlatformHttp {
        let base = Url::parse(&format!("http://{addr}")).unwrap();
        PlatformHttp::new(&[&base], None).unwrap()
    }

    fn retries(n: u32) -> Arc<RetryBudget> {
        RetryBudget::new(
            RetryLimits {
                retries: n,
                wait: Duration::from_secs(20),
            },
            None,
        )
    }

    /// Reads are sent again after a 5xx or 429, within the attempt's retries, and then end
    /// transient; any other answer is the caller's at once.
    #[tokio::test]
    async fn reads_are_retried_after_5xx_within_the_budget_and_not_after_other_answers() {
        for head in ["503 Service Unavailable", "429 Too Many Requests"] {
            let (addr, seen) = serving(Some(head)).await;
            let http = client_for(addr);
            let budget = retries(2);
            let err = budget
                .scope(http.send("GET x", |c| c.get(format!("http://{addr}/x"))))
                .await
                .unwrap_err();
            assert_eq!(err.class, ErrorClass::Transient, "{err:?}");
            assert!(
                err.message.starts_with(&format!(
                    "GET x: {head}: platform says. (gave up inside this attempt after 2 retries"
                )),
                "{}",
                err.message
            );
            assert_eq!(seen.load(Ordering::SeqCst), 3);
            assert_eq!(budget.used().requests, 3);
            assert_eq!(budget.used().retries, 2);
        }
        for (head, status) in [
            ("200 OK", 200),
            ("404 Not Found", 404),
            ("401 Unauthorized", 401),
        ] {
            let (addr, seen) = serving(Some(head)).await;
            let http = client_for(addr);
            let budget = retries(2);
            let resp = budget
                .scope(http.send("GET x", |c| c.get(format!("http://{addr}/x"))))
                .await
                .unwrap();
            assert_eq!(resp.status(), status);
            assert_eq!(seen.load(Ordering::SeqCst), 1, "{head}");
            assert_eq!(budget.used().retries, 0);
        }
    }

    /// A write answered 429 was not acted on: it is sent again within the budget. A 5xx or
    /// a connection that ends without an answer leaves its outcome unknown: not sent again,
    /// the caller reads the platform back. Any other answer is the caller's.
    #[tokio::test]
    async fn writes_are_sent_again_only_where_the_platform_did_not_act() {
        let (addr, seen) = serving(Some("429 Too Many Requests")).await;
        let http = client_for(addr);
        let budget = retries(1);
        let err = budget
            .scope(http.write("PUT x", |c| c.put(format!("http://{addr}/x"))))
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Transient, "{err:?}");
        assert!(
            err.message
                .contains("gave up inside this attempt after 1 retries"),
            "{err}"
        );
        assert_eq!(seen.load(Ordering::SeqCst), 2);

        for head in [Some("502 Bad Gateway"), None] {
            let (addr, seen) = serving(head).await;
            let http = client_for(addr);
            let budget = retries(3);
            let sent = budget
                .scope(http.write("PUT x", |c| c.put(format!("http://{addr}/x"))))
                .await
                .unwrap();
            let Sent::Unknown(err) = sent else {
                panic!("{head:?}: {sent:?}");
            };
            assert_eq!(err.class, ErrorClass::Transient, "{err:?}");
            assert!(err.message.starts_with("PUT x: "), "{err}");
            assert_eq!(seen.load(Ordering::SeqCst), 1, "{head:?}");
            assert_eq!(budget.used().requests, 1);
        }

        for head in ["201 Created", "409 Conflict"] {
            let (addr, seen) = serving(Some(head)).await;
            let http = client_for(addr);
            let sent = retries(3)
                .scope(http.write("PUT x", |c| c.put(format!("http://{addr}/x"))))
                .await
                .unwrap();
            let Sent::Answered(resp) = sent else {
                panic!("{head}: {sent:?}");
            };
            assert!(head.starts_with(resp.status().as_str()), "{head}");
            assert_eq!(seen.load(Ordering::SeqCst), 1);
        }
    }

    /// With a hold rule, an answer it matches (a rate limit used up until a known time) ends
    /// a read or a write at once, as a wait for the job: not retried inside the attempt.
    #[tokio::test]
    async fn an_answer_the_hold_rule_matches_ends_the_request_as_a_wait() {
        fn hold(resp: &Response) -> Option<Duration> {
            (resp.status() == StatusCode::TOO_MANY_REQUESTS).then_some(Duration::from_secs(60))
        }
        let (addr, seen) = serving(Some("429 Too Many Requests")).await;
        let http = client_for(addr).holding(hold);
        let budget = retries(3);
        let read = budget
            .scope(http.send("GET x", |c| c.get(format!("http://{addr}/x"))))
            .await
            .unwrap_err();
        let write = budget
            .scope(http.write("PUT x", |c| c.put(format!("http://{addr}/x"))))
            .await
            .unwrap_err();
        for (what, err) in [("GET x", read), ("PUT x", write)] {
            assert!(err.not_yet, "{err:?}");
            assert_eq!(err.retry_after, Some(Duration::from_secs(60)));
            assert_eq!(err.http_status, Some(429));
            assert_eq!(
                err.message,
                format!(
                    "{what}: 429 Too Many Requests: the platform's rate limit is used up; asking again in 60s, when it resets"
                )
            );
        }
        assert_eq!(seen.load(Ordering::SeqCst), 2);
        assert_eq!(budget.used().retries, 0);
        // Answers the rule does not match go on as without it.
        let (addr, _) = serving(Some("404 Not Found")).await;
        let http = client_for(addr).holding(hold);
        let resp = http
            .send("GET x", |c| c.get(format!("http://{addr}/x")))
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
    }

    /// Unsuccessful answers are classed by status (401 and 403 credentials, 429 and 5xx
    /// transient with their `Retry-After`, other 4xx permanent), with the start of the body.
    #[tokio::test]
    async fn unsuccessful_answers_are_classed_by_status() {
        for (head, class, wait) in [
            ("401 Unauthorized", ErrorClass::Auth, None),
            ("403 Forbidden", ErrorClass::Auth, None),
            ("404 Not Found", ErrorClass::Permanent, None),
            ("422 Unprocessable Entity", ErrorClass::Permanent, None),
            (
                "429 Too Many Requests\r\nretry-after: 7",
                ErrorClass::Transient,
                Some(7),
            ),
            ("500 Internal Server Error", ErrorClass::Transient, None),
        ] {
            let (addr, _) = serving(Some(head)).await;
            let resp = client_for(addr)
                .client()
                .get(format!("http://{addr}/x"))
                .send()
                .await
                .unwrap();
            let err = error_for(resp, "GET x").await;
            let status = head.split("\r\n").next().unwrap();
            assert_eq!(
                (err.class, err.message.as_str(), err.retry_after),
                (
                    class,
                    format!("GET x: {status}: platform says.").as_str(),
                    wait.map(Duration::from_secs)
                ),
            );
            assert_eq!(err.http_status, Some(status[..3].parse().unwrap()));
        }
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

/// A loopback HTTP server for the platform layer's unit tests (`http.rs`, `write.rs`).
#[cfg(test)]
pub(crate) mod test_server {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on loopback that reads each request and answers it with `head` (a status
    /// line and headers) and `body`; `None` closes the connection without an answer.
    /// Returns its address and the count of requests it read.
    pub(crate) async fn serving(
        head: Option<&'static str>,
        body: &'static str,
    ) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let Some(head) = head else {
                        return;
                    };
                    let answer = format!(
                        "HTTP/1.1 {head}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    conn.write_all(answer.as_bytes()).await.ok();
                });
            }
        });
        (addr, seen)
    }
}
