//! hex.pm as its specification describes it (hexpm/specifications `apiary.apib`,
//! `package_tarball.md`), as a stateful wiremock fake: no Hex server runs here without
//! hex.pm itself (platforms.md). Package tarballs are built the way `mix hex.build` lays
//! them out.
//!
//! What the fake does, from the specification:
//! - `POST /api/publish` (`Authorization: <key>`, body the tarball): 201 with the release,
//!   whose `checksum` is the lower-case hex sha256 of the whole tarball; a version that
//!   exists already is a 422 (`errors.inserted_at`), unless `?replace=true` (the one-hour
//!   window), which replaces it; a wrong key is a 401; an account that needs two-factor codes
//!   answers 403 asking for `x-hex-otp`.
//! - `GET /api/packages/{name}/releases/{version}`: 200 with the release, or 404.
//! - Every answer carries `X-RateLimit-Limit`, `-Remaining`, `-Reset` (epoch seconds); with the
//!   limit used up, 429.

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// The API key the fake accepts.
pub const KEY: &str = "hex-test-api-key";

/// A fault the next publish meets.
#[derive(Debug, Clone)]
pub enum Fault {
    /// The release is stored, and the answer lost (a 502 from a proxy).
    LostAfterStoring,
    /// Another publish of the version got there first: the release stored holds the bytes
    /// given here, not the request's, and the answer is lost.
    LostAfterAnotherStored(Vec<u8>),
    /// The release is stored, and the answer names this checksum instead of its own.
    AnswerNames(String),
    /// Refused with this status before anything is stored.
    Status(u16),
    /// A 422 with these `errors` (a package hex.pm does not accept).
    Invalid(serde_json::Value),
}

#[derive(Default)]
pub struct State {
    /// (name, version) → (lower-case hex sha256 of the tarball, when published).
    pub releases: HashMap<(String, String), (String, String)>,
    /// Publishing needs a one-time password this worker cannot give.
    pub otp_required: bool,
    /// Requests left in the rate limit window; None: unlimited.
    pub remaining: Option<u64>,
    /// Seconds from now to the window's reset.
    pub reset_in: i64,
    pub faults: VecDeque<Fault>,
    /// The server's own address, for the URLs in answers.
    pub base: String,
}

#[derive(Clone)]
pub struct HexPm {
    pub server: Arc<MockServer>,
    pub state: Arc<Mutex<State>>,
}

struct Responder(Arc<Mutex<State>>);

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn error(status: u16, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_json(serde_json::json!({"status": status, "message": message}))
}

/// The package's name and version from its `metadata.config`, read plainly: the fake trusts
/// the tarballs its own tests build.
fn name_and_version(tarball: &[u8]) -> Option<(String, String)> {
    let mut archive = tar::Archive::new(tarball);
    for entry in archive.entries().ok()? {
        let mut entry = entry.ok()?;
        if entry.path().ok()?.to_str()? != "metadata.config" {
            continue;
        }
        let mut text = String::new();
        std::io::Read::read_to_string(&mut entry, &mut text).ok()?;
        let value = |key: &str| {
            let pattern = format!("{{<<\"{key}\">>,<<\"");
            let at = text.find(&pattern)? + pattern.len();
            let end = text[at..].find('"')?;
            Some(text[at..at + end].to_owned())
        };
        return Some((value("name")?, value("version")?));
    }
    None
}

fn release_json(
    base: &str,
    name: &str,
    version: &str,
    checksum: &str,
    at: &str,
) -> serde_json::Value {
    serde_json::json!({
        "version": version,
        "checksum": checksum,
        "has_docs": false,
        "url": format!("{base}/api/packages/{name}/releases/{version}"),
        "package_url": format!("{base}/api/packages/{name}"),
        "html_url": format!("{base}/packages/{name}/{version}"),
        "docs_html_url": format!("https://hexdocs.pm/{name}/{version}"),
        "meta": {"app": name, "build_tools": ["mix"], "elixir": "~> 1.14"},
        "requirements": {},
        "configs": {"mix.exs": format!("{{:{name}, \"~> {version}\"}}")},
        "retirement": null,
        "downloads": 0,
        "inserted_at": at,
        "updated_at": at
    })
}

impl Respond for Responder {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let mut s = self.0.lock().unwrap();
        let reset = chrono::Utc::now().timestamp() + s.reset_in;
        let limited = s.remaining == Some(0);
        if let Some(n) = s.remaining.as_mut() {
            *n = n.saturating_sub(1);
        }
        let remaining = s.remaining.map(|n| n.to_string()).unwrap_or("499".into());
        let with_limits = |t: ResponseTemplate| {
            t.insert_header("x-ratelimit-limit", "500")
                .insert_header("x-ratelimit-remaining", remaining.as_str())
                .insert_header("x-ratelimit-reset", reset.to_string().as_str())
        };
        if limited {
            return with_limits(error(429, "API rate limit exceeded for this key"));
        }
        let base = s.base.clone();
        let user_agent = req
            .headers
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if user_agent.is_empty() {
            return with_limits(error(400, "User-Agent header is required"));
        }
        let path: Vec<&str> = req.url.path().trim_matches('/').split('/').collect();
        let answer = match (req.method.as_str(), path.as_slice()) {
            ("GET", ["api", "packages", name, "releases", version]) => {
                match s.releases.get(&((*name).to_owned(), (*version).to_owned())) {
                    Some((checksum, at)) => ResponseTemplate::new(200)
                        .set_body_json(release_json(&base, name, version, checksum, at)),
                    None => error(404, "Page not found"),
                }
            }
            ("POST", ["api", "publish"]) => {
                let key = req
                    .headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if key != KEY {
                    return with_limits(error(401, "invalid API key"));
                }
                if s.otp_required {
                    return with_limits(
                        error(403, "two-factor authentication required")
                            .insert_header("x-hex-otp", "required; totp"),
                    );
                }
                let replace = req
                    .url
                    .query_pairs()
                    .any(|(k, v)| k == "replace" && v == "true");
                let fault = s.faults.pop_front();
                match fault {
                    Some(Fault::Status(status)) => return with_limits(error(status, "failed")),
                    Some(Fault::Invalid(errors)) => {
                        return with_limits(ResponseTemplate::new(422).set_body_json(
                            serde_json::json!({"status": 422, "message": "Validation error(s)", "errors": errors}),
                        ));
                    }
                    Some(Fault::LostAfterAnotherStored(theirs)) => {
                        if let Some(id) = name_and_version(&req.body) {
                            let at = chrono::Utc::now()
                                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                            s.releases.insert(id, (sha256_hex(&theirs), at));
                        }
                        return with_limits(error(502, "Bad Gateway"));
                    }
                    Some(Fault::LostAfterStoring | Fault::AnswerNames(_)) | None => {}
                }
                let Some((name, version)) = name_and_version(&req.body) else {
                    return with_limits(error(422, "invalid package tarball"));
                };
                let id = (name.clone(), version.clone());
                if s.releases.contains_key(&id) && !replace {
                    return with_limits(ResponseTemplate::new(422).set_body_json(serde_json::json!({
                        "status": 422,
                        "message": "Validation error(s)",
                        "errors": {"inserted_at": "can only modify a release up to one hour after creation and must include the --replace option"}
                    })));
                }
                let checksum = sha256_hex(&req.body);
                let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                s.releases.insert(id, (checksum.clone(), at.clone()));
                if matches!(fault, Some(Fault::LostAfterStoring)) {
                    return with_limits(error(502, "Bad Gateway"));
                }
                let named = match &fault {
                    Some(Fault::AnswerNames(other)) => other.clone(),
                    _ => checksum,
                };
                ResponseTemplate::new(201)
                    .set_body_json(release_json(&base, &name, &version, &named, &at))
            }
            _ => error(404, "Page not found"),
        };
        with_limits(answer)
    }
}

impl HexPm {
    pub async fn start() -> HexPm {
        let server = MockServer::start().await;
        let state = Arc::new(Mutex::new(State {
            reset_in: 60,
            base: server.uri(),
            ..State::default()
        }));
        Mock::given(any())
            .respond_with(Responder(Arc::clone(&state)))
            .mount(&server)
            .await;
        HexPm {
            server: Arc::new(server),
            state,
        }
    }

    /// The API base, as `[platforms.hex] base_url` names it.
    pub fn api(&self) -> String {
        format!("{}/api", self.server.uri())
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Requests received as "METHOD path?query".
    pub async fn requests(&self) -> Vec<String> {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .map(|r| {
                let q = r.url.query().map(|q| format!("?{q}")).unwrap_or_default();
                format!("{} {}{q}", r.method, r.url.path())
            })
            .collect()
    }

    pub async fn publishes(&self) -> usize {
        self.requests()
            .await
            .iter()
            .filter(|r| r.starts_with("POST /api/publish"))
            .count()
    }

    /// The checksum hex.pm holds for a release.
    pub fn checksum(&self, name: &str, version: &str) -> Option<String> {
        self.with(|s| {
            s.releases
                .get(&(name.to_owned(), version.to_owned()))
                .map(|(c, _)| c.clone())
        })
    }
}

/// `metadata.config` for `name` `version`, as `mix hex.build` writes it.
pub fn metadata(name: &str, version: &str) -> String {
    format!(
        "{{<<\"app\">>,<<\"{name}\">>}}.\n{{<<\"build_tools\">>,[<<\"mix\">>]}}.\n{{<<\"description\">>,<<\"A package built by a test.\">>}}.\n{{<<\"elixir\">>,<<\"~> 1.14\">>}}.\n{{<<\"files\">>,[<<\"lib\">>,<<\"lib/{name}.ex\">>,<<\"mix.exs\">>]}}.\n{{<<\"licenses\">>,[<<\"Apache-2.0\">>]}}.\n{{<<\"links\">>,[{{<<\"GitHub\">>,<<\"https://github.com/apache/{name}\">>}}]}}.\n{{<<\"name\">>,<<\"{name}\">>}}.\n{{<<\"requirements\">>,[]}}.\n{{<<\"version\">>,<<\"{version}\">>}}.\n"
    )
}

/// A package tarball: `VERSION`, `CHECKSUM` (or `checksum` instead of the right one),
/// `metadata.config` and `contents.tar.gz` holding a module with `body`.
pub fn tarball_with(meta: &str, body: &str, checksum: Option<&str>) -> Vec<u8> {
    let contents = {
        let mut inner = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::default(),
        ));
        let mut header = tar::Header::new_ustar();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        inner
            .append_data(&mut header, "lib/module.ex", body.as_bytes())
            .unwrap();
        let mut gz = inner.into_inner().unwrap();
        gz.flush().unwrap();
        gz.finish().unwrap()
    };
    let mut h = Sha256::new();
    h.update(b"3");
    h.update(meta.as_bytes());
    h.update(&contents);
    let right: String = h.finalize().iter().map(|b| format!("{b:02X}")).collect();
    let sum = checksum.map(str::to_owned).unwrap_or(right);
    let mut outer = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("VERSION", b"3".as_slice()),
        ("CHECKSUM", sum.as_bytes()),
        ("metadata.config", meta.as_bytes()),
        ("contents.tar.gz", contents.as_slice()),
    ] {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        outer.append_data(&mut header, path, data).unwrap();
    }
    outer.into_inner().unwrap()
}

pub fn tarball(name: &str, version: &str, body: &str) -> Vec<u8> {
    tarball_with(&metadata(name, version), body, None)
}

pub fn tarball_name(name: &str, version: &str) -> String {
    format!("{name}-{version}.tar")
}

pub fn checksum_of(bytes: &[u8]) -> String {
    sha256_hex(bytes)
}
