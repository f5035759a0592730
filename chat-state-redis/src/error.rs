//! Mapping `redis` errors to [`chat_state_core::Error`].

use std::time::Duration;

use chat_state_core::{Error, ErrorKind, Operation};
use redis::{RedisError, ServerErrorKind};

use crate::BACKEND;

/// Classifies a `redis` error: transient failures (refused, reset, timed out, cluster
/// reconfiguring, server loading) are retryable; `WRONGTYPE` means another application wrote
/// a key under our prefix.
pub(crate) fn from_redis(op: Operation, e: RedisError) -> Error {
    let (kind, message) = classify(&e);
    Error::new(kind, message)
        .context(BACKEND, op)
        .with_source(e)
}

fn classify(e: &RedisError) -> (ErrorKind, String) {
    if e.is_timeout() {
        return (
            ErrorKind::Timeout,
            "Redis did not answer in time; the command may or may not have taken effect".into(),
        );
    }
    if e.is_connection_refusal() {
        return (
            ErrorKind::Unavailable,
            "Redis refused the connection; check that redis-server is running at the \
             configured address, then retry"
                .into(),
        );
    }
    if e.is_io_error() || e.is_connection_dropped() {
        return (
            ErrorKind::Unavailable,
            "the connection to Redis failed or was dropped; it reconnects in the background, \
             retry the call"
                .into(),
        );
    }
    match e.code() {
        Some("WRONGTYPE") => {
            return (
                ErrorKind::CorruptData,
                "a key under our prefix holds a value of another Redis type; another \
                 application is writing to this prefix: give this bot its own key prefix"
                    .into(),
            );
        }
        Some("OOM") => {
            return (
                ErrorKind::Unavailable,
                "Redis is out of memory (maxmemory reached with noeviction); free memory or \
                 raise maxmemory, then retry"
                    .into(),
            );
        }
        Some("BUSY") => {
            return (
                ErrorKind::Unavailable,
                "Redis is busy running a long script; retry later".into(),
            );
        }
        _ => {}
    }
    match e.kind() {
        redis::ErrorKind::Server(
            ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::BusyLoading
            | ServerErrorKind::ReadOnly,
        )
        | redis::ErrorKind::ClusterConnectionNotFound => (
            ErrorKind::Unavailable,
            "Redis is loading, failing over or reconfiguring its cluster; retry shortly".into(),
        ),
        redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType => (
            ErrorKind::CorruptData,
            "Redis answered with a reply of an unexpected shape; is another application \
             writing to this key prefix?"
                .into(),
        ),
        redis::ErrorKind::AuthenticationFailed => (
            ErrorKind::Backend,
            "Redis rejected the credentials; check the user and password in the URL".into(),
        ),
        redis::ErrorKind::InvalidClientConfig => (
            ErrorKind::InvalidInput,
            "the Redis connection settings are invalid; check the URL \
             (redis://[user:password@]host:port/db)"
                .into(),
        ),
        _ => (ErrorKind::Backend, "Redis reported an error".into()),
    }
}

/// The error for a call that got no answer within the adapter's command timeout.
pub(crate) fn timed_out(op: Operation, after: Duration) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!(
            "no answer from Redis within {after:?}; the command may or may not have taken \
             effect; check the server and retry"
        ),
    )
    .context(BACKEND, op)
}
