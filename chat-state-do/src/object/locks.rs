//! `acquireLock`, `releaseLock`, `extendLock`, `forceReleaseLock`: one row per held lock
//! (token, expiry, fence), expired rows counting as free.
//!
//! Fences come from one counter per object, stored in `meta` under `fence`: every fence ever
//! handed out is at most its value. An instance reserves fences in blocks (one statement per
//! [`FENCE_BLOCK`] acquisitions) and hands them out from memory, so an acquisition is the one
//! upsert. A new instance (after eviction or a restart) reserves a fresh block above
//! everything before it, so fences keep growing; the numbers it skips are never issued.

use chat_state_core::{Error, ErrorKind, Lock, Operation, validate};
use wasm_bindgen::prelude::*;

use super::sql::{Stmt, backend_err, int, ms};
use super::{ChatStateDO, throw};
use crate::BACKEND;

/// Fences reserved per statement.
const FENCE_BLOCK: u64 = 256;

/// The handle a caller holds, as the validators take it; only id and token matter here.
pub(super) fn handle(lock_id: String, token: String) -> Lock {
    Lock {
        thread_id: lock_id,
        token,
        expires_at: 0,
        fence: 0,
    }
}

#[wasm_bindgen]
impl ChatStateDO {
    /// `acquireLock(version, lockId, ttlMs, token, now?)` → the fence, or `null` if the lock
    /// is held. Takes the lock if it is free or expired, storing the caller's token.
    #[wasm_bindgen(js_name = acquireLock)]
    pub fn rpc_acquire_lock(
        &self,
        version: f64,
        lock_id: &JsValue,
        ttl_ms: f64,
        token: &JsValue,
        now: Option<f64>,
    ) -> Result<JsValue, JsError> {
        let call = self.begin(Operation::AcquireLock, version, now)?;
        let o = call.op;
        let id = call.string("lock id", lock_id).map_err(throw)?;
        let ttl = call.ttl(ttl_ms).map_err(throw)?;
        validate::acquire_lock(BACKEND, &id, ttl).map_err(throw)?;
        call.key("lock token", token).map_err(throw)?;
        let now = call.now();
        let expires = validate::expiry_ms(BACKEND, o, now, ttl).map_err(throw)?;
        Ok(match self.try_acquire(o, lock_id, token, now, expires) {
            Ok(Some(fence)) => JsValue::from_f64(fence as f64),
            Ok(None) => JsValue::NULL,
            Err(e) => return Err(throw(e)),
        })
    }

    /// `releaseLock(version, lockId, token, now?)`: deletes the lock if `token` holds it; a
    /// no-op otherwise.
    #[wasm_bindgen(js_name = releaseLock)]
    pub fn rpc_release_lock(
        &self,
        version: f64,
        lock_id: &JsValue,
        token: &JsValue,
        now: Option<f64>,
    ) -> Result<(), JsError> {
        let call = self.begin(Operation::ReleaseLock, version, now)?;
        let lock = handle(
            call.string("lock id", lock_id).map_err(throw)?,
            call.string("lock token", token).map_err(throw)?,
        );
        validate::release_lock(BACKEND, &lock).map_err(throw)?;
        self.release_held(call.op, lock_id, token).map_err(throw)
    }

    /// `extendLock(version, lockId, token, ttlMs, now?)` → whether it moved the expiry to
    /// now + TTL (only for the live holder).
    #[wasm_bindgen(js_name = extendLock)]
    pub fn rpc_extend_lock(
        &self,
        version: f64,
        lock_id: &JsValue,
        token: &JsValue,
        ttl_ms: f64,
        now: Option<f64>,
    ) -> Result<bool, JsError> {
        let call = self.begin(Operation::ExtendLock, version, now)?;
        let o = call.op;
        let lock = handle(
            call.string("lock id", lock_id).map_err(throw)?,
            call.string("lock token", token).map_err(throw)?,
        );
        let ttl = call.ttl(ttl_ms).map_err(throw)?;
        validate::extend_lock(BACKEND, &lock, ttl).map_err(throw)?;
        let now = call.now();
        let expires = validate::expiry_ms(BACKEND, o, now, ttl).map_err(throw)?;
        let extended = self
            .extend_held(o, lock_id, token, now, expires)
            .map_err(throw)?;
        if extended {
            self.arm(Some(expires));
        }
        Ok(extended)
    }

    /// `forceReleaseLock(version, lockId, now?)`: deletes whatever lock is held.
    #[wasm_bindgen(js_name = forceReleaseLock)]
    pub fn rpc_force_release_lock(
        &self,
        version: f64,
        lock_id: &JsValue,
        now: Option<f64>,
    ) -> Result<(), JsError> {
        let call = self.begin(Operation::ForceReleaseLock, version, now)?;
        let id = call.string("lock id", lock_id).map_err(throw)?;
        validate::force_release_lock(BACKEND, &id).map_err(throw)?;
        self.sql
            .run1(Stmt::FORCE_RELEASE, lock_id)
            .map_err(|e| throw(backend_err(call.op, "force-releasing a lock", e)))?;
        Ok(())
    }
}

impl ChatStateDO {
    /// Takes `lock_id` for `token` until `expires` if it is free or expired at `now`: the
    /// fence it was taken with, or `None` if it is held. Shared by `acquireLock` and `admit`,
    /// so both follow the same token, expiry and fence rules.
    pub(super) fn try_acquire(
        &self,
        o: Operation,
        lock_id: &JsValue,
        token: &JsValue,
        now: u64,
        expires: u64,
    ) -> Result<Option<u64>, Error> {
        let fence = self.next_fence(o)?;
        let row = self
            .sql
            .one5(
                Stmt::ACQUIRE,
                lock_id,
                token,
                &ms(expires),
                &JsValue::from_f64(fence as f64),
                &ms(now),
            )
            .map_err(|e| backend_err(o, "acquiring a lock", e))?;
        if row.is_undefined() {
            return Ok(None);
        }
        // Only a fence that was stored is spent; a failed try hands the same one out next.
        let (_, limit) = self.fences.get();
        self.fences.set((fence + 1, limit));
        self.arm(Some(expires));
        Ok(Some(fence))
    }

    /// Moves the expiry of `lock_id` to `expires` if `token` is its holder, unexpired at
    /// `now`; whether it did. Does not arm the alarm: `releaseOrNext` may delete the row in
    /// the same call, so each caller arms for what it keeps.
    pub(super) fn extend_held(
        &self,
        o: Operation,
        lock_id: &JsValue,
        token: &JsValue,
        now: u64,
        expires: u64,
    ) -> Result<bool, Error> {
        let row = self
            .sql
            .one4(Stmt::EXTEND, &ms(expires), lock_id, token, &ms(now))
            .map_err(|e| backend_err(o, "extending a lock", e))?;
        Ok(!row.is_undefined())
    }

    /// Deletes `lock_id` if `token` holds it.
    pub(super) fn release_held(
        &self,
        o: Operation,
        lock_id: &JsValue,
        token: &JsValue,
    ) -> Result<(), Error> {
        self.sql
            .run2(Stmt::RELEASE, lock_id, token)
            .map_err(|e| backend_err(o, "releasing a lock", e))
    }

    /// The next fence this instance may hand out, reserving a new block when it has none
    /// left. One counter for the whole object: strictly increasing overall implies strictly
    /// increasing per lock id, and nothing per id must outlive the lock (lock ids like
    /// `chat:callback:<token>` are used once).
    fn next_fence(&self, o: Operation) -> Result<u64, Error> {
        let (next, limit) = self.fences.get();
        if next <= limit {
            return Ok(next);
        }
        let reserved = self
            .sql
            .one1(Stmt::RESERVE_FENCES, &JsValue::from_f64(FENCE_BLOCK as f64))
            .map_err(|e| backend_err(o, "reserving fences", e))?;
        let limit = int(&reserved)
            .filter(|l| *l >= FENCE_BLOCK)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Backend,
                    "the fence counter in the meta table holds no valid number; do not edit it",
                )
                .context(BACKEND, o)
            })?;
        let next = limit - FENCE_BLOCK + 1;
        self.fences.set((next, limit));
        Ok(next)
    }
}
