//! The request protocol between the adapter (in the user's Worker) and the Durable Object.
//!
//! # Wire format (version 1)
//!
//! One operation per HTTP request: `POST https://chat-state.internal/v1` whose body is one
//! JSON [`Request`], tagged by `op` (snake_case), for example
//! `{"op":"acquire_lock","lock_id":"t1","ttl_ms":30000,"token":"9f86d0..."}`.
//!
//! * Success: status 200, body = the operation's result as JSON (see [`Request`] for the
//!   shape of each).
//! * Failure: status 4xx/5xx, body = [`WireError`] `{"kind":"invalid_input","message":"..."}`.
//!
//! Values (cache values, list items) are opaque bytes, carried as standard base64 strings.
//! Queue messages are plain JSON.
//!
//! # Versioning
//!
//! The version is the path (`/v1`). An object answers any other path with status 400 and a
//! [`WireError`] of kind `protocol_mismatch` that names both versions, and the adapter turns
//! that into an error telling the user to deploy the Worker and the object from the same
//! `chat-state-do` version. A new incompatible format gets a new path, so an old object and a
//! new adapter (or the reverse) always fail loudly instead of misreading each other.
//!
//! Fields added within a version are optional: `acquire_lock`'s `token` (the caller's token
//! for the new holder) may be absent, and the object then draws one. An object that predates
//! the field ignores it and answers a token of its own, which the adapter detects and reports
//! as a version mismatch instead of handing out a lock whose token the object does not know.
//!
//! # Test clock (feature `test-introspection` only)
//!
//! An adapter built with a test clock
//! (`DurableObjectAdapterBuilder::test_clock`, which only exists with the feature) sends its clock's time with every request in the header [`TEST_NOW_HEADER`]
//! (Unix ms, decimal). An object built with the feature uses that time instead of
//! `Date.now()` for the request, so a test can drive both sides with one manual clock. An
//! object built without the feature rejects any request that carries the header with
//! `invalid_input`: a client can never set a production object's clock. Without a test clock
//! the adapter never sends the header.

use base64::Engine as _;
use chat_state_core::{Error, ErrorKind, QueueEntry};
use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The request path for [`PROTOCOL_VERSION`].
pub const PROTOCOL_PATH: &str = "/v1";

/// The URL the adapter posts to (the host is never resolved: stubs route by object id).
pub const REQUEST_URL: &str = "https://chat-state.internal/v1";

/// The request header that carries a test clock's time (see the module docs). Honoured only
/// by objects built with the feature `test-introspection`; rejected by all others.
pub const TEST_NOW_HEADER: &str = "x-chat-state-test-now-ms";

/// One operation, as the adapter sends it. Results (status 200 body) are noted per variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Result: `null`.
    Subscribe {
        /// Thread id.
        thread_id: String,
    },
    /// Result: `null`.
    Unsubscribe {
        /// Thread id.
        thread_id: String,
    },
    /// Result: `true`/`false`.
    IsSubscribed {
        /// Thread id.
        thread_id: String,
    },
    /// Result: `null` if held, else [`Acquired`].
    AcquireLock {
        /// Lock id.
        lock_id: String,
        /// Lock TTL in milliseconds (> 0).
        ttl_ms: u64,
        /// The new holder's token, drawn by the caller (the adapter's rule layer draws 128
        /// random bits, hex). Absent: the object draws one and answers it in [`Acquired`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// Result: `null`.
    ReleaseLock {
        /// Lock id.
        lock_id: String,
        /// The holder's token.
        token: String,
    },
    /// Result: `true` if extended.
    ExtendLock {
        /// Lock id.
        lock_id: String,
        /// The holder's token.
        token: String,
        /// New TTL from now, in milliseconds (> 0).
        ttl_ms: u64,
    },
    /// Result: `null`.
    ForceReleaseLock {
        /// Lock id.
        lock_id: String,
    },
    /// Result: base64 value or `null`.
    Get {
        /// Cache key.
        key: String,
    },
    /// Result: `null`.
    Set {
        /// Cache key.
        key: String,
        /// The value.
        #[serde(with = "b64")]
        value: Vec<u8>,
        /// TTL in milliseconds; absent means no expiry.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<u64>,
    },
    /// Result: `true` if stored.
    SetIfNotExists {
        /// Cache key.
        key: String,
        /// The value.
        #[serde(with = "b64")]
        value: Vec<u8>,
        /// TTL in milliseconds; absent means no expiry.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<u64>,
    },
    /// Result: `null`.
    Delete {
        /// Cache key.
        key: String,
    },
    /// Result: `null`.
    AppendToList {
        /// List key.
        key: String,
        /// The item.
        #[serde(with = "b64")]
        value: Vec<u8>,
        /// Keep only the newest this many items.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_length: Option<u64>,
        /// Set the list's expiry to now + this many milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<u64>,
    },
    /// Result: array of base64 items, oldest first.
    GetList {
        /// List key.
        key: String,
    },
    /// Result: live depth after the append.
    Enqueue {
        /// Thread id.
        thread_id: String,
        /// The entry, in its upstream camelCase shape.
        entry: QueueEntry,
        /// Keep at most this many entries (>= 1).
        max_size: u64,
    },
    /// Result: the oldest live [`QueueEntry`] or `null`.
    Dequeue {
        /// Thread id.
        thread_id: String,
    },
    /// Result: number of live entries.
    QueueDepth {
        /// Thread id.
        thread_id: String,
    },
    /// Test-only (feature `test-introspection` on the object): result is an [`Inspection`].
    /// Objects built without the feature answer with an `invalid_input` error.
    Inspect,
    /// Test-only (feature `test-introspection`): the next `times` alarm runs fail before
    /// touching any table, and failed runs re-arm `retry_ms` later instead of the production
    /// delay. Result: `null`.
    FailAlarms {
        /// How many runs fail.
        times: u32,
        /// Retry delay after a failed run, in milliseconds.
        retry_ms: u64,
    },
}

/// Result of a successful [`Request::AcquireLock`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acquired {
    /// The new holder's token: the request's, or one the object drew (128 random bits, hex)
    /// if the request carried none.
    pub token: String,
    /// Fencing number, strictly increasing per object (hence per lock id).
    pub fence: u64,
}

/// Row counts of one table, split by expiry at the object's current time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCount {
    /// Rows that are not expired (or never expire).
    pub live: u64,
    /// Rows whose expiry has passed but that are still stored.
    pub expired: u64,
}

/// What [`Request::Inspect`] reports (test-only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inspection {
    /// The object's name (`idFromName`), if it has one.
    pub name: Option<String>,
    /// The object's time when it answered, Unix ms.
    pub now_ms: u64,
    /// The scheduled alarm, Unix ms.
    pub alarm_ms: Option<u64>,
    /// Schema version stored in the object.
    pub schema_version: u64,
    /// Subscriptions (never expire).
    pub subscriptions: TableCount,
    /// Lock rows.
    pub locks: TableCount,
    /// Cache rows.
    pub cache: TableCount,
    /// List headers (one per list key).
    pub lists: TableCount,
    /// List items (expired when their list is).
    pub list_items: TableCount,
    /// Queue entries.
    pub queue: TableCount,
    /// How many alarm runs completed a cleanup.
    pub alarm_runs: u64,
    /// How many alarm runs failed (and re-armed themselves).
    pub alarm_failures: u64,
}

impl Inspection {
    /// Expired rows still stored, over every table.
    pub fn expired_rows(&self) -> u64 {
        [
            self.locks,
            self.cache,
            self.lists,
            self.list_items,
            self.queue,
        ]
        .iter()
        .map(|t| t.expired)
        .sum()
    }
}

/// The body of every non-200 answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// `invalid_input`, `corrupt_data`, `backend` or `protocol_mismatch`.
    pub kind: String,
    /// What was wrong and what to do.
    pub message: String,
}

/// [`WireError::kind`] of a version mismatch.
pub const KIND_PROTOCOL_MISMATCH: &str = "protocol_mismatch";

impl WireError {
    /// The wire form of a core error (kind names are the snake_case [`ErrorKind`] names).
    pub fn from_error(e: &Error) -> Self {
        let kind = match e.kind() {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::CorruptData => "corrupt_data",
            ErrorKind::Closed => "closed",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            _ => "backend",
        };
        Self {
            kind: kind.to_string(),
            message: e.message().to_string(),
        }
    }

    /// The core error kind this wire kind maps to. A version mismatch is a
    /// [`ErrorKind::Backend`] error: retrying cannot fix it, redeploying does.
    pub fn error_kind(&self) -> ErrorKind {
        match self.kind.as_str() {
            "invalid_input" => ErrorKind::InvalidInput,
            "corrupt_data" => ErrorKind::CorruptData,
            "unavailable" => ErrorKind::Unavailable,
            "timeout" => ErrorKind::Timeout,
            _ => ErrorKind::Backend,
        }
    }

    /// The HTTP status the object answers with.
    pub fn status(&self) -> u16 {
        match self.kind.as_str() {
            "invalid_input" | KIND_PROTOCOL_MISMATCH => 400,
            "unavailable" => 503,
            _ => 500,
        }
    }

    /// The error for a request sent to a path other than [`PROTOCOL_PATH`].
    pub fn protocol_mismatch(path: &str) -> Self {
        Self {
            kind: KIND_PROTOCOL_MISMATCH.to_string(),
            message: format!(
                "the Durable Object speaks chat-state protocol v{PROTOCOL_VERSION} (path \
                 {PROTOCOL_PATH}) but the request used path {path:?}; deploy the Worker and the \
                 Durable Object class from the same chat-state-do version"
            ),
        }
    }
}

/// Parses a request body, with an `invalid_input` error saying what was malformed.
pub fn decode_request(body: &[u8]) -> Result<Request, Error> {
    serde_json::from_slice(body).map_err(|e| {
        Error::invalid_input(format!(
            "malformed chat-state request ({e}); expected a JSON object with an \"op\" field as \
             documented in chat_state_do::protocol"
        ))
    })
}

/// Serde helpers carrying bytes as standard base64 strings.
pub mod b64 {
    use super::*;

    /// Serializes bytes as a base64 string.
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(v))
    }

    /// Deserializes a base64 string into bytes.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        decode(&s).map_err(serde::de::Error::custom)
    }

    /// Bytes to base64.
    pub fn encode(v: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(v)
    }

    /// Base64 to bytes.
    pub fn decode(s: &str) -> Result<Vec<u8>, String> {
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| format!("value is not valid base64: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_in_the_documented_shape() {
        let r = Request::Set {
            key: "k".into(),
            value: b"{\"a\":1}".to_vec(),
            ttl_ms: None,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"op":"set","key":"k","value":"eyJhIjoxfQ=="}"#);
        assert_eq!(decode_request(json.as_bytes()).unwrap(), r);

        let r = decode_request(br#"{"op":"acquire_lock","lock_id":"t","ttl_ms":5}"#).unwrap();
        assert_eq!(
            r,
            Request::AcquireLock {
                lock_id: "t".into(),
                ttl_ms: 5,
                token: None,
            }
        );
        let r = Request::AcquireLock {
            lock_id: "t".into(),
            ttl_ms: 5,
            token: Some("ab12".into()),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"op":"acquire_lock","lock_id":"t","ttl_ms":5,"token":"ab12"}"#
        );
        assert_eq!(decode_request(json.as_bytes()).unwrap(), r);
        assert_eq!(
            decode_request(br#"{"op":"inspect"}"#).unwrap(),
            Request::Inspect
        );
    }

    #[test]
    fn malformed_requests_are_invalid_input() {
        for body in [
            &b"not json"[..],
            br#"{"op":"no_such_op"}"#,
            br#"{"op":"get"}"#,
            br#"{"op":"set","key":"k","value":"%%%"}"#,
            br#"{"op":"acquire_lock","lock_id":"t","ttl_ms":-1}"#,
            br#"[1,2]"#,
        ] {
            let e = decode_request(body).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
            assert!(e.message().contains("malformed"), "{e}");
        }
    }

    #[test]
    fn wire_errors_map_kinds_both_ways() {
        let e = Error::invalid_input("bad");
        let w = WireError::from_error(&e);
        assert_eq!(w.kind, "invalid_input");
        assert_eq!(w.status(), 400);
        assert_eq!(w.error_kind(), ErrorKind::InvalidInput);
        let m = WireError::protocol_mismatch("/v2");
        assert_eq!(m.status(), 400);
        assert_eq!(m.error_kind(), ErrorKind::Backend);
        assert!(m.message.contains("/v2") && m.message.contains("same chat-state-do version"));
    }
}
