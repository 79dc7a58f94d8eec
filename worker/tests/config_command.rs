//! `atr-dist config` as an operator runs it: a URL setting with credentials stops it with
//! exit code 2, a message naming the key and the secret setting to use, and no password on
//! either output.

use std::process::Command;

fn atr_dist_config(env: &[(&str, &str)]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_atr-dist"));
    // Only the variables given: none of the caller's ATR_DIST_* settings.
    cmd.env_clear().current_dir(dir.path()).arg("config");
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd.output().unwrap()
}

#[test]
fn credentials_in_a_url_setting_stop_atr_dist_config_with_exit_code_2() {
    for (name, value, key, instead) in [
        (
            "ATR_DIST_PLATFORMS__NPM__BASE_URL",
            "https://ci:hunter2@registry.example/",
            "platforms.npm.base_url",
            "ATR_DIST_PLATFORMS__NPM__TOKEN",
        ),
        (
            "ATR_DIST_REVISIONS__ATR_FILE_URL",
            "https://ci:hunter2@atr.example/{path}",
            "revisions.atr_file_url",
            "remove them",
        ),
    ] {
        let out = atr_dist_config(&[(name, value)]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(&format!("`{key}`")), "{stderr}");
        assert!(stderr.contains(instead), "{stderr}");
        assert!(
            !stdout.contains("hunter2") && !stderr.contains("hunter2"),
            "{stdout}{stderr}"
        );
    }
    // Without credentials the same settings print.
    let out = atr_dist_config(&[(
        "ATR_DIST_PLATFORMS__NPM__BASE_URL",
        "https://registry.example/",
    )]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("base_url = \"https://registry.example/\"")
    );
}

#[test]
fn an_unreadable_tls_ca_file_stops_atr_dist_config_with_exit_code_2() {
    let out = atr_dist_config(&[("ATR_DIST_TLS__CA_FILE", "/nonexistent/proxy-ca.pem")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("config key `tls.ca_file`: cannot read /nonexistent/proxy-ca.pem"),
        "{stderr}"
    );
}
