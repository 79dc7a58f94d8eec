//! Secrets stay secret through a whole run: a worker with known values for every secret it
//! takes (database and Redis passwords, the admin token, a platform token) runs a job against
//! a platform that echoes the request's credentials back in its error, the worst case; then
//! its logs, the CLI's output, `atr-dist config`, the dashboard and API, /metrics, every
//! key of the queue in Redis and every row of the database are searched for each secret,
//! as is and in the encodings it travels in. Built with the `otel` feature (scripts/test
//! runs it so too), the spans the worker exports over OTLP are searched as well.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use redis::Commands;
use rustix::process::{Pid, Signal, kill_process};
use sea_orm::{ConnectionTrait, Database, Statement};
use support::{PgDatabase, atr_dist, free_port};

const DB_PASSWORD: &str = "dbpw-SECRET-0b6f21c9d4";
const REDIS_PASSWORD: &str = "redispw-SECRET-9a7e3c51f8";
const ADMIN_TOKEN: &str = "admin-SECRET-5c2d8e4f7a1b3690";
const NPM_TOKEN: &str = "npm_SECRET_e41f07b2c93d";

/// A platform that refuses every request with 401 and quotes the request's Authorization
/// header back in its body, as a careless error page might. Records what it was sent.
fn echoing_platform() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut authorization = String::new();
            let mut length = 0usize;
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                let header = line.trim_end().to_owned();
                line.clear();
                if header.is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':') {
                    match name.to_ascii_lowercase().as_str() {
                        "authorization" => authorization = value.trim().to_owned(),
                        "content-length" => length = value.trim().parse().unwrap_or(0),
                        _ => {}
                    }
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            record.lock().unwrap().push(authorization.clone());
            let answer = format!(
                "{{\"error\":\"invalid credentials: {authorization}\",\"hint\":\"you sent {authorization}\"}}"
            );
            let _ = write!(
                stream,
                "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nWWW-Authenticate: Bearer\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (port, seen)
}

/// An OTLP/HTTP trace receiver: answers every export with 200 and keeps the bodies
/// (protobuf, in which strings are their UTF-8 bytes, so a secret would be found in them).
#[cfg(feature = "otel")]
fn trace_receiver() -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&bodies);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            // Keep-alive: one request after another on the connection, until it closes.
            loop {
                let mut length = 0usize;
                let mut line = String::new();
                let mut any = false;
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    any = true;
                    let header = line.trim_end().to_owned();
                    line.clear();
                    if header.is_empty() {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
                if !any {
                    break;
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    break;
                }
                record.lock().unwrap().extend_from_slice(&body);
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
                );
            }
        }
    });
    (port, bodies)
}

/// A Redis of this test's own, with a password, on a free loopback port.
struct PrivateRedis {
    child: Child,
    port: u16,
}

impl PrivateRedis {
    fn start() -> PrivateRedis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--port", &port.to_string(), "--requirepass", REDIS_PASSWORD])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server installed (scripts/services.sh)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        PrivateRedis { child, port }
    }

    fn url(&self) -> String {
        format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The worker, killed if the test fails before stopping it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every form a secret travels in, as the worker sends it.
fn forms(secret: &str) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    vec![
        secret.to_owned(),
        b64.encode(secret),
        b64.encode(format!("__token__:{secret}")),
    ]
}

/// The configuration, through the environment and secret files as a deployment gives it.
fn configure(cmd: &mut Command, dir: &Path, db: &str, redis_port: u16, http: u16, npm: u16) {
    for (name, value) in [
        ("db", DB_PASSWORD),
        ("redis", REDIS_PASSWORD),
        ("admin", ADMIN_TOKEN),
        ("npm", NPM_TOKEN),
    ] {
        std::fs::write(dir.join(name), format!("{value}\n")).unwrap();
    }
    cmd.current_dir(dir)
        .env("ATR_DIST_DATABASE__URL", db)
        .env("ATR_DIST_DATABASE__PASSWORD_FILE", dir.join("db"))
        .env(
            "ATR_DIST_REDIS__URL",
            format!("redis://127.0.0.1:{redis_port}"),
        )
        .env("ATR_DIST_REDIS__PASSWORD_FILE", dir.join("redis"))
        .env("ATR_DIST_REDIS__QUEUE", "secrets")
        .env("ATR_DIST_HTTP__LISTEN", format!("127.0.0.1:{http}"))
        .env("ATR_DIST_HTTP__ADMIN_TOKEN_FILE", dir.join("admin"))
        .env(
            "ATR_DIST_PLATFORMS__NPM__BASE_URL",
            format!("http://127.0.0.1:{npm}"),
        )
        .env("ATR_DIST_PLATFORMS__NPM__TOKEN_FILE", dir.join("npm"))
        .env("ATR_DIST_REVISIONS__ROOT", dir.join("revisions"))
        .env("ATR_DIST_RETRY__MAX_ATTEMPTS", "2")
        .env("ATR_DIST_RETRY__BASE_MS", "100")
        .env("ATR_DIST_RETRY__CAP_MS", "200")
        .env("ATR_DIST_LOG__FORMAT", "json")
        .env("ATR_DIST_LOG__FILTER", "debug");
}

fn output_text(out: std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every value under the queue's keys, whatever their type.
fn redis_dump(url: &str) -> String {
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let keys: Vec<String> = conn.keys("atr-dist:{secrets}:*").unwrap();
    assert!(!keys.is_empty(), "the queue has keys");
    let mut out = String::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut conn).unwrap();
        let values: Vec<String> = match kind.as_str() {
            "string" => vec![conn.get(&key).unwrap()],
            "hash" => conn.hgetall::<_, Vec<String>>(&key).unwrap(),
            "list" => conn.lrange(&key, 0, -1).unwrap(),
            "set" => conn.smembers(&key).unwrap(),
            "zset" => conn.zrange(&key, 0, -1).unwrap(),
            "stream" => {
                let v: redis::Value = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .query(&mut conn)
                    .unwrap();
                vec![format!("{v:?}")]
            }
            other => panic!("{key} is a {other}"),
        };
        out.push_str(&format!("{key}: {values:?}\n"));
    }
    out
}

/// Every row of every table, as JSON text.
async fn database_dump(url: &str) -> String {
    let db = Database::connect(url).await.unwrap();
    let backend = db.get_database_backend();
    let tables = db
        .query_all_raw(Statement::from_string(
            backend,
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
        ))
        .await
        .unwrap();
    let mut out = String::new();
    for row in tables {
        let table: String = row.try_get_by_index(0).unwrap();
        let rows = db
            .query_all_raw(Statement::from_string(
                backend,
                format!("SELECT row_to_json(t)::text FROM \"{table}\" t"),
            ))
            .await
            .unwrap();
        for row in rows {
            let json: String = row.try_get_by_index(0).unwrap();
            out.push_str(&format!("{table}: {json}\n"));
        }
    }
    db.close().await.ok();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_logged_recorded_or_shown() {
    let pg = PgDatabase::create().await;
    let redis = PrivateRedis::start();
    let (npm_port, seen) = echoing_platform();
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/example-revision");
    let made = Command::new("bash")
        .arg(&example)
        .arg(dir.path().join("revisions"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", output_text(made));
    let http = free_port();
    let cli = |args: &[&str]| {
        let mut cmd = atr_dist();
        configure(&mut cmd, dir.path(), &pg.url, redis.port, http, npm_port);
        output_text(cmd.args(args).output().unwrap())
    };

    let mut worker = atr_dist();
    configure(&mut worker, dir.path(), &pg.url, redis.port, http, npm_port);
    #[cfg(feature = "otel")]
    let (traces_port, traces) = trace_receiver();
    #[cfg(feature = "otel")]
    worker.env(
        "ATR_DIST_OTLP_ENDPOINT",
        format!("http://127.0.0.1:{traces_port}/v1/traces"),
    );
    let log = std::fs::File::create(dir.path().join("worker.log")).unwrap();
    let mut worker = Running(worker.arg("run").stderr(log).spawn().unwrap());
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{http}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = client.get(format!("{base}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(Instant::now() < deadline, "the worker did not get ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut seen_by_us = String::new();
    seen_by_us += &cli(&[
        "enqueue",
        "stage",
        "--project",
        "example",
        "--release-version",
        "1.0.0",
        "--platform",
        "NPM",
        "--package",
        "example-lib",
        "--version",
        "1.0.0",
        "--revision",
        "00001",
        "--artifact",
        "example-lib-1.0.0.tgz",
        "--asf-uid",
        "rm",
        "--wait",
    ]);
    let sent = seen.lock().unwrap().clone();
    assert!(
        sent.iter().any(|a| a.contains(NPM_TOKEN)),
        "the platform was sent the token (and echoed it): {sent:?}"
    );

    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let ids: Vec<String> = conn.hkeys("atr-dist:{secrets}:jobs").unwrap();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = &ids[0];
    let last_error: Option<String> = conn.hget("atr-dist:{secrets}:last_error", id).unwrap();
    let last_error = last_error.expect("the job failed with an error");
    assert!(
        last_error.contains("invalid credentials: Bearer [redacted]"),
        "the platform's answer is kept, its echo of the token is not: {last_error}"
    );

    for args in [
        vec!["jobs", "show", id.as_str()],
        vec!["jobs", "show", id.as_str(), "--json"],
        vec!["jobs", "list", "--json"],
        vec!["queue", "stats"],
        vec!["config"],
    ] {
        seen_by_us += &cli(&args);
    }
    for path in [
        "/".to_owned(),
        "/jobs".to_owned(),
        format!("/jobs/{id}"),
        format!("/partials/jobs/{id}"),
        "/releases".to_owned(),
        "/api/v1/queue/stats".to_owned(),
        "/api/v1/jobs".to_owned(),
        format!("/api/v1/jobs/{id}"),
        "/metrics".to_owned(),
        "/readyz".to_owned(),
    ] {
        let answer = client
            .get(format!("{base}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success(), "{path}: {}", answer.status());
        seen_by_us += &answer.text().await.unwrap();
    }
    assert!(
        seen_by_us.contains("[redacted]"),
        "the job's error is shown"
    );

    kill_process(Pid::from_child(&worker.0), Signal::TERM).unwrap();
    let status = worker.0.wait().unwrap();
    assert!(status.success(), "{status}");
    let logs = std::fs::read_to_string(dir.path().join("worker.log")).unwrap();
    assert!(logs.contains("[redacted]"), "the failure is logged");

    #[allow(unused_mut)]
    let mut places = vec![
        ("the worker's log", logs),
        ("the CLI, the dashboard, the API and /metrics", seen_by_us),
        ("Redis", redis_dump(&redis.url())),
        ("the database", database_dump(&pg.url).await),
    ];
    #[cfg(feature = "otel")]
    {
        // The worker flushed its spans as it stopped: the job's are there, with the
        // failure's events in them.
        let exported = String::from_utf8_lossy(&traces.lock().unwrap()).into_owned();
        assert!(
            exported.contains(id.as_str()) && exported.contains("[redacted]"),
            "the job's spans and their failure events were exported ({} bytes)",
            exported.len()
        );
        places.push(("the exported traces", exported));
    }
    for (place, text) in &places {
        for secret in [DB_PASSWORD, REDIS_PASSWORD, ADMIN_TOKEN, NPM_TOKEN] {
            for form in forms(secret) {
                assert!(
                    !text.contains(&form),
                    "{place} shows a secret ({form}):\n{text}"
                );
            }
        }
    }
    drop(redis);
    pg.drop_now().await;
}
