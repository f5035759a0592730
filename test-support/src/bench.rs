//! What the benchmarks share: the Node.js side that runs the TypeScript adapters, the
//! concurrent cycle driver and the id walk of the throughput benches, medians, and settings
//! from the environment.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

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

/// How many thread ids the throughput benches walk (10,000 Slack-style ids; the TypeScript
/// sides' `bench.mjs` use the same number).
pub const IDS: usize = 10_000;

/// Task `w` of `c`, iteration `i`: a scattered walk over the task's own slice of the [`IDS`]
/// ids (7919 is prime, so the walk visits every id of the slice). Same formula in the
/// `bench.mjs` scripts.
pub fn id_index(w: usize, c: usize, i: usize) -> usize {
    let per = IDS / c;
    w + c * ((i * 7919) % per)
}

/// `total` cycles split over `c` tasks; `f(k)` runs one cycle on id index `k` (from
/// [`id_index`]). Panics if a cycle fails: a benchmark of failing calls measures nothing.
pub async fn run_cycles<F, Fut, E>(c: usize, total: usize, f: Arc<F>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Debug + 'static,
{
    let tasks: Vec<_> = (0..c)
        .map(|w| {
            let mine = total / c + usize::from(w < total % c);
            let f = f.clone();
            tokio::spawn(async move {
                for i in 0..mine {
                    f(id_index(w, c, i)).await.expect("cycle failed");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("benchmark task");
    }
}

/// The environment variable `name` as a comma-separated list (items trimmed), if set.
pub fn env_list(name: &str) -> Option<Vec<String>> {
    std::env::var(name)
        .ok()
        .map(|s| s.split(',').map(|w| w.trim().to_owned()).collect())
}
