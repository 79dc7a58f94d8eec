//! Revision sources: where the worker learns a revision's files (the manifest) and reads
//! their bytes. `dir` reads ATR's revision directory, `atr` ATR's published manifest over
//! HTTP, `inline` takes the manifest from the job (bytes, when needed, from `dir`).
//!
//! A source only opens files; it never decides that bytes are good. The pipeline reads
//! each artifact once through the sealer (`seal.rs`), which keeps a private copy and
//! compares it with the voted manifest, and adapters publish only that copy.

mod atr;
mod dir;

use std::sync::Arc;

use atr_dist_shared::job::{ReleaseRef, RevisionSourceSpec};
use atr_dist_shared::names::{ArtifactPath, RevisionNumber};
use atr_dist_shared::{ErrorClass, RevisionManifest};
use futures::future::BoxFuture;

pub use atr::AtrSource;
pub use dir::{DirSource, hash_file};

use crate::seal::ByteStream;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("revision {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the {0} source is not configured: {1}")]
    NotConfigured(&'static str, &'static str),
}

impl SourceError {
    pub fn class(&self) -> ErrorClass {
        match self {
            SourceError::Unavailable(_) => ErrorClass::Transient,
            SourceError::NotFound(_) | SourceError::Invalid(_) | SourceError::NotConfigured(..) => {
                ErrorClass::Permanent
            }
        }
    }
}

pub trait RevisionSource: Send + Sync {
    fn manifest<'a>(
        &'a self,
        release: &'a ReleaseRef,
        revision: &'a RevisionNumber,
    ) -> BoxFuture<'a, Result<RevisionManifest, SourceError>>;

    /// Opens one file of the revision to be read once, by the pipeline's sealer
    /// (`seal.rs`), which bounds the read at the voted size and checks what it read. Only a
    /// regular file inside the revision may be opened: no component of the path may be a
    /// link, and nothing else (a FIFO, a device) is opened at all.
    fn open<'a>(
        &'a self,
        release: &'a ReleaseRef,
        revision: &'a RevisionNumber,
        path: &'a ArtifactPath,
    ) -> BoxFuture<'a, Result<ByteStream, SourceError>>;
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

    pub async fn open(
        &self,
        spec: &RevisionSourceSpec,
        release: &ReleaseRef,
        revision: &RevisionNumber,
        path: &ArtifactPath,
    ) -> Result<ByteStream, SourceError> {
        match spec {
            // An inline manifest says what the files are; their bytes still come from disk,
            // opened by the same rules as for a `dir` job.
            RevisionSourceSpec::Inline { .. } | RevisionSourceSpec::Dir => {
                self.dir()?.open(release, revision, path).await
            }
            RevisionSourceSpec::Atr => self.atr()?.open(release, revision, path).await,
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
