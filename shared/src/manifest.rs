//! A revision's file manifest: (path, size, SHA3-256) per file, as in ATR's published
//! per-revision file manifest, with a canonical digest and a diff.
//!
//! The canonical digest is what `distribution.staged_manifest_digest` stores, and what a
//! promote compares: two revisions with the same files have the same digest whatever their
//! revision numbers (ATR makes a new revision with identical files when a vote passes).
//!
//! Canonical form, so other languages can reproduce it: sort entries by path (byte order),
//! then for each entry feed `path`, a NUL byte, the size in decimal ASCII, a NUL byte, the
//! lower-case hex SHA3-256, and a `\n` into SHA3-256. The result is spelled `sha3-256:<hex>`.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha3::{Digest as _, Sha3_256};

use crate::digest::{Digest, DigestAlgorithm};
use crate::names::ArtifactPath;

/// Lower-case hex SHA3-256 of one file's content.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha3Hex(String);

crate::names::string_schema!(
    Sha3Hex,
    "Lower-case hex SHA3-256 of a file's content.",
    r"^[0-9a-f]{64}$",
    64,
    64
);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("SHA3-256 {0:?} is not 64 lower-case hex digits")]
    BadHash(String),
    #[error("the manifest lists {0:?} more than once")]
    DuplicatePath(String),
}

impl Sha3Hex {
    pub fn new(value: impl Into<String>) -> Result<Sha3Hex, ManifestError> {
        let value = value.into();
        let ok = value.len() == 64
            && value
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            return Err(ManifestError::BadHash(value));
        }
        Ok(Sha3Hex(value))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Sha3Hex {
        Sha3Hex(hex::encode(bytes))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Sha3Hex {
    type Error = ManifestError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Sha3Hex::new(value)
    }
}

impl From<Sha3Hex> for String {
    fn from(value: Sha3Hex) -> String {
        value.0
    }
}

impl fmt::Display for Sha3Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    pub path: ArtifactPath,
    pub size: u64,
    pub sha3_256: Sha3Hex,
}

/// The files of one revision, sorted by path, each path once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
pub struct RevisionManifest {
    entries: Vec<ManifestEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    entries: Vec<ManifestEntry>,
}

impl<'de> Deserialize<'de> for RevisionManifest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawManifest::deserialize(d)?;
        RevisionManifest::new(raw.entries).map_err(serde::de::Error::custom)
    }
}

/// What differs between two manifests, path by path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ManifestDiff {
    pub added: Vec<ArtifactPath>,
    pub removed: Vec<ArtifactPath>,
    pub changed: Vec<ArtifactPath>,
}

impl ManifestDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl fmt::Display for ManifestDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |paths: &[ArtifactPath]| {
            paths
                .iter()
                .map(ArtifactPath::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = Vec::new();
        if !self.added.is_empty() {
            parts.push(format!("added: {}", list(&self.added)));
        }
        if !self.removed.is_empty() {
            parts.push(format!("removed: {}", list(&self.removed)));
        }
        if !self.changed.is_empty() {
            parts.push(format!("changed: {}", list(&self.changed)));
        }
        if parts.is_empty() {
            return f.write_str("no differences");
        }
        f.write_str(&parts.join("; "))
    }
}

impl RevisionManifest {
    pub fn new(mut entries: Vec<ManifestEntry>) -> Result<RevisionManifest, ManifestError> {
        entries.sort_by(|a, b| a.path.as_str().as_bytes().cmp(b.path.as_str().as_bytes()));
        if let Some(pair) = entries.windows(2).find(|w| w[0].path == w[1].path) {
            return Err(ManifestError::DuplicatePath(pair[0].path.to_string()));
        }
        Ok(RevisionManifest { entries })
    }

    pub fn entries(&self) -> &[ManifestEntry] {
        &self.entries
    }

    pub fn get(&self, path: &ArtifactPath) -> Option<&ManifestEntry> {
        self.entries
            .binary_search_by(|e| e.path.as_str().as_bytes().cmp(path.as_str().as_bytes()))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// The canonical digest described in the module documentation.
    pub fn digest(&self) -> Digest {
        let mut hasher = Sha3_256::new();
        for e in &self.entries {
            hasher.update(e.path.as_str().as_bytes());
            hasher.update([0]);
            hasher.update(e.size.to_string().as_bytes());
            hasher.update([0]);
            hasher.update(e.sha3_256.as_str().as_bytes());
            hasher.update(b"\n");
        }
        let out: [u8; 32] = hasher.finalize().into();
        // A 32-byte SHA3-256 always forms a valid digest.
        Digest::from_bytes(DigestAlgorithm::Sha3_256, &out)
            .unwrap_or_else(|_| unreachable!("32 bytes make a SHA3-256 digest"))
    }

    /// What `newer` adds, removes and changes relative to `self`.
    pub fn diff(&self, newer: &RevisionManifest) -> ManifestDiff {
        let old: BTreeMap<&str, &ManifestEntry> =
            self.entries.iter().map(|e| (e.path.as_str(), e)).collect();
        let new: BTreeMap<&str, &ManifestEntry> =
            newer.entries.iter().map(|e| (e.path.as_str(), e)).collect();
        let mut diff = ManifestDiff::default();
        for (path, entry) in &new {
            match old.get(path) {
                None => diff.added.push(entry.path.clone()),
                Some(before) if before.size != entry.size || before.sha3_256 != entry.sha3_256 => {
                    diff.changed.push(entry.path.clone())
                }
                Some(_) => {}
            }
        }
        for (path, entry) in &old {
            if !new.contains_key(path) {
                diff.removed.push(entry.path.clone());
            }
        }
        diff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, size: u64, fill: &str) -> ManifestEntry {
        ManifestEntry {
            path: ArtifactPath::new(path).unwrap(),
            size,
            sha3_256: Sha3Hex::new(fill.repeat(64 / fill.len())).unwrap(),
        }
    }

    #[test]
    fn digest_is_order_independent_and_pinned() {
        let a =
            RevisionManifest::new(vec![entry("b.tgz", 2, "b"), entry("a.txt", 1, "a")]).unwrap();
        let b =
            RevisionManifest::new(vec![entry("a.txt", 1, "a"), entry("b.tgz", 2, "b")]).unwrap();
        assert_eq!(a.digest(), b.digest());
        // Pinned so that a change to the canonical form cannot slip through unnoticed: the
        // Python producer and stored digests depend on it.
        let mut h = Sha3_256::new();
        h.update(format!(
            "a.txt\x001\x00{}\nb.tgz\x002\x00{}\n",
            "a".repeat(64),
            "b".repeat(64)
        ));
        let expected = format!("sha3-256:{}", hex::encode(h.finalize()));
        assert_eq!(a.digest().as_str(), expected);
        let empty = RevisionManifest::new(vec![]).unwrap().digest();
        assert_eq!(
            empty.as_str(),
            "sha3-256:a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a"
        );
    }

    #[test]
    fn digest_changes_with_any_field() {
        let base = RevisionManifest::new(vec![entry("a", 1, "a")])
            .unwrap()
            .digest();
        for other in [entry("b", 1, "a"), entry("a", 2, "a"), entry("a", 1, "c")] {
            assert_ne!(RevisionManifest::new(vec![other]).unwrap().digest(), base);
        }
    }

    #[test]
    fn diff_names_added_removed_changed() {
        let old = RevisionManifest::new(vec![
            entry("keep", 1, "a"),
            entry("gone", 1, "a"),
            entry("edit", 1, "a"),
        ])
        .unwrap();
        let new = RevisionManifest::new(vec![
            entry("keep", 1, "a"),
            entry("new", 1, "a"),
            entry("edit", 1, "b"),
        ])
        .unwrap();
        let d = old.diff(&new);
        assert_eq!(d.to_string(), "added: new; removed: gone; changed: edit");
        assert!(old.diff(&old).is_empty());
    }

    #[test]
    fn refuses_duplicates_and_bad_hashes() {
        assert!(matches!(
            RevisionManifest::new(vec![entry("a", 1, "a"), entry("a", 2, "b")]),
            Err(ManifestError::DuplicatePath(_))
        ));
        assert!(Sha3Hex::new("A".repeat(64)).is_err());
        let json = r#"{"entries":[{"path":"../x","size":1,"sha3_256":"00"}]}"#;
        assert!(serde_json::from_str::<RevisionManifest>(json).is_err());
    }
}
