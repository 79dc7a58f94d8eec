//! Which certificate authorities platform calls trust: an HTTPS server on 127.0.0.1 whose
//! certificate is signed by an authority this test makes, as an intercepting proxy's is.
//! Refused while nothing names the authority; trusted through `tls.ca_file`, and through
//! `SSL_CERT_FILE` (in a child process, since the trust store is loaded once per process).
//!
//! A test binary of its own: `tls::init` sets the trust store of the whole process.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use atr_dist::config::Config;
use atr_dist::platform::http::PlatformHttp;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::task::JoinHandle;
use url::Url;

/// Set in the child process that `ssl_cert_file_is_trusted` starts: the server's URL.
const CHILD_URL: &str = "ATR_DIST_TEST_TLS_URL";

/// A certificate authority, and an HTTPS server on 127.0.0.1 with a certificate it signed.
struct Intercepted {
    url: Url,
    ca_pem: String,
    server: JoinHandle<()>,
}

impl Drop for Intercepted {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn intercepted() -> Intercepted {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "atr-dist test intercepting proxy CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            while connections.try_join_next().is_some() {}
            let acceptor = acceptor.clone();
            connections.spawn(async move {
                // A client that does not trust the certificate ends the handshake here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"trusted"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Intercepted {
        url: Url::parse(&format!("https://{addr}/probe")).unwrap(),
        ca_pem: ca_cert.pem(),
        server,
    }
}

/// A GET through the client every platform adapter uses.
async fn platform_get(url: &Url) -> Result<String, String> {
    let http = PlatformHttp::new(&[url], None).map_err(|e| e.to_string())?;
    let resp = http
        .send("probe", |c| c.get(url.clone()))
        .await
        .map_err(|e| e.to_string())?;
    assert!(resp.status().is_success(), "{}", resp.status());
    resp.text().await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn platform_calls_trust_tls_ca_file_and_refuse_an_unknown_authority() {
    let server = intercepted().await;
    // Before `tls::init`, and with nothing naming the authority: refused, as reported.
    let err = platform_get(&server.url).await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("proxy-ca.pem");
    std::fs::write(&ca_file, &server.ca_pem).unwrap();
    let mut config = Config::default();
    config.tls.ca_file = Some(ca_file);
    atr_dist::tls::init(&config).unwrap();
    assert_eq!(platform_get(&server.url).await.unwrap(), "trusted");
}

#[tokio::test]
async fn ssl_cert_file_is_trusted() {
    // In the child: no `init`, so only the platform's store, which SSL_CERT_FILE replaces.
    if let Ok(url) = std::env::var(CHILD_URL) {
        let url = Url::parse(&url).unwrap();
        assert_eq!(platform_get(&url).await.unwrap(), "trusted");
        return;
    }
    let server = intercepted().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("bundle.pem");
    std::fs::write(&ca_file, &server.ca_pem).unwrap();
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "ssl_cert_file_is_trusted", "--test-threads=1"])
        .env(CHILD_URL, server.url.as_str())
        .env("SSL_CERT_FILE", &ca_file)
        .env_remove("SSL_CERT_DIR")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .expect("the child test finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the child did not trust the authority in SSL_CERT_FILE:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
