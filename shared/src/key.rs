//! `DistributionKey`: ATR's primary key for a distribution, with each platform's name rules.

use std::fmt;

use schemars::JsonSchema;
use serde::Serialize;

use crate::names::{NameError, OwnerNamespace, PackageName, ReleaseKey, Version};
use crate::platform::Platform;

/// (release_key, platform, owner_namespace, package, version), as `pk_distribution` in ATR.
/// An empty owner namespace is stored as `""`, as ATR does.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, JsonSchema)]
pub struct DistributionKey {
    pub release_key: ReleaseKey,
    pub platform: Platform,
    /// Empty where the platform takes no owner namespace (unscoped npm, PyPI, Hex).
    #[schemars(regex(pattern = r"^([A-Za-z0-9][A-Za-z0-9._-]*)?$"), length(max = 255))]
    pub owner_namespace: String,
    pub package: PackageName,
    pub version: Version,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{platform} requires an owner namespace ({hint})")]
    NamespaceRequired {
        platform: Platform,
        hint: &'static str,
    },
    #[error("{platform} takes no owner namespace, but {namespace:?} was given{hint}")]
    NamespaceNotAccepted {
        platform: Platform,
        namespace: String,
        hint: &'static str,
    },
    #[error("{what} {value:?} is not valid on {platform}: {reason}")]
    PlatformRule {
        platform: Platform,
        what: &'static str,
        value: String,
        reason: &'static str,
    },
}

impl DistributionKey {
    /// Validates the parts against the platform's rules. An empty namespace takes the
    /// platform's default (`library` on Docker Hub), as ATR's forms do.
    pub fn new(
        release_key: ReleaseKey,
        platform: Platform,
        owner_namespace: &str,
        package: PackageName,
        version: Version,
    ) -> Result<DistributionKey, KeyError> {
        let value = platform.value();
        let namespace = match (owner_namespace, value.default_owner_namespace) {
            ("", Some(default)) => default,
            (given, _) => given,
        };
        if namespace.is_empty() && value.requires_owner_namespace {
            return Err(KeyError::NamespaceRequired {
                platform,
                hint: namespace_hint(platform),
            });
        }
        if !namespace.is_empty() && !platform.accepts_owner_namespace() {
            return Err(KeyError::NamespaceNotAccepted {
                platform,
                namespace: namespace.to_owned(),
                hint: match platform {
                    Platform::Npm => "; use NPM_SCOPED for @scope/package",
                    Platform::ArtifactHub
                    | Platform::DockerHub
                    | Platform::Maven
                    | Platform::NpmScoped
                    | Platform::Pypi
                    | Platform::Github
                    | Platform::Hex => "",
                },
            });
        }
        if !namespace.is_empty() {
            OwnerNamespace::new(namespace)?;
        }
        check_platform_rules(platform, namespace, &package, &version)?;
        Ok(DistributionKey {
            release_key,
            platform,
            owner_namespace: namespace.to_owned(),
            package,
            version,
        })
    }

    /// The platform's own name for the package: `@scope/pkg`, `namespace/repo`, `group:artifact`.
    pub fn display_name(&self) -> String {
        let ns = &self.owner_namespace;
        let pkg = &self.package;
        match self.platform {
            Platform::NpmScoped => format!("@{ns}/{pkg}"),
            Platform::Maven => format!("{ns}:{pkg}"),
            Platform::DockerHub | Platform::Github | Platform::ArtifactHub => format!("{ns}/{pkg}"),
            Platform::Npm | Platform::Pypi | Platform::Hex => pkg.to_string(),
        }
    }

    /// A stable one-string form, used for the per-key lock and log fields.
    pub fn lock_id(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}",
            self.release_key, self.platform, self.owner_namespace, self.package, self.version
        )
    }
}

impl fmt::Display for DistributionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}@{}",
            self.release_key,
            self.platform,
            self.display_name(),
            self.version
        )
    }
}

fn namespace_hint(platform: Platform) -> &'static str {
    match platform {
        Platform::ArtifactHub => "the Artifact Hub repository name",
        Platform::Maven => "the Maven groupId, e.g. org.apache.commons",
        Platform::NpmScoped => "the npm scope without '@', e.g. apache",
        Platform::Github => "the GitHub owner, e.g. apache",
        Platform::DockerHub | Platform::Npm | Platform::Pypi | Platform::Hex => "",
    }
}

fn rule(
    platform: Platform,
    what: &'static str,
    value: &str,
    reason: &'static str,
) -> Result<(), KeyError> {
    Err(KeyError::PlatformRule {
        platform,
        what,
        value: value.to_owned(),
        reason,
    })
}

fn check_platform_rules(
    platform: Platform,
    namespace: &str,
    package: &PackageName,
    version: &Version,
) -> Result<(), KeyError> {
    let pkg = package.as_str();
    let ver = version.as_str();
    match platform {
        Platform::Npm | Platform::NpmScoped => {
            if pkg.chars().any(|c| c.is_ascii_uppercase()) {
                return rule(platform, "package", pkg, "npm names are lower-case");
            }
            if namespace.chars().any(|c| c.is_ascii_uppercase()) {
                return rule(platform, "scope", namespace, "npm scopes are lower-case");
            }
            // npm counts the whole `@scope/name` against its 214-character limit.
            if namespace.len() + pkg.len() + 2 > 214 {
                return rule(
                    platform,
                    "package",
                    pkg,
                    "npm names are at most 214 characters",
                );
            }
            Ok(())
        }
        Platform::DockerHub => {
            if pkg.chars().any(|c| c.is_ascii_uppercase()) {
                return rule(
                    platform,
                    "repository",
                    pkg,
                    "repository names are lower-case",
                );
            }
            if namespace.chars().any(|c| c.is_ascii_uppercase()) {
                return rule(
                    platform,
                    "namespace",
                    namespace,
                    "namespaces are lower-case",
                );
            }
            // OCI tags: [A-Za-z0-9_][A-Za-z0-9._-]{0,127}; '+' is not allowed.
            if ver.contains('+') {
                return rule(platform, "tag", ver, "OCI tags may not contain '+'");
            }
            Ok(())
        }
        Platform::Pypi => {
            if !pkg.ends_with(|c: char| c.is_ascii_alphanumeric()) {
                return rule(
                    platform,
                    "project",
                    pkg,
                    "PyPI names must start and end with a letter or digit",
                );
            }
            Ok(())
        }
        Platform::Hex => {
            let ok = pkg.starts_with(|c: char| c.is_ascii_lowercase())
                && pkg
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                return rule(platform, "package", pkg, "Hex names match [a-z][a-z0-9_]*");
            }
            Ok(())
        }
        Platform::Maven => {
            if namespace.split('.').any(str::is_empty) {
                return rule(
                    platform,
                    "groupId",
                    namespace,
                    "groupId parts are separated by single dots",
                );
            }
            Ok(())
        }
        Platform::Github => {
            let ok = namespace.len() <= 39
                && namespace
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !ok {
                return rule(
                    platform,
                    "owner",
                    namespace,
                    "GitHub owners are at most 39 letters, digits and hyphens",
                );
            }
            Ok(())
        }
        Platform::ArtifactHub => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(
        platform: Platform,
        ns: &str,
        pkg: &str,
        ver: &str,
    ) -> Result<DistributionKey, KeyError> {
        DistributionKey::new(
            ReleaseKey::new("example-1.0.0").unwrap(),
            platform,
            ns,
            PackageName::new(pkg).unwrap(),
            Version::new(ver).unwrap(),
        )
    }

    #[test]
    fn default_namespace_fills_in() {
        let k = key(Platform::DockerHub, "", "httpd", "2.4").unwrap();
        assert_eq!(k.owner_namespace, "library");
        assert_eq!(k.display_name(), "library/httpd");
    }

    #[test]
    fn required_and_forbidden_namespaces() {
        assert!(matches!(
            key(Platform::Maven, "", "commons-lang3", "3.0"),
            Err(KeyError::NamespaceRequired { .. })
        ));
        let err = key(Platform::Npm, "apache", "arrow", "1.0.0").unwrap_err();
        assert_eq!(
            err.to_string(),
            "NPM takes no owner namespace, but \"apache\" was given; use NPM_SCOPED for @scope/package"
        );
        assert!(matches!(
            key(Platform::Pypi, "x", "pkg", "1.0"),
            Err(KeyError::NamespaceNotAccepted { .. })
        ));
        let k = key(Platform::NpmScoped, "apache", "arrow", "1.0.0").unwrap();
        assert_eq!(k.display_name(), "@apache/arrow");
    }

    #[test]
    fn platform_name_rules() {
        assert!(key(Platform::Npm, "", "Arrow", "1.0.0").is_err());
        assert!(key(Platform::DockerHub, "apache", "httpd", "1.0+b").is_err());
        assert!(key(Platform::Hex, "", "plug_crypto", "1.0.0").is_ok());
        assert!(key(Platform::Hex, "", "Plug", "1.0.0").is_err());
        assert!(key(Platform::Maven, "org..apache", "x", "1").is_err());
        assert!(
            key(
                Platform::Maven,
                "org.apache.commons",
                "commons-lang3",
                "3.0"
            )
            .is_ok()
        );
        assert!(key(Platform::Github, "apache.org", "x", "1").is_err());
        assert!(key(Platform::Pypi, "", "apache-airflow_", "1").is_err());
    }
}
