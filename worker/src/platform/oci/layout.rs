//! An OCI image layout among a job's artifacts: finding it, reading its manifests and
//! checking that every file is what the manifests say, before anything is sent.
//!
//! See the parent module's documentation for the layout rules a job must follow.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use atr_dist_shared::{Digest, DigestAlgorithm};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::super::{Artifact, PlatformError};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Every manifest type, lists first: without the list types a registry answers a manifest
/// list's GET with one platform's manifest (another digest), and without the OCI types an
/// OCI manifest is "unknown".
pub const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// The annotation naming an image in a layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Indexes inside indexes are legal; deeper than this is a malformed (or hostile) layout.
const MAX_DEPTH: usize = 4;

/// What a manifest media type holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An image index or Docker manifest list: a list of manifests.
    Index,
    /// An image manifest: a config blob and layer blobs.
    Image,
}

pub fn kind_of(media_type: &str) -> Option<Kind> {
    match media_type {
        OCI_INDEX | DOCKER_LIST => Some(Kind::Index),
        OCI_MANIFEST | DOCKER_MANIFEST => Some(Kind::Image),
        _ => None,
    }
}

/// An OCI content descriptor.
#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub urls: Vec<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// Layers that may not be redistributed (Windows base layers) are fetched by clients
    /// from their `urls`; registries neither need nor, often, accept them.
    pub fn is_foreign(&self) -> bool {
        !self.urls.is_empty()
            && (self.media_type.contains(".foreign.")
                || self.media_type.contains("nondistributable"))
    }

    pub fn sha256(&self) -> Result<Digest, PlatformError> {
        parse_sha256(&self.digest)
    }
}

/// Only sha256: it is what every registry supports and what the pipeline compares.
pub fn parse_sha256(text: &str) -> Result<Digest, PlatformError> {
    if !text.starts_with("sha256:") {
        return Err(PlatformError::permanent(format!(
            "digest {text:?} is not sha256; atr-dist pushes sha256-addressed content only"
        )));
    }
    Digest::parse(text)
        .map_err(|e| PlatformError::permanent(format!("malformed digest in a manifest: {e}")))
}

pub fn sha256_of(bytes: &[u8]) -> Digest {
    let hash = Sha256::digest(bytes);
    Digest::from_bytes(DigestAlgorithm::Sha256, &hash)
        .unwrap_or_else(|_| unreachable!("a SHA-256 hash is 32 bytes"))
}

/// Size and sha256 of a file, read in 1 MiB pieces so that a large layer never sits in
/// memory whole.
pub fn sha256_file(path: &Path) -> std::io::Result<(u64, Digest)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    let digest = Digest::from_bytes(DigestAlgorithm::Sha256, &hasher.finalize())
        .unwrap_or_else(|_| unreachable!("a SHA-256 hash is 32 bytes"));
    Ok((size, digest))
}

#[derive(Deserialize)]
struct IndexDoc {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct ImageDoc {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// What a manifest refers to.
#[derive(Debug)]
pub enum References {
    /// An index's manifests.
    Manifests(Vec<Descriptor>),
    /// An image's config and layers.
    Blobs(Vec<Descriptor>),
}

/// Reads a manifest of `media_type` (its bytes as they will be pushed) for what it refers
/// to. The document's own `mediaType`, when it has one, must agree with the one it is
/// sent as: a registry would otherwise store it under a type clients do not expect.
pub fn references(media_type: &str, bytes: &[u8], name: &str) -> Result<References, PlatformError> {
    let bad = |reason: String| PlatformError::permanent(format!("{name}: {reason}"));
    let Some(kind) = kind_of(media_type) else {
        return Err(bad(format!(
            "media type {media_type:?} is not an image manifest or index ({OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}, {DOCKER_LIST})"
        )));
    };
    let check = |schema: u32, own: &Option<String>| -> Result<(), PlatformError> {
        if schema != 2 {
            return Err(bad(format!("schemaVersion is {schema}, not 2")));
        }
        match own {
            Some(own) if own != media_type => Err(bad(format!(
                "the document says mediaType {own:?} but is referenced as {media_type:?}"
            ))),
            Some(_) | None => Ok(()),
        }
    };
    match kind {
        Kind::Index => {
            let doc: IndexDoc = serde_json::from_slice(bytes)
                .map_err(|e| bad(format!("not an image index: {e}")))?;
            check(doc.schema_version, &doc.media_type)?;
            Ok(References::Manifests(doc.manifests))
        }
        Kind::Image => {
            let doc: ImageDoc = serde_json::from_slice(bytes)
                .map_err(|e| bad(format!("not an image manifest: {e}")))?;
            check(doc.schema_version, &doc.media_type)?;
            let mut blobs = Vec::with_capacity(doc.layers.len() + 1);
            blobs.push(doc.config);
            blobs.extend(doc.layers);
            Ok(References::Blobs(blobs))
        }
    }
}

/// A manifest or index to PUT: its exact bytes, never re-serialised (that would change the
/// digest).
#[derive(Debug, Clone)]
pub struct ManifestFile {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// A blob (config or layer) to upload from local disk.
#[derive(Debug, Clone)]
pub struct BlobFile {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub local: PathBuf,
}

/// Whether reading a layout hashes every blob (before anything is sent) or only checks
/// the structure and sizes (for dry-run plans).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Structure,
    Content,
}

/// A layout read from the artifacts, in push order.
#[derive(Debug)]
pub struct Layout {
    /// The layout's directory in the revision (`""` at the revision's root).
    pub dir: String,
    /// Config and layer blobs, each once, in the order first referenced.
    pub blobs: Vec<BlobFile>,
    /// Manifests referenced by the top index, children before their parents.
    pub children: Vec<ManifestFile>,
    /// The manifest or index pushed under the tag; its digest is the distribution's.
    pub top: ManifestFile,
}

fn join(dir: &str, rest: &str) -> String {
    if dir.is_empty() {
        rest.to_owned()
    } else {
        format!("{dir}/{rest}")
    }
}

fn blob_path(dir: &str, digest: &Digest) -> String {
    let hex = digest.as_str().trim_start_matches("sha256:");
    join(dir, &format!("blobs/sha256/{hex}"))
}

/// Finds the one layout among the artifacts: the directory of an `index.json` that has an
/// `oci-layout` beside it.
fn find_dir(files: &HashMap<&str, &Artifact>) -> Result<String, PlatformError> {
    let mut dirs: Vec<String> = files
        .keys()
        .filter_map(|p| {
            let dir = match p.rsplit_once('/') {
                Some((dir, "index.json")) => dir,
                Some(_) => return None,
                None if *p == "index.json" => "",
                None => return None,
            };
            files
                .contains_key(join(dir, "oci-layout").as_str())
                .then(|| dir.to_owned())
        })
        .collect();
    dirs.sort();
    match dirs.as_slice() {
        [] => Err(PlatformError::permanent(
            "no OCI image layout among the artifacts: list <dir>/index.json, <dir>/oci-layout and every <dir>/blobs/sha256/<hex> the image needs",
        )),
        [one] => Ok(one.clone()),
        [..] => Err(PlatformError::permanent(format!(
            "the artifacts hold {} OCI image layouts ({}); a distribution is one image, list one layout",
            dirs.len(),
            dirs.iter()
                .map(|d| if d.is_empty() { "." } else { d.as_str() })
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Whether a path inside the layout directory is a layout file at all.
fn is_layout_file(rest: &str) -> bool {
    if rest == "index.json" || rest == "oci-layout" {
        return true;
    }
    let mut parts = rest.split('/');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some("blobs"), Some(alg), Some(hex), None) if !alg.is_empty() && !hex.is_empty()
    )
}

/// The top-level descriptor: the only one in `index.json`, or, when it lists several, the
/// one named (`org.opencontainers.image.ref.name`) after the version.
fn choose_top(descriptors: Vec<Descriptor>, version: &str) -> Result<Descriptor, PlatformError> {
    if descriptors.len() == 1 {
        return Ok(descriptors
            .into_iter()
            .next()
            .unwrap_or_else(|| unreachable!()));
    }
    if descriptors.is_empty() {
        return Err(PlatformError::permanent(
            "the layout's index.json lists no manifests",
        ));
    }
    let names: Vec<String> = descriptors
        .iter()
        .map(|d| {
            d.annotations
                .get(REF_NAME)
                .cloned()
                .unwrap_or_else(|| "(unnamed)".into())
        })
        .collect();
    let mut named = descriptors
        .into_iter()
        .filter(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(version));
    match (named.next(), named.next()) {
        (Some(one), None) => Ok(one),
        (Some(_), Some(_)) => Err(PlatformError::permanent(format!(
            "the layout's index.json names several manifests {REF_NAME}={version:?}; keep one"
        ))),
        (None, _) => Err(PlatformError::permanent(format!(
            "the layout's index.json lists {} manifests ({}) and none is named {REF_NAME}={version:?}; name the image to distribute after the version, or keep one manifest",
            names.len(),
            names.join(", ")
        ))),
    }
}

struct Reader<'a> {
    dir: String,
    files: HashMap<&'a str, &'a Artifact>,
    check: Check,
    blobs: Vec<BlobFile>,
    seen_blobs: HashSet<Digest>,
    children: Vec<ManifestFile>,
    seen_manifests: HashSet<Digest>,
}

impl Reader<'_> {
    fn file(&self, digest: &Digest, what: &str) -> Result<&Artifact, PlatformError> {
        let path = blob_path(&self.dir, digest);
        self.files.get(path.as_str()).copied().ok_or_else(|| {
            PlatformError::permanent(format!(
                "{what} {digest} is not among the artifacts: the layout needs {path}"
            ))
        })
    }

    fn manifest(&mut self, d: &Descriptor, depth: usize) -> Result<ManifestFile, PlatformError> {
        let digest = d.sha256()?;
        if depth > MAX_DEPTH {
            return Err(PlatformError::permanent(format!(
                "manifest {digest} is nested more than {MAX_DEPTH} indexes deep"
            )));
        }
        let artifact = self.file(&digest, "manifest")?;
        let bytes = std::fs::read(&artifact.local)
            .map_err(|e| PlatformError::transient(format!("reading {}: {e}", artifact.path)))?;
        let name = artifact.path.to_string();
        if bytes.len() as u64 != d.size {
            return Err(PlatformError::permanent(format!(
                "{name} is {} bytes; its descriptor says {}",
                bytes.len(),
                d.size
            )));
        }
        let actual = sha256_of(&bytes);
        if actual != digest {
            return Err(PlatformError::permanent(format!(
                "{name} has sha256 {actual}, not the {digest} its name and descriptor say"
            )));
        }
        match references(&d.media_type, &bytes, &name)? {
            References::Manifests(list) => {
                for child in &list {
                    if kind_of(&child.media_type).is_none() {
                        return Err(PlatformError::permanent(format!(
                            "{name} lists {} of media type {:?}, which is not an image manifest or index",
                            child.digest, child.media_type
                        )));
                    }
                    let m = self.manifest(child, depth + 1)?;
                    if self.seen_manifests.insert(m.digest.clone()) {
                        self.children.push(m);
                    }
                }
            }
            References::Blobs(list) => {
                for blob in &list {
                    self.blob(blob)?;
                }
            }
        }
        Ok(ManifestFile {
            digest,
            media_type: d.media_type.clone(),
            bytes,
        })
    }

    fn blob(&mut self, d: &Descriptor) -> Result<(), PlatformError> {
        if d.is_foreign() {
            return Ok(());
        }
        let digest = d.sha256()?;
        if self.seen_blobs.contains(&digest) {
            return Ok(());
        }
        let artifact = self.file(&digest, "blob")?;
        let name = artifact.path.to_string();
        let local = artifact.local.clone();
        let size = match self.check {
            Check::Content => {
                let (size, actual) = sha256_file(&local)
                    .map_err(|e| PlatformError::transient(format!("reading {name}: {e}")))?;
                if actual != digest {
                    return Err(PlatformError::permanent(format!(
                        "{name} has sha256 {actual}, not the {digest} its name says: the layout is corrupt"
                    )));
                }
                size
            }
            Check::Structure => std::fs::metadata(&local)
                .map_err(|e| PlatformError::transient(format!("reading {name}: {e}")))?
                .len(),
        };
        if size != d.size {
            return Err(PlatformError::permanent(format!(
                "{name} is {size} bytes; its descriptor says {}",
                d.size
            )));
        }
        self.seen_blobs.insert(digest.clone());
        self.blobs.push(BlobFile {
            digest,
            size,
            media_type: d.media_type.clone(),
            local,
        });
        Ok(())
    }
}

impl Layout {
    /// Reads the layout the artifacts form. Every artifact must belong to it; blobs it
    /// holds but no manifest needs are not pushed. `version` picks the image when
    /// `index.json` lists several.
    pub fn read(
        artifacts: &[Artifact],
        version: &str,
        check: Check,
    ) -> Result<Layout, PlatformError> {
        let files: HashMap<&str, &Artifact> =
            artifacts.iter().map(|a| (a.path.as_str(), a)).collect();
        let dir = find_dir(&files)?;
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        if let Some(stray) = artifacts.iter().find(|a| {
            a.path
                .as_str()
                .strip_prefix(prefix.as_str())
                .is_none_or(|rest| !is_layout_file(rest))
        }) {
            return Err(PlatformError::permanent(format!(
                "artifact {} is not part of the OCI image layout in {}: list only index.json, oci-layout and blobs/<alg>/<hex> of one layout",
                stray.path,
                if dir.is_empty() {
                    "the revision's root"
                } else {
                    dir.as_str()
                }
            )));
        }

        let read = |name: &str| -> Result<(String, Vec<u8>), PlatformError> {
            let path = join(&dir, name);
            let artifact = files
                .get(path.as_str())
                .copied()
                .ok_or_else(|| PlatformError::permanent(format!("the layout has no {path}")))?;
            let bytes = std::fs::read(&artifact.local)
                .map_err(|e| PlatformError::transient(format!("reading {path}: {e}")))?;
            Ok((path, bytes))
        };
        let (path, bytes) = read("oci-layout")?;
        let marker: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| PlatformError::permanent(format!("{path} is not JSON: {e}")))?;
        if !marker
            .get("imageLayoutVersion")
            .is_some_and(serde_json::Value::is_string)
        {
            return Err(PlatformError::permanent(format!(
                "{path} has no imageLayoutVersion: not an OCI image layout"
            )));
        }
        let (path, bytes) = read("index.json")?;
        let index: IndexDoc = serde_json::from_slice(&bytes)
            .map_err(|e| PlatformError::permanent(format!("{path} is not an image index: {e}")))?;
        if index.schema_version != 2 {
            return Err(PlatformError::permanent(format!(
                "{path} has schemaVersion {}, not 2",
                index.schema_version
            )));
        }
        let top = choose_top(index.manifests, version)?;
        if kind_of(&top.media_type).is_none() {
            return Err(PlatformError::permanent(format!(
                "{path} points at {} of media type {:?}, which is not an image manifest or index",
                top.digest, top.media_type
            )));
        }

        let mut reader = Reader {
            dir: dir.clone(),
            files,
            check,
            blobs: Vec::new(),
            seen_blobs: HashSet::new(),
            children: Vec::new(),
            seen_manifests: HashSet::new(),
        };
        let top = reader.manifest(&top, 0)?;
        Ok(Layout {
            dir,
            blobs: reader.blobs,
            children: reader.children,
            top,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atr_dist_shared::ManifestEntry;
    use atr_dist_shared::names::ArtifactPath;
    use serde_json::json;

    /// Writes files into a temp dir and returns them as artifacts.
    fn artifacts(dir: &Path, files: &[(String, Vec<u8>)]) -> Vec<Artifact> {
        files
            .iter()
            .map(|(path, bytes)| {
                let local = dir.join(path);
                std::fs::create_dir_all(local.parent().unwrap()).unwrap();
                std::fs::write(&local, bytes).unwrap();
                let (size, sha3) = crate::source::hash_file(&local).unwrap();
                let path = ArtifactPath::new(path.clone()).unwrap();
                Artifact {
                    path: path.clone(),
                    local,
                    entry: ManifestEntry {
                        path,
                        size,
                        sha3_256: sha3,
                    },
                }
            })
            .collect()
    }

    fn desc(media_type: &str, bytes: &[u8]) -> serde_json::Value {
        json!({"mediaType": media_type, "digest": sha256_of(bytes).as_str(), "size": bytes.len()})
    }

    fn blob(bytes: &[u8]) -> (String, Vec<u8>) {
        let d = sha256_of(bytes);
        (
            format!(
                "img/blobs/sha256/{}",
                d.as_str().trim_start_matches("sha256:")
            ),
            bytes.to_vec(),
        )
    }

    /// An image (config + one layer) and its manifest, as layout files.
    fn image(layer: &[u8]) -> (Vec<(String, Vec<u8>)>, Vec<u8>) {
        let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc("application/vnd.oci.image.config.v1+json", &config),
            "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", layer)],
        }))
        .unwrap();
        (vec![blob(&config), blob(layer), blob(&manifest)], manifest)
    }

    fn with_index(
        mut files: Vec<(String, Vec<u8>)>,
        entries: Vec<serde_json::Value>,
    ) -> Vec<(String, Vec<u8>)> {
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
        files.push(("img/index.json".into(), serde_json::to_vec(&index).unwrap()));
        files.push((
            "img/oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ));
        files
    }

    #[test]
    fn one_image_layout_is_read_in_push_order() {
        let tmp = tempfile::tempdir().unwrap();
        let (files, manifest) = image(b"layer one");
        let files = with_index(files, vec![desc(OCI_MANIFEST, &manifest)]);
        let a = artifacts(tmp.path(), &files);
        let layout = Layout::read(&a, "1.0.0", Check::Content).unwrap();
        assert_eq!(layout.dir, "img");
        assert_eq!(layout.top.digest, sha256_of(&manifest));
        assert_eq!(layout.top.bytes, manifest);
        assert_eq!(layout.top.media_type, OCI_MANIFEST);
        assert_eq!(layout.blobs.len(), 2, "config and layer");
        assert!(layout.children.is_empty());
    }

    #[test]
    fn an_index_pushes_its_children_first_and_is_the_top() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut files, amd) = image(b"amd64 layer");
        let (arm_files, arm) = image(b"arm64 layer");
        files.extend(arm_files);
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [desc(OCI_MANIFEST, &amd), desc(OCI_MANIFEST, &arm)],
        }))
        .unwrap();
        files.push(blob(&index));
        let files = with_index(files, vec![desc(OCI_INDEX, &index)]);
        let a = artifacts(tmp.path(), &files);
        let layout = Layout::read(&a, "1.0.0", Check::Content).unwrap();
        assert_eq!(layout.top.digest, sha256_of(&index));
        let children: Vec<_> = layout.children.iter().map(|c| c.digest.clone()).collect();
        assert_eq!(children, vec![sha256_of(&amd), sha256_of(&arm)]);
        // The config blob is shared: pushed once.
        assert_eq!(layout.blobs.len(), 3);
    }

    #[test]
    fn several_images_are_chosen_by_ref_name_or_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut files, one) = image(b"one");
        let (two_files, two) = image(b"two");
        files.extend(two_files);
        let named = |bytes: &[u8], name: &str| {
            let mut d = desc(OCI_MANIFEST, bytes);
            d["annotations"] = json!({ REF_NAME: name });
            d
        };
        let files = with_index(files, vec![named(&one, "1.0.0"), named(&two, "latest")]);
        let a = artifacts(tmp.path(), &files);
        assert_eq!(
            Layout::read(&a, "1.0.0", Check::Content)
                .unwrap()
                .top
                .digest,
            sha256_of(&one)
        );
        let err = Layout::read(&a, "2.0.0", Check::Content).unwrap_err();
        assert!(err.message.contains("none is named"), "{}", err.message);
        assert!(err.message.contains("1.0.0, latest"), "{}", err.message);
    }

    #[test]
    fn missing_corrupt_and_stray_files_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (files, manifest) = image(b"layer");
        let good = with_index(files, vec![desc(OCI_MANIFEST, &manifest)]);

        // A missing layer.
        let layer_path = blob(b"layer").0;
        let missing: Vec<_> = good
            .iter()
            .filter(|(p, _)| *p != layer_path)
            .cloned()
            .collect();
        let err =
            Layout::read(&artifacts(tmp.path(), &missing), "1", Check::Structure).unwrap_err();
        assert!(
            err.message
                .contains(&format!("the layout needs {layer_path}")),
            "{}",
            err.message
        );

        // A layer whose bytes are not its name (same size, so only hashing finds it).
        let tmp = tempfile::tempdir().unwrap();
        let corrupt: Vec<_> = good
            .iter()
            .map(|(p, b)| {
                if *p == layer_path {
                    (p.clone(), b"LAYER".to_vec())
                } else {
                    (p.clone(), b.clone())
                }
            })
            .collect();
        let a = artifacts(tmp.path(), &corrupt);
        assert!(Layout::read(&a, "1", Check::Structure).is_ok());
        let err = Layout::read(&a, "1", Check::Content).unwrap_err();
        assert!(
            err.message.contains("the layout is corrupt"),
            "{}",
            err.message
        );

        // A file outside the layout.
        let tmp = tempfile::tempdir().unwrap();
        let mut stray = good.clone();
        stray.push(("README.txt".into(), b"hi".to_vec()));
        let err = Layout::read(&artifacts(tmp.path(), &stray), "1", Check::Structure).unwrap_err();
        assert!(
            err.message
                .starts_with("artifact README.txt is not part of the OCI image layout in img"),
            "{}",
            err.message
        );

        // No layout at all.
        let tmp = tempfile::tempdir().unwrap();
        let none = vec![("x.tgz".to_owned(), b"x".to_vec())];
        let err = Layout::read(&artifacts(tmp.path(), &none), "1", Check::Structure).unwrap_err();
        assert!(
            err.message
                .starts_with("no OCI image layout among the artifacts"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_mislabelled_manifest_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (files, manifest) = image(b"layer");
        // index.json calls the image manifest a Docker one.
        let files = with_index(files, vec![desc(DOCKER_MANIFEST, &manifest)]);
        let err = Layout::read(&artifacts(tmp.path(), &files), "1", Check::Structure).unwrap_err();
        assert!(
            err.message.contains("the document says mediaType"),
            "{}",
            err.message
        );
    }
}
