//! The job contract: `stage` and `promote` jobs inside a versioned envelope.
//!
//! This is what producers (ATR in Python, our CLI, our HTTP API) put on the queue. The JSON
//! Schema in `docs/job-envelope.schema.json` is generated from these types
//! (`atr-dist schema`), and a test fails when the two drift apart.
//!
//! Parsing is strict: unknown fields, versions and kinds are refused with a message that names
//! them, so a producer's typo dead-letters the job instead of publishing something unexpected.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::key::{DistributionKey, KeyError};
use crate::manifest::RevisionManifest;
use crate::names::{
    ArtifactPath, AsfUid, DistTag, IdempotencyKey, PackageName, ProjectKey, ReleaseKey,
    RevisionKey, RevisionNumber, Version, VersionKey,
};
use crate::platform::Platform;

/// The envelope version this build writes and understands.
pub const ENVELOPE_VERSION: u32 = 1;

/// Envelopes larger than this are refused before parsing: an inline manifest of ~5,000 files
/// fits, and nothing legitimate is larger.
pub const MAX_ENVELOPE_BYTES: usize = 1024 * 1024;

/// A job id: a UUID (producers should use v7, which sorts by time).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct JobId(pub Uuid);

impl JobId {
    pub fn new_v7() -> JobId {
        JobId(Uuid::now_v7())
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(JobId)
    }
}

/// The envelope around every job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(
    title = "atr-dist job envelope",
    description = "A stage or promote job as stored on the atr-dist queue (docs/wire-format.md)."
)]
pub struct Envelope {
    /// Envelope version; this contract is version 1.
    #[schemars(range(min = 1, max = 1))]
    pub v: u32,
    pub id: JobId,
    /// Enqueuing again with the same key returns the existing job instead of a duplicate.
    pub idempotency_key: IdempotencyKey,
    pub enqueued_at: DateTime<Utc>,
    #[serde(flatten)]
    pub job: Job,
}

/// The job itself: `kind` names it and `payload` carries it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum Job {
    /// Put the voted files on the platform's staging place.
    Stage(StageJob),
    /// Turn a staged distribution into the production one, if the files are still those voted on.
    Promote(PromoteJob),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Stage,
    Promote,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Stage => "stage",
            JobKind::Promote => "promote",
        }
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The ATR release: project and version, from which the release key is built.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRef {
    pub project_key: ProjectKey,
    pub version_key: VersionKey,
}

impl ReleaseRef {
    pub fn key(&self) -> ReleaseKey {
        ReleaseKey::of(&self.project_key, &self.version_key)
    }
}

/// Where on which platform: the non-release parts of ATR's distribution key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DistributionSpec {
    pub platform: Platform,
    /// Empty or absent where the platform takes none; Docker Hub defaults to `library`.
    #[serde(default)]
    #[schemars(regex(pattern = r"^([A-Za-z0-9][A-Za-z0-9._-]*)?$"), length(max = 255))]
    pub owner_namespace: String,
    pub package: PackageName,
    pub version: Version,
}

/// Where the worker reads the revision's files and manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RevisionSourceSpec {
    /// The revision directory under the configured revisions root.
    Dir,
    /// ATR's published per-revision file manifest, from the configured ATR base URL.
    Atr,
    /// The manifest carried in the job itself.
    Inline { manifest: RevisionManifest },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StageJob {
    pub release: ReleaseRef,
    pub distribution: DistributionSpec,
    /// The revision whose files are staged.
    pub revision: RevisionNumber,
    pub source: RevisionSourceSpec,
    /// The files to publish, relative to the revision root (a tarball, an OCI layout, ...).
    #[schemars(length(min = 1, max = 1000))]
    pub artifacts: Vec<ArtifactPath>,
    /// The staging dist-tag or image tag; the platform's configured default when absent.
    #[serde(default)]
    pub staging_tag: Option<DistTag>,
    /// Describe the platform writes instead of sending them.
    #[serde(default)]
    pub dry_run: bool,
    pub asf_uid: AsfUid,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteJob {
    pub release: ReleaseRef,
    pub distribution: DistributionSpec,
    /// The voted revision. Its files must equal the staged files, whatever its number.
    pub revision: RevisionNumber,
    pub source: RevisionSourceSpec,
    /// The production dist-tag or image tag; `latest` (npm) or the version (OCI) when absent.
    #[serde(default)]
    pub release_tag: Option<DistTag>,
    #[serde(default)]
    pub dry_run: bool,
    pub asf_uid: AsfUid,
}

/// Why an envelope was refused. Each is permanent: the job goes to the dead set with this text.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is {len} bytes; the limit is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("envelope is not valid JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("envelope is not a JSON object")]
    NotAnObject,
    #[error("envelope has no {0:?} field")]
    MissingField(&'static str),
    #[error(
        "envelope version {found} is not supported; this worker understands version {supported}"
    )]
    UnsupportedVersion { found: String, supported: u32 },
    #[error("unknown job kind {0:?}; expected \"stage\" or \"promote\"")]
    UnknownKind(String),
    #[error("envelope has unknown field {0:?}")]
    UnknownField(String),
    #[error("envelope field {field:?} {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("invalid {kind} job: {error}")]
    InvalidPayload {
        kind: &'static str,
        error: serde_json::Error,
    },
    #[error("invalid {kind} job: {error}")]
    InvalidKey { kind: &'static str, error: KeyError },
}

/// A value quoted in a message, cut to a readable length.
fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    if text.chars().count() <= MAX {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(MAX - 1).collect();
    cut.push('…');
    cut
}

const ENVELOPE_FIELDS: [&str; 6] = [
    "v",
    "id",
    "idempotency_key",
    "enqueued_at",
    "kind",
    "payload",
];

impl Envelope {
    pub fn new(job: Job, idempotency_key: IdempotencyKey) -> Envelope {
        Envelope {
            v: ENVELOPE_VERSION,
            id: JobId::new_v7(),
            idempotency_key,
            enqueued_at: Utc::now(),
            job,
        }
    }

    /// Parses and fully validates an envelope, including the platform rules of its key.
    pub fn parse(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(EnvelopeError::TooLarge {
                len: bytes.len(),
                max: MAX_ENVELOPE_BYTES,
            });
        }
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(EnvelopeError::NotJson)?;
        let serde_json::Value::Object(map) = &value else {
            return Err(EnvelopeError::NotAnObject);
        };
        // Version and kind first, so the message names them rather than a later field.
        let v = map.get("v").ok_or(EnvelopeError::MissingField("v"))?;
        if v.as_u64() != Some(u64::from(ENVELOPE_VERSION)) {
            return Err(EnvelopeError::UnsupportedVersion {
                found: v.to_string(),
                supported: ENVELOPE_VERSION,
            });
        }
        let kind = map.get("kind").ok_or(EnvelopeError::MissingField("kind"))?;
        let kind = match kind.as_str() {
            Some("stage") => JobKind::Stage,
            Some("promote") => JobKind::Promote,
            _ => {
                return Err(EnvelopeError::UnknownKind(
                    kind.to_string().trim_matches('"').to_owned(),
                ));
            }
        };
        if let Some(unknown) = map.keys().find(|k| !ENVELOPE_FIELDS.contains(&k.as_str())) {
            return Err(EnvelopeError::UnknownField(unknown.clone()));
        }
        for field in ENVELOPE_FIELDS {
            if !map.contains_key(field) {
                return Err(EnvelopeError::MissingField(field));
            }
        }
        // serde's message for a bad time names neither the field nor the rule ("premature
        // end of input"): check it first, the way serde reads it.
        if let Some(id) = map.get("id")
            && id.as_str().and_then(|t| Uuid::parse_str(t).ok()).is_none()
        {
            return Err(EnvelopeError::InvalidField {
                field: "id",
                reason: format!(
                    "must be a UUID (preferably v7), e.g. \"01936f0e-8a7b-7c3d-9e4f-0a1b2c3d4e5f\"; found {}",
                    shorten(&id.to_string())
                ),
            });
        }
        if let Some(at) = map.get("enqueued_at") {
            let valid = at
                .as_str()
                .map(|text| text.parse::<DateTime<Utc>>().map(|_| ()));
            if let Some(Err(_)) | None = valid {
                return Err(EnvelopeError::InvalidField {
                    field: "enqueued_at",
                    reason: format!(
                        "must be an RFC 3339 date-time with a UTC offset, e.g. \"2026-01-01T12:00:00Z\" or \"2026-01-01T14:00:00+02:00\"; found {}",
                        shorten(&at.to_string())
                    ),
                });
            }
        }
        let envelope: Envelope =
            serde_json::from_value(value).map_err(|error| EnvelopeError::InvalidPayload {
                kind: kind.as_str(),
                error,
            })?;
        envelope
            .distribution_key()
            .map_err(|error| EnvelopeError::InvalidKey {
                kind: kind.as_str(),
                error,
            })?;
        Ok(envelope)
    }

    /// The key producers use when they have none of their own: the same job for the same
    /// revision is the same key, so a producer that repeats itself after a crash (ATR
    /// re-running a task) gets the existing job back instead of a duplicate. A dry run has
    /// its own key (`:dry-run` appended), so dry-running first never takes the real job's
    /// key. Python's producer builds the identical string.
    pub fn default_idempotency_key(job: &Job) -> IdempotencyKey {
        let (kind, release, d, revision, dry_run) = match job {
            Job::Stage(j) => ("stage", &j.release, &j.distribution, &j.revision, j.dry_run),
            Job::Promote(j) => (
                "promote",
                &j.release,
                &j.distribution,
                &j.revision,
                j.dry_run,
            ),
        };
        let mut text = format!(
            "{kind}:{}:{}:{}:{}:{}:{revision}",
            release.key(),
            d.platform,
            d.owner_namespace,
            d.package,
            d.version
        );
        if dry_run {
            text.push_str(":dry-run");
        }
        // Every part is a validated name of at most a few hundred printable ASCII bytes; an
        // overlong combination is cut to the key's limit, keeping a hash of the whole.
        IdempotencyKey::new(text.clone()).unwrap_or_else(|_| {
            let digest = hex::encode(<sha3::Sha3_256 as sha3::Digest>::digest(text.as_bytes()));
            let head: String = text.chars().take(IdempotencyKey::MAX_LEN - 65).collect();
            IdempotencyKey::new(format!("{head}#{digest}")).unwrap_or_else(|e| unreachable!("{e}"))
        })
    }

    pub fn to_json(&self) -> String {
        // Every field is a plain string, number or map: serialisation cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| unreachable!("envelope serialises: {e}"))
    }

    pub fn kind(&self) -> JobKind {
        match self.job {
            Job::Stage(_) => JobKind::Stage,
            Job::Promote(_) => JobKind::Promote,
        }
    }

    pub fn release(&self) -> &ReleaseRef {
        match &self.job {
            Job::Stage(j) => &j.release,
            Job::Promote(j) => &j.release,
        }
    }

    pub fn distribution(&self) -> &DistributionSpec {
        match &self.job {
            Job::Stage(j) => &j.distribution,
            Job::Promote(j) => &j.distribution,
        }
    }

    pub fn revision_key(&self) -> RevisionKey {
        let number = match &self.job {
            Job::Stage(j) => &j.revision,
            Job::Promote(j) => &j.revision,
        };
        RevisionKey::of(&self.release().key(), number)
    }

    /// The distribution this job acts on, validated against its platform's rules.
    pub fn distribution_key(&self) -> Result<DistributionKey, KeyError> {
        let d = self.distribution();
        DistributionKey::new(
            self.release().key(),
            d.platform,
            &d.owner_namespace,
            d.package.clone(),
            d.version.clone(),
        )
    }
}

/// The JSON Schema of the envelope, as published in `docs/job-envelope.schema.json`.
pub fn envelope_schema() -> String {
    let mut schema = schemars::schema_for!(Envelope);
    // The worker refuses unknown top-level fields (`Envelope::parse`), so the schema must
    // too. `kind` and `payload` are declared in the `oneOf` branches (serde's adjacent
    // tagging), which `additionalProperties` does not look into: they are listed here as
    // well, so a validator without `unevaluatedProperties` gives the same answer.
    if let Some(top) = schema.as_object_mut() {
        if let Some(serde_json::Value::Object(properties)) = top.get_mut("properties") {
            properties.insert(
                "kind".to_owned(),
                serde_json::json!({"description": "The job's kind; `payload` is its job.", "enum": ["stage", "promote"]}),
            );
            properties.insert(
                "payload".to_owned(),
                serde_json::json!({"description": "The job: a StageJob or a PromoteJob, as `kind` says.", "type": "object"}),
            );
        }
        top.insert(
            "additionalProperties".to_owned(),
            serde_json::Value::Bool(false),
        );
    }
    let mut text = serde_json::to_string_pretty(&schema)
        .unwrap_or_else(|e| unreachable!("schema serialises: {e}"));
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_stage() -> Envelope {
        let job = StageJob {
            release: ReleaseRef {
                project_key: ProjectKey::new("example").unwrap(),
                version_key: VersionKey::new("1.0.0").unwrap(),
            },
            distribution: DistributionSpec {
                platform: Platform::NpmScoped,
                owner_namespace: "apache".into(),
                package: PackageName::new("example").unwrap(),
                version: Version::new("1.0.0").unwrap(),
            },
            revision: RevisionNumber::new("00002").unwrap(),
            source: RevisionSourceSpec::Dir,
            artifacts: vec![ArtifactPath::new("apache-example-1.0.0.tgz").unwrap()],
            staging_tag: None,
            dry_run: false,
            asf_uid: AsfUid::new("rm").unwrap(),
        };
        Envelope::new(
            Job::Stage(job),
            IdempotencyKey::new("stage:example-1.0.0:npm").unwrap(),
        )
    }

    fn with(mut value: serde_json::Value, f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        f(&mut value);
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn round_trips_with_kind_and_payload_at_top_level() {
        let env = sample_stage();
        let json: serde_json::Value = serde_json::from_str(&env.to_json()).unwrap();
        assert_eq!(json["v"], 1);
        assert_eq!(json["kind"], "stage");
        assert_eq!(json["payload"]["distribution"]["platform"], "NPM_SCOPED");
        assert_eq!(json["payload"]["source"]["type"], "dir");
        let back = Envelope::parse(env.to_json().as_bytes()).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.revision_key().as_str(), "example-1.0.0 00002");
        assert_eq!(
            back.distribution_key().unwrap().display_name(),
            "@apache/example"
        );
    }

    #[test]
    fn refusals_name_the_problem() {
        let base: serde_json::Value = serde_json::from_str(&sample_stage().to_json()).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"{not json".to_vec(), "envelope is not valid JSON"),
            (b"[1]".to_vec(), "envelope is not a JSON object"),
            (
                with(base.clone(), |v| v["v"] = 2.into()),
                "envelope version 2 is not supported; this worker understands version 1",
            ),
            (
                with(base.clone(), |v| v["kind"] = "publish".into()),
                "unknown job kind \"publish\"",
            ),
            (
                with(base.clone(), |v| {
                    v.as_object_mut().unwrap().remove("id");
                }),
                "envelope has no \"id\" field",
            ),
            (
                with(base.clone(), |v| {
                    v.as_object_mut().unwrap().remove("v");
                }),
                "envelope has no \"v\" field",
            ),
            (
                with(base.clone(), |v| v["extra"] = 1.into()),
                "envelope has unknown field \"extra\"",
            ),
            (
                with(base.clone(), |v| {
                    v["payload"].as_object_mut().unwrap().remove("revision");
                }),
                "invalid stage job: missing field `revision`",
            ),
            (
                with(base.clone(), |v| v["payload"]["revsion"] = "00001".into()),
                "unknown field `revsion`",
            ),
            (
                with(base.clone(), |v| {
                    v["payload"]["artifacts"][0] = "../../etc/passwd".into()
                }),
                "path traversal",
            ),
            (
                with(base.clone(), |v| {
                    v["payload"]["distribution"]["platform"] = "CRATES".into()
                }),
                "unknown variant `CRATES`",
            ),
            (
                with(base.clone(), |v| {
                    v["payload"]["distribution"]["owner_namespace"] = "".into()
                }),
                "NPM_SCOPED requires an owner namespace",
            ),
            (
                vec![b' '; MAX_ENVELOPE_BYTES + 1],
                "envelope is 1048577 bytes; the limit is 1048576",
            ),
            (
                with(base.clone(), |v| {
                    v["enqueued_at"] = "2026-01-01T12:00:00".into()
                }),
                "envelope field \"enqueued_at\" must be an RFC 3339 date-time with a UTC offset",
            ),
            (
                with(base.clone(), |v| v["enqueued_at"] = 1767225600.into()),
                "envelope field \"enqueued_at\" must be an RFC 3339 date-time with a UTC offset, e.g. \"2026-01-01T12:00:00Z\" or \"2026-01-01T14:00:00+02:00\"; found 1767225600",
            ),
            (
                with(base.clone(), |v| v["payload"]["revision"] = "00000".into()),
                "revision sequences start at 1",
            ),
        ];
        for (bytes, expected) in cases {
            let err = Envelope::parse(&bytes).unwrap_err().to_string();
            assert!(err.contains(expected), "expected {expected:?} in {err:?}");
        }
    }
}
