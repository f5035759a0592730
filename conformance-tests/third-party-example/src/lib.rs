#![doc = include_str!("../README.md")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chat_state_core::{Call, Layer, Layered, MaybeSend, Next, Operation, Result, StateAdapter};

/// A [`Layer`] that counts calls per operation (successful or not) and passes every call
/// through unchanged.
///
/// It adds no semantics of its own, so an adapter wrapped in it passes the conformance suite
/// exactly when the adapter it wraps does; errors keep the wrapped backend's name (the suite
/// checks that an error names the adapter's [`StateAdapter::backend_name`], which
/// [`Layered`] forwards).
#[derive(Debug, Default)]
pub struct Counting {
    calls: Mutex<HashMap<Operation, u64>>,
}

/// Any adapter with [`Counting`] around it: `Layered::new(Counting::default(), inner)`, the
/// counts read through [`Layered::layer`].
pub type CountingState<A = Arc<dyn StateAdapter>> = Layered<Counting, A>;

impl Counting {
    /// How many times `op` was called (successful or not).
    pub fn calls(&self, op: Operation) -> u64 {
        self.lock_calls().get(&op).copied().unwrap_or(0)
    }

    fn lock_calls(&self) -> std::sync::MutexGuard<'_, HashMap<Operation, u64>> {
        // A panic while holding this lock cannot leave the map inconsistent (one increment).
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }
}

// `Layer` is an `async_trait` trait: `Send` futures natively, `?Send` on wasm32.
#[cfg_attr(not(target_arch = "wasm32"), chat_state_core::async_trait)]
#[cfg_attr(target_arch = "wasm32", chat_state_core::async_trait(?Send))]
impl Layer for Counting {
    async fn call<T: MaybeSend>(&self, call: Call<'_>, next: Next<'_, T>) -> Result<T> {
        *self.lock_calls().entry(call.operation).or_insert(0) += 1;
        next.await
    }
}

/// The repository README's Rust snippets, compiled and run as doctests of this unpublished
/// example (the publishable crates document themselves from READMEs inside their packages).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct RepositoryReadme;
