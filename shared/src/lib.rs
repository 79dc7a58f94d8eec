//! atr-dist's shared vocabulary: platforms, validated names, digests, the job contract, the
//! revision manifest and the result entities. Everything a producer, the worker and the
//! operator surface must agree on lives here, and nothing here does I/O.

pub mod digest;
pub mod entities;
pub mod job;
pub mod key;
pub mod lifecycle;
pub mod manifest;
pub mod names;
pub mod outcome;
pub mod platform;
pub mod report;

pub use digest::{Digest, DigestAlgorithm};
pub use job::{Envelope, Job, JobId, JobKind, PromoteJob, StageJob};
pub use key::DistributionKey;
pub use lifecycle::{ErrorClass, JobState};
pub use manifest::{ManifestDiff, ManifestEntry, RevisionManifest};
pub use outcome::{AtrTaskStatus, AttemptOutcome};
pub use platform::{Platform, PromotionMechanism};
pub use report::{DistributionRef, JobReport};
