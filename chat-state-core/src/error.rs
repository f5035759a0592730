//! The one error type every backend returns.

use std::fmt;

/// Boxed source error carried inside [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as the error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, coarse enough to `match` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller passed something the contract forbids (empty or oversized key, zero TTL,
    /// `max_length` of 0, ...). Retrying the same call can never succeed.
    InvalidInput,
    /// The adapter was closed; build a new one.
    Closed,
    /// The backend could not be reached or refused the call for a transient reason
    /// (connection refused or reset, database busy). Retrying later may succeed.
    Unavailable,
    /// The backend did not answer within the configured time. The call may or may not
    /// have taken effect; retrying may succeed.
    Timeout,
    /// Stored data could not be decoded (for example JSON written by another client, or a
    /// key holding a value of the wrong type).
    CorruptData,
    /// Any other failure reported by the backend (schema mismatch, permission denied, ...).
    Backend,
}

impl ErrorKind {
    /// Whether a retry of the same call may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Unavailable | ErrorKind::Timeout)
    }

    fn describe(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::Closed => "adapter closed",
            ErrorKind::Unavailable => "backend unavailable",
            ErrorKind::Timeout => "timed out",
            ErrorKind::CorruptData => "corrupt stored data",
            ErrorKind::Backend => "backend error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// The operation that failed, named as in the Rust API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)] // each variant is the method of the same name
pub enum Operation {
    Connect,
    Close,
    Subscribe,
    Unsubscribe,
    IsSubscribed,
    AcquireLock,
    ReleaseLock,
    ExtendLock,
    ForceReleaseLock,
    Get,
    Set,
    SetIfNotExists,
    Delete,
    AppendToList,
    GetList,
    Enqueue,
    Dequeue,
    QueueDepth,
    /// [`InspectLocks::lock_info`](crate::InspectLocks::lock_info).
    LockInfo,
    /// [`Dispatch::admit`](crate::Dispatch::admit).
    Admit,
    /// [`Dispatch::release_or_next`](crate::Dispatch::release_or_next).
    ReleaseOrNext,
    /// [`Dispatch::set_fenced`](crate::Dispatch::set_fenced).
    SetFenced,
    /// Building or configuring an adapter, before any contract operation.
    Open,
    /// Background work such as expiry cleanup.
    Maintenance,
}

impl Operation {
    /// The method name (`acquire_lock`, `get`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Connect => "connect",
            Operation::Close => "close",
            Operation::Subscribe => "subscribe",
            Operation::Unsubscribe => "unsubscribe",
            Operation::IsSubscribed => "is_subscribed",
            Operation::AcquireLock => "acquire_lock",
            Operation::ReleaseLock => "release_lock",
            Operation::ExtendLock => "extend_lock",
            Operation::ForceReleaseLock => "force_release_lock",
            Operation::Get => "get",
            Operation::Set => "set",
            Operation::SetIfNotExists => "set_if_not_exists",
            Operation::Delete => "delete",
            Operation::AppendToList => "append_to_list",
            Operation::GetList => "get_list",
            Operation::Enqueue => "enqueue",
            Operation::Dequeue => "dequeue",
            Operation::QueueDepth => "queue_depth",
            Operation::LockInfo => "lock_info",
            Operation::Admit => "admit",
            Operation::ReleaseOrNext => "release_or_next",
            Operation::SetFenced => "set_fenced",
            Operation::Open => "open",
            Operation::Maintenance => "maintenance",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from a chat-state adapter: its [`ErrorKind`], the backend and operation it came
/// from, a message saying what was wrong, and the underlying error if there is one.
///
/// `Display` shows backend, operation, kind and message; the underlying error is reachable
/// through [`std::error::Error::source`] (so error reporters print it once, not twice).
///
/// ```
/// use chat_state_core::{Error, ErrorKind, Operation};
/// let err = Error::new(ErrorKind::InvalidInput, "key is empty").context("memory", Operation::Get);
/// assert_eq!(err.kind(), ErrorKind::InvalidInput);
/// assert_eq!(err.to_string(), "memory: get failed: invalid input: key is empty");
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{}", self.render())]
pub struct Error {
    kind: ErrorKind,
    backend: &'static str,
    operation: Option<Operation>,
    message: String,
    #[source]
    source: Option<BoxError>,
}

impl Error {
    /// A new error with no backend or operation attached yet (see [`Error::context`]).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            backend: "",
            operation: None,
            message: message.into(),
            source: None,
        }
    }

    /// Shorthand for an [`ErrorKind::InvalidInput`] error.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// Shorthand for an [`ErrorKind::CorruptData`] error.
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::CorruptData, message)
    }

    /// The error every operation returns once the adapter is closed.
    pub fn closed(backend: &'static str, operation: Operation) -> Self {
        Self::new(
            ErrorKind::Closed,
            "the adapter was closed; create a new one to continue",
        )
        .context(backend, operation)
    }

    /// Attaches the backend name and operation.
    pub fn context(mut self, backend: &'static str, operation: Operation) -> Self {
        self.backend = backend;
        self.operation = Some(operation);
        self
    }

    /// Attaches the backend name and operation unless the error already names an operation
    /// (an error passed up from a nested call keeps the context it was raised in).
    pub fn or_context(self, backend: &'static str, operation: Operation) -> Self {
        if self.operation.is_some() {
            self
        } else {
            self.context(backend, operation)
        }
    }

    /// Reports an error of one step of a composite operation as the composite's: the
    /// operation becomes `operation` (the backend is kept, or set to `backend`), and the
    /// message says which step failed.
    pub(crate) fn reported_as(mut self, backend: &'static str, operation: Operation) -> Self {
        if let Some(step) = self.operation
            && step != operation
        {
            self.message = format!("in its {step} step: {}", self.message);
        }
        if self.backend.is_empty() {
            self.backend = backend;
        }
        self.operation = Some(operation);
        self
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether a retry of the same call may succeed (unavailable or timed out).
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// The backend that reported the error (`""` if none was attached).
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The operation that failed, if attached.
    pub fn operation(&self) -> Option<Operation> {
        self.operation
    }

    /// The human-readable explanation, without backend and operation.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Takes back the entry [`StateExt::dequeue_json`](crate::StateExt::dequeue_json) removed
    /// from the queue but could not decode; any other error comes back unchanged as `Err`.
    pub fn into_undecoded_entry(self) -> std::result::Result<crate::QueueEntry, Self> {
        match self
            .source
            .map(|source| source.downcast::<crate::ext::UndecodedEntry>())
        {
            Some(Ok(undecoded)) => Ok(undecoded.entry),
            Some(Err(source)) => Err(Self {
                source: Some(source),
                ..self
            }),
            None => Err(Self {
                source: None,
                ..self
            }),
        }
    }

    fn render(&self) -> String {
        let mut out = String::new();
        if !self.backend.is_empty() {
            out.push_str(self.backend);
            out.push_str(": ");
        }
        if let Some(op) = self.operation {
            out.push_str(op.as_str());
            out.push_str(" failed: ");
        }
        out.push_str(self.kind.describe());
        if !self.message.is_empty() {
            out.push_str(": ");
            out.push_str(&self.message);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_errors_come_back_from_into_undecoded_entry_unchanged() {
        let io = std::io::Error::other("disk on fire");
        let err = Error::corrupt("bad bytes")
            .context("memory", Operation::Get)
            .with_source(io);
        let back = err.into_undecoded_entry().expect_err("no entry in it");
        assert_eq!(back.kind(), ErrorKind::CorruptData);
        assert_eq!(back.operation(), Some(Operation::Get));
        assert_eq!(back.message(), "bad bytes");
        let source = std::error::Error::source(&back).expect("source kept");
        assert_eq!(source.to_string(), "disk on fire");

        let bare = Error::invalid_input("key is empty");
        let back = bare.into_undecoded_entry().expect_err("no entry in it");
        assert_eq!(back.to_string(), "invalid input: key is empty");
    }
}
