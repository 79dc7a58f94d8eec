//! PyPI: stage = upload every voted file (sdist and wheels) to the staging index (Test PyPI
//! by default); promote = upload the same voted bytes to the production index
//! (`PromotionMechanism::Reupload`: nothing on Test PyPI ever becomes production, so the
//! pipeline seals the voted revision's files again and hands them over, see `mod.rs`).
//!
//! Requests:
//! - upload: the legacy upload API, `POST <upload URL>` (`https://upload.pypi.org/legacy/`,
//!   `https://test.pypi.org/legacy/`, `/` on pypiserver), `multipart/form-data` with
//!   `:action=file_upload`, `protocol_version=1`, `filetype`, `pyversion`, `sha256_digest`,
//!   the file as `content`, and the core metadata as form fields. Basic auth,
//!   `__token__` and the API token (`username` in the configuration for an index that wants
//!   another user name).
//! - read back: the JSON API, `GET <read URL>pypi/<name>/<version>/json`,
//!   `urls[].{filename, digests.sha256, upload_time_iso_8601}`; where the index has none
//!   (pypiserver: 404), the simple API, `GET <read URL>simple/<name>/` in its PEP 691
//!   JSON form (`files[].hashes.sha256`) or its PEP 503 HTML form (`#sha256=` fragments),
//!   keeping the files of this version. A read URL that is itself a simple API's root (its
//!   path ends in `/simple/` or `/+simple/`, as devpi's `/<user>/<index>/+simple/`) is read
//!   there only, `GET <read URL><name>/`: devpi has no JSON API of PyPI's form, and its
//!   simple API is not at `simple/`.
//!
//! Attestations (PEP 740): a voted file's attestation, `<file>.publish.attestation` beside
//! it in the revision (the name `pypa/gh-action-pypi-publish` and `pypi-attestations` write,
//! one attestation object as JSON), is passed through with the upload as the `attestations`
//! form field, a JSON array holding it (PyPI's upload API; an index that does not verify
//! attestations ignores the field). The pipeline seals it like any voted file
//! ([`PlatformAdapter::companions`]); it is checked to be a JSON object of at most
//! [`MAX_ATTESTATION`] bytes and sent unchanged. It does not enter the platform digest
//! (indexes report the files' sha256 only), but it is part of the voted manifest, so a
//! changed attestation is a changed revision.
//!
//! The metadata is never invented: it is read from the file itself, `<dir>/PKG-INFO` in an
//! sdist (`.tar.gz`), `<name>-<version>.dist-info/METADATA` in a wheel, and its `Name`
//! (compared PEP 503-normalised) and `Version` must be the distribution's, and the file
//! name's, or nothing is sent. Inspection reads the sealed copy, is bounded in entries and
//! unpacked bytes, refuses archives that hold the metadata file twice, and stops when its job
//! is cancelled.
//!
//! The platform digest of a version is one sha256 over its files: the lines
//! `<filename> <sha256 hex>\n`, sorted by file name, hashed together. The same bytes under the
//! same names give the same digest on staging and production, so the pipeline's "staged ==
//! promoted" checks hold for PyPI as for the other platforms; an index holding another file
//! for the version, or a file under our name with other bytes, gives another digest.
//!
//! Indexes never check `sha256_digest` reliably (pypiserver and devpi ignore it), so every
//! upload is followed by our own read-back of the file's sha256. A file that is there
//! already with the sealed sha256 counts as uploaded; with another sha256 the stage (or
//! promote) is refused before anything is sent (PyPI never accepts a file name twice). An
//! upload whose answer is lost, or refused ("File already exists", 400 on PyPI, 409 on
//! pypiserver), is settled by reading back (`write.rs`). Tags mean nothing on PyPI: the
//! staging tag names the index and is only recorded.

use std::collections::HashSet;
use std::io::{Cursor, Read};

use atr_dist_shared::names::{ArtifactPath, DistTag};
use atr_dist_shared::{Digest, DistributionKey, ErrorClass, PromotionMechanism};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, LOCATION};
use serde_json::Value;
use url::Url;

use super::http::{PlatformHttp, error_for};
use super::write::{Found, Written, confirmed};
use super::{
    Observed, PlannedWrite, PlatformAdapter, PlatformError, PromoteRequest, Sealed, StageRequest,
    refuse_above,
};
use crate::blocking::{self, Bounded, Cancel};
use crate::config::{ConfigError, PlatformConfig};
use crate::secret::Secret;

pub const DEFAULT_UPLOAD_URL: &str = "https://upload.pypi.org/legacy/";
pub const DEFAULT_READ_URL: &str = "https://pypi.org/";
pub const DEFAULT_STAGING_UPLOAD_URL: &str = "https://test.pypi.org/legacy/";
pub const DEFAULT_STAGING_READ_URL: &str = "https://test.pypi.org/";
const SECTION: &str = "platforms.pypi";

/// PyPI's own limit on a file is 100 MB unless raised for a project; 1 GiB is far above
/// any raised one, and files are read whole for inspection.
const MAX_FILE: u64 = 1024 * 1024 * 1024;
/// Inspection unpacks at most this much (a gzip bomb stops here) ...
const MAX_UNPACKED: u64 = 4 * 1024 * 1024 * 1024;
/// ... reads at most this many entries ...
const MAX_ENTRIES: usize = 200_000;
/// ... and a metadata file of at most this size.
const MAX_METADATA: u64 = 4 * 1024 * 1024;
/// An attestation (a Sigstore certificate, a transparency log entry and a signed statement)
/// is a few kilobytes.
pub const MAX_ATTESTATION: u64 = 1024 * 1024;
/// What a file's PEP 740 attestation is named beside it.
pub const ATTESTATION_SUFFIX: &str = ".publish.attestation";

/// Which of the two indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Staging,
    Production,
}

impl Which {
    fn as_str(self) -> &'static str {
        match self {
            Which::Staging => "the staging index",
            Which::Production => "the production index",
        }
    }
}

/// One package index: where files are uploaded, where they are read back, and the
/// credentials for uploading.
pub struct Index {
    http: PlatformHttp,
    upload: Url,
    read: Url,
    /// `Basic` credentials, marked sensitive.
    auth: Option<HeaderValue>,
    /// The public PyPI or Test PyPI, whose web pages are linked.
    web: Option<&'static str>,
    /// `read` is the root of a simple API (`…/simple/`, devpi's `…/+simple/`): files are
    /// listed at `<read><name>/`, and there is no JSON API to ask first.
    simple_root: bool,
}

/// An index's settings.
#[derive(Debug, Clone)]
pub struct IndexSettings {
    pub upload: Url,
    pub read: Url,
    pub username: String,
    pub token: Option<Secret>,
}

fn with_slash(url: Url) -> Url {
    if url.path().ends_with('/') {
        return url;
    }
    let mut url = url;
    let path = format!("{}/", url.path());
    url.set_path(&path);
    url
}

impl Index {
    pub fn new(s: IndexSettings) -> Result<Index, PlatformError> {
        let read = with_slash(s.read);
        let http = PlatformHttp::new(&[&s.upload, &read], None)?;
        let auth = match &s.token {
            Some(token) => {
                let raw = STANDARD.encode(format!("{}:{}", s.username, token.expose()));
                let mut v = HeaderValue::from_str(&format!("Basic {raw}")).map_err(|_| {
                    PlatformError::permanent("the PyPI token is not usable in an HTTP header")
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let simple_root = read.path().ends_with("/simple/") || read.path().ends_with("/+simple/");
        let web = match read.as_str() {
            DEFAULT_READ_URL => Some("https://pypi.org/project"),
            DEFAULT_STAGING_READ_URL => Some("https://test.pypi.org/project"),
            _ => None,
        };
        Ok(Index {
            http,
            upload: s.upload,
            read,
            auth,
            web,
            simple_root,
        })
    }

    fn url(&self, path: &str) -> Url {
        // The base ends in '/', and paths here are built from validated names only.
        self.read.join(path).unwrap_or_else(|_| self.read.clone())
    }
}

pub struct PypiAdapter {
    staging: Index,
    production: Index,
}

/// A file the index lists for the version.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    filename: String,
    sha256: String,
    uploaded: Option<chrono::DateTime<chrono::Utc>>,
}

/// The files of one version on one index, as read back.
struct Listing {
    files: Vec<Listed>,
    api_url: String,
}

/// A voted file, inspected, ready to upload.
struct Upload {
    sealed: Sealed,
    filename: String,
    sha256_hex: String,
    filetype: &'static str,
    pyversion: String,
    /// The core metadata as form fields, in the file's order.
    fields: Vec<(String, String)>,
    /// The `attestations` form field: a JSON array of the file's attestation, when the
    /// revision holds one.
    attestations: Option<String>,
}

/// The `attestations` form field for `file`: its `<path>.publish.attestation` among the
/// sealed companions, as a JSON array, or None when the revision holds none.
async fn attestation_for(
    file: &Sealed,
    companions: &[Sealed],
) -> Result<Option<String>, PlatformError> {
    let want = format!("{}{ATTESTATION_SUFFIX}", file.path());
    let Some(companion) = companions.iter().find(|c| c.path().as_str() == want) else {
        return Ok(None);
    };
    refuse_above(companion, MAX_ATTESTATION, "attestations")?;
    let bytes = companion
        .bytes()
        .await
        .map_err(|e| PlatformError::transient(e.to_string()))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| PlatformError::permanent(format!("{want} is not UTF-8: {e}")))?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(_)) => Ok(Some(format!("[{}]", text.trim()))),
        Ok(_) => Err(PlatformError::permanent(format!(
            "{want} is not a PEP 740 attestation: not a JSON object"
        ))),
        Err(e) => Err(PlatformError::permanent(format!(
            "{want} is not a PEP 740 attestation: {e}"
        ))),
    }
}

/// PEP 503: lower case, runs of `-`, `_` and `.` as one `-`.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
            continue;
        }
        if sep && !out.is_empty() {
            out.push('-');
        }
        sep = false;
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// What kind of file a name is, with the project and version its name gives.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FileKind {
    Sdist {
        name: String,
        version: String,
    },
    Wheel {
        name: String,
        version: String,
        python: String,
    },
}

fn file_kind(filename: &str) -> Option<FileKind> {
    if let Some(stem) = filename.strip_suffix(".tar.gz") {
        let (name, version) = stem.rsplit_once('-')?;
        return Some(FileKind::Sdist {
            name: name.to_owned(),
            version: version.to_owned(),
        });
    }
    let stem = filename.strip_suffix(".whl")?;
    // name-version(-build)?-python-abi-platform
    let parts: Vec<&str> = stem.split('-').collect();
    if !(5..=6).contains(&parts.len()) {
        return None;
    }
    Some(FileKind::Wheel {
        name: parts[0].to_owned(),
        version: parts[1].to_owned(),
        python: parts[parts.len() - 3].to_owned(),
    })
}

/// Whether an index's file belongs to this version.
fn of_version(filename: &str, key: &DistributionKey) -> bool {
    match file_kind(filename) {
        Some(FileKind::Sdist { name, version } | FileKind::Wheel { name, version, .. }) => {
            normalize(&name) == normalize(key.package.as_str()) && version == key.version.as_str()
        }
        None => false,
    }
}

/// A version's platform digest (`platform::files_digest`).
use super::files_digest as digest_of;

fn hex_of(d: &Digest) -> String {
    hex::encode(d.bytes())
}

/// The file name an artifact is uploaded under: its last path component.
fn filename_of(sealed: &Sealed) -> String {
    let path = sealed.path().as_str();
    path.rsplit('/').next().unwrap_or(path).to_owned()
}

fn read_metadata(
    mut r: impl Read,
    bad: &impl Fn(String) -> PlatformError,
) -> Result<String, PlatformError> {
    let mut text = String::new();
    r.by_ref()
        .take(MAX_METADATA + 1)
        .read_to_string(&mut text)
        .map_err(|e| bad(format!("the metadata file is unreadable: {e}")))?;
    if text.len() as u64 > MAX_METADATA {
        return Err(bad(format!(
            "the metadata file is larger than {MAX_METADATA} bytes; refused"
        )));
    }
    Ok(text)
}

/// `<dir>/PKG-INFO` of an sdist, read once through the whole archive: each path once, none
/// outside the archive's directory.
fn sdist_metadata(name: &str, bytes: &[u8], cancel: &Cancel) -> Result<String, PlatformError> {
    let bad = |what: String| PlatformError::permanent(format!("{name}: {what}"));
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Err(bad("not a gzipped tar (no gzip header)".into()));
    }
    let unpacked = Bounded::new(
        flate2::read::GzDecoder::new(bytes),
        MAX_UNPACKED,
        "the archive",
    );
    let mut archive = tar::Archive::new(unpacked);
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("not a gzipped tar: {e}")))?;
    let mut seen: HashSet<String> = HashSet::new();
    let mut found: Option<(String, String)> = None;
    for entry in entries {
        cancel
            .check()
            .map_err(|c| PlatformError::transient(format!("{name}: {c}")))?;
        let mut entry = entry.map_err(|e| bad(format!("unreadable tar entry: {e}")))?;
        if seen.len() >= MAX_ENTRIES {
            return Err(bad(format!("more than {MAX_ENTRIES} entries; refused")));
        }
        let raw = entry
            .path()
            .map_err(|e| bad(format!("an entry's path is unreadable: {e}")))?
            .to_string_lossy()
            .into_owned();
        let parts: Vec<&str> = raw
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        if parts.contains(&"..") || raw.starts_with('/') {
            return Err(bad(format!("entry {raw:?} points outside the archive")));
        }
        let path = parts.join("/");
        if !seen.insert(path.clone()) {
            return Err(bad(format!(
                "the archive holds {path} more than once; what the index shows and what installers unpack could differ"
            )));
        }
        if parts.len() != 2 || parts[1] != "PKG-INFO" {
            continue;
        }
        if let Some((first, _)) = &found {
            return Err(bad(format!(
                "two PKG-INFO files ({first} and {path}); which one the index reads is not clear"
            )));
        }
        found = Some((path, read_metadata(&mut entry, &bad)?));
    }
    found
        .map(|(_, text)| text)
        .ok_or_else(|| bad("no <name>-<version>/PKG-INFO; it is not an sdist".into()))
}

/// `<name>-<version>.dist-info/METADATA` of a wheel; every entry name once.
fn wheel_metadata(name: &str, bytes: &[u8], cancel: &Cancel) -> Result<String, PlatformError> {
    let bad = |what: String| PlatformError::permanent(format!("{name}: {what}"));
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| bad(format!("not a zip archive: {e}")))?;
    if archive.len() > MAX_ENTRIES {
        return Err(bad(format!("more than {MAX_ENTRIES} entries; refused")));
    }
    let mut seen: HashSet<String> = HashSet::new();
    let mut found: Option<usize> = None;
    for i in 0..archive.len() {
        cancel
            .check()
            .map_err(|c| PlatformError::transient(format!("{name}: {c}")))?;
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| bad(format!("unreadable zip entry: {e}")))?;
        let path = entry
            .name()
            .map_err(|e| bad(format!("an entry's name is unreadable: {e}")))?
            .into_owned();
        if !seen.insert(path.clone()) {
            return Err(bad(format!(
                "the wheel holds {path} more than once; what the index shows and what installers unpack could differ"
            )));
        }
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() == 2 && parts[0].ends_with(".dist-info") && parts[1] == "METADATA" {
            if found.is_some() {
                return Err(bad(
                    "two .dist-info/METADATA files; which one the index reads is not clear".into(),
                ));
            }
            found = Some(i);
        }
    }
    let Some(i) = found else {
        return Err(bad(
            "no <name>-<version>.dist-info/METADATA; it is not a wheel".into(),
        ));
    };
    let entry = archive
        .by_index(i)
        .map_err(|e| bad(format!("METADATA is unreadable: {e}")))?;
    read_metadata(entry, &bad)
}

/// Core metadata (RFC 822 headers, then the description as the body): every header in the
/// file's order, the body as `Description` when there is one.
fn parse_metadata(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut lines = text.split('\n');
    let mut body = None;
    for line in lines.by_ref() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            body = Some(());
            break;
        }
        if line.starts_with([' ', '\t']) {
            let Some((_, value)) = headers.last_mut() else {
                return Err("a continuation line before any header".into());
            };
            value.push('\n');
            value.push_str(line.trim_start());
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("{line:?} is not a header"));
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(format!("{name:?} is not a header name"));
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    if body.is_some() {
        let rest: Vec<&str> = lines.collect();
        let description = rest.join("\n");
        if !description.trim().is_empty() {
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case("Description"));
            headers.push(("Description".into(), description));
        }
    }
    Ok(headers)
}

/// The legacy upload form's name for a core metadata field, as twine (the reference
/// client for PyPI) sends it, or None for a field the form does not take. Fields not in
/// the core metadata specification are not sent (twine refuses such files; PyPI could
/// reject the upload), and `License-File` only from Metadata-Version 2.4 on (setuptools
/// wrote it into 2.1 metadata, where it is not defined).
fn form_name(header: &str, metadata_version: (u32, u32)) -> Option<&'static str> {
    Some(match header.to_ascii_lowercase().as_str() {
        "metadata-version" => "metadata_version",
        "name" => "name",
        "version" => "version",
        "platform" => "platform",
        "summary" => "summary",
        "description" => "description",
        "keywords" => "keywords",
        "home-page" => "home_page",
        "author" => "author",
        "author-email" => "author_email",
        "license" => "license",
        "supported-platform" => "supported_platform",
        "download-url" => "download_url",
        "classifier" => "classifiers",
        "requires" => "requires",
        "provides" => "provides",
        "obsoletes" => "obsoletes",
        "maintainer" => "maintainer",
        "maintainer-email" => "maintainer_email",
        "requires-dist" => "requires_dist",
        "provides-dist" => "provides_dist",
        "obsoletes-dist" => "obsoletes_dist",
        "requires-python" => "requires_python",
        "requires-external" => "requires_external",
        "project-url" => "project_urls",
        "description-content-type" => "description_content_type",
        "provides-extra" => "provides_extra",
        "dynamic" => "dynamic",
        "license-expression" => "license_expression",
        "license-file" if metadata_version >= (2, 4) => "license_file",
        _ => return None,
    })
}

/// `Metadata-Version` as (major, minor); (0, 0) when unreadable, which sends no field that
/// needs a later version.
fn metadata_version(fields: &[(String, String)]) -> (u32, u32) {
    let Some((_, v)) = fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Metadata-Version"))
    else {
        return (0, 0);
    };
    let mut parts = v.trim().split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor),
        (Some(major), None) => (major, 0),
        _ => (0, 0),
    }
}

/// Inspects one voted file: its kind, its metadata, and that both name this distribution.
fn inspect(
    key: &DistributionKey,
    filename: &str,
    bytes: &[u8],
    cancel: &Cancel,
) -> Result<(FileKind, Vec<(String, String)>), PlatformError> {
    let bad = |what: String| PlatformError::permanent(format!("{filename}: {what}"));
    let Some(kind) = file_kind(filename) else {
        return Err(bad(
            "not a wheel (.whl) or an sdist (.tar.gz); PyPI takes no other files".into(),
        ));
    };
    let text = match &kind {
        FileKind::Sdist { .. } => sdist_metadata(filename, bytes, cancel)?,
        FileKind::Wheel { .. } => wheel_metadata(filename, bytes, cancel)?,
    };
    let headers = parse_metadata(&text).map_err(|e| bad(format!("unreadable metadata: {e}")))?;
    let field = |want: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(want))
            .map(|(_, v)| v.as_str())
    };
    let (Some(_), Some(name), Some(version)) =
        (field("Metadata-Version"), field("Name"), field("Version"))
    else {
        return Err(bad(
            "the metadata lacks Metadata-Version, Name or Version".into()
        ));
    };
    let want = key.package.as_str();
    if normalize(name) != normalize(want) || version != key.version.as_str() {
        return Err(PlatformError::permanent(format!(
            "{filename} is {name} {version}, not {want} {}: refusing to upload it under that name",
            key.version
        )));
    }
    let (FileKind::Sdist {
        name: file_name,
        version: file_version,
    }
    | FileKind::Wheel {
        name: file_name,
        version: file_version,
        ..
    }) = &kind;
    if normalize(file_name) != normalize(want) || file_version != version {
        return Err(bad(format!(
            "the file name says {file_name} {file_version}, the metadata {name} {version}"
        )));
    }
    Ok((kind, headers))
}

/// The multipart boundary of a file's upload: `atr-dist-` and the file's own sha256. A
/// multipart part has no length, so a boundary inside the file or one of its metadata
/// values would end the part there, and what follows would be read as other fields. A file
/// cannot hold its own sha256 (nor can the metadata unpacked from it), so this one is
/// never inside the form's content; `form_head` checks the metadata values anyway.
fn boundary(u: &Upload) -> String {
    format!("atr-dist-{}", u.sha256_hex)
}

/// The multipart body's text fields and the head of the file part.
fn form_head(u: &Upload) -> Result<Vec<u8>, PlatformError> {
    let boundary = boundary(u);
    if let Some((name, _)) = u.fields.iter().find(|(_, v)| v.contains(&boundary)) {
        return Err(PlatformError::permanent(format!(
            "{}: its metadata field {name} contains the file's own sha256; refused",
            u.filename
        )));
    }
    if u.attestations
        .as_ref()
        .is_some_and(|a| a.contains(&boundary))
    {
        return Err(PlatformError::permanent(format!(
            "{}: its attestation contains the file's own sha256 after the form's boundary prefix; refused",
            u.filename
        )));
    }
    let mut out = Vec::new();
    let mut field = |name: &str, value: &str| {
        out.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    };
    let version = metadata_version(&u.fields);
    field(":action", "file_upload");
    field("protocol_version", "1");
    field("filetype", u.filetype);
    field("pyversion", &u.pyversion);
    field("sha256_digest", &u.sha256_hex);
    for (name, value) in &u.fields {
        if let Some(form) = form_name(name, version) {
            field(form, value);
        }
    }
    if let Some(attestations) = &u.attestations {
        field("attestations", attestations);
    }
    out.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"content\"; filename=\"{}\"\r\nContent-Type: application/octet-stream\r\n\r\n",
            u.filename
        )
        .as_bytes(),
    );
    Ok(out)
}

fn form_tail(u: &Upload) -> Vec<u8> {
    format!("\r\n--{}--\r\n", boundary(u)).into_bytes()
}

impl PypiAdapter {
    pub fn new(
        staging: IndexSettings,
        production: IndexSettings,
    ) -> Result<PypiAdapter, PlatformError> {
        Ok(PypiAdapter {
            staging: Index::new(staging)?,
            production: Index::new(production)?,
        })
    }

    fn index(&self, which: Which) -> &Index {
        match which {
            Which::Staging => &self.staging,
            Which::Production => &self.production,
        }
    }

    /// Sends a read, following one redirect on the same origin (PyPI sends a project's
    /// JSON to its canonical name).
    async fn get(
        &self,
        index: &Index,
        url: &Url,
        accept: &'static str,
    ) -> Result<(reqwest::Response, Url), PlatformError> {
        let mut url = url.clone();
        for _ in 0..2 {
            let what = format!("GET {url}");
            let resp = index
                .http
                .send(&what, |c| c.get(url.clone()).header(ACCEPT, accept))
                .await?;
            if !resp.status().is_redirection() {
                return Ok((resp, url));
            }
            let next = resp
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.join(l).ok())
                .ok_or_else(|| {
                    PlatformError::transient(format!(
                        "{what}: a redirect without a usable Location"
                    ))
                })?;
            url = next;
        }
        Err(PlatformError::transient(format!(
            "GET {url}: redirected more than once"
        )))
    }

    /// The files the index lists for this version, or None when it lists none.
    async fn listing(
        &self,
        which: Which,
        key: &DistributionKey,
    ) -> Result<Option<Listing>, PlatformError> {
        let index = self.index(which);
        let name = normalize(key.package.as_str());
        if index.simple_root {
            return self
                .simple_listing(index, key, index.url(&format!("{name}/")))
                .await;
        }
        let json_url = index.url(&format!("pypi/{name}/{}/json", key.version));
        let (resp, at) = self.get(index, &json_url, "application/json").await?;
        if resp.status().is_success() {
            let what = format!("GET {at}");
            let doc: Value = resp
                .json()
                .await
                .map_err(|e| PlatformError::transient(format!("{what}: unreadable JSON: {e}")))?;
            let files = json_api_files(&doc, key).map_err(|e| {
                PlatformError::permanent(format!("{what}: {e}; cannot verify the files"))
            })?;
            return Ok((!files.is_empty()).then(|| Listing {
                files,
                api_url: json_url.to_string(),
            }));
        }
        // 404: no such version, or no JSON API (pypiserver, devpi answer 404 or 415).
        if !matches!(
            resp.status(),
            StatusCode::NOT_FOUND
                | StatusCode::UNSUPPORTED_MEDIA_TYPE
                | StatusCode::METHOD_NOT_ALLOWED
        ) {
            return Err(error_for(resp, &format!("GET {at}")).await);
        }
        self.simple_listing(index, key, index.url(&format!("simple/{name}/")))
            .await
    }

    /// The files of this version a simple API page (`<root><name>/`) lists.
    async fn simple_listing(
        &self,
        index: &Index,
        key: &DistributionKey,
        simple_url: Url,
    ) -> Result<Option<Listing>, PlatformError> {
        let (resp, at) = self
            .get(
                index,
                &simple_url,
                "application/vnd.pypi.simple.v1+json, text/html;q=0.5",
            )
            .await?;
        let what = format!("GET {at}");
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(error_for(resp, &what).await);
        }
        let json = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.contains("json"));
        let text = resp
            .text()
            .await
            .map_err(|e| PlatformError::transient(format!("{what}: unreadable answer: {e}")))?;
        let files = if json {
            let doc: Value = serde_json::from_str(&text)
                .map_err(|e| PlatformError::transient(format!("{what}: unreadable JSON: {e}")))?;
            simple_json_files(&doc)
        } else {
            simple_html_files(&text)
        }
        .map_err(|e| PlatformError::permanent(format!("{what}: {e}; cannot verify the files")))?;
        let files: Vec<Listed> = files
            .into_iter()
            .filter(|f| of_version(&f.filename, key))
            .collect();
        Ok((!files.is_empty()).then(|| Listing {
            files,
            api_url: simple_url.to_string(),
        }))
    }

    fn observe(&self, which: Which, key: &DistributionKey, listing: &Listing) -> Observed {
        let digest = digest_of(
            listing
                .files
                .iter()
                .map(|f| (f.filename.as_str(), f.sha256.as_str())),
        );
        let web_url = self.index(which).web.map(|base| {
            format!(
                "{base}/{}/{}/",
                normalize(key.package.as_str()),
                key.version
            )
        });
        Observed {
            digest,
            api_url: Some(listing.api_url.clone()),
            web_url,
            upload_date: listing.files.iter().filter_map(|f| f.uploaded).max(),
        }
    }

    async fn read(
        &self,
        which: Which,
        key: &DistributionKey,
    ) -> Result<Option<Observed>, PlatformError> {
        Ok(self
            .listing(which, key)
            .await?
            .map(|l| self.observe(which, key, &l)))
    }

    /// Reads and inspects the voted files (on the blocking pool, cancellable), each with its
    /// attestation among `companions` if the revision holds one.
    async fn uploads(
        key: &DistributionKey,
        artifacts: &[Sealed],
        companions: &[Sealed],
    ) -> Result<Vec<Upload>, PlatformError> {
        if artifacts.is_empty() {
            return Err(PlatformError::permanent(
                "no files to upload; a PyPI release needs at least one sdist or wheel",
            ));
        }
        let mut names = HashSet::new();
        let mut out = Vec::with_capacity(artifacts.len());
        for sealed in artifacts {
            let filename = filename_of(sealed);
            // PyPI's file names are project name, version and tags: nothing that needs
            // quoting in a form's header.
            if !filename
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-+!".contains(c))
            {
                return Err(PlatformError::permanent(format!(
                    "{filename:?} is not a PyPI file name (letters, digits and ._-+! only)"
                )));
            }
            if !names.insert(filename.clone()) {
                return Err(PlatformError::permanent(format!(
                    "two files are named {filename}; PyPI keys files by name"
                )));
            }
            refuse_above(sealed, MAX_FILE, "files")?;
            let bytes = sealed
                .bytes()
                .await
                .map_err(|e| PlatformError::transient(e.to_string()))?;
            let (k, f, b) = (key.clone(), filename.clone(), bytes.clone());
            let (kind, fields) = blocking::run(move |cancel: &Cancel| inspect(&k, &f, &b, cancel))
                .await
                .map_err(|e| PlatformError::transient(format!("inspecting {filename}: {e}")))??;
            let (filetype, pyversion) = match kind {
                FileKind::Sdist { .. } => ("sdist", "source".to_owned()),
                FileKind::Wheel { python, .. } => ("bdist_wheel", python),
            };
            out.push(Upload {
                sealed: sealed.clone(),
                filename,
                sha256_hex: hex_of(sealed.sha256()),
                filetype,
                pyversion,
                fields,
                attestations: attestation_for(sealed, companions).await?,
            });
        }
        Ok(out)
    }

    /// Uploads every file the index does not hold yet, after checking that it holds no
    /// other bytes under our names and no other files for the version, then reads every
    /// file back.
    async fn publish(
        &self,
        which: Which,
        key: &DistributionKey,
        artifacts: &[Sealed],
        companions: &[Sealed],
    ) -> Result<(), PlatformError> {
        let uploads = Self::uploads(key, artifacts, companions).await?;
        let before = self.listing(which, key).await?;
        let held = before.map(|l| l.files).unwrap_or_default();
        let ours: HashSet<&str> = uploads.iter().map(|u| u.filename.as_str()).collect();
        let foreign: Vec<&str> = held
            .iter()
            .filter(|f| !ours.contains(f.filename.as_str()))
            .map(|f| f.filename.as_str())
            .collect();
        if !foreign.is_empty() {
            return Err(PlatformError::permanent(format!(
                "{} holds files for {} {} that were not voted ({}); nothing uploaded",
                which.as_str(),
                key.package,
                key.version,
                foreign.join(", ")
            )));
        }
        for u in &uploads {
            if let Some(f) = held.iter().find(|f| f.filename == u.filename)
                && f.sha256 != u.sha256_hex
            {
                return Err(PlatformError::permanent(format!(
                    "{} holds {} with sha256 {}, not the voted {}; PyPI never replaces a file; nothing uploaded",
                    which.as_str(),
                    u.filename,
                    f.sha256,
                    u.sha256_hex
                )));
            }
        }
        for u in &uploads {
            if held.iter().any(|f| f.filename == u.filename) {
                continue;
            }
            self.upload(which, key, u).await?;
        }
        let after = self.listing(which, key).await?.ok_or_else(|| {
            PlatformError::transient(format!(
                "{} lists no files for {} {} after uploading",
                which.as_str(),
                key.package,
                key.version
            ))
        })?;
        for u in &uploads {
            match after.files.iter().find(|f| f.filename == u.filename) {
                Some(f) if f.sha256 == u.sha256_hex => {}
                Some(f) => {
                    return Err(PlatformError::permanent(format!(
                        "after uploading, {} reports sha256 {} for {}, not the voted {}",
                        which.as_str(),
                        f.sha256,
                        u.filename,
                        u.sha256_hex
                    )));
                }
                None => {
                    return Err(PlatformError::transient(format!(
                        "{} does not list {} yet after uploading it",
                        which.as_str(),
                        u.filename
                    )));
                }
            }
        }
        Ok(())
    }

    /// One upload, through the read-back protocol.
    async fn upload(
        &self,
        which: Which,
        key: &DistributionKey,
        u: &Upload,
    ) -> Result<(), PlatformError> {
        let index = self.index(which);
        let what = format!("POST {} ({})", index.upload, u.filename);
        let head = Bytes::from(form_head(u)?);
        let tail = Bytes::from(form_tail(u));
        let content_type = format!("multipart/form-data; boundary={}", boundary(u));
        let length = head.len() as u64 + u.sealed.size() + tail.len() as u64;
        let written = confirmed(
            &index.http,
            &what,
            || {
                index.http.write(&what, |c| {
                    let body = futures::stream::iter([Ok::<Bytes, std::io::Error>(head.clone())])
                        .chain(u.sealed.stream())
                        .chain(futures::stream::iter([Ok(tail.clone())]));
                    let req = c
                        .post(index.upload.clone())
                        .header(CONTENT_TYPE, content_type.clone())
                        .header(CONTENT_LENGTH, length)
                        .body(reqwest::Body::wrap_stream(body));
                    match &index.auth {
                        Some(auth) => req.header(AUTHORIZATION, auth.clone()),
                        None => req,
                    }
                })
            },
            || async {
                let listing = self.listing(which, key).await?;
                let found = listing
                    .as_ref()
                    .and_then(|l| l.files.iter().find(|f| f.filename == u.filename));
                Ok(match found {
                    Some(f) if f.sha256 == u.sha256_hex => Found::Expected,
                    Some(f) => Found::Other(format!(
                        "{} holds {} with sha256 {}, not the voted {}",
                        which.as_str(),
                        u.filename,
                        f.sha256,
                        u.sha256_hex
                    )),
                    None => Found::Nothing,
                })
            },
            |resp| classify(resp, &what),
        )
        .await?;
        if let Written::FoundDone = written {
            tracing::info!(file = %u.filename, "the upload's answer was lost or refused; the index holds the voted file");
        }
        Ok(())
    }

    fn plan(&self, which: Which, artifacts: &[Sealed], companions: &[Sealed]) -> Vec<PlannedWrite> {
        let index = self.index(which);
        artifacts
            .iter()
            .map(|a| {
                let attested = format!("{}{ATTESTATION_SUFFIX}", a.path());
                let with = if companions.iter().any(|c| c.path().as_str() == attested) {
                    " with its attestation"
                } else {
                    ""
                };
                PlannedWrite {
                    method: "POST",
                    url: index.upload.to_string(),
                    what: format!(
                        "upload {} (sha256 {}){with} to {}",
                        filename_of(a),
                        hex_of(a.sha256()),
                        which.as_str()
                    ),
                }
            })
            .collect()
    }

    /// The adapter from `[platforms.pypi]`, or None when the section sets no URL and no token
    /// ([`configured`]).
    pub fn from_config(config: &PlatformConfig) -> Result<Option<PypiAdapter>, ConfigError> {
        if configured(config).is_none() {
            return Ok(None);
        }
        let parse = |s: &str| Url::parse(s).unwrap_or_else(|e| unreachable!("{s}: {e}"));
        let username = config
            .username
            .clone()
            .unwrap_or_else(|| "__token__".to_owned());
        // An index at another address serves reads where it takes uploads (pypiserver),
        // unless told otherwise; the public ones read at pypi.org and test.pypi.org.
        let index = |upload: &Option<Url>,
                     read: &Option<Url>,
                     default_upload: &str,
                     default_read: &str,
                     token: &Option<Secret>| {
            let up = upload.clone().unwrap_or_else(|| parse(default_upload));
            let rd = match (read, upload) {
                (Some(r), _) => r.clone(),
                (None, Some(u)) => u.clone(),
                (None, None) => parse(default_read),
            };
            IndexSettings {
                upload: up,
                read: rd,
                username: username.clone(),
                token: token.clone(),
            }
        };
        let production = index(
            &config.base_url,
            &config.read_url,
            DEFAULT_UPLOAD_URL,
            DEFAULT_READ_URL,
            &config.token,
        );
        let staging = index(
            &config.staging_base_url,
            &config.staging_read_url,
            DEFAULT_STAGING_UPLOAD_URL,
            DEFAULT_STAGING_READ_URL,
            &config.staging_token,
        );
        PypiAdapter::new(staging, production)
            .map(Some)
            .map_err(|e| ConfigError::Invalid {
                key: SECTION.to_owned(),
                reason: e.message,
            })
    }
}

/// The staging and production upload URLs when `[platforms.pypi]` sets an index URL or a
/// token (the rule of `platform::enablement`: a worker left on defaults publishes nowhere),
/// else None.
pub fn configured(config: &PlatformConfig) -> Option<(String, String)> {
    let set = config.base_url.is_some()
        || config.staging_base_url.is_some()
        || config.read_url.is_some()
        || config.staging_read_url.is_some()
        || config.token.is_some()
        || config.staging_token.is_some();
    if !set {
        return None;
    }
    let url = |u: &Option<Url>, default: &str| {
        u.as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| default.to_owned())
    };
    Some((
        url(&config.staging_base_url, DEFAULT_STAGING_UPLOAD_URL),
        url(&config.base_url, DEFAULT_UPLOAD_URL),
    ))
}

/// `urls[]` of the JSON API's version document.
fn json_api_files(doc: &Value, key: &DistributionKey) -> Result<Vec<Listed>, String> {
    let Some(urls) = doc.get("urls").and_then(Value::as_array) else {
        return Err("no urls[] in the version's JSON".into());
    };
    urls.iter()
        .map(|u| {
            let filename = u
                .get("filename")
                .and_then(Value::as_str)
                .ok_or("a file without a filename")?;
            let sha256 = u
                .pointer("/digests/sha256")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{filename} has no digests.sha256"))?;
            let uploaded = u
                .get("upload_time_iso_8601")
                .and_then(Value::as_str)
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc));
            Ok(Listed {
                filename: filename.to_owned(),
                sha256: sha256.to_ascii_lowercase(),
                uploaded,
            })
        })
        .filter(|f: &Result<Listed, String>| match f {
            // The version document lists this version's files only; keep the check anyway.
            Ok(f) => of_version(&f.filename, key),
            Err(_) => true,
        })
        .collect()
}

/// PEP 691: `files[].{filename, hashes.sha256, upload-time}`.
fn simple_json_files(doc: &Value) -> Result<Vec<Listed>, String> {
    let Some(files) = doc.get("files").and_then(Value::as_array) else {
        return Err("no files[] in the simple API's JSON".into());
    };
    files
        .iter()
        .map(|f| {
            let filename = f
                .get("filename")
                .and_then(Value::as_str)
                .ok_or("a file without a filename")?;
            let sha256 = f
                .pointer("/hashes/sha256")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{filename} has no hashes.sha256"))?;
            let uploaded = f
                .get("upload-time")
                .and_then(Value::as_str)
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc));
            Ok(Listed {
                filename: filename.to_owned(),
                sha256: sha256.to_ascii_lowercase(),
                uploaded,
            })
        })
        .collect()
}

/// PEP 503: `<a href="…#sha256=<hex>">filename</a>`. Tags are found in an ASCII
/// lower-case copy, whose byte offsets are the original's.
fn simple_html_files(html: &str) -> Result<Vec<Listed>, String> {
    let lower = html.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(start) = lower[at..].find("<a ") {
        let attrs_start = at + start + 3;
        let Some(close) = lower[attrs_start..].find('>') else {
            break;
        };
        let attrs = &html[attrs_start..attrs_start + close];
        let text_start = attrs_start + close + 1;
        let Some(end) = lower[text_start..].find("</a>") else {
            return Err("an anchor without </a>".into());
        };
        let text = unescape(html[text_start..text_start + end].trim());
        at = text_start + end + 4;
        let Some(href) = attribute(attrs, "href") else {
            continue;
        };
        let href = unescape(&href);
        let Some((_, fragment)) = href.split_once('#') else {
            return Err(format!("{text} is listed without a #sha256= fragment"));
        };
        let Some(sha256) = fragment.strip_prefix("sha256=") else {
            return Err(format!("{text} is listed with #{fragment}, not a sha256"));
        };
        out.push(Listed {
            filename: text,
            sha256: sha256.to_ascii_lowercase(),
            uploaded: None,
        });
    }
    Ok(out)
}

/// The value of `name="…"` (or `'…'`) in an anchor's attributes.
fn attribute(attrs: &str, name: &str) -> Option<String> {
    let lower = attrs.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find(name) {
        let i = from + at;
        from = i + name.len();
        let before_ok = i == 0 || lower.as_bytes()[i - 1].is_ascii_whitespace();
        let tail = attrs[i + name.len()..].trim_start();
        if !before_ok || !tail.starts_with('=') {
            continue;
        }
        let value = tail[1..].trim_start();
        let quote = value.chars().next()?;
        if quote == '"' || quote == '\'' {
            let inner = &value[1..];
            return inner.find(quote).map(|end| inner[..end].to_owned());
        }
        return Some(
            value
                .split(|c: char| c.is_ascii_whitespace())
                .next()
                .unwrap_or("")
                .to_owned(),
        );
    }
    None
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// The index's refusals, with what to do about them.
async fn classify(resp: reqwest::Response, what: &str) -> PlatformError {
    let status = resp.status();
    let mut err = error_for(resp, what).await;
    if status == StatusCode::CONFLICT
        || (status == StatusCode::BAD_REQUEST && err.message.contains("already exists"))
    {
        err.class = ErrorClass::Permanent;
        err.message = format!(
            "{what}: the file exists already and PyPI never replaces a file ({})",
            err.message
        );
    } else if status == StatusCode::FORBIDDEN && err.message.to_ascii_lowercase().contains("token")
    {
        err.message = format!(
            "{what}: the index refused the token; use an API token that may upload to this project ({})",
            err.message
        );
    }
    err
}

impl PlatformAdapter for PypiAdapter {
    fn expected_digest<'a>(
        &'a self,
        req: &'a StageRequest,
    ) -> BoxFuture<'a, Result<Digest, PlatformError>> {
        async move {
            let uploads = Self::uploads(&req.key, &req.artifacts, &req.companions).await?;
            Ok(digest_of(
                uploads
                    .iter()
                    .map(|u| (u.filename.as_str(), u.sha256_hex.as_str())),
            ))
        }
        .boxed()
    }

    fn plan_stage(&self, req: &StageRequest) -> Vec<PlannedWrite> {
        self.plan(Which::Staging, &req.artifacts, &req.companions)
    }

    fn stage<'a>(&'a self, req: &'a StageRequest) -> BoxFuture<'a, Result<(), PlatformError>> {
        self.publish(Which::Staging, &req.key, &req.artifacts, &req.companions)
            .boxed()
    }

    fn read_staged<'a>(
        &'a self,
        key: &'a DistributionKey,
        _staging_tag: &'a DistTag,
    ) -> BoxFuture<'a, Result<Option<Observed>, PlatformError>> {
        self.read(Which::Staging, key).boxed()
    }

    fn plan_promote(&self, req: &PromoteRequest) -> Vec<PlannedWrite> {
        self.plan(Which::Production, &req.artifacts, &req.companions)
    }

    fn promote<'a>(&'a self, req: &'a PromoteRequest) -> BoxFuture<'a, Result<(), PlatformError>> {
        async move {
            // The pipeline checked these against the staged digest; an adapter called on its
            // own checks again, so that only what was staged reaches production.
            let sending = digest_of(
                req.artifacts
                    .iter()
                    .map(|a| (filename_of(a), hex_of(a.sha256())))
                    .collect::<Vec<_>>()
                    .iter()
                    .map(|(n, s)| (n.as_str(), s.as_str())),
            );
            if sending != req.staged_digest {
                return Err(PlatformError::permanent(format!(
                    "{} {}: the files to upload come to {sending}, not the staged {}; nothing promoted",
                    req.key.package, req.key.version, req.staged_digest
                )));
            }
            self.publish(Which::Production, &req.key, &req.artifacts, &req.companions)
                .await
        }
        .boxed()
    }

    fn read_promoted<'a>(
        &'a self,
        key: &'a DistributionKey,
        _release_tag: &'a DistTag,
    ) -> BoxFuture<'a, Result<Option<Observed>, PlatformError>> {
        self.read(Which::Production, key).boxed()
    }

    fn default_tags(&self, _key: &DistributionKey) -> (DistTag, DistTag) {
        (
            DistTag::new("staging").unwrap_or_else(|_| DistTag::latest()),
            DistTag::latest(),
        )
    }

    /// A file's PEP 740 attestation, `<file>.publish.attestation`.
    fn companions(&self, artifact: &ArtifactPath) -> Vec<ArtifactPath> {
        ArtifactPath::new(format!("{artifact}{ATTESTATION_SUFFIX}"))
            .into_iter()
            .collect()
    }

    fn staging(&self) -> crate::platform::Staging {
        crate::platform::Staging::Platform
    }

    fn promotion(&self) -> PromotionMechanism {
        PromotionMechanism::Reupload
    }
}

#[cfg(test)]
mod tests {
    use crate::seal::sealed_for_test;
    use atr_dist_shared::DigestAlgorithm;
    use sha2::{Digest as _, Sha256};
    use std::io::Write as _;

    use atr_dist_shared::Platform;
    use atr_dist_shared::names::{PackageName, ReleaseKey, RevisionKey, RevisionNumber, Version};

    use super::*;

    fn key(name: &str, version: &str) -> DistributionKey {
        DistributionKey::new(
            ReleaseKey::new(format!("example-{version}")).unwrap(),
            Platform::Pypi,
            "",
            PackageName::new(name).unwrap(),
            Version::new(version).unwrap(),
        )
        .unwrap()
    }

    fn tgz(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, content) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            header.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_cksum();
            builder.append(&header, content.as_bytes()).unwrap();
        }
        let mut gz = builder.into_inner().unwrap();
        gz.flush().unwrap();
        gz.finish().unwrap()
    }

    const PKG_INFO: &str = "Metadata-Version: 2.1\nName: Example_Lib\nVersion: 1.0.0\nClassifier: A\nClassifier: B\nProject-URL: Home, https://example.org\nDescription-Content-Type: text/plain\n\nLine one.\n\nLine two.\n";

    #[test]
    fn names_are_compared_pep_503_normalised() {
        assert_eq!(normalize("Example_Lib"), "example-lib");
        assert_eq!(normalize("a.-_b"), "a-b");
        assert_eq!(normalize("apache-airflow"), "apache-airflow");
    }

    #[test]
    fn file_names_give_kind_project_and_version() {
        assert_eq!(
            file_kind("example-lib-1.0.0.tar.gz"),
            Some(FileKind::Sdist {
                name: "example-lib".into(),
                version: "1.0.0".into()
            })
        );
        assert_eq!(
            file_kind("example_lib-1.0.0-1-cp311-cp311-manylinux_2_17_x86_64.whl"),
            Some(FileKind::Wheel {
                name: "example_lib".into(),
                version: "1.0.0".into(),
                python: "cp311".into()
            })
        );
        assert_eq!(file_kind("example-1.0.0.zip"), None);
        assert_eq!(file_kind("example-1.0.0-py3.whl"), None);
        let k = key("example-lib", "1.0.0");
        assert!(of_version("example_lib-1.0.0-py3-none-any.whl", &k));
        assert!(!of_version("example_lib-1.0.1-py3-none-any.whl", &k));
        assert!(!of_version("other-1.0.0.tar.gz", &k));
    }

    #[test]
    fn core_metadata_keeps_every_field_and_the_description_body() {
        let h = parse_metadata(PKG_INFO).unwrap();
        let classifiers: Vec<&str> = h
            .iter()
            .filter(|(n, _)| n == "Classifier")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(classifiers, ["A", "B"]);
        assert_eq!(
            h.last().unwrap(),
            &(
                "Description".to_owned(),
                "Line one.\n\nLine two.\n".to_owned()
            )
        );
        let v21 = metadata_version(&h);
        assert_eq!(v21, (2, 1));
        let version_of = |v: &str| metadata_version(&[("Metadata-Version".into(), v.into())]);
        assert_eq!(version_of("2"), (2, 0));
        assert_eq!(version_of(" 2.4 "), (2, 4));
        assert_eq!(version_of("two"), (0, 0));
        assert_eq!(form_name("Classifier", v21), Some("classifiers"));
        assert_eq!(form_name("Project-URL", v21), Some("project_urls"));
        assert_eq!(
            form_name("Description-Content-Type", v21),
            Some("description_content_type")
        );
        assert_eq!(form_name("License-File", v21), None);
        assert_eq!(form_name("License-File", (2, 4)), Some("license_file"));
        assert_eq!(form_name("X-Custom", v21), None);
        // Every core metadata field (up to Metadata-Version 2.4) under the name PyPI's upload
        // form (warehouse's legacy API) takes it by, in any case.
        let fields = [
            ("Metadata-Version", "metadata_version"),
            ("Name", "name"),
            ("Version", "version"),
            ("Platform", "platform"),
            ("Summary", "summary"),
            ("Description", "description"),
            ("Keywords", "keywords"),
            ("Home-page", "home_page"),
            ("Author", "author"),
            ("Author-email", "author_email"),
            ("License", "license"),
            ("Supported-Platform", "supported_platform"),
            ("Download-URL", "download_url"),
            ("Classifier", "classifiers"),
            ("Requires", "requires"),
            ("Provides", "provides"),
            ("Obsoletes", "obsoletes"),
            ("Maintainer", "maintainer"),
            ("Maintainer-email", "maintainer_email"),
            ("Requires-Dist", "requires_dist"),
            ("Provides-Dist", "provides_dist"),
            ("Obsoletes-Dist", "obsoletes_dist"),
            ("Requires-Python", "requires_python"),
            ("Requires-External", "requires_external"),
            ("Project-URL", "project_urls"),
            ("Description-Content-Type", "description_content_type"),
            ("Provides-Extra", "provides_extra"),
            ("Dynamic", "dynamic"),
            ("License-Expression", "license_expression"),
            ("License-File", "license_file"),
        ];
        for (header, form) in fields {
            assert_eq!(form_name(header, (2, 4)), Some(form), "{header}");
            assert_eq!(
                form_name(&header.to_ascii_uppercase(), (2, 4)),
                Some(form),
                "{header}"
            );
        }
        assert!(parse_metadata("Name example\n").is_err());
        // A header needs a name: letters, digits and '-' only.
        for bad in [": no name\n", "Na me: x\n", "Name_: x\n"] {
            let err = parse_metadata(bad).unwrap_err();
            assert!(err.contains("is not a header name"), "{bad:?}: {err}");
        }
        let folded = parse_metadata("Name: x\nLicense: one\n        two\n").unwrap();
        assert_eq!(folded[1].1, "one\ntwo");
    }

    /// A zip of `count` stored files: `n/000000` on, empty, then the wheel's METADATA.
    /// Written by hand (local headers, central directory, end record): a zip writer takes
    /// seconds for 200,000 entries in a debug build.
    fn wheel_of(count: usize) -> Vec<u8> {
        let mut names: Vec<String> = (0..count - 1).map(|i| format!("n/{i:06}")).collect();
        names.push("example_lib-1.0.0.dist-info/METADATA".into());
        let crc = {
            let mut c = flate2::Crc::new();
            c.update(PKG_INFO.as_bytes());
            c.sum()
        };
        let mut out = Vec::new();
        let mut central = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let data: &[u8] = if i + 1 == count {
                PKG_INFO.as_bytes()
            } else {
                b""
            };
            let crc = if data.is_empty() { 0 } else { crc };
            let offset = out.len() as u32;
            let fields = |central: bool| {
                let mut h = Vec::new();
                if central {
                    h.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
                    h.extend_from_slice(&20u16.to_le_bytes()); // made by
                } else {
                    h.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
                }
                h.extend_from_slice(&20u16.to_le_bytes()); // needed to extract
                h.extend_from_slice(&0u16.to_le_bytes()); // flags
                h.extend_from_slice(&0u16.to_le_bytes()); // stored
                h.extend_from_slice(&0u32.to_le_bytes()); // time, date
                h.extend_from_slice(&crc.to_le_bytes());
                h.extend_from_slice(&(data.len() as u32).to_le_bytes());
                h.extend_from_slice(&(data.len() as u32).to_le_bytes());
                h.extend_from_slice(&(name.len() as u16).to_le_bytes());
                h.extend_from_slice(&0u16.to_le_bytes()); // extra
                if central {
                    h.extend_from_slice(&[0; 6]); // comment, disk, internal attributes
                    h.extend_from_slice(&0u32.to_le_bytes()); // external attributes
                    h.extend_from_slice(&offset.to_le_bytes());
                }
                h.extend_from_slice(name.as_bytes());
                h
            };
            out.extend_from_slice(&fields(false));
            out.extend_from_slice(data);
            central.extend_from_slice(&fields(true));
        }
        let at = out.len() as u32;
        out.extend_from_slice(&central);
        // Zip64 would be needed above 65,535 entries: the end record's counts are 16-bit.
        let mut zip64 = Vec::new();
        zip64.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
        zip64.extend_from_slice(&44u64.to_le_bytes());
        zip64.extend_from_slice(&45u16.to_le_bytes());
        zip64.extend_from_slice(&45u16.to_le_bytes());
        zip64.extend_from_slice(&0u32.to_le_bytes());
        zip64.extend_from_slice(&0u32.to_le_bytes());
        zip64.extend_from_slice(&(count as u64).to_le_bytes());
        zip64.extend_from_slice(&(count as u64).to_le_bytes());
        zip64.extend_from_slice(&(central.len() as u64).to_le_bytes());
        zip64.extend_from_slice(&u64::from(at).to_le_bytes());
        let zip64_at = out.len() as u64;
        out.extend_from_slice(&zip64);
        out.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&zip64_at.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&u16::MAX.to_le_bytes());
        out.extend_from_slice(&u16::MAX.to_le_bytes());
        out.extend_from_slice(&u32::MAX.to_le_bytes());
        out.extend_from_slice(&u32::MAX.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }

    /// A wheel of 200,000 entries is read; one more entry is refused before any is read.
    #[test]
    fn wheels_up_to_the_entry_limit_are_read() {
        let k = key("example-lib", "1.0.0");
        let file = "example_lib-1.0.0-py3-none-any.whl";
        let (_, fields) = inspect(&k, file, &wheel_of(200_000), &Cancel::never()).unwrap();
        assert!(
            fields
                .iter()
                .any(|(n, v)| n == "Name" && v == "Example_Lib")
        );
        let err = inspect(&k, file, &wheel_of(200_001), &Cancel::never()).unwrap_err();
        assert!(
            err.message.contains("more than 200000 entries; refused"),
            "{}",
            err.message
        );
    }

    #[test]
    fn an_sdist_is_read_from_its_pkg_info_and_must_be_the_distribution() {
        let k = key("example-lib", "1.0.0");
        let good = tgz(&[
            ("Example_Lib-1.0.0/PKG-INFO", PKG_INFO),
            ("Example_Lib-1.0.0/setup.py", "x"),
        ]);
        let (kind, fields) =
            inspect(&k, "example_lib-1.0.0.tar.gz", &good, &Cancel::never()).unwrap();
        assert!(matches!(kind, FileKind::Sdist { .. }));
        assert!(
            fields
                .iter()
                .any(|(n, v)| n == "Name" && v == "Example_Lib")
        );

        let err = inspect(
            &key("other", "1.0.0"),
            "other-1.0.0.tar.gz",
            &good,
            &Cancel::never(),
        )
        .unwrap_err();
        assert!(
            err.message
                .contains("is Example_Lib 1.0.0, not other 1.0.0"),
            "{}",
            err.message
        );
        // The file name must say what the metadata says: the version too.
        let err = inspect(&k, "example_lib-1.0.1.tar.gz", &good, &Cancel::never()).unwrap_err();
        assert!(
            err.message
                .contains("the file name says example_lib 1.0.1, the metadata Example_Lib 1.0.0"),
            "{}",
            err.message
        );
        // A second PKG-INFO (another directory, or the same path twice) is refused.
        for entries in [
            vec![
                ("a-1.0.0/PKG-INFO", PKG_INFO),
                ("b-1.0.0/PKG-INFO", PKG_INFO),
            ],
            vec![
                ("a-1.0.0/PKG-INFO", PKG_INFO),
                ("a-1.0.0/./PKG-INFO", PKG_INFO),
            ],
        ] {
            let err = inspect(
                &k,
                "example_lib-1.0.0.tar.gz",
                &tgz(&entries),
                &Cancel::never(),
            )
            .unwrap_err();
            assert_eq!(err.class, ErrorClass::Permanent);
            assert!(
                err.message.contains("two PKG-INFO") || err.message.contains("more than once"),
                "{}",
                err.message
            );
        }
        let err = inspect(
            &k,
            "example_lib-1.0.0.tar.gz",
            &tgz(&[("a-1.0.0/../PKG-INFO", PKG_INFO)]),
            &Cancel::never(),
        )
        .unwrap_err();
        assert!(
            err.message.contains("outside the archive"),
            "{}",
            err.message
        );
    }

    /// The limits on what an sdist unpacks to and on its metadata are far above real
    /// packages: an sdist unpacking to over 6 MiB, whose PKG-INFO is 1.5 MB (a long
    /// description), is read; so is a PKG-INFO of 4 MiB, and one byte more is refused.
    #[test]
    fn large_sdists_within_the_limits_are_read() {
        let k = key("example-lib", "1.0.0");
        let pkg_info = format!("{PKG_INFO}{}\n", "a long description ".repeat(80_000));
        let data = "x".repeat(5 * 1024 * 1024);
        let big = tgz(&[
            ("Example_Lib-1.0.0/PKG-INFO", &pkg_info),
            ("Example_Lib-1.0.0/data.txt", &data),
        ]);
        let (_, fields) = inspect(&k, "example_lib-1.0.0.tar.gz", &big, &Cancel::never()).unwrap();
        assert!(fields.iter().any(|(n, _)| n == "Name"));

        // A PKG-INFO of exactly 4 MiB is read; one byte more is refused.
        let at_limit = format!("{PKG_INFO}{}", "d".repeat(4 * 1024 * 1024 - PKG_INFO.len()));
        assert!(
            inspect(
                &k,
                "example_lib-1.0.0.tar.gz",
                &tgz(&[("Example_Lib-1.0.0/PKG-INFO", &at_limit)]),
                &Cancel::never(),
            )
            .is_ok()
        );
        let too_long = format!("{at_limit}d");
        let err = inspect(
            &k,
            "example_lib-1.0.0.tar.gz",
            &tgz(&[("Example_Lib-1.0.0/PKG-INFO", &too_long)]),
            &Cancel::never(),
        )
        .unwrap_err();
        assert!(
            err.message.contains("larger than 4194304 bytes"),
            "{}",
            err.message
        );
    }

    #[test]
    fn inspection_stops_when_its_job_is_gone() {
        let cancel = Cancel::default();
        cancel.raise();
        let err = inspect(
            &key("example-lib", "1.0.0"),
            "example_lib-1.0.0.tar.gz",
            &tgz(&[("Example_Lib-1.0.0/PKG-INFO", PKG_INFO)]),
            &cancel,
        )
        .unwrap_err();
        assert_eq!(err.class, ErrorClass::Transient);
        assert!(err.message.contains("no longer waits"), "{}", err.message);
    }

    #[test]
    fn the_version_digest_is_over_sorted_names_and_sha256s() {
        let a = digest_of([("b.whl", "22"), ("a.tar.gz", "11")].into_iter());
        let b = digest_of([("a.tar.gz", "11"), ("b.whl", "22")].into_iter());
        assert_eq!(a, b);
        let want = Digest::from_bytes(
            DigestAlgorithm::Sha256,
            &Sha256::digest(b"a.tar.gz 11\nb.whl 22\n"),
        )
        .unwrap();
        assert_eq!(a, want);
        assert_ne!(a, digest_of([("a.tar.gz", "11")].into_iter()));
        assert_ne!(
            a,
            digest_of([("a.tar.gz", "11"), ("b.whl", "23")].into_iter())
        );
    }

    #[test]
    fn the_simple_api_is_read_in_both_forms() {
        let html = r#"<!DOCTYPE html><html><body>
            <a href="../../packages/x-1.0.tar.gz#sha256=AB12" data-requires-python="&gt;=3.8">x-1.0.tar.gz</a><br>
            <A HREF='/files/x-1.0-py3-none-any.whl#sha256=cd34'>x-1.0-py3-none-any.whl</A>
            </body></html>"#;
        let files = simple_html_files(html).unwrap();
        let got: Vec<(&str, &str)> = files
            .iter()
            .map(|f| (f.filename.as_str(), f.sha256.as_str()))
            .collect();
        assert_eq!(
            got,
            [("x-1.0.tar.gz", "ab12"), ("x-1.0-py3-none-any.whl", "cd34")]
        );
        // The scan goes on after each anchor's `</a>`: a name longer than its href, and
        // one holding a stray `<a ` (the text runs to the first `</a>`, whatever it holds).
        let html = r#"<a href=a#sha256=01>apache-example-1.0.0-with-a-long-name.tar.gz</a>
            <a href=b#sha256=02>b</a><a href="n#sha256=03">n<a </a>"#;
        let got: Vec<(String, String)> = simple_html_files(html)
            .unwrap()
            .into_iter()
            .map(|f| (f.filename, f.sha256))
            .collect();
        let want = [
            ("apache-example-1.0.0-with-a-long-name.tar.gz", "01"),
            ("b", "02"),
            ("n<a", "03"),
        ]
        .map(|(f, s)| (f.to_owned(), s.to_owned()));
        assert_eq!(got, want);
        let err =
            simple_html_files(r#"<a href="x-1.0.tar.gz#md5=00">x-1.0.tar.gz</a>"#).unwrap_err();
        assert!(err.contains("not a sha256"), "{err}");

        let json = serde_json::json!({"meta": {"api-version": "1.1"}, "name": "x", "files": [
            {"filename": "x-1.0.tar.gz", "url": "…", "hashes": {"sha256": "ab12"}, "upload-time": "2026-12-01T10:00:00.000000Z"}
        ]});
        let files = simple_json_files(&json).unwrap();
        assert_eq!(files[0].sha256, "ab12");
        assert!(files[0].uploaded.is_some());
        let json = serde_json::json!({"files": [{"filename": "x-1.0.tar.gz", "hashes": {}}]});
        assert!(simple_json_files(&json).is_err(), "a file without sha256");
    }

    #[test]
    fn the_json_api_lists_the_versions_files_with_their_sha256() {
        let doc = serde_json::json!({"info": {"name": "x"}, "urls": [
            {"filename": "x-1.0.tar.gz", "digests": {"sha256": "ab12", "md5": "00"}, "upload_time_iso_8601": "2026-12-01T10:00:00.123456Z"},
            {"filename": "x-1.0-py3-none-any.whl", "digests": {"sha256": "cd34"}}
        ]});
        let files = json_api_files(&doc, &key("x", "1.0")).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[1].sha256, "cd34");
        let doc = serde_json::json!({"urls": [{"filename": "x-1.0.tar.gz", "digests": {}}]});
        let err = json_api_files(&doc, &key("x", "1.0")).unwrap_err();
        assert!(err.contains("has no digests.sha256"), "{err}");
    }

    /// Attestations are taken up to 1 MiB (real ones are a few kilobytes); one byte more is
    /// refused before it is read.
    #[tokio::test]
    async fn attestations_up_to_the_limit_are_taken() {
        let wheel = sealed_for_test("x-1.0-py3-none-any.whl", b"the wheel");
        let of_size = |size: usize| {
            // A JSON object padded to `size` bytes.
            let mut text = String::from("{\"pad\": \"");
            text.push_str(&"x".repeat(size - text.len() - 2));
            text.push_str("\"}");
            assert_eq!(text.len(), size);
            sealed_for_test(
                "x-1.0-py3-none-any.whl.publish.attestation",
                text.as_bytes(),
            )
        };
        for size in [4096, 1024 * 1024] {
            let field = attestation_for(&wheel, &[of_size(size)]).await.unwrap();
            assert_eq!(field.map(|f| f.len()), Some(size + 2), "{size} bytes");
        }
        let err = attestation_for(&wheel, &[of_size(1024 * 1024 + 1)])
            .await
            .unwrap_err();
        assert!(
            err.message
                .contains("is 1048577 bytes; attestations above 1048576 bytes are refused"),
            "{}",
            err.message
        );
    }

    #[test]
    fn the_form_boundary_is_the_files_own_sha256_and_never_in_a_value() {
        let sealed = sealed_for_test("x-1.0.tar.gz", b"the file");
        let mut u = Upload {
            sha256_hex: hex_of(sealed.sha256()),
            sealed,
            filename: "x-1.0.tar.gz".into(),
            filetype: "sdist",
            pyversion: "source".into(),
            fields: vec![
                ("Name".into(), "x".into()),
                ("Version".into(), "1.0".into()),
            ],
            attestations: Some("[{\"version\":1}]".into()),
        };
        let head = String::from_utf8(form_head(&u).unwrap()).unwrap();
        let b = boundary(&u);
        assert!(b.ends_with(&u.sha256_hex));
        assert!(head.starts_with(&format!(
            "--{b}\r\nContent-Disposition: form-data; name=\":action\"\r\n\r\nfile_upload\r\n"
        )));
        assert!(head.contains("name=\"name\"\r\n\r\nx\r\n"));
        assert!(head.contains("name=\"attestations\"\r\n\r\n[{\"version\":1}]\r\n"));
        assert!(head.ends_with(
            "filename=\"x-1.0.tar.gz\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        ));
        // The file's bytes follow the head; the tail closes the form.
        assert_eq!(form_tail(&u), format!("\r\n--{b}--\r\n").into_bytes());
        u.fields.push((
            "Summary".into(),
            format!("text\r\n--{b}\r\nContent-Disposition: form-data; name=\"sha256_digest\""),
        ));
        let err = form_head(&u).unwrap_err();
        assert!(
            err.message
                .contains("field Summary contains the file's own sha256"),
            "{}",
            err.message
        );
    }

    /// A plan names each file's upload, and says which go with their attestation.
    #[test]
    fn plans_name_each_upload_and_whether_its_attestation_goes_with_it() {
        let c = PlatformConfig {
            staging_token: Some(Secret::new("pypi-staging")),
            ..PlatformConfig::default()
        };
        let a = PypiAdapter::from_config(&c).unwrap().unwrap();
        let wheel = sealed_for_test("x-1.0-py3-none-any.whl", b"the wheel");
        let sdist = sealed_for_test("x-1.0.tar.gz", b"the sdist");
        let attestation = sealed_for_test("x-1.0-py3-none-any.whl.publish.attestation", b"{}");
        let key = key("x", "1.0");
        let staged = a.plan_stage(&StageRequest {
            revision: RevisionKey::of(&key.release_key, &RevisionNumber::new("00001").unwrap()),
            artifacts: vec![sdist.clone()],
            companions: Vec::new(),
            staging_tag: DistTag::new("staging").unwrap(),
            key: key.clone(),
        });
        let got: Vec<(&str, &str, &str)> = staged
            .iter()
            .map(|p| (p.method, p.url.as_str(), p.what.as_str()))
            .collect();
        let want = format!(
            "upload x-1.0.tar.gz (sha256 {}) to the staging index",
            hex_of(sdist.sha256())
        );
        assert_eq!(got, [("POST", DEFAULT_STAGING_UPLOAD_URL, want.as_str())]);
        let plan = a.plan_promote(&PromoteRequest {
            staged_digest: Digest::parse(format!("sha256:{}", "0".repeat(64))).unwrap(),
            staging_tag: DistTag::new("staging").unwrap(),
            release_tag: DistTag::latest(),
            artifacts: vec![wheel.clone(), sdist.clone()],
            companions: vec![attestation],
            key,
        });
        let got: Vec<(&str, &str, &str)> = plan
            .iter()
            .map(|p| (p.method, p.url.as_str(), p.what.as_str()))
            .collect();
        let want = [
            format!(
                "upload x-1.0-py3-none-any.whl (sha256 {}) with its attestation to the production index",
                hex_of(wheel.sha256())
            ),
            format!(
                "upload x-1.0.tar.gz (sha256 {}) to the production index",
                hex_of(sdist.sha256())
            ),
        ];
        assert_eq!(
            got,
            [
                ("POST", DEFAULT_UPLOAD_URL, want[0].as_str()),
                ("POST", DEFAULT_UPLOAD_URL, want[1].as_str()),
            ]
        );
    }

    /// Any one URL or token enables the adapter; none leaves it off.
    #[test]
    fn any_url_or_token_enables_the_section() {
        assert_eq!(configured(&PlatformConfig::default()), None);
        for (name, c) in crate::platform::one_setting_each() {
            assert!(configured(&c).is_some(), "{name} alone");
        }
    }

    /// An anchor's attribute is found by its whole name, after another attribute as well
    /// as first, and not inside another name or another attribute's value.
    #[test]
    fn an_attribute_is_found_by_its_whole_name() {
        let cases = [
            (r#"href="a#sha256=01""#, Some("a#sha256=01")),
            (r#"class="x" href="b""#, Some("b")),
            (r#"data-href="no" href='c'"#, Some("c")),
            (r#"hreflang="en"  HREF = d rel=x"#, Some("d")),
            (r#"title="href" data-href="no""#, None),
            (r#"hreflang="en""#, None),
        ];
        for (attrs, want) in cases {
            assert_eq!(attribute(attrs, "href").as_deref(), want, "{attrs}");
        }
    }

    async fn classified(status: u16, body: &str) -> PlatformError {
        let resp = axum::http::Response::builder()
            .status(status)
            .body(body.to_owned())
            .unwrap();
        classify(reqwest::Response::from(resp), "POST /legacy/").await
    }

    /// A file the index has already is told as such (409, or warehouse's 400 "File already
    /// exists"), as is a refused token; other refusals keep the index's words.
    #[tokio::test]
    async fn refusals_are_told_apart() {
        for (status, body) in [
            (409, "Conflict"),
            (
                400,
                "400 File already exists ('x-1.0.tar.gz', with blake2_256 hash 'ab').",
            ),
        ] {
            let err = classified(status, body).await;
            assert_eq!(err.class, ErrorClass::Permanent, "{body}");
            assert!(
                err.message
                    .contains("the file exists already and PyPI never replaces a file"),
                "{body}: {}",
                err.message
            );
        }
        let err = classified(400, "400 Invalid value for version.").await;
        assert!(
            !err.message.contains("exists already") && err.message.contains("Invalid value"),
            "{}",
            err.message
        );
        let err = classified(
            403,
            "Invalid or non-existent authentication information. Token is expired.",
        )
        .await;
        assert!(
            err.message.contains("the index refused the token"),
            "{}",
            err.message
        );
        let err = classified(403, "Forbidden").await;
        assert!(
            !err.message.contains("refused the token"),
            "{}",
            err.message
        );
    }

    #[test]
    fn the_configured_section_chooses_the_indexes() {
        let mut c = PlatformConfig::default();
        assert!(PypiAdapter::from_config(&c).unwrap().is_none());
        c.staging_token = Some(Secret::new("pypi-staging"));
        let a = PypiAdapter::from_config(&c).unwrap().unwrap();
        assert_eq!(a.staging.upload.as_str(), DEFAULT_STAGING_UPLOAD_URL);
        assert_eq!(a.staging.read.as_str(), DEFAULT_STAGING_READ_URL);
        assert_eq!(a.production.upload.as_str(), DEFAULT_UPLOAD_URL);
        assert_eq!(a.production.read.as_str(), DEFAULT_READ_URL);
        assert!(a.production.auth.is_none() && a.staging.auth.is_some());
        // An index elsewhere (pypiserver) is read where it takes uploads.
        c.staging_base_url = Some(Url::parse("http://127.0.0.1:8080").unwrap());
        let a = PypiAdapter::from_config(&c).unwrap().unwrap();
        assert_eq!(a.staging.read.as_str(), "http://127.0.0.1:8080/");
        assert!(!a.staging.simple_root && !a.production.simple_root);
        // devpi: the read URL names the index's simple API.
        c.staging_read_url = Some(Url::parse("http://127.0.0.1:3141/atr/staging/+simple").unwrap());
        let a = PypiAdapter::from_config(&c).unwrap().unwrap();
        assert_eq!(
            a.staging.read.as_str(),
            "http://127.0.0.1:3141/atr/staging/+simple/"
        );
        assert!(a.staging.simple_root);
        assert_eq!(a.promotion(), PromotionMechanism::Reupload);
    }
}
