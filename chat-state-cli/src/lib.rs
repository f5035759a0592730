#![doc = include_str!("../README.md")]
//!
//! As a library, the commands are callable programmatically (tests, other tools): [`run`]
//! takes parsed arguments, and [`simulate`], [`bench`](mod@bench), [`conformance`] and [`inspect`]
//! expose each command's workload and report.

use std::process::ExitCode;
use std::sync::Arc;

use chat_state::StateAdapter;
use clap::{Parser, Subcommand};

pub mod bench;
pub mod conformance;
pub mod inspect;
pub mod simulate;

use chat_state::{ConnectOptions, connect_with};

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "chat-state",
    version,
    about = "chat-state: run, benchmark, check and inspect state backends"
)]
pub struct Cli {
    /// Log a `tracing` event per adapter call (backend, operation, duration, outcome) to
    /// stderr. `RUST_LOG` refines the filter (default `chat_state=debug`).
    #[arg(long, global = true)]
    pub trace: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// A fleet of bot instances handling a stream of chat messages the way the Chat SDK does;
    /// reports exactly-once handling and fails if any message was handled twice or lost.
    Simulate(simulate::SimulateArgs),
    /// Standard workloads (lock cycle, contended lock, cache, subscriptions, message cycle).
    Bench(bench::BenchArgs),
    /// Runs the conformance suite against a URL and prints a pass/fail table.
    Conformance(conformance::ConformanceArgs),
    /// Shows what a backend holds for an id: subscription, lock, cache value, list, queue.
    Inspect(inspect::InspectArgs),
    /// Releases whatever lock is held on an id, regardless of its token (for a stuck lock).
    ForceRelease(inspect::ForceReleaseArgs),
}

/// Parses the process arguments, runs the command, and maps the outcome to an exit code:
/// 0 on success, 1 when the command ran but found a problem (a message handled twice or
/// lost, a failed conformance case), 2 on an error (bad URL, backend unreachable).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.trace {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("chat_state=debug"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            // Colour codes only on a terminal: piped logs stay greppable.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("chat-state: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("chat-state: {e}");
            let mut source = std::error::Error::source(&*e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::from(2)
        }
    }
}

/// Error type of the CLI layer.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;

/// Runs a parsed command. `Ok(false)` means it ran and found a problem.
pub async fn run(cli: Cli) -> Result<bool, CliError> {
    let trace = cli.trace;
    match cli.command {
        Command::Simulate(args) => simulate::command(args, trace).await,
        Command::Bench(args) => bench::command(args, trace).await,
        Command::Conformance(args) => conformance::command(args, trace).await,
        Command::Inspect(args) => inspect::inspect_command(args, trace).await,
        Command::ForceRelease(args) => inspect::force_release_command(args, trace).await,
    }
}

/// Where commands without `--url` keep their data: an embedded SQLite file in a fresh
/// temporary directory (removed when the returned guard drops), or `memory://` when the
/// `sqlite` feature is off. Needs no setup either way.
pub fn default_url() -> Result<(String, Option<tempfile::TempDir>), CliError> {
    #[cfg(feature = "sqlite")]
    {
        let dir = tempfile::Builder::new()
            .prefix("chat-state-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory for the SQLite file: {e}"))?;
        let url = format!("sqlite://{}", dir.path().join("state.db").display());
        Ok((url, Some(dir)))
    }
    #[cfg(not(feature = "sqlite"))]
    {
        Ok(("memory://".to_string(), None))
    }
}

/// Connects with the CLI's options, saying which URL failed.
pub(crate) async fn open(url: &str, trace: bool) -> Result<Arc<dyn StateAdapter>, CliError> {
    connect_with(url, &ConnectOptions::new().trace(trace))
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}").into())
}

/// The value at the `q` quantile (0..=1) of sorted samples; 0 when there are none.
pub(crate) fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// A short random id so runs sharing one file or server never see each other's keys.
pub(crate) fn run_id() -> String {
    format!("{:08x}", fastrand::u32(..))
}
