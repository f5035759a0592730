//! Real `redis-server` processes for the tests and the benchmark: each on a free loopback
//! port with its own temporary directory, stopped (by pid) when the guard is dropped, even
//! when the test fails.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a server may take to answer `PING` after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// One `redis-server` process, killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    aof: bool,
    cluster: bool,
    extra: Vec<String>,
    dir: TempDir,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    listener.local_addr().expect("local address").port()
}

impl RedisServer {
    /// A server without persistence (`--appendonly no`).
    pub fn start() -> Self {
        Self::start_with(false, false, &[])
    }

    /// A server with AOF (`--appendonly yes --appendfsync always`), for restart tests.
    pub fn start_with_aof() -> Self {
        Self::start_with(true, false, &[])
    }

    /// A cluster-enabled node (not yet part of a cluster).
    pub fn start_cluster_node() -> Self {
        Self::start_with(true, true, &[])
    }

    /// A server without persistence and with extra command-line arguments (which override
    /// the defaults, e.g. `["--requirepass", "pw"]`).
    pub fn start_with_args(extra: &[&str]) -> Self {
        Self::spawn_new(false, false, extra.iter().map(|s| s.to_string()).collect())
    }

    fn start_with(aof: bool, cluster: bool, extra: &[&str]) -> Self {
        Self::spawn_new(aof, cluster, extra.iter().map(|s| s.to_string()).collect())
    }

    fn spawn_new(aof: bool, cluster: bool, extra: Vec<String>) -> Self {
        // A port picked this way can be taken by someone else before redis binds it: retry.
        let mut last_error = String::new();
        for _ in 0..5 {
            let mut server = Self {
                child: None,
                port: free_port(),
                aof,
                cluster,
                extra: extra.clone(),
                dir: tempfile::tempdir().expect("create a temporary directory"),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("could not start redis-server: {last_error}");
    }

    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            if self.aof { "yes" } else { "no" },
            "--appendfsync",
            "always",
            "--maxmemory-policy",
            "noeviction",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(self.dir.path().display().to_string());
        if self.cluster {
            for a in [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ] {
                args.push(a.into());
            }
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log =
            std::fs::File::create(self.dir.path().join("stdout.log")).map_err(|e| e.to_string())?;
        let child = Command::new("redis-server")
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("cannot run redis-server ({e}); install it (apt-get install redis-server)")
            })?;
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                let log =
                    std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default();
                return Err(format!("redis-server exited with {status}: {log}"));
            }
            if ping(self.port) {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                self.kill();
                return Err("redis-server did not answer PING in time".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9` (no shutdown, no final fsync), and waits for the process to go.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (recovering from the AOF, if any).
    pub fn restart(&mut self) {
        self.kill();
        let started = Instant::now();
        // The port was just released by the killed process; binding it again can briefly fail.
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if started.elapsed() > READY_TIMEOUT => panic!("restart failed: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// `kill -STOP`: the process stops answering but keeps its sockets.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// `kill -CONT`.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().expect("server is running");
        let status = Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {pid} failed");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A stopped process still dies on SIGKILL; resume it first anyway so nothing lingers.
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(pid.to_string())
                .status();
        }
        self.kill();
    }
}

/// Whether something on `port` answers `PING` with `+PONG` (not `-LOADING`).
pub fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(stream.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
}

/// A 3-master Redis Cluster on loopback (no replicas), torn down when dropped.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled nodes, assigns the slots with `redis-cli --cluster create`
    /// and waits for `cluster_state:ok` on every node.
    pub fn start() -> Self {
        Self::start_with(0)
    }

    /// Three masters with one replica each (replicas sync without delay, or a replica killed
    /// early never syncs).
    pub fn start_with_replicas() -> Self {
        let cluster = Self::start_with(1);
        let started = Instant::now();
        for node in &cluster.nodes {
            loop {
                let info = redis_cli(node.port(), &["info", "replication"]);
                let synced = info.contains("role:master") && info.contains("connected_slaves:1")
                    || info.contains("master_link_status:up");
                if synced {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "replicas never synced"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        cluster
    }

    fn start_with(replicas: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| RedisServer::start_with(true, true, &["--repl-diskless-sync-delay", "0"]))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli (package redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let started = Instant::now();
        for node in &nodes {
            while !cluster_ok(node.port()) {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "cluster never became ok"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Self { nodes }
    }

    /// The node URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

fn cluster_ok(port: u16) -> bool {
    redis_cli(port, &["cluster", "info"]).contains("cluster_state:ok")
}

/// Runs `redis-cli -p <port> <args>` and returns its output ("" if it cannot run).
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

/// Retries `f` until it succeeds, for at most `within`: every failure on the way must be
/// retryable (a fault must never surface as a permanent error).
pub async fn until_ok<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = chat_state_core::Result<T>>,
{
    let started = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                assert!(
                    e.is_retryable(),
                    "{what}: non-retryable error while recovering: {e}"
                );
                assert!(started.elapsed() < within, "{what}: never recovered: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
