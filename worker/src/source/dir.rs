//! `dir`: a revision directory on disk, laid out as ATR lays it out:
//! `<root>/<project_key>/<version_key>/<revision_number>/…`. Files are hashed with SHA3-256,
//! streaming, as ATR's file manifest does.

use std::io::Read;
use std::path::{Path, PathBuf};

use atr_dist_shared::job::ReleaseRef;
use atr_dist_shared::manifest::Sha3Hex;
use atr_dist_shared::names::{ArtifactPath, RevisionNumber};
use atr_dist_shared::{ManifestEntry, RevisionManifest};
use futures::FutureExt;
use futures::future::BoxFuture;
use sha3::{Digest as _, Sha3_256};

use super::{LocalFile, RevisionSource, SourceError};

pub struct DirSource {
    root: PathBuf,
}

impl DirSource {
    pub fn new(root: impl Into<PathBuf>) -> DirSource {
        DirSource { root: root.into() }
    }

    fn revision_dir(&self, release: &ReleaseRef, revision: &RevisionNumber) -> PathBuf {
        // Every part is a validated name without separators or `..`.
        self.root
            .join(release.project_key.as_str())
            .join(release.version_key.as_str())
            .join(revision.as_str())
    }
}

/// Size and SHA3-256 of a file, read in 1 MiB pieces: a multi-gigabyte image never sits in
/// memory whole.
pub fn hash_file(path: &Path) -> std::io::Result<(u64, Sha3Hex)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha3_256::new();
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
    Ok((size, Sha3Hex::from_bytes(hasher.finalize().into())))
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<ManifestEntry>) -> Result<(), SourceError> {
    let io = |e: std::io::Error| SourceError::Unavailable(format!("{}: {e}", dir.display()));
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let kind = entry.file_type().map_err(io)?;
        // ATR's revisions hold regular files (hard links); a symlink could point anywhere.
        if kind.is_symlink() {
            return Err(SourceError::Invalid(format!(
                "{} is a symbolic link; revisions hold only files",
                path.display()
            )));
        }
        if kind.is_dir() {
            walk(base, &path, out)?;
            continue;
        }
        let rel = path.strip_prefix(base).map_err(|_| {
            SourceError::Invalid(format!("{} is outside the revision", path.display()))
        })?;
        let rel = rel
            .to_str()
            .ok_or_else(|| SourceError::Invalid(format!("{} is not UTF-8", path.display())))?;
        let artifact = ArtifactPath::new(rel).map_err(|e| SourceError::Invalid(e.to_string()))?;
        let (size, sha3_256) = hash_file(&path).map_err(io)?;
        out.push(ManifestEntry {
            path: artifact,
            size,
            sha3_256,
        });
    }
    Ok(())
}

impl RevisionSource for DirSource {
    fn manifest<'a>(
        &'a self,
        release: &'a ReleaseRef,
        revision: &'a RevisionNumber,
    ) -> BoxFuture<'a, Result<RevisionManifest, SourceError>> {
        let dir = self.revision_dir(release, revision);
        async move {
            if !dir.is_dir() {
                return Err(SourceError::NotFound(format!(
                    "{} {revision} (no directory {})",
                    release.key(),
                    dir.display()
                )));
            }
            // Hashing is blocking I/O: keep it off the async workers.
            tokio::task::spawn_blocking(move || {
                let mut entries = Vec::new();
                walk(&dir, &dir, &mut entries)?;
                RevisionManifest::new(entries).map_err(|e| SourceError::Invalid(e.to_string()))
            })
            .await
            .map_err(|e| SourceError::Unavailable(format!("hashing task failed: {e}")))?
        }
        .boxed()
    }

    fn fetch<'a>(
        &'a self,
        release: &'a ReleaseRef,
        revision: &'a RevisionNumber,
        path: &'a ArtifactPath,
    ) -> BoxFuture<'a, Result<LocalFile, SourceError>> {
        let file = self.revision_dir(release, revision).join(path.as_str());
        async move {
            match tokio::fs::symlink_metadata(&file).await {
                Ok(meta) if meta.is_file() => Ok(LocalFile::on_disk(file)),
                Ok(_) => Err(SourceError::Invalid(format!(
                    "{} is not a regular file",
                    file.display()
                ))),
                Err(_) => Err(SourceError::NotFound(format!(
                    "{} {revision}: no file {path}",
                    release.key()
                ))),
            }
        }
        .boxed()
    }
}
