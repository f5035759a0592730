//! The contract operations of [`SqliteBackend`]: each turns its (already validated) inputs
//! into one read on a read connection or one [`Write`](crate::writer::Write) for the writer,
//! and decodes the rows it gets back. The SQL is in [`reads`](crate::reads) and
//! [`writes`](crate::writes).

use std::time::Duration;

use chat_state_core::dispatch::{DEDUPE_VALUE, FencedSet, FencedWrite, Handoff, WhenBusy};
use chat_state_core::{
    AdmitOutcome, AdmitRequest, Backend, Error, ListOptions, Lock, LockInfo, LockInspector,
    LockRequest, Operation, QueueEntry, Result, validate,
};

use crate::error::corrupt;
use crate::writes::{
    Acquire, Admit, Admitted, Append, Delete, Dequeue, Enqueue, Extend, ForceRelease, Handed,
    QueueRow, Release, ReleaseOrNext, Set, SetFenced, SetIfNotExists, Subscribe, Unsubscribe,
};
use crate::{BACKEND, SqliteBackend, reads, to_i64};

impl SqliteBackend {
    /// The clock as SQLite's `INTEGER`, for deciding what is live.
    fn now(&self) -> i64 {
        to_i64(self.inner.clock.now_ms())
    }

    /// The stored expiry of a write with an optional TTL, from the clock read now, before
    /// the write is sent (rule 12).
    fn expiry(&self, op: Operation, ttl: Option<Duration>) -> Result<Option<i64>> {
        let now = self.inner.clock.now_ms();
        Ok(validate::optional_expiry_ms(BACKEND, op, now, ttl)?.map(to_i64))
    }

    fn scope(&self) -> &str {
        &self.inner.scope
    }

    /// Runs a read on the writer's connection if the writer is idle, else on a read
    /// connection (which never waits for the writer); see [`Writer::read_if_idle`].
    ///
    /// [`Writer::read_if_idle`]: crate::writer::Writer::read_if_idle
    fn read<T>(
        &self,
        op: Operation,
        read: impl Fn(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        match self.inner.writer.read_if_idle(op, &read) {
            Some(result) => result,
            None => self.inner.readers.read(op, read),
        }
    }
}

fn count(op: Operation, n: i64) -> Result<usize> {
    usize::try_from(n).map_err(|_| corrupt(op, format!("SQLite counted {n} entries")))
}

fn fence(op: Operation, fence: i64) -> Result<u64> {
    u64::try_from(fence).map_err(|_| {
        corrupt(
            op,
            format!("the stored fence counter is negative ({fence})"),
        )
    })
}

/// The write that appends `entry` to the thread's queue, its message as JSON text.
fn enqueue_write(
    op: Operation,
    thread_id: &str,
    entry: &QueueEntry,
    max_size: usize,
) -> Result<Enqueue> {
    let message = serde_json::to_string(&entry.message).map_err(|e| {
        Error::invalid_input(format!("queue message is not serializable: {e}")).context(BACKEND, op)
    })?;
    Ok(Enqueue {
        thread_id: thread_id.to_owned(),
        enqueued_at: to_i64(entry.enqueued_at),
        expires_at: to_i64(entry.expires_at),
        message,
        max_size: to_i64(max_size as u64),
    })
}

/// Decodes a dequeued row. Rows written by another client may not decode; say so rather
/// than guess.
fn queue_entry(op: Operation, (enqueued_at, expires_at, message): QueueRow) -> Result<QueueEntry> {
    let time = |v: i64, what: &str| {
        u64::try_from(v)
            .map_err(|_| corrupt(op, format!("queue entry has a negative {what} ({v})")))
    };
    // Lone surrogates (a JavaScript writer's string cut inside an emoji) decode as U+FFFD.
    let message = chat_state_core::json::from_json_slice(message.as_bytes()).map_err(|e| {
        corrupt(op, format!("queue entry message is not valid JSON: {e}")).with_source(e)
    })?;
    Ok(QueueEntry {
        enqueued_at: time(enqueued_at, "enqueued_at")?,
        expires_at: time(expires_at, "expires_at")?,
        message,
    })
}

impl Backend for SqliteBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    async fn connect(&self) -> Result<()> {
        let op = Operation::Connect;
        // The schema was applied at open; this proves the file is still readable.
        self.inner.readers.read(op, reads::ping)
    }

    async fn close(&self) -> Result<()> {
        self.inner.open.close();
        let task = self
            .inner
            .cleanup_task
            .lock()
            .ok()
            .and_then(|mut t| t.take());
        if let Some(task) = task {
            task.abort();
        }
        // Lets writes already handed to the writer commit, then closes its connection.
        self.inner.writer.shutdown().await;
        self.inner.readers.close();
        Ok(())
    }

    async fn subscribe(&self, thread_id: &str) -> Result<()> {
        self.inner
            .writer
            .write(Subscribe {
                thread_id: thread_id.to_owned(),
            })
            .await
    }

    async fn unsubscribe(&self, thread_id: &str) -> Result<()> {
        self.inner
            .writer
            .write(Unsubscribe {
                thread_id: thread_id.to_owned(),
            })
            .await
    }

    async fn is_subscribed(&self, thread_id: &str) -> Result<bool> {
        let op = Operation::IsSubscribed;
        self.read(op, |c| reads::is_subscribed(c, self.scope(), thread_id))
    }

    async fn acquire_lock(&self, request: &LockRequest<'_>) -> Result<Option<u64>> {
        let op = Operation::AcquireLock;
        // The layer read this backend's clock just before: its expiry is exactly ours.
        let fence = self
            .inner
            .writer
            .write(Acquire {
                lock_id: request.lock_id.to_owned(),
                token: request.token.to_owned(),
                expires_at: to_i64(request.expires_at),
            })
            .await?;
        fence.map(|f| self::fence(op, f)).transpose()
    }

    async fn release_lock(&self, lock: &Lock) -> Result<()> {
        self.inner
            .writer
            .write(Release {
                lock_id: lock.thread_id.clone(),
                token: lock.token.clone(),
            })
            .await
    }

    async fn extend_lock(&self, request: &LockRequest<'_>) -> Result<bool> {
        // now + ttl from the clock read before sending (rule 12), as for acquire.
        self.inner
            .writer
            .write(Extend {
                lock_id: request.lock_id.to_owned(),
                token: request.token.to_owned(),
                expires_at: to_i64(request.expires_at),
            })
            .await
    }

    async fn force_release_lock(&self, lock_id: &str) -> Result<()> {
        self.inner
            .writer
            .write(ForceRelease {
                lock_id: lock_id.to_owned(),
            })
            .await
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let op = Operation::Get;
        let now = self.now();
        self.read(op, |c| reads::get(c, self.scope(), key, now))
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let expires_at = self.expiry(Operation::Set, ttl)?;
        self.inner
            .writer
            .write(Set {
                key: key.to_owned(),
                value: value.to_vec(),
                expires_at,
            })
            .await
    }

    async fn set_if_not_exists(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let expires_at = self.expiry(Operation::SetIfNotExists, ttl)?;
        self.inner
            .writer
            .write(SetIfNotExists {
                key: key.to_owned(),
                value: value.to_vec(),
                expires_at,
            })
            .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.inner
            .writer
            .write(Delete {
                key: key.to_owned(),
            })
            .await
    }

    async fn append_to_list(&self, key: &str, value: &[u8], options: ListOptions) -> Result<()> {
        let expires_at = self.expiry(Operation::AppendToList, options.ttl)?;
        self.inner
            .writer
            .write(Append {
                key: key.to_owned(),
                value: value.to_vec(),
                expires_at,
                max_length: options.max_length.map(|n| to_i64(n as u64)),
            })
            .await
    }

    async fn get_list(&self, key: &str) -> Result<Vec<Vec<u8>>> {
        let op = Operation::GetList;
        let now = self.now();
        self.read(op, |c| reads::get_list(c, self.scope(), key, now))
    }

    async fn enqueue(&self, thread_id: &str, entry: QueueEntry, max_size: usize) -> Result<usize> {
        let op = Operation::Enqueue;
        let write = enqueue_write(op, thread_id, &entry, max_size)?;
        let depth = self.inner.writer.write(write).await?;
        count(op, depth)
    }

    async fn dequeue(&self, thread_id: &str) -> Result<Option<QueueEntry>> {
        let op = Operation::Dequeue;
        let row = self
            .inner
            .writer
            .write(Dequeue {
                thread_id: thread_id.to_owned(),
            })
            .await?;
        row.map(|row| queue_entry(op, row)).transpose()
    }

    async fn queue_depth(&self, thread_id: &str) -> Result<usize> {
        let op = Operation::QueueDepth;
        let now = self.now();
        let depth = self.read(op, |c| reads::queue_depth(c, self.scope(), thread_id, now))?;
        count(op, depth)
    }

    const ATOMIC_DISPATCH: bool = true;

    async fn admit(&self, request: &AdmitRequest<'_>) -> Result<AdmitOutcome> {
        Ok(self.admit_reading(request, None).await?.0)
    }

    async fn admit_and_read(
        &self,
        request: &AdmitRequest<'_>,
        read: &str,
    ) -> Result<(AdmitOutcome, Option<Vec<u8>>)> {
        self.admit_reading(request, Some(read)).await
    }

    async fn release_or_next(&self, request: &LockRequest<'_>) -> Result<Handoff> {
        self.handoff(request, None).await
    }

    async fn release_or_next_with(
        &self,
        request: &LockRequest<'_>,
        lock: &Lock,
        write: &FencedSet<'_>,
    ) -> Result<Handoff> {
        let expires_at = self.expiry(Operation::ReleaseOrNext, write.ttl)?;
        let write = SetFenced {
            set: Set {
                key: write.key.to_owned(),
                value: write.value.to_vec(),
                expires_at,
            },
            lock: lock.clone(),
        };
        self.handoff(request, Some(write)).await
    }

    async fn set_fenced(
        &self,
        lock: &Lock,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<FencedWrite> {
        let expires_at = self.expiry(Operation::SetFenced, ttl)?;
        let stored = self
            .inner
            .writer
            .write(SetFenced {
                set: Set {
                    key: key.to_owned(),
                    value: value.to_vec(),
                    expires_at,
                },
                lock: lock.clone(),
            })
            .await?;
        Ok(if stored {
            FencedWrite::Stored
        } else {
            FencedWrite::Stale
        })
    }
}

impl SqliteBackend {
    /// [`Backend::admit`], reading `read` (a cache key) in the same transaction when admitted.
    async fn admit_reading(
        &self,
        request: &AdmitRequest<'_>,
        read: Option<&str>,
    ) -> Result<(AdmitOutcome, Option<Vec<u8>>)> {
        let op = Operation::Admit;
        let lock = &request.lock;
        let claim_expiry = validate::expiry_ms(BACKEND, op, lock.now_ms, request.dedupe_ttl)?;
        let queue = match request.when_busy {
            WhenBusy::Drop => None,
            WhenBusy::Queue { entry, max_size } => {
                Some(enqueue_write(op, lock.lock_id, entry, *max_size)?)
            }
        };
        let admitted = self
            .inner
            .writer
            .write(Admit {
                claim: SetIfNotExists {
                    key: request.dedupe_key.to_owned(),
                    value: DEDUPE_VALUE.to_vec(),
                    expires_at: Some(to_i64(claim_expiry)),
                },
                lock: Acquire {
                    lock_id: lock.lock_id.to_owned(),
                    token: lock.token.to_owned(),
                    expires_at: to_i64(lock.expires_at),
                },
                queue,
                read: read.map(str::to_owned),
            })
            .await?;
        Ok(match admitted {
            Admitted::Duplicate => (AdmitOutcome::Duplicate, None),
            Admitted::Dropped => (AdmitOutcome::Dropped, None),
            Admitted::Queued(depth) => (
                AdmitOutcome::Queued {
                    depth: count(op, depth)?,
                },
                None,
            ),
            Admitted::Locked {
                fence,
                subscribed,
                read,
            } => (
                AdmitOutcome::Admitted {
                    fence: self::fence(op, fence)?,
                    subscribed,
                },
                read,
            ),
        })
    }

    /// [`Backend::release_or_next`], with `write` stored first in the same transaction.
    async fn handoff(
        &self,
        request: &LockRequest<'_>,
        write: Option<SetFenced>,
    ) -> Result<Handoff> {
        let op = Operation::ReleaseOrNext;
        let handed = self
            .inner
            .writer
            .write(ReleaseOrNext {
                extend: Extend {
                    lock_id: request.lock_id.to_owned(),
                    token: request.token.to_owned(),
                    expires_at: to_i64(request.expires_at),
                },
                write,
            })
            .await?;
        Ok(match handed {
            Handed::Next(row) => Handoff::Next(queue_entry(op, row)?),
            Handed::Released => Handoff::Released,
            Handed::NotHolder => Handoff::NotHolder,
        })
    }
}

impl LockInspector for SqliteBackend {
    /// Reads the lock row on a read connection; never writes. Open with
    /// [`SchemaMode::VerifyOnly`](crate::SchemaMode::VerifyOnly) to inspect a deployment's
    /// file without migrating it.
    async fn lock_info(&self, lock_id: &str) -> Result<Option<LockInfo>> {
        let op = Operation::LockInfo;
        let now = self.now();
        let row = self.read(op, |c| reads::lock_info(c, self.scope(), lock_id, now))?;
        row.map(|(token, expires_at, fence)| {
            let expires_at = u64::try_from(expires_at)
                .map_err(|_| corrupt(op, format!("lock {lock_id:?} has expiry {expires_at}")))?;
            let fence = u64::try_from(fence)
                .map_err(|_| corrupt(op, format!("lock {lock_id:?} has fence {fence}")))?;
            Ok(LockInfo::new(token, expires_at, Some(fence)))
        })
        .transpose()
    }
}
