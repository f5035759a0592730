//! `admit`, `releaseOrNext`, `setFenced`: the dispatch operations of
//! [`chat_state_core::Dispatch`] (`admit` with an optional read, `releaseOrNext` with an
//! optional fenced write: `release_or_next_with`), each one call that runs its statements with no await in
//! between, so it is one atomic step of the object (see the module docs of `object`).
//!
//! They are built from the same helpers as the primitive operations (the dedupe claim is
//! `setIfNotExists`'s, the lock try `acquireLock`'s, the append `enqueue`'s, the handoff
//! `dequeue`'s, the value write `set`'s), so each rule lives in one place. The one thing of
//! their own is the fence record of `setFenced`: a row of the `fences` table (schema version
//! 3) per key, with the lock id and fence of the last fenced write and the value's expiry.

use chat_state_core::dispatch::{DEDUPE_VALUE, FencedSet, is_stale};
use chat_state_core::{Admit, Error, Lock, Operation, WhenBusy, validate};
use js_sys::Array;
use wasm_bindgen::prelude::*;

use super::locks::handle;
use super::queues::parse_entry;
use super::sql::{Stmt, backend_err, ms, optional_ms};
use super::{ChatStateDO, clock, throw};
use crate::BACKEND;
use crate::protocol::{
    ADMIT_ADMITTED, ADMIT_DROPPED, ADMIT_DUPLICATE, ADMIT_QUEUED, HANDOFF_NEXT, HANDOFF_NOT_HOLDER,
    HANDOFF_RELEASED,
};

fn absent(v: &JsValue) -> bool {
    v.is_null() || v.is_undefined()
}

fn tag(t: &str) -> JsValue {
    JsValue::from_str(t)
}

#[wasm_bindgen]
impl ChatStateDO {
    /// `admit(version, threadId, dedupeKey | null, dedupeTtlMs | null, lockTtlMs, token,
    /// entryJson | null, maxSize | null, readKey | null, now?)` → `["duplicate"]`,
    /// `["dropped"]`, `["queued", depth]` or `["admitted", fence, subscribed, value]`, the
    /// value of `readKey` read under the new lock (`null` if it is missing or there is no
    /// read key).
    ///
    /// Claims `dedupeKey` (as `setIfNotExists` with [`DEDUPE_VALUE`]); if it was live,
    /// nothing changes. Then tries the thread's lock for `token` (as `acquireLock`); if it is
    /// held, appends the entry (as `enqueue`, keeping `maxSize` live entries) or, without an
    /// entry, drops the message. A `null` dedupe key skips the claim: the adapter's form for
    /// a dedupe key that routes to another object, where it made the claim first.
    #[wasm_bindgen(js_name = admit)]
    #[allow(clippy::too_many_arguments)] // one argument per protocol field, as every method
    pub fn rpc_admit(
        &self,
        version: f64,
        thread_id: &JsValue,
        dedupe_key: &JsValue,
        dedupe_ttl_ms: Option<f64>,
        lock_ttl_ms: f64,
        token: &JsValue,
        entry: &JsValue,
        max_size: Option<f64>,
        read_key: &JsValue,
        now: Option<f64>,
    ) -> Result<JsValue, JsError> {
        let call = self.begin(Operation::Admit, version, now)?;
        let o = call.op;
        let thread = call.string("thread id", thread_id).map_err(throw)?;
        let claim = if absent(dedupe_key) {
            None
        } else {
            Some(call.string("dedupe key", dedupe_key).map_err(throw)?)
        };
        let dedupe_ttl = call.optional_ttl(dedupe_ttl_ms).map_err(throw)?;
        if claim.is_some() != dedupe_ttl.is_some() {
            return Err(throw(
                Error::invalid_input("a dedupe key and its TTL come together or not at all")
                    .context(BACKEND, o),
            ));
        }
        let lock_ttl = call.ttl(lock_ttl_ms).map_err(throw)?;
        call.key("lock token", token).map_err(throw)?;
        // The rules of core's `validate::admit`. Without a claim, the thread id stands in for
        // the key (it passes the same key rules) so one call checks everything else.
        let mut message = Admit::new(&thread, claim.as_deref().unwrap_or(&thread))
            .lock_ttl(lock_ttl)
            .dedupe_ttl(dedupe_ttl.unwrap_or(lock_ttl));
        if !absent(entry) {
            let text = call.string("queue entry", entry).map_err(throw)?;
            let max_size = call
                .count("max_size", max_size.unwrap_or(f64::NAN))
                .map_err(throw)?;
            message = message.queue_when_busy(parse_entry(o, &text).map_err(throw)?, max_size);
        }
        let read = if absent(read_key) {
            None
        } else {
            Some(call.string("read key", read_key).map_err(throw)?)
        };
        if let Some(read) = &read {
            message = message.read(read);
        }
        validate::admit(BACKEND, &message).map_err(throw)?;
        // Every expiry is computed before the first write, so a bad TTL changes nothing.
        let now = call.now();
        let lock_expires = validate::expiry_ms(BACKEND, o, now, lock_ttl).map_err(throw)?;
        let claim_expires = dedupe_ttl
            .map(|ttl| validate::expiry_ms(BACKEND, o, now, ttl))
            .transpose()
            .map_err(throw)?;
        if claim.is_some() {
            let value = js_sys::Uint8Array::from(DEDUPE_VALUE);
            if !self
                .claim(o, dedupe_key, &value, now, claim_expires)
                .map_err(throw)?
            {
                return Ok(Array::of1(&tag(ADMIT_DUPLICATE)).into());
            }
        }
        if let Some(fence) = self
            .try_acquire(o, thread_id, token, now, lock_expires)
            .map_err(throw)?
        {
            let subscribed = self.subscribed(o, thread_id).map_err(throw)?;
            let value = match read {
                Some(_) => self.read(o, read_key, now).map_err(throw)?,
                None => JsValue::NULL,
            };
            return Ok(Array::of4(
                &tag(ADMIT_ADMITTED),
                &JsValue::from_f64(fence as f64),
                &JsValue::from_bool(subscribed),
                &value,
            )
            .into());
        }
        Ok(match &message.when_busy {
            WhenBusy::Drop => Array::of1(&tag(ADMIT_DROPPED)),
            WhenBusy::Queue { entry, max_size } => {
                let depth = self
                    .append(o, thread_id, entry, *max_size, now)
                    .map_err(throw)?;
                Array::of2(&tag(ADMIT_QUEUED), &JsValue::from_f64(depth as f64))
            }
        }
        .into())
    }

    /// `releaseOrNext(version, lockId, token, ttlMs, writeKey | null, value | null,
    /// writeTtlMs | null, fence | null, now?)` → `["next", entryJson]`, `["released"]` or
    /// `["notHolder"]`.
    ///
    /// For the live holder `token`: removes the oldest live queue entry (and the dead ones
    /// before it, as `dequeue`) and moves the lock's expiry to now + TTL (as `extendLock`),
    /// or, with no live entry, deletes the lock. Anyone else changes nothing.
    ///
    /// With a write key, it first stores `value` there as `setFenced` does under (`lockId`,
    /// `fence`), in the same step: a refused (stale) write changes nothing and answers
    /// `["notHolder"]` (`Dispatch::release_or_next_with`).
    #[wasm_bindgen(js_name = releaseOrNext)]
    #[allow(clippy::too_many_arguments)] // one argument per protocol field, as every method
    pub fn rpc_release_or_next(
        &self,
        version: f64,
        lock_id: &JsValue,
        token: &JsValue,
        ttl_ms: f64,
        write_key: &JsValue,
        value: &JsValue,
        write_ttl_ms: Option<f64>,
        fence: Option<f64>,
        now: Option<f64>,
    ) -> Result<JsValue, JsError> {
        let call = self.begin(Operation::ReleaseOrNext, version, now)?;
        let o = call.op;
        let mut lock = handle(
            call.string("lock id", lock_id).map_err(throw)?,
            call.string("lock token", token).map_err(throw)?,
        );
        let ttl = call.ttl(ttl_ms).map_err(throw)?;
        let write = if absent(write_key) {
            validate::release_or_next(BACKEND, &lock, ttl).map_err(throw)?;
            None
        } else {
            let k = call.string("write key", write_key).map_err(throw)?;
            let write_ttl = call.optional_ttl(write_ttl_ms).map_err(throw)?;
            lock.fence = clock::whole(o, "the fence", fence.unwrap_or(f64::NAN)).map_err(throw)?;
            // The value's size is checked without its bytes; the rest of the rules here.
            let set = FencedSet {
                key: &k,
                value: &[],
                ttl: write_ttl,
            };
            validate::release_or_next_with(BACKEND, &lock, ttl, &set).map_err(throw)?;
            call.value(value).map_err(throw)?;
            Some((k, write_ttl))
        };
        let now = call.now();
        let expires = validate::expiry_ms(BACKEND, o, now, ttl).map_err(throw)?;
        if let Some((k, write_ttl)) = write {
            let write_expires =
                validate::optional_expiry_ms(BACKEND, o, now, write_ttl).map_err(throw)?;
            let stored = self
                .fenced_write(o, write_key, &k, value, &lock, lock_id, now, write_expires)
                .map_err(throw)?;
            if !stored {
                return Ok(Array::of1(&tag(HANDOFF_NOT_HOLDER)).into());
            }
        }
        // The common case first, in one statement: the live holder with no live entry
        // queued releases (the statement checks both).
        let released = self
            .sql
            .one3(Stmt::RELEASE_IF_DRAINED, lock_id, token, &ms(now))
            .map_err(|e| throw(backend_err(o, "releasing a lock", e)))?;
        if !released.is_undefined() {
            return Ok(Array::of1(&tag(HANDOFF_RELEASED)).into());
        }
        // Not released: either not the holder, or a live entry waits. The extension is the
        // holder check (it only matches the live holder's row).
        if !self
            .extend_held(o, lock_id, token, now, expires)
            .map_err(throw)?
        {
            return Ok(Array::of1(&tag(HANDOFF_NOT_HOLDER)).into());
        }
        let next = self.take_next(o, lock_id, now).map_err(throw)?;
        if absent(&next) {
            // Unreachable while the step is atomic (the first statement saw a live entry);
            // released anyway rather than leaving the caller holding an empty queue.
            self.release_held(o, lock_id, token).map_err(throw)?;
            return Ok(Array::of1(&tag(HANDOFF_RELEASED)).into());
        }
        self.arm(Some(expires));
        Ok(Array::of2(&tag(HANDOFF_NEXT), &next).into())
    }

    /// `setFenced(version, key, value, ttlMs | null, lockId, token, fence, now?)` → `true`
    /// if stored, `false` if stale.
    ///
    /// Stale is core's [`is_stale`] on the key's live fence record; otherwise the value is
    /// stored as `set` stores it and the record becomes (`lockId`, `fence`) with the same
    /// expiry. `token` is only checked to be a lock handle's: staleness is decided by the
    /// fence alone, which also works when the lock lives on another object.
    #[wasm_bindgen(js_name = setFenced)]
    #[allow(clippy::too_many_arguments)] // one argument per protocol field, as every method
    pub fn rpc_set_fenced(
        &self,
        version: f64,
        key: &JsValue,
        value: &JsValue,
        ttl_ms: Option<f64>,
        lock_id: &JsValue,
        token: &JsValue,
        fence: f64,
        now: Option<f64>,
    ) -> Result<JsValue, JsError> {
        let call = self.begin(Operation::SetFenced, version, now)?;
        let o = call.op;
        let k = call.string("key", key).map_err(throw)?;
        let ttl = call.optional_ttl(ttl_ms).map_err(throw)?;
        let mut lock = handle(
            call.string("lock id", lock_id).map_err(throw)?,
            call.string("lock token", token).map_err(throw)?,
        );
        lock.fence = clock::whole(o, "the fence", fence).map_err(throw)?;
        // The value's size is checked without its bytes; the rest of the rule here.
        validate::set_fenced(BACKEND, &lock, &k, &[], ttl).map_err(throw)?;
        call.value(value).map_err(throw)?;
        let now = call.now();
        let expires = validate::optional_expiry_ms(BACKEND, o, now, ttl).map_err(throw)?;
        let stored = self
            .fenced_write(o, key, &k, value, &lock, lock_id, now, expires)
            .map_err(throw)?;
        Ok(JsValue::from_bool(stored))
    }
}

impl ChatStateDO {
    /// The fenced write of `setFenced` and `releaseOrNext`: unless core's [`is_stale`] holds
    /// for `key`'s record live at `now`, stores the value as `set` does and the record
    /// (`lock_id`, `lock.fence`) with the same expiry; whether it stored. `k` is `key` as
    /// text, for errors.
    #[allow(clippy::too_many_arguments)] // the write's parts, each as the caller has it
    fn fenced_write(
        &self,
        o: Operation,
        key: &JsValue,
        k: &str,
        value: &JsValue,
        lock: &Lock,
        lock_id: &JsValue,
        now: u64,
        expires: Option<u64>,
    ) -> Result<bool, Error> {
        let record = self
            .sql
            .row2(Stmt::FENCE_READ, key, &ms(now))
            .map_err(|e| backend_err(o, "reading a fence record", e))?;
        let record = fence_record(o, k, &record)?;
        if is_stale(record.as_ref().map(|(id, f)| (id.as_str(), *f)), lock) {
            return Ok(false);
        }
        self.store(o, key, value, expires)?;
        self.sql
            .run4(
                Stmt::FENCE_WRITE,
                key,
                lock_id,
                &JsValue::from_f64(lock.fence as f64),
                &optional_ms(expires),
            )
            .map_err(|e| backend_err(o, "writing a fence record", e))?;
        Ok(true)
    }
}

/// A fence record row (`[lock_id, fence]`, or `undefined` for none) as lock id and fence; a
/// row of another shape was not written by this code, and is reported, not guessed at.
fn fence_record(o: Operation, key: &str, row: &JsValue) -> Result<Option<(String, u64)>, Error> {
    if row.is_undefined() {
        return Ok(None);
    }
    let row = Array::from(row);
    let lock_id = row.get(0).as_string();
    let fence = row
        .get(1)
        .as_f64()
        .filter(|f| *f >= 0.0 && f.fract() == 0.0);
    match (lock_id, fence) {
        (Some(lock_id), Some(fence)) => Ok(Some((lock_id, fence as u64))),
        _ => Err(Error::corrupt(format!(
            "the fence record of key {key:?} is malformed (lock id {:?}, fence {:?}); it was \
             not written by chat-state-do, delete it from the fences table",
            row.get(0),
            row.get(1)
        ))
        .context(BACKEND, o)),
    }
}
