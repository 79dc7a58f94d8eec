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

#[test]
fn help_lists_the_exit_codes() {
    let out = atr_dist().arg("--help").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Exit codes:"), "{text}");
    for line in [
        "0  success",
        "2  bad usage, input or configuration",
        "3  the job asked for does not exist",
        "4  some of the given jobs could not be acted on",
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
    let envelope: serde_json::Value =
        serde_json::from_str(detail["envelope"].as_str().unwrap()).unwrap();
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
    assert_eq!(detail["state"], "scheduled", "{detail}");
    let at = |field: &str| {
        chrono::DateTime::parse_from_rfc3339(detail[field].as_str().unwrap())
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
