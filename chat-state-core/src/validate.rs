//! Input rules (contract rules 2 and 9), checked once here so every backend rejects the
//! same inputs with the same error before any I/O.
//!
//! Each contract method has the validator of the same name (`validate::acquire_lock` for
//! `acquire_lock`). [`Checked`](crate::Checked), the layer every [`Backend`](crate::Backend)
//! runs behind, calls them for you; call them yourself only in an adapter that implements
//! the public traits directly. The conformance suite checks that the rules hold.

use std::time::Duration;

use crate::dispatch::{Admit, FENCE_RECORD_PREFIX, WhenBusy};
use crate::{Error, ErrorKind, ListOptions, Lock, Operation, QueueEntry, Result};

/// Longest id or key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value (cache value, list item, serialized queue message), in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Longest accepted TTL. Anything longer is treated as a mistake (a seconds value passed as
/// milliseconds, `u64::MAX` as "forever"); it also guarantees `now + ttl` fits in an `i64`
/// of milliseconds, the narrowest time type among the backends.
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);
/// Largest accepted `max_length` / `max_size`.
pub const MAX_COLLECTION_LEN: usize = 1_000_000;

/// Milliseconds in `d`, rounded up so that a non-zero duration never becomes 0 ms.
pub fn duration_ms(d: Duration) -> u64 {
    let ms = d.as_millis();
    let rounded = if !d.subsec_nanos().is_multiple_of(1_000_000) {
        ms + 1
    } else {
        ms
    };
    u64::try_from(rounded).unwrap_or(u64::MAX)
}

/// `now_ms + ttl` in milliseconds, or an invalid-input error naming `backend` and `op` if
/// it leaves the `i64` range every backend can store (contract rule 2: overflow is an error,
/// never a wrap).
pub fn expiry_ms(backend: &'static str, op: Operation, now_ms: u64, ttl: Duration) -> Result<u64> {
    now_ms
        .checked_add(duration_ms(ttl))
        .filter(|&at| at <= i64::MAX as u64)
        .ok_or_else(|| {
            fail(
                backend,
                op,
                format!("a TTL of {ttl:?} from now ({now_ms} ms) overflows the time range"),
            )
        })
}

/// [`expiry_ms`] of an optional TTL: `None` (no expiry) stays `None`.
pub fn optional_expiry_ms(
    backend: &'static str,
    op: Operation,
    now_ms: u64,
    ttl: Option<Duration>,
) -> Result<Option<u64>> {
    ttl.map(|ttl| expiry_ms(backend, op, now_ms, ttl))
        .transpose()
}

fn fail(backend: &'static str, op: Operation, message: String) -> Error {
    Error::new(ErrorKind::InvalidInput, message).context(backend, op)
}

/// Checks one id or key: non-empty UTF-8 (guaranteed by `&str`), at most
/// [`MAX_KEY_BYTES`], no NUL. `what` names it in the message (`"thread id"`, `"key"`).
pub fn key(backend: &'static str, op: Operation, what: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(fail(backend, op, format!("{what} is empty")));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(fail(
            backend,
            op,
            format!(
                "{what} is {} bytes; the limit is {MAX_KEY_BYTES}",
                key.len()
            ),
        ));
    }
    // A branch-free scan: ids are tens of bytes, where `memchr`'s setup costs more than this
    // loop, which the compiler vectorises.
    if key.bytes().fold(false, |nul, b| nul | (b == 0)) {
        return Err(fail(backend, op, format!("{what} contains a NUL byte")));
    }
    Ok(())
}

/// Checks a value's size against [`MAX_VALUE_BYTES`].
pub fn value(backend: &'static str, op: Operation, value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(fail(
            backend,
            op,
            format!(
                "value is {} bytes; the limit is {MAX_VALUE_BYTES}",
                value.len()
            ),
        ));
    }
    Ok(())
}

/// Checks a TTL: not zero, not above [`MAX_TTL`].
pub fn ttl(backend: &'static str, op: Operation, ttl: Duration) -> Result<()> {
    if ttl.is_zero() {
        return Err(fail(
            backend,
            op,
            "TTL is zero; pass a positive duration, or None for no expiry where allowed".into(),
        ));
    }
    if ttl > MAX_TTL {
        return Err(fail(
            backend,
            op,
            format!("TTL of {ttl:?} exceeds the maximum of {MAX_TTL:?}"),
        ));
    }
    Ok(())
}

fn optional_ttl(backend: &'static str, op: Operation, t: Option<Duration>) -> Result<()> {
    match t {
        Some(t) => ttl(backend, op, t),
        None => Ok(()),
    }
}

fn length(backend: &'static str, op: Operation, what: &str, n: usize) -> Result<()> {
    if n == 0 {
        return Err(fail(
            backend,
            op,
            format!("{what} is 0; it must be at least 1"),
        ));
    }
    if n > MAX_COLLECTION_LEN {
        return Err(fail(
            backend,
            op,
            format!("{what} is {n}; the limit is {MAX_COLLECTION_LEN}"),
        ));
    }
    Ok(())
}

// One validator per method, named after it, so a backend (or the rule layer, `Checked`)
// cannot pair a method with the wrong rules.

fn thread(backend: &'static str, op: Operation, thread_id: &str) -> Result<()> {
    key(backend, op, "thread id", thread_id)
}

fn cache_key(backend: &'static str, op: Operation, k: &str) -> Result<()> {
    key(backend, op, "key", k)
}

fn lock_handle(backend: &'static str, op: Operation, lock: &Lock) -> Result<()> {
    key(backend, op, "lock id", &lock.thread_id)?;
    key(backend, op, "lock token", &lock.token)
}

fn value_write(
    backend: &'static str,
    op: Operation,
    k: &str,
    v: &[u8],
    t: Option<Duration>,
) -> Result<()> {
    cache_key(backend, op, k)?;
    value(backend, op, v)?;
    optional_ttl(backend, op, t)
}

/// Rules for `subscribe`: a valid thread id.
pub fn subscribe(backend: &'static str, thread_id: &str) -> Result<()> {
    thread(backend, Operation::Subscribe, thread_id)
}

/// Rules for `unsubscribe`: a valid thread id.
pub fn unsubscribe(backend: &'static str, thread_id: &str) -> Result<()> {
    thread(backend, Operation::Unsubscribe, thread_id)
}

/// Rules for `is_subscribed`: a valid thread id.
pub fn is_subscribed(backend: &'static str, thread_id: &str) -> Result<()> {
    thread(backend, Operation::IsSubscribed, thread_id)
}

/// Rules for `acquire_lock`: a valid lock id and a lock TTL (non-zero, at most [`MAX_TTL`]).
pub fn acquire_lock(backend: &'static str, lock_id: &str, lock_ttl: Duration) -> Result<()> {
    key(backend, Operation::AcquireLock, "lock id", lock_id)?;
    ttl(backend, Operation::AcquireLock, lock_ttl)
}

/// Rules for `release_lock`: the handed-back lock has a valid id and token.
pub fn release_lock(backend: &'static str, lock: &Lock) -> Result<()> {
    lock_handle(backend, Operation::ReleaseLock, lock)
}

/// Rules for `extend_lock`: a valid lock handle and a lock TTL.
pub fn extend_lock(backend: &'static str, lock: &Lock, lock_ttl: Duration) -> Result<()> {
    lock_handle(backend, Operation::ExtendLock, lock)?;
    ttl(backend, Operation::ExtendLock, lock_ttl)
}

/// Rules for `force_release_lock`: a valid lock id.
pub fn force_release_lock(backend: &'static str, lock_id: &str) -> Result<()> {
    key(backend, Operation::ForceReleaseLock, "lock id", lock_id)
}

/// Rules for `lock_info` ([`InspectLocks`](crate::InspectLocks)): a valid lock id.
pub fn lock_info(backend: &'static str, lock_id: &str) -> Result<()> {
    key(backend, Operation::LockInfo, "lock id", lock_id)
}

/// Rules for `get`: a valid key.
pub fn get(backend: &'static str, key: &str) -> Result<()> {
    cache_key(backend, Operation::Get, key)
}

/// Rules for `set`: a valid key, a value of at most [`MAX_VALUE_BYTES`], an optional TTL
/// that is not zero.
pub fn set(backend: &'static str, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
    value_write(backend, Operation::Set, key, value, ttl)
}

/// Rules for `set_if_not_exists`: the same as [`set`].
pub fn set_if_not_exists(
    backend: &'static str,
    key: &str,
    value: &[u8],
    ttl: Option<Duration>,
) -> Result<()> {
    value_write(backend, Operation::SetIfNotExists, key, value, ttl)
}

/// Rules for `delete`: a valid key.
pub fn delete(backend: &'static str, key: &str) -> Result<()> {
    cache_key(backend, Operation::Delete, key)
}

/// Rules for `append_to_list`: a valid key and value, `max_length` in
/// 1..=[`MAX_COLLECTION_LEN`], an optional TTL that is not zero.
pub fn append_to_list(
    backend: &'static str,
    k: &str,
    v: &[u8],
    options: &ListOptions,
) -> Result<()> {
    let op = Operation::AppendToList;
    key(backend, op, "key", k)?;
    value(backend, op, v)?;
    if let Some(n) = options.max_length {
        length(backend, op, "max_length", n)?;
    }
    optional_ttl(backend, op, options.ttl)
}

/// Rules for `get_list`: a valid key.
pub fn get_list(backend: &'static str, key: &str) -> Result<()> {
    cache_key(backend, Operation::GetList, key)
}

/// Rules for `enqueue`: a valid thread id, `max_size` in 1..=[`MAX_COLLECTION_LEN`],
/// timestamps in the `i64` millisecond range, a message of at most [`MAX_VALUE_BYTES`] as JSON.
pub fn enqueue(
    backend: &'static str,
    thread_id: &str,
    entry: &QueueEntry,
    max_size: usize,
) -> Result<()> {
    let op = Operation::Enqueue;
    thread(backend, op, thread_id)?;
    queue_entry(backend, op, entry, max_size)
}

/// Rules for `admit` ([`Dispatch`](crate::Dispatch)): a valid thread id and dedupe key, a
/// dedupe TTL and a lock TTL, and with [`WhenBusy::Queue`] the rules of [`enqueue`].
pub fn admit(backend: &'static str, message: &Admit<'_>) -> Result<()> {
    let op = Operation::Admit;
    thread(backend, op, message.thread_id)?;
    key(backend, op, "dedupe key", message.dedupe_key)?;
    if let Some(read) = message.read {
        key(backend, op, "read key", read)?;
    }
    ttl(backend, op, message.dedupe_ttl)?;
    ttl(backend, op, message.lock_ttl)?;
    match &message.when_busy {
        WhenBusy::Drop => Ok(()),
        WhenBusy::Queue { entry, max_size } => queue_entry(backend, op, entry, *max_size),
    }
}

/// Rules for `release_or_next`: a valid lock handle and a lock TTL.
pub fn release_or_next(backend: &'static str, lock: &Lock, lock_ttl: Duration) -> Result<()> {
    lock_handle(backend, Operation::ReleaseOrNext, lock)?;
    ttl(backend, Operation::ReleaseOrNext, lock_ttl)
}

/// Rules for `release_or_next_with`: those of [`release_or_next`], and those of
/// [`set_fenced`] for the write.
pub fn release_or_next_with(
    backend: &'static str,
    lock: &Lock,
    lock_ttl: Duration,
    write: &crate::dispatch::FencedSet<'_>,
) -> Result<()> {
    release_or_next(backend, lock, lock_ttl)?;
    fenced_write(
        backend,
        Operation::ReleaseOrNext,
        lock,
        write.key,
        write.value,
        write.ttl,
    )
}

/// Rules for `set_fenced`: a valid lock handle and the rules of [`set`], with the key at most
/// [`MAX_KEY_BYTES`] minus the length of [`FENCE_RECORD_PREFIX`] (so every backend, and the
/// step-by-step version's fence record, accepts the same keys).
pub fn set_fenced(
    backend: &'static str,
    lock: &Lock,
    k: &str,
    v: &[u8],
    t: Option<Duration>,
) -> Result<()> {
    fenced_write(backend, Operation::SetFenced, lock, k, v, t)
}

fn fenced_write(
    backend: &'static str,
    op: Operation,
    lock: &Lock,
    k: &str,
    v: &[u8],
    t: Option<Duration>,
) -> Result<()> {
    lock_handle(backend, op, lock)?;
    let limit = MAX_KEY_BYTES - FENCE_RECORD_PREFIX.len();
    if k.len() > limit {
        return Err(fail(
            backend,
            op,
            format!(
                "key is {} bytes; a fenced key may take at most {limit}",
                k.len()
            ),
        ));
    }
    value_write(backend, op, k, v, t)
}

fn queue_entry(
    backend: &'static str,
    op: Operation,
    entry: &QueueEntry,
    max_size: usize,
) -> Result<()> {
    length(backend, op, "max_size", max_size)?;
    if entry.expires_at > i64::MAX as u64 || entry.enqueued_at > i64::MAX as u64 {
        return Err(fail(
            backend,
            op,
            "queue entry timestamps exceed the i64 millisecond range".into(),
        ));
    }
    // Counted, not built: the backend serializes the message itself, and only if it is
    // queued at all (an admitted message never is).
    let size = crate::json::serialized_len(&entry.message).map_err(|e| {
        fail(
            backend,
            op,
            format!("queue message is not serializable: {e}"),
        )
    })?;
    if size > MAX_VALUE_BYTES {
        return Err(fail(
            backend,
            op,
            format!("queue message is {size} bytes; the limit is {MAX_VALUE_BYTES}"),
        ));
    }
    Ok(())
}

/// Rules for `dequeue`: a valid thread id.
pub fn dequeue(backend: &'static str, thread_id: &str) -> Result<()> {
    thread(backend, Operation::Dequeue, thread_id)
}

/// Rules for `queue_depth`: a valid thread id.
pub fn queue_depth(backend: &'static str, thread_id: &str) -> Result<()> {
    thread(backend, Operation::QueueDepth, thread_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_sub_millisecond_ttls_up() {
        assert_eq!(duration_ms(Duration::from_nanos(1)), 1);
        assert_eq!(duration_ms(Duration::from_millis(7)), 7);
        assert_eq!(duration_ms(Duration::from_micros(7001)), 8);
    }

    #[test]
    fn expiry_overflow_is_invalid_input() {
        let op = Operation::Set;
        let err = expiry_ms("t", op, u64::MAX - 5, Duration::from_millis(10)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert_eq!((err.backend(), err.operation()), ("t", Some(op)));
        let err = expiry_ms("t", op, i64::MAX as u64, Duration::from_millis(1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert_eq!(
            expiry_ms("t", op, 10, Duration::from_millis(5)).unwrap(),
            15
        );
        assert_eq!(optional_expiry_ms("t", op, 10, None).unwrap(), None);
    }

    #[test]
    fn keys() {
        let op = Operation::Get;
        assert!(key("t", op, "key", "a:b.c").is_ok());
        assert!(key("t", op, "key", "").is_err());
        assert!(key("t", op, "key", "a\0b").is_err());
        assert!(key("t", op, "key", &"x".repeat(MAX_KEY_BYTES)).is_ok());
        let err = key("t", op, "key", &"x".repeat(MAX_KEY_BYTES + 1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("1025 bytes"), "{err}");
    }

    #[test]
    fn ttls() {
        let op = Operation::Set;
        assert!(ttl("t", op, Duration::ZERO).is_err());
        assert!(ttl("t", op, MAX_TTL).is_ok());
        assert!(ttl("t", op, MAX_TTL + Duration::from_millis(1)).is_err());
        assert!(ttl("t", op, Duration::MAX).is_err());
    }
}
