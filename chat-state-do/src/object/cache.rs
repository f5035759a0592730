//! `get`, `set`, `set_if_not_exists`, `delete`: one row per key, with an optional expiry.

use std::time::Duration;

use chat_state_core::{Error, Operation, validate};
use worker::SqlStorageValue;

use super::ChatStateDO;
use super::sql::{Reply, backend_err, blob, ms, optional_ms};
use crate::BACKEND;
use crate::protocol::b64;

impl ChatStateDO {
    /// The live value as base64, or `null`.
    pub(super) fn get(&self, key: &str, now: u64) -> Result<Reply, Error> {
        let o = Operation::Get;
        validate::get(BACKEND, key)?;
        let err = |e| backend_err(o, "reading the cache", e);
        let mut rows = self
            .sql
            .exec(
                "SELECT value FROM cache WHERE key = ? \
                 AND (expires_at IS NULL OR expires_at > ?)",
                vec![key.into(), ms(now)],
            )
            .map_err(err)?
            .raw();
        match rows.next().transpose().map_err(err)? {
            Some(row) => Reply::json(&b64::encode(&blob(row.first(), o)?)),
            None => Reply::null(),
        }
    }

    pub(super) fn set(
        &self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        now: u64,
    ) -> Result<Reply, Error> {
        let o = Operation::Set;
        let ttl = ttl_ms.map(Duration::from_millis);
        validate::set(BACKEND, &key, &value, ttl)?;
        let expires = validate::optional_expiry_ms(BACKEND, o, now, ttl)?;
        self.cache_put(o, key, value, expires)?;
        Ok(Reply::null()?.arming(expires))
    }

    /// Stores the value only if no live row exists; answers whether it did.
    pub(super) fn set_if_not_exists(
        &self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        now: u64,
    ) -> Result<Reply, Error> {
        let o = Operation::SetIfNotExists;
        let ttl = ttl_ms.map(Duration::from_millis);
        validate::set_if_not_exists(BACKEND, &key, &value, ttl)?;
        let expires = validate::optional_expiry_ms(BACKEND, o, now, ttl)?;
        // An expired row counts as absent (contract rule 5); single-threaded object, no
        // await between read and write, so exactly one concurrent caller wins.
        let live = self
            .sql
            .exec(
                "SELECT 1 FROM cache WHERE key = ? \
                 AND (expires_at IS NULL OR expires_at > ?)",
                vec![key.as_str().into(), ms(now)],
            )
            .map_err(|e| backend_err(o, "reading the cache", e))?
            .raw()
            .next()
            .is_some();
        if live {
            return Reply::json(&false);
        }
        self.cache_put(o, key, value, expires)?;
        Ok(Reply::json(&true)?.arming(expires))
    }

    pub(super) fn delete(&self, key: &str) -> Result<Reply, Error> {
        validate::delete(BACKEND, key)?;
        self.sql
            .exec("DELETE FROM cache WHERE key = ?", vec![key.into()])
            .map_err(|e| backend_err(Operation::Delete, "deleting from the cache", e))?;
        Reply::null()
    }

    /// Writes value and expiry, replacing any row.
    fn cache_put(
        &self,
        o: Operation,
        key: String,
        value: Vec<u8>,
        expires: Option<u64>,
    ) -> Result<(), Error> {
        self.sql
            .exec(
                "INSERT OR REPLACE INTO cache (key, value, expires_at) VALUES (?, ?, ?)",
                vec![
                    key.into(),
                    SqlStorageValue::Blob(value),
                    optional_ms(expires),
                ],
            )
            .map_err(|e| backend_err(o, "writing the cache", e))?;
        Ok(())
    }
}
