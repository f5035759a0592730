//! Model-based testing: random operation sequences against a reference model.
//!
//! `proptest-state-machine` generates sequences of calls over every operation of every
//! capability (plus invalid inputs and, with a manual clock, time passing); each sequence is
//! run against the adapter and against [`Model`], a few lines per operation that state the
//! contract directly. Any difference fails the case, after proptest has shrunk the sequence
//! to a minimal one, which the failure message lists call by call.
//!
//! The same three names (`a`, `b:c`, `d.e`) are used as subscription ids, lock ids, cache
//! keys, list keys and queue ids at once, so a backend whose namespaces collide (rule 8)
//! diverges from the model. Every proptest case uses a fresh key prefix, because all cases
//! share one harness.

use crate::{CaseResult, Harness};

/// Random sequences of every operation, compared step by step with a reference model.
///
/// Covers subscriptions, locks (acquire / release / extend with current, stale and forged
/// tokens, force-release, expiry, fences strictly increasing, `expires_at` = clock + TTL),
/// the cache (TTL, overwrite, `set_if_not_exists` on missing / live / expired keys, delete),
/// lists (`max_length` keeps the newest, TTL set / kept / restarted), queues (FIFO,
/// `max_size` trimming, expired entries never returned nor counted, exact round trip),
/// namespace separation, and invalid inputs (which must fail with `InvalidInput` and change
/// nothing). With a manual clock, time-advance steps exercise exact expiry boundaries; with
/// real time only long TTLs (and entries dead on arrival) are used.
#[cfg(not(target_arch = "wasm32"))]
pub async fn model_based_operations(h: &Harness) -> CaseResult {
    driver::run(h).await
}

/// Random sequences of every operation, compared step by step with a reference model.
///
/// Skipped on wasm32: proptest drives cases synchronously and needs a blocking thread.
#[cfg(target_arch = "wasm32")]
pub async fn model_based_operations(_h: &Harness) -> CaseResult {
    Err(crate::Failure::skip(
        "the model-based test drives the adapter from a blocking thread and runs natively only",
    ))
}

#[cfg(not(target_arch = "wasm32"))]
mod driver;
#[cfg(not(target_arch = "wasm32"))]
mod reference;
