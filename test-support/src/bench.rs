//! What the benchmarks share: the Node.js side that runs the TypeScript adapters, medians,
//! and settings from the environment.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::node_binary;

/// The TypeScript side of a benchmark: Node running a script in a directory that pins the npm
/// adapter in a `package-lock.json`.
#[derive(Debug)]
pub struct NodeBench {
    bin: PathBuf,
    dir: PathBuf,
}

impl NodeBench {
    /// Node for `dir`: `$CHAT_STATE_BENCH_NODE` if set, else [`node_binary`]. Installs the
    /// directory's packages with `npm ci` (under that Node) unless `node_modules/<package>` is
    /// there already.
    pub fn prepare(dir: &Path, package: &str) -> Self {
        let bin = std::env::var_os("CHAT_STATE_BENCH_NODE")
            .map(PathBuf::from)
            .unwrap_or_else(node_binary);
        let installed = dir.join("node_modules").join(package).join("package.json");
        if !installed.is_file() {
            eprintln!(
                "installing the TypeScript side: npm ci in {}",
                dir.display()
            );
            let mut npm = Command::new("npm");
            npm.args(["ci", "--no-audit", "--no-fund"]).current_dir(dir);
            // npm runs under the chosen node when that is a path.
            if let Some(parent) = bin.parent().filter(|p| !p.as_os_str().is_empty()) {
                let path = std::env::var_os("PATH").unwrap_or_default();
                let mut paths = vec![parent.to_path_buf()];
                paths.extend(std::env::split_paths(&path));
                npm.env("PATH", std::env::join_paths(paths).expect("PATH"));
            }
            let status = npm.status().expect("run npm (is it on PATH?)");
            assert!(status.success(), "npm ci failed: {status}");
        }
        Self {
            bin,
            dir: dir.to_path_buf(),
        }
    }

    /// The node binary used.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Runs `node <args>` in the directory and returns the last line it printed; panics with
    /// node's stderr if it fails.
    pub fn last_line(&self, args: &[String]) -> String {
        let out = Command::new(&self.bin)
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.bin.display()));
        assert!(
            out.status.success(),
            "node {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().last().unwrap_or_default().to_owned()
    }
}

/// The median of `xs` (the mean of the middle two for an even count; NaN if empty).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The environment variable `name` parsed as `T`, or `default` if unset or unparsable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
