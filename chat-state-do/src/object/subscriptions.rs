//! `subscribe`, `unsubscribe`, `is_subscribed`: one row per subscribed thread, no expiry.

use chat_state_core::{Error, Operation, validate};

use super::ChatStateDO;
use super::sql::{Reply, backend_err};
use crate::BACKEND;

impl ChatStateDO {
    pub(super) fn subscribe(&self, thread_id: &str) -> Result<Reply, Error> {
        validate::subscribe(BACKEND, thread_id)?;
        self.sql
            .exec(
                "INSERT OR IGNORE INTO subscriptions (thread_id) VALUES (?)",
                vec![thread_id.into()],
            )
            .map_err(|e| backend_err(Operation::Subscribe, "subscribing", e))?;
        Reply::null()
    }

    pub(super) fn unsubscribe(&self, thread_id: &str) -> Result<Reply, Error> {
        validate::unsubscribe(BACKEND, thread_id)?;
        self.sql
            .exec(
                "DELETE FROM subscriptions WHERE thread_id = ?",
                vec![thread_id.into()],
            )
            .map_err(|e| backend_err(Operation::Unsubscribe, "unsubscribing", e))?;
        Reply::null()
    }

    pub(super) fn is_subscribed(&self, thread_id: &str) -> Result<Reply, Error> {
        validate::is_subscribed(BACKEND, thread_id)?;
        let found = self
            .sql
            .exec(
                "SELECT 1 FROM subscriptions WHERE thread_id = ?",
                vec![thread_id.into()],
            )
            .map_err(|e| backend_err(Operation::IsSubscribed, "reading subscriptions", e))?
            .raw()
            .next()
            .is_some();
        Reply::json(&found)
    }
}
