//! The conformance suite against the memory backend, twice: on a manual clock (TTL cases run
//! instantly, exact boundaries) and on the wall clock (the same cases with real sleeps). The
//! memory backend is not durable, so the reopen case does not apply to either.

use std::sync::Arc;

use chat_state_conformance::{Harness, conformance_tests};
use chat_state_core::ManualClock;
use chat_state_memory::{MemoryBackend, MemoryState};

mod manual_clock {
    use super::*;

    async fn factory() -> Harness {
        let clock = ManualClock::starting_now();
        let state = MemoryState::new(MemoryBackend::with_clock(clock.clone()));
        Harness::with_manual_clock(Arc::new(state), clock)
    }

    conformance_tests!(
        factory,
        skip = [lock_guard_heartbeat_keeps_lock, lifecycle_reopen_keeps_data]
    );
}

mod real_time {
    use super::*;

    async fn factory() -> Harness {
        Harness::with_real_time(Arc::new(MemoryState::default()))
    }

    conformance_tests!(
        factory,
        skip = [
            lock_extend_sets_expiry_to_now_plus_ttl,
            queue_entry_expires_at_boundary,
            validation_sub_millisecond_ttl_rounds_up,
            lifecycle_reopen_keeps_data,
        ]
    );
}
