//! A stateful fake of GitHub's REST API for releases, built from its documentation (and the
//! published OpenAPI description the GitHub tests validate requests against): an API
//! server and a separate uploads server, both wiremock on loopback, sharing one repository's
//! tags, releases and assets. It keeps GitHub's rules the adapter relies on: drafts are not
//! found by tag, an asset name is taken until its asset is deleted, an upload that breaks off
//! leaves a `starter` asset, `digest` is the sha256 of the uploaded bytes, and a release
//! published in a repository with immutable releases freezes its assets. Faults (rate
//! limits, 5xx, lost answers, a broken-off upload) are injected per request.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

pub const TOKEN: &str = "ghp_fake_token";

#[derive(Debug, Clone)]
pub struct FakeAsset {
    pub id: u64,
    pub name: String,
    pub state: String,
    pub digest: Option<String>,
    pub size: usize,
}

#[derive(Debug, Clone)]
pub struct FakeRelease {
    pub id: u64,
    pub tag_name: String,
    pub name: Option<String>,
    pub draft: bool,
    pub prerelease: bool,
    pub immutable: bool,
    pub assets: Vec<FakeAsset>,
    /// Every `make_latest` the release was sent, in order.
    pub make_latest: Vec<String>,
}

/// What an injected fault does to a matching request.
#[derive(Debug, Clone)]
pub enum FaultKind {
    /// Answered with this status, headers and body; the request has no effect.
    Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// The request takes effect, and its answer is lost: the client gets this status.
    Lost(u16),
    /// An upload breaks off: the asset is left in state `starter`, the client gets a 502.
    Starter,
    /// An upload takes effect with these bytes in place of the ones sent (changed on their
    /// way), and is answered as usual.
    Stores(Vec<u8>),
    /// An upload takes effect, and another client's upload of this name and these bytes
    /// lands on the same release beside it.
    Beside(String, Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct Fault {
    pub method: String,
    pub path_contains: String,
    pub times: usize,
    pub kind: FaultKind,
}

impl Fault {
    pub fn new(method: &str, path_contains: &str, kind: FaultKind) -> Fault {
        Fault {
            method: method.to_owned(),
            path_contains: path_contains.to_owned(),
            times: 1,
            kind,
        }
    }

    pub fn answer(method: &str, path_contains: &str, status: u16) -> Fault {
        Fault::new(
            method,
            path_contains,
            FaultKind::Answer {
                status,
                headers: Vec::new(),
                body: String::new(),
            },
        )
    }

    /// A 422 as GitHub words a failed validation of `resource`'s `field` (the fake's own
    /// refusals use the same body).
    pub fn validation_failed(
        method: &str,
        path_contains: &str,
        resource: &str,
        code: &str,
        field: &str,
    ) -> Fault {
        Fault::answer(method, path_contains, 422)
            .json(validation_failed_body(resource, code, field))
    }

    pub fn times(mut self, n: usize) -> Fault {
        self.times = n;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Fault {
        if let FaultKind::Answer { headers, .. } = &mut self.kind {
            headers.push((name.to_owned(), value.to_owned()));
        }
        self
    }

    pub fn json(mut self, value: Value) -> Fault {
        if let FaultKind::Answer { body, .. } = &mut self.kind {
            *body = value.to_string();
        }
        self
    }
}

/// One request the fake saw, and how it answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub status: u16,
    pub injected: bool,
}

#[derive(Default)]
pub struct State {
    pub owner: String,
    pub repo: String,
    pub tags: BTreeSet<String>,
    pub releases: Vec<FakeRelease>,
    /// New releases are made immutable when published.
    pub immutable_releases: bool,
    pub faults: Vec<Fault>,
    pub seen: Vec<Seen>,
    next_id: u64,
    api: String,
    uploads: String,
}

impl State {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn release_json(&self, r: &FakeRelease) -> Value {
        let base = format!("{}/repos/{}/{}", self.api, self.owner, self.repo);
        json!({
            "url": format!("{base}/releases/{}", r.id),
            "html_url": format!("https://github.com/{}/{}/releases/tag/{}", self.owner, self.repo, r.tag_name),
            "assets_url": format!("{base}/releases/{}/assets", r.id),
            "upload_url": format!("{}/repos/{}/{}/releases/{}/assets{{?name,label}}", self.uploads, self.owner, self.repo, r.id),
            "tarball_url": null,
            "zipball_url": null,
            "id": r.id,
            "node_id": format!("RE_{}", r.id),
            "tag_name": r.tag_name,
            "target_commitish": "main",
            "name": r.name,
            "body": null,
            "draft": r.draft,
            "prerelease": r.prerelease,
            "immutable": r.immutable,
            "created_at": "2026-12-06T10:00:00Z",
            "published_at": if r.draft { Value::Null } else { json!("2026-12-06T10:05:00Z") },
            "author": {"login": "asf-bot", "id": 1},
            "assets": r.assets.iter().map(|a| self.asset_json(a)).collect::<Vec<_>>(),
        })
    }

    fn asset_json(&self, a: &FakeAsset) -> Value {
        json!({
            "url": format!("{}/repos/{}/{}/releases/assets/{}", self.api, self.owner, self.repo, a.id),
            "browser_download_url": format!("https://github.com/{}/{}/releases/download/x/{}", self.owner, self.repo, a.name),
            "id": a.id,
            "node_id": format!("RA_{}", a.id),
            "name": a.name,
            "label": null,
            "state": a.state,
            "content_type": "application/octet-stream",
            "size": a.size,
            "digest": a.digest,
            "download_count": 0,
            "created_at": "2026-12-06T10:01:00Z",
            "updated_at": "2026-12-06T10:01:00Z",
            "uploader": null,
        })
    }
}

/// The API server and the uploads server of one fake repository.
pub struct FakeGithub {
    pub api: MockServer,
    pub uploads: MockServer,
    pub state: Arc<Mutex<State>>,
}

impl FakeGithub {
    /// A repository `owner/repo` with the git tags `tags`.
    pub async fn start(owner: &str, repo: &str, tags: &[&str]) -> FakeGithub {
        let api = MockServer::start().await;
        let uploads = MockServer::start().await;
        let state = Arc::new(Mutex::new(State {
            owner: owner.to_owned(),
            repo: repo.to_owned(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            api: api.uri(),
            uploads: uploads.uri(),
            ..State::default()
        }));
        for (server, is_uploads) in [(&api, false), (&uploads, true)] {
            Mock::given(any())
                .respond_with(Responder {
                    state: Arc::clone(&state),
                    uploads: is_uploads,
                })
                .mount(server)
                .await;
        }
        FakeGithub {
            api,
            uploads,
            state,
        }
    }

    pub fn inject(&self, fault: Fault) {
        self.state.lock().unwrap().faults.push(fault);
    }

    /// Drops the faults not used up yet.
    pub fn clear_faults(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Requests other than GET that took effect or were refused by the fake itself.
    pub fn writes(&self) -> Vec<String> {
        self.seen()
            .iter()
            .filter(|s| s.method != "GET" && !s.injected)
            .map(|s| format!("{} {} {}", s.method, s.path, s.status))
            .collect()
    }

    pub fn release(&self, tag: &str) -> Option<FakeRelease> {
        self.state
            .lock()
            .unwrap()
            .releases
            .iter()
            .find(|r| r.tag_name == tag)
            .cloned()
    }

    /// Adds a release as someone else made it.
    pub fn add_release(&self, tag: &str, draft: bool, prerelease: bool, assets: &[(&str, &[u8])]) {
        let mut s = self.state.lock().unwrap();
        let id = s.id();
        let mut release = FakeRelease {
            id,
            tag_name: tag.to_owned(),
            name: None,
            draft,
            prerelease,
            immutable: false,
            assets: Vec::new(),
            make_latest: Vec::new(),
        };
        for (name, bytes) in assets {
            let aid = s.id();
            release.assets.push(FakeAsset {
                id: aid,
                name: (*name).to_owned(),
                state: "uploaded".into(),
                digest: Some(sha256(bytes)),
                size: bytes.len(),
            });
        }
        s.releases.push(release);
    }

    /// Changes the release's asset `name` as only GitHub's side could (a replaced asset).
    pub fn tamper(&self, tag: &str, name: &str, f: impl FnOnce(&mut FakeAsset)) {
        let mut s = self.state.lock().unwrap();
        let r = s.releases.iter_mut().find(|r| r.tag_name == tag).unwrap();
        let a = r.assets.iter_mut().find(|a| a.name == name).unwrap();
        f(a);
    }

    pub fn set_immutable(&self, tag: &str) {
        let mut s = self.state.lock().unwrap();
        let r = s.releases.iter_mut().find(|r| r.tag_name == tag).unwrap();
        r.immutable = true;
    }

    /// Every request both servers received, in order of arrival per server: API first.
    pub async fn received(&self) -> Vec<Request> {
        let mut all = self.api.received_requests().await.unwrap_or_default();
        all.extend(self.uploads.received_requests().await.unwrap_or_default());
        all
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

struct Responder {
    state: Arc<Mutex<State>>,
    /// This is the uploads server, which takes asset uploads and nothing else.
    uploads: bool,
}

fn error(status: u16, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "message": message,
        "documentation_url": "https://docs.github.com/rest/releases",
        "status": status.to_string(),
    }))
}

impl Respond for Responder {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let mut s = self.state.lock().unwrap();
        let method = req.method.as_str().to_owned();
        let path = match req.url.query() {
            Some(q) => format!("{}?{q}", req.url.path()),
            None => req.url.path().to_owned(),
        };
        let fault = s
            .faults
            .iter_mut()
            .find(|f| f.times > 0 && f.method == method && path.contains(&f.path_contains))
            .map(|f| {
                f.times -= 1;
                f.kind.clone()
            });
        let (resp, status, injected) = match fault {
            Some(FaultKind::Answer {
                status,
                headers,
                body,
            }) => {
                let mut t = ResponseTemplate::new(status).set_body_raw(body, "application/json");
                for (k, v) in headers {
                    t = t.insert_header(k.as_str(), v.as_str());
                }
                (t, status, true)
            }
            // The request took effect (a write for the counts); its answer is lost.
            Some(FaultKind::Lost(status)) => {
                route(&mut s, req, self.uploads);
                (error(status, "Bad Gateway"), status, false)
            }
            Some(FaultKind::Starter) => {
                starter(&mut s, req);
                (error(502, "Bad Gateway"), 502, false)
            }
            Some(FaultKind::Stores(bytes)) => {
                let mut changed = req.clone();
                changed.body = bytes;
                let (t, status) = route(&mut s, &changed, self.uploads);
                (t, status, false)
            }
            Some(FaultKind::Beside(name, bytes)) => {
                let (t, status) = route(&mut s, req, self.uploads);
                let id = upload_release_id(req.url.path());
                let aid = s.id();
                if let Some(r) = s.releases.iter_mut().find(|r| Some(r.id) == id) {
                    r.assets.push(FakeAsset {
                        id: aid,
                        name,
                        state: "uploaded".into(),
                        digest: Some(sha256(&bytes)),
                        size: bytes.len(),
                    });
                }
                (t, status, false)
            }
            None => {
                let (t, status) = route(&mut s, req, self.uploads);
                (t, status, false)
            }
        };
        s.seen.push(Seen {
            method,
            path,
            status,
            injected,
        });
        resp
    }
}

/// An upload that breaks off after GitHub registered the asset.
fn starter(s: &mut State, req: &Request) {
    let Some(id) = upload_release_id(req.url.path()) else {
        return;
    };
    let name = query(req, "name").unwrap_or_default();
    let aid = s.id();
    if let Some(r) = s.releases.iter_mut().find(|r| r.id == id) {
        r.assets.push(FakeAsset {
            id: aid,
            name,
            state: "starter".into(),
            digest: None,
            size: 0,
        });
    }
}

fn upload_release_id(path: &str) -> Option<u64> {
    let rest = path.strip_prefix("/repos/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [_, _, "releases", id, "assets"] => id.parse().ok(),
        _ => None,
    }
}

fn query(req: &Request, name: &str) -> Option<String> {
    req.url
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

fn validation_failed(resource: &str, code: &str, field: &str) -> ResponseTemplate {
    ResponseTemplate::new(422).set_body_json(validation_failed_body(resource, code, field))
}

/// GitHub's 422 body: one validation error on `resource`'s `field`.
fn validation_failed_body(resource: &str, code: &str, field: &str) -> Value {
    json!({
        "message": "Validation Failed",
        "errors": [{"resource": resource, "code": code, "field": field}],
        "documentation_url": "https://docs.github.com/rest/releases",
        "status": "422",
    })
}

fn ok(status: u16, body: Value) -> (ResponseTemplate, u16) {
    (ResponseTemplate::new(status).set_body_json(body), status)
}

fn fail(status: u16, message: &str) -> (ResponseTemplate, u16) {
    (error(status, message), status)
}

/// `draft`, `prerelease` and `make_latest` of a release write, when sent.
type ReleaseFields = (Option<bool>, Option<bool>, Option<String>);

/// The fields of a release write, checked as GitHub types them.
fn release_fields(body: &Value) -> Result<ReleaseFields, String> {
    let flag = |name: &str| match body.get(name) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(format!("{name} must be a boolean, not {other}")),
    };
    let make_latest = match body.get("make_latest") {
        None => None,
        Some(Value::String(v)) if ["true", "false", "legacy"].contains(&v.as_str()) => {
            Some(v.clone())
        }
        Some(other) => {
            return Err(format!(
                "make_latest must be \"true\", \"false\" or \"legacy\", not {other}"
            ));
        }
    };
    Ok((flag("draft")?, flag("prerelease")?, make_latest))
}

fn page<T: Clone>(items: &[T], req: &Request) -> Vec<T> {
    let per_page: usize = query(req, "per_page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(30);
    let page: usize = query(req, "page").and_then(|p| p.parse().ok()).unwrap_or(1);
    items
        .iter()
        .skip(per_page * (page.max(1) - 1))
        .take(per_page)
        .cloned()
        .collect()
}

fn route(s: &mut State, req: &Request, uploads: bool) -> (ResponseTemplate, u16) {
    if header(req, "authorization") != Some(&format!("Bearer {TOKEN}")) {
        return fail(401, "Bad credentials");
    }
    if header(req, "accept") != Some("application/vnd.github+json")
        || header(req, "x-github-api-version") != Some("2022-11-28")
    {
        return fail(
            400,
            "the fake wants Accept: application/vnd.github+json and X-GitHub-Api-Version: 2022-11-28",
        );
    }
    let path = req.url.path().to_owned();
    let prefix = format!("/repos/{}/{}/", s.owner, s.repo);
    let Some(rest) = path.strip_prefix(&prefix) else {
        return fail(404, "Not Found");
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let method = req.method.as_str();
    if uploads {
        return match (method, parts.as_slice()) {
            ("POST", ["releases", id, "assets"]) => upload(s, req, id.parse().unwrap_or(0)),
            _ => fail(404, "Not Found"),
        };
    }
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    match (method, parts.as_slice()) {
        ("GET", ["git", "ref", "tags", tag]) => {
            if !s.tags.contains(*tag) {
                return fail(404, "Not Found");
            }
            ok(
                200,
                json!({
                    "ref": format!("refs/tags/{tag}"),
                    "node_id": "REF_1",
                    "url": format!("{}{}", s.api, path),
                    "object": {"sha": "a".repeat(40), "type": "commit", "url": format!("{}/commits/x", s.api)},
                }),
            )
        }
        ("GET", ["releases", "tags", tag]) => {
            match s.releases.iter().find(|r| !r.draft && r.tag_name == *tag) {
                Some(r) => ok(200, s.release_json(r)),
                None => fail(404, "Not Found"),
            }
        }
        ("GET", ["releases"]) => {
            let mut all = s.releases.clone();
            all.sort_by_key(|r| std::cmp::Reverse(r.id));
            let listed: Vec<Value> = page(&all, req).iter().map(|r| s.release_json(r)).collect();
            ok(200, Value::Array(listed))
        }
        ("POST", ["releases"]) => {
            let Some(tag) = body
                .get("tag_name")
                .and_then(Value::as_str)
                .map(str::to_owned)
            else {
                return (
                    validation_failed("Release", "missing_field", "tag_name"),
                    422,
                );
            };
            let (draft, prerelease, make_latest) = match release_fields(&body) {
                Ok(f) => f,
                Err(e) => return fail(422, &e),
            };
            if s.releases.iter().any(|r| !r.draft && r.tag_name == tag) {
                return (
                    validation_failed("Release", "already_exists", "tag_name"),
                    422,
                );
            }
            let draft = draft.unwrap_or(false);
            if !draft {
                s.tags.insert(tag.clone());
            }
            let id = s.id();
            let release = FakeRelease {
                id,
                tag_name: tag,
                name: body.get("name").and_then(Value::as_str).map(str::to_owned),
                draft,
                prerelease: prerelease.unwrap_or(false),
                immutable: !draft && s.immutable_releases,
                assets: Vec::new(),
                make_latest: make_latest.into_iter().collect(),
            };
            let json = s.release_json(&release);
            s.releases.push(release);
            ok(201, json)
        }
        ("GET", ["releases", "assets", id]) => {
            let id: u64 = id.parse().unwrap_or(0);
            match s
                .releases
                .iter()
                .flat_map(|r| r.assets.iter())
                .find(|a| a.id == id)
            {
                Some(a) => ok(200, s.asset_json(a)),
                None => fail(404, "Not Found"),
            }
        }
        ("DELETE", ["releases", "assets", id]) => {
            let id: u64 = id.parse().unwrap_or(0);
            let Some(r) = s
                .releases
                .iter_mut()
                .find(|r| r.assets.iter().any(|a| a.id == id))
            else {
                return fail(404, "Not Found");
            };
            if r.immutable {
                return fail(422, "Cannot delete an asset of an immutable release");
            }
            r.assets.retain(|a| a.id != id);
            (ResponseTemplate::new(204), 204)
        }
        ("GET", ["releases", id]) => {
            let id: u64 = id.parse().unwrap_or(0);
            match s.releases.iter().find(|r| r.id == id) {
                Some(r) => ok(200, s.release_json(r)),
                None => fail(404, "Not Found"),
            }
        }
        ("PATCH", ["releases", id]) => {
            let id: u64 = id.parse().unwrap_or(0);
            let (draft, prerelease, make_latest) = match release_fields(&body) {
                Ok(f) => f,
                Err(e) => return fail(422, &e),
            };
            let immutable_releases = s.immutable_releases;
            let Some(i) = s.releases.iter().position(|r| r.id == id) else {
                return fail(404, "Not Found");
            };
            let tag = s.releases[i].tag_name.clone();
            let r = &mut s.releases[i];
            if let Some(false) = draft
                && r.draft
            {
                r.draft = false;
                r.immutable = immutable_releases;
            }
            if let Some(p) = prerelease {
                r.prerelease = p;
            }
            r.make_latest.extend(make_latest);
            if !r.draft {
                s.tags.insert(tag);
            }
            let json = s.release_json(&s.releases[i]);
            ok(200, json)
        }
        ("GET", ["releases", id, "assets"]) => {
            let id: u64 = id.parse().unwrap_or(0);
            match s.releases.iter().find(|r| r.id == id) {
                Some(r) => {
                    let listed: Vec<Value> = page(&r.assets, req)
                        .iter()
                        .map(|a| s.asset_json(a))
                        .collect();
                    ok(200, Value::Array(listed))
                }
                None => fail(404, "Not Found"),
            }
        }
        _ => fail(404, "Not Found"),
    }
}

fn upload(s: &mut State, req: &Request, id: u64) -> (ResponseTemplate, u16) {
    if header(req, "content-type") != Some("application/octet-stream") {
        return fail(415, "the fake wants Content-Type: application/octet-stream");
    }
    let Some(name) = query(req, "name") else {
        return fail(422, "name is required");
    };
    let aid = s.id();
    let Some(i) = s.releases.iter().position(|r| r.id == id) else {
        return fail(404, "Not Found");
    };
    if s.releases[i].immutable {
        return fail(422, "Cannot upload assets to an immutable release.");
    }
    if s.releases[i].assets.iter().any(|a| a.name == name) {
        return (
            validation_failed("ReleaseAsset", "already_exists", "name"),
            422,
        );
    }
    let asset = FakeAsset {
        id: aid,
        name,
        state: "uploaded".into(),
        digest: Some(sha256(&req.body)),
        size: req.body.len(),
    };
    let json = s.asset_json(&asset);
    s.releases[i].assets.push(asset);
    ok(201, json)
}
