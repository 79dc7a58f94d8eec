//! A real three-master Redis Cluster on loopback ports, started and stopped by a test or a
//! benchmark (Debian's redis-server in cluster mode, joined with `redis-cli --cluster
//! create`).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Redis Cluster of three masters on loopback ports, stopped (and its files deleted) when
/// dropped.
pub struct Cluster {
    _dir: tempfile::TempDir,
    nodes: Vec<Child>,
    /// The masters' ports.
    pub ports: Vec<u16>,
}

impl Cluster {
    /// `redis://127.0.0.1:<port>` of every master.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

/// A port that is free, and whose cluster bus port (+10000) is free too.
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (Debian's redis-tools) is installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn start_cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster {
        nodes: Vec::new(),
        ports: Vec::new(),
        _dir: tempfile::tempdir().unwrap(),
    };
    for _ in 0..3 {
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
            ])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .args(["--dir", dir.path().to_str().unwrap()])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/services.sh installs it)");
        cluster.nodes.push(child);
        cluster.ports.push(port);
    }
    let start = Instant::now();
    for port in &cluster.ports {
        while redis_cli(*port, &["ping"]).trim() != "PONG" {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "node {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let addrs: Vec<String> = cluster
        .ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cluster create: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    for port in &cluster.ports {
        while !redis_cli(*port, &["cluster", "info"]).contains("cluster_state:ok") {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "cluster did not become ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    cluster._dir = dir;
    cluster
}
