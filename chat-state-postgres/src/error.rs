//! Turning sqlx/PostgreSQL failures into the contract's typed [`Error`]s.

use std::fmt;

use chat_state_core::{Error, ErrorKind, Operation};

use crate::BACKEND;

/// Why [`PostgresBuilder::connect`](crate::PostgresBuilder::connect) refused a database,
/// attached as the [`source`](std::error::Error::source) of the returned [`Error`]:
///
/// ```
/// # use chat_state_postgres::OpenFailure;
/// fn explain(err: &chat_state_core::Error) -> Option<&OpenFailure> {
///     std::error::Error::source(err)?.downcast_ref::<OpenFailure>()
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenFailure {
    /// The connection URL could not be parsed.
    InvalidUrl {
        /// What the parser said (the URL itself is not repeated: it may hold a password).
        reason: String,
    },
    /// The database holds a chat-state schema version newer than this crate knows; it was
    /// left untouched.
    SchemaTooNew {
        /// The stored version.
        found: i32,
        /// The newest version this crate knows.
        supported: i32,
    },
    /// The schema is missing or incomplete: in verify-only mode before anything is created,
    /// or after creation when an existing table has the wrong shape.
    SchemaMissing {
        /// What is missing: `table`, `table.column`, `function()`, `schema version N`, or
        /// `privilege P on table` (also `on sequence S`, `on function()`).
        missing: Vec<String>,
    },
}

impl fmt::Display for OpenFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenFailure::InvalidUrl { reason } => {
                write!(f, "the PostgreSQL connection URL is invalid: {reason}")
            }
            OpenFailure::SchemaTooNew { found, supported } => write!(
                f,
                "the database has chat-state schema version {found}, but this version of \
                 chat-state-postgres knows versions up to {supported}; it was left untouched: \
                 upgrade chat-state-postgres"
            ),
            OpenFailure::SchemaMissing { missing } => write!(
                f,
                "the chat-state schema is incomplete; missing: {}. Run the migrations once \
                 with SchemaMode::Create (or apply PostgresBackend::schema_sql()), fix the \
                 tables' shape, or GRANT the privileges listed to this role",
                missing.join(", ")
            ),
        }
    }
}

impl std::error::Error for OpenFailure {}

impl OpenFailure {
    fn kind(&self) -> ErrorKind {
        match self {
            OpenFailure::InvalidUrl { .. } => ErrorKind::InvalidInput,
            OpenFailure::SchemaTooNew { .. } | OpenFailure::SchemaMissing { .. } => {
                ErrorKind::Backend
            }
        }
    }

    /// The typed error for this failure, with the failure itself as its source.
    pub(crate) fn into_error(self) -> Error {
        Error::new(self.kind(), self.to_string())
            .context(BACKEND, Operation::Open)
            .with_source(self)
    }
}

/// The kind of a sqlx error: connection trouble is retryable, a cancelled statement
/// (`statement_timeout`) is a timeout, the rest is a backend error.
pub(crate) fn kind_of(e: &sqlx::Error) -> ErrorKind {
    match e {
        sqlx::Error::PoolTimedOut => ErrorKind::Timeout,
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => ErrorKind::Unavailable,
        sqlx::Error::Configuration(_) => ErrorKind::InvalidInput,
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            match code.as_str() {
                // query_canceled: statement_timeout fired.
                "57014" => ErrorKind::Timeout,
                // lock_not_available, serialization failure, deadlock: retry may succeed.
                "55P03" | "40001" | "40P01" => ErrorKind::Unavailable,
                // admin/crash shutdown, cannot connect now, too many connections, out of resources.
                c if c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") => {
                    ErrorKind::Unavailable
                }
                _ => ErrorKind::Backend,
            }
        }
        _ => ErrorKind::Backend,
    }
}

/// What to do about the errors a misconfigured deployment meets first.
fn hint(e: &sqlx::Error) -> &'static str {
    let code = match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()).unwrap_or_default(),
        sqlx::Error::Tls(_) => {
            return " (check `sslmode=`; for a private CA pass `sslrootcert=/path/ca.pem`)";
        }
        _ => return "",
    };
    match code.as_str() {
        "28P01" | "28000" => " (check the user and password in the URL)",
        "3D000" => " (create the database, or fix the database name in the URL's path)",
        "42501" => {
            " (the role lacks a privilege: grant it, or connect as the schema's owner; \
             SchemaMode::VerifyOnly lists what is missing)"
        }
        _ => "",
    }
}

/// A typed error for a sqlx failure during `op`, with the sqlx error as its source.
pub(crate) fn map(op: Operation, e: sqlx::Error) -> Error {
    let kind = kind_of(&e);
    Error::new(kind, format!("PostgreSQL: {e}{}", hint(&e)))
        .context(BACKEND, op)
        .with_source(e)
}

/// The error for a call that did not finish within the statement timeout.
pub(crate) fn timed_out(op: Operation, after: std::time::Duration) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!(
            "PostgreSQL did not answer within {} ms; the call may or may not have taken effect",
            after.as_millis()
        ),
    )
    .context(BACKEND, op)
}

/// A stored row that does not decode.
pub(crate) fn corrupt(op: Operation, what: String) -> Error {
    Error::corrupt(what).context(BACKEND, op)
}
