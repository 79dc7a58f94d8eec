//! Who may read and who may act.
//!
//! - Writes (retry, cancel, purge, pause, resume, enqueue) need `Authorization: Bearer
//!   <admin token>`. Only Bearer: a browser never attaches it by itself, so another site
//!   cannot make an operator's browser act (no CSRF), and no CORS is offered.
//! - Reads are open when `http.open_reads` says so (by default only on a loopback
//!   address); otherwise they need the same token, as Bearer or as the password of HTTP
//!   Basic, which lets a browser prompt for it on the dashboard.
//! - Without an admin token configured, writes are refused with 403 and how to set one.
//! - Token-less reads are answered only when the request names this server: its `Host` is a
//!   loopback name (`localhost`, `*.localhost`), an IP address, or a name in
//!   `http.allowed_hosts`. Otherwise a page on another site could read job payloads through
//!   an operator's browser by DNS rebinding (its name made to resolve to 127.0.0.1: the
//!   browser then sends that name as `Host`). An IP address cannot be rebound, so every one
//!   is accepted. With the admin token, any `Host` may read.
//! - A write that carries an `Origin` (every browser's does) must come from the dashboard's
//!   own origin: the request's own `Host`, or a name in `http.allowed_hosts` (a reverse proxy
//!   that rewrites `Host`), never another site's.
//!
//! Tokens are compared as SHA3-256 digests in constant time, so neither the content nor the
//! length of the configured token leaks through timing.

use std::net::IpAddr;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::uri::Authority;
use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine;
use sha3::{Digest, Sha3_256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::{ApiError, Challenge};
use crate::secret::Secret;

const SET_TOKEN: &str = "set ATR_DIST_HTTP__ADMIN_TOKEN (or http.admin_token_file) and restart";

pub struct Auth {
    token_digest: Option<[u8; 32]>,
    open_reads: bool,
    hosts: AllowedHosts,
}

/// The names this server answers to besides loopback names and IP addresses
/// (`http.allowed_hosts`), lower case, without a trailing dot.
pub struct AllowedHosts(Vec<String>);

fn normalise(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

impl AllowedHosts {
    pub fn new(configured: &[String]) -> AllowedHosts {
        AllowedHosts(configured.iter().map(|h| normalise(h)).collect())
    }

    fn configured(&self, host: &str) -> bool {
        let host = normalise(host);
        self.0.contains(&host)
    }

    /// Whether `host` (no port; an IPv6 address in brackets or not) names this server.
    fn allows(&self, host: &str) -> bool {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<IpAddr>().is_ok() {
            return true;
        }
        let name = normalise(host);
        name == "localhost" || name.ends_with(".localhost") || self.0.contains(&name)
    }
}

/// The authority a request is addressed to: the request target's, when absolute, else the
/// `Host` header. `Err` when there is one but it cannot be read.
fn addressed_to(parts: &Parts) -> Result<Option<Authority>, ()> {
    if let Some(authority) = parts.uri.authority() {
        return Ok(Some(authority.clone()));
    }
    let Some(value) = parts.headers.get(header::HOST) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| ())?;
    text.parse::<Authority>().map(Some).map_err(|_| ())
}

/// `text`, short and quoted, for a message: a request's own header, echoed so the operator
/// sees which name to allow.
fn quoted(text: &str) -> String {
    let short: String = text.chars().take(100).collect();
    format!("{short:?}")
}

/// The credentials a request presents.
enum Presented {
    None,
    Bearer(String),
    Basic(String),
    Unreadable,
}

fn digest(text: &str) -> [u8; 32] {
    Sha3_256::digest(text.as_bytes()).into()
}

fn presented(headers: &HeaderMap) -> Presented {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Presented::None;
    };
    let Ok(value) = value.to_str() else {
        return Presented::Unreadable;
    };
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Presented::Bearer(rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        // The user name is ignored: the password is the token.
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok());
        return match decoded.as_deref().and_then(|pair| pair.split_once(':')) {
            Some((_, password)) => Presented::Basic(password.to_owned()),
            None => Presented::Unreadable,
        };
    }
    Presented::Unreadable
}

impl Auth {
    pub fn new(token: Option<&Secret>, open_reads: bool, hosts: AllowedHosts) -> Auth {
        Auth {
            token_digest: token.map(|t| digest(t.expose())),
            open_reads,
            hosts,
        }
    }

    pub fn reads_open(&self) -> bool {
        self.open_reads
    }

    pub fn writes_enabled(&self) -> bool {
        self.token_digest.is_some()
    }

    fn matches(&self, candidate: &str) -> bool {
        let Some(expected) = &self.token_digest else {
            return false;
        };
        bool::from(expected.as_slice().ct_eq(digest(candidate).as_slice()))
    }

    /// Why a token-less read of an open server is refused, or `None` when its `Host` names
    /// this server (or it has none: only browsers are at stake, and they always send one).
    fn foreign_host(&self, parts: &Parts) -> Option<ApiError> {
        let shown = match addressed_to(parts) {
            Ok(None) => return None,
            Ok(Some(authority)) if self.hosts.allows(authority.host()) => return None,
            Ok(Some(authority)) => quoted(authority.as_str()),
            Err(()) => "an unreadable Host header".to_owned(),
        };
        Some(ApiError::forbidden(
            "host_not_allowed",
            format!(
                "this request is addressed to {shown}, which is not a name of this server: reads without the admin token are answered for loopback names, IP addresses and the names in http.allowed_hosts only, so that another site cannot read them through DNS rebinding; add the name to http.allowed_hosts, or send the admin token"
            ),
        ))
    }

    pub fn check_read(&self, parts: &Parts) -> Result<(), ApiError> {
        let foreign = if self.open_reads {
            match self.foreign_host(parts) {
                None => return Ok(()),
                Some(refusal) => Some(refusal),
            }
        } else {
            None
        };
        if self.token_digest.is_none() {
            if let Some(refusal) = foreign {
                return Err(refusal);
            }
            return Err(ApiError::forbidden(
                "reads_closed",
                format!(
                    "reads need the admin token (http.open_reads is off) but none is configured; {SET_TOKEN}, or set http.open_reads = true"
                ),
            ));
        }
        match (presented(&parts.headers), foreign) {
            (Presented::Bearer(t) | Presented::Basic(t), _) if self.matches(&t) => Ok(()),
            // No Basic challenge here: a browser would prompt for the token on another site's page.
            (Presented::None, Some(refusal)) => Err(refusal),
            (Presented::None, None) => Err(ApiError::unauthorized(
                "unauthorized",
                Challenge::Basic,
                "reads need the admin token: send Authorization: Bearer <token>",
            )),
            (Presented::Bearer(_) | Presented::Basic(_) | Presented::Unreadable, _) => {
                Err(ApiError::unauthorized(
                    "invalid_token",
                    Challenge::Basic,
                    "the token presented is not the admin token",
                ))
            }
        }
    }

    /// Whether `origin` is the dashboard's own: its host names this server, and it is the
    /// request's own `Host` or a name configured in `http.allowed_hosts`.
    fn own_origin(&self, origin: &HeaderValue, parts: &Parts) -> bool {
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        // "null" (a sandboxed frame, a file) does not parse as a URL, and is refused.
        let Ok(url) = url::Url::parse(origin) else {
            return false;
        };
        if !matches!(url.scheme(), "http" | "https") {
            return false;
        }
        let Some(host) = url.host_str() else {
            return false;
        };
        if !self.hosts.allows(host) {
            return false;
        }
        if self.hosts.configured(host) {
            return true;
        }
        let Ok(Some(addressed)) = addressed_to(parts) else {
            return false;
        };
        normalise(addressed.host()) == normalise(host)
            && addressed.port_u16().or(url.port_or_known_default()) == url.port_or_known_default()
    }

    pub fn check_write(&self, parts: &Parts) -> Result<(), ApiError> {
        if let Some(origin) = parts.headers.get(header::ORIGIN)
            && !self.own_origin(origin, parts)
        {
            let shown = origin
                .to_str()
                .map_or_else(|_| "an unreadable Origin".to_owned(), quoted);
            return Err(ApiError::forbidden(
                "origin_not_allowed",
                format!(
                    "writes are accepted from the dashboard's own pages only, and this one comes from {shown}; a reverse proxy's name goes in http.allowed_hosts"
                ),
            ));
        }
        let headers = &parts.headers;
        if self.token_digest.is_none() {
            return Err(ApiError::forbidden(
                "writes_disabled",
                format!("writes are disabled because no admin token is configured; {SET_TOKEN}"),
            ));
        }
        match presented(headers) {
            Presented::Bearer(t) if self.matches(&t) => Ok(()),
            Presented::None => Err(ApiError::unauthorized(
                "unauthorized",
                Challenge::Bearer,
                "writes need the admin token: send Authorization: Bearer <token>",
            )),
            Presented::Basic(_) => Err(ApiError::unauthorized(
                "unauthorized",
                Challenge::Bearer,
                "writes take the admin token only as Authorization: Bearer, never as Basic credentials a browser could replay",
            )),
            Presented::Bearer(_) | Presented::Unreadable => Err(ApiError::unauthorized(
                "invalid_token",
                Challenge::Bearer,
                "the token presented is not the admin token",
            )),
        }
    }
}

/// A handler argument that admits only requests allowed to read.
pub struct ReadAccess;

impl FromRequestParts<AppState> for ReadAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.auth().check_read(parts).map(|()| ReadAccess)
    }
}

/// A handler argument that admits only requests carrying the admin token.
pub struct WriteAccess;

impl FromRequestParts<AppState> for WriteAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.auth().check_write(parts).map(|()| WriteAccess)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    /// A request's parts with `headers`, addressed to 127.0.0.1:8440 unless they say otherwise.
    fn parts(headers: &[(header::HeaderName, &str)]) -> Parts {
        let mut req = Request::builder().uri("/api/v1/queue/stats");
        if !headers.iter().any(|(name, _)| *name == header::HOST) {
            req = req.header(header::HOST, "127.0.0.1:8440");
        }
        for (name, value) in headers {
            req = req.header(name, *value);
        }
        req.body(()).unwrap().into_parts().0
    }

    fn with(value: &str) -> Parts {
        parts(&[(header::AUTHORIZATION, value)])
    }

    fn auth(token: Option<&str>, open_reads: bool, hosts: &[&str]) -> Auth {
        let hosts: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
        Auth::new(
            token.map(Secret::new).as_ref(),
            open_reads,
            AllowedHosts::new(&hosts),
        )
    }

    #[test]
    fn writes_need_the_bearer_token() {
        let auth = auth(Some("0123456789abcdef"), false, &[]);
        assert!(auth.check_write(&with("Bearer 0123456789abcdef")).is_ok());
        assert_eq!(
            auth.check_write(&parts(&[])).unwrap_err().code,
            "unauthorized"
        );
        assert_eq!(
            auth.check_write(&with("Bearer 0123456789abcdeX"))
                .unwrap_err()
                .code,
            "invalid_token"
        );
        // Basic is a read convenience for browsers, never a way to act.
        let basic = base64::engine::general_purpose::STANDARD.encode("x:0123456789abcdef");
        assert!(auth.check_read(&with(&format!("Basic {basic}"))).is_ok());
        assert!(auth.check_write(&with(&format!("Basic {basic}"))).is_err());
    }

    #[test]
    fn no_token_disables_writes_with_a_way_out() {
        let auth = auth(None, true, &[]);
        let err = auth.check_write(&with("Bearer anything")).unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::FORBIDDEN);
        assert!(err.message.contains("ATR_DIST_HTTP__ADMIN_TOKEN"), "{err}");
        assert!(auth.check_read(&parts(&[])).is_ok());
    }

    #[test]
    fn token_less_reads_answer_only_names_of_this_server() {
        let auth = auth(
            Some("0123456789abcdef"),
            true,
            &["atr-dist.example.org", "Proxy.Example.Net."],
        );
        for host in [
            "127.0.0.1:8440",
            "localhost:8440",
            "LOCALHOST.",
            "dashboard.localhost:8440",
            "[::1]:8440",
            "192.0.2.7:8440",
            "atr-dist.example.org",
            "proxy.example.net:443",
        ] {
            assert!(
                auth.check_read(&parts(&[(header::HOST, host)])).is_ok(),
                "{host}"
            );
        }
        for host in ["evil.example.com:8440", "localhost.evil.example.com", "a b"] {
            let err = auth
                .check_read(&parts(&[(header::HOST, host)]))
                .unwrap_err();
            assert_eq!(
                (err.status, err.code, err.challenge),
                (axum::http::StatusCode::FORBIDDEN, "host_not_allowed", None),
                "{host}"
            );
            assert!(err.message.contains("http.allowed_hosts"), "{err}");
        }
        // The admin token reads under any name; a wrong one is still wrong.
        let foreign = (header::HOST, "evil.example.com");
        assert!(
            auth.check_read(&parts(&[
                foreign.clone(),
                (header::AUTHORIZATION, "Bearer 0123456789abcdef")
            ]))
            .is_ok()
        );
        assert_eq!(
            auth.check_read(&parts(&[foreign, (header::AUTHORIZATION, "Bearer nope")]))
                .unwrap_err()
                .code,
            "invalid_token"
        );
        // Without a token configured, the refusal still names the host rule.
        let tokenless = self::auth(None, true, &[]);
        assert_eq!(
            tokenless
                .check_read(&parts(&[(header::HOST, "evil.example.com")]))
                .unwrap_err()
                .code,
            "host_not_allowed"
        );
        // Closed reads ask every host for the token, as before.
        let closed = self::auth(Some("0123456789abcdef"), false, &[]);
        assert_eq!(
            closed
                .check_read(&parts(&[(header::HOST, "evil.example.com")]))
                .unwrap_err()
                .code,
            "unauthorized"
        );
    }

    #[test]
    fn writes_from_a_browser_come_from_the_dashboards_own_origin() {
        let auth = auth(Some("0123456789abcdef"), true, &["atr-dist.example.org"]);
        let bearer = (header::AUTHORIZATION, "Bearer 0123456789abcdef");
        let write = |origin: &str, host: &str| {
            auth.check_write(&parts(&[
                bearer.clone(),
                (header::HOST, host),
                (header::ORIGIN, origin),
            ]))
        };
        assert!(write("http://127.0.0.1:8440", "127.0.0.1:8440").is_ok());
        assert!(write("http://localhost:8440", "localhost:8440").is_ok());
        // A reverse proxy's name, whatever Host it passes on.
        assert!(write("https://atr-dist.example.org", "127.0.0.1:8440").is_ok());
        assert!(write("https://atr-dist.example.org", "atr-dist.example.org").is_ok());
        for (origin, host) in [
            ("https://evil.example.com", "127.0.0.1:8440"),
            // DNS rebinding: the page's origin and Host agree, but the name is not ours.
            ("http://evil.example.com:8440", "evil.example.com:8440"),
            // Another port of this machine is another site.
            ("http://127.0.0.1:3000", "127.0.0.1:8440"),
            ("http://192.0.2.7", "127.0.0.1:8440"),
            ("null", "127.0.0.1:8440"),
            ("file://", "127.0.0.1:8440"),
        ] {
            let err = write(origin, host).unwrap_err();
            assert_eq!(
                (err.status, err.code),
                (axum::http::StatusCode::FORBIDDEN, "origin_not_allowed"),
                "{origin} to {host}"
            );
        }
        // No Origin: not a browser (curl, the CLI); the token decides.
        assert!(
            auth.check_write(&parts(&[bearer, (header::HOST, "evil.example.com")]))
                .is_ok()
        );
    }
}
