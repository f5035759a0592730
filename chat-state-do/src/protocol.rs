//! The Workers RPC protocol between the adapter (in the user's Worker) and the Durable Object.
//!
//! # Calls (version 2)
//!
//! Each operation is one RPC method call on the object's stub, named after the Rust method in
//! camelCase ([`METHODS`]). Every call carries [`PROTOCOL_VERSION`] as its first argument and,
//! from a test clock only, the caller's time as its last (see below). Arguments and results
//! are structured-clone values, never JSON text around them:
//!
//! | method | arguments after the version | result |
//! |---|---|---|
//! | `subscribe`, `unsubscribe` | thread id | `undefined` |
//! | `isSubscribed` | thread id | boolean |
//! | `acquireLock` | lock id, TTL ms, the new holder's token | the fence (number), or `null` if held |
//! | `releaseLock` | lock id, token | `undefined` |
//! | `extendLock` | lock id, token, TTL ms | boolean |
//! | `forceReleaseLock` | lock id | `undefined` |
//! | `get` | key | the value's bytes (`ArrayBuffer`), or `null` |
//! | `set` | key, value (`Uint8Array`), TTL ms or `null` | `undefined` |
//! | `setIfNotExists` | key, value, TTL ms or `null` | boolean: stored |
//! | `delete` | key | `undefined` |
//! | `appendToList` | key, value, `max_length` or `null`, TTL ms or `null` | `undefined` |
//! | `getList` | key | array of `ArrayBuffer`, oldest first |
//! | `enqueue` | thread id, the [`QueueEntry`](chat_state_core::QueueEntry) as JSON text, `max_size` | live depth (number) |
//! | `dequeue` | thread id | the oldest live entry as JSON text, or `null` |
//! | `queueDepth` | thread id | number |
//! | `admit` | thread id, dedupe key or `null`, dedupe TTL ms or `null`, lock TTL ms, the new holder's token, the [`QueueEntry`](chat_state_core::QueueEntry) as JSON text or `null` (drop when busy), `max_size` or `null`, a key to read when admitted or `null` | `["duplicate"]`, `["dropped"]`, `["queued", depth]` or `["admitted", fence, subscribed, the read key's value or null]` ([`ADMIT_DUPLICATE`] and the others) |
//! | `releaseOrNext` | lock id, token, TTL ms, then a fenced write stored first or four `null`s: key, value, TTL ms or `null`, fence | `["next", entry JSON text]`, `["released"]` or `["notHolder"]` (also for a refused write) |
//! | `setFenced` | key, value, TTL ms or `null`, lock id, token, fence | boolean: stored (`false`: stale) |
//! | `batch` | calls, each `[method, version, ...arguments]` | `[results, failures]`: `results[i]` is call `i`'s result, `failures` lists `[i, message]` for each call that threw |
//! | `inspect` | (none) | [`Inspection`] as JSON text (feature `test-introspection`) |
//! | `failAlarms` | runs, retry ms | `undefined` (feature `test-introspection`) |
//!
//! Optional arguments in the middle of a call are passed as `null`, never left out, so that
//! the test clock's time is always the argument after the last one in this table.
//!
//! Queue entries travel as the JSON text the object stores, so the object neither builds nor
//! parses a JavaScript object for them; cache values and list items are opaque bytes.
//!
//! `batch` runs its calls one after the other with no await in between (so the whole batch
//! is atomic, which is more than each call needs); a call's failure is reported at its index
//! with the message the method itself throws, and the other calls take effect. The adapter
//! sends the calls its tasks issue to one object at the same moment as one batch.
//!
//! `session()` (no arguments) answers an RPC target with the same methods, all of them
//! forwarded to the same object. Calls on it cost the runtime less than calls on the stub,
//! so an adapter that calls an object often opens one (see the crate docs, "Transport").
//!
//! # Errors
//!
//! An operation that fails throws an `Error` whose message is [`ERROR_PREFIX`], the
//! snake_case kind, `": "` and the explanation (`chat-state:invalid_input: key is empty`);
//! [`encode_error`] writes it and [`decode_error`] reads it back. Failures of the runtime
//! itself (the object could not be reached, was reset, is overloaded) arrive as the runtime's
//! own errors; [`classify_runtime_error`] turns them into core errors.
//!
//! # Versioning
//!
//! An object answers a call whose version is not [`PROTOCOL_VERSION`] with a
//! `protocol_mismatch` error that names both versions and tells the user to deploy the
//! Worker and the class from the same `chat-state-do` version ([`version_mismatch`]). A
//! method the object does not have, or an object whose class is not an RPC target at all (a
//! class from before version 2, or one exported without the JavaScript wrapper), makes the
//! runtime throw; the adapter reports those with the same advice. A Worker from before
//! version 2 reaches the object with `fetch`, which answers every request with the version 1
//! error body `{"kind":"protocol_mismatch","message":...}` ([`legacy_fetch_answer`]), so that
//! Worker's adapter fails loudly too.
//!
//! # Test clock (feature `test-introspection` only)
//!
//! An adapter built with a test clock (`DurableObjectAdapterBuilder::test_clock`, which only
//! exists with the feature) passes its clock's time (Unix ms) as the last argument of every
//! call. An object built with the feature uses that time instead of `Date.now()` for the
//! call, so a test can drive both sides with one manual clock. An object built without the
//! feature rejects any call that carries a time with `invalid_input`: a client can never set
//! a production object's clock. Without a test clock the adapter never passes one.

use chat_state_core::{Error, ErrorKind};
use serde::{Deserialize, Serialize};

/// `admit`'s answer tag: the dedupe key was live, nothing changed.
pub const ADMIT_DUPLICATE: &str = "duplicate";
/// `admit`'s answer tag: claimed, the lock is held, and the message was dropped.
pub const ADMIT_DROPPED: &str = "dropped";
/// `admit`'s answer tag: claimed, the lock is held, and the entry was queued; then the live
/// depth.
pub const ADMIT_QUEUED: &str = "queued";
/// `admit`'s answer tag: claimed and the lock taken; then the fence and whether the thread
/// is subscribed.
pub const ADMIT_ADMITTED: &str = "admitted";
/// `releaseOrNext`'s answer tag: the next entry was handed over; then its JSON text.
pub const HANDOFF_NEXT: &str = "next";
/// `releaseOrNext`'s answer tag: the queue was empty and the lock is released.
pub const HANDOFF_RELEASED: &str = "released";
/// `releaseOrNext`'s answer tag: the caller is not the live holder; nothing changed.
pub const HANDOFF_NOT_HOLDER: &str = "notHolder";

/// The protocol version this crate speaks: 1 was JSON over `fetch`, 2 is Workers RPC. The
/// dispatch methods (`admit`, `releaseOrNext`, `setFenced`) were added within version 2:
/// an adapter that calls them on an older class gets the runtime's "does not implement the
/// method", reported as a version error like any other missing method.
pub const PROTOCOL_VERSION: u32 = 2;

/// The RPC methods of the object, as JavaScript names. The JavaScript class
/// (`js/chat-state-do.mjs`) forwards exactly these to the Rust object.
pub const METHODS: &[&str] = &[
    "subscribe",
    "unsubscribe",
    "isSubscribed",
    "acquireLock",
    "releaseLock",
    "extendLock",
    "forceReleaseLock",
    "get",
    "set",
    "setIfNotExists",
    "delete",
    "appendToList",
    "getList",
    "enqueue",
    "dequeue",
    "queueDepth",
    "admit",
    "releaseOrNext",
    "setFenced",
    "batch",
    "inspect",
    "failAlarms",
];

/// How the message of every error the object throws begins.
pub const ERROR_PREFIX: &str = "chat-state:";

/// The kind name of a version mismatch in [`encode_error`]'s format (and in the version 1
/// error body).
pub const KIND_PROTOCOL_MISMATCH: &str = "protocol_mismatch";

/// The advice every version error ends with.
pub const REDEPLOY: &str = "deploy the Worker and the Durable Object class from the same \
                            chat-state-do version (redeploy both)";

/// The snake_case name of a core error kind, as [`encode_error`] writes it.
pub fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidInput => "invalid_input",
        ErrorKind::CorruptData => "corrupt_data",
        ErrorKind::Closed => "closed",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Timeout => "timeout",
        _ => "backend",
    }
}

fn kind_from_name(name: &str) -> Option<ErrorKind> {
    Some(match name {
        "invalid_input" => ErrorKind::InvalidInput,
        "corrupt_data" => ErrorKind::CorruptData,
        "closed" => ErrorKind::Closed,
        "unavailable" => ErrorKind::Unavailable,
        "timeout" => ErrorKind::Timeout,
        // A version error cannot be fixed by retrying; redeploying does.
        "backend" | KIND_PROTOCOL_MISMATCH => ErrorKind::Backend,
        _ => return None,
    })
}

/// The message of the `Error` the object throws for `e`.
pub fn encode_error(e: &Error) -> String {
    format!("{ERROR_PREFIX}{}: {}", kind_name(e.kind()), e.message())
}

/// The kind and explanation in a message [`encode_error`] wrote, or `None` for any other
/// message. A version mismatch decodes as [`ErrorKind::Backend`].
pub fn decode_error(message: &str) -> Option<(ErrorKind, &str)> {
    let rest = message.strip_prefix(ERROR_PREFIX)?;
    let (kind, explanation) = rest.split_once(": ")?;
    Some((kind_from_name(kind)?, explanation))
}

/// The error an object throws for a call of protocol version `theirs` (what the caller
/// passed as the first argument, if it was a number).
pub fn version_mismatch(theirs: Option<f64>) -> String {
    let theirs = match theirs {
        Some(v) if v.is_finite() => format!("protocol version {v}"),
        _ => "no protocol version (a caller that is not a chat-state-do adapter?)".to_string(),
    };
    format!(
        "{ERROR_PREFIX}{KIND_PROTOCOL_MISMATCH}: the Durable Object speaks chat-state-do \
         protocol version {PROTOCOL_VERSION} but the call carried {theirs}; {REDEPLOY}"
    )
}

/// Status and body of the object's answer to any `fetch`: adapters from before version 2
/// sent every operation that way and read this body as their version error.
pub fn legacy_fetch_answer(path: &str) -> (u16, String) {
    let message = format!(
        "the Durable Object speaks chat-state-do protocol version {PROTOCOL_VERSION} (Workers \
         RPC) but received a fetch request for {path:?}, which is version 1; {REDEPLOY}"
    );
    let body = serde_json::json!({ "kind": KIND_PROTOCOL_MISMATCH, "message": message });
    (400, body.to_string())
}

/// What the adapter learns from an error thrown by a call on the stub.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuntimeError<'a> {
    /// `error.message`.
    pub message: &'a str,
    /// `error.retryable`: the runtime says the call can be retried.
    pub retryable: bool,
    /// `error.overloaded`: the object is overloaded; retrying makes it worse.
    pub overloaded: bool,
}

/// Runtime messages that mean the class on the other side does not speak this protocol (no
/// such method; not an RPC target, i.e. a class from before version 2 or one exported without
/// the JavaScript wrapper).
const NOT_THIS_PROTOCOL: &[&str] = &["does not implement the method", "does not support RPC"];

/// Whether the runtime refused a call because the stub was made by another request (I/O
/// objects belong to the request that created them): nothing was sent, so the call may be
/// made again on a fresh stub.
pub fn refused_as_other_request(message: &str) -> bool {
    message.contains("Cannot perform I/O on behalf of a different request")
}

/// The core error for an error thrown by a call on the stub.
///
/// * our own encoded errors keep their kind;
/// * `overloaded` is [`ErrorKind::Backend`], not retryable: Cloudflare asks callers not to
///   retry an overloaded object (core has no dedicated kind yet);
/// * a class that does not speak this protocol is a version error ([`ErrorKind::Backend`]);
/// * other failures the runtime marks `retryable` (reset, lost connection) are
///   [`ErrorKind::Unavailable`];
/// * anything else is [`ErrorKind::Backend`].
pub fn classify_runtime_error(object: &str, e: RuntimeError<'_>) -> Error {
    if let Some((kind, explanation)) = decode_error(e.message) {
        return Error::new(kind, explanation);
    }
    if e.overloaded {
        return Error::new(
            ErrorKind::Backend,
            format!(
                "Durable Object {object:?} is overloaded ({}); do not retry at once: spread the \
                 load over more objects (DurableObjectAdapterBuilder::shard_key) or send less",
                e.message
            ),
        );
    }
    if NOT_THIS_PROTOCOL.iter().any(|m| e.message.contains(m)) {
        return Error::new(
            ErrorKind::Backend,
            format!(
                "Durable Object {object:?} does not speak chat-state-do protocol version \
                 {PROTOCOL_VERSION} ({}); export its class through rpcClass from \
                 chat-state-do's js/chat-state-do.mjs and {REDEPLOY}",
                e.message
            ),
        );
    }
    if e.retryable {
        return Error::new(
            ErrorKind::Unavailable,
            format!(
                "calling Durable Object {object:?} failed ({}); retry later",
                e.message
            ),
        );
    }
    Error::new(
        ErrorKind::Backend,
        format!(
            "calling Durable Object {object:?} failed ({}); the runtime does not mark it \
             retryable",
            e.message
        ),
    )
}

/// Row counts of one table, split by expiry at the object's current time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCount {
    /// Rows that are not expired (or never expire).
    pub live: u64,
    /// Rows whose expiry has passed but that are still stored.
    pub expired: u64,
}

/// What `inspect` reports (test-only).
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
    /// Fence records of `setFenced` (schema version 3).
    #[serde(default)]
    pub fences: TableCount,
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
            self.fences,
        ]
        .iter()
        .map(|t| t.expired)
        .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_round_trip_through_their_message() {
        for kind in [
            ErrorKind::InvalidInput,
            ErrorKind::CorruptData,
            ErrorKind::Backend,
            ErrorKind::Unavailable,
            ErrorKind::Timeout,
            ErrorKind::Closed,
        ] {
            let message = encode_error(&Error::new(kind, "what: and why"));
            assert!(message.starts_with(ERROR_PREFIX), "{message}");
            assert_eq!(decode_error(&message), Some((kind, "what: and why")));
        }
        assert_eq!(decode_error("key is empty"), None);
        assert_eq!(decode_error("chat-state:no_such_kind: x"), None);
        assert_eq!(decode_error("chat-state:invalid_input"), None);
    }

    #[test]
    fn a_version_mismatch_is_a_backend_error_that_says_to_redeploy_both() {
        for theirs in [Some(1.0), Some(3.0), None, Some(f64::NAN)] {
            let message = version_mismatch(theirs);
            let e = classify_runtime_error(
                "o",
                RuntimeError {
                    message: &message,
                    ..Default::default()
                },
            );
            assert_eq!(e.kind(), ErrorKind::Backend, "{e}");
            assert!(!e.is_retryable());
            assert!(e.message().contains("redeploy both"), "{e}");
            assert!(e.message().contains("protocol version 2"), "{e}");
        }
        assert!(version_mismatch(Some(3.0)).contains("carried protocol version 3"));
        let (status, body) = legacy_fetch_answer("/v1");
        assert_eq!(status, 400);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["kind"], KIND_PROTOCOL_MISMATCH);
        assert!(
            v["message"].as_str().unwrap().contains("redeploy both"),
            "{v}"
        );
    }

    #[test]
    fn runtime_failures_map_to_kinds_that_say_whether_to_retry() {
        let classify = |message: &str, retryable: bool, overloaded: bool| {
            classify_runtime_error(
                "o",
                RuntimeError {
                    message,
                    retryable,
                    overloaded,
                },
            )
        };
        // Cloudflare marks overloaded objects retryable too; overloaded wins.
        let e = classify(
            "Durable Object is overloaded. Too many requests queued.",
            true,
            true,
        );
        assert_eq!(e.kind(), ErrorKind::Backend);
        assert!(!e.is_retryable());
        assert!(
            e.message().contains("overloaded") && e.message().contains("shard_key"),
            "{e}"
        );

        let e = classify("Network connection lost.", true, false);
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.is_retryable());

        for message in [
            "The RPC receiver does not implement the method \"getList\".",
            "The receiving Durable Object does not support RPC, because its class was not \
             declared with `extends DurableObject`.",
        ] {
            let e = classify(message, false, false);
            assert_eq!(e.kind(), ErrorKind::Backend, "{e}");
            assert!(
                e.message().contains("redeploy both") && e.message().contains("rpcClass"),
                "{e}"
            );
        }

        let e = classify("chat-state:invalid_input: key is empty", false, false);
        assert_eq!(
            (e.kind(), e.message()),
            (ErrorKind::InvalidInput, "key is empty")
        );

        let e = classify("internal error", false, false);
        assert_eq!(e.kind(), ErrorKind::Backend);
        assert!(!e.is_retryable());
    }

    #[test]
    fn the_method_list_has_no_duplicates_and_no_reserved_names() {
        let mut names = METHODS.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METHODS.len());
        for reserved in ["fetch", "alarm", "connect", "constructor", "then", "dup"] {
            assert!(!METHODS.contains(&reserved), "{reserved}");
        }
    }
}
