//! Typed JSON conveniences on top of the byte-level traits.

use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, ErrorKind, ListOptions, Operation, QueueEntry, Result, StateAdapter};

fn encode<T: Serialize + ?Sized>(
    backend: &'static str,
    op: Operation,
    value: &T,
) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("value cannot be serialized as JSON: {e}"),
        )
        .context(backend, op)
        .with_source(e)
    })
}

fn decode<T: DeserializeOwned>(
    backend: &'static str,
    op: Operation,
    key: &str,
    bytes: &[u8],
) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::corrupt(format!(
            "stored value at {key:?} is not the expected JSON ({} bytes): {e}",
            bytes.len()
        ))
        .context(backend, op)
        .with_source(e)
    })
}

/// Typed JSON helpers for every [`StateAdapter`], implemented once for all of them
/// (including `dyn StateAdapter`); nobody implements this trait by hand.
///
/// Values are stored as JSON text, the format the TypeScript Chat SDK uses, so bots written in
/// either language can read each other's data. Stored bytes that do not decode as `T` give an
/// [`ErrorKind::CorruptData`] error, never a panic or a silently different value.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait StateExt: StateAdapter {
    /// [`Cache::get`](crate::Cache::get) decoded from JSON.
    async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.get(key).await? {
            Some(bytes) => decode(self.backend_name(), Operation::Get, key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// [`Cache::set`](crate::Cache::set) of `value` encoded as JSON.
    async fn set_json<T: Serialize + ?Sized + Sync>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let bytes = encode(self.backend_name(), Operation::Set, value)?;
        self.set(key, &bytes, ttl).await
    }

    /// [`Cache::set_if_not_exists`](crate::Cache::set_if_not_exists) of `value` as JSON.
    async fn set_json_if_not_exists<T: Serialize + ?Sized + Sync>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let bytes = encode(self.backend_name(), Operation::SetIfNotExists, value)?;
        self.set_if_not_exists(key, &bytes, ttl).await
    }

    /// [`Lists::append_to_list`](crate::Lists::append_to_list) of `value` as JSON.
    async fn append_json<T: Serialize + ?Sized + Sync>(
        &self,
        key: &str,
        value: &T,
        options: ListOptions,
    ) -> Result<()> {
        let bytes = encode(self.backend_name(), Operation::AppendToList, value)?;
        self.append_to_list(key, &bytes, options).await
    }

    /// [`Lists::get_list`](crate::Lists::get_list) with every item decoded from JSON.
    async fn get_list_json<T: DeserializeOwned>(&self, key: &str) -> Result<Vec<T>> {
        let backend = self.backend_name();
        self.get_list(key)
            .await?
            .iter()
            .map(|bytes| decode(backend, Operation::GetList, key, bytes))
            .collect()
    }

    /// [`Queues::enqueue`](crate::Queues::enqueue) of `message` as a new entry enqueued at
    /// `now_ms` that lives for `lifetime`.
    async fn enqueue_json<T: Serialize + ?Sized + Sync>(
        &self,
        thread_id: &str,
        message: &T,
        now_ms: u64,
        lifetime: Duration,
        max_size: usize,
    ) -> Result<usize> {
        let backend = self.backend_name();
        let value = serde_json::to_value(message).map_err(|e| {
            Error::invalid_input(format!("message cannot be serialized as JSON: {e}"))
                .context(backend, Operation::Enqueue)
                .with_source(e)
        })?;
        let entry = QueueEntry::new(value, now_ms, lifetime);
        self.enqueue(thread_id, entry, max_size).await
    }

    /// [`Queues::dequeue`](crate::Queues::dequeue) with the message decoded as `T`; returns
    /// the entry's timestamps alongside.
    ///
    /// Dequeueing removes the entry before it is decoded, so a message of another shape gives
    /// a [`ErrorKind::CorruptData`] error that carries the removed entry: take it back with
    /// [`Error::into_undecoded_entry`] to dead-letter or decode it another way, rather than
    /// lose it.
    ///
    /// ```
    /// # async fn demo(state: &dyn chat_state_core::StateAdapter) -> chat_state_core::Result<()> {
    /// use chat_state_core::StateExt;
    /// match state.dequeue_json::<u64>("thread-1").await {
    ///     Ok(Some((number, _entry))) => println!("handle {number}"),
    ///     Ok(None) => {}
    ///     Err(err) => match err.into_undecoded_entry() {
    ///         Ok(entry) => println!("dead-letter {}", entry.message),
    ///         Err(err) => return Err(err),
    ///     },
    /// }
    /// # Ok(())
    /// # }
    /// ```
    async fn dequeue_json<T: DeserializeOwned>(
        &self,
        thread_id: &str,
    ) -> Result<Option<(T, QueueEntry)>> {
        let backend = self.backend_name();
        match self.dequeue(thread_id).await? {
            Some(entry) => match T::deserialize(&entry.message) {
                Ok(message) => Ok(Some((message, entry))),
                Err(e) => Err(Error::corrupt(format!(
                    "queued message for thread {thread_id:?} is not the expected JSON: {e}; \
                     the removed entry is in this error (Error::into_undecoded_entry)"
                ))
                .context(backend, Operation::Dequeue)
                .with_source(UndecodedEntry { entry, source: e })),
            },
            None => Ok(None),
        }
    }
}

/// The entry [`StateExt::dequeue_json`] removed from its queue but could not decode; the
/// source of the `CorruptData` error it returns (see [`Error::into_undecoded_entry`]).
#[derive(Debug, thiserror::Error)]
#[error("the dequeued message is not the expected JSON")]
pub struct UndecodedEntry {
    /// The entry as it was stored, no longer in the queue.
    pub entry: QueueEntry,
    /// Why it did not decode.
    #[source]
    pub source: serde_json::Error,
}

impl<A: StateAdapter + ?Sized> StateExt for A {}
