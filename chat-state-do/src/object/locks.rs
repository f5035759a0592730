//! `acquire_lock`, `release_lock`, `extend_lock`, `force_release_lock`: one row per held
//! lock (token, expiry, fence), expired rows counting as free.

use std::time::Duration;

use chat_state_core::{Error, ErrorKind, Lock, Operation, new_lock_token, validate};
use worker::SqlStorageValue;

use super::ChatStateDO;
use super::sql::{Reply, backend_err, int, ms};
use crate::BACKEND;
use crate::protocol::Acquired;

/// The handle a caller holds, as the validators take it; only id and token matter here.
fn handle(lock_id: String, token: String) -> Lock {
    Lock {
        thread_id: lock_id,
        token,
        expires_at: 0,
        fence: 0,
    }
}

impl ChatStateDO {
    /// Takes the lock if it is free or expired, storing the caller's token (or a fresh one if
    /// the request carries none) with the next fence; answers `null` if it is held.
    pub(super) fn acquire_lock(
        &self,
        lock_id: &str,
        ttl_ms: u64,
        token: Option<String>,
        now: u64,
    ) -> Result<Reply, Error> {
        let o = Operation::AcquireLock;
        let ttl = Duration::from_millis(ttl_ms);
        validate::acquire_lock(BACKEND, lock_id, ttl)?;
        if let Some(token) = &token {
            validate::key(BACKEND, o, "lock token", token)?;
        }
        let expires = validate::expiry_ms(BACKEND, o, now, ttl)?;
        let err = |e| backend_err(o, "acquiring a lock", e);
        let held = self
            .sql
            .exec(
                "SELECT 1 FROM locks WHERE lock_id = ? AND expires_at > ?",
                vec![lock_id.into(), ms(now)],
            )
            .map_err(err)?
            .raw()
            .next()
            .is_some();
        if held {
            return Reply::null();
        }
        let fence = self.next_fence()?;
        let token = match token {
            Some(token) => token,
            None => new_lock_token().map_err(|e| e.context(BACKEND, o))?,
        };
        self.sql
            .exec(
                "INSERT OR REPLACE INTO locks (lock_id, token, expires_at, fence) \
                 VALUES (?, ?, ?, ?)",
                vec![
                    lock_id.into(),
                    token.as_str().into(),
                    ms(expires),
                    SqlStorageValue::Integer(fence as i64),
                ],
            )
            .map_err(err)?;
        Ok(Reply::json(&Acquired { token, fence })?.arming(Some(expires)))
    }

    /// One counter for the whole object: strictly increasing overall implies strictly
    /// increasing per lock id, and nothing per id must outlive the lock (lock ids like
    /// `chat:callback:<token>` are used once).
    fn next_fence(&self) -> Result<u64, Error> {
        let o = Operation::AcquireLock;
        let err = |e| backend_err(o, "drawing a fence", e);
        let mut rows = self
            .sql
            .exec(
                "INSERT INTO meta (k, v) VALUES ('fence', 1) \
                 ON CONFLICT (k) DO UPDATE SET v = v + 1 RETURNING v",
                None,
            )
            .map_err(err)?
            .raw();
        match rows.next().transpose().map_err(err)? {
            Some(row) => Ok(int(row.first()) as u64),
            None => Err(Error::new(
                ErrorKind::Backend,
                "the fence counter update returned no row",
            )
            .context(BACKEND, o)),
        }
    }

    /// Deletes the lock if `token` holds it; a no-op otherwise.
    pub(super) fn release_lock(&self, lock_id: String, token: String) -> Result<Reply, Error> {
        let lock = handle(lock_id, token);
        validate::release_lock(BACKEND, &lock)?;
        self.sql
            .exec(
                "DELETE FROM locks WHERE lock_id = ? AND token = ?",
                vec![lock.thread_id.into(), lock.token.into()],
            )
            .map_err(|e| backend_err(Operation::ReleaseLock, "releasing a lock", e))?;
        Reply::null()
    }

    /// Moves the expiry to now + TTL if `token` is the live holder; answers whether it did.
    pub(super) fn extend_lock(
        &self,
        lock_id: String,
        token: String,
        ttl_ms: u64,
        now: u64,
    ) -> Result<Reply, Error> {
        let o = Operation::ExtendLock;
        let ttl = Duration::from_millis(ttl_ms);
        let lock = handle(lock_id, token);
        validate::extend_lock(BACKEND, &lock, ttl)?;
        let expires = validate::expiry_ms(BACKEND, o, now, ttl)?;
        let extended = self
            .sql
            .exec(
                "UPDATE locks SET expires_at = ? \
                 WHERE lock_id = ? AND token = ? AND expires_at > ? RETURNING 1",
                vec![
                    ms(expires),
                    lock.thread_id.into(),
                    lock.token.into(),
                    ms(now),
                ],
            )
            .map_err(|e| backend_err(o, "extending a lock", e))?
            .raw()
            .next()
            .is_some();
        Ok(Reply::json(&extended)?.arming(extended.then_some(expires)))
    }

    pub(super) fn force_release_lock(&self, lock_id: &str) -> Result<Reply, Error> {
        validate::force_release_lock(BACKEND, lock_id)?;
        self.sql
            .exec("DELETE FROM locks WHERE lock_id = ?", vec![lock_id.into()])
            .map_err(|e| backend_err(Operation::ForceReleaseLock, "force-releasing a lock", e))?;
        Reply::null()
    }
}
