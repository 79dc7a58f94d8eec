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
    assert!(
        stdout.contains("applied 3 migration(s); schema is current"),
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
