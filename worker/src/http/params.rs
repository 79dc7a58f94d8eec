//! Request input: extractors whose rejections are our JSON errors (axum's own are plain
//! text), and the job filter shared by `GET /api/v1/jobs` and the dashboard's jobs table.

use std::time::Duration;

use atr_dist_shared::names::ReleaseKey;
use atr_dist_shared::{JobState, Platform};
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::types::{RetryMatchingRequest, parse_duration};
use crate::queue::{JobFilter, PageLimit};

/// Query string parsed with serde; a rejection is a 400 naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| ApiError::bad_request(format!("query string: {}", e.body_text())))
    }
}

/// A path parameter; a rejection (a segment that is not UTF-8 once decoded) is a 400 with our
/// error body, not axum's plain text.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|e| ApiError::bad_request(format!("path: {}", e.body_text())))
    }
}

/// A JSON body; a rejection keeps axum's status (400, 413, 415) and gets our error body.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|axum::Json(v)| ApiJson(v))
            .map_err(json_rejection)
    }
}

fn json_rejection(e: JsonRejection) -> ApiError {
    let status = e.status();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ => "bad_request",
    };
    // 422 (well-formed JSON of the wrong shape) is still the caller's input: 400 keeps the
    // API's statuses few.
    let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    ApiError::new(status, code, format!("request body: {}", e.body_text()))
}

/// The raw body, for the envelope, which `Envelope::parse` checks itself.
pub struct ApiBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(ApiBytes)
            .map_err(|e| {
                let status = e.status();
                let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "payload_too_large"
                } else {
                    "bad_request"
                };
                ApiError::new(status, code, format!("request body: {}", e.body_text()))
            })
    }
}

/// `GET /api/v1/jobs` parameters, and the dashboard's jobs table's. All text, parsed here, so
/// that an HTML form's empty fields mean "any" and every mistake names its parameter.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    pub state: Option<String>,
    pub platform: Option<String>,
    pub release: Option<String>,
    pub kind: Option<String>,
    pub older_than: Option<String>,
    pub newer_than: Option<String>,
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

pub fn parse_state(value: &str) -> Result<JobState, ApiError> {
    value
        .parse()
        .map_err(|e| ApiError::bad_request(format!("state: {e}")))
}

fn parse_platform(value: &str) -> Result<String, ApiError> {
    value
        .parse::<Platform>()
        .map(|p| p.member_name().to_owned())
        .map_err(|e| ApiError::bad_request(format!("platform: {e}")))
}

fn parse_kind(value: &str) -> Result<String, ApiError> {
    match value {
        "stage" | "promote" => Ok(value.to_owned()),
        other => Err(ApiError::bad_request(format!(
            "kind: unknown job kind {other:?}; expected stage or promote"
        ))),
    }
}

pub fn parse_release(value: &str) -> Result<String, ApiError> {
    ReleaseKey::new(value)
        .map(|k| k.to_string())
        .map_err(|e| ApiError::bad_request(format!("release: {e}")))
}

fn duration(name: &str, value: Option<&str>) -> Result<Option<Duration>, ApiError> {
    value
        .map(|v| parse_duration(name, v).map_err(ApiError::bad_request))
        .transpose()
}

impl JobsQuery {
    pub fn filter(&self) -> Result<JobFilter, ApiError> {
        Ok(JobFilter {
            state: given(&self.state).map(parse_state).transpose()?,
            platform: given(&self.platform).map(parse_platform).transpose()?,
            release: given(&self.release).map(parse_release).transpose()?,
            kind: given(&self.kind).map(parse_kind).transpose()?,
            older_than: duration("older_than", given(&self.older_than))?,
            newer_than: duration("newer_than", given(&self.newer_than))?,
        })
    }

    pub fn limit(&self) -> Result<PageLimit, ApiError> {
        let Some(text) = given(&self.limit) else {
            return Ok(PageLimit::DEFAULT);
        };
        PageLimit::parse(text).map_err(|e| ApiError::bad_request(format!("limit: {e}")))
    }

    /// The cursor as `list` returned it: `<state>:<offset>`.
    pub fn cursor(&self) -> Result<Option<String>, ApiError> {
        let Some(text) = given(&self.cursor) else {
            return Ok(None);
        };
        let valid = text.split_once(':').is_some_and(|(state, offset)| {
            state.parse::<JobState>().is_ok() && offset.parse::<usize>().is_ok()
        });
        if !valid {
            return Err(ApiError::bad_request(format!(
                "cursor: {text:?} is not a cursor this API returned (next_cursor)"
            )));
        }
        Ok(Some(text.to_owned()))
    }

    /// The same query with another cursor, as a query string (for the dashboard's links).
    pub fn with_cursor(&self, cursor: Option<&str>) -> String {
        let mut out = url::form_urlencoded::Serializer::new(String::new());
        let fields = [
            ("state", &self.state),
            ("platform", &self.platform),
            ("release", &self.release),
            ("kind", &self.kind),
            ("older_than", &self.older_than),
            ("newer_than", &self.newer_than),
            ("limit", &self.limit),
        ];
        for (name, value) in fields {
            if let Some(v) = given(value) {
                out.append_pair(name, v);
            }
        }
        if let Some(c) = cursor {
            out.append_pair("cursor", c);
        }
        out.finish()
    }
}

impl RetryMatchingRequest {
    /// The dead jobs this request names (`retry_matching` forces the state to dead).
    pub fn filter(&self) -> Result<JobFilter, ApiError> {
        let duration = |name: &str, d: &Option<super::types::DurationParam>| {
            d.as_ref()
                .map(|d| d.to_duration(name).map_err(ApiError::bad_request))
                .transpose()
        };
        Ok(JobFilter {
            state: Some(JobState::Dead),
            platform: given(&self.platform).map(parse_platform).transpose()?,
            release: given(&self.release).map(parse_release).transpose()?,
            kind: given(&self.kind).map(parse_kind).transpose()?,
            older_than: duration("older_than", &self.older_than)?,
            newer_than: duration("newer_than", &self.newer_than)?,
        })
    }
}

/// Job ids are used in Redis key names; bound their length so a request cannot make huge keys.
pub fn check_job_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 200 {
        return Err(ApiError::bad_request(
            "job id: must be 1 to 200 characters (a UUID)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_name_the_bad_parameter() {
        let q = JobsQuery {
            state: Some("dead".into()),
            platform: Some("NPM".into()),
            older_than: Some("90".into()),
            newer_than: Some("2h".into()),
            kind: Some(String::new()),
            ..JobsQuery::default()
        };
        let f = q.filter().unwrap();
        assert_eq!(f.state, Some(JobState::Dead));
        assert_eq!(f.older_than, Some(Duration::from_secs(90)));
        assert_eq!(f.newer_than, Some(Duration::from_secs(7200)));
        assert_eq!(f.kind, None, "an empty form field means any");
        for (q, needle) in [
            (
                JobsQuery {
                    platform: Some("npm".into()),
                    ..JobsQuery::default()
                },
                "platform: unknown platform",
            ),
            (
                JobsQuery {
                    older_than: Some("soon".into()),
                    ..JobsQuery::default()
                },
                "older_than:",
            ),
            (
                JobsQuery {
                    state: Some("lost".into()),
                    ..JobsQuery::default()
                },
                "state: unknown job state",
            ),
        ] {
            let err = q.filter().unwrap_err();
            assert!(err.message.starts_with(needle), "{err}");
        }
        let bad_limit = JobsQuery {
            limit: Some("0".into()),
            ..JobsQuery::default()
        };
        assert!(bad_limit.limit().is_err());
        let bad_cursor = JobsQuery {
            cursor: Some("x".into()),
            ..JobsQuery::default()
        };
        assert!(bad_cursor.cursor().is_err());
    }
}
