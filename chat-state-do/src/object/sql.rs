//! Helpers every operation shares: SQL values, error mapping, the reply type.

use chat_state_core::{Error, ErrorKind, Operation};
use worker::SqlStorageValue;

use crate::BACKEND;

/// Largest integer JS numbers (and so the SQL bindings) represent exactly. Expiry columns are
/// clamped to it: "2^53 ms after 1970" is as good as never, and comparisons stay exact.
pub(super) const MAX_SAFE_MS: u64 = (1 << 53) - 1;

/// What an operation answers: the JSON body of the 200 response and, when it stored
/// something that expires, that expiry (so the alarm can be moved no later than it).
#[derive(Debug)]
pub(super) struct Reply {
    pub(super) body: Vec<u8>,
    pub(super) arm: Option<u64>,
}

impl Reply {
    /// `v` as JSON, arming nothing.
    pub(super) fn json<T: serde::Serialize>(v: &T) -> Result<Self, Error> {
        Ok(Self::raw(to_json(v)?))
    }

    /// The JSON `null` reply.
    pub(super) fn null() -> Result<Self, Error> {
        Self::json(&())
    }

    /// An already encoded body.
    pub(super) fn raw(body: Vec<u8>) -> Self {
        Self { body, arm: None }
    }

    /// The same reply, asking for the alarm to run no later than `at` (if given).
    pub(super) fn arming(self, at: Option<u64>) -> Self {
        Self { arm: at, ..self }
    }
}

/// Milliseconds as an SQL integer, clamped to what JS numbers hold exactly.
pub(super) fn ms(v: u64) -> SqlStorageValue {
    SqlStorageValue::Integer(v.min(MAX_SAFE_MS) as i64)
}

/// An optional expiry as an SQL value (`NULL` = never).
pub(super) fn optional_ms(v: Option<u64>) -> SqlStorageValue {
    v.map(ms).unwrap_or(SqlStorageValue::Null)
}

pub(super) fn backend_err(op: Operation, what: &str, e: worker::Error) -> Error {
    Error::new(
        ErrorKind::Backend,
        format!("Durable Object SQL failed while {what}: {e}"),
    )
    .context(BACKEND, op)
}

pub(super) fn int(v: Option<&SqlStorageValue>) -> i64 {
    match v {
        Some(SqlStorageValue::Integer(i)) => *i,
        Some(SqlStorageValue::Float(f)) => *f as i64,
        Some(SqlStorageValue::Boolean(b)) => i64::from(*b),
        _ => 0,
    }
}

/// A nullable time column: `None` for `NULL` (or no row), else the time, clamped at 0.
pub(super) fn optional_int(v: Option<&SqlStorageValue>) -> Option<u64> {
    match v {
        Some(SqlStorageValue::Null) | None => None,
        v => Some(int(v).max(0) as u64),
    }
}

pub(super) fn blob(v: Option<&SqlStorageValue>, op: Operation) -> Result<Vec<u8>, Error> {
    match v {
        Some(SqlStorageValue::Blob(b)) => Ok(b.clone()),
        // Written by something other than this code (e.g. a manual SQL fix-up).
        Some(SqlStorageValue::String(s)) => Ok(s.clone().into_bytes()),
        other => Err(Error::corrupt(format!(
            "stored value has an unexpected SQL type ({other:?}); expected a BLOB"
        ))
        .context(BACKEND, op)),
    }
}

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(v).map_err(|e| Error::new(ErrorKind::Backend, e.to_string()))
}
