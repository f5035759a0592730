//! A `redis-server` on the far side of a real network link: its own network namespace,
//! joined to the test's by a veth pair, with faults made by `iptables` rules on the server's
//! side (this kernel has no `sch_netem`; the `iptables-legacy` binary from Debian works).
//!
//! Needs root, `ip` (iproute2) and `iptables-legacy`. Each instance creates its own namespace,
//! veth pair and /30 subnet in `10.251.0.0/16`, uses no other address, and deletes all of them
//! when dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{READY_TIMEOUT, redis_server_binary};

/// Set to `1` (CI does) to make a missing namespace capability fail the test instead of
/// skipping it.
pub const REQUIRE_ENV: &str = "CHAT_STATE_REQUIRE_SERVICES";

/// The port redis-server listens on inside its namespace (the namespace is the test's own, so
/// a fixed port cannot clash).
const PORT: u16 = 6379;

/// Whether namespaces, veth pairs and `iptables-legacy` can be used here; `Err` says what is
/// missing. Checked once per process.
pub fn available() -> Result<(), String> {
    static CHECKED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    CHECKED.get_or_init(check).clone()
}

fn check() -> Result<(), String> {
    for (binary, package) in [("ip", "iproute2"), ("iptables-legacy", "iptables")] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {binary}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!("`{binary}` is missing (apt-get install {package})"));
        }
    }
    let probe = format!("csprobe{}", std::process::id());
    run("ip", &["netns", "add", &probe])
        .map_err(|e| format!("cannot create a network namespace (root needed): {e}"))?;
    let _ = run("ip", &["netns", "del", &probe]);
    Ok(())
}

/// Skips (returns `false` after a loud message) or panics, per [`REQUIRE_ENV`], when
/// [`available`] fails; `true` when the test can run.
pub fn require() -> bool {
    match available() {
        Ok(()) => true,
        Err(why) if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") => {
            panic!("network fault tests cannot run: {why} ({REQUIRE_ENV}=1)")
        }
        Err(why) => {
            eprintln!(
                "\n!!! SKIPPED: network fault test needs namespaces and iptables: {why}. \
                 Run as root with iproute2 and iptables installed ({REQUIRE_ENV}=1 makes \
                 this a failure).\n"
            );
            false
        }
    }
}

/// A redis-server in its own network namespace, reached over a veth pair.
#[derive(Debug)]
pub struct NetnsRedis {
    namespace: String,
    host_link: String,
    /// The server's end of the veth pair, inside the namespace: the fault rules match it only.
    peer_link: String,
    server_ip: String,
    /// A second link into the namespace that the fault rules never touch, for a client that
    /// must keep reaching the server during a fault (the "other side" of a partition).
    second_link: String,
    second_ip: String,
    /// The servers: one, or the nodes of a cluster.
    children: Vec<Child>,
    ports: Vec<u16>,
    _dir: TempDir,
}

/// Ports of the cluster nodes [`NetnsRedis::start_cluster`] starts.
const CLUSTER_PORTS: [u16; 3] = [7001, 7002, 7003];

/// Distinguishes the instances of one test process.
static NEXT: AtomicU32 = AtomicU32::new(0);

impl NetnsRedis {
    /// Creates the namespace and links and starts one redis-server inside; panics with the
    /// failing command if that cannot be done (call [`require`] first).
    pub fn start() -> Self {
        Self::start_nodes(&[PORT])
    }

    /// The same with a Redis Cluster of three masters inside (ports 7001-7003, slots assigned,
    /// `cluster_state:ok`); the nodes announce the faulted link's address, so clients reach
    /// every node through it, and their cluster bus runs over the namespace's loopback, which
    /// no fault touches.
    pub fn start_cluster() -> Self {
        let me = Self::start_nodes(&CLUSTER_PORTS);
        let nodes: Vec<String> = me
            .ports
            .iter()
            .map(|p| format!("{}:{p}", me.server_ip))
            .collect();
        let mut args = vec![
            "netns",
            "exec",
            &me.namespace,
            "redis-cli",
            "--cluster",
            "create",
        ];
        args.extend(nodes.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        if let Err(e) = run("ip", &args) {
            panic!("redis-cli --cluster create: {e}");
        }
        let started = Instant::now();
        for port in &me.ports {
            let port = port.to_string();
            while !me
                .cli_on(&port, &["cluster", "info"])
                .contains("cluster_state:ok")
            {
                assert!(started.elapsed() < READY_TIMEOUT, "cluster never became ok");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        me
    }

    fn start_nodes(ports: &[u16]) -> Self {
        let (namespace, host_link, peer_link, n) = loop {
            // 16,384 /30 subnets; the pid spreads parallel test processes apart.
            let n = (std::process::id().wrapping_mul(64) + NEXT.fetch_add(1, Ordering::Relaxed))
                % 16_384;
            let names = (format!("csns{n}"), format!("csh{n}"), format!("csp{n}"));
            let taken = run("ip", &["-o", "link", "show", &names.1]).is_ok()
                || run("ip", &["netns", "pids", &names.0]).is_ok();
            if !taken {
                break (names.0, names.1, names.2, n);
            }
        };
        let (third, fourth) = (n / 64, (n % 64) * 4);
        let host_ip = format!("10.251.{third}.{}", fourth + 1);
        let server_ip = format!("10.251.{third}.{}", fourth + 2);
        let (second_link, second_peer) = (format!("csq{n}"), format!("csr{n}"));
        let second_host_ip = format!("10.252.{third}.{}", fourth + 1);
        let second_ip = format!("10.252.{third}.{}", fourth + 2);
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let mut me = Self {
            namespace: namespace.clone(),
            host_link: host_link.clone(),
            peer_link: peer_link.clone(),
            server_ip: server_ip.clone(),
            second_link: second_link.clone(),
            second_ip: second_ip.clone(),
            children: Vec::new(),
            ports: ports.to_vec(),
            _dir: dir,
        };
        let ns = namespace.as_str();
        let setup: Vec<Vec<String>> = vec![
            strings(&["ip", "netns", "add", ns]),
            strings(&[
                "ip", "link", "add", &host_link, "type", "veth", "peer", "name", &peer_link,
            ]),
            strings(&["ip", "link", "set", &peer_link, "netns", ns]),
            strings(&[
                "ip",
                "addr",
                "add",
                &format!("{host_ip}/30"),
                "dev",
                &host_link,
            ]),
            strings(&["ip", "link", "set", &host_link, "up"]),
            in_ns(
                ns,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{server_ip}/30"),
                    "dev",
                    &peer_link,
                ],
            ),
            in_ns(ns, &["ip", "link", "set", &peer_link, "up"]),
            in_ns(ns, &["ip", "link", "set", "lo", "up"]),
            strings(&[
                "ip",
                "link",
                "add",
                &second_link,
                "type",
                "veth",
                "peer",
                "name",
                &second_peer,
            ]),
            strings(&["ip", "link", "set", &second_peer, "netns", ns]),
            strings(&[
                "ip",
                "addr",
                "add",
                &format!("{second_host_ip}/30"),
                "dev",
                &second_link,
            ]),
            strings(&["ip", "link", "set", &second_link, "up"]),
            in_ns(
                ns,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{second_ip}/30"),
                    "dev",
                    &second_peer,
                ],
            ),
            in_ns(ns, &["ip", "link", "set", &second_peer, "up"]),
        ];
        for cmd in setup {
            let args: Vec<&str> = cmd[1..].iter().map(String::as_str).collect();
            if let Err(e) = run(&cmd[0], &args) {
                panic!("network setup failed: {e}");
            }
        }
        for &port in ports {
            let dir = me._dir.path().join(port.to_string());
            std::fs::create_dir_all(&dir).expect("create a node directory");
            let port_arg = port.to_string();
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns, &redis_server_binary()])
                .args(["--bind", &server_ip, &second_ip, "--port", &port_arg])
                .args(["--protected-mode", "no"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args(["--maxmemory-policy", "noeviction", "--loglevel", "warning"])
                .arg("--dir")
                .arg(&dir);
            if ports.len() > 1 {
                cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]);
            }
            let child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server in the namespace");
            me.children.push(child);
            let started = Instant::now();
            while !server_ip
                .parse()
                .is_ok_and(|ip: std::net::IpAddr| crate::ping_addr((ip, port).into()))
            {
                assert!(
                    started.elapsed() < READY_TIMEOUT,
                    "redis-server in {ns} did not answer"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        me
    }

    /// The cluster's node URLs over the faulted link ([`NetnsRedis::start_cluster`]).
    pub fn cluster_urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://{}:{p}", self.server_ip))
            .collect()
    }

    /// `redis://<server address>:6379`, over the link the faults are made on.
    pub fn url(&self) -> String {
        format!("redis://{}:{PORT}", self.server_ip)
    }

    /// The server's address on the link the faults are made on.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(
            self.server_ip.parse().expect("an IPv4 address we built"),
            PORT,
        )
    }

    /// The same server over the second link, which no fault touches.
    pub fn unaffected_url(&self) -> String {
        format!("redis://{}:{PORT}", self.second_ip)
    }

    /// Drops every packet in both directions: a silent partition (no RST, no ICMP).
    pub fn partition(&self) {
        self.drop_requests();
        self.drop_replies();
    }

    /// Drops what reaches the server (every node): it never sees the requests (half-open
    /// link).
    pub fn drop_requests(&self) {
        self.iptables(&[
            "-A",
            "INPUT",
            "-i",
            &self.peer_link,
            "-p",
            "tcp",
            "-j",
            "DROP",
        ]);
    }

    /// Drops what the server sends: it runs the commands, the replies are lost (half-open).
    pub fn drop_replies(&self) {
        self.iptables(&[
            "-A",
            "OUTPUT",
            "-o",
            &self.peer_link,
            "-p",
            "tcp",
            "-j",
            "DROP",
        ]);
    }

    /// Drops `percent` % of packets in each direction, at random.
    pub fn loss(&self, percent: u32) {
        let p = format!("{:.4}", f64::from(percent) / 100.0);
        for (chain, side) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            self.iptables(&[
                "-A",
                chain,
                side,
                &self.peer_link,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ]);
        }
    }

    /// Removes every fault rule.
    pub fn heal(&self) {
        self.iptables(&["-F", "INPUT"]);
        self.iptables(&["-F", "OUTPUT"]);
    }

    /// Takes the server's end of the link down or brings it back up. Never the test's end:
    /// that would remove the test's route to the server, and its packets would follow the
    /// default route off this machine; with the far end down the route stays (`linkdown`)
    /// and the packets go nowhere.
    pub fn set_link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        let args = [
            "netns",
            "exec",
            &self.namespace,
            "ip",
            "link",
            "set",
            &self.peer_link,
            state,
        ];
        if let Err(e) = run("ip", &args) {
            panic!("ip link set {state}: {e}");
        }
    }

    /// Runs `redis-cli` against the (first) server from inside its namespace, over its
    /// loopback: the fault rules match only the veth, so this sees the server's state during a
    /// fault.
    pub fn cli(&self, args: &[&str]) -> String {
        self.cli_on(&self.ports[0].to_string(), args)
    }

    fn cli_on(&self, port: &str, args: &[&str]) -> String {
        let ns = self.namespace.as_str();
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "redis-cli",
                "-h",
                &self.server_ip,
                "-p",
                port,
            ])
            .args(args)
            .output()
            .expect("run redis-cli in the namespace");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn iptables(&self, rule: &[&str]) {
        let mut args = vec!["netns", "exec", &self.namespace, "iptables-legacy", "-w"];
        args.extend_from_slice(rule);
        if let Err(e) = run("ip", &args) {
            panic!("iptables {rule:?}: {e}");
        }
    }
}

impl Drop for NetnsRedis {
    fn drop(&mut self) {
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deleting one end of a veth pair deletes the other; the namespace goes last.
        let _ = run("ip", &["link", "del", &self.host_link]);
        let _ = run("ip", &["link", "del", &self.second_link]);
        let _ = run("ip", &["netns", "del", &self.namespace]);
    }
}

/// Whether `ip`:`port` answers `PING`.
fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

fn in_ns(ns: &str, args: &[&str]) -> Vec<String> {
    let mut all = strings(&["ip", "netns", "exec", ns]);
    all.extend(strings(args));
    all
}

/// Runs a command; `Err` with its stderr when it fails.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A TCP proxy on 127.0.0.1 that forwards to `target` and delays every byte by `one_way` in
/// each direction: added latency without `sch_netem`, for benches through a [`NetnsRedis`]
/// link. Bytes keep their order; chunks are forwarded as they were read, each once its delay
/// has passed. Runs on its own threads until dropped (connections end with their peers).
#[derive(Debug)]
pub struct DelayProxy {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl DelayProxy {
    /// Starts the proxy; it accepts connections until dropped.
    pub fn start(target: std::net::SocketAddr, one_way: Duration) -> Self {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind the delay proxy");
        let port = listener.local_addr().expect("proxy address").port();
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        if let Ok(server) = TcpStream::connect(target) {
                            let _ = client.set_nodelay(true);
                            let _ = server.set_nodelay(true);
                            forward(&client, &server, one_way);
                            forward(&server, &client, one_way);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { port, stop }
    }

    /// The port it listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read: a reader thread stamps the
/// chunks, a writer thread sends each when due.
fn forward(from: &TcpStream, to: &TcpStream, delay: Duration) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}
