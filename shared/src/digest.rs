//! Content digests in the three spellings atr-dist meets: `sha256:<hex>` (OCI, GitHub),
//! `sha512-<base64>` (npm's Subresource Integrity) and `sha3-256:<hex>` (ATR's file manifest).

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

crate::names::string_schema!(
    Digest,
    "A content digest: sha256:<hex>, sha3-256:<hex> or sha512-<base64> (npm SRI).",
    r"^(sha256:[0-9a-f]{64}|sha3-256:[0-9a-f]{64}|sha512-[A-Za-z0-9+/]{86}==)$",
    71,
    95
);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DigestAlgorithm {
    Sha256,
    Sha512,
    Sha3_256,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error(
        "digest {0:?} has no known algorithm prefix; expected sha256:<hex>, sha512-<base64> or sha3-256:<hex>"
    )]
    UnknownAlgorithm(String),
    #[error("digest {value:?}: {reason}")]
    Malformed { value: String, reason: &'static str },
}

impl Digest {
    /// Builds a digest from raw hash bytes, in the spelling its algorithm uses.
    pub fn from_bytes(algorithm: DigestAlgorithm, bytes: &[u8]) -> Result<Digest, DigestError> {
        let text = match algorithm {
            DigestAlgorithm::Sha256 => format!("sha256:{}", hex::encode(bytes)),
            DigestAlgorithm::Sha512 => format!("sha512-{}", STANDARD.encode(bytes)),
            DigestAlgorithm::Sha3_256 => format!("sha3-256:{}", hex::encode(bytes)),
        };
        Digest::parse(text)
    }

    pub fn parse(value: impl Into<String>) -> Result<Digest, DigestError> {
        let value = value.into();
        let (algorithm, bytes) = decode(&value)?;
        let expected = match algorithm {
            DigestAlgorithm::Sha256 | DigestAlgorithm::Sha3_256 => 32,
            DigestAlgorithm::Sha512 => 64,
        };
        if bytes.len() != expected {
            return Err(DigestError::Malformed {
                value,
                reason: "wrong length for its algorithm",
            });
        }
        Ok(Digest(value))
    }

    pub fn algorithm(&self) -> DigestAlgorithm {
        match decode(&self.0) {
            Ok((algorithm, _)) => algorithm,
            // Unreachable: the value was decoded when built.
            Err(_) => DigestAlgorithm::Sha256,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        decode(&self.0).map(|(_, b)| b).unwrap_or_default()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn decode(value: &str) -> Result<(DigestAlgorithm, Vec<u8>), DigestError> {
    let malformed = |reason| DigestError::Malformed {
        value: value.to_owned(),
        reason,
    };
    if let Some(hex_part) = value.strip_prefix("sha256:") {
        return hex_lower(hex_part)
            .map(|b| (DigestAlgorithm::Sha256, b))
            .ok_or_else(|| malformed("not lower-case hex"));
    }
    if let Some(hex_part) = value.strip_prefix("sha3-256:") {
        return hex_lower(hex_part)
            .map(|b| (DigestAlgorithm::Sha3_256, b))
            .ok_or_else(|| malformed("not lower-case hex"));
    }
    if let Some(b64) = value.strip_prefix("sha512-") {
        return STANDARD
            .decode(b64)
            .map(|b| (DigestAlgorithm::Sha512, b))
            .map_err(|_| malformed("not standard base64"));
    }
    Err(DigestError::UnknownAlgorithm(value.to_owned()))
}

fn hex_lower(s: &str) -> Option<Vec<u8>> {
    if s.chars().any(|c| c.is_ascii_uppercase()) {
        return None;
    }
    hex::decode(s).ok()
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Digest::parse(value)
    }
}

impl From<Digest> for String {
    fn from(value: Digest) -> String {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_each_spelling() {
        let sha256 = format!("sha256:{}", "ab".repeat(32));
        let sha3 = format!("sha3-256:{}", "cd".repeat(32));
        let sri = format!("sha512-{}", STANDARD.encode([7u8; 64]));
        for (text, algorithm) in [
            (sha256, DigestAlgorithm::Sha256),
            (sha3, DigestAlgorithm::Sha3_256),
            (sri, DigestAlgorithm::Sha512),
        ] {
            let d = Digest::parse(text.clone()).unwrap();
            assert_eq!(d.algorithm(), algorithm);
            assert_eq!(d.to_string(), text);
            assert_eq!(Digest::from_bytes(algorithm, &d.bytes()).unwrap(), d);
        }
    }

    #[test]
    fn refuses_malformed_digests() {
        for bad in [
            "md5:abcd".to_owned(),
            format!("sha256:{}", "AB".repeat(32)),
            format!("sha256:{}", "ab".repeat(31)),
            "sha512-not*base64".to_owned(),
            format!("sha512-{}", STANDARD.encode([1u8; 32])),
            String::new(),
        ] {
            assert!(Digest::parse(bad.clone()).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            Digest::parse("md5:00").unwrap_err().to_string(),
            "digest \"md5:00\" has no known algorithm prefix; expected sha256:<hex>, sha512-<base64> or sha3-256:<hex>"
        );
    }
}
