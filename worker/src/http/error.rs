//! API errors: `{ "error": "...", "code": "..." }` with the HTTP status that says who must act
//! (400 the caller's input, 401/403 credentials, 404 no such job, 409 the job's state, 503 a
//! backing service). Messages say what to do, never echo a secret.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sea_orm::DbErr;

use super::types::ErrorBody;
use crate::queue::QueueError;

/// Which authentication scheme a 401 asks for: Basic lets a browser prompt for the token on a
/// dashboard page; Bearer is the only scheme writes accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer,
}

impl Challenge {
    fn header(self) -> HeaderValue {
        match self {
            Challenge::Basic => {
                HeaderValue::from_static("Basic realm=\"atr-dist\", charset=\"UTF-8\"")
            }
            Challenge::Bearer => HeaderValue::from_static("Bearer realm=\"atr-dist\""),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub challenge: Option<Challenge>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            challenge: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn unauthorized(
        code: &'static str,
        challenge: Challenge,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code,
            message: message.into(),
            challenge: Some(challenge),
        }
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.message.clone(),
            code: self.code.to_owned(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> ApiError {
        match e {
            QueueError::Redis(e) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "redis_unavailable",
                format!("the queue's Redis did not answer: {e}"),
            ),
            // A reply we cannot read means a script and this build disagree: not the caller's
            // fault and not transient, so 500 rather than 503.
            e @ (QueueError::Parse(_) | QueueError::Protocol { .. }) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "queue_protocol",
                e.to_string(),
            ),
            QueueError::Refused { id, reason } => {
                ApiError::conflict(format!("job {id} was refused: {reason}"))
            }
            QueueError::NotNow(message) => ApiError::conflict(message),
        }
    }
}

impl From<DbErr> for ApiError {
    fn from(e: DbErr) -> ApiError {
        // Every database failure an operator can see here is the database being down,
        // unreachable or not migrated: all "try again once it is fixed".
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            format!("the results database failed: {e}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(challenge) = self.challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge.header());
        }
        response
    }
}
