//! The open/closed state every adapter keeps (contract rule 13).

use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Error, Operation, Result};

/// Whether an adapter has been closed. Backends call [`OpenState::check`] at the top of
/// every operation, after input validation.
#[derive(Debug, Default)]
pub struct OpenState {
    closed: AtomicBool,
}

impl OpenState {
    /// A new, open state.
    pub fn new() -> Self {
        Self::default()
    }

    /// `Err(Closed)` once [`OpenState::close`] has been called.
    pub fn check(&self, backend: &'static str, op: Operation) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::closed(backend, op))
        } else {
            Ok(())
        }
    }

    /// Marks the adapter closed. Returns `true` the first time, `false` after, so the caller
    /// can release resources exactly once.
    pub fn close(&self) -> bool {
        !self.closed.swap(true, Ordering::AcqRel)
    }

    /// Whether the adapter has been closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}
