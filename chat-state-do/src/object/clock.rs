//! The time a request runs at.

use chat_state_core::{Clock, Error, SystemClock};
use worker::Request;

use crate::protocol::TEST_NOW_HEADER;

/// The object's own time: `Date.now()` (the system clock on wasm32).
pub(super) fn now_ms() -> u64 {
    SystemClock.now_ms()
}

/// The time a request runs at: `Date.now()`, unless it carries a test clock's time in
/// [`TEST_NOW_HEADER`] (see the protocol docs).
pub(super) fn request_time(req: &Request) -> Result<u64, Error> {
    let header = req.headers().get(TEST_NOW_HEADER).map_err(|e| {
        Error::invalid_input(format!("cannot read the header {TEST_NOW_HEADER}: {e}"))
    })?;
    match header {
        None => Ok(now_ms()),
        Some(v) => test_time(&v),
    }
}

/// With the test feature: the header's time is the request's time.
#[cfg(feature = "test-introspection")]
fn test_time(v: &str) -> Result<u64, Error> {
    v.trim()
        .parse::<u64>()
        .map(|t| t.min(super::sql::MAX_SAFE_MS))
        .map_err(|_| {
            Error::invalid_input(format!(
                "header {TEST_NOW_HEADER}: {v:?} is not a Unix time in milliseconds"
            ))
        })
}

/// Without the test feature nobody may set the object's clock.
#[cfg(not(feature = "test-introspection"))]
fn test_time(_v: &str) -> Result<u64, Error> {
    Err(Error::invalid_input(format!(
        "the header {TEST_NOW_HEADER} sets the object's clock, which only objects built with \
         the chat-state-do feature `test-introspection` allow"
    )))
}
