//! `append_to_list`, `get_list`: a header row per list (its expiry) plus one row per item.
//! The header's expiry gates the items.

use std::time::Duration;

use chat_state_core::{Error, ListOptions, Operation, validate};
use worker::SqlStorageValue;

use super::ChatStateDO;
use super::sql::{Reply, backend_err, blob, ms, optional_int, optional_ms};
use crate::BACKEND;
use crate::protocol::b64;

impl ChatStateDO {
    /// Appends one item (trimming to `max_length`, newest kept), setting the list's expiry
    /// if a TTL is given.
    pub(super) fn append_to_list(
        &self,
        key: String,
        value: Vec<u8>,
        max_length: Option<u64>,
        ttl_ms: Option<u64>,
        now: u64,
    ) -> Result<Reply, Error> {
        let o = Operation::AppendToList;
        let options = ListOptions::from_parts(
            max_length.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            ttl_ms.map(Duration::from_millis),
        );
        validate::append_to_list(BACKEND, &key, &value, &options)?;
        let expires = validate::optional_expiry_ms(BACKEND, o, now, options.ttl)?;
        let arm = self.list_append(key, value, options.max_length, expires, now)?;
        Ok(Reply::null()?.arming(arm))
    }

    /// The live list's items as base64, oldest first; an expired list reads as empty even
    /// before the alarm has deleted it.
    pub(super) fn get_list(&self, key: &str, now: u64) -> Result<Reply, Error> {
        let o = Operation::GetList;
        validate::get_list(BACKEND, key)?;
        let err = |e| backend_err(o, "reading a list", e);
        let rows = self
            .sql
            .exec(
                "SELECT i.value FROM list_items i JOIN lists l ON l.key = i.key \
                 WHERE i.key = ? AND (l.expires_at IS NULL OR l.expires_at > ?) \
                 ORDER BY i.seq",
                vec![key.into(), ms(now)],
            )
            .map_err(err)?
            .raw();
        let mut items = Vec::new();
        for row in rows {
            let row = row.map_err(err)?;
            items.push(b64::encode(&blob(row.first(), o)?));
        }
        Reply::json(&items)
    }

    /// Appends one item; returns the list's expiry if it has one (for the alarm).
    fn list_append(
        &self,
        key: String,
        value: Vec<u8>,
        max_length: Option<usize>,
        new_expiry: Option<u64>,
        now: u64,
    ) -> Result<Option<u64>, Error> {
        let o = Operation::AppendToList;
        let err = |e| backend_err(o, "appending to a list", e);
        let sql = &self.sql;
        let mut rows = sql
            .exec(
                "SELECT expires_at FROM lists WHERE key = ?",
                vec![key.as_str().into()],
            )
            .map_err(err)?
            .raw();
        let current = rows
            .next()
            .transpose()
            .map_err(err)?
            .and_then(|row| optional_int(row.first()));
        let mut expiry = current;
        if expiry.is_some_and(|at| at <= now) {
            // An expired list restarts empty (contract rule 6), with no expiry unless this
            // append sets one.
            sql.exec(
                "DELETE FROM list_items WHERE key = ?",
                vec![key.as_str().into()],
            )
            .map_err(err)?;
            expiry = None;
        }
        if new_expiry.is_some() {
            expiry = new_expiry;
        }
        sql.exec(
            "INSERT INTO lists (key, expires_at) VALUES (?, ?) \
             ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at",
            vec![key.as_str().into(), optional_ms(expiry)],
        )
        .map_err(err)?;
        sql.exec(
            "INSERT INTO list_items (key, seq, value) VALUES (?1, \
             (SELECT COALESCE(MAX(seq), 0) + 1 FROM list_items WHERE key = ?1), ?2)",
            vec![key.as_str().into(), SqlStorageValue::Blob(value)],
        )
        .map_err(err)?;
        if let Some(max) = max_length {
            sql.exec(
                "DELETE FROM list_items WHERE key = ?1 AND seq <= \
                 (SELECT seq FROM list_items WHERE key = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
                vec![key.as_str().into(), SqlStorageValue::Integer(max as i64)],
            )
            .map_err(err)?;
        }
        Ok(expiry)
    }
}
