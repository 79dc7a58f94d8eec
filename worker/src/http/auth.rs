//! Who may read and who may act.
//!
//! - Writes (retry, cancel, purge, pause, resume, enqueue) need `Authorization: Bearer
//!   <admin token>`. Only Bearer: a browser never attaches it by itself, so another site
//!   cannot make an operator's browser act (no CSRF), and no CORS is offered.
//! - Reads are open when `http.open_reads` says so (by default only on a loopback
//!   address); otherwise they need the same token, as Bearer or as the password of HTTP
//!   Basic, which lets a browser prompt for it on the dashboard.
//! - Without an admin token configured, writes are refused with 403 and how to set one.
//!
//! Tokens are compared as SHA3-256 digests in constant time, so neither the content nor the
//! length of the configured token leaks through timing.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
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
    pub fn new(token: Option<&Secret>, open_reads: bool) -> Auth {
        Auth {
            token_digest: token.map(|t| digest(t.expose())),
            open_reads,
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

    pub fn check_read(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.open_reads {
            return Ok(());
        }
        if self.token_digest.is_none() {
            return Err(ApiError::forbidden(
                "reads_closed",
                format!(
                    "reads need the admin token (http.open_reads is off) but none is configured; {SET_TOKEN}, or set http.open_reads = true"
                ),
            ));
        }
        match presented(headers) {
            Presented::Bearer(t) | Presented::Basic(t) if self.matches(&t) => Ok(()),
            Presented::None => Err(ApiError::unauthorized(
                "unauthorized",
                Challenge::Basic,
                "reads need the admin token: send Authorization: Bearer <token>",
            )),
            Presented::Bearer(_) | Presented::Basic(_) | Presented::Unreadable => {
                Err(ApiError::unauthorized(
                    "invalid_token",
                    Challenge::Basic,
                    "the token presented is not the admin token",
                ))
            }
        }
    }

    pub fn check_write(&self, headers: &HeaderMap) -> Result<(), ApiError> {
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
        state.auth().check_read(&parts.headers).map(|()| ReadAccess)
    }
}

/// A handler argument that admits only requests carrying the admin token.
pub struct WriteAccess;

impl FromRequestParts<AppState> for WriteAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state
            .auth()
            .check_write(&parts.headers)
            .map(|()| WriteAccess)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn writes_need_the_bearer_token() {
        let auth = Auth::new(Some(&Secret::new("0123456789abcdef")), false);
        assert!(auth.check_write(&with("Bearer 0123456789abcdef")).is_ok());
        assert_eq!(
            auth.check_write(&HeaderMap::new()).unwrap_err().code,
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
        let auth = Auth::new(None, true);
        let err = auth.check_write(&with("Bearer anything")).unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::FORBIDDEN);
        assert!(err.message.contains("ATR_DIST_HTTP__ADMIN_TOKEN"), "{err}");
        assert!(auth.check_read(&HeaderMap::new()).is_ok());
    }
}
