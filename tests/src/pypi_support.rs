//! A real pypiserver (a Python package index) per test, on a free loopback port, and
//! sdists and wheels built on the fly with the core metadata PyPI reads.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The password pypiserver's htpasswd file holds for `__token__`.
pub const TOKEN: &str = "pypi-test-token";

/// Where scripts/install-test-servers.sh installed pypiserver 2.4.2 (a virtualenv).
pub fn pypiserver_venv() -> PathBuf {
    if let Some(dir) = std::env::var_os("ATR_DIST_PYPISERVER") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").expect("HOME");
    PathBuf::from(home).join(".cache/atr-dist/pypiserver")
}

pub struct PypiServer {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for PypiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PypiServer {
    /// A pypiserver taking uploads from `__token__` with [`TOKEN`] and serving its own
    /// files only (no fallback to pypi.org).
    pub async fn start() -> PypiServer {
        let venv = pypiserver_venv();
        let bin = venv.join("bin/pypi-server");
        assert!(
            bin.exists(),
            "{} is missing: run scripts/install-test-servers.sh",
            bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let packages = dir.path().join("packages");
        std::fs::create_dir(&packages).unwrap();
        let htpasswd = dir.path().join("htpasswd");
        let made = Command::new(venv.join("bin/python"))
            .arg("-c")
            .arg(format!(
                "from passlib.apache import HtpasswdFile as H; h=H({:?}, new=True); h.set_password('__token__', {TOKEN:?}); h.save()",
                htpasswd.display().to_string()
            ))
            .status()
            .expect("run python");
        assert!(made.success(), "writing the htpasswd file failed");
        let port = crate::free_port();
        let child = Command::new(&bin)
            .args(["run", "-i", "127.0.0.1", "-p", &port.to_string(), "-P"])
            .arg(&htpasswd)
            .args(["-a", "update", "--disable-fallback"])
            .arg(&packages)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pypiserver");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let server = PypiServer { addr, child, dir };
        let client = reqwest::Client::new();
        let start = Instant::now();
        loop {
            if let Ok(r) = client.get(format!("http://{addr}/simple/")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "pypiserver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The directory the server keeps its files in.
    pub fn packages(&self) -> PathBuf {
        self.dir.path().join("packages")
    }

    /// The file names it holds, sorted.
    pub fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.packages())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    pub fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.packages().join(file)).unwrap()
    }

    /// Replaces a file's bytes behind the server's back.
    pub fn replace(&self, file: &str, bytes: &[u8]) {
        let path: &Path = &self.packages().join(file);
        std::fs::write(path, bytes).unwrap();
    }
}

/// Core metadata for `name` `version`, as setuptools writes it.
pub fn metadata(name: &str, version: &str) -> String {
    format!(
        "Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: a test package\nLicense: Apache-2.0\nClassifier: Programming Language :: Python :: 3\nClassifier: License :: OSI Approved :: Apache Software License\nRequires-Python: >=3.8\nDescription-Content-Type: text/markdown\n\n# {name}\n\nA package built by a test.\n"
    )
}

/// An sdist: `<name>-<version>/PKG-INFO` (with `metadata`) and a module holding `body`.
pub fn sdist_with(dir: &str, pkg_info: &str, body: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for (path, content) in [
        (format!("{dir}/PKG-INFO"), pkg_info.as_bytes().to_vec()),
        (format!("{dir}/src/module.py"), body.as_bytes().to_vec()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, path, content.as_slice())
            .unwrap();
    }
    let mut gz = builder.into_inner().unwrap();
    gz.flush().unwrap();
    gz.finish().unwrap()
}

pub fn sdist(name: &str, version: &str, body: &str) -> Vec<u8> {
    sdist_with(&format!("{name}-{version}"), &metadata(name, version), body)
}

/// A pure-Python wheel: the module, `<name>-<version>.dist-info/METADATA`, `WHEEL`.
pub fn wheel_with(name: &str, version: &str, metadata_text: &str, body: &str) -> Vec<u8> {
    let dist_info = format!("{}-{version}.dist-info", name.replace('-', "_"));
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (path, content) in [
        ("module.py".to_owned(), body.to_owned()),
        (format!("{dist_info}/METADATA"), metadata_text.to_owned()),
        (
            format!("{dist_info}/WHEEL"),
            "Wheel-Version: 1.0\nGenerator: atr-dist-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
                .to_owned(),
        ),
    ] {
        out.start_file(path, options).unwrap();
        out.write_all(content.as_bytes()).unwrap();
    }
    out.finish().unwrap().into_inner()
}

pub fn wheel(name: &str, version: &str, body: &str) -> Vec<u8> {
    wheel_with(name, version, &metadata(name, version), body)
}

/// The wheel's file name: `<name>-<version>-py3-none-any.whl`, `-` in the name as `_`.
pub fn wheel_name(name: &str, version: &str) -> String {
    format!("{}-{version}-py3-none-any.whl", name.replace('-', "_"))
}

pub fn sdist_name(name: &str, version: &str) -> String {
    format!("{name}-{version}.tar.gz")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where scripts/install-test-servers.sh installed devpi-server 6.20.3 (a virtualenv).
pub fn devpi_venv() -> PathBuf {
    if let Some(dir) = std::env::var_os("ATR_DIST_DEVPI") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").expect("HOME");
    PathBuf::from(home).join(".cache/atr-dist/devpi")
}

/// The user owning the test indexes, and its password (sent as Basic auth on uploads).
pub const DEVPI_USER: &str = "atr";
pub const DEVPI_PASSWORD: &str = "atrpw";

/// A real devpi-server, offline, with two non-volatile indexes of [`DEVPI_USER`]:
/// `atr/staging` and `atr/release` (no bases, so nothing comes from pypi.org).
pub struct DevpiServer {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for DevpiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl DevpiServer {
    pub async fn start() -> DevpiServer {
        let venv = devpi_venv();
        let bin = venv.join("bin/devpi-server");
        assert!(
            bin.exists(),
            "{} is missing: run scripts/install-test-servers.sh devpi",
            bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let made = Command::new(venv.join("bin/devpi-init"))
            .arg("--serverdir")
            .arg(&data)
            .args(["--no-root-pypi", "--root-passwd", "rootpw"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run devpi-init");
        assert!(made.success(), "devpi-init failed");
        let port = crate::free_port();
        let child = Command::new(&bin)
            .arg("--serverdir")
            .arg(&data)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--offline-mode",
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start devpi-server");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let server = DevpiServer {
            addr,
            child,
            _dir: dir,
        };
        let client = reqwest::Client::new();
        let start = Instant::now();
        loop {
            if let Ok(r) = client.get(format!("http://{addr}/+api")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "devpi-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let json = |c: reqwest::RequestBuilder, body: serde_json::Value| {
            c.header("accept", "application/json")
                .header("content-type", "application/json")
                .body(body.to_string())
        };
        let made = json(
            client.put(format!("http://{addr}/{DEVPI_USER}")),
            serde_json::json!({"password": DEVPI_PASSWORD}),
        )
        .send()
        .await
        .unwrap();
        assert!(made.status().is_success(), "creating the user: {made:?}");
        for index in ["staging", "release"] {
            let made = json(
                client
                    .put(format!("http://{addr}/{DEVPI_USER}/{index}"))
                    .basic_auth(DEVPI_USER, Some(DEVPI_PASSWORD)),
                serde_json::json!({"bases": [], "volatile": false}),
            )
            .send()
            .await
            .unwrap();
            assert!(made.status().is_success(), "creating {index}: {made:?}");
        }
        server
    }

    /// The upload URL of index `atr/<index>`.
    pub fn upload_url(&self, index: &str) -> String {
        format!("http://{}/{DEVPI_USER}/{index}/", self.addr)
    }

    /// The simple API root of index `atr/<index>`.
    pub fn simple_url(&self, index: &str) -> String {
        format!("http://{}/{DEVPI_USER}/{index}/+simple/", self.addr)
    }
}
