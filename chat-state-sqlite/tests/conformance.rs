//! The shared conformance suite against real SQLite files, twice: on a manual clock (TTL
//! cases run instantly, with exact boundaries) and on the system clock with the default
//! options (the same cases with real sleeps, background cleanup running). Each case gets a
//! fresh database file in its own temporary directory.

use std::sync::Arc;

use chat_state_conformance::{Harness, conformance_tests};
use chat_state_core::ManualClock;

mod common;

mod manual_clock {
    use super::*;

    async fn factory() -> Harness {
        let clock = ManualClock::starting_now();
        let state = common::TempState::manual(&clock).await;
        Harness::with_manual_clock(Arc::new(state), clock)
    }

    conformance_tests!(factory);
}

mod real_time {
    use super::*;

    async fn factory() -> Harness {
        // Defaults, but with a short cleanup interval so cleanup runs during the cases.
        let state = common::TempState::new(|b| {
            b.cleanup_interval(Some(std::time::Duration::from_millis(50)))
        })
        .await;
        Harness::with_real_time(Arc::new(state))
    }

    conformance_tests!(factory);
}
