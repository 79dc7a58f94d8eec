//! The dashboard: server-rendered pages (maud), a stylesheet and a small script embedded in
//! the binary, no build step and nothing from a CDN.
//!
//! - `/`: counts per state, throughput over the last hour, per-platform tallies, latest jobs;
//! - `/jobs`: the jobs table with filters and paging;
//! - `/jobs/{id}`: one job: summary, attempts, timeline, payload (the id may be a short one);
//! - `/find?id=…`: the header's search box: any part of a job id it starts or ends with;
//! - `/releases`, `/releases/{key}`: distributions with their staged and promoted state.
//!
//! The script (`assets/app.js`) listens to `/events` and, when the queue changes, updates the
//! counts and fetches the pages' live fragments (`/partials/...`) again. Retry, Cancel, Pause
//! and Resume post to the API with the admin token, which the page asks for once and keeps
//! in `sessionStorage`.

use std::collections::BTreeMap;

use atr_dist_shared::{JobState, Platform};
use axum::Router;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use chrono::Utc;
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use super::api::{job_detail, release};
use super::error::ApiError;
use super::params::{ApiQuery, JobsQuery, check_job_id};
use super::types::{JobPageBody, QueueStatsBody};
use super::views::{self, state_badge};
use super::{AppState, Backend, bounded, results};
use crate::queue::{IdLookup, ambiguous_id};

const APP_CSS: &str = include_str!("assets/app.css");
const APP_JS: &str = include_str!("assets/app.js");

/// Rows of the overview's jobs table (waiting ones first, then the newest finished).
const LATEST_JOBS: usize = 10;
const RECENT_RELEASES: usize = 100;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(overview_page))
        .route("/jobs", get(jobs_page))
        .route("/jobs/{id}", get(job_page))
        .route("/find", get(find))
        .route("/releases", get(releases_page))
        .route("/releases/go", get(release_go))
        .route("/releases/{release_key}", get(release_page))
        .route("/partials/overview", get(overview_partial))
        .route("/partials/jobs", get(jobs_partial))
        .route("/partials/jobs/{id}", get(job_partial))
        .route("/partials/releases/{release_key}", get(release_partial))
        .route("/assets/app.css", get(css))
        .route("/assets/app.js", get(js))
}

/// An error shown as a page (the API's errors are JSON).
pub struct PageError(ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> PageError {
        PageError(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let e = self.0;
        let title = match e.status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::BAD_REQUEST => "Bad request",
            StatusCode::SERVICE_UNAVAILABLE => "Unavailable",
            _ => "Error",
        };
        let body = layout(
            title,
            Nav::None,
            html! {
                h1 { (title) }
                p.error { (e.message) }
                p { a href="/" { "Back to the overview" } }
            },
        );
        let mut response = (e.status, Html(body.into_string())).into_response();
        if e.challenge.is_some() {
            // Basic, so that the browser asks for the token (any user name, token as password).
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"atr-dist\", charset=\"UTF-8\""),
            );
        }
        response
    }
}

pub async fn not_found() -> PageError {
    PageError(ApiError::not_found("There is no page here."))
}

/// Like `ReadAccess`, with a page for an answer.
pub struct PageAccess;

impl FromRequestParts<AppState> for PageAccess {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, PageError> {
        state
            .auth()
            .check_read(parts)
            .map(|()| PageAccess)
            .map_err(PageError)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Nav {
    Overview,
    Jobs,
    Releases,
    None,
}

fn layout(title: &str, active: Nav, content: Markup) -> Markup {
    let link = |href: &str, label: &str, nav: Nav| {
        html! {
            a href=(href) aria-current=[(active == nav).then_some("page")] { (label) }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · atr-dist" }
                link rel="stylesheet" href="/assets/app.css";
                script src="/assets/app.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "atr-dist" }
                    nav {
                        (link("/", "Overview", Nav::Overview))
                        (link("/jobs", "Jobs", Nav::Jobs))
                        (link("/releases", "Releases", Nav::Releases))
                    }
                    form.find action="/find" method="get" role="search" {
                        input #find-id type="search" name="id" placeholder="Job id" aria-label="Find a job by its id, or its start or end" required;
                    }
                    span.spacer {}
                    span #paused-badge.badge.state-dead hidden { "Paused" }
                    span #live-status data-live-state="connecting" { "Connecting…" }
                    button #token-button.link type="button" data-action="token" { "Admin token" }
                }
                div #flash role="status" aria-live="polite" hidden {}
                main { (content) }
                dialog #token-dialog {
                    form #token-form method="dialog" {
                        h2 { "Admin token" }
                        p {
                            "Retry, cancel, pause and resume need the admin token (http.admin_token). "
                            "It is kept in this browser tab only."
                        }
                        p #token-error.error hidden {}
                        label for="token-input" { "Token" }
                        input #token-input type="password" name="token" autocomplete="off" required;
                        div.buttons {
                            button #token-forget.link type="button" { "Forget token" }
                            span.spacer {}
                            button #token-cancel type="button" { "Cancel" }
                            button #token-save.primary type="submit" value="save" { "Save token" }
                        }
                    }
                }
            }
        }
    }
}

fn page(title: &str, active: Nav, content: Markup) -> Html<String> {
    Html(layout(title, active, content).into_string())
}

async fn stats(state: &AppState) -> Result<QueueStatsBody, ApiError> {
    Ok(bounded(Backend::Redis, state.queue().stats()).await?.into())
}

async fn tallies(state: &AppState) -> Result<BTreeMap<Platform, results::PlatformTally>, String> {
    let since = Utc::now() - chrono::Duration::hours(24);
    bounded(
        Backend::Database,
        results::platform_tallies(state.db(), since),
    )
    .await
    .map_err(|e| e.message)
}

async fn overview_fragment(state: &AppState) -> Result<Markup, ApiError> {
    let stats = stats(state).await?;
    let tallies = tallies(state).await;
    Ok(views::overview(
        &stats,
        tallies.as_ref().map_err(String::as_str),
    ))
}

async fn jobs_page_of(state: &AppState, query: &JobsQuery) -> Result<JobPageBody, ApiError> {
    let filter = query.filter()?;
    let page = bounded(
        Backend::Redis,
        state
            .queue()
            .list(&filter, query.cursor()?.as_deref(), query.limit()?),
    )
    .await?;
    Ok(JobPageBody {
        jobs: page.jobs.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    })
}

async fn overview_page(
    _: PageAccess,
    State(state): State<AppState>,
) -> Result<Html<String>, PageError> {
    let stats = stats(&state).await?;
    let latest_query = JobsQuery {
        limit: Some(LATEST_JOBS.to_string()),
        ..JobsQuery::default()
    };
    let latest = jobs_page_of(&state, &latest_query).await?;
    let tallies = tallies(&state).await;
    let content = html! {
        div.title-row {
            h1 { "Queue " (stats.queue) }
            span.spacer {}
            button.action type="button" data-action="pause" hidden[stats.paused] { "Pause queue" }
            button.action type="button" data-action="resume" hidden[!stats.paused] { "Resume queue" }
        }
        section.counts aria-label="Jobs per state" {
            @for s in JobState::ALL {
                a.count-card href=(format!("/jobs?state={s}")) data-state=(s.as_str()) {
                    span.count data-count=(s.as_str()) { (stats.counts.get(s)) }
                    span.label { (state_badge(s)) }
                }
            }
        }
        div #overview-live data-live="/partials/overview" {
            (views::overview(&stats, tallies.as_ref().map_err(String::as_str)))
        }
        section.panel {
            h2 { "Jobs " a.small href="/jobs" { "all jobs, with filters" } }
            div #latest-jobs data-live=(format!("/partials/jobs?{}", latest_query.with_cursor(None))) {
                (views::jobs_table(&latest, &latest_query))
            }
        }
    };
    Ok(page("Overview", Nav::Overview, content))
}

async fn overview_partial(
    _: PageAccess,
    State(state): State<AppState>,
) -> Result<Html<String>, PageError> {
    Ok(Html(overview_fragment(&state).await?.into_string()))
}

fn selected_option(value: &str, label: &str, current: Option<&str>) -> Markup {
    html! { option value=(value) selected[current == Some(value)] { (label) } }
}

fn filter_form(query: &JobsQuery) -> Markup {
    let current = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let state = current(&query.state);
    let platform = current(&query.platform);
    let kind = current(&query.kind);
    html! {
        form.filters method="get" action="/jobs" {
            label { "State"
                select name="state" {
                    (selected_option("", "Any", state.as_deref()))
                    @for s in JobState::ALL { (selected_option(s.as_str(), s.as_str(), state.as_deref())) }
                }
            }
            label { "Platform"
                select name="platform" {
                    (selected_option("", "Any", platform.as_deref()))
                    @for p in Platform::ALL { (selected_option(p.member_name(), p.member_name(), platform.as_deref())) }
                }
            }
            label { "Kind"
                select name="kind" {
                    (selected_option("", "Any", kind.as_deref()))
                    (selected_option("stage", "stage", kind.as_deref()))
                    (selected_option("promote", "promote", kind.as_deref()))
                }
            }
            label { "Release"
                input type="text" name="release" placeholder="example-1.0.0" value=(current(&query.release).unwrap_or_default());
            }
            label { "Older than"
                input type="text" name="older_than" placeholder="30m" size="6" value=(current(&query.older_than).unwrap_or_default());
            }
            label { "Newer than"
                input type="text" name="newer_than" placeholder="2h" size="6" value=(current(&query.newer_than).unwrap_or_default());
            }
            button.primary type="submit" { "Apply" }
            a href="/jobs" { "Clear" }
        }
    }
}

/// The retry-all filter, as `POST /api/v1/jobs/retry` takes it.
fn retry_filter(query: &JobsQuery) -> String {
    let mut filter = serde_json::Map::new();
    for (name, value) in [
        ("platform", &query.platform),
        ("release", &query.release),
        ("kind", &query.kind),
        ("older_than", &query.older_than),
        ("newer_than", &query.newer_than),
    ] {
        if let Some(v) = value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
            filter.insert(name.to_owned(), serde_json::Value::String(v.to_owned()));
        }
    }
    serde_json::Value::Object(filter).to_string()
}

async fn jobs_page(
    _: PageAccess,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<JobsQuery>,
) -> Result<Response, PageError> {
    let listing = jobs_page_of(&state, &query).await;
    if let Err(e) = &listing
        && e.status == StatusCode::SERVICE_UNAVAILABLE
    {
        return Err(PageError(e.clone()));
    }
    let dead_filter = query
        .filter()
        .is_ok_and(|f| f.state == Some(JobState::Dead));
    let content = html! {
        div.title-row {
            h1 { "Jobs" }
            span.spacer {}
            @if dead_filter {
                button.action type="button" data-action="retry-matching" data-filter=(retry_filter(&query)) {
                    "Retry all matching dead jobs"
                }
            }
        }
        (filter_form(&query))
        @match &listing {
            Ok(page) => {
                div #jobs data-live=(format!("/partials/jobs?{}", query.with_cursor(query.cursor.as_deref()))) {
                    (views::jobs_table(page, &query))
                }
            }
            Err(e) => { p.error { (e.message) } }
        }
    };
    // A bad filter is shown on the page, with the form to correct it.
    let status = listing.as_ref().err().map_or(StatusCode::OK, |e| e.status);
    Ok((status, page("Jobs", Nav::Jobs, content)).into_response())
}

async fn jobs_partial(
    _: PageAccess,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<JobsQuery>,
) -> Result<Html<String>, PageError> {
    let page = jobs_page_of(&state, &query).await?;
    Ok(Html(views::jobs_table(&page, &query).into_string()))
}

async fn job_page(
    _: PageAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Html<String>, PageError> {
    let detail = job_detail(&state, &id).await?;
    let content = html! {
        h1 { "Job " span.mono { (views::short_id(&detail.job.id)) } }
        div #job data-live=(format!("/partials{}", views::job_link(&detail.job.id))) {
            (views::job_detail(&detail))
        }
    };
    Ok(page(
        &format!("Job {}", views::short_id(&id)),
        Nav::Jobs,
        content,
    ))
}

/// `/find?id=…`: the header's search. Any part of a job id that it starts or ends with goes
/// to the job's page; a part of several ids lists them.
async fn find(
    _: PageAccess,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<FindQuery>,
) -> Result<Response, PageError> {
    let given = query.id.trim();
    check_job_id(given)?;
    match bounded(Backend::Redis, state.queue().resolve_id(given)).await? {
        IdLookup::Found(id) => Ok(Redirect::to(&views::job_link(&id)).into_response()),
        IdLookup::NotFound => Err(ApiError::not_found(format!(
            "no job {given} in queue {}",
            state.queue().name()
        ))
        .into()),
        IdLookup::Ambiguous { ids, more } => {
            let content = html! {
                h1 { "Which job?" }
                p.error #ambiguous { (ambiguous_id(given, &ids, more)) }
                ul {
                    @for id in &ids {
                        li { a.mono href=(views::job_link(id)) { (id) } }
                    }
                }
            };
            Ok(page("Which job?", Nav::Jobs, content).into_response())
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FindQuery {
    id: String,
}

async fn job_partial(
    _: PageAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Html<String>, PageError> {
    let detail = job_detail(&state, &id).await?;
    Ok(Html(views::job_detail(&detail).into_string()))
}

async fn releases_page(
    _: PageAccess,
    State(state): State<AppState>,
) -> Result<Html<String>, PageError> {
    let releases = bounded(
        Backend::Database,
        results::recent_releases(state.db(), RECENT_RELEASES),
    )
    .await?;
    let content = html! {
        h1 { "Releases" }
        form.filters method="get" action="/releases/go" {
            label { "Release key"
                input type="text" name="key" placeholder="example-1.0.0" required;
            }
            button.primary type="submit" { "Show" }
        }
        section.panel {
            h2 { "Recently distributed" }
            (views::releases_table(&releases))
        }
    };
    Ok(page("Releases", Nav::Releases, content))
}

async fn release_page(
    _: PageAccess,
    State(state): State<AppState>,
    Path(release_key): Path<String>,
) -> Result<Html<String>, PageError> {
    let body = release(&state, &release_key).await?;
    let content = html! {
        div.title-row {
            h1 { "Release " (body.release_key) }
            span.spacer {}
            a href=(format!("/jobs?release={}", url::form_urlencoded::byte_serialize(body.release_key.as_bytes()).collect::<String>())) {
                "Jobs for this release"
            }
        }
        div #release data-live=(format!("/partials{}", views::release_link(&body.release_key))) {
            (views::release(&body))
        }
    };
    Ok(page(
        &format!("Release {}", body.release_key),
        Nav::Releases,
        content,
    ))
}

#[derive(serde::Deserialize)]
struct GoQuery {
    key: String,
}

/// The release form's target: on to the release's page.
async fn release_go(
    _: PageAccess,
    ApiQuery(query): ApiQuery<GoQuery>,
) -> Result<Redirect, PageError> {
    let key = super::params::parse_release(query.key.trim())?;
    Ok(Redirect::to(&views::release_link(&key)))
}

async fn release_partial(
    _: PageAccess,
    State(state): State<AppState>,
    Path(release_key): Path<String>,
) -> Result<Html<String>, PageError> {
    let body = release(&state, &release_key).await?;
    Ok(Html(views::release(&body).into_string()))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Not fingerprinted: revalidate often, so an upgrade shows at once.
            (header::CACHE_CONTROL, "public, max-age=60"),
        ],
        body,
    )
        .into_response()
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}
