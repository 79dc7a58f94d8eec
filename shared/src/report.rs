//! The worker's report of a job, for producers (docs/wire-format.md, "Results"): what ATR
//! needs to update its own `distribution` and task rows when a job ends, without reading
//! atr-dist's database.
//!
//! It is the `result` field of the job's entry in the queue's `results` stream, and its
//! entry in the `result` hash, as compact JSON. Entries that no worker reported on (an
//! operator's cancel of a waiting job, a lease that ran out with no attempts left, a
//! malformed envelope) carry none.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::job::JobKind;
use crate::manifest::ManifestDiff;
use crate::outcome::AttemptOutcome;
use crate::platform::Platform;

/// ATR's key of a distribution: (release key, platform, owner namespace, package, version).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DistributionRef {
    pub release_key: String,
    pub platform: Platform,
    pub owner_namespace: String,
    pub package: String,
    pub version: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct JobReport {
    pub kind: JobKind,
    pub distribution: DistributionRef,
    /// The revision the job named (ATR's `Revision.number`).
    pub revision: String,
    /// How the job's last attempt ended.
    pub outcome: AttemptOutcome,
    pub dry_run: bool,
    /// The distribution as atr-dist has recorded it, after this attempt: ATR's columns.
    pub staged: bool,
    pub promoted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_date: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_url: Option<String>,
    /// The digest the platform reports for the staged or promoted bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_digest: Option<String>,
    /// The canonical digest of the voted (staged) revision's manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    /// For `revision_changed`: the paths that differ between the staged and the voted
    /// revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<ManifestDiff>,
}
