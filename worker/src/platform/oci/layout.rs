//! An OCI image layout among a job's artifacts: finding it, reading its manifests and
//! checking that every file is what the manifests say, before anything is sent.
//!
//! The files are the job's sealed artifacts (`seal.rs`): manifests are read from the
//! sealed copies, and a blob's sha256 is the one computed when it was sealed, so a blob is
//! never read here at all. Reading is linear in the layout: a manifest listed several times
//! (in one index or several) is read once, and a blob once. It runs on the blocking pool and
//! stops between manifests when its job goes away.
//!
//! See the parent module's documentation for the layout rules a job must follow.

use std::collections::{BTreeMap, HashMap, HashSet};

use atr_dist_shared::Digest;
use serde::Deserialize;

use super::super::{PlatformError, Sealed};
use crate::blocking::Cancel;
pub use crate::seal::sha256_of;

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
pub(super) const MAX_DEPTH: usize = 4;
/// Manifests are small JSON documents; registries refuse them above 4 MiB.
const MAX_MANIFEST: u64 = 4 * 1024 * 1024;

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

/// A blob (config or layer) to upload: its sealed copy.
#[derive(Debug, Clone)]
pub struct BlobFile {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub sealed: Sealed,
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
    /// Manifests read, each once however often listed.
    pub manifests_read: usize,
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
fn find_dir(files: &HashMap<&str, &Sealed>) -> Result<String, PlatformError> {
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
    files: HashMap<&'a str, &'a Sealed>,
    cancel: &'a Cancel,
    blobs: Vec<BlobFile>,
    seen_blobs: HashSet<Digest>,
    children: Vec<ManifestFile>,
    seen_manifests: HashSet<Digest>,
    manifests_read: usize,
}

impl Reader<'_> {
    fn file(&self, digest: &Digest, what: &str) -> Result<&Sealed, PlatformError> {
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
        self.cancel
            .check()
            .map_err(|c| PlatformError::transient(format!("reading the OCI layout: {c}")))?;
        let artifact = self.file(&digest, "manifest")?;
        let name = artifact.path().to_string();
        if artifact.size() > MAX_MANIFEST {
            return Err(PlatformError::permanent(format!(
                "{name} is {} bytes; a manifest above {MAX_MANIFEST} bytes is refused",
                artifact.size()
            )));
        }
        let bytes = artifact
            .bytes_blocking(self.cancel)
            .map_err(|e| PlatformError::transient(e.to_string()))?
            .to_vec();
        self.manifests_read += 1;
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
                    // Each manifest is read once, however often it is listed: without
                    // this, an index listing one child N times costs N^depth reads.
                    if self.seen_manifests.contains(&child.sha256()?) {
                        continue;
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
        let artifact = self.file(&digest, "blob")?.clone();
        let name = artifact.path().to_string();
        // Hashed when it was sealed: the blob is not read again here.
        if artifact.sha256() != &digest {
            return Err(PlatformError::permanent(format!(
                "{name} has sha256 {}, not the {digest} its name says: the layout is corrupt",
                artifact.sha256()
            )));
        }
        let size = artifact.size();
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
            sealed: artifact,
        });
        Ok(())
    }
}

impl Layout {
    /// Reads the layout the artifacts form. Every artifact must belong to it; blobs it
    /// holds but no manifest needs are not pushed. `version` picks the image when
    /// `index.json` lists several.
    pub fn read(
        artifacts: &[Sealed],
        version: &str,
        cancel: &Cancel,
    ) -> Result<Layout, PlatformError> {
        let files: HashMap<&str, &Sealed> =
            artifacts.iter().map(|a| (a.path().as_str(), a)).collect();
        let dir = find_dir(&files)?;
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        if let Some(stray) = artifacts.iter().find(|a| {
            a.path()
                .as_str()
                .strip_prefix(prefix.as_str())
                .is_none_or(|rest| !is_layout_file(rest))
        }) {
            return Err(PlatformError::permanent(format!(
                "artifact {} is not part of the OCI image layout in {}: list only index.json, oci-layout and blobs/<alg>/<hex> of one layout",
                stray.path(),
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
            if artifact.size() > MAX_MANIFEST {
                return Err(PlatformError::permanent(format!(
                    "{path} is {} bytes; above {MAX_MANIFEST} it is not a layout file",
                    artifact.size()
                )));
            }
            let bytes = artifact
                .bytes_blocking(cancel)
                .map_err(|e| PlatformError::transient(e.to_string()))?
                .to_vec();
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
            cancel,
            blobs: Vec::new(),
            seen_blobs: HashSet::new(),
            children: Vec::new(),
            seen_manifests: HashSet::new(),
            manifests_read: 0,
        };
        let top = reader.manifest(&top, 0)?;
        Ok(Layout {
            dir,
            blobs: reader.blobs,
            children: reader.children,
            top,
            manifests_read: reader.manifests_read,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The files, sealed as the pipeline would seal them.
    fn artifacts(files: &[(String, Vec<u8>)]) -> Vec<Sealed> {
        files
            .iter()
            .map(|(path, bytes)| crate::seal::sealed_for_test(path, bytes))
            .collect()
    }

    fn read(a: &[Sealed], version: &str) -> Result<Layout, PlatformError> {
        Layout::read(a, version, &Cancel::never())
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
        image_with(layer, |_| {})
    }

    /// The config of every test image.
    const CONFIG: &[u8] = br#"{"architecture":"amd64","os":"linux"}"#;

    /// As `image`, with `edit` applied to the manifest before it is written.
    fn image_with(
        layer: &[u8],
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> (Vec<(String, Vec<u8>)>, Vec<u8>) {
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc("application/vnd.oci.image.config.v1+json", CONFIG),
            "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", layer)],
        });
        edit(&mut manifest);
        let manifest = serde_json::to_vec(&manifest).unwrap();
        (vec![blob(CONFIG), blob(layer), blob(&manifest)], manifest)
    }

    /// A layout of an image under `levels` indexes, each listing the one below `listed`
    /// times.
    fn nested(levels: usize, listed: usize) -> Vec<(String, Vec<u8>)> {
        let (mut files, image_manifest) = image(b"layer");
        let mut below = (OCI_MANIFEST, image_manifest);
        for _ in 0..levels {
            let index = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": vec![desc(below.0, &below.1); listed],
            }))
            .unwrap();
            files.push(blob(&index));
            below = (OCI_INDEX, index);
        }
        with_index(files, vec![desc(below.0, &below.1)])
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
        let (files, manifest) = image(b"layer one");
        let files = with_index(files, vec![desc(OCI_MANIFEST, &manifest)]);
        let a = artifacts(&files);
        let layout = read(&a, "1.0.0").unwrap();
        assert_eq!(layout.dir, "img");
        assert_eq!(layout.top.digest, sha256_of(&manifest));
        assert_eq!(layout.top.bytes, manifest);
        assert_eq!(layout.top.media_type, OCI_MANIFEST);
        assert_eq!(layout.blobs.len(), 2, "config and layer");
        assert!(layout.children.is_empty());
    }

    #[test]
    fn an_index_pushes_its_children_first_and_is_the_top() {
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
        let a = artifacts(&files);
        let layout = read(&a, "1.0.0").unwrap();
        assert_eq!(layout.top.digest, sha256_of(&index));
        let children: Vec<_> = layout.children.iter().map(|c| c.digest.clone()).collect();
        assert_eq!(children, vec![sha256_of(&amd), sha256_of(&arm)]);
        // The config blob is shared: pushed once.
        assert_eq!(layout.blobs.len(), 3);
    }

    #[test]
    fn several_images_are_chosen_by_ref_name_or_refused() {
        let (mut files, one) = image(b"one");
        let (two_files, two) = image(b"two");
        files.extend(two_files);
        let named = |bytes: &[u8], name: &str| {
            let mut d = desc(OCI_MANIFEST, bytes);
            d["annotations"] = json!({ REF_NAME: name });
            d
        };
        let files = with_index(files, vec![named(&one, "1.0.0"), named(&two, "latest")]);
        let a = artifacts(&files);
        assert_eq!(read(&a, "1.0.0").unwrap().top.digest, sha256_of(&one));
        let err = read(&a, "2.0.0").unwrap_err();
        assert!(err.message.contains("none is named"), "{}", err.message);
        assert!(err.message.contains("1.0.0, latest"), "{}", err.message);
    }

    #[test]
    fn missing_corrupt_and_stray_files_are_refused() {
        let (files, manifest) = image(b"layer");
        let good = with_index(files, vec![desc(OCI_MANIFEST, &manifest)]);

        // A missing layer.
        let layer_path = blob(b"layer").0;
        let missing: Vec<_> = good
            .iter()
            .filter(|(p, _)| *p != layer_path)
            .cloned()
            .collect();
        let err = read(&artifacts(&missing), "1").unwrap_err();
        assert!(
            err.message
                .contains(&format!("the layout needs {layer_path}")),
            "{}",
            err.message
        );

        // A layer whose bytes are not its name (same size, so only hashing finds it).
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
        let a = artifacts(&corrupt);
        let err = read(&a, "1").unwrap_err();
        assert!(
            err.message.contains("the layout is corrupt"),
            "{}",
            err.message
        );

        // A file outside the layout, or inside its directory but not a layout file.
        for path in ["README.txt", "img/README.txt", "img/blobs/sha256/a/b"] {
            let mut stray = good.clone();
            stray.push((path.into(), b"hi".to_vec()));
            let err = read(&artifacts(&stray), "1").unwrap_err();
            assert!(
                err.message.starts_with(&format!(
                    "artifact {path} is not part of the OCI image layout in img"
                )),
                "{}",
                err.message
            );
        }

        // No layout at all.
        let none = vec![("x.tgz".to_owned(), b"x".to_vec())];
        let err = read(&artifacts(&none), "1").unwrap_err();
        assert!(
            err.message
                .starts_with("no OCI image layout among the artifacts"),
            "{}",
            err.message
        );
    }

    /// Non-distributable ("foreign") layers, which clients fetch from their `urls`, are
    /// neither needed in the layout nor pushed. A layer is foreign only with a foreign media
    /// type and `urls` both: either alone, it is an ordinary layer the layout must hold.
    #[test]
    fn foreign_layers_are_neither_needed_nor_pushed() {
        let layer = b"ordinary layer";
        let urls = json!(["https://example.invalid/base-layer"]);
        let with_urls = |media_type: &str, bytes: &[u8]| {
            let mut d = desc(media_type, bytes);
            d["urls"] = urls.clone();
            d
        };
        // The image's layer, after `extra` (whose blob the layout lacks).
        let layout_with = |extra: serde_json::Value| {
            let (files, manifest) = image_with(layer, |m| {
                if let Some(layers) = m["layers"].as_array_mut() {
                    layers.insert(0, extra);
                }
            });
            with_index(files, vec![desc(OCI_MANIFEST, &manifest)])
        };
        for foreign in [
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        ] {
            let a = artifacts(&layout_with(with_urls(foreign, b"windows base layer")));
            let layout = read(&a, "1").unwrap_or_else(|e| panic!("{foreign}: {}", e.message));
            let pushed: Vec<_> = layout.blobs.iter().map(|b| b.digest.clone()).collect();
            assert_eq!(
                pushed,
                vec![sha256_of(CONFIG), sha256_of(layer)],
                "{foreign}"
            );
        }
        let absent = blob(b"windows base layer").0;
        for ordinary in [
            desc(
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                b"windows base layer",
            ),
            with_urls(
                "application/vnd.oci.image.layer.v1.tar+gzip",
                b"windows base layer",
            ),
        ] {
            let err = read(&artifacts(&layout_with(ordinary.clone())), "1").unwrap_err();
            assert!(
                err.message.contains(&format!("the layout needs {absent}")),
                "{ordinary}: {}",
                err.message
            );
        }
    }

    /// A layout may be the revision's root: `index.json` and `oci-layout` at the top.
    #[test]
    fn a_layout_at_the_root_is_found() {
        let (files, manifest) = image(b"layer");
        let at_root: Vec<_> = with_index(files, vec![desc(OCI_MANIFEST, &manifest)])
            .into_iter()
            .map(|(p, b)| (p.trim_start_matches("img/").to_owned(), b))
            .collect();
        let a = artifacts(&at_root);
        let layout = read(&a, "1").unwrap();
        assert_eq!(layout.dir, "");
        assert_eq!(layout.top.digest, sha256_of(&manifest));
        assert_eq!(layout.blobs.len(), 2);

        // Beside it, a file of its own at the root is a stray, not a second layout.
        let mut stray = at_root.clone();
        stray.push(("README.txt".into(), b"hi".to_vec()));
        let err = read(&artifacts(&stray), "1").unwrap_err();
        assert!(
            err.message.starts_with(
                "artifact README.txt is not part of the OCI image layout in the revision's root"
            ),
            "{}",
            err.message
        );
    }

    /// Manifests up to 4 MiB are read (registries take them up to that size).
    #[test]
    fn a_manifest_of_four_mib_is_read() {
        let of_size = |note: usize| {
            image_with(b"layer", |m| {
                m["annotations"] = json!({"org.example.note": "x".repeat(note)});
            })
        };
        let frame = of_size(0).1.len();
        let (files, manifest) = of_size(4 * 1024 * 1024 - frame);
        assert_eq!(manifest.len(), 4 * 1024 * 1024);
        let files = with_index(files, vec![desc(OCI_MANIFEST, &manifest)]);
        let layout = read(&artifacts(&files), "1").unwrap();
        assert_eq!(layout.top.bytes.len(), 4 * 1024 * 1024);

        // index.json too.
        let (files, manifest) = image(b"layer");
        let index_of = |note: usize| {
            serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [desc(OCI_MANIFEST, &manifest)],
                "annotations": {"org.example.note": "x".repeat(note)},
            }))
            .unwrap()
        };
        let index = index_of(4 * 1024 * 1024 - index_of(0).len());
        assert_eq!(index.len(), 4 * 1024 * 1024);
        let mut files = with_index(files, Vec::new());
        for (path, bytes) in &mut files {
            if path == "img/index.json" {
                *bytes = index.clone();
            }
        }
        let layout = read(&artifacts(&files), "1").unwrap();
        assert_eq!(layout.top.digest, sha256_of(&manifest));
    }

    #[test]
    fn a_child_listed_many_times_is_read_once() {
        // Four levels of indexes, each listing the one below 50 times: read naively, that
        // is 50^4 reads of the image manifest.
        let layout = read(&artifacts(&nested(3, 50)), "1").unwrap();
        assert_eq!(
            layout.manifests_read, 4,
            "the top and three levels, each once"
        );
        assert_eq!(layout.children.len(), 3);
        assert_eq!(layout.blobs.len(), 2);
    }

    /// An image under four indexes is read; under five it is refused as too deep.
    #[test]
    fn indexes_nest_four_deep_and_no_deeper() {
        let layout = read(&artifacts(&nested(4, 1)), "1").unwrap();
        assert_eq!(layout.manifests_read, 5);
        let err = read(&artifacts(&nested(5, 1)), "1").unwrap_err();
        assert!(
            err.message.contains("is nested more than 4 indexes deep"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_cancelled_read_stops() {
        let (files, manifest) = image(b"layer");
        let files = with_index(files, vec![desc(OCI_MANIFEST, &manifest)]);
        let cancel = Cancel::default();
        // Raised as if the job's timeout had fired.
        cancel.raise();
        let err = Layout::read(&artifacts(&files), "1", &cancel).unwrap_err();
        assert!(err.message.contains("no longer waits"), "{}", err.message);
    }

    #[test]
    fn a_mislabelled_manifest_is_refused() {
        let (files, manifest) = image(b"layer");
        // index.json calls the image manifest a Docker one.
        let files = with_index(files, vec![desc(DOCKER_MANIFEST, &manifest)]);
        let err = read(&artifacts(&files), "1").unwrap_err();
        assert!(
            err.message.contains("the document says mediaType"),
            "{}",
            err.message
        );
    }
}
