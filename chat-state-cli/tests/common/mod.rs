//! The simulation settings and the "nothing handled twice, nothing lost" check shared by the
//! facade's test binaries.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use chat_state_cli::simulate::{SimReport, SimulateArgs};

/// 16 instances on a short stream: enough contention for conflicts, fast on any backend.
pub fn sim_args() -> SimulateArgs {
    SimulateArgs {
        instances: 16,
        messages: 600,
        threads: 24,
        ..SimulateArgs::default()
    }
}

/// Every message handled exactly once (or dropped by queue policy), every redelivery
/// suppressed, no thread-state update lost.
pub fn assert_clean(report: &SimReport) {
    println!("{}", report.render());
    assert_eq!(report.instances, 16);
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
