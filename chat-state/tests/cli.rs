//! The CLI's commands as library calls, against real backends: the simulation must report
//! zero double-handled and zero lost messages at 16 instances on every backend.

use chat_state::cli::simulate::{SimReport, SimulateArgs, simulate};
use chat_state::connect;

fn args() -> SimulateArgs {
    SimulateArgs {
        instances: 16,
        messages: 600,
        threads: 24,
        ..SimulateArgs::default()
    }
}

fn assert_clean(report: &SimReport) {
    println!("{}", report.render());
    assert_eq!(report.handled_twice, 0, "handled twice");
    assert_eq!(report.lost, 0, "lost");
    assert_eq!(report.lost_updates, 0, "lost thread-state updates");
    assert_eq!(
        report.handled_once + report.conflicts_dropped as usize,
        report.messages,
        "every message handled once or dropped by queue policy"
    );
    // Every delivery beyond the first of a message is a duplicate or retry, and dedupe must
    // have caught each one.
    assert_eq!(
        report.deliveries - report.messages as u64,
        report.duplicates_suppressed
    );
    assert!(
        report.duplicates_suppressed > 0,
        "the stream had redeliveries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simulate_memory_16_instances() {
    let state = connect("memory://").await.expect("memory connects");
    let report = simulate(state, &args()).await.expect("simulation runs");
    assert_eq!(report.backend, "memory");
    assert_clean(&report);
    assert!(
        report.conflicts_queued > 0,
        "16 instances on 24 threads conflict"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simulate_reports_redeliveries_only_when_there_are_some() {
    let state = connect("memory://").await.expect("memory connects");
    let args = SimulateArgs {
        duplicates: 0.0,
        retries: 0.0,
        messages: 200,
        ..args()
    };
    let report = simulate(state, &args).await.expect("simulation runs");
    assert_eq!(report.deliveries, 200);
    assert_eq!(report.duplicates_suppressed, 0);
    assert_eq!(report.handled_once, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simulate_rejects_bad_arguments() {
    let state = connect("memory://").await.expect("memory connects");
    let bad = SimulateArgs {
        duplicates: 1.5,
        ..args()
    };
    let err = simulate(state, &bad).await.err().map(|e| e.to_string());
    assert!(err.unwrap_or_default().contains("--duplicates"));
}
