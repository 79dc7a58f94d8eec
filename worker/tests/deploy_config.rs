//! The configuration files under deploy/ are ones atr-dist accepts: each is loaded by
//! `atr-dist config` as the deployment runs it, its secret files given through the
//! environment as the deployment does, and none of the secrets shows in what it prints.

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// `atr-dist --config <file> config` with `secrets` (setting, value) written to files and
/// named through the environment; asserts it succeeds and prints no secret.
fn loads(config: &Path, secrets: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_atr-dist"));
    for (key, _) in std::env::vars() {
        if key.starts_with("ATR_DIST_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    for (i, (setting, value)) in secrets.iter().enumerate() {
        let file = dir.path().join(format!("secret-{i}"));
        std::fs::write(&file, format!("{value}\n")).unwrap();
        cmd.env(setting, &file);
    }
    let out = cmd
        .arg("--config")
        .arg(config)
        .arg("config")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} is refused:\n{stderr}",
        config.display()
    );
    for (setting, value) in secrets {
        assert!(
            !stdout.contains(value) && !stderr.contains(value),
            "the secret of {setting} is printed:\n{stdout}{stderr}"
        );
    }
    stdout
}

const DB_PASSWORD: &str = "db-password-5f0e2b7c91";
const REDIS_PASSWORD: &str = "redis-password-a83d44e1c0";
const ADMIN_TOKEN: &str = "admin-token-7c1f9a2e6b5d4c3a";
const NPM_TOKEN: &str = "npm_token_3b9e1d7a55";

#[test]
fn the_compose_configuration_loads() {
    let out = loads(
        &deploy("compose/atr-dist.toml"),
        &[
            ("ATR_DIST_DATABASE__PASSWORD_FILE", DB_PASSWORD),
            ("ATR_DIST_REDIS__PASSWORD_FILE", REDIS_PASSWORD),
            ("ATR_DIST_HTTP__ADMIN_TOKEN_FILE", ADMIN_TOKEN),
            ("ATR_DIST_PLATFORMS__NPM__TOKEN_FILE", NPM_TOKEN),
        ],
    );
    assert!(
        out.contains("postgres://atr_dist@postgres:5432/atr_dist"),
        "{out}"
    );
    assert!(out.contains("NPM          enabled"), "{out}");
}

#[test]
fn the_systemd_configuration_loads() {
    // The unit names its credentials through these (deploy/systemd/atr-dist.service).
    loads(
        &deploy("systemd/atr-dist.toml"),
        &[
            ("ATR_DIST_DATABASE__PASSWORD_FILE", DB_PASSWORD),
            ("ATR_DIST_REDIS__PASSWORD_FILE", REDIS_PASSWORD),
            ("ATR_DIST_HTTP__ADMIN_TOKEN_FILE", ADMIN_TOKEN),
            ("ATR_DIST_PLATFORMS__NPM__TOKEN_FILE", NPM_TOKEN),
        ],
    );
}

#[test]
fn the_kubernetes_configuration_loads() {
    // The ConfigMap's one file, `atr-dist.toml: |`, indented by four spaces.
    let yaml = std::fs::read_to_string(deploy("kubernetes/configmap.yaml")).unwrap();
    let (_, block) = yaml
        .split_once("  atr-dist.toml: |\n")
        .expect("configmap.yaml holds atr-dist.toml");
    let toml: String = block
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert!(toml.contains("[worker]"), "{toml}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("atr-dist.toml");
    std::fs::write(&file, toml).unwrap();
    loads(
        &file,
        &[
            ("ATR_DIST_DATABASE__PASSWORD_FILE", DB_PASSWORD),
            ("ATR_DIST_REDIS__PASSWORD_FILE", REDIS_PASSWORD),
            ("ATR_DIST_PLATFORMS__NPM__TOKEN_FILE", NPM_TOKEN),
        ],
    );
}
