//! `chat-state conformance`: the shared suite against any URL, as an operator's check.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use chat_state::StateAdapter;
use chat_state_conformance::{Failure, Harness, Report};

use super::CliError;
use chat_state::{ConnectOptions, connect_with};

/// `chat-state conformance` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ConformanceArgs {
    /// Backend URL. Each case gets its own key prefix (SQLite, Redis, Postgres) or a fresh store
    /// (`memory://`), so the cases never see each other's data. Default: an embedded SQLite
    /// file in a fresh temporary directory.
    #[arg(long, env = "CHAT_STATE_URL")]
    pub url: Option<String>,
    /// Run only the cases whose name contains this text.
    #[arg(long)]
    pub filter: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the conformance suite against `url`, each case on a fresh, isolated adapter.
///
/// Durable backends (an SQLite file, Redis, Postgres) also get the reopen hook, so the suite checks
/// that data survives a reconnect.
pub async fn run(url: &str, filter: Option<&str>, trace: bool) -> Report {
    run_with_id(url, filter, trace, &super::run_id()).await
}

/// The key prefix shared by every case of run `run` (each case appends `-<n>`).
fn run_prefix(run: &str) -> String {
    format!("chat-state-conformance-{run}")
}

async fn run_with_id(url: &str, filter: Option<&str>, trace: bool, run: &str) -> Report {
    let counter = Arc::new(AtomicUsize::new(0));
    let shared = chat_state::Target::parse(url)
        .map(|t| t.is_shared())
        .unwrap_or(false);
    let started = Instant::now();
    let factory = || {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let options = ConnectOptions::new()
            .trace(trace)
            .prefix(format!("{}-{n}", run_prefix(run)));
        let url = url.to_string();
        async move {
            let adapter = connect_with(&url, &options)
                .await
                .map_err(|e| Failure::new(format!("cannot connect to {url}: {e}")))?;
            let harness = Harness::with_real_time(adapter);
            Ok(if shared {
                harness.with_reopen(move || {
                    let (url, options) = (url.clone(), options.clone());
                    async move { connect_with(&url, &options).await }
                })
            } else {
                harness
            })
        }
    };
    chat_state_conformance::run_all(
        factory,
        |name| filter.is_none_or(|f| name.contains(f)),
        || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    )
    .await
}

/// Renders a report as a pass/fail table with a closing `N passed, N failed, N skipped` line.
pub fn render_table(report: &Report) -> String {
    let width = report
        .cases
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = format!("backend: {}\n", report.backend);
    out.push_str(&format!(
        "{:<width$}  {:<7} {:>7}\n",
        "case", "result", "ms"
    ));
    for case in &report.cases {
        let outcome = match case.outcome.as_str() {
            "passed" => "pass",
            "failed" => "FAIL",
            "skipped" => "skip",
            other => other,
        };
        out.push_str(&format!(
            "{:<width$}  {:<7} {:>7}",
            case.name, outcome, case.millis
        ));
        if !case.message.is_empty() {
            out.push_str("  ");
            out.push_str(&case.message.replace('\n', " "));
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "{} passed, {} failed, {} skipped\n",
        report.passed(),
        report.failed(),
        report.skipped()
    ));
    out
}

pub(crate) async fn command(args: ConformanceArgs, trace: bool) -> Result<bool, CliError> {
    let (url, _dir) = match &args.url {
        Some(url) => (url.clone(), None),
        None => super::default_url()?,
    };
    // Fail fast, with the real error, when the URL is wrong or the backend is down, instead
    // of one "factory failed" line per case.
    let probe: Arc<dyn StateAdapter> = super::open(&url, false).await?;
    let _ = probe.close().await;
    let run = super::run_id();
    let report = run_with_id(&url, args.filter.as_deref(), trace, &run).await;
    // Leave nothing behind in a live deployment (fence counters never expire by design).
    // One prefix per case, numbered from 0 by the factory.
    let prefixes = (0..=report.cases.len()).map(|n| format!("{}-{n}", run_prefix(&run)));
    match delete_prefixes(&url, prefixes).await {
        Ok(Some(n)) => eprintln!("removed {n} test keys ({}-*)", run_prefix(&run)),
        Ok(None) => {}
        Err(e) => eprintln!("warning: {e}"),
    }
    if report.cases.is_empty() {
        return Err(format!("no conformance case matches {:?}", args.filter).into());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_table(&report));
    }
    Ok(report.failed() == 0)
}

/// Deletes the data of each prefix in `prefixes` from a single-node Redis or a Postgres
/// database, through the backend's own `delete_all_keys`, so the run leaves no test keys (the
/// fence counters, which never expire by design, would otherwise stay forever) in the
/// operator's deployment. `None` when the URL names no such backend (SQLite runs on the
/// operator's file too, but its per-case prefixes are few rows; memory keeps nothing).
#[allow(unused_variables, unused_mut, unreachable_code)] // what is deleted depends on the backend features
async fn delete_prefixes(
    url: &str,
    prefixes: impl IntoIterator<Item = String>,
) -> chat_state::Result<Option<u64>> {
    let mut removed = 0;
    match chat_state::Target::parse(url)? {
        #[cfg(feature = "redis")]
        chat_state::Target::Redis {
            nodes,
            cluster: false,
            ..
        } if nodes.len() == 1 => {
            for prefix in prefixes {
                let state = chat_state::redis::RedisBackend::builder(nodes[0].as_str())
                    .key_prefix(prefix)
                    .connect()
                    .await?;
                removed += state.backend().delete_all_keys().await?;
                state.close().await?;
            }
        }
        #[cfg(feature = "postgres")]
        chat_state::Target::Postgres {
            url,
            connect_timeout,
            ..
        } => {
            let mut builder = chat_state::postgres::PostgresBackend::builder(url.as_str())
                .sweep_interval(None)
                .schema_mode(chat_state::postgres::SchemaMode::VerifyOnly);
            if let Some(timeout) = connect_timeout {
                builder = builder.connect_timeout(timeout);
            }
            let first = builder.connect().await?;
            // One pool for every prefix: a connection per prefix would cost a handshake each.
            let pool = first.backend().pool().clone();
            for prefix in prefixes {
                let state = chat_state::postgres::PostgresBackend::with_pool(pool.clone())
                    .key_prefix(prefix)
                    .sweep_interval(None)
                    .schema_mode(chat_state::postgres::SchemaMode::VerifyOnly)
                    .connect()
                    .await?;
                removed += state.backend().delete_all_keys().await?;
            }
            first.close().await?;
        }
        _ => return Ok(None),
    }
    Ok(Some(removed))
}
