//! The conformance suite against the memory backend, twice: on a manual clock (TTL cases run
//! instantly, exact boundaries) and on the wall clock (the same cases with real sleeps).

use std::sync::Arc;

use chat_state_conformance::{Harness, conformance_tests};
use chat_state_core::ManualClock;
use chat_state_memory::MemoryState;

mod manual_clock {
    use super::*;

    async fn factory() -> Harness {
        let clock = ManualClock::starting_now();
        Harness::with_manual_clock(Arc::new(MemoryState::with_clock(clock.clone())), clock)
    }

    conformance_tests!(factory);
}

mod real_time {
    use super::*;

    async fn factory() -> Harness {
        Harness::with_real_time(Arc::new(MemoryState::new()))
    }

    conformance_tests!(factory);
}
