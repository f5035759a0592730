//! The cases. Each is `pub async fn name(h: &Harness) -> CaseResult`, re-exported flat here
//! and listed once in [`__case_list!`](crate::__case_list), which drives both the
//! `#[test]` macro and the report runner.
//!
//! Every case starts from the fresh, isolated state the factory provides, and derives its own
//! ids from the case name so that a backend with shared storage cannot mix cases up.

mod linearizability;
mod model;
mod subscriptions;

pub use linearizability::*;
pub use model::*;
pub use subscriptions::*;

/// The one list of cases. Add a case here and it runs everywhere.
#[doc(hidden)]
#[macro_export]
macro_rules! __case_list {
    ($($mode:tt)*) => {
        $crate::__emit_cases! { ($($mode)*) [
            subscriptions_round_trip
            subscribe_is_idempotent
            unsubscribe_missing_is_fine
            subscription_ids_with_separators
            locks_linearizable
            model_based_operations
        ] }
    };
}
