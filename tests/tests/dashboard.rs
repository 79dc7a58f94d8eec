//! The dashboard in a real browser: Debian's headless Chromium, driven over WebDriver by
//! chromedriver on a free loopback port, against the real server over a real Redis queue and
//! SQLite, with a worker pool running a test handler. Install both with
//! scripts/install-test-servers.sh (scripts/test does).
//!
//! The first test leaves a screenshot of the overview in
//! `${ATR_DIST_ARTIFACTS:-target/artifacts}/dashboard.png` for CI to keep.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use atr_dist::config::Config;
use atr_dist::http::{self, AppState, HttpError};
use atr_dist::queue::Queue;
use atr_dist::queue::pool::{Completion, JobError, RunningJob};
use atr_dist::secret::Secret;
use atr_dist_shared::entities::job_run;
use atr_dist_shared::{JobState, Platform};
use atr_dist_tests::cases::{FAST_RETRY, FnHandler, RunningPool, eventually, pool_config};
use atr_dist_tests::jobs;
use atr_dist_tests::redis_support::TestQueue;
use atr_dist_tests::{SqliteDatabase, free_port};
use chrono::Utc;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use sea_orm::{ActiveModelTrait, DatabaseConnection, Set};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "dashboard-admin-token-0123456789";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The browser itself, not Debian's /usr/bin/chromium wrapper script.
const CHROMIUM: &str = "/usr/lib/chromium/chromium";
const WAIT: Duration = Duration::from_secs(10);

struct Server {
    base: String,
    t: TestQueue,
    db: DatabaseConnection,
    shutdown: CancellationToken,
    join: Option<JoinHandle<Result<(), HttpError>>>,
    _sqlite: SqliteDatabase,
}

impl Server {
    async fn start() -> Server {
        let t = TestQueue::new().await;
        let sqlite = SqliteDatabase::create();
        let db = atr_dist::db::connect(&Secret::new(sqlite.url.clone()), 4)
            .await
            .unwrap();
        atr_dist::db::migrate_up(&db).await.unwrap();
        let mut config = Config::default();
        config.http.admin_token = Some(Secret::new(TOKEN));
        config.http.open_reads = Some(true);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let state = AppState::new(t.queue.clone(), db.clone(), &config, shutdown.clone());
        let join = tokio::spawn(http::serve(listener, state));
        Server {
            base,
            t,
            db,
            shutdown,
            join: Some(join),
            _sqlite: sqlite,
        }
    }

    fn queue(&self) -> &Queue {
        &self.t.queue
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(join) = self.join.take() {
            tokio::time::timeout(WAIT, join)
                .await
                .expect("the server stops, open event streams included")
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

/// chromedriver and one headless Chromium session, with a fresh profile.
struct Browser {
    client: Option<Client>,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        for program in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(program).exists(),
                "{program} is missing: run scripts/install-test-servers.sh (Debian's chromium and chromium-driver)"
            );
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Browser {
            client: None,
            driver,
            _profile: profile,
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not listen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1400,1000",
            &format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": CHROMIUM, "args": args }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session through chromedriver");
        browser.client = Some(client);
        browser
    }

    fn c(&self) -> &Client {
        self.client.as_ref().expect("session open")
    }

    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Waits until the element at `css` has `data-state` = `state`, finding it again each time
/// (live updates replace the fragments it lives in).
async fn wait_for_state(c: &Client, css: &str, state: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = None;
    loop {
        if let Ok(el) = c.find(Locator::Css(css)).await {
            seen = el.attr("data-state").await.ok().flatten();
            if seen.as_deref() == Some(state) {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{css} never showed {state} (last seen: {seen:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_text(c: &Client, css: &str, text: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(el) = c.find(Locator::Css(css)).await
            && el.text().await.is_ok_and(|t| t.contains(text))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{css} never read {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn row(id: &str) -> String {
    format!("tr[data-job-id=\"{id}\"]")
}

fn artifacts_dir() -> PathBuf {
    match std::env::var_os("ATR_DIST_ARTIFACTS") {
        Some(dir) => PathBuf::from(dir),
        None => atr_dist_tests::checkout_path("../target/artifacts"),
    }
}

/// Attempts in the results database, so the overview's per-platform table has rows.
async fn record_attempts(db: &DatabaseConnection) {
    let now = Utc::now();
    for (i, (platform, outcome)) in [
        (Platform::Npm, "completed"),
        (Platform::Npm, "completed"),
        (Platform::Npm, "failed"),
        (Platform::DockerHub, "completed"),
        (Platform::Pypi, "revision_changed"),
    ]
    .into_iter()
    .enumerate()
    {
        job_run::ActiveModel {
            job_id: Set(format!("0190f5d2-0000-7000-8000-00000000000{i}")),
            kind: Set("stage".to_owned()),
            release_key: Set("example-1.0.0".to_owned()),
            platform: Set(platform),
            owner_namespace: Set(String::new()),
            package: Set("example".to_owned()),
            version: Set("1.0.0".to_owned()),
            attempt: Set(1),
            started_at: Set(now - chrono::Duration::minutes(i as i64)),
            finished_at: Set(Some(now)),
            outcome: Set(Some(outcome.to_owned())),
            duration_ms: Set(Some(250)),
            ..Default::default()
        }
        .insert(db)
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_moves_from_queued_to_done_live() {
    let server = Server::start().await;
    let q = server.queue().clone();
    record_attempts(&server.db).await;
    // Some history for the chart: jobs done, and one that fails for good.
    let pool = RunningPool::start(
        &q,
        FnHandler(|job: RunningJob| async move {
            if job.envelope.distribution().package.as_str() == "pkg-13" {
                return Err(JobError::permanent(
                    "403 from the registry: token lacks publish",
                ));
            }
            Ok(Completion::Done)
        }),
        pool_config(4, FAST_RETRY),
    );
    let history: Vec<_> = (10..20).map(jobs::stage).collect();
    q.enqueue_bulk(&history, None, 3).await.unwrap();
    eventually("history done", WAIT, || async {
        let s = q.stats().await.unwrap();
        s.counts[&JobState::Done] == 9 && s.counts[&JobState::Dead] == 1
    })
    .await;

    let browser = Browser::start().await;
    let c = browser.c();
    q.pause().await.unwrap();
    c.goto(&format!("{}/jobs", server.base)).await.unwrap();
    wait_for_text(c, "#live-status", "Live").await;
    // A marker that a reload would wipe.
    c.execute("window.notReloaded = true; return true;", vec![])
        .await
        .unwrap();

    let job = q.enqueue(&jobs::stage(1), None, 3).await.unwrap();
    wait_for_state(c, &row(&job.id), "queued").await;
    q.resume().await.unwrap();
    wait_for_state(c, &row(&job.id), "done").await;
    let marker = c
        .execute("return window.notReloaded === true;", vec![])
        .await
        .unwrap();
    assert_eq!(marker, json!(true), "the page was reloaded");

    // The overview, for the eyes: counts, chart, per-platform tallies, latest jobs.
    c.goto(&format!("{}/", server.base)).await.unwrap();
    wait_for_text(c, "#live-status", "Live").await;
    let done = c
        .find(Locator::Css("[data-count=\"done\"]"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(done, "10");
    assert!(
        c.find(Locator::Css("svg.chart rect.bar-done"))
            .await
            .is_ok(),
        "the chart shows the jobs done"
    );
    // Attempts are labelled as attempts, not to be read as jobs beside the job counts.
    let headers = c
        .execute(
            "return [...document.querySelectorAll('th')].map(th => th.textContent.trim());",
            vec![],
        )
        .await
        .unwrap();
    let headers: Vec<String> = serde_json::from_value(headers).unwrap();
    assert!(
        headers.iter().any(|h| h == "Failed attempts"),
        "{headers:?}"
    );
    assert!(
        !headers.iter().any(|h| h == "Failed" || h == "Succeeded"),
        "{headers:?}"
    );
    let png = c.screenshot().await.unwrap();
    let dir = artifacts_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dashboard.png"), &png).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");

    browser.close().await;
    pool.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_job_is_retried_from_its_button() {
    let server = Server::start().await;
    let q = server.queue().clone();
    let failing = Arc::new(AtomicBool::new(true));
    let fail = Arc::clone(&failing);
    let pool = RunningPool::start(
        &q,
        FnHandler(move |_job: RunningJob| {
            let fail = fail.load(Ordering::SeqCst);
            async move {
                if fail {
                    Err(JobError::permanent("404 <b>no such package</b>"))
                } else {
                    Ok(Completion::Done)
                }
            }
        }),
        pool_config(2, FAST_RETRY),
    );
    let job = q.enqueue(&jobs::stage(1), None, 3).await.unwrap();
    eventually("the job is dead", WAIT, || async {
        q.stats().await.unwrap().counts[&JobState::Dead] == 1
    })
    .await;
    failing.store(false, Ordering::SeqCst);
    // Paused, so that the page can be seen showing the job queued before it runs.
    q.pause().await.unwrap();

    let browser = Browser::start().await;
    let c = browser.c();
    c.goto(&format!("{}/jobs", server.base)).await.unwrap();
    wait_for_state(c, &row(&job.id), "dead").await;
    wait_for_text(c, &row(&job.id), "404 <b>no such package</b>").await;
    let retry = format!("{} button[data-action=\"retry\"]", row(&job.id));

    // A wrong token first: refused, and the page asks again.
    c.find(Locator::Css(&retry))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let input = c.find(Locator::Css("#token-input")).await.unwrap();
    input.send_keys("not-the-admin-token").await.unwrap();
    c.find(Locator::Css("#token-save"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(c, "#token-error", "That token was refused").await;
    let input = c.find(Locator::Css("#token-input")).await.unwrap();
    input.send_keys(TOKEN).await.unwrap();
    c.find(Locator::Css("#token-save"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    wait_for_state(c, &row(&job.id), "queued").await;
    wait_for_text(c, "#flash", "queued again").await;
    let kept = c
        .execute(
            "return sessionStorage.getItem('atr-dist-admin-token');",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(kept, json!(TOKEN), "the token is kept for the tab");
    q.resume().await.unwrap();
    wait_for_state(c, &row(&job.id), "done").await;

    // The attempts as the pipeline records them, at the times the queue saw: the first
    // run's one attempt failed, the retry's first attempt succeeded.
    let shown = q.show(&job.id).await.unwrap().unwrap();
    let at = |name: &str| {
        shown
            .events
            .iter()
            .find(|e| e.event == name)
            .and_then(|e| e.at)
            .unwrap()
    };
    let ms = chrono::Duration::milliseconds;
    for (started, finished, outcome, message) in [
        (
            (at("dead") - ms(2)).max(shown.summary.enqueued_at.unwrap()),
            at("dead") - ms(1),
            "failed",
            "404 no such package",
        ),
        (
            shown.summary.started_at.unwrap(),
            shown.summary.finished_at.unwrap(),
            "completed",
            "staged pkg-1",
        ),
    ] {
        job_run::ActiveModel {
            job_id: Set(job.id.clone()),
            kind: Set("stage".to_owned()),
            release_key: Set("example-1.0.0".to_owned()),
            platform: Set(Platform::Npm),
            owner_namespace: Set(String::new()),
            package: Set("pkg-1".to_owned()),
            version: Set("1.0.0".to_owned()),
            attempt: Set(1),
            started_at: Set(started),
            finished_at: Set(Some(finished)),
            outcome: Set(Some(outcome.to_owned())),
            message: Set(Some(message.to_owned())),
            duration_ms: Set(Some(1)),
            ..Default::default()
        }
        .insert(&server.db)
        .await
        .unwrap();
    }

    // The job's page tells the story: one timeline, in the order things happened, and the
    // retry's attempt told from the first run's.
    c.goto(&format!("{}/jobs/{}", server.base, job.id))
        .await
        .unwrap();
    wait_for_state(c, ".job-head", "done").await;
    let v = c
        .execute(
            "return [...document.querySelectorAll('ol.timeline > li')].map(li => [li.dataset.event, li.querySelector('time') ? li.querySelector('time').getAttribute('datetime') : '', li.textContent]);",
            vec![],
        )
        .await
        .unwrap();
    let timeline: Vec<(String, String, String)> = serde_json::from_value(v).unwrap();
    let events: Vec<&str> = timeline.iter().map(|(e, _, _)| e.as_str()).collect();
    assert_eq!(
        events,
        [
            "enqueued",
            "attempt_started",
            "failed",
            "dead",
            "retried",
            "attempt_started",
            "completed",
            "done"
        ],
        "{timeline:#?}"
    );
    let times: Vec<chrono::DateTime<Utc>> = timeline
        .iter()
        .map(|(_, t, _)| t.parse().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{timeline:#?}");
    assert!(
        timeline[2].2.contains("(run 1, attempt 1)"),
        "{timeline:#?}"
    );
    assert!(
        timeline[6].2.contains("(run 2, attempt 1)"),
        "{timeline:#?}"
    );
    let runs = c
        .execute(
            "return [...document.querySelectorAll('table tbody tr')].map(tr => [...tr.cells].slice(0, 2).map(td => td.textContent.trim()));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(runs, json!([["1", "1"], ["2", "1"]]), "run and attempt");

    // The header's search finds the job by its short id, as the tables show it.
    let other = q.enqueue(&jobs::stage(2), None, 3).await.unwrap();
    let short = atr_dist::queue::short_id(&job.id);
    c.goto(&format!("{}/jobs", server.base)).await.unwrap();
    let shown = c
        .find(Locator::Css(&format!("{} a.mono", row(&job.id))))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(shown, short);
    let find = c.find(Locator::Css("#find-id")).await.unwrap();
    find.send_keys(&format!("{short}\u{E007}")).await.unwrap();
    wait_for_state(c, ".job-head", "done").await;
    let found = c
        .find(Locator::Css(".job-head"))
        .await
        .unwrap()
        .attr("data-job-id")
        .await
        .unwrap();
    assert_eq!(found.as_deref(), Some(job.id.as_str()));
    // A start both ids share asks which one.
    c.goto(&format!("{}/find?id={}", server.base, &other.id[..6]))
        .await
        .unwrap();
    wait_for_text(c, "#ambiguous", "more than one job's id").await;
    for id in [&job.id, &other.id] {
        assert!(
            c.find(Locator::Css(&format!("a[href=\"/jobs/{id}\"]")))
                .await
                .is_ok(),
            "{id} is offered"
        );
    }

    browser.close().await;
    pool.stop().await;
    server.stop().await;
}

/// The texts the page shows in red (`.error-text`), in document order.
async fn red_texts(c: &Client) -> Vec<String> {
    let v = c
        .execute(
            "return [...document.querySelectorAll('.error-text')].map(e => e.textContent.trim()).filter(t => t.length > 0);",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_done_after_a_failure_shows_the_failure_as_history() {
    let server = Server::start().await;
    let q = server.queue().clone();
    let pool = RunningPool::start(
        &q,
        FnHandler(|job: RunningJob| async move {
            if job.attempt == 1 {
                return Err(JobError::transient("503 from the registry"));
            }
            Ok(Completion::Done)
        }),
        pool_config(2, FAST_RETRY),
    );
    let job = q.enqueue(&jobs::stage(1), None, 3).await.unwrap();
    eventually("the job is done", WAIT, || async {
        q.stats().await.unwrap().counts[&JobState::Done] == 1
    })
    .await;
    // The attempts as the pipeline records them.
    let now = Utc::now();
    let dry_run = "0190f5d2-0000-7000-8000-0000000000d7".to_owned();
    for (job_id, attempt, outcome, class, message) in [
        (
            &job.id,
            1,
            "failed",
            Some("transient"),
            "503 from the registry",
        ),
        (&job.id, 2, "completed", None, "staged pkg-1 under rc"),
        (&dry_run, 1, "dry_run", None, "would upload pkg-2"),
    ] {
        job_run::ActiveModel {
            job_id: Set(job_id.clone()),
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
            error_class: Set(class.map(str::to_owned)),
            message: Set(Some(message.to_owned())),
            duration_ms: Set(Some(250)),
            ..Default::default()
        }
        .insert(&server.db)
        .await
        .unwrap();
    }

    let browser = Browser::start().await;
    let c = browser.c();
    c.goto(&format!("{}/jobs", server.base)).await.unwrap();
    wait_for_state(c, &row(&job.id), "done").await;
    let listed = c
        .find(Locator::Css(&row(&job.id)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !listed.contains("503 from the registry"),
        "the list shows history as current: {listed}"
    );
    assert!(red_texts(c).await.is_empty(), "{:?}", red_texts(c).await);

    c.goto(&format!("{}/jobs/{}", server.base, job.id))
        .await
        .unwrap();
    wait_for_state(c, ".job-head", "done").await;
    assert!(c.find(Locator::Css("#last-error")).await.is_err());
    wait_for_text(
        c,
        "#earlier-failures",
        "1 failed attempt(s) before it succeeded",
    )
    .await;
    // Red only where something failed: the failed attempt and the retry it caused.
    let red = red_texts(c).await;
    assert!(!red.is_empty(), "the failed attempt is shown");
    assert!(
        red.iter().all(|t| t.starts_with("503 from the registry")),
        "{red:?}"
    );

    // The release page: a dry run and a success are not errors; the failure is.
    c.goto(&format!("{}/releases/example-1.0.0", server.base))
        .await
        .unwrap();
    wait_for_text(c, "main", "would upload pkg-2").await;
    assert_eq!(red_texts(c).await, ["503 from the registry"]);

    browser.close().await;
    pool.stop().await;
    server.stop().await;
}
