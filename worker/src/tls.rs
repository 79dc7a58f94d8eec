//! Which certificate authorities atr-dist's HTTPS calls (platforms, ATR) trust.
//!
//! Besides the Mozilla roots built into the client, the platform's trust store, as curl and
//! OpenSSL read it: the system's CA bundle, or only `SSL_CERT_FILE` / `SSL_CERT_DIR` when
//! either is set; and the PEM bundle named by `tls.ca_file`. A machine whose HTTPS passes
//! through an intercepting proxy has that proxy's authority in one of those, and without them
//! every call failed with "invalid peer certificate: UnknownIssuer".
//!
//! Loading the store reads and parses a few hundred kilobytes, so it is done once:
//! `init` at start (the first call wins), and every client is built by `client_builder`.
//! Before `init`, clients trust the platform's store without `tls.ca_file`.

use std::path::Path;
use std::sync::OnceLock;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::config::{Config, ConfigError};

/// The certificates added to every client's built-in roots.
pub struct Roots {
    certs: Vec<reqwest::Certificate>,
    /// How many came from the platform's store, and how many from `tls.ca_file`.
    platform: usize,
    extra: usize,
}

/// Set by `init`.
static CONFIGURED: OnceLock<Roots> = OnceLock::new();
/// The platform's store alone, loaded on first use when `init` was not called (tests, tools).
static PLATFORM_ONLY: OnceLock<Roots> = OnceLock::new();

fn ca_file_error(reason: String) -> ConfigError {
    ConfigError::Invalid {
        key: "tls.ca_file".to_owned(),
        reason,
    }
}

/// Whether rustls accepts `der` as a trust anchor: a certificate it cannot parse would make
/// the whole client fail to build.
fn usable(der: &CertificateDer<'static>) -> bool {
    RootCertStore::empty().add(der.clone()).is_ok()
}

impl Roots {
    /// The platform's store, then the certificates of `ca_file`, every one of which (the
    /// operator chose them) must be usable.
    pub fn load(ca_file: Option<&Path>) -> Result<Roots, ConfigError> {
        let mut roots = Roots::platform();
        if let Some(path) = ca_file {
            let extra = read_ca_file(path)?;
            roots.extra = extra.len();
            roots.certs.extend(extra);
        }
        Ok(roots)
    }

    /// The platform's store. Certificates in it that cannot serve are skipped (stores carry
    /// some, and curl skips them too), as are parts that cannot be read, with a warning.
    fn platform() -> Roots {
        let native = rustls_native_certs::load_native_certs();
        for error in &native.errors {
            tracing::warn!(%error, "part of the system's certificate store could not be read");
        }
        let mut certs = Vec::new();
        let mut skipped = 0usize;
        for der in native.certs {
            match (usable(&der), reqwest::Certificate::from_der(der.as_ref())) {
                (true, Ok(cert)) => certs.push(cert),
                (false, _) | (true, Err(_)) => skipped += 1,
            }
        }
        if skipped > 0 {
            tracing::debug!(
                skipped,
                "unusable certificates in the system's store skipped"
            );
        }
        Roots {
            platform: certs.len(),
            certs,
            extra: 0,
        }
    }
}

fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, ConfigError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ca_file_error(format!("cannot read {}: {e}", path.display())))?;
    let mut certs = Vec::new();
    for (n, der) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
        let der = der.map_err(|e| {
            ca_file_error(format!(
                "{}: certificate {} is not valid PEM: {e}",
                path.display(),
                n + 1
            ))
        })?;
        if !usable(&der) {
            return Err(ca_file_error(format!(
                "{}: certificate {} cannot serve as a certificate authority",
                path.display(),
                n + 1
            )));
        }
        let cert = reqwest::Certificate::from_der(der.as_ref()).map_err(|e| {
            ca_file_error(format!("{}: certificate {}: {e}", path.display(), n + 1))
        })?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(ca_file_error(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

/// Loads the trust store for this process from `config` (`tls.ca_file`). The first call
/// wins: later ones change nothing. A `tls.ca_file` that cannot be read or holds no usable
/// certificate is a configuration error.
pub fn init(config: &Config) -> Result<(), ConfigError> {
    if CONFIGURED.get().is_some() {
        return Ok(());
    }
    let roots = Roots::load(config.tls.ca_file.as_deref())?;
    tracing::debug!(
        platform = roots.platform,
        ca_file = roots.extra,
        "certificate authorities trusted besides the built-in ones"
    );
    let _ = CONFIGURED.set(roots);
    Ok(())
}

/// A client builder for HTTPS calls that trusts the built-in roots, the platform's store
/// and `tls.ca_file` (as `init` loaded them).
pub fn client_builder() -> reqwest::ClientBuilder {
    let roots = CONFIGURED
        .get()
        .unwrap_or_else(|| PLATFORM_ONLY.get_or_init(Roots::platform));
    roots
        .certs
        .iter()
        .fold(reqwest::Client::builder().use_rustls_tls(), |b, cert| {
            b.add_root_certificate(cert.clone())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_cannot_serve_is_a_configuration_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = Roots::load(Some(&missing)).err().unwrap().to_string();
        assert!(
            err.starts_with("config key `tls.ca_file`: cannot read"),
            "{err}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = Roots::load(Some(&empty)).err().unwrap().to_string();
        assert!(err.contains("holds no PEM certificate"), "{err}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = Roots::load(Some(&garbage)).err().unwrap().to_string();
        assert!(
            err.contains("certificate 1 cannot serve as a certificate authority"),
            "{err}"
        );
    }
}
