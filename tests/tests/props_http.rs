//! The HTTP API's and the dashboard's parameters under random input (proptest): query
//! strings with every parameter the endpoints take, and ones they do not, repeated, empty,
//! percent-encoded bytes that are not UTF-8, broken escapes, huge and negative numbers; and
//! path segments (job ids, release keys) made the same way. No request may get a 5xx or
//! kill the server; every refusal of the API is a 4xx with the documented error body
//! (`{"error": ..., "code": ...}`, docs/openapi.json), a 400's code `bad_request` (or
//! `invalid_envelope` for an enqueue's body).
//!
//! The server listens on 127.0.0.1:0 over a queue and a SQLite database of its own.

use std::net::SocketAddr;
use std::time::Duration;

use atr_dist::config::Config;
use atr_dist::http::{self, AppState};
use atr_dist::secret::Secret;
use atr_dist_tests::redis_support::TestQueue;
use atr_dist_tests::{SqliteDatabase, jobs};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use reqwest::StatusCode;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "test-admin-token-0123456789abcdef";

/// A value for a parameter: a valid one of some parameter, or something odd.
fn value() -> impl Strategy<Value = String> {
    let known = prop::sample::select(vec![
        "dead",
        "queued",
        "done",
        "NPM",
        "DOCKER_HUB",
        "npm",
        "example-1.0.0",
        "example",
        "stage",
        "promote",
        "90",
        "2h",
        "1d",
        "0",
        "1",
        "100",
        "1000",
        "1001",
        "-1",
        "dead:0",
        "queued:5",
        "done:-1",
        "x:1",
        "2030-01-31T12:00:00Z",
        "2030-13-01T00:00:00Z",
        "1e999",
        "18446744073709551616",
        "NaN",
        "",
        " ",
        "..",
        "../etc",
        "a/b",
        "\u{0}",
        "é",
    ])
    .prop_map(str::to_owned);
    prop_oneof![
        3 => known,
        1 => ".{0,24}",
        1 => "[0-9]{15,30}",
    ]
}

/// One `name=value` of a query string: percent-encoded, or with raw bytes that are not
/// UTF-8 once decoded (`%FF`), or a broken escape (`%zz`, a lone `%`).
fn pair() -> impl Strategy<Value = String> {
    let name = prop::sample::select(vec![
        "state",
        "platform",
        "release",
        "kind",
        "older_than",
        "newer_than",
        "limit",
        "cursor",
        "run_at",
        "max_attempts",
        "id",
        "key",
        "unknown",
        "state[]",
    ]);
    let encoded = (name.clone(), value()).prop_map(|(n, v)| {
        format!(
            "{n}={}",
            url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
        )
    });
    let raw = (
        name,
        prop::sample::select(vec!["%FF", "%zz", "%", "%C3%28", "a%00b", "%E2%82", "+"]),
    )
        .prop_map(|(n, v)| format!("{n}={v}"));
    prop_oneof![4 => encoded, 1 => raw, 1 => Just("novalue".to_owned()), 1 => Just("=x".to_owned())]
}

fn query() -> impl Strategy<Value = String> {
    prop::collection::vec(pair(), 0..5).prop_map(|pairs| pairs.join("&"))
}

/// A path segment: a job id or release key, possibly odd.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("01936f0e-8a7b-7c3d-9e4f-0a1b2c3d4e5f".to_owned()),
        Just("example-1.0.0".to_owned()),
        value().prop_map(|v| url::form_urlencoded::byte_serialize(v.as_bytes()).collect()),
        prop::sample::select(vec![
            "%FF",
            "%zz",
            "a%2Fb",
            "%2E%2E",
            "x".repeat(300).leak()
        ])
        .prop_map(str::to_owned),
    ]
}

#[derive(Debug, Clone)]
enum Call {
    Get(&'static str, String),
    GetWithSegment(&'static str, String, String),
    Enqueue(String),
}

fn call() -> impl Strategy<Value = Call> {
    let pages = prop::sample::select(vec![
        "/api/v1/jobs",
        "/api/v1/queue/stats",
        "/jobs",
        "/partials/jobs",
        "/find",
        "/releases/go",
        "/",
        "/releases",
    ]);
    let with_segment = prop::sample::select(vec![
        "/api/v1/jobs/",
        "/api/v1/releases/",
        "/jobs/",
        "/partials/jobs/",
        "/releases/",
        "/partials/releases/",
    ]);
    prop_oneof![
        3 => (pages, query()).prop_map(|(p, q)| Call::Get(p, q)),
        2 => (with_segment, segment(), query()).prop_map(|(p, s, q)| Call::GetWithSegment(p, s, q)),
        1 => query().prop_map(Call::Enqueue),
    ]
}

struct Server {
    base: String,
    client: reqwest::Client,
    shutdown: CancellationToken,
    _t: TestQueue,
    _sqlite: SqliteDatabase,
}

async fn start() -> Server {
    let t = TestQueue::new().await;
    let sqlite = SqliteDatabase::create();
    let db = atr_dist::db::connect(&Secret::new(sqlite.url.clone()), 4)
        .await
        .unwrap();
    atr_dist::db::migrate_up(&db).await.unwrap();
    // A few jobs, so that lists and pages have something to show.
    t.queue
        .enqueue_bulk(&(0..3).map(jobs::stage).collect::<Vec<_>>(), None, 3)
        .await
        .unwrap();
    let mut config = Config::default();
    config.http.admin_token = Some(Secret::new(TOKEN));
    config.http.open_reads = Some(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let state = AppState::new(t.queue.clone(), db, &config, shutdown.clone());
    tokio::spawn(http::serve(listener, state));
    Server {
        base: format!("http://{addr}"),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        shutdown,
        _t: t,
        _sqlite: sqlite,
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Sends `call`; checks the answer.
async fn check(s: &Server, call: &Call) -> Result<(), TestCaseError> {
    let (url, request) = match call {
        Call::Get(path, q) => {
            let url = format!("{}{path}?{q}", s.base);
            (url.clone(), s.client.get(url))
        }
        Call::GetWithSegment(path, segment, q) => {
            let url = format!("{}{path}{segment}?{q}", s.base);
            (url.clone(), s.client.get(url))
        }
        Call::Enqueue(q) => {
            let url = format!("{}/api/v1/jobs?{q}", s.base);
            let body = jobs::stage(fastrand::usize(1000..1_000_000)).to_json();
            (
                url.clone(),
                s.client
                    .post(url)
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/json")
                    .body(body),
            )
        }
    };
    let resp = request
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("{url}: no answer: {e}")))?;
    let status = resp.status();
    let api = url.contains("/api/v1/");
    let text = resp.text().await.unwrap_or_default();
    prop_assert!(
        !status.is_server_error(),
        "{} answered {}: {}",
        url,
        status,
        text
    );
    if api && status.is_client_error() {
        let body: Value = serde_json::from_str(&text).map_err(|e| {
            TestCaseError::fail(format!("{url}: {status} without a JSON body ({e}): {text}"))
        })?;
        prop_assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty())
                && body["code"].as_str().is_some(),
            "{}: {} body {}",
            url,
            status,
            body
        );
        if status == StatusCode::BAD_REQUEST {
            let code = body["code"].as_str().unwrap_or_default();
            prop_assert!(
                code == "bad_request" || code == "invalid_envelope",
                "{}: 400 with code {}",
                url,
                code
            );
        }
    }
    Ok(())
}

/// One server for the whole run (a server per case would spend the run starting servers),
/// dropped at its end with its queue and database.
#[test]
fn parameters_never_make_the_server_fail() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(start());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 400,
        max_shrink_iters: 512,
        // A failure prints its minimal input; nothing is written into the checkout.
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let outcome = runner.run(&prop::collection::vec(call(), 1..4), |calls| {
        rt.block_on(async {
            for c in &calls {
                check(&s, c).await?;
            }
            // Still serving.
            let health = s.client.get(format!("{}/healthz", s.base)).send().await;
            prop_assert!(
                health.is_ok_and(|r| r.status().is_success()),
                "the server stopped"
            );
            Ok(())
        })
    });
    rt.block_on(async { drop(s) });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}
