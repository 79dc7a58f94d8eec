//! Distribution platforms, with ATR's `DistributionPlatform` table carried over exactly.
//!
//! ATR stores the *member name* (`MAVEN`, `NPM_SCOPED`) in its database and converts with
//! `DistributionPlatform[name]`, so our serialised form is the member name too. The values
//! (`name`, `gh_slug`, the URL templates, the owner-namespace rules) are copied from
//! `atr/models/sql.py`; `GITHUB` is commented out there and `HEX` does not exist yet.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// A third-party platform a release can be distributed to. Stored (in our database as in
/// ATR's) as the member name.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
    EnumIter,
    DeriveActiveEnum,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum Platform {
    #[sea_orm(string_value = "ARTIFACT_HUB")]
    ArtifactHub,
    #[sea_orm(string_value = "DOCKER_HUB")]
    DockerHub,
    #[sea_orm(string_value = "MAVEN")]
    Maven,
    #[sea_orm(string_value = "NPM")]
    Npm,
    #[sea_orm(string_value = "NPM_SCOPED")]
    NpmScoped,
    #[sea_orm(string_value = "PYPI")]
    Pypi,
    #[sea_orm(string_value = "GITHUB")]
    Github,
    #[sea_orm(string_value = "HEX")]
    Hex,
}

/// How a staged distribution becomes the production one (apache/tooling-trusted-releases#751).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PromotionMechanism {
    /// Move an npm dist-tag (`latest`) to the staged version.
    DistTag,
    /// PUT the staged manifest's exact bytes under the release tag.
    Retag,
    /// PATCH the GitHub release from prerelease to release.
    ApiPatch,
    /// Release the closed Nexus staging repository to Maven Central.
    NexusRelease,
    /// No server-side promotion exists: upload the same files to production.
    Reupload,
    /// Nothing to promote: the platform indexes the project by itself; verify only.
    None,
}

/// Every field of ATR's `DistributionPlatformValue`, plus the two fields proposed in #751.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PlatformValue {
    pub name: &'static str,
    pub gh_slug: &'static str,
    pub template_url: &'static str,
    pub template_staging_url: Option<&'static str>,
    pub requires_owner_namespace: bool,
    pub default_owner_namespace: Option<&'static str>,
    /// True where the platform can turn the *same staged object* into the production one
    /// without sending the bytes again. Reupload and verify-only platforms cannot.
    pub supports_promotion: bool,
    pub promotion_mechanism: PromotionMechanism,
}

impl Platform {
    pub const ALL: [Platform; 8] = [
        Platform::ArtifactHub,
        Platform::DockerHub,
        Platform::Maven,
        Platform::Npm,
        Platform::NpmScoped,
        Platform::Pypi,
        Platform::Github,
        Platform::Hex,
    ];

    /// The member name ATR stores in its database.
    pub fn member_name(self) -> &'static str {
        match self {
            Platform::ArtifactHub => "ARTIFACT_HUB",
            Platform::DockerHub => "DOCKER_HUB",
            Platform::Maven => "MAVEN",
            Platform::Npm => "NPM",
            Platform::NpmScoped => "NPM_SCOPED",
            Platform::Pypi => "PYPI",
            Platform::Github => "GITHUB",
            Platform::Hex => "HEX",
        }
    }

    pub fn value(self) -> PlatformValue {
        match self {
            Platform::ArtifactHub => PlatformValue {
                name: "Artifact Hub",
                gh_slug: "artifacthub",
                template_url: "https://artifacthub.io/api/v1/packages/helm/{owner_namespace}/{package}/{version}",
                template_staging_url: Some(
                    "https://staging.artifacthub.io/api/v1/packages/helm/{owner_namespace}/{package}/{version}",
                ),
                requires_owner_namespace: true,
                default_owner_namespace: None,
                supports_promotion: false,
                promotion_mechanism: PromotionMechanism::None,
            },
            Platform::DockerHub => PlatformValue {
                name: "Docker Hub",
                gh_slug: "dockerhub",
                template_url: "https://hub.docker.com/v2/namespaces/{owner_namespace}/repositories/{package}/tags/{version}",
                template_staging_url: None,
                requires_owner_namespace: false,
                default_owner_namespace: Some("library"),
                supports_promotion: true,
                promotion_mechanism: PromotionMechanism::Retag,
            },
            Platform::Maven => PlatformValue {
                name: "Maven Central",
                gh_slug: "mavencentral",
                template_url: "https://repo1.maven.org/maven2/{owner_namespace}/{package}/maven-metadata.xml",
                template_staging_url: Some(
                    "https://repository.apache.org/content/groups/staging/{owner_namespace}/{package}/maven-metadata.xml",
                ),
                requires_owner_namespace: true,
                default_owner_namespace: None,
                supports_promotion: true,
                promotion_mechanism: PromotionMechanism::NexusRelease,
            },
            Platform::Npm => PlatformValue {
                name: "npm",
                gh_slug: "npm",
                template_url: "https://registry.npmjs.org/{package}",
                template_staging_url: None,
                requires_owner_namespace: false,
                default_owner_namespace: None,
                supports_promotion: true,
                promotion_mechanism: PromotionMechanism::DistTag,
            },
            Platform::NpmScoped => PlatformValue {
                name: "npm (scoped)",
                gh_slug: "npm",
                template_url: "https://registry.npmjs.org/@{owner_namespace}/{package}",
                template_staging_url: None,
                requires_owner_namespace: true,
                default_owner_namespace: None,
                supports_promotion: true,
                promotion_mechanism: PromotionMechanism::DistTag,
            },
            Platform::Pypi => PlatformValue {
                name: "PyPI",
                gh_slug: "pypi",
                template_url: "https://pypi.org/pypi/{package}/{version}/json",
                template_staging_url: Some("https://test.pypi.org/pypi/{package}/{version}/json"),
                requires_owner_namespace: false,
                default_owner_namespace: None,
                supports_promotion: false,
                promotion_mechanism: PromotionMechanism::Reupload,
            },
            Platform::Github => PlatformValue {
                name: "GitHub",
                gh_slug: "github",
                template_url: "https://api.github.com/repos/{owner_namespace}/{package}/releases/tags/v{version}",
                template_staging_url: Some(
                    "https://api.github.com/repos/{owner_namespace}/{package}/releases",
                ),
                requires_owner_namespace: true,
                default_owner_namespace: None,
                supports_promotion: true,
                promotion_mechanism: PromotionMechanism::ApiPatch,
            },
            Platform::Hex => PlatformValue {
                name: "Hex",
                gh_slug: "hex",
                template_url: "https://hex.pm/api/packages/{package}/releases/{version}",
                template_staging_url: None,
                requires_owner_namespace: false,
                default_owner_namespace: None,
                supports_promotion: false,
                promotion_mechanism: PromotionMechanism::Reupload,
            },
        }
    }

    /// Whether the platform's URL has a place for an owner namespace at all. Where it does
    /// not (unscoped npm, PyPI, Hex), a namespace in a job is a mistake, not something to drop.
    pub fn accepts_owner_namespace(self) -> bool {
        self.value().template_url.contains("{owner_namespace}")
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.member_name())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "unknown platform {0:?}; expected one of ARTIFACT_HUB, DOCKER_HUB, MAVEN, NPM, NPM_SCOPED, PYPI, GITHUB, HEX"
)]
pub struct UnknownPlatform(pub String);

impl FromStr for Platform {
    type Err = UnknownPlatform;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::ALL
            .into_iter()
            .find(|p| p.member_name() == s)
            .ok_or_else(|| UnknownPlatform(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole table, pinned: ATR's values for its six members, then GITHUB (commented out
    /// in ATR) and HEX (ours). A change here is a change to the ATR contract.
    #[test]
    fn platform_table_matches_atr() {
        type Row = (
            &'static str,
            &'static str,
            &'static str,
            &'static str,
            Option<&'static str>,
            bool,
            Option<&'static str>,
            bool,
            PromotionMechanism,
        );
        let expected: [Row; 8] = [
            (
                "ARTIFACT_HUB",
                "Artifact Hub",
                "artifacthub",
                "https://artifacthub.io/api/v1/packages/helm/{owner_namespace}/{package}/{version}",
                Some(
                    "https://staging.artifacthub.io/api/v1/packages/helm/{owner_namespace}/{package}/{version}",
                ),
                true,
                None,
                false,
                PromotionMechanism::None,
            ),
            (
                "DOCKER_HUB",
                "Docker Hub",
                "dockerhub",
                "https://hub.docker.com/v2/namespaces/{owner_namespace}/repositories/{package}/tags/{version}",
                None,
                false,
                Some("library"),
                true,
                PromotionMechanism::Retag,
            ),
            (
                "MAVEN",
                "Maven Central",
                "mavencentral",
                "https://repo1.maven.org/maven2/{owner_namespace}/{package}/maven-metadata.xml",
                Some(
                    "https://repository.apache.org/content/groups/staging/{owner_namespace}/{package}/maven-metadata.xml",
                ),
                true,
                None,
                true,
                PromotionMechanism::NexusRelease,
            ),
            (
                "NPM",
                "npm",
                "npm",
                "https://registry.npmjs.org/{package}",
                None,
                false,
                None,
                true,
                PromotionMechanism::DistTag,
            ),
            (
                "NPM_SCOPED",
                "npm (scoped)",
                "npm",
                "https://registry.npmjs.org/@{owner_namespace}/{package}",
                None,
                true,
                None,
                true,
                PromotionMechanism::DistTag,
            ),
            (
                "PYPI",
                "PyPI",
                "pypi",
                "https://pypi.org/pypi/{package}/{version}/json",
                Some("https://test.pypi.org/pypi/{package}/{version}/json"),
                false,
                None,
                false,
                PromotionMechanism::Reupload,
            ),
            (
                "GITHUB",
                "GitHub",
                "github",
                "https://api.github.com/repos/{owner_namespace}/{package}/releases/tags/v{version}",
                Some("https://api.github.com/repos/{owner_namespace}/{package}/releases"),
                true,
                None,
                true,
                PromotionMechanism::ApiPatch,
            ),
            (
                "HEX",
                "Hex",
                "hex",
                "https://hex.pm/api/packages/{package}/releases/{version}",
                None,
                false,
                None,
                false,
                PromotionMechanism::Reupload,
            ),
        ];
        let actual: Vec<Row> = Platform::ALL
            .iter()
            .map(|p| {
                let v = p.value();
                (
                    p.member_name(),
                    v.name,
                    v.gh_slug,
                    v.template_url,
                    v.template_staging_url,
                    v.requires_owner_namespace,
                    v.default_owner_namespace,
                    v.supports_promotion,
                    v.promotion_mechanism,
                )
            })
            .collect();
        assert_eq!(actual, expected);
    }

    #[test]
    fn serialises_to_member_names() {
        for p in Platform::ALL {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.member_name()));
            assert_eq!(p.member_name().parse::<Platform>().unwrap(), p);
            assert_eq!(p.to_value(), p.member_name());
        }
        assert_eq!(
            serde_json::to_string(&PromotionMechanism::NexusRelease).unwrap(),
            "\"nexus-release\""
        );
        assert!("ARTIFACTHUB".parse::<Platform>().is_err());
    }
}
