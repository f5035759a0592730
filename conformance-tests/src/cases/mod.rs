//! The cases. Each is `pub async fn name(h: &Harness) -> CaseResult`, re-exported flat here
//! and listed once in [`__case_list!`](crate::__case_list), which drives both the
//! `#[test]` macro and the report runner.
//!
//! Every case starts from the fresh, isolated state the factory provides. Names are
//! `<area>_<what_is_checked>`; `SEMANTICS.md` at the repository root links every contract
//! rule to the cases that check it.

mod cache;
mod dispatch;
#[cfg(not(target_arch = "wasm32"))]
mod guard;
mod lifecycle;
mod linearizability;
mod lists;
mod locks;
mod model;
mod namespaces;
mod queues;
mod subscriptions;
mod support;
mod typed;
mod validation;

pub use cache::*;
pub use dispatch::*;
#[cfg(not(target_arch = "wasm32"))]
pub use guard::*;
pub use lifecycle::*;
pub use linearizability::*;
pub use lists::*;
pub use locks::*;
pub use model::*;
pub use namespaces::*;
pub use queues::*;
pub use subscriptions::*;
pub use typed::*;
pub use validation::*;

/// The one list of cases. Add a case here and it runs everywhere. Cases after `native:` need
/// threads or tokio and exist only on native targets (they are compiled out on wasm32, not
/// reported as passing there).
#[doc(hidden)]
#[macro_export]
macro_rules! __case_list {
    ($($mode:tt)*) => {
        $crate::__emit_cases! { ($($mode)*) [
            lifecycle_every_operation_fails_after_close
            lifecycle_close_twice_is_fine
            lifecycle_connect_is_idempotent
            lifecycle_invalid_input_reported_before_closed
            lifecycle_reopen_keeps_data

            subscription_round_trip
            subscription_subscribe_is_idempotent
            subscription_unsubscribe_missing_is_fine
            subscription_ids_with_separators
            subscription_threads_are_independent
            subscription_longest_and_unicode_ids_accepted

            lock_acquire_returns_id_token_and_expiry
            lock_expires_at_is_now_plus_ttl
            lock_expires_at_never_after_backend_expiry
            lock_second_acquire_gets_none
            lock_wrong_token_release_keeps_lock
            lock_release_then_reacquire
            lock_expiry_then_reacquire_with_new_token
            lock_stale_release_after_takeover_keeps_new_lock
            lock_extend_keeps_lock_past_first_ttl
            lock_extend_sets_expiry_to_now_plus_ttl
            lock_extend_fails_at_expiry_instant
            lock_extend_never_resurrects_expired
            lock_extend_false_with_wrong_token
            lock_extend_false_after_release
            lock_extend_false_after_force_release
            lock_extend_false_for_stale_holder_after_takeover
            lock_extend_zero_ttl_is_invalid_and_keeps_lock
            lock_extend_to_shorter_ttl_frees_sooner
            lock_force_release_ignores_token
            lock_force_release_missing_is_noop
            lock_release_is_idempotent
            lock_release_after_extend_frees
            lock_different_ids_independent
            lock_token_bound_to_its_id
            lock_ids_with_separators
            lock_tokens_unique_per_acquisition
            lock_tokens_look_random
            lock_fence_increases_across_release
            lock_fence_increases_across_expiry
            lock_fence_increases_across_force_release
            lock_fence_is_never_zero
            lock_concurrent_acquirers_one_winner
            lock_concurrent_acquire_after_expiry_one_winner
            locks_linearizable

            cache_round_trip_json_types
            cache_round_trip_arbitrary_bytes
            cache_missing_is_none
            cache_overwrite_replaces_value
            cache_delete_removes_key
            cache_delete_missing_is_fine
            cache_delete_expired_is_fine
            cache_ttl_expiry
            cache_no_ttl_persists
            cache_overwrite_without_ttl_clears_expiry
            cache_overwrite_with_ttl_sets_expiry
            cache_set_if_not_exists_missing_stores
            cache_set_if_not_exists_live_keeps_value
            cache_set_if_not_exists_expired_stores
            cache_set_if_not_exists_applies_ttl
            cache_set_if_not_exists_after_delete_stores
            cache_set_if_not_exists_concurrent_one_winner
            cache_keys_are_exact

            list_insertion_order
            list_missing_is_empty
            list_trim_keeps_newest
            list_max_length_one_keeps_latest
            list_max_length_applies_per_append
            list_ttl_expiry
            list_ttl_refreshed_on_append
            list_ttl_append_can_shorten_expiry
            list_append_without_ttl_keeps_expiry
            list_no_ttl_persists
            list_restarts_empty_after_expiry
            list_mixed_json_types
            list_items_round_trip_bytes
            list_isolation_by_key
            list_concurrent_appends_all_kept

            queue_enqueue_returns_depth
            queue_fifo_order
            queue_dequeue_empty_and_missing_gives_none
            queue_depth_zero_when_missing
            queue_depth_tracks_dequeues
            queue_trim_keeps_newest
            queue_max_size_one_keeps_latest
            queue_isolation_per_thread
            queue_expired_entries_skipped_and_not_counted
            queue_enqueue_depth_ignores_expired
            queue_expired_entries_do_not_count_toward_max_size
            queue_expired_entry_among_live_ones_takes_no_room
            queue_entry_dead_on_arrival_not_counted
            queue_entry_expires_at_boundary
            queue_entries_round_trip_exactly
            queue_concurrent_dequeuers_no_duplicates
            queue_concurrent_enqueuers_all_kept

            namespace_same_key_in_all_five
            namespace_presence_does_not_leak
            namespace_removals_touch_one_namespace
            namespace_keys_resembling_storage_layout
            namespace_expiry_is_per_namespace
            namespace_expiry_holds_under_expired_backlog

            validation_empty_key_rejected_everywhere
            validation_oversized_key_rejected_everywhere
            validation_oversized_multibyte_key_rejected_everywhere
            validation_nul_key_rejected_everywhere
            validation_longest_key_accepted_everywhere
            validation_lock_token_rules
            validation_oversized_value_rejected
            validation_largest_value_accepted
            validation_zero_ttl_rejected
            validation_ttl_above_max_rejected
            validation_max_ttl_accepted
            validation_limits_are_the_contract_numbers
            validation_sub_millisecond_ttl_rounds_up
            validation_sub_millisecond_ttl_expires_on_every_operation
            validation_max_length_zero_rejected
            validation_max_size_zero_rejected
            validation_queue_timestamps_out_of_range_rejected

            typed_cache_round_trip
            typed_set_if_not_exists_round_trip
            typed_list_round_trip
            typed_queue_round_trip
            typed_non_json_cache_value_is_corrupt_data
            typed_wrong_shape_is_corrupt_data
            typed_corrupt_list_item_is_corrupt_data
            typed_queue_message_wrong_shape_is_corrupt_data
            typed_lone_surrogates_decode_as_replacement_characters

            dispatch_admit_new_message_takes_lock
            dispatch_admit_reports_subscription
            dispatch_admit_duplicate_changes_nothing
            dispatch_admit_busy_drops
            dispatch_admit_busy_queues_with_depth
            dispatch_admit_after_dedupe_expiry_is_new
            dispatch_admit_concurrent_one_message_once
            dispatch_admit_reads_key_when_admitted
            dispatch_release_or_next_with_writes_then_hands_over
            dispatch_release_or_next_fifo_then_release
            dispatch_release_or_next_empty_queue_releases
            dispatch_release_or_next_refreshes_expiry
            dispatch_release_or_next_skips_expired_entries
            dispatch_release_or_next_stale_holder_changes_nothing
            dispatch_set_fenced_refuses_lower_fence
            dispatch_set_fenced_record_expires_with_ttl
            dispatch_paused_holder_fenced_write_refused
            dispatch_invalid_input_rejected
            dispatch_set_fenced_is_atomic

            model_based_operations
        ] native: [
            dispatch_randomized_schedule_handles_every_message_once
            dispatch_dispatcher_stops_when_the_lock_is_lost
            lock_guard_runs_work_and_releases
            lock_guard_busy_when_held
            lock_guard_heartbeat_keeps_lock
            lock_guard_reports_lost_ownership
        ] }
    };
}
