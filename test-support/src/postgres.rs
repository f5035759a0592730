//! A real PostgreSQL for tests and benches: `initdb` into a temporary directory (as the system user
//! `chatstatepg` when the tests run as root, which PostgreSQL refuses to run as), a free
//! loopback port, `pg_ctl start`; stopped on drop, and by a watchdog if the test process
//! dies. One server per test binary ([`shared`]) serves every case, each under its own key
//! prefix; fault tests start their own ([`PgServer::start`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::free_port;

/// The password of the `postgres` superuser in every test cluster.
pub const PASSWORD: &str = "chat-state-test";
const OS_USER: &str = "chatstatepg";

fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        // On PATH (e.g. /usr/local/bin/initdb).
        let out = Command::new("sh")
            .args(["-c", "command -v initdb"])
            .output()
            .expect("run sh");
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            !path.is_empty(),
            "initdb not found: install PostgreSQL (.ci/install)"
        );
        Path::new(&path).parent().expect("bin dir").to_path_buf()
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command for a PostgreSQL binary, run as the unprivileged user when we are root.
fn pg_command(bin: &str) -> Command {
    let path = bin_dir().join(bin);
    if is_root() {
        let exists = Command::new("id")
            .arg(OS_USER)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !exists {
            // Racing test binaries may both try; the loser's failure is harmless.
            let _ = Command::new("useradd").args(["-r", OS_USER]).status();
        }
        let mut c = Command::new("runuser");
        c.args(["-u", OS_USER, "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

/// One PostgreSQL server process.
pub struct PgServer {
    dir: tempfile::TempDir,
    /// Whether it accepts TLS ([`start_tls`](Self::start_tls)).
    tls: bool,
    /// The loopback port it listens on.
    pub port: u16,
}

impl PgServer {
    /// Initializes and starts a fresh cluster (password auth over TCP).
    pub fn start() -> Self {
        Self::init(false)
    }

    /// [`start`](Self::start), also accepting TLS (`ssl=on`) with a certificate for
    /// `127.0.0.1` and `localhost` signed by [`ca_cert`](Self::ca_cert); plain connections
    /// are still accepted, so `sslmode=disable` works too.
    pub fn start_tls() -> Self {
        Self::init(true)
    }

    fn init(tls: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("chat-state-pg")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).expect("write pwfile");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", OS_USER])
                .arg(dir.path())
                .status()
                .expect("chown");
            // The user may not exist yet: pg_command creates it; retry after.
            if !status.success() {
                let _ = pg_command("initdb").arg("--version").status();
                Command::new("chown")
                    .args(["-R", OS_USER])
                    .arg(dir.path())
                    .status()
                    .expect("chown");
            }
        }
        let out = pg_command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["--no-sync", "-E", "UTF8", "--locale=C"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if tls {
            let certs = dir.path().join("certs");
            std::fs::create_dir(&certs).expect("create the certificate directory");
            crate::make_certs(&certs);
            // PostgreSQL refuses a key that others can read, or that it does not own.
            std::fs::set_permissions(
                certs.join("server.key"),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .expect("chmod server.key");
            if is_root() {
                let status = Command::new("chown")
                    .args(["-R", OS_USER])
                    .arg(&certs)
                    .status()
                    .expect("chown");
                assert!(status.success(), "chown of the certificates failed");
            }
        }
        let server = Self {
            dir,
            tls,
            port: free_port(),
        };
        server.pg_ctl_start();
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `pg_ctl start` on the same data directory and port (after a stop or a kill).
    pub fn pg_ctl_start(&self) {
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=400",
            self.port,
            self.dir.path().display()
        );
        if self.tls {
            let certs = self.dir.path().join("certs");
            opts.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                certs.join("server.crt").display(),
                certs.join("server.key").display()
            ));
        }
        let out = pg_command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-t", "60", "-o", &opts, "-l"])
            .arg(self.dir.path().join("log"))
            .arg("start")
            .output()
            .expect("run pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.watchdog();
    }

    /// Stops the server when this test process is gone (statics are never dropped).
    fn watchdog(&self) {
        let script = format!(
            "while [ -d /proc/{pid} ]; do sleep 1; done; \
             {pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            pg_ctl = bin_dir().join("pg_ctl").display(),
            data = self.data().display(),
            dir = self.dir.path().display(),
        );
        let mut c = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", OS_USER, "--", "sh", "-c", &script]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &script]);
            c
        };
        let _ = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    /// The CA certificate (PEM) that signed the server's certificate, for `sslrootcert=`
    /// (only after [`start_tls`](Self::start_tls)).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("certs").join("ca.crt")
    }

    /// The postmaster's pid.
    pub fn pid(&self) -> i32 {
        let text = std::fs::read_to_string(self.data().join("postmaster.pid")).expect("pid file");
        text.lines()
            .next()
            .expect("pid line")
            .trim()
            .parse()
            .expect("pid")
    }

    /// The pids of the server's processes: the postmaster and its children (the backends
    /// serving connections), so a signal reaches the process running a statement.
    pub fn process_ids(&self) -> Vec<String> {
        let main = self.pid().to_string();
        let out = Command::new("ps")
            .args(["-o", "pid=", "--ppid", &main])
            .output()
            .expect("ps");
        let mut pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        pids.push(main);
        pids
    }

    /// A URL for `database` as the superuser.
    pub fn url_for(&self, database: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// A URL for the default database.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// Runs `sql` with `psql` as the superuser over the server's Unix socket (trusted, so no
    /// password) in `database`; returns its unaligned, tuples-only output. Panics if psql
    /// fails.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = pg_command("psql")
            .arg("-h")
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `pg_ctl stop -m immediate`.
    pub fn stop(&self) {
        let _ = pg_command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The server every case of this test binary shares.
pub fn shared() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(PgServer::start)
}

/// A fresh, unique key prefix.
pub fn unique_prefix() -> String {
    format!(
        "t{}",
        &chat_state_core::new_lock_token().expect("random prefix")[..16]
    )
}

/// Sends `sig` (e.g. `-STOP`, `-CONT`, `-KILL`) to `pids` (from [`PgServer::process_ids`]).
pub fn signal(pids: &[String], sig: &str) {
    Command::new("kill")
        .arg(sig)
        .args(pids)
        .status()
        .expect("kill");
}
