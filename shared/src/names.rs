//! Validated newtypes for every value that crosses a boundary (a job payload, a URL path, a
//! database key, a file path). Each is checked once, where it is built, so the rest of the code
//! can trust it. The rules follow ATR's `safe.*` wrappers and the platforms' own name rules.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a value was refused. Each message names the kind of value and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} bytes long; the limit is {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what} {value:?} contains a control character")]
    ControlCharacter { what: &'static str, value: String },
    #[error("{what} {value:?} could escape its directory (path traversal)")]
    PathTraversal { what: &'static str, value: String },
    #[error("{what} {value:?} contains {ch:?}; allowed: {allowed}")]
    InvalidCharacter {
        what: &'static str,
        value: String,
        ch: char,
        allowed: &'static str,
    },
    #[error("{what} {value:?} is invalid: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// Checks shared by every name: not empty, not too long, no control characters.
fn check_common(what: &'static str, value: &str, max: usize) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { what });
    }
    if value.len() > max {
        return Err(NameError::TooLong {
            what,
            len: value.len(),
            max,
        });
    }
    if value.chars().any(char::is_control) {
        return Err(NameError::ControlCharacter {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// Refuses anything that could act as a path component other than a plain name.
fn check_no_traversal(what: &'static str, value: &str) -> Result<(), NameError> {
    if value == "." || value.contains("..") || value.contains('/') || value.contains('\\') {
        return Err(NameError::PathTraversal {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

fn check_chars(
    what: &'static str,
    value: &str,
    allowed: &'static str,
    ok: impl Fn(char) -> bool,
) -> Result<(), NameError> {
    match value.chars().find(|c| !ok(*c)) {
        Some(ch) => Err(NameError::InvalidCharacter {
            what,
            value: value.to_owned(),
            ch,
            allowed,
        }),
        None => Ok(()),
    }
}

fn check_first_char(
    what: &'static str,
    value: &str,
    ok: impl Fn(char) -> bool,
    reason: &'static str,
) -> Result<(), NameError> {
    match value.chars().next() {
        Some(c) if ok(c) => Ok(()),
        _ => Err(NameError::Invalid {
            what,
            value: value.to_owned(),
            reason,
        }),
    }
}

/// Defines a validated string newtype: `new` validates, serde goes through `new`, and the JSON
/// Schema carries the same pattern and length so producers in other languages can check first.
macro_rules! string_newtype {
    ($name:ident, doc = $doc:literal, pattern = $pattern:literal, max = $max:literal, $validate:path) => {
        #[doc = $doc]
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const MAX_LEN: usize = $max;

            pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
                let value = value.into();
                $validate(&value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        crate::names::string_schema!($name, $doc, $pattern, 1, $max);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

/// A JSON Schema string type with the same pattern and length limits the Rust side enforces.
macro_rules! string_schema {
    ($name:ident, $doc:literal, $pattern:literal, $min:literal, $max:literal) => {
        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "description": $doc.trim(),
                    "pattern": $pattern,
                    "minLength": $min,
                    "maxLength": $max,
                })
            }
        }
    };
}

pub(crate) use string_schema;

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn validate_project_key(v: &str) -> Result<(), NameError> {
    const WHAT: &str = "project key";
    check_common(WHAT, v, ProjectKey::MAX_LEN)?;
    check_no_traversal(WHAT, v)?;
    check_chars(WHAT, v, "a-z 0-9 . -", |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-')
    })?;
    check_first_char(
        WHAT,
        v,
        |c| c.is_ascii_alphanumeric(),
        "must start with a letter or digit",
    )
}

string_newtype!(
    ProjectKey,
    doc = "An ATR project key (`Project.key`), e.g. `tooling`.",
    pattern = r"^[a-z0-9][a-z0-9.-]*$",
    max = 100,
    validate_project_key
);

/// Versions (a release's and a distribution's) share one rule: name characters plus `+`
/// (semver build metadata), starting with a letter or digit.
fn validate_version_like(what: &'static str, v: &str, max: usize) -> Result<(), NameError> {
    check_common(what, v, max)?;
    check_no_traversal(what, v)?;
    check_chars(what, v, "A-Z a-z 0-9 . + _ -", |c| {
        is_name_char(c) || c == '+'
    })?;
    check_first_char(
        what,
        v,
        |c| c.is_ascii_alphanumeric(),
        "must start with a letter or digit",
    )
}

fn validate_version_key(v: &str) -> Result<(), NameError> {
    validate_version_like("release version", v, VersionKey::MAX_LEN)
}

string_newtype!(
    VersionKey,
    doc = "The version of an ATR release (`Release.version`), e.g. `0.0.1`.",
    pattern = r"^[A-Za-z0-9][A-Za-z0-9.+_-]*$",
    max = 100,
    validate_version_key
);

fn validate_release_key(v: &str) -> Result<(), NameError> {
    const WHAT: &str = "release key";
    check_common(WHAT, v, ReleaseKey::MAX_LEN)?;
    check_no_traversal(WHAT, v)?;
    check_chars(WHAT, v, "A-Z a-z 0-9 . + _ -", |c| {
        is_name_char(c) || c == '+'
    })?;
    check_first_char(
        WHAT,
        v,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit(),
        "must start with the project key",
    )?;
    match v.split_once('-') {
        Some((project, version)) if !project.is_empty() && !version.is_empty() => Ok(()),
        _ => Err(NameError::Invalid {
            what: WHAT,
            value: v.to_owned(),
            reason: "must be \"{project_key}-{version}\"",
        }),
    }
}

string_newtype!(
    ReleaseKey,
    doc = "ATR's `Release.key`: `\"{project_key}-{version}\"`.",
    pattern = r"^[a-z0-9][A-Za-z0-9.+_]*-[A-Za-z0-9.+_-]+$",
    max = 201,
    validate_release_key
);

impl ReleaseKey {
    /// Builds the key as ATR's `sql.release_key()` does.
    pub fn of(project: &ProjectKey, version: &VersionKey) -> ReleaseKey {
        ReleaseKey(format!("{project}-{version}"))
    }
}

fn validate_revision_number(v: &str) -> Result<(), NameError> {
    const WHAT: &str = "revision number";
    check_common(WHAT, v, RevisionNumber::MAX_LEN)?;
    check_chars(WHAT, v, "0-9", |c| c.is_ascii_digit())?;
    // ATR writes `str(seq).zfill(5)`: exactly five digits, or more without a leading zero.
    if v.len() < 5 || (v.len() > 5 && v.starts_with('0')) {
        return Err(NameError::Invalid {
            what: WHAT,
            value: v.to_owned(),
            reason: "must be the revision sequence zero-padded to five digits, e.g. \"00001\"",
        });
    }
    if v.bytes().all(|b| b == b'0') {
        return Err(NameError::Invalid {
            what: WHAT,
            value: v.to_owned(),
            reason: "revision sequences start at 1",
        });
    }
    Ok(())
}

string_newtype!(
    RevisionNumber,
    doc = "ATR's `Revision.number`: `str(seq).zfill(5)`, e.g. `00002`.",
    pattern = r"^(?:0000[1-9]|000[1-9][0-9]|00[1-9][0-9]{2}|0[1-9][0-9]{3}|[1-9][0-9]{4,18})$",
    max = 19,
    validate_revision_number
);

impl RevisionNumber {
    pub fn from_seq(seq: u64) -> Result<RevisionNumber, NameError> {
        RevisionNumber::new(format!("{seq:05}"))
    }

    pub fn seq(&self) -> u64 {
        // Validated as 5 to 19 ASCII digits, which always fits in a u64.
        self.0.parse().unwrap_or(u64::MAX)
    }
}

/// ATR's `Revision.key`: `"{release_key} {number}"`, e.g. `example-0.0.1 00002`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RevisionKey(String);

string_schema!(
    RevisionKey,
    "ATR's Revision.key: \"{release_key} {number}\".",
    r"^\S+ [0-9]{5,19}$",
    7,
    221
);

impl RevisionKey {
    pub fn of(release: &ReleaseKey, number: &RevisionNumber) -> RevisionKey {
        RevisionKey(format!("{release} {number}"))
    }

    pub fn parts(&self) -> (ReleaseKey, RevisionNumber) {
        let (release, number) = self.0.rsplit_once(' ').unwrap_or((&self.0, ""));
        // Both halves were validated when the key was built.
        (
            ReleaseKey(release.to_owned()),
            RevisionNumber(number.to_owned()),
        )
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RevisionKey {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        let Some((release, number)) = value.rsplit_once(' ') else {
            return Err(NameError::Invalid {
                what: "revision key",
                value,
                reason: "must be \"{release_key} {revision_number}\"",
            });
        };
        let release = ReleaseKey::new(release)?;
        let number = RevisionNumber::new(number)?;
        Ok(RevisionKey::of(&release, &number))
    }
}

impl From<RevisionKey> for String {
    fn from(value: RevisionKey) -> String {
        value.0
    }
}

impl fmt::Display for RevisionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn validate_generic_name(what: &'static str, v: &str, max: usize) -> Result<(), NameError> {
    check_common(what, v, max)?;
    check_no_traversal(what, v)?;
    check_chars(what, v, "A-Z a-z 0-9 . _ -", is_name_char)?;
    check_first_char(
        what,
        v,
        |c| c.is_ascii_alphanumeric(),
        "must start with a letter or digit",
    )
}

fn validate_owner_namespace(v: &str) -> Result<(), NameError> {
    validate_generic_name("owner namespace", v, OwnerNamespace::MAX_LEN)
}

string_newtype!(
    OwnerNamespace,
    doc = "The owner part of a distribution: npm scope (without `@`), Docker Hub namespace, Maven groupId, GitHub owner, Artifact Hub repository. Platform rules live in `key.rs`.",
    pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
    max = 255,
    validate_owner_namespace
);

fn validate_package(v: &str) -> Result<(), NameError> {
    validate_generic_name("package name", v, PackageName::MAX_LEN)
}

string_newtype!(
    PackageName,
    doc = "A package, image repository, artifactId or GitHub repository name (without its owner).",
    pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
    max = 214,
    validate_package
);

fn validate_version(v: &str) -> Result<(), NameError> {
    validate_version_like("version", v, Version::MAX_LEN)
}

string_newtype!(
    Version,
    doc = "The version (or tag) of the distribution on its platform, e.g. `1.2.0` or `1.2.0-rc1`.",
    pattern = r"^[A-Za-z0-9][A-Za-z0-9.+_-]*$",
    max = 128,
    validate_version
);

fn validate_dist_tag(v: &str) -> Result<(), NameError> {
    const WHAT: &str = "dist-tag";
    check_common(WHAT, v, DistTag::MAX_LEN)?;
    check_no_traversal(WHAT, v)?;
    check_chars(WHAT, v, "A-Z a-z 0-9 . _ -", is_name_char)?;
    // The npm CLI refuses tags that parse as a semver range (`1.4`, `v1.4`): a tag that looks
    // like a version would be ambiguous in `npm install pkg@tag`.
    let rest = v.strip_prefix(['v', 'V']).unwrap_or(v);
    if rest.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(NameError::Invalid {
            what: WHAT,
            value: v.to_owned(),
            reason: "looks like a version or range; npm refuses such tags",
        });
    }
    check_first_char(
        WHAT,
        v,
        |c| c.is_ascii_alphabetic(),
        "must start with a letter",
    )
}

string_newtype!(
    DistTag,
    doc = "An npm dist-tag or an OCI tag used for staging, e.g. `rc` or `latest`.",
    pattern = r"^[A-Za-z][A-Za-z0-9._-]*$",
    max = 64,
    validate_dist_tag
);

impl DistTag {
    pub fn latest() -> DistTag {
        DistTag("latest".to_owned())
    }
}

fn validate_idempotency_key(v: &str) -> Result<(), NameError> {
    const WHAT: &str = "idempotency key";
    check_common(WHAT, v, IdempotencyKey::MAX_LEN)?;
    check_chars(WHAT, v, "printable ASCII without spaces", |c| {
        c.is_ascii_graphic()
    })
}

string_newtype!(
    IdempotencyKey,
    doc = "A producer-chosen key: enqueuing twice with one key yields one job.",
    pattern = r"^[!-~]+$",
    max = 200,
    validate_idempotency_key
);

fn validate_artifact_path(v: &str) -> Result<(), NameError> {
    const WHAT: &str = "artifact path";
    check_common(WHAT, v, ArtifactPath::MAX_LEN)?;
    if v.starts_with('/') || v.contains('\\') {
        return Err(NameError::PathTraversal {
            what: WHAT,
            value: v.to_owned(),
        });
    }
    for component in v.split('/') {
        if component.is_empty() || component == "." || component == ".." {
            return Err(NameError::PathTraversal {
                what: WHAT,
                value: v.to_owned(),
            });
        }
    }
    Ok(())
}

string_newtype!(
    ArtifactPath,
    doc = "A file's path relative to a revision's root, `/`-separated, never leaving the root.",
    // Segments separated by `/`, none empty, `.` or `..`, without backslashes.
    pattern = r"^(?:[^/\\.][^/\\]*|\.[^/\\.][^/\\]*|\.\.[^/\\]+)(/(?:[^/\\.][^/\\]*|\.[^/\\.][^/\\]*|\.\.[^/\\]+))*$",
    max = 4096,
    validate_artifact_path
);

fn validate_asf_uid(v: &str) -> Result<(), NameError> {
    const WHAT: &str = "ASF user id";
    check_common(WHAT, v, AsfUid::MAX_LEN)?;
    check_chars(WHAT, v, "a-z 0-9 _ -", |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')
    })?;
    check_first_char(
        WHAT,
        v,
        |c| c.is_ascii_lowercase(),
        "must start with a letter",
    )
}

string_newtype!(
    AsfUid,
    doc = "The ASF user id of whoever asked for the job; ends up in `distribution.created_by`.",
    pattern = r"^[a-z][a-z0-9_-]*$",
    max = 64,
    validate_asf_uid
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_key_is_project_dash_version() {
        let p = ProjectKey::new("tooling").unwrap();
        let v = VersionKey::new("0.0.1").unwrap();
        assert_eq!(ReleaseKey::of(&p, &v).as_str(), "tooling-0.0.1");
        assert!(ReleaseKey::new("tooling-0.0.1").is_ok());
        assert!(matches!(
            ReleaseKey::new("tooling"),
            Err(NameError::Invalid { .. })
        ));
        assert!(matches!(
            ReleaseKey::new("../etc-1"),
            Err(NameError::PathTraversal { .. })
        ));
        assert!(matches!(ReleaseKey::new(""), Err(NameError::Empty { .. })));
        assert!(matches!(
            ReleaseKey::new("a-\u{7}"),
            Err(NameError::ControlCharacter { .. })
        ));
        assert!(matches!(
            ReleaseKey::new(format!("a-{}", "1".repeat(300))),
            Err(NameError::TooLong { max: 201, .. })
        ));
    }

    #[test]
    fn revision_numbers_follow_zfill5() {
        assert_eq!(RevisionNumber::from_seq(2).unwrap().as_str(), "00002");
        assert_eq!(RevisionNumber::from_seq(123456).unwrap().as_str(), "123456");
        assert_eq!(RevisionNumber::new("00042").unwrap().seq(), 42);
        for bad in ["1", "0001", "012345", "00000", "0000a", " 00001"] {
            assert!(RevisionNumber::new(bad).is_err(), "{bad:?} accepted");
        }
        let key = RevisionKey::try_from("example-0.0.1 00002".to_owned()).unwrap();
        let (release, number) = key.parts();
        assert_eq!(release.as_str(), "example-0.0.1");
        assert_eq!(number.as_str(), "00002");
        assert!(RevisionKey::try_from("example-0.0.1".to_owned()).is_err());
        assert!(RevisionKey::try_from("example-0.0.1 2".to_owned()).is_err());
    }

    #[test]
    fn names_refuse_traversal_and_odd_characters() {
        for bad in ["..", "a/b", "a\\b", ".hidden", "-x", "a b", "a\nb", "é"] {
            assert!(PackageName::new(bad).is_err(), "{bad:?} accepted");
            assert!(OwnerNamespace::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(PackageName::new("commons-lang3").is_ok());
        assert!(OwnerNamespace::new("org.apache.commons").is_ok());
        let err = PackageName::new("a b").unwrap_err().to_string();
        assert_eq!(
            err,
            "package name \"a b\" contains ' '; allowed: A-Z a-z 0-9 . _ -"
        );
    }

    #[test]
    fn dist_tags_refuse_version_lookalikes() {
        assert!(DistTag::new("rc").is_ok());
        assert!(DistTag::new("next-2").is_ok());
        for bad in ["1.4", "v1.4", "V2", "", "a/b", "^1"] {
            assert!(DistTag::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn artifact_paths_stay_inside_the_revision() {
        assert!(ArtifactPath::new("dist/apache-foo-1.0.0.tgz").is_ok());
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "a/./b",
            "a\\b",
            "a/",
        ] {
            assert!(
                matches!(ArtifactPath::new(bad), Err(NameError::PathTraversal { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn serde_goes_through_validation() {
        let ok: Version = serde_json::from_str("\"1.0.0+build.1\"").unwrap();
        assert_eq!(ok.as_str(), "1.0.0+build.1");
        let err = serde_json::from_str::<Version>("\"../1\"").unwrap_err();
        assert!(err.to_string().contains("path traversal"), "{err}");
    }
}
