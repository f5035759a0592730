//! Typed JSON conveniences on top of the byte-level traits.

use std::future::Future;
use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};

use crate::{
    Error, ErrorKind, ListOptions, MaybeSend, Operation, QueueEntry, Result, StateAdapter,
};

/// JSON buffers kept for reuse on each thread, so encoding a value allocates nothing once a
/// buffer of its size has been used. A buffer is taken out for one call and put back on
/// whichever thread the call ends on; one grown past [`KEEP_BUFFER_BYTES`] is dropped instead,
/// so a rare large value does not pin its memory.
mod buffers {
    use std::cell::RefCell;

    /// Largest buffer kept for reuse.
    pub(super) const KEEP_BUFFER_BYTES: usize = 64 * 1024;
    /// Buffers kept per thread: enough for the calls one thread interleaves.
    const KEEP_BUFFERS: usize = 4;

    thread_local! {
        static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty buffer, reused when one is free.
    pub(super) fn take() -> Vec<u8> {
        FREE.with(|free| free.borrow_mut().pop())
            .unwrap_or_default()
    }

    /// Returns `buffer` for reuse.
    pub(super) fn give_back(mut buffer: Vec<u8>) {
        if buffer.capacity() > KEEP_BUFFER_BYTES {
            return;
        }
        buffer.clear();
        FREE.with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < KEEP_BUFFERS {
                free.push(buffer);
            }
        });
    }
}

/// A value encoded as JSON into a reused buffer, which goes back for reuse when this drops
/// (also when the call that uses it is cancelled).
struct Encoded(Vec<u8>);

impl Encoded {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Encoded {
    fn drop(&mut self) {
        buffers::give_back(std::mem::take(&mut self.0));
    }
}

fn encode<T: Serialize + ?Sized>(
    backend: &'static str,
    op: Operation,
    value: &T,
) -> Result<Encoded> {
    let mut encoded = Encoded(buffers::take());
    serde_json::to_writer(&mut encoded.0, value).map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("value cannot be serialized as JSON: {e}"),
        )
        .context(backend, op)
        .with_source(e)
    })?;
    Ok(encoded)
}

fn decode<T: DeserializeOwned>(
    backend: &'static str,
    op: Operation,
    key: &str,
    bytes: &[u8],
) -> Result<T> {
    crate::json::from_json_slice(bytes).map_err(|e| {
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
pub trait StateExt: StateAdapter {
    /// [`Cache::get`](crate::Cache::get) decoded from JSON.
    fn get_json<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<T>>> + MaybeSend {
        async move {
            match self.get(key).await? {
                Some(bytes) => decode(self.backend_name(), Operation::Get, key, &bytes).map(Some),
                None => Ok(None),
            }
        }
    }

    /// [`Cache::set`](crate::Cache::set) of `value` encoded as JSON.
    fn set_json<T: Serialize + ?Sized + Sync>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<()>> + MaybeSend {
        async move {
            let bytes = encode(self.backend_name(), Operation::Set, value)?;
            self.set(key, bytes.bytes(), ttl).await
        }
    }

    /// [`Cache::set_if_not_exists`](crate::Cache::set_if_not_exists) of `value` as JSON.
    fn set_json_if_not_exists<T: Serialize + ?Sized + Sync>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<bool>> + MaybeSend {
        async move {
            let bytes = encode(self.backend_name(), Operation::SetIfNotExists, value)?;
            self.set_if_not_exists(key, bytes.bytes(), ttl).await
        }
    }

    /// [`Lists::append_to_list`](crate::Lists::append_to_list) of `value` as JSON.
    fn append_json<T: Serialize + ?Sized + Sync>(
        &self,
        key: &str,
        value: &T,
        options: ListOptions,
    ) -> impl Future<Output = Result<()>> + MaybeSend {
        async move {
            let bytes = encode(self.backend_name(), Operation::AppendToList, value)?;
            self.append_to_list(key, bytes.bytes(), options).await
        }
    }

    /// [`Lists::get_list`](crate::Lists::get_list) with every item decoded from JSON.
    fn get_list_json<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Vec<T>>> + MaybeSend {
        async move {
            let backend = self.backend_name();
            self.get_list(key)
                .await?
                .iter()
                .map(|bytes| decode(backend, Operation::GetList, key, bytes))
                .collect()
        }
    }

    /// [`Queues::enqueue`](crate::Queues::enqueue) of `message` as a new entry enqueued at
    /// `now_ms` that lives for `lifetime`.
    fn enqueue_json<T: Serialize + ?Sized + Sync>(
        &self,
        thread_id: &str,
        message: &T,
        now_ms: u64,
        lifetime: Duration,
        max_size: usize,
    ) -> impl Future<Output = Result<usize>> + MaybeSend {
        async move {
            let backend = self.backend_name();
            let value = serde_json::to_value(message).map_err(|e| {
                Error::invalid_input(format!("message cannot be serialized as JSON: {e}"))
                    .context(backend, Operation::Enqueue)
                    .with_source(e)
            })?;
            let entry = QueueEntry::new(value, now_ms, lifetime);
            self.enqueue(thread_id, entry, max_size).await
        }
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
    fn dequeue_json<T: DeserializeOwned>(
        &self,
        thread_id: &str,
    ) -> impl Future<Output = Result<Option<(T, QueueEntry)>>> + MaybeSend {
        async move {
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

#[cfg(test)]
mod tests {
    use super::{buffers, encode};
    use crate::Operation;

    /// Runs `f` on a fresh thread, so it starts with no buffers kept.
    fn on_fresh_thread(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(f).join().expect("test thread");
    }

    #[test]
    fn an_encoding_buffer_is_kept_for_the_next_value() {
        on_fresh_thread(|| {
            assert_eq!(buffers::take().capacity(), 0, "nothing kept yet");
            let encoded = encode("t", Operation::Set, &"x".repeat(300)).unwrap();
            assert_eq!(encoded.bytes().len(), 302);
            drop(encoded);
            let reused = buffers::take();
            assert!(reused.capacity() >= 302, "the buffer came back");
            assert!(reused.is_empty());
        });
    }

    #[test]
    fn large_buffers_are_dropped_and_few_are_kept() {
        on_fresh_thread(|| {
            buffers::give_back(Vec::with_capacity(buffers::KEEP_BUFFER_BYTES + 1));
            assert_eq!(
                buffers::take().capacity(),
                0,
                "a buffer past the limit is dropped"
            );
            buffers::give_back(Vec::with_capacity(64 * 1024));
            assert_eq!(
                buffers::take().capacity(),
                64 * 1024,
                "64 KiB is still kept"
            );
            for _ in 0..5 {
                buffers::give_back(Vec::with_capacity(16));
            }
            let kept = (0..5).filter(|_| buffers::take().capacity() > 0).count();
            assert_eq!(kept, 4);
        });
    }
}
