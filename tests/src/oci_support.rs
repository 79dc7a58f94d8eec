//! OCI test support: Debian's real `docker-registry` (distribution 2.8) as a child process
//! on loopback, a token realm minting RS256 JWTs the registry verifies, OCI image layouts
//! built from scratch, and a pipeline wired to the OCI adapter. The fault-injecting proxy
//! is [`crate::fault_proxy`].
//!
//! Everything listens on 127.0.0.1 on a free port and stops when dropped.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atr_dist::platform::StageRequest;
use atr_dist::platform::oci::{ACCEPT_ALL, OCI_INDEX, OCI_MANIFEST};
use atr_dist_shared::names::{
    ArtifactPath, DistTag, PackageName, ReleaseKey, RevisionKey, RevisionNumber, Version,
};
use atr_dist_shared::{DistributionKey, Platform};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use url::Url;

use crate::http_server::{ServerTask, respond, serve};

// ---------------------------------------------------------------------------------------
// The registry.

/// How the registry authenticates.
pub enum RegistryAuth {
    None,
    /// JWTs from `realm`, signed by `issuer`'s key.
    Token {
        realm: Url,
        issuer: Arc<TokenIssuer>,
    },
}

pub const SERVICE: &str = "registry.local";

/// `docker-registry serve` on 127.0.0.1 with its own storage; killed when dropped.
pub struct Registry {
    pub url: Url,
    child: Child,
    dir: tempfile::TempDir,
}

impl Registry {
    pub async fn start(auth: RegistryAuth) -> Registry {
        let dir = tempfile::tempdir().expect("temp dir");
        let auth_yaml = match &auth {
            RegistryAuth::None => String::new(),
            RegistryAuth::Token { realm, issuer } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {SERVICE}\n    issuer: {}\n    rootcertbundle: {}\n",
                TokenIssuer::ISSUER,
                issuer.cert_path.display()
            ),
        };
        // A free port can be taken between our probe and the registry's bind: try again.
        for _ in 0..5 {
            let port = crate::free_port();
            let config = format!(
                "version: 0.1\nlog:\n  level: warn\n  fields: {{ service: registry }}\nstorage:\n  cache: {{ blobdescriptor: inmemory }}\n  filesystem: {{ rootdirectory: {} }}\n  delete: {{ enabled: true }}\nhttp:\n  addr: 127.0.0.1:{port}\n  headers: {{ X-Content-Type-Options: [nosniff] }}\n{auth_yaml}",
                dir.path().join("data").display()
            );
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config).expect("write registry config");
            let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .expect("docker-registry installed (scripts/install-test-servers.sh)");
            let url = Url::parse(&format!("http://127.0.0.1:{port}/")).expect("url");
            if wait_ready(&url, &mut child).await {
                return Registry { url, child, dir };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "docker-registry did not start; its log: {}",
            std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

async fn wait_ready(url: &Url, child: &mut Child) -> bool {
    let client = reqwest::Client::new();
    let probe = url.join("v2/").expect("url");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if client.get(probe.clone()).send().await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// The token realm.

/// An RSA key and self-signed certificate (made with the openssl CLI), trusted by the
/// registry as its token issuer.
pub struct TokenIssuer {
    _dir: tempfile::TempDir,
    pub cert_path: PathBuf,
    key: jsonwebtoken::EncodingKey,
    /// The certificate, DER in standard base64, for the JWT's `x5c` header.
    cert_b64: String,
}

impl TokenIssuer {
    pub const ISSUER: &'static str = "atr-test-issuer";

    pub fn generate() -> TokenIssuer {
        let dir = tempfile::tempdir().expect("temp dir");
        let key_path = dir.path().join("token-key.pem");
        let cert_path = dir.path().join("token-cert.pem");
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            ])
            .arg(format!("/CN={}", Self::ISSUER))
            .arg("-keyout")
            .arg(&key_path)
            .arg("-out")
            .arg(&cert_path)
            .output()
            .expect("openssl installed (scripts/install-test-servers.sh)");
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key_pem = std::fs::read(&key_path).expect("key");
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(&key_pem).expect("RSA key");
        // A PEM body is the DER in base64, wrapped: unwrapped, it is what x5c wants.
        let cert_pem = std::fs::read_to_string(&cert_path).expect("cert");
        let cert_b64: String = cert_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        TokenIssuer {
            _dir: dir,
            cert_path,
            key,
            cert_b64,
        }
    }

    /// A token granting `access` (type, name, actions) for `service`.
    pub fn mint(
        &self,
        subject: &str,
        service: &str,
        access: &[(String, String, Vec<String>)],
    ) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = json!({
            "iss": Self::ISSUER,
            "sub": subject,
            "aud": service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid::Uuid::new_v4().to_string(),
            "access": access
                .iter()
                .map(|(kind, name, actions)| json!({"type": kind, "name": name, "actions": actions}))
                .collect::<Vec<_>>(),
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.x5c = Some(vec![self.cert_b64.clone()]);
        jsonwebtoken::encode(&header, &claims, &self.key).expect("sign token")
    }
}

/// What the realm grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Every action asked for.
    All,
    /// Pull only, whatever was asked.
    PullOnly,
    /// A string that is no JWT at all.
    Garbage,
}

struct RealmState {
    issuer: Arc<TokenIssuer>,
    user: String,
    password: String,
    grant: Mutex<Grant>,
    requests: AtomicUsize,
    scopes: Mutex<Vec<String>>,
}

/// A token realm on 127.0.0.1: Basic auth with one user, RS256 JWTs for the scopes asked.
pub struct TokenRealm {
    pub realm: Url,
    state: Arc<RealmState>,
    _server: ServerTask,
}

impl TokenRealm {
    pub async fn start(issuer: Arc<TokenIssuer>, user: &str, password: &str) -> TokenRealm {
        let state = Arc::new(RealmState {
            issuer,
            user: user.to_owned(),
            password: password.to_owned(),
            grant: Mutex::new(Grant::All),
            requests: AtomicUsize::new(0),
            scopes: Mutex::new(Vec::new()),
        });
        let server = serve(&state, |s, req| async move { realm_answer(&s, &req) }).await;
        let realm = Url::parse(&format!("http://{}/token", server.addr)).expect("url");
        TokenRealm {
            realm,
            state,
            _server: server,
        }
    }

    pub fn set_grant(&self, grant: Grant) {
        *self.state.grant.lock().unwrap() = grant;
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Every scope parameter received, in order.
    pub fn scopes(&self) -> Vec<String> {
        self.state.scopes.lock().unwrap().clone()
    }
}

fn realm_answer(s: &RealmState, req: &Request<Bytes>) -> Response<Full<Bytes>> {
    s.requests.fetch_add(1, Ordering::SeqCst);
    let expected = format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", s.user, s.password))
    );
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if given != Some(expected.as_str()) {
        return respond(
            401,
            &[("content-type", "application/json")],
            r#"{"details":"incorrect username or password"}"#,
        );
    }
    let query = req.uri().query().unwrap_or("");
    let mut service = String::new();
    let mut access = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "service" => service = v.into_owned(),
            "scope" => {
                s.scopes.lock().unwrap().push(v.to_string());
                let Some((kind, rest)) = v.split_once(':') else {
                    continue;
                };
                let Some((name, actions)) = rest.rsplit_once(':') else {
                    continue;
                };
                access.push((
                    kind.to_owned(),
                    name.to_owned(),
                    actions.split(',').map(str::to_owned).collect::<Vec<_>>(),
                ));
            }
            _ => {}
        }
    }
    let grant = *s.grant.lock().unwrap();
    let token = match grant {
        Grant::Garbage => "not-a-jwt".to_owned(),
        Grant::All => s.issuer.mint(&s.user, &service, &access),
        Grant::PullOnly => {
            let pull: Vec<_> = access
                .into_iter()
                .map(|(k, n, a)| (k, n, a.into_iter().filter(|x| x == "pull").collect()))
                .collect();
            s.issuer.mint(&s.user, &service, &pull)
        }
    };
    let body = json!({
        "token": token,
        "access_token": token,
        "expires_in": 300,
        "issued_at": chrono::Utc::now().to_rfc3339(),
    });
    respond(
        200,
        &[("content-type", "application/json")],
        body.to_string(),
    )
}

// ---------------------------------------------------------------------------------------
// Images.

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex_encode(&Sha256::digest(bytes)))
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OCI image layout as revision files (`<dir>/index.json`, `<dir>/oci-layout`,
/// `<dir>/blobs/sha256/…`), and the digests it holds.
#[derive(Debug, Clone)]
pub struct OciImage {
    pub files: Vec<(String, Vec<u8>)>,
    /// The top manifest's or index's digest: the distribution's.
    pub digest: String,
    pub media_type: &'static str,
    /// Child manifests of an index.
    pub children: Vec<String>,
    /// Config and layer blobs.
    pub blobs: Vec<String>,
}

impl OciImage {
    pub fn paths(&self) -> Vec<ArtifactPath> {
        self.files
            .iter()
            .map(|(p, _)| ArtifactPath::new(p.clone()).expect("artifact path"))
            .collect()
    }

    pub fn file_refs(&self) -> Vec<(&str, &[u8])> {
        self.files
            .iter()
            .map(|(p, b)| (p.as_str(), b.as_slice()))
            .collect()
    }
}

struct LayoutWriter {
    dir: String,
    files: HashMap<String, Vec<u8>>,
}

impl LayoutWriter {
    fn new(dir: &str) -> LayoutWriter {
        LayoutWriter {
            dir: dir.to_owned(),
            files: HashMap::new(),
        }
    }

    /// Adds a blob; returns its descriptor.
    fn blob(&mut self, media_type: &str, bytes: Vec<u8>) -> serde_json::Value {
        let digest = sha256(&bytes);
        let desc = json!({"mediaType": media_type, "digest": digest, "size": bytes.len()});
        let hex = digest.trim_start_matches("sha256:");
        self.files
            .insert(format!("{}/blobs/sha256/{hex}", self.dir), bytes);
        desc
    }

    /// A config and one layer holding `content`, and their manifest.
    fn image(&mut self, content: &str, arch: &str) -> (serde_json::Value, Vec<String>) {
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, "hello.txt", content.as_bytes())
            .expect("tar");
        let tar = tar.into_inner().expect("tar");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &tar).expect("gzip");
        let layer = gz.finish().expect("gzip");
        let config = serde_json::to_vec(&json!({
            "architecture": arch,
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [sha256(&tar)]},
        }))
        .expect("json");
        let config = self.blob("application/vnd.oci.image.config.v1+json", config);
        let layer = self.blob("application/vnd.oci.image.layer.v1.tar+gzip", layer);
        let blobs = vec![
            config["digest"].as_str().unwrap_or_default().to_owned(),
            layer["digest"].as_str().unwrap_or_default().to_owned(),
        ];
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config,
            "layers": [layer],
        }))
        .expect("json");
        (self.blob(OCI_MANIFEST, manifest), blobs)
    }

    fn finish(mut self, top: &serde_json::Value, version: &str) -> Vec<(String, Vec<u8>)> {
        let mut entry = top.clone();
        entry["annotations"] = json!({"org.opencontainers.image.ref.name": version});
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]});
        self.files.insert(
            format!("{}/index.json", self.dir),
            serde_json::to_vec(&index).expect("json"),
        );
        self.files.insert(
            format!("{}/oci-layout", self.dir),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        );
        let mut files: Vec<_> = self.files.into_iter().collect();
        files.sort();
        files
    }
}

/// A one-platform image whose layer holds `content`.
pub fn single_image(dir: &str, content: &str) -> OciImage {
    let mut w = LayoutWriter::new(dir);
    let (manifest, blobs) = w.image(content, "amd64");
    let digest = manifest["digest"].as_str().unwrap_or_default().to_owned();
    OciImage {
        files: w.finish(&manifest, "1.0.0"),
        digest,
        media_type: OCI_MANIFEST,
        children: Vec::new(),
        blobs,
    }
}

/// A two-platform image: an OCI index over an amd64 and an arm64 manifest.
pub fn multi_arch_image(dir: &str, content: &str) -> OciImage {
    let mut w = LayoutWriter::new(dir);
    let mut children = Vec::new();
    let mut blobs = Vec::new();
    let mut entries = Vec::new();
    for arch in ["amd64", "arm64"] {
        let (mut manifest, b) = w.image(&format!("{content} on {arch}"), arch);
        children.push(manifest["digest"].as_str().unwrap_or_default().to_owned());
        blobs.extend(b);
        manifest["platform"] = json!({"architecture": arch, "os": "linux"});
        entries.push(manifest);
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": entries,
    }))
    .expect("json");
    let top = w.blob(OCI_INDEX, index);
    let digest = top["digest"].as_str().unwrap_or_default().to_owned();
    OciImage {
        files: w.finish(&top, "1.0.0"),
        digest,
        media_type: OCI_INDEX,
        children,
        blobs,
    }
}

/// A one-platform image under `levels` indexes, each listing the one below: the top is
/// the outermost index, and `children` lists every manifest under it, outermost first.
pub fn nested_image(dir: &str, content: &str, levels: usize) -> OciImage {
    let mut w = LayoutWriter::new(dir);
    let (mut below, blobs) = w.image(content, "amd64");
    let mut children = Vec::new();
    let mut media_type = OCI_MANIFEST;
    for _ in 0..levels {
        children.insert(0, below["digest"].as_str().unwrap_or_default().to_owned());
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [below],
        }))
        .expect("json");
        below = w.blob(OCI_INDEX, index);
        media_type = OCI_INDEX;
    }
    let digest = below["digest"].as_str().unwrap_or_default().to_owned();
    OciImage {
        files: w.finish(&below, "1.0.0"),
        digest,
        media_type,
        children,
        blobs,
    }
}

// ---------------------------------------------------------------------------------------
// Keys, requests and the pipeline.

/// The Docker Hub distribution `<namespace>/<package>@1.0.0` of release example-1.0.0.
pub fn key(namespace: &str, package: &str) -> DistributionKey {
    DistributionKey::new(
        ReleaseKey::new("example-1.0.0").expect("release key"),
        Platform::DockerHub,
        namespace,
        PackageName::new(package).expect("package"),
        Version::new("1.0.0").expect("version"),
    )
    .expect("key")
}

/// A stage request for `image`, its files sealed as the pipeline seals them.
pub fn stage_request(key: &DistributionKey, image: &OciImage, staging_tag: &str) -> StageRequest {
    let artifacts = image
        .files
        .iter()
        .map(|(path, bytes)| crate::pipeline_support::sealed(path, bytes))
        .collect();
    StageRequest {
        key: key.clone(),
        revision: RevisionKey::of(
            &ReleaseKey::new("example-1.0.0").expect("release key"),
            &RevisionNumber::new("00001").expect("revision"),
        ),
        artifacts,
        companions: Vec::new(),
        staging_tag: DistTag::new(staging_tag).expect("tag"),
    }
}

/// What the registry holds under `repo:reference`, read directly (no adapter): the
/// digest and content type, or `None` on 404.
pub async fn registry_manifest(
    registry: &Url,
    repo: &str,
    reference: &str,
) -> Option<(String, String)> {
    let url = registry
        .join(&format!("v2/{repo}/manifests/{reference}"))
        .expect("url");
    let resp = reqwest::Client::new()
        .get(url)
        .header("accept", ACCEPT_ALL)
        .send()
        .await
        .expect("registry reachable");
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return None;
    }
    assert!(
        resp.status().is_success(),
        "GET {repo}:{reference}: {}",
        resp.status()
    );
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = resp.bytes().await.expect("body");
    Some((sha256(&body), content_type))
}

/// Whether the registry has a blob in `repo`, read directly.
pub async fn registry_has_blob(registry: &Url, repo: &str, digest: &str) -> bool {
    let url = registry
        .join(&format!("v2/{repo}/blobs/{digest}"))
        .expect("url");
    let resp = reqwest::Client::new()
        .head(url)
        .send()
        .await
        .expect("registry reachable");
    resp.status().is_success()
}
