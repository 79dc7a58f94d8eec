//! The HTTP surface against a real Redis queue and a real database (SQLite, and PostgreSQL for
//! the release view and readiness): authorisation, every endpoint, the responses' conformance
//! to the OpenAPI document, server-sent events, metrics and health.
//!
//! Each server listens on 127.0.0.1:0 and is stopped by its test.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use atr_dist::config::Config;
use atr_dist::http::{self, AppState, HttpError, openapi};
use atr_dist::queue::pool::{Completion, RunningJob};
use atr_dist::queue::{Ack, AckOutcome, Queue, RawJob};
use atr_dist::secret::Secret;
use atr_dist_shared::entities::{distribution, job_run};
use atr_dist_shared::{ErrorClass, JobState, Platform};
use atr_dist_tests::cases::{
    FAST_RETRY, FnHandler, RunningPool, eventually, pool_config, state_of,
};
use atr_dist_tests::redis_support::TestQueue;
use atr_dist_tests::{PgDatabase, SqliteDatabase, jobs, unique_name};
use chrono::Utc;
use futures::StreamExt;
use reqwest::StatusCode;
use sea_orm::{ActiveModelTrait, ConnectionTrait, Database, DatabaseConnection, Set};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "test-admin-token-0123456789abcdef";

#[derive(Clone, Copy)]
enum Db {
    Sqlite,
    Postgres,
    /// SQLite without the migrations applied.
    Unmigrated,
}

struct Options {
    token: Option<&'static str>,
    open_reads: bool,
    db: Db,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            token: Some(TOKEN),
            open_reads: true,
            db: Db::Sqlite,
        }
    }
}

/// A server over its own queue and database.
struct Server {
    base: String,
    t: TestQueue,
    db: DatabaseConnection,
    shutdown: CancellationToken,
    join: Option<JoinHandle<Result<(), HttpError>>>,
    client: reqwest::Client,
    pg: Option<PgDatabase>,
    _sqlite: Option<SqliteDatabase>,
}

impl Server {
    async fn start(options: Options) -> Server {
        Server::on_queue(options, TestQueue::new().await).await
    }

    async fn on_queue(options: Options, t: TestQueue) -> Server {
        let (url, pg, sqlite) = match options.db {
            Db::Sqlite | Db::Unmigrated => {
                let s = SqliteDatabase::create();
                (s.url.clone(), None, Some(s))
            }
            Db::Postgres => {
                let p = PgDatabase::create().await;
                (p.url.clone(), Some(p), None)
            }
        };
        let db = atr_dist::db::connect(&Secret::new(url), 4).await.unwrap();
        if !matches!(options.db, Db::Unmigrated) {
            atr_dist::db::migrate_up(&db).await.unwrap();
        }
        let mut config = Config::default();
        config.http.admin_token = options.token.map(Secret::new);
        config.http.open_reads = Some(options.open_reads);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let state = AppState::new(t.queue.clone(), db.clone(), &config, shutdown.clone());
        let join = tokio::spawn(http::serve(listener, state));
        Server {
            base: format!("http://{addr}"),
            t,
            db,
            shutdown,
            join: Some(join),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            pg,
            _sqlite: sqlite,
        }
    }

    fn queue(&self) -> &Queue {
        &self.t.queue
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get_text(&self, path: &str) -> (StatusCode, String) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    }

    /// POSTs with the admin token.
    async fn post(&self, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.client.post(self.url(path)).bearer_auth(TOKEN);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn post_raw(&self, path: &str, body: String) -> (StatusCode, Value) {
        let r = self
            .client
            .post(self.url(path))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(join) = self.join.take() {
            tokio::time::timeout(Duration::from_secs(10), join)
                .await
                .expect("the server stops on its shutdown token")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The OpenAPI document, and which operations a test has checked against it.
struct Spec {
    doc: Value,
    seen: Mutex<BTreeSet<(String, String)>>,
}

impl Spec {
    fn new() -> Spec {
        Spec {
            doc: openapi::document(),
            seen: Mutex::new(BTreeSet::new()),
        }
    }

    fn validate_against(&self, schema: &Value, body: &Value, what: &str) {
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.doc["components"],
            "allOf": [schema],
        });
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("{what}: the document's schema does not compile: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{what}: the response does not match the document:\n{}\nbody: {body:#}",
            errors.join("\n")
        );
    }

    /// Asserts the document lists `status` for the operation and that `body` matches it.
    fn check(&self, method: &str, path: &str, status: StatusCode, body: &Value) {
        let what = format!("{} {path} -> {}", method.to_uppercase(), status.as_u16());
        let response = &self.doc["paths"][path][method]["responses"][status.as_str()];
        assert!(
            response.is_object(),
            "{what}: the document does not list this status; body: {body}"
        );
        let schema = &response["content"]["application/json"]["schema"];
        assert!(
            schema.is_object(),
            "{what}: the document gives no JSON schema"
        );
        self.validate_against(schema, body, &what);
        self.seen
            .lock()
            .unwrap()
            .insert((method.to_owned(), path.to_owned()));
    }

    fn mark(&self, method: &str, path: &str) {
        assert!(
            self.doc["paths"][path][method].is_object(),
            "{method} {path} is not in the document"
        );
        self.seen
            .lock()
            .unwrap()
            .insert((method.to_owned(), path.to_owned()));
    }

    fn all_operations(&self) -> BTreeSet<(String, String)> {
        let mut all = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                all.insert((method.clone(), path.clone()));
            }
        }
        all
    }
}

/// Reads server-sent events until `want` accepts one; returns (event, data).
async fn next_event(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buffer: &mut String,
    mut want: impl FnMut(&str, &Value) -> bool,
) -> (String, Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut event = "message".to_owned();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            let value: Value = serde_json::from_str(&data).unwrap();
            if want(&event, &value) {
                return (event, value);
            }
        }
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("an awaited server-sent event arrives within 10 s")
            .expect("the event stream stays open")
            .unwrap();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// Leases the only queued job and acks it dead, as a worker that failed it would.
async fn make_dead(q: &Queue, env: &atr_dist_shared::Envelope) -> String {
    let e = q.enqueue(env, None, 1).await.unwrap();
    let leased = q
        .fetch("test-worker", Duration::from_secs(30), 1)
        .await
        .unwrap();
    assert_eq!(leased.len(), 1, "the queue held only this job");
    assert_eq!(leased[0].id, e.id);
    let ack = Ack {
        lease: leased[0].lease(),
        outcome: AckOutcome::Dead {
            class: ErrorClass::Permanent,
            message: "404 no such package".into(),
        },
        result: String::new(),
    };
    q.ack(&[ack]).await.unwrap();
    e.id
}

async fn insert_release_rows(db: &DatabaseConnection, release: &str) {
    let now = Utc::now();
    let row = |package: &str, promoted: bool| distribution::ActiveModel {
        release_key: Set(release.to_owned()),
        platform: Set(Platform::Npm),
        owner_namespace: Set(String::new()),
        package: Set(package.to_owned()),
        version: Set("1.0.0".to_owned()),
        staging: Set(!promoted),
        pending: Set(false),
        retries: Set(0),
        upload_date: Set(Some(now)),
        api_url: Set(Some("https://registry.example/pkg".to_owned())),
        web_url: Set(Some("javascript:alert(1)".to_owned())),
        created_by: Set(Some("rm".to_owned())),
        promoted: Set(promoted),
        promoted_at: Set(promoted.then_some(now)),
        staging_revision_key: Set(Some(format!("{release} 00001"))),
        staged_manifest_digest: Set(Some(format!("sha3-256:{}", "ab".repeat(32)))),
        platform_digest: Set(Some(format!("sha512-{package}-digest"))),
        staging_tag: Set(Some("rc".to_owned())),
        // The promotion's chain, for the promoted row.
        voted_revision_key: Set(promoted.then(|| format!("{release} 00002"))),
        voted_manifest_digest: Set(promoted.then(|| format!("sha3-256:{}", "ab".repeat(32)))),
        staged_platform_digest: Set(Some(format!("sha512-{package}-digest"))),
        promoted_digest: Set(promoted.then(|| format!("sha512-{package}-digest"))),
        staged_artifacts: Set(None),
    };
    row("example-staged", false).insert(db).await.unwrap();
    row("example-promoted", true).insert(db).await.unwrap();
    for (attempt, outcome, class) in [(1, "failed", Some("transient")), (2, "completed", None)] {
        job_run::ActiveModel {
            job_id: Set("0190f5d2-0000-7000-8000-000000000001".to_owned()),
            kind: Set("stage".to_owned()),
            release_key: Set(release.to_owned()),
            platform: Set(Platform::Npm),
            owner_namespace: Set(String::new()),
            package: Set("example-staged".to_owned()),
            version: Set("1.0.0".to_owned()),
            attempt: Set(attempt),
            started_at: Set(now),
            finished_at: Set(Some(now)),
            outcome: Set(Some(outcome.to_owned())),
            error_class: Set(class.map(str::to_owned)),
            message: Set(class.map(|_| "503 from the registry".to_owned())),
            http_status: Set(class.map(|_| 503)),
            duration_ms: Set(Some(120)),
            ..Default::default()
        }
        .insert(db)
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn openapi_document_is_checked_in_and_served() {
    let path = atr_dist_tests::checkout_path("../docs/openapi.json");
    let generated = openapi::document_text();
    if std::env::var_os("ATR_DIST_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "docs/openapi.json is out of date with the API; run \
         `ATR_DIST_BLESS=1 cargo test -p atr-dist-tests --test http_api openapi` and commit it"
    );
    let doc: Value = serde_json::from_str(&on_disk).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // Every component schema compiles as JSON Schema 2020-12.
    for name in doc["components"]["schemas"].as_object().unwrap().keys() {
        let root = json!({
            "components": doc["components"],
            "$ref": format!("#/components/schemas/{name}"),
        });
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&root)
            .unwrap_or_else(|e| panic!("component {name} does not compile: {e}"));
    }
    let server = Server::start(Options::default()).await;
    let (status, served) = server.get("/api/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served, doc);
    server.stop().await;
}

#[tokio::test]
async fn every_endpoint_answers_as_documented() {
    let spec = Spec::new();
    let s = Server::start(Options::default()).await;
    let q = s.queue().clone();

    // A dead job first, while it is the only one queued.
    let dead_id = make_dead(&q, &jobs::stage(900)).await;

    let (st, body) = s.get("/healthz").await;
    spec.check("get", "/healthz", st, &body);
    let (st, body) = s.get("/readyz").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    spec.check("get", "/readyz", st, &body);

    // Enqueue: created, then the same idempotency key again, then refusals.
    let env = jobs::stage(1);
    let (st, body) = s.post_raw("/api/v1/jobs", env.to_json()).await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    spec.check("post", "/api/v1/jobs", st, &body);
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(id, env.id.to_string());
    assert_eq!(body["max_attempts"], 10, "the platform's retry policy");
    let (st, body) = s.post_raw("/api/v1/jobs", env.to_json()).await;
    assert_eq!((st, &body["created"]), (StatusCode::OK, &json!(false)));
    spec.check("post", "/api/v1/jobs", st, &body);
    let mut bad: Value = serde_json::from_str(&jobs::stage(2).to_json()).unwrap();
    bad["v"] = json!(9);
    let (st, body) = s.post_raw("/api/v1/jobs", bad.to_string()).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "invalid_envelope");
    assert!(
        body["error"].as_str().unwrap().contains("version 9"),
        "{body}"
    );
    spec.check("post", "/api/v1/jobs", st, &body);
    let (st, body) = s
        .post_raw("/api/v1/jobs?max_attempts=0", jobs::stage(3).to_json())
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().starts_with("max_attempts:"));
    let later = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (st, body) = s
        .post_raw(
            &format!(
                "/api/v1/jobs?run_at={}&max_attempts=3",
                later.replace('+', "%2B")
            ),
            jobs::stage(4).to_json(),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    assert_eq!(body["max_attempts"], 3);
    let scheduled_id = body["id"].as_str().unwrap().to_owned();
    let (st, body) = s.post_raw("/api/v1/jobs", jobs::stage(5).to_json()).await;
    assert_eq!(st, StatusCode::CREATED);
    let second_queued = body["id"].as_str().unwrap().to_owned();

    // Stats and lists.
    let (st, body) = s.get("/api/v1/queue/stats").await;
    spec.check("get", "/api/v1/queue/stats", st, &body);
    assert_eq!(body["counts"]["queued"], 2, "{body}");
    assert_eq!(body["counts"]["scheduled"], 1);
    assert_eq!(body["counts"]["dead"], 1);
    assert_eq!(body["last_hour"].as_array().unwrap().len(), 60);
    let (st, body) = s
        .get("/api/v1/jobs?state=queued&platform=NPM&kind=stage&newer_than=1h&older_than=0&limit=1")
        .await;
    spec.check("get", "/api/v1/jobs", st, &body);
    assert_eq!(body["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(body["jobs"][0]["id"], id.as_str());
    let cursor = body["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let (st, body) = s
        .get(&format!(
            "/api/v1/jobs?state=queued&limit=1&cursor={cursor}"
        ))
        .await;
    spec.check("get", "/api/v1/jobs", st, &body);
    assert_eq!(body["jobs"][0]["id"], second_queued.as_str());
    let (st, body) = s.get("/api/v1/jobs").await;
    spec.check("get", "/api/v1/jobs", st, &body);
    assert_eq!(body["jobs"].as_array().unwrap().len(), 4);
    for (query, needle) in [
        ("state=lost", "state:"),
        ("platform=npm", "platform:"),
        ("older_than=soon", "older_than:"),
        ("limit=5000", "limit: 5000 is not a number from 1 to 1000"),
        ("limit=0", "limit: 0 is not a number from 1 to 1000"),
        ("cursor=nonsense", "cursor:"),
        ("unknown=1", "query string:"),
    ] {
        let (st, body) = s.get(&format!("/api/v1/jobs?{query}")).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().starts_with(needle),
            "{query}: {body}"
        );
        spec.check("get", "/api/v1/jobs", st, &body);
    }

    // One job in full.
    let (st, body) = s.get(&format!("/api/v1/jobs/{id}")).await;
    spec.check("get", "/api/v1/jobs/{id}", st, &body);
    assert_eq!(body["job"]["state"], "queued");
    assert_eq!(body["job"]["atr_task_status"], "QUEUED");
    assert_eq!(body["envelope"]["kind"], "stage");
    assert_eq!(body["envelope_error"], Value::Null);
    let (st, body) = s.get(&format!("/api/v1/jobs/{dead_id}")).await;
    spec.check("get", "/api/v1/jobs/{id}", st, &body);
    assert_eq!(body["job"]["atr_task_status"], "FAILED");
    assert_eq!(body["events"][0]["event"], "dead");
    // Any part of an id that it starts or ends with names the job: its short id (the random
    // tail), or enough of its start; a part of several ids is refused, naming them.
    let short = atr_dist::queue::short_id(&id).to_owned();
    assert_eq!(short.len(), 8);
    for part in [short.as_str(), &id[..id.len() - 2], &id[id.len() - 5..]] {
        let (st, body) = s.get(&format!("/api/v1/jobs/{part}")).await;
        spec.check("get", "/api/v1/jobs/{id}", st, &body);
        assert_eq!(
            (st, &body["job"]["id"]),
            (StatusCode::OK, &json!(id)),
            "{part}"
        );
    }
    // Enqueued within the same minute, UUIDv7s share their start.
    let (st, body) = s.get(&format!("/api/v1/jobs/{}", &id[..6])).await;
    assert_eq!(
        (st, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("ambiguous_job_id")),
        "{body}"
    );
    assert!(body["error"].as_str().unwrap().contains(&id), "{body}");
    spec.check("get", "/api/v1/jobs/{id}", st, &body);
    let (st, body) = s
        .post(&format!("/api/v1/jobs/{}/cancel", &id[..6]), None)
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    spec.check("post", "/api/v1/jobs/{id}/cancel", st, &body);
    let (st, body) = s.get("/api/v1/jobs/ffffeeee").await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{body}");
    // The message names the queue looked in: a worker may serve another queue than the
    // operator thinks.
    assert_eq!(
        body["error"],
        format!("no job ffffeeee in queue {}", s.t.name).as_str(),
        "{body}"
    );
    let (st, body) = s
        .get("/api/v1/jobs/0190f5d2-0000-7000-8000-00000000dead")
        .await;
    assert_eq!(
        (st, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    spec.check("get", "/api/v1/jobs/{id}", st, &body);

    // Cancel, then retry the cancelled job; conflicts and unknown jobs. One rule: done now
    // is 200 with `changed: true`, nothing to do 200 with `changed: false`, not allowed 409.
    let (st, body) = s
        .post(&format!("/api/v1/jobs/{scheduled_id}/cancel"), None)
        .await;
    assert_eq!(
        (st, &body["changed"], &body["state"]),
        (StatusCode::OK, &json!(true), &json!("cancelled")),
        "{body}"
    );
    spec.check("post", "/api/v1/jobs/{id}/cancel", st, &body);
    let events_before = q.show(&scheduled_id).await.unwrap().unwrap().events.len();
    // Cancelling a cancelled job again: nothing to do, and no second "cancelled" event.
    let (st, body) = s
        .post(&format!("/api/v1/jobs/{scheduled_id}/cancel"), None)
        .await;
    assert_eq!(
        (st, &body["changed"], &body["state"]),
        (StatusCode::OK, &json!(false), &json!("cancelled")),
        "{body}"
    );
    spec.check("post", "/api/v1/jobs/{id}/cancel", st, &body);
    assert_eq!(
        q.show(&scheduled_id).await.unwrap().unwrap().events.len(),
        events_before
    );
    // Cancelling a dead one is not allowed.
    let (st, body) = s
        .post(&format!("/api/v1/jobs/{dead_id}/cancel"), None)
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{body}");
    spec.check("post", "/api/v1/jobs/{id}/cancel", st, &body);
    let (st, body) = s.post("/api/v1/jobs/no-such-job/cancel", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    spec.check("post", "/api/v1/jobs/{id}/cancel", st, &body);
    let (st, body) = s
        .post(&format!("/api/v1/jobs/{scheduled_id}/retry"), None)
        .await;
    assert_eq!(
        (st, &body["changed"], &body["state"]),
        (StatusCode::OK, &json!(true), &json!("queued")),
        "{body}"
    );
    spec.check("post", "/api/v1/jobs/{id}/retry", st, &body);
    // Retrying a queued or scheduled job: nothing to do (it will run), and nothing written.
    let events_before = q.show(&id).await.unwrap().unwrap().events.len();
    let (st, body) = s.post(&format!("/api/v1/jobs/{id}/retry"), None).await;
    assert_eq!(
        (st, &body["changed"], &body["state"]),
        (StatusCode::OK, &json!(false), &json!("queued")),
        "{body}"
    );
    spec.check("post", "/api/v1/jobs/{id}/retry", st, &body);
    assert_eq!(
        q.show(&id).await.unwrap().unwrap().events.len(),
        events_before
    );
    let later = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (_, body) = s
        .post_raw(
            &format!("/api/v1/jobs?run_at={}", later.replace('+', "%2B")),
            jobs::stage(6).to_json(),
        )
        .await;
    let waiting = body["id"].as_str().unwrap().to_owned();
    let (st, body) = s.post(&format!("/api/v1/jobs/{waiting}/retry"), None).await;
    assert_eq!(
        (st, &body["changed"], &body["state"]),
        (StatusCode::OK, &json!(false), &json!("scheduled")),
        "{body}"
    );
    spec.check("post", "/api/v1/jobs/{id}/retry", st, &body);
    let (st, body) = s.post("/api/v1/jobs/no-such-job/retry", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    spec.check("post", "/api/v1/jobs/{id}/retry", st, &body);

    // Retry every dead job matching a filter.
    let (st, body) = s
        .post("/api/v1/jobs/retry", Some(json!({"platform": "PYPI"})))
        .await;
    assert_eq!(body["retried"], 0);
    spec.check("post", "/api/v1/jobs/retry", st, &body);
    let (st, body) = s
        .post(
            "/api/v1/jobs/retry",
            Some(json!({"platform": "NPM", "release": "example-1.0.0", "older_than": 0})),
        )
        .await;
    assert_eq!((st, &body["retried"]), (StatusCode::OK, &json!(1)));
    spec.check("post", "/api/v1/jobs/retry", st, &body);
    let (st, body) = s
        .post("/api/v1/jobs/retry", Some(json!({"kind": "build"})))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    spec.check("post", "/api/v1/jobs/retry", st, &body);

    // Pause and resume.
    let (st, body) = s.post("/api/v1/queue/pause", None).await;
    assert_eq!(body["paused"], true);
    spec.check("post", "/api/v1/queue/pause", st, &body);
    assert!(q.stats().await.unwrap().paused);
    let (st, body) = s.post("/api/v1/queue/resume", None).await;
    assert_eq!(body["paused"], false);
    spec.check("post", "/api/v1/queue/resume", st, &body);

    // Purge: run the queued jobs to done first.
    let pool = RunningPool::start(
        &q,
        FnHandler(|_job: RunningJob| async { Ok(Completion::Done) }),
        pool_config(4, FAST_RETRY),
    );
    eventually("every job done", Duration::from_secs(10), || async {
        q.stats().await.unwrap().counts[&JobState::Done] == 4
    })
    .await;
    pool.stop().await;
    // A done job is finished: retrying it is not allowed, and changes nothing.
    let events_before = q.show(&id).await.unwrap().unwrap().events.len();
    let (st, body) = s.post(&format!("/api/v1/jobs/{id}/retry"), None).await;
    assert_eq!(st, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("it is done"),
        "{body}"
    );
    spec.check("post", "/api/v1/jobs/{id}/retry", st, &body);
    assert_eq!(
        q.show(&id).await.unwrap().unwrap().events.len(),
        events_before
    );
    assert_eq!(state_of(&q, &id).await, JobState::Done);
    let (st, body) = s
        .post(
            "/api/v1/jobs/purge",
            Some(json!({"state": "done", "older_than": "0s"})),
        )
        .await;
    assert_eq!((st, &body["purged"]), (StatusCode::OK, &json!(4)), "{body}");
    spec.check("post", "/api/v1/jobs/purge", st, &body);
    // Stats say what was deleted and the retention in force, as this test's worker
    // announced it (the defaults).
    let (st, body) = s.get("/api/v1/queue/stats").await;
    spec.check("get", "/api/v1/queue/stats", st, &body);
    assert_eq!(body["totals"]["purged"], 4, "{body}");
    assert_eq!(
        body["retention"],
        json!({
            "done": {"max_age_secs": 7 * 86_400, "max_jobs": 100_000},
            "dead": {"max_age_secs": 90 * 86_400, "max_jobs": 10_000},
            "cancelled": {"max_age_secs": 90 * 86_400, "max_jobs": 10_000},
        })
    );
    let (st, body) = s
        .post(
            "/api/v1/jobs/purge",
            Some(json!({"state": "queued", "older_than": 60})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    spec.check("post", "/api/v1/jobs/purge", st, &body);

    // A release's distributions and attempts.
    insert_release_rows(&s.db, "example-1.0.0").await;
    let (st, body) = s.get("/api/v1/releases/example-1.0.0/distributions").await;
    spec.check(
        "get",
        "/api/v1/releases/{release_key}/distributions",
        st,
        &body,
    );
    assert_eq!(body["distributions"].as_array().unwrap().len(), 2);
    let (st, body) = s.get("/api/v1/releases/Not%20a%20key/distributions").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    spec.check(
        "get",
        "/api/v1/releases/{release_key}/distributions",
        st,
        &body,
    );

    // The rest: the document itself, events and metrics.
    let (st, body) = s.get("/api/v1/openapi.json").await;
    spec.check("get", "/api/v1/openapi.json", st, &body);
    let (st, text) = s.get_text("/metrics").await;
    assert_eq!(st, StatusCode::OK);
    assert!(text.contains("atr_dist_jobs{"), "{text}");
    spec.mark("get", "/metrics");
    let response = s.client.get(s.url("/events")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut stream = response.bytes_stream();
    let (event, data) = next_event(&mut stream, &mut String::new(), |e, _| e == "stats").await;
    let events = &spec.doc["paths"]["/events"]["get"]["responses"]["200"]["x-events"];
    spec.validate_against(&events[event.as_str()], &data, "GET /events stats event");
    spec.mark("get", "/events");

    // Outside the document: unknown endpoints and methods still answer with an ErrorBody.
    let error_schema = json!({"$ref": "#/components/schemas/ErrorBody"});
    let (st, body) = s.get("/api/v1/nothing-here").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    spec.validate_against(&error_schema, &body, "unknown endpoint");
    let r = s
        .client
        .delete(s.url("/api/v1/queue/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    spec.validate_against(&error_schema, &r.json().await.unwrap(), "wrong method");

    let missing: Vec<_> = spec
        .all_operations()
        .difference(&spec.seen.lock().unwrap())
        .cloned()
        .collect();
    assert!(missing.is_empty(), "operations not exercised: {missing:?}");
    s.stop().await;
}

#[tokio::test]
async fn writes_need_the_admin_token_as_bearer() {
    let s = Server::start(Options::default()).await;
    let pause = s.url("/api/v1/queue/pause");
    // No token: 401 with a Bearer challenge.
    let r = s.client.post(&pause).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "unauthorized");
    // A wrong token: 401 invalid_token.
    let r = s
        .client
        .post(&pause)
        .bearer_auth("not-the-admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "invalid_token");
    // The right token as Basic: refused, writes take Bearer only.
    let r = s
        .client
        .post(&pause)
        .basic_auth("ops", Some(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(!s.queue().stats().await.unwrap().paused, "nothing was done");
    // The right token.
    let r = s
        .client
        .post(&pause)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(s.queue().stats().await.unwrap().paused);
    // Reads are open here.
    let (st, _) = s.get("/api/v1/queue/stats").await;
    assert_eq!(st, StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn foreign_hosts_and_origins_are_refused() {
    let s = Server::start(Options::default()).await;
    let stats = s.url("/api/v1/queue/stats");
    // DNS rebinding: another site's name, resolved to this address, reads nothing.
    for path in ["/api/v1/queue/stats", "/api/v1/jobs", "/", "/events"] {
        let r = s
            .client
            .get(s.url(path))
            .header("host", "evil.example.com:8440")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
        assert!(r.headers().get("www-authenticate").is_none(), "{path}");
        if path.starts_with("/api") {
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["code"], "host_not_allowed", "{body}");
        }
    }
    // The server's own names read without a token; any name reads with it.
    let port = s.base.rsplit(':').next().unwrap().to_owned();
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let r = s
            .client
            .get(&stats)
            .header("host", &host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{host}");
    }
    let r = s
        .client
        .get(&stats)
        .header("host", "evil.example.com")
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Probes stay open under any name.
    let r = s
        .client
        .get(s.url("/healthz"))
        .header("host", "evil.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Writes from another site's page are refused even with the token; the dashboard's own
    // origin, and clients that send no Origin, act.
    let pause = s.url("/api/v1/queue/pause");
    for origin in [
        "https://evil.example.com".to_owned(),
        format!("http://evil.example.com:{port}"),
        "null".to_owned(),
    ] {
        let r = s
            .client
            .post(&pause)
            .bearer_auth(TOKEN)
            .header("origin", &origin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{origin}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "origin_not_allowed", "{body}");
    }
    assert!(!s.queue().stats().await.unwrap().paused);
    let r = s
        .client
        .post(&pause)
        .bearer_auth(TOKEN)
        .header("origin", &s.base)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(s.queue().stats().await.unwrap().paused);
    let (st, _) = s.post("/api/v1/queue/resume", None).await;
    assert_eq!(st, StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn closed_reads_need_the_token_and_no_token_disables_writes() {
    let s = Server::start(Options {
        open_reads: false,
        ..Options::default()
    })
    .await;
    let stats = s.url("/api/v1/queue/stats");
    let r = s.client.get(&stats).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    let r = s
        .client
        .get(&stats)
        .bearer_auth("wrong-token-wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    for r in [
        s.client
            .get(&stats)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap(),
        s.client
            .get(&stats)
            .basic_auth("ops", Some(TOKEN))
            .send()
            .await
            .unwrap(),
    ] {
        assert_eq!(r.status(), StatusCode::OK);
    }
    // The dashboard asks the browser for the token; events too are closed.
    let r = s.client.get(s.url("/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    assert!(r.text().await.unwrap().contains("<html"));
    let r = s.client.get(s.url("/events")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Probes, metrics and the document stay open.
    for path in ["/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"] {
        let r = s.client.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    s.stop().await;

    // Without an admin token, writes are refused with the way to configure one.
    let s = Server::start(Options {
        token: None,
        open_reads: false,
        db: Db::Sqlite,
    })
    .await;
    let (st, body) = s.post("/api/v1/queue/pause", None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "writes_disabled");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("ATR_DIST_HTTP__ADMIN_TOKEN"),
        "{body}"
    );
    let (st, body) = s.get("/api/v1/queue/stats").await;
    assert_eq!(
        (st, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("reads_closed"))
    );
    s.stop().await;
}

#[tokio::test]
async fn events_stream_stats_and_their_changes() {
    let s = Server::start(Options::default()).await;
    let response = s.client.get(s.url("/events")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let (_, first) = next_event(&mut stream, &mut buffer, |e, _| e == "stats").await;
    assert_eq!(first["counts"]["queued"], 0);
    assert_eq!(first["queue"], s.t.name.as_str());
    s.queue().enqueue(&jobs::stage(1), None, 3).await.unwrap();
    let (_, changed) = next_event(&mut stream, &mut buffer, |e, v| {
        e == "stats" && v["counts"]["queued"] == 1
    })
    .await;
    assert_eq!(changed["totals"]["enqueued"], 1);
    drop(stream);
    s.stop().await;
}

/// The value of the first sample line starting with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_follow_the_jobs_that_run() {
    let s = Server::start(Options::default()).await;
    let q = s.queue().clone();
    let name = s.t.name.clone();
    let (_, before) = s.get_text("/metrics").await;
    for metric in [
        "atr_dist_jobs{",
        "atr_dist_oldest_queued_age_seconds{",
        "atr_dist_queue_paused{",
        "atr_dist_workers{",
        "atr_dist_queue_events_total{",
        "atr_dist_redis_up 1",
        "atr_dist_database_up 1",
        "atr_dist_build_info{",
    ] {
        assert!(before.contains(metric), "{metric} missing:\n{before}");
    }
    let done = format!("atr_dist_jobs{{queue=\"{name}\",state=\"done\"}}");
    assert_eq!(sample(&before, &done), Some(0.0));
    // This process's series are there from the first scrape, every platform and kind of
    // them, whether or not anything ran yet.
    for series in [
        "atr_dist_jobs_enqueued_total{kind=\"promote\",platform=\"HEX\"}",
        "atr_dist_attempts_total{kind=\"promote\",platform=\"MAVEN\"}",
        "atr_dist_attempts_failed_total{error_class=\"auth\",kind=\"stage\",platform=\"GITHUB\"}",
        "atr_dist_attempt_duration_seconds_count{kind=\"promote\",platform=\"PYPI\"}",
        "atr_dist_queue_latency_seconds_count{kind=\"promote\",platform=\"DOCKER_HUB\"}",
    ] {
        assert!(
            sample(&before, series).is_some(),
            "{series} missing:\n{before}"
        );
    }
    let processed = "atr_dist_attempts_total{kind=\"stage\",platform=\"NPM\"}";
    let enqueued = "atr_dist_jobs_enqueued_total{kind=\"stage\",platform=\"NPM\"}";
    let duration = "atr_dist_attempt_duration_seconds_count{kind=\"stage\",platform=\"NPM\"}";
    let latency = "atr_dist_queue_latency_seconds_count{kind=\"stage\",platform=\"NPM\"}";
    let failed =
        "atr_dist_attempts_failed_total{error_class=\"permanent\",kind=\"stage\",platform=\"NPM\"}";
    // Other tests in this process run jobs too: compare before and after, not absolute values.
    let at = |text: &str, series: &str| sample(text, series).unwrap_or(0.0);

    let pool = RunningPool::start(
        &q,
        FnHandler(|job: RunningJob| async move {
            if job.envelope.distribution().package.as_str() == "pkg-3" {
                Err(atr_dist::queue::pool::JobError::permanent(
                    "no such package",
                ))
            } else {
                Ok(Completion::Done)
            }
        }),
        pool_config(2, FAST_RETRY),
    );
    for n in 1..=3 {
        let (st, body) = s.post_raw("/api/v1/jobs", jobs::stage(n).to_json()).await;
        assert_eq!(st, StatusCode::CREATED, "{body}");
    }
    eventually("jobs finished", Duration::from_secs(10), || async {
        let stats = q.stats().await.unwrap();
        stats.counts[&JobState::Done] == 2 && stats.counts[&JobState::Dead] == 1
    })
    .await;
    // The latency is read from the job hash after each start, off the job's path.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let after = loop {
        let text = s.get_text("/metrics").await.1;
        if at(&text, latency) >= at(&before, latency) + 3.0 {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "latencies not observed:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    pool.stop().await;
    assert_eq!(sample(&after, &done), Some(2.0), "{after}");
    assert_eq!(
        sample(
            &after,
            &format!("atr_dist_jobs{{queue=\"{name}\",state=\"dead\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            &format!("atr_dist_queue_events_total{{event=\"done\",queue=\"{name}\"}}")
        ),
        Some(2.0)
    );
    assert!(
        at(&after, enqueued) >= at(&before, enqueued) + 3.0,
        "{after}"
    );
    assert!(
        at(&after, processed) >= at(&before, processed) + 3.0,
        "{after}"
    );
    assert!(
        at(&after, duration) >= at(&before, duration) + 3.0,
        "{after}"
    );
    assert!(at(&after, failed) >= at(&before, failed) + 1.0, "{after}");
    s.stop().await;
}

#[tokio::test]
async fn readyz_turns_503_when_the_database_is_unreachable() {
    let s = Server::start(Options {
        db: Db::Postgres,
        ..Options::default()
    })
    .await;
    let spec = Spec::new();
    let (st, body) = s.get("/readyz").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    // Take the database away under the running server.
    let name = s.pg.as_ref().unwrap().name.clone();
    let admin = Database::connect(format!("{}/postgres", atr_dist_tests::pg_server_url()))
        .await
        .unwrap();
    admin
        .execute_unprepared(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
        .await
        .unwrap();
    admin.close().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let last = loop {
        let (st, body) = s.get("/readyz").await;
        if st == StatusCode::SERVICE_UNAVAILABLE {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    spec.check("get", "/readyz", StatusCode::SERVICE_UNAVAILABLE, &last);
    assert_eq!(last["ready"], false);
    let check = |name: &str| {
        last["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(check("redis")["ok"], true, "{last}");
    assert_eq!(check("database")["ok"], false, "{last}");
    // The queue still answers; the database-backed endpoint says which service is down.
    let (st, body) = s.get("/api/v1/releases/example-1.0.0/distributions").await;
    assert_eq!(
        (st, body["code"].as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("database_unavailable")
        )
    );
    let (st, _) = s.get("/api/v1/queue/stats").await;
    assert_eq!(st, StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn readyz_names_pending_migrations() {
    let s = Server::start(Options {
        db: Db::Unmigrated,
        ..Options::default()
    })
    .await;
    let (st, body) = s.get("/readyz").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    let migrations = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "migrations")
        .unwrap();
    assert_eq!(migrations["ok"], false);
    assert!(
        migrations["detail"]
            .as_str()
            .unwrap()
            .contains("atr-dist migrate"),
        "{body}"
    );
    s.stop().await;
}

#[tokio::test]
async fn release_distributions_on_postgresql() {
    let spec = Spec::new();
    let s = Server::start(Options {
        db: Db::Postgres,
        ..Options::default()
    })
    .await;
    insert_release_rows(&s.db, "example-2.0.0").await;
    let (st, body) = s.get("/api/v1/releases/example-2.0.0/distributions").await;
    spec.check(
        "get",
        "/api/v1/releases/{release_key}/distributions",
        st,
        &body,
    );
    let dists = body["distributions"].as_array().unwrap();
    let status_of =
        |package: &str| dists.iter().find(|d| d["package"] == package).unwrap()["status"].clone();
    assert_eq!(status_of("example-staged"), "staged");
    assert_eq!(status_of("example-promoted"), "promoted");
    assert_eq!(dists[0]["platform"], "NPM");
    assert!(
        dists[0]["staged_manifest_digest"]
            .as_str()
            .unwrap()
            .starts_with("sha3-256:")
    );
    let runs = body["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert!(
        runs.iter()
            .any(|r| r["outcome"] == "failed" && r["http_status"] == 503)
    );
    // Another release is empty, not an error.
    let (st, body) = s.get("/api/v1/releases/example-9.9.9/distributions").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body["distributions"], json!([]));
    // The dashboard's release page shows the digests, and makes no link of a javascript: URL.
    let (st, page) = s.get_text("/releases/example-2.0.0").await;
    assert_eq!(st, StatusCode::OK);
    assert!(page.contains("sha512-example-staged-digest"), "{page}");
    assert!(!page.contains("href=\"javascript:"), "{page}");
    s.stop().await;
}

/// A child process that does not outlive a failing test.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn redis_down_answers_503_and_readyz_names_it() {
    // A private Redis on a free port, so that it can be stopped under the server.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut redis = KillOnDrop(
        std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/services.sh installs it)"),
    );
    let url = format!("redis://127.0.0.1:{port}");
    let mut t = None;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            t = Some(TestQueue::on(&url, &[]).await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = Server::on_queue(Options::default(), t.expect("the private Redis answers")).await;
    let (st, _) = s.get("/api/v1/queue/stats").await;
    assert_eq!(st, StatusCode::OK);
    redis.0.kill().unwrap();
    redis.0.wait().unwrap();
    let (st, body) = s.get("/api/v1/queue/stats").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "redis_unavailable");
    let (st, body) = s.get("/readyz").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["checks"][0]["name"], "redis");
    assert_eq!(body["checks"][0]["ok"], false, "{body}");
    assert_eq!(body["checks"][1]["ok"], true, "{body}");
    let (_, metrics) = s.get_text("/metrics").await;
    assert!(metrics.contains("atr_dist_redis_up 0"), "{metrics}");
    s.stop().await;
}

#[tokio::test]
async fn dashboard_escapes_job_data() {
    let s = Server::start(Options::default()).await;
    let evil = "<script>alert(1)</script>";
    let id = unique_name("evil\"><img src=x onerror=alert(2)>");
    s.queue()
        .enqueue_raw(&[RawJob {
            id: id.clone(),
            idempotency_key: unique_name("evil"),
            // Kind and platform are shown as the envelope has them, valid or not.
            envelope:
                json!({"v": 1, "kind": evil, "payload": {"distribution": {"platform": evil}}})
                    .to_string(),
            run_at: None,
            max_attempts: 1,
        }])
        .await
        .unwrap();
    for path in ["/", "/jobs", "/partials/jobs"] {
        let r = s.client.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        let page = r.text().await.unwrap();
        assert!(
            !page.contains(evil),
            "{path} shows job data unescaped:\n{page}"
        );
        assert!(!page.contains("<img src=x"), "{path}:\n{page}");
        assert!(
            page.contains("&lt;script&gt;"),
            "{path} lacks the job:\n{page}"
        );
    }
    let r = s
        .client
        .get(s.url(&format!("/jobs/{}", urlencode(&id))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let page = r.text().await.unwrap();
    assert!(
        !page.contains(evil) && page.contains("&lt;script&gt;"),
        "{page}"
    );
    s.stop().await;
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Records an attempt as the pipeline would have.
async fn record_attempt(
    db: &DatabaseConnection,
    job: &str,
    attempt: i32,
    outcome: &str,
    message: &str,
    revision_diff: Option<Value>,
) {
    let now = Utc::now();
    let failed = matches!(outcome, "failed" | "revision_changed");
    job_run::ActiveModel {
        job_id: Set(job.to_owned()),
        kind: Set("stage".to_owned()),
        release_key: Set("example-1.0.0".to_owned()),
        platform: Set(Platform::Npm),
        owner_namespace: Set(String::new()),
        package: Set("pkg-1".to_owned()),
        version: Set("1.0.0".to_owned()),
        attempt: Set(attempt),
        started_at: Set(now),
        finished_at: Set(Some(now)),
        outcome: Set(Some(outcome.to_owned())),
        error_class: Set(failed.then(|| "permanent".to_owned())),
        message: Set(Some(message.to_owned())),
        duration_ms: Set(Some(7)),
        revision_diff: Set(revision_diff),
        ..Default::default()
    }
    .insert(db)
    .await
    .unwrap();
}

/// Leases the next job and acks it with `outcome`.
async fn attempt_with(q: &Queue, outcome: AckOutcome) {
    let leased = q
        .fetch("test-worker", Duration::from_secs(30), 1)
        .await
        .unwrap();
    q.ack(&[Ack {
        lease: leased[0].lease(),
        outcome,
        result: String::new(),
    }])
    .await
    .unwrap();
}

/// The `<tr>` of job `id` in a jobs table.
fn job_row<'a>(page: &'a str, id: &str) -> &'a str {
    let start = page
        .find(&format!("data-job-id=\"{id}\""))
        .unwrap_or_else(|| panic!("no row for {id}:\n{page}"));
    let end = start + page[start..].find("</tr>").unwrap();
    &page[start..end]
}

/// Current state first, history in the attempts, only failures in red; a changed revision at
/// the top of its job's page; each promotion's chain on the release page.
#[tokio::test]
async fn pages_tell_the_current_state_and_keep_history_apart() {
    let spec = Spec::new();
    let s = Server::start(Options::default()).await;
    let q = s.queue().clone();

    // A job that failed once, then succeeded.
    let recovered = q.enqueue(&jobs::stage(1), None, 3).await.unwrap().id;
    attempt_with(
        &q,
        AckOutcome::Retry {
            delay: Duration::ZERO,
            class: ErrorClass::Transient,
            message: "503 from the registry".into(),
        },
    )
    .await;
    attempt_with(&q, AckOutcome::Done).await;
    record_attempt(
        &s.db,
        &recovered,
        1,
        "failed",
        "503 from the registry",
        None,
    )
    .await;
    record_attempt(
        &s.db,
        &recovered,
        2,
        "completed",
        "staged pkg-1 under rc",
        None,
    )
    .await;
    record_attempt(
        &s.db,
        &recovered,
        3,
        "dry_run",
        "dry run: would stage pkg-1",
        None,
    )
    .await;

    let (st, body) = s.get(&format!("/api/v1/jobs/{recovered}")).await;
    spec.check("get", "/api/v1/jobs/{id}", st, &body);
    assert_eq!(body["job"]["state"], "done");
    assert_eq!(body["job"]["last_error"], Value::Null, "{body}");
    assert_eq!(body["job"]["error_class"], Value::Null, "{body}");
    assert_eq!(body["attempts"][0]["message"], "503 from the registry");

    let (st, page) = s.get_text(&format!("/jobs/{recovered}")).await;
    assert_eq!(st, StatusCode::OK);
    assert!(!page.contains("id=\"last-error\""), "{page}");
    assert!(
        page.contains("1 failed attempt(s) before it succeeded"),
        "{page}"
    );
    assert!(
        page.contains("<td class=\"error-text\">503 from the registry</td>"),
        "{page}"
    );
    assert!(page.contains("<td>staged pkg-1 under rc</td>"), "{page}");
    assert!(
        page.contains("<td>dry run: would stage pkg-1</td>"),
        "{page}"
    );
    let (_, list) = s.get_text("/partials/jobs?state=done").await;
    let row = job_row(&list, &recovered);
    // (Not `contains("503")`: a job id's hex digits may hold it.)
    assert!(
        !row.contains("503 from the registry") && !row.contains("error-text"),
        "{row}"
    );

    // A promote refused for a changed revision.
    let refused = q.enqueue(&jobs::stage(2), None, 3).await.unwrap().id;
    let why = "the voted revision's files differ from the staged ones (added: NEW.txt; removed: OLD.txt); nothing was promoted";
    attempt_with(
        &q,
        AckOutcome::Dead {
            class: ErrorClass::Permanent,
            message: why.into(),
        },
    )
    .await;
    let diff = json!({"added": ["NEW.txt"], "removed": ["OLD.txt"], "changed": []});
    record_attempt(&s.db, &refused, 1, "revision_changed", why, Some(diff)).await;
    let (st, body) = s.get(&format!("/api/v1/jobs/{refused}")).await;
    spec.check("get", "/api/v1/jobs/{id}", st, &body);
    assert_eq!(
        body["attempts"][0]["revision_diff"]["added"],
        json!(["NEW.txt"])
    );
    assert_eq!(
        body["attempts"][0]["revision_diff"]["removed"],
        json!(["OLD.txt"])
    );
    let (_, page) = s.get_text(&format!("/jobs/{refused}")).await;
    let panel = page
        .find("id=\"revision-changed\"")
        .unwrap_or_else(|| panic!("no revision-changed panel:\n{page}"));
    assert!(
        panel < page.find("Summary").unwrap(),
        "shown first:\n{page}"
    );
    assert!(
        page.contains("<ul data-diff=\"added\"><li class=\"mono\">NEW.txt</li></ul>"),
        "{page}"
    );
    assert!(
        page.contains("<ul data-diff=\"removed\"><li class=\"mono\">OLD.txt</li></ul>"),
        "{page}"
    );
    assert!(!page.contains("data-diff=\"changed\""), "{page}");
    let (_, list) = s.get_text("/partials/jobs?state=dead").await;
    assert!(job_row(&list, &refused).contains("class=\"error-text\""));

    // The release page: each promotion's chain, and only failed attempts in red.
    insert_release_rows(&s.db, "example-1.0.0").await;
    let (st, body) = s.get("/api/v1/releases/example-1.0.0/distributions").await;
    spec.check(
        "get",
        "/api/v1/releases/{release_key}/distributions",
        st,
        &body,
    );
    let promoted = body["distributions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["package"] == "example-promoted")
        .unwrap();
    assert_eq!(promoted["voted_revision_key"], "example-1.0.0 00002");
    assert_eq!(
        promoted["promoted_digest"],
        "sha512-example-promoted-digest"
    );
    let (_, page) = s.get_text("/releases/example-1.0.0").await;
    let chain = &page[page
        .find("id=\"promotions\"")
        .unwrap_or_else(|| panic!("no promotions:\n{page}"))..];
    let row = &chain[chain.find("data-package=\"example-promoted\"").unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains("example-1.0.0 00002"), "{row}");
    assert!(
        row.contains("title=\"sha512-example-promoted-digest\""),
        "{row}"
    );
    assert!(
        !chain.contains("data-package=\"example-staged\""),
        "a staged distribution has no promotion"
    );
    assert!(
        page.contains("<td>dry run: would stage pkg-1</td>"),
        "{page}"
    );
    assert!(
        page.contains("<td class=\"error-text\">503 from the registry</td>"),
        "{page}"
    );
    s.stop().await;
}
