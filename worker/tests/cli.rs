//! The `atr-dist` binary as a new user meets it: help, migrate on the embedded default, and
//! configuration errors that name the key.

use std::process::Command;

fn atr_dist() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_atr-dist"));
    // The caller's environment must not leak into what is being tested.
    for (key, _) in std::env::vars() {
        if key.starts_with("ATR_DIST_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd
}

#[test]
fn help_lists_the_subcommands() {
    let out = atr_dist().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for sub in [
        "run", "migrate", "enqueue", "jobs", "queue", "config", "schema",
    ] {
        assert!(text.contains(sub), "--help lacks {sub}:\n{text}");
    }
}

#[test]
fn migrate_creates_the_embedded_sqlite_database() {
    let dir = tempfile::tempdir().unwrap();
    let out = atr_dist()
        .arg("migrate")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every migration there is, on a new database.
    let all =
        <atr_dist_migrations::Migrator as atr_dist_migrations::MigratorTrait>::migrations().len();
    assert!(
        stdout.contains(&format!("applied {all} migration(s); schema is current")),
        "{stdout}"
    );
    assert!(dir.path().join("atr-dist.db").exists());

    let status = atr_dist()
        .args(["migrate", "--status"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(status.status.success());
    assert!(String::from_utf8_lossy(&status.stdout).contains("schema is current"));

    let down = atr_dist()
        .args(["migrate", "--down", "1"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(down.status.success());
    let pending = atr_dist()
        .args(["migrate", "--status"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(pending.status.code(), Some(1), "pending migrations exit 1");
}

#[test]
fn bad_configuration_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = atr_dist()
        .args(["migrate"])
        .env("ATR_DIST_WORKER__CONCURRENCY", "0")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("config key `worker.concurrency`: must be at least 1"),
        "{stderr}"
    );

    std::fs::write(
        dir.path().join("c.toml"),
        "[platforms.npm]\ntoken = \"npm_x\"\n",
    )
    .unwrap();
    let out = atr_dist()
        .args(["--config", "c.toml", "config"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("platforms.npm.token"), "{stderr}");
    assert!(!stderr.contains("npm_x"), "secret leaked: {stderr}");
}

#[test]
fn config_never_prints_secrets() {
    let out = atr_dist()
        .arg("config")
        .env("ATR_DIST_PLATFORMS__NPM__TOKEN", "npm_very_secret")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[worker]"), "{text}");
    assert!(!text.contains("npm_very_secret"), "{text}");
}

#[test]
fn schema_prints_the_published_schema() {
    let out = atr_dist().arg("schema").output().unwrap();
    assert!(out.status.success());
    // The checkout's path at run time, not the build's (see shared/tests/schema.rs).
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let published =
        std::fs::read_to_string(crate_dir.join("../docs/job-envelope.schema.json")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), published);
}

/// `atr-dist jobs list | head` must not end in a panic: output to a reader that has gone
/// ends the command quietly, with success.
#[test]
fn a_closed_pipe_ends_output_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    // The reader is gone before the command writes a byte: its first write fails.
    drop(reader);
    let out = atr_dist()
        .arg("schema")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A queue (with its own name, deleted afterwards) on the Redis the tests use, and a SQLite
/// results database in a temporary directory: what `jobs show` and `jobs list` read.
struct Operated {
    queue: atr_dist::queue::Queue,
    redis_url: String,
    database_url: String,
    db: sea_orm::DatabaseConnection,
    _dir: tempfile::TempDir,
}

impl Operated {
    async fn new() -> Operated {
        let redis_url = std::env::var("ATR_DIST_TEST_REDIS")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let name = format!("cli_{}", uuid::Uuid::new_v4().simple());
        let queue = atr_dist::queue::Queue::connect(&redis_url, &[], &name)
            .await
            .expect("Redis reachable (scripts/test starts it)");
        let dir = tempfile::tempdir().unwrap();
        let database_url = format!("sqlite://{}/atr-dist.db", dir.path().display());
        let db = atr_dist::db::connect(&atr_dist::secret::Secret::new(database_url.clone()), 1)
            .await
            .unwrap();
        atr_dist::db::migrate_up(&db).await.unwrap();
        Operated {
            queue,
            redis_url,
            database_url,
            db,
            _dir: dir,
        }
    }

    fn cli(&self, args: &[&str]) -> (Option<i32>, String) {
        let (code, stdout, stderr) = self.cli_exit(args);
        assert_eq!(code, Some(0), "{args:?}: {stdout}{stderr}");
        (code, stdout)
    }

    /// Runs the CLI on this queue and database: its exit code, stdout and stderr.
    fn cli_exit(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = atr_dist()
            .args(args)
            .env("ATR_DIST_REDIS__URL", &self.redis_url)
            .env("ATR_DIST_REDIS__QUEUE", self.queue.name())
            .env("ATR_DIST_DATABASE__URL", &self.database_url)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Enqueues a job through the CLI; returns its id.
    fn enqueue(&self, kind: &str, package: &str) -> String {
        let artifact = format!("{package}-1.0.0.tgz");
        let mut args = vec!["enqueue", kind];
        if kind == "stage" {
            args.extend(["--artifact", &artifact]);
        }
        args.extend([
            "--project",
            "example",
            "--release-version",
            "1.0.0",
            "--platform",
            "NPM",
            "--package",
            package,
            "--version",
            "1.0.0",
            "--revision",
            "00002",
            "--asf-uid",
            "rm",
            "--json",
        ]);
        let (_, out) = self.cli(&args);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["id"].as_str().unwrap().to_owned()
    }

    /// Leases the next job and acks it with `outcome`.
    async fn attempt(&self, outcome: atr_dist::queue::AckOutcome) {
        let leased = self
            .queue
            .fetch("cli-test-worker", std::time::Duration::from_secs(30), 1)
            .await
            .unwrap();
        let ack = atr_dist::queue::Ack {
            lease: leased[0].lease(),
            outcome,
            result: String::new(),
        };
        self.queue.ack(&[ack]).await.unwrap();
    }

    async fn record(
        &self,
        job: &str,
        attempt: i32,
        outcome: &str,
        message: &str,
        diff: Option<serde_json::Value>,
    ) {
        use sea_orm::{ActiveModelTrait, Set};
        let now = chrono::Utc::now();
        let failed = matches!(outcome, "failed" | "revision_changed");
        atr_dist_shared::entities::job_run::ActiveModel {
            job_id: Set(job.to_owned()),
            kind: Set("stage".to_owned()),
            release_key: Set("example-1.0.0".to_owned()),
            platform: Set(atr_dist_shared::Platform::Npm),
            owner_namespace: Set(String::new()),
            package: Set("example-pkg".to_owned()),
            version: Set("1.0.0".to_owned()),
            attempt: Set(attempt),
            started_at: Set(now),
            finished_at: Set(Some(now)),
            outcome: Set(Some(outcome.to_owned())),
            error_class: Set(failed.then(|| "permanent".to_owned())),
            message: Set(Some(message.to_owned())),
            duration_ms: Set(Some(5)),
            queue: Set(Some(self.queue.name().to_owned())),
            revision_diff: Set(diff),
            ..Default::default()
        }
        .insert(&self.db)
        .await
        .unwrap();
    }
}

impl Drop for Operated {
    fn drop(&mut self) {
        let url = self.redis_url.clone();
        let prefix = self.queue.prefix().to_owned();
        // Shards 1 and up, `atr-dist:{<queue>:<i>}:` (docs/wire-format.md, "Shards").
        let shards = format!("atr-dist:{{{}:", self.queue.name());
        let _ = std::thread::spawn(move || {
            let client = redis::Client::open(url).ok()?;
            let mut conn = client.get_connection().ok()?;
            for pattern in [prefix, shards] {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{pattern}*"))
                    .query(&mut conn)
                    .ok()?;
                if !keys.is_empty() {
                    let _: () = redis::cmd("DEL").arg(&keys).query(&mut conn).ok()?;
                }
            }
            Some(())
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_show_and_list_tell_the_current_state_first() {
    use atr_dist::queue::AckOutcome;
    use atr_dist_shared::ErrorClass;

    let o = Operated::new().await;
    // A job that failed once and then succeeded.
    let recovered = o.enqueue("stage", "example-pkg");
    o.attempt(AckOutcome::Retry {
        delay: std::time::Duration::ZERO,
        class: ErrorClass::Transient,
        message: "503 from the registry".into(),
    })
    .await;
    o.attempt(AckOutcome::Done).await;
    o.record(&recovered, 1, "failed", "503 from the registry", None)
        .await;
    o.record(&recovered, 2, "completed", "staged example-pkg", None)
        .await;
    // A promote refused because the voted revision differs from the staged one.
    let refused = o.enqueue("promote", "example-pkg");
    let why = "the voted revision's files differ from the staged ones (added: NEW.txt; changed: example-pkg-1.0.0.tgz); nothing was promoted";
    o.attempt(AckOutcome::Dead {
        class: ErrorClass::Permanent,
        message: why.into(),
    })
    .await;
    let diff = serde_json::json!({"added": ["NEW.txt"], "removed": [], "changed": ["example-pkg-1.0.0.tgz"]});
    o.record(&refused, 1, "revision_changed", why, Some(diff))
        .await;

    // The failure before the success is history: not in the job's fields, nor in the list.
    let (_, shown) = o.cli(&["jobs", "show", &recovered]);
    let (fields, rest) = shown.split_once("timeline:").unwrap();
    // The message, not "503": job ids are time-ordered, and for some 17 minutes at a time
    // every new id holds "503" (as 01a2503... did on 2026-12-07).
    assert!(!fields.contains("503 from the registry"), "{shown}");
    assert!(!fields.contains("last error"), "{shown}");
    assert!(
        fields.contains("1 failed attempt(s) before it succeeded"),
        "{shown}"
    );
    assert!(
        rest.contains("503 from the registry"),
        "the attempts keep it: {shown}"
    );
    let (_, listed) = o.cli(&["jobs", "list"]);
    let short = atr_dist::queue::short_id(&recovered);
    let line = listed.lines().find(|l| l.starts_with(short)).unwrap();
    // (A listing may shorten a message: its start is enough.)
    assert!(!line.contains("503 from"), "{listed}");
    let (_, json) = o.cli(&["jobs", "show", &recovered, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["job"]["state"], "done");
    assert_eq!(v["job"]["last_error"], serde_json::Value::Null);
    assert_eq!(v["job"]["error_class"], serde_json::Value::Null);
    assert_eq!(v["attempts"].as_array().unwrap().len(), 2, "{json}");
    assert_eq!(v["attempts"][0]["message"], "503 from the registry");

    // A changed revision comes first, path by path; and the JSON has it as data.
    let (_, shown) = o.cli(&["jobs", "show", &refused]);
    let mut lines = shown.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("REVISION CHANGED (attempt 1)"),
        "{shown}"
    );
    assert_eq!(lines.next(), Some("  added    NEW.txt"), "{shown}");
    assert_eq!(
        lines.next(),
        Some("  changed  example-pkg-1.0.0.tgz"),
        "{shown}"
    );
    let (_, json) = o.cli(&["jobs", "show", &refused, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["attempts"][0]["outcome"], "revision_changed");
    assert_eq!(
        v["attempts"][0]["revision_diff"]["added"],
        serde_json::json!(["NEW.txt"])
    );
    assert_eq!(
        v["attempts"][0]["revision_diff"]["changed"],
        serde_json::json!(["example-pkg-1.0.0.tgz"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_and_cancel_exit_codes_tell_done_from_nothing_to_do_and_not_allowed() {
    use atr_dist::queue::AckOutcome;

    let o = Operated::new().await;
    let done = o.enqueue("stage", "done-pkg");
    o.attempt(AckOutcome::Done).await;
    let waiting = o.enqueue("stage", "waiting-pkg");
    let events = |id: String| {
        let q = o.queue.clone();
        async move { q.show(&id).await.unwrap().unwrap().events.len() }
    };

    // A queued job will run: retrying it has nothing to do, and writes nothing.
    let (code, out, _) = o.cli_exit(&["jobs", "retry", &waiting]);
    assert_eq!(code, Some(5), "{out}");
    assert!(out.contains("nothing to do: it is queued already"), "{out}");
    assert_eq!(events(waiting.clone()).await, 0);
    // Cancelled now; then again, with nothing to do and no second "cancelled" event.
    let (code, out, _) = o.cli_exit(&["jobs", "cancel", &waiting]);
    assert_eq!(
        (code, out.trim()),
        (Some(0), format!("{waiting}  cancelled").as_str())
    );
    assert_eq!(events(waiting.clone()).await, 1);
    let (code, out, _) = o.cli_exit(&["jobs", "cancel", &waiting]);
    assert_eq!(code, Some(5), "{out}");
    assert_eq!(events(waiting.clone()).await, 1);
    // A done job can be neither retried nor cancelled: 4, also beside jobs that changed.
    let (code, out, _) = o.cli_exit(&["jobs", "cancel", &done]);
    assert_eq!(code, Some(4), "{out}");
    assert!(out.contains("not allowed: it is done"), "{out}");
    let (code, out, _) = o.cli_exit(&["jobs", "retry", &waiting, &done]);
    assert_eq!(code, Some(4), "{out}");
    assert!(out.contains(&format!("{waiting}  queued again")), "{out}");
    // The API's page limits, refused the same way (`PageLimit`).
    for limit in ["0", "5000", "many"] {
        let (code, _, err) = o.cli_exit(&["jobs", "list", "--limit", limit]);
        assert_eq!(code, Some(2), "--limit {limit}: {err}");
        assert!(err.contains("is not a number from 1 to 1000"), "{err}");
    }
    let (_, listed) = o.cli(&["jobs", "list", "--limit", "1"]);
    assert!(listed.contains("more: --cursor"), "{listed}");
    // Short ids (as `jobs list` shows them) and starts of ids name jobs; a start that more
    // than one id shares is bad input, and nothing is done.
    let short = atr_dist::queue::short_id(&done);
    let (code, out, _) = o.cli_exit(&["jobs", "show", short]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&done), "{out}");
    let (code, out, _) = o.cli_exit(&["jobs", "cancel", short]);
    assert_eq!(code, Some(4), "{out}");
    assert!(out.starts_with(&done), "the full id is shown: {out}");
    let (code, _, err) = o.cli_exit(&["jobs", "retry", &waiting[..6], &done[..6]]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("more than one job's id"), "{err}");
    assert!(err.contains(&done) && err.contains(&waiting), "{err}");
    let (code, _, _) = o.cli_exit(&["jobs", "show", "ffffeeee"]);
    assert_eq!(code, Some(3));
    // An unknown job is 3, whatever else the command did.
    let nope = "0190f5d2-0000-7000-8000-0000000000ff";
    let (code, out, _) = o.cli_exit(&["jobs", "cancel", &waiting, nope]);
    assert_eq!(code, Some(3), "{out}");
}

#[test]
fn help_lists_the_exit_codes() {
    let out = atr_dist().arg("--help").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Exit codes:"), "{text}");
    for line in [
        "0  success",
        "2  bad usage, input or configuration",
        "3  the job asked for does not exist",
        "4  retry, cancel: some given job is in a state that does not allow it",
        "5  retry, cancel: nothing to do for some given job",
    ] {
        assert!(text.contains(line), "--help lacks {line:?}:\n{text}");
    }
    // The README lists the same codes.
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let readme = std::fs::read_to_string(crate_dir.join("../README.md")).unwrap();
    assert!(
        readme.contains(atr_dist::cli::EXIT_CODES),
        "README.md lacks the exit codes of --help"
    );
}

/// The README's two commands, `cargo run -- run` and `scripts/test`, build into one target
/// directory with one profile, so that a newcomer compiles the dependencies once; `.ci/run`'s
/// `CARGO_TARGET_DIR` still decides for both when it is set.
#[test]
fn the_readme_commands_share_one_build() {
    let crate_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let read = |path: &str| std::fs::read_to_string(crate_dir.join("..").join(path)).unwrap();
    let readme = read("README.md");
    let sh_blocks: Vec<&str> = readme
        .split("```sh\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .collect();
    let runs: Vec<&str> = sh_blocks
        .iter()
        .flat_map(|b| b.lines())
        .filter(|l| l.starts_with("cargo run"))
        .collect();
    assert!(!runs.is_empty());
    for line in runs {
        assert!(
            line.starts_with("cargo run -- "),
            "a README command builds another profile: {line}"
        );
    }
    assert!(sh_blocks.iter().any(|b| b.contains("scripts/test")));
    assert!(
        readme.contains("the first build takes about"),
        "the README says how long the first build takes"
    );
    let test_script = read("scripts/test");
    assert!(
        !test_script.contains("CARGO_TARGET_DIR="),
        "scripts/test must build where `cargo run` does, unless CARGO_TARGET_DIR is set"
    );
    assert!(read(".ci/run").contains("CARGO_TARGET_DIR=\"${CARGO_TARGET_DIR:-"));
}

#[test]
fn config_lists_the_enabled_platforms_and_why() {
    let out = atr_dist().arg("config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("#   NPM          disabled: not configured: set [platforms.npm] base_url"),
        "{text}"
    );
    let out = atr_dist()
        .arg("config")
        .env(
            "ATR_DIST_PLATFORMS__NPM__BASE_URL",
            "http://127.0.0.1:4873/",
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("#   NPM          enabled: base_url = http://127.0.0.1:4873/"),
        "{text}"
    );
    assert!(text.contains("#   NPM_SCOPED   disabled"), "{text}");
}

/// A queue of its own on the local Redis, deleted at the end whatever happens.
struct TestQueue {
    name: String,
}

impl TestQueue {
    fn new(tag: &str) -> TestQueue {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        TestQueue {
            name: format!("cli-{tag}-{}-{nanos}", std::process::id()),
        }
    }
}

impl Drop for TestQueue {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open("redis://127.0.0.1:6379/") else {
            return;
        };
        let Ok(mut conn) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("atr-dist:{{{}}}:*", self.name))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `--artifact-dir` names an OCI image layout's files; enqueuing the same job again says
/// which job the key names and how to run it again.
#[test]
fn enqueue_lists_a_layout_and_says_when_the_key_names_a_job() {
    let queue = TestQueue::new("enqueue");
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("revisions/example/1.0.0/00001/img");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    for (path, body) in [
        ("index.json", "{}"),
        ("oci-layout", "{}"),
        ("blobs/sha256/bb", "b"),
        ("blobs/sha256/aa", "a"),
    ] {
        std::fs::write(layout.join(path), body).unwrap();
    }
    let enqueue = || {
        let mut cmd = atr_dist();
        cmd.current_dir(dir.path())
            .env("ATR_DIST_REDIS__QUEUE", &queue.name)
            .args([
                "enqueue",
                "stage",
                "--project",
                "example",
                "--release-version",
                "1.0.0",
                "--platform",
                "DOCKER_HUB",
                "--owner-namespace",
                "apache",
                "--package",
                "example",
                "--version",
                "1.0.0",
                "--revision",
                "00001",
                "--artifact-dir",
                "img",
                "--asf-uid",
                "rm",
            ]);
        cmd
    };
    let first = run_ok(&mut enqueue());
    assert!(first.contains("  enqueued: stage"), "{first}");
    let id = first.split_whitespace().next().unwrap().to_owned();

    let shown = run_ok(
        atr_dist()
            .current_dir(dir.path())
            .env("ATR_DIST_REDIS__QUEUE", &queue.name)
            .args(["jobs", "show", &id, "--json"]),
    );
    let detail: serde_json::Value = serde_json::from_str(&shown).unwrap();
    // `jobs show --json` prints the API's job detail: the envelope as JSON.
    let envelope = &detail["envelope"];
    assert_eq!(
        envelope["payload"]["artifacts"],
        serde_json::json!([
            "img/index.json",
            "img/oci-layout",
            "img/blobs/sha256/aa",
            "img/blobs/sha256/bb"
        ])
    );

    let again = run_ok(&mut enqueue());
    assert!(
        again.contains(&format!(
            "{id}  already enqueued as {id}, queued (enqueued "
        )),
        "{again}"
    );
    assert!(again.contains(" ago); nothing new enqueued"), "{again}");
    run_ok(
        atr_dist()
            .current_dir(dir.path())
            .env("ATR_DIST_REDIS__QUEUE", &queue.name)
            .args(["jobs", "cancel", &id]),
    );
    let ended = run_ok(&mut enqueue());
    assert!(
        ended.contains(&format!("already enqueued as {id}, cancelled ")),
        "{ended}"
    );
    assert!(
        ended.contains(" ago; pass --idempotency-key to run again"),
        "{ended}"
    );

    // A delay counts from Redis's clock: the job is scheduled an hour after its enqueue.
    let delayed = run_ok(
        atr_dist()
            .current_dir(dir.path())
            .env("ATR_DIST_REDIS__QUEUE", &queue.name)
            .args([
                "enqueue",
                "promote",
                "--project",
                "example",
                "--release-version",
                "1.0.0",
                "--platform",
                "DOCKER_HUB",
                "--owner-namespace",
                "apache",
                "--package",
                "example",
                "--version",
                "1.0.0",
                "--revision",
                "00002",
                "--asf-uid",
                "rm",
                "--delay",
                "1h",
                "--json",
            ]),
    );
    let delayed: serde_json::Value = serde_json::from_str(&delayed).unwrap();
    let delayed_id = delayed[0]["id"].as_str().unwrap();
    let shown = run_ok(
        atr_dist()
            .current_dir(dir.path())
            .env("ATR_DIST_REDIS__QUEUE", &queue.name)
            .args(["jobs", "show", delayed_id, "--json"]),
    );
    let detail: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let job = &detail["job"];
    assert_eq!(job["state"], "scheduled", "{detail}");
    let at = |field: &str| {
        chrono::DateTime::parse_from_rfc3339(job[field].as_str().unwrap())
            .unwrap()
            .timestamp()
    };
    let wait = at("run_at") - at("enqueued_at");
    assert!(
        (3599..=3601).contains(&wait),
        "run_at - enqueued_at = {wait} s"
    );

    // Not a layout: said before anything reaches the queue.
    let out = atr_dist()
        .current_dir(dir.path())
        .env("ATR_DIST_REDIS__QUEUE", &queue.name)
        .args([
            "enqueue",
            "stage",
            "--project",
            "example",
            "--release-version",
            "1.0.0",
            "--platform",
            "DOCKER_HUB",
            "--package",
            "example",
            "--version",
            "1.0.0",
            "--revision",
            "00001",
            "--artifact-dir",
            "img/blobs",
            "--asf-uid",
            "rm",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("has no index.json, so it is not an OCI image layout"),
        "{stderr}"
    );
}

/// A stage envelope for the npm package `bulk-<n>`, with an id of its own.
fn bulk_envelope(n: usize, key: &str) -> serde_json::Value {
    serde_json::json!({
        "v": 1,
        "id": format!("01936f0e-8a7b-7c3d-9e4f-{n:012x}"),
        "idempotency_key": key,
        "kind": "stage",
        "enqueued_at": "2026-01-01T12:00:00Z",
        "payload": {
            "release": {"project_key": "example", "version_key": "1.0.0"},
            "distribution": {"platform": "NPM", "owner_namespace": "", "package": format!("bulk-{n}"), "version": "1.0.0"},
            "revision": "00001",
            "source": {"type": "dir"},
            "artifacts": ["bulk-1.0.0.tgz"],
            "staging_tag": null,
            "dry_run": false,
            "asf_uid": "rm"
        }
    })
}

fn redis_conn() -> redis::Connection {
    redis::Client::open("redis://127.0.0.1:6379/")
        .unwrap()
        .get_connection()
        .unwrap()
}

/// `enqueue file` takes the batched path: a file of 10,050 envelopes is 11 calls of
/// `enqueue.lua` (11 envelope batches, not one per job), its progress is on stderr, and a
/// job the file names twice is enqueued once.
#[test]
fn enqueue_file_sends_envelopes_in_batches() {
    let queue = TestQueue::new("bulk");
    let dir = tempfile::tempdir().unwrap();
    const JOBS: usize = 10_050;
    let mut envelopes: Vec<serde_json::Value> = (0..JOBS)
        .map(|n| bulk_envelope(n, &format!("bulk-{n}")))
        .collect();
    envelopes.push(envelopes[7].clone());
    let file = dir.path().join("jobs.json");
    std::fs::write(&file, serde_json::to_vec(&envelopes).unwrap()).unwrap();

    let out = atr_dist()
        .current_dir(dir.path())
        .env("ATR_DIST_REDIS__QUEUE", &queue.name)
        .args(["enqueue", "file"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), JOBS + 1, "one line per envelope of the file");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("  enqueued: stage"))
            .count(),
        JOBS
    );
    let repeat = format!("01936f0e-8a7b-7c3d-9e4f-{:012x}", 7);
    assert!(
        lines[JOBS].starts_with(&format!("{repeat}  already enqueued as {repeat}, queued")),
        "{}",
        lines[JOBS]
    );
    assert!(stderr.contains("enqueued 10000 of 10050\n"), "{stderr}");
    assert!(stderr.contains("enqueued 10050 of 10050\n"), "{stderr}");

    let mut conn = redis_conn();
    let prefix = format!("atr-dist:{{{}}}:", queue.name);
    let jobs: usize = redis::cmd("HLEN")
        .arg(format!("{prefix}jobs"))
        .query(&mut conn)
        .unwrap();
    assert_eq!(jobs, JOBS);
    let batches: usize = redis::cmd("GET")
        .arg(format!("{prefix}batches"))
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        batches,
        JOBS.div_ceil(1000),
        "one enqueue.lua call per 1,000 jobs"
    );
}

/// One id under two idempotency keys is a mistake in the file: refused, nothing enqueued.
#[test]
fn enqueue_file_refuses_one_id_under_two_keys_before_sending_anything() {
    let queue = TestQueue::new("bulk-conflict");
    let dir = tempfile::tempdir().unwrap();
    let envelopes = vec![
        bulk_envelope(1, "bulk-a"),
        bulk_envelope(2, "bulk-b"),
        bulk_envelope(1, "bulk-c"),
    ];
    let file = dir.path().join("jobs.json");
    std::fs::write(&file, serde_json::to_vec(&envelopes).unwrap()).unwrap();
    let out = atr_dist()
        .current_dir(dir.path())
        .env("ATR_DIST_REDIS__QUEUE", &queue.name)
        .args(["enqueue", "file"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("appears twice with different idempotency keys (\"bulk-a\" and \"bulk-c\"); nothing was enqueued"),
        "{stderr}"
    );
    let jobs: usize = redis::cmd("HLEN")
        .arg(format!("atr-dist:{{{}}}:jobs", queue.name))
        .query(&mut redis_conn())
        .unwrap();
    assert_eq!(jobs, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_shards_shows_raises_and_keeps_shards_that_hold_jobs() {
    let op = Operated::new().await;
    let (_, out) = op.cli(&["queue", "shards"]);
    assert!(out.contains("has 1 shard(s)"), "{out}");
    let (_, out) = op.cli(&["queue", "shards", "3"]);
    assert!(out.contains("now has 3 shard(s), from 1"), "{out}");
    let (_, out) = op.cli(&["queue", "stats"]);
    assert!(out.contains(", 3 shards"), "{out}");
    let (code, _, err) = op.cli_exit(&["queue", "shards", "0"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("from 1 to 64"), "{err}");

    // A job whose distribution falls on shard 2 keeps that shard.
    let package = (0..)
        .map(|i| format!("pkg-{i}"))
        .find(|p| {
            let key = format!("example-1.0.0|NPM||{p}|1.0.0");
            atr_dist::queue::shard_of(&key, 3) == 2
        })
        .unwrap();
    let id = op.enqueue("stage", &package);
    let on_2: bool = redis::AsyncCommands::hexists(
        &mut op.queue.connection(),
        format!("{}jobs", op.queue.shard(2).prefix()),
        &id,
    )
    .await
    .unwrap();
    assert!(on_2, "the CLI enqueued onto the distribution's shard");
    let (code, _, err) = op.cli_exit(&["queue", "shards", "2"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("shard 2: 1 job(s)"), "{err}");
    let (_, out) = op.cli(&["queue", "shards"]);
    assert!(out.contains("has 3 shard(s)"), "{out}");
}
