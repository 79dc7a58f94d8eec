//! Revision sources: where the worker learns a revision's files (the manifest) and reads
//! their bytes. `dir` reads ATR's revision directory, `atr` ATR's published manifest over
//! HTTP, `inline` takes the manifest from the job (bytes, when needed, from `dir`).

mod atr;
mod dir;

use std::path::PathBuf;
use std::sync::Arc;

use atr_dist_shared::job::{ReleaseRef, RevisionSourceSpec};
use atr_dist_shared::manifest::Sha3Hex;
use atr_dist_shared::names::{ArtifactPath, RevisionNumber};
use atr_dist_shared::{ErrorClass, RevisionManifest};
use futures::future::BoxFuture;

pub use atr::AtrSource;
pub use dir::{DirSource, hash_file};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("revision {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: the file does not match the manifest ({detail})")]
    Mismatch { path: String, detail: String },
    #[error("the {0} source is not configured: {1}")]
    NotConfigured(&'static str, &'static str),
}

impl SourceError {
    pub fn class(&self) -> ErrorClass {
        match self {
            SourceError::Unavailable(_) => ErrorClass::Transient,
            SourceError::NotFound(_)
            | SourceError::Invalid(_)
            | SourceError::Mismatch { .. }
            | SourceError::NotConfigured(..) => ErrorClass::Permanent,
        }
    }
}

/// A local copy of an artifact; a downloaded one is deleted when this is dropped.
pub struct LocalFile {
    pub path: PathBuf,
    /// Size and SHA3-256 when already computed on the way in (downloads), so a large file
    /// is not read twice.
    pub hashed: Option<(u64, Sha3Hex)>,
    _temp: Option<tempfile::TempDir>,
}

impl LocalFile {
    pub fn on_disk(path: PathBuf) -> LocalFile {
        LocalFile {
            path,
            hashed: None,
            _temp: None,
        }
    }

    pub fn downloaded(path: PathBuf, hashed: (u64, Sha3Hex), dir: tempfile::TempDir) -> LocalFile {
        LocalFile {
            path,
            hashed: Some(hashed),
            _temp: Some(dir),
        }
    }

    /// Size and SHA3-256 of the file, computing them if needed.
    pub async fn digest(&self) -> Result<(u64, Sha3Hex), SourceError> {
        if let Some(h) = &self.hashed {
            return Ok(h.clone());
        }
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || hash_file(&path))
            .await
            .map_err(|e| SourceError::Unavailable(format!("hashing task failed: {e}")))?
            .map_err(|e| SourceError::Unavailable(format!("{}: {e}", self.path.display())))
    }
}

pub trait RevisionSource: Send + Sync {
    fn manifest<'a>(
        &'a self,
        release: &'a ReleaseRef,
        revision: &'a RevisionNumber,
    ) -> BoxFuture<'a, Result<RevisionManifest, SourceError>>;

    fn fetch<'a>(
        &'a self,
        release: &'a ReleaseRef,
        revision: &'a RevisionNumber,
        path: &'a ArtifactPath,
    ) -> BoxFuture<'a, Result<LocalFile, SourceError>>;
}

/// The configured sources; a job names which one to use.
#[derive(Clone, Default)]
pub struct Sources {
    pub dir: Option<Arc<dyn RevisionSource>>,
    pub atr: Option<Arc<dyn RevisionSource>>,
}

impl Sources {
    pub async fn manifest(
        &self,
        spec: &RevisionSourceSpec,
        release: &ReleaseRef,
        revision: &RevisionNumber,
    ) -> Result<RevisionManifest, SourceError> {
        match spec {
            RevisionSourceSpec::Inline { manifest } => Ok(manifest.clone()),
            RevisionSourceSpec::Dir => self.dir()?.manifest(release, revision).await,
            RevisionSourceSpec::Atr => self.atr()?.manifest(release, revision).await,
        }
    }

    pub async fn fetch(
        &self,
        spec: &RevisionSourceSpec,
        release: &ReleaseRef,
        revision: &RevisionNumber,
        path: &ArtifactPath,
    ) -> Result<LocalFile, SourceError> {
        match spec {
            // An inline manifest says what the files are; their bytes still come from disk.
            RevisionSourceSpec::Inline { .. } | RevisionSourceSpec::Dir => {
                self.dir()?.fetch(release, revision, path).await
            }
            RevisionSourceSpec::Atr => self.atr()?.fetch(release, revision, path).await,
        }
    }

    fn dir(&self) -> Result<&Arc<dyn RevisionSource>, SourceError> {
        self.dir
            .as_ref()
            .ok_or(SourceError::NotConfigured("dir", "set revisions.root"))
    }

    fn atr(&self) -> Result<&Arc<dyn RevisionSource>, SourceError> {
        self.atr.as_ref().ok_or(SourceError::NotConfigured(
            "atr",
            "set revisions.atr_base_url",
        ))
    }
}
