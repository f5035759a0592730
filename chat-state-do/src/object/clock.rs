//! The time a call runs at.

use chat_state_core::{Clock, Error, Operation, SystemClock};

use super::sql::MAX_SAFE_MS;
use crate::BACKEND;

/// The object's own time: `Date.now()` (the system clock on wasm32).
pub(super) fn now_ms() -> u64 {
    SystemClock.now_ms()
}

/// The time a test clock passed as a call's last argument (see the protocol docs), checked:
/// `None` when the call carries none.
#[cfg(feature = "test-introspection")]
pub(super) fn test_time(op: Operation, now: Option<f64>) -> Result<Option<u64>, Error> {
    match now {
        None => Ok(None),
        Some(t) if t.is_finite() && t >= 0.0 && t.fract() == 0.0 => {
            Ok(Some((t as u64).min(MAX_SAFE_MS)))
        }
        Some(t) => Err(Error::invalid_input(format!(
            "the test clock's time {t} is not a Unix time in milliseconds"
        ))
        .context(BACKEND, op)),
    }
}

/// Without the test feature nobody may set the object's clock.
#[cfg(not(feature = "test-introspection"))]
pub(super) fn test_time(op: Operation, now: Option<f64>) -> Result<Option<u64>, Error> {
    match now {
        None => Ok(None),
        Some(_) => Err(Error::invalid_input(
            "the call passes a time for the object's clock, which only objects built with the \
             chat-state-do feature `test-introspection` allow",
        )
        .context(BACKEND, op)),
    }
}

/// A millisecond count passed by the caller (a TTL, `max_length`, ...): a whole number from
/// 0 to 2^53 - 1, or an invalid-input error naming `what`.
pub(super) fn whole(op: Operation, what: &str, v: f64) -> Result<u64, Error> {
    if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= MAX_SAFE_MS as f64 {
        Ok(v as u64)
    } else {
        Err(Error::invalid_input(format!(
            "{what} must be a whole number from 0 to 2^53 - 1, got {v}"
        ))
        .context(BACKEND, op))
    }
}
