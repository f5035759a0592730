//! The shared conformance suite against real SQLite files: each case gets a fresh database
//! file in its own temporary directory, on a manual clock (TTL cases run instantly, with
//! exact boundaries).

use std::sync::Arc;

use chat_state_conformance::{Harness, conformance_tests};
use chat_state_core::ManualClock;

mod common;

async fn factory() -> Harness {
    let clock = ManualClock::starting_now();
    let state = common::TempState::manual(&clock).await;
    Harness::with_manual_clock(Arc::new(state), clock)
}

conformance_tests!(factory);
