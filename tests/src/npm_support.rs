//! A real verdaccio (npm registry) per test, on a free loopback port, and npm package
//! tarballs built on the fly.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where scripts/install-test-servers.sh installed verdaccio 6.8.0.
pub fn verdaccio_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("ATR_DIST_VERDACCIO") {
        return PathBuf::from(dir).join("node_modules/.bin/verdaccio");
    }
    let home = std::env::var_os("HOME").expect("HOME");
    PathBuf::from(home).join(".cache/atr-dist/verdaccio/node_modules/.bin/verdaccio")
}

pub struct Verdaccio {
    pub addr: SocketAddr,
    pub token: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Verdaccio {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Verdaccio {
    pub async fn start() -> Verdaccio {
        let bin = verdaccio_bin();
        assert!(
            bin.exists(),
            "{} is missing: run scripts/install-test-servers.sh",
            bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let port = crate::free_port();
        let config = format!(
            "storage: {storage}\nauth:\n  htpasswd:\n    file: {htpasswd}\n    max_users: 100\nuplinks: {{}}\npackages:\n  '@*/*':\n    access: $all\n    publish: $authenticated\n    unpublish: $authenticated\n  '**':\n    access: $all\n    publish: $authenticated\n    unpublish: $authenticated\nlisten: 127.0.0.1:{port}\nlog: {{ type: stdout, format: pretty, level: warn }}\nweb: {{ enable: false }}\nmax_body_size: 200mb\nsecurity:\n  api:\n    jwt:\n      sign:\n        expiresIn: 1d\n",
            storage = dir.path().join("storage").display(),
            htpasswd = dir.path().join("htpasswd").display(),
        );
        // `security.api.jwt`: the token `/-/user/` hands out is a JWT, checked with an HMAC
        // on each request. The legacy token makes verdaccio check the password against the
        // bcrypt htpasswd on every request: 146 ms against 27 ms per authenticated request
        // here, most of a publish's time.
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new(&bin)
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start verdaccio");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut v = Verdaccio {
            addr,
            token: String::new(),
            child,
            _dir: dir,
        };
        let client = reqwest::Client::new();
        let start = Instant::now();
        loop {
            if let Ok(r) = client.get(format!("http://{addr}/-/ping")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "verdaccio did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let created: serde_json::Value = client
            .put(format!("http://{addr}/-/user/org.couchdb.user:tester"))
            .json(&serde_json::json!({"name": "tester", "password": "tester-password", "type": "user", "roles": [], "date": "2026-01-01T00:00:00Z"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.token = created["token"]
            .as_str()
            .expect("verdaccio returned a token")
            .to_owned();
        v
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The dist-tags of a package, as the registry reports them.
    pub async fn dist_tags(&self, name: &str) -> serde_json::Value {
        let url = format!(
            "http://{}/-/package/{}/dist-tags",
            self.addr,
            name.replace('/', "%2f")
        );
        reqwest::get(url).await.unwrap().json().await.unwrap()
    }
}

/// An npm package tarball: `package/package.json` and `package/index.js`.
pub fn tarball(name: &str, version: &str, body: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    let manifest = serde_json::json!({"name": name, "version": version, "description": "test package", "main": "index.js", "license": "Apache-2.0"});
    for (path, content) in [
        (
            "package/package.json",
            serde_json::to_vec_pretty(&manifest).unwrap(),
        ),
        ("package/index.js", body.as_bytes().to_vec()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, path, content.as_slice())
            .unwrap();
    }
    let mut gz = builder.into_inner().unwrap();
    gz.flush().unwrap();
    gz.finish().unwrap()
}

/// A stage request for one npm tarball of `key`, sealed as the pipeline seals it, for
/// calling the adapter directly.
pub fn stage_request(
    key: &atr_dist_shared::DistributionKey,
    tarball: &[u8],
    staging_tag: &str,
) -> atr_dist::platform::StageRequest {
    use atr_dist_shared::names::{DistTag, RevisionKey, RevisionNumber};
    let file = format!("{}-{}.tgz", key.package, key.version);
    atr_dist::platform::StageRequest {
        key: key.clone(),
        revision: RevisionKey::of(
            &key.release_key,
            &RevisionNumber::new("00001").expect("revision"),
        ),
        artifacts: vec![crate::pipeline_support::sealed(&file, tarball)],
        companions: Vec::new(),
        staging_tag: DistTag::new(staging_tag).expect("tag"),
    }
}

/// npm's `dist.integrity` of `bytes`: `sha512-<base64>`.
pub fn integrity(bytes: &[u8]) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha512::digest(bytes))
    )
}

/// A packument for `name` claiming that `version`, under each of `tags`, has `dist` (what
/// a lying registry, or a lying proxy in front of it, answers).
pub fn packument_claiming(
    name: &str,
    version: &str,
    tags: &[&str],
    dist: serde_json::Value,
) -> String {
    let tags: serde_json::Map<String, serde_json::Value> = tags
        .iter()
        .map(|t| ((*t).to_owned(), serde_json::json!(version)))
        .collect();
    serde_json::json!({
        "name": name,
        "dist-tags": tags,
        "versions": { version: { "name": name, "version": version, "dist": dist } },
    })
    .to_string()
}
