//! Secrets: platform tokens, the admin token, database passwords.
//!
//! A secret comes from the environment (`ATR_DIST_…`) or from a file named in the config,
//! never from the TOML file itself: config files get copied, committed and pasted into
//! tickets. `Secret` never prints its value, so a secret cannot reach a log by accident.

use std::fmt;
use std::path::Path;

use serde::Deserialize;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send it (an HTTP header, a URL).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads a secret file: the whole content, without a trailing newline.
    pub fn from_file(path: &Path) -> std::io::Result<Secret> {
        let text = std::fs::read_to_string(path)?;
        Ok(Secret(text.trim_end_matches(['\n', '\r']).to_owned()))
    }
}

/// Every secret this process was configured with, and the forms it is sent in, so that text
/// from outside (a platform's error body, which a careless platform may fill with the
/// request's own `Authorization` header) can be scrubbed before it is logged or recorded.
static KNOWN: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Shorter values are not scrubbed: replacing every "1234" in a message would mangle it and
/// hide nothing (config validation asks 16 characters of the admin token; platform tokens
/// are longer still).
const MIN_SCRUBBED_LEN: usize = 6;

/// Remembers `secret` for [`scrub`], with the encodings it travels in: as is (Bearer,
/// `Authorization: <key>`) and base64 (Maven's Bearer), and base64 of `<user>:<secret>` for
/// each of `basic_users` (HTTP Basic).
pub fn register(secret: &Secret, basic_users: &[&str]) {
    use base64::Engine as _;
    let value = secret.expose();
    if value.len() < MIN_SCRUBBED_LEN {
        return;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut forms = vec![value.to_owned(), b64.encode(value)];
    forms.extend(
        basic_users
            .iter()
            .map(|user| b64.encode(format!("{user}:{value}"))),
    );
    let Ok(mut known) = KNOWN.write() else {
        return;
    };
    for form in forms {
        if !known.contains(&form) {
            known.push(form);
        }
    }
    // Longest first, so that a secret containing another is replaced whole.
    known.sort_by_key(|f| std::cmp::Reverse(f.len()));
}

/// `text` with every registered secret replaced by `[redacted]`.
pub fn scrub(text: &str) -> std::borrow::Cow<'_, str> {
    let Ok(known) = KNOWN.read() else {
        return std::borrow::Cow::Borrowed(text);
    };
    let mut out = std::borrow::Cow::Borrowed(text);
    for secret in known.iter() {
        if out.contains(secret.as_str()) {
            out = std::borrow::Cow::Owned(out.replace(secret.as_str(), "[redacted]"));
        }
    }
    out
}

/// The values of `secrets`, for an API that takes plain strings (the Redis Cluster client's
/// seed nodes).
pub fn exposed(secrets: &[Secret]) -> Vec<String> {
    secrets.iter().map(|s| s.expose().to_owned()).collect()
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The environment provider parses "12345" as a number; a token is text either way.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a secret string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_secrets_are_scrubbed_in_every_form_they_travel_in() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let token = "npm_scrub_test_4d1c9e";
        register(&Secret::new(token), &["__token__"]);
        register(&Secret::new("abc"), &[]);
        let echoed = format!(
            "401: bad credentials Bearer {token}, Basic {}, base64 {}; abc stays",
            b64.encode(format!("__token__:{token}")),
            b64.encode(token)
        );
        let scrubbed = scrub(&echoed);
        assert_eq!(
            scrubbed,
            "401: bad credentials Bearer [redacted], Basic [redacted], base64 [redacted]; abc stays"
        );
        assert!(matches!(
            scrub("nothing secret"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn never_prints_its_value() {
        let s = Secret::new("npm_abcdef");
        assert_eq!(format!("{s:?} {s}"), "Secret([redacted]) [redacted]");
        assert_eq!(s.expose(), "npm_abcdef");
    }
}
