//! `/api/v1`: the JSON API over the queue's admin operations and the results database.
//! Every route is in `openapi.rs`; `tests/tests/http_api.rs` checks the responses against it.

use atr_dist_shared::job::EnvelopeError;
use atr_dist_shared::{Envelope, JobState};
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::auth::{ReadAccess, WriteAccess};
use super::error::ApiError;
use super::params::{ApiBytes, ApiJson, ApiPath, ApiQuery, JobsQuery, check_job_id, parse_release};
use super::types::{
    ActionBody, AttemptBody, EnqueuedBody, JobDetailBody, JobPageBody, PauseBody, PurgeBody,
    PurgeRequest, QueueStatsBody, ReleaseBody, RetryMatchingBody, RetryMatchingRequest,
    number_runs,
};
use super::{AppState, Backend, bounded, openapi, results};
use crate::queue::{AdminAction, AdminReply, IdLookup, ambiguous_id};

/// Recorded in a job's events as who retried or cancelled it.
const API_MESSAGE_RETRY: &str = "retried through the HTTP API";
const API_MESSAGE_CANCEL: &str = "cancelled through the HTTP API";

/// Attempts a job may be given at enqueue, at most.
const MAX_ATTEMPTS_LIMIT: u32 = 100;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/queue/stats", get(queue_stats))
        .route("/queue/pause", post(pause))
        .route("/queue/resume", post(resume))
        .route("/jobs", get(list_jobs).post(enqueue))
        .route("/jobs/retry", post(retry_matching))
        .route("/jobs/purge", post(purge))
        .route("/jobs/{id}", get(show_job))
        .route("/jobs/{id}/retry", post(retry_job))
        .route("/jobs/{id}/cancel", post(cancel_job))
        .route(
            "/releases/{release_key}/distributions",
            get(release_distributions),
        )
        .route("/openapi.json", get(openapi_document))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

pub(crate) async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "no endpoint {method} {uri}; the API is described at /api/v1/openapi.json"
    ))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{uri} does not take {method}; the API is described at /api/v1/openapi.json"),
    )
}

async fn openapi_document() -> Json<serde_json::Value> {
    Json(openapi::document())
}

async fn queue_stats(
    _: ReadAccess,
    State(state): State<AppState>,
) -> Result<Json<QueueStatsBody>, ApiError> {
    let stats = bounded(Backend::Redis, state.queue().stats()).await?;
    Ok(Json(stats.into()))
}

async fn list_jobs(
    _: ReadAccess,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<JobsQuery>,
) -> Result<Json<JobPageBody>, ApiError> {
    let filter = query.filter()?;
    let limit = query.limit()?;
    let cursor = query.cursor()?;
    let page = bounded(
        Backend::Redis,
        state.queue().list(&filter, cursor.as_deref(), limit),
    )
    .await?;
    Ok(Json(JobPageBody {
        jobs: page.jobs.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// The job `given` names, in full: its id, or a part its id starts or ends with (a short
/// id). Unknown is 404; a part more than one id starts or ends with is 400, naming some.
pub async fn resolve(state: &AppState, given: &str) -> Result<String, ApiError> {
    check_job_id(given)?;
    match bounded(Backend::Redis, state.queue().resolve_id(given)).await? {
        IdLookup::Found(id) => Ok(id),
        IdLookup::NotFound => Err(ApiError::not_found(format!(
            "no job {given} in queue {}",
            state.queue().name()
        ))),
        IdLookup::Ambiguous { ids, more } => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ambiguous_job_id",
            ambiguous_id(given, &ids, more),
        )),
    }
}

/// A job with its attempts; shared with the dashboard's job page. `given` may be a short id.
pub async fn job_detail(state: &AppState, given: &str) -> Result<JobDetailBody, ApiError> {
    let id = resolve(state, given).await?;
    let id = id.as_str();
    let Some(detail) = bounded(Backend::Redis, state.queue().show(id)).await? else {
        return Err(ApiError::not_found(format!(
            "no job {id} in queue {}",
            state.queue().name()
        )));
    };
    // The queue answers even when the results database does not: the job is still shown,
    // with the reason its attempts are missing.
    let attempts = bounded(Backend::Database, results::attempts_for_job(state.db(), id))
        .await
        .map_err(|e| e.message);
    Ok(JobDetailBody::new(detail, attempts))
}

async fn show_job(
    _: ReadAccess,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobDetailBody>, ApiError> {
    job_detail(&state, &id).await.map(Json)
}

/// The one reply a per-id script gave, or a protocol error when it gave none.
fn single(id: &str, replies: Vec<AdminReply>) -> Result<AdminReply, ApiError> {
    replies.into_iter().next().ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "queue_protocol",
            format!("the queue returned no result for job {id}"),
        )
    })
}

async fn retry_job(
    _: WriteAccess,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ActionBody>, ApiError> {
    act(&state, &id, AdminAction::Retry).await.map(Json)
}

async fn cancel_job(
    _: WriteAccess,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ActionBody>, ApiError> {
    act(&state, &id, AdminAction::Cancel).await.map(Json)
}

/// A retry or cancel of one job, and the API's answer to it. One rule for both: done now is
/// 200 with `changed: true`; nothing to do is 200 with `changed: false` (nothing was
/// written); not allowed in the job's state is 409; no such job is 404.
async fn act(state: &AppState, given: &str, action: AdminAction) -> Result<ActionBody, ApiError> {
    let id = resolve(state, given).await?;
    let id = id.as_str();
    let ids = [id.to_owned()];
    let replies = match action {
        AdminAction::Retry => {
            bounded(Backend::Redis, state.queue().retry(&ids, API_MESSAGE_RETRY)).await?
        }
        AdminAction::Cancel => {
            bounded(
                Backend::Redis,
                state.queue().cancel(&ids, API_MESSAGE_CANCEL),
            )
            .await?
        }
    };
    let reply = single(id, replies)?;
    let message = reply.describe(action);
    let (changed, job_state) = match reply {
        AdminReply::Changed(s) => (true, s),
        AdminReply::Unchanged(s) => (false, s),
        AdminReply::Refused(_) => {
            return Err(ApiError::conflict(format!("job {id}: {message}")));
        }
        AdminReply::NotFound => {
            return Err(ApiError::not_found(format!(
                "no job {id} in queue {}",
                state.queue().name()
            )));
        }
    };
    Ok(ActionBody {
        id: id.to_owned(),
        changed,
        state: job_state,
        // A cancel of a running job is pending until its worker acks; a retry of one that
        // runs (nothing to do) leaves no request behind.
        cancel_requested: action == AdminAction::Cancel && job_state == JobState::Running,
        message,
    })
}

async fn retry_matching(
    _: WriteAccess,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RetryMatchingRequest>,
) -> Result<Json<RetryMatchingBody>, ApiError> {
    let filter = request.filter()?;
    // Not bounded by BACKEND_TIMEOUT: it lists and retries every matching dead job, which
    // takes as long as there are jobs, and stopping halfway would leave it half done.
    let retried = state
        .queue()
        .retry_matching(&filter, API_MESSAGE_RETRY)
        .await?;
    Ok(Json(RetryMatchingBody {
        retried: retried as u64,
    }))
}

async fn purge(
    _: WriteAccess,
    State(state): State<AppState>,
    ApiJson(request): ApiJson<PurgeRequest>,
) -> Result<Json<PurgeBody>, ApiError> {
    if !request.state.is_terminal() {
        return Err(ApiError::bad_request(format!(
            "state: only done, dead or cancelled jobs can be purged, not {}",
            request.state
        )));
    }
    let older_than = request
        .older_than
        .to_duration("older_than")
        .map_err(ApiError::bad_request)?;
    let purged = state.queue().purge(request.state, older_than).await?;
    Ok(Json(PurgeBody {
        state: request.state,
        older_than_secs: older_than.as_secs_f64(),
        purged,
    }))
}

async fn pause(_: WriteAccess, State(state): State<AppState>) -> Result<Json<PauseBody>, ApiError> {
    bounded(Backend::Redis, state.queue().pause()).await?;
    tracing::info!(
        queue = state.queue().name(),
        "queue paused through the HTTP API"
    );
    Ok(Json(PauseBody {
        queue: state.queue().name().to_owned(),
        paused: true,
    }))
}

async fn resume(
    _: WriteAccess,
    State(state): State<AppState>,
) -> Result<Json<PauseBody>, ApiError> {
    bounded(Backend::Redis, state.queue().resume()).await?;
    tracing::info!(
        queue = state.queue().name(),
        "queue resumed through the HTTP API"
    );
    Ok(Json(PauseBody {
        queue: state.queue().name().to_owned(),
        paused: false,
    }))
}

/// `POST /api/v1/jobs` options; the body is the envelope itself, exactly as on the queue.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnqueueQuery {
    /// RFC 3339 time before which the job does not run.
    run_at: Option<String>,
    max_attempts: Option<String>,
}

fn envelope_error(e: EnvelopeError) -> ApiError {
    let status = match &e {
        EnvelopeError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        EnvelopeError::NotJson(_)
        | EnvelopeError::NotAnObject
        | EnvelopeError::MissingField(_)
        | EnvelopeError::UnsupportedVersion { .. }
        | EnvelopeError::UnknownKind(_)
        | EnvelopeError::UnknownField(_)
        | EnvelopeError::InvalidField { .. }
        | EnvelopeError::InvalidPayload { .. }
        | EnvelopeError::InvalidKey { .. } => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, "invalid_envelope", e.to_string())
}

async fn enqueue(
    _: WriteAccess,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<EnqueueQuery>,
    ApiBytes(body): ApiBytes,
) -> Result<Response, ApiError> {
    // The checks a worker makes, before anything reaches the queue.
    let envelope = Envelope::parse(&body).map_err(envelope_error)?;
    let run_at = query
        .run_at
        .as_deref()
        .map(|t| {
            DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    ApiError::bad_request(format!(
                        "run_at: {t:?} is not an RFC 3339 time ({e}), e.g. 2030-01-31T12:00:00Z"
                    ))
                })
        })
        .transpose()?;
    let platform = envelope.distribution().platform;
    let max_attempts = match query.max_attempts.as_deref() {
        None => state.max_attempts(platform),
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=MAX_ATTEMPTS_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "max_attempts: {text:?} is not a number from 1 to {MAX_ATTEMPTS_LIMIT}"
                )));
            }
        },
    };
    let enqueued = bounded(
        Backend::Redis,
        state.queue().enqueue(&envelope, run_at, max_attempts),
    )
    .await?;
    let status = if enqueued.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = EnqueuedBody {
        id: enqueued.id,
        created: enqueued.created,
        kind: envelope.kind(),
        release: envelope.release().key().to_string(),
        platform,
        distribution: envelope
            .distribution_key()
            .map(|k| k.to_string())
            .unwrap_or_default(),
        max_attempts,
        run_at,
    };
    Ok((status, Json(body)).into_response())
}

/// A release's distributions and attempts; shared with the dashboard's release page.
pub async fn release(state: &AppState, release_key: &str) -> Result<ReleaseBody, ApiError> {
    let release_key = parse_release(release_key)?;
    let distributions = bounded(
        Backend::Database,
        results::distributions_for_release(state.db(), &release_key),
    )
    .await?;
    let runs = bounded(
        Backend::Database,
        results::runs_for_release(state.db(), &release_key),
    )
    .await?;
    let mut runs: Vec<AttemptBody> = runs.into_iter().map(Into::into).collect();
    // Newest first: numbered oldest first. Only the attempts listed are seen, so a job with
    // attempts beyond the list's limit may number its oldest listed run too low.
    number_runs(runs.iter_mut().rev());
    Ok(ReleaseBody {
        release_key,
        distributions: distributions.into_iter().map(Into::into).collect(),
        runs,
    })
}

async fn release_distributions(
    _: ReadAccess,
    State(state): State<AppState>,
    ApiPath(release_key): ApiPath<String>,
) -> Result<Json<ReleaseBody>, ApiError> {
    release(&state, &release_key).await.map(Json)
}

/// Whether a job in `state` offers Retry (dead, cancelled) or Cancel (still waiting or
/// running) in the dashboard.
pub fn actions_for(state: JobState) -> (bool, bool) {
    match state {
        JobState::Dead | JobState::Cancelled => (true, false),
        JobState::Scheduled | JobState::Queued | JobState::Retrying | JobState::Running => {
            (false, true)
        }
        JobState::Done => (false, false),
    }
}
