#![doc = include_str!("../README.md")]

mod backend;
mod error;
mod schema;
mod sql;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chat_state_core::{Checked, Clock, Error, Operation, StateAdapter};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

pub use backend::PostgresBackend;
pub use error::OpenFailure;
pub use schema::SchemaMode;

/// The backend name used in errors and logs.
pub const BACKEND: &str = "postgres";

/// The default key prefix, the same as `@chat-adapter/state-pg`'s.
pub const DEFAULT_KEY_PREFIX: &str = "chat-sdk";

/// The PostgreSQL backend behind the rule layer: what applications use.
pub type PostgresState = Checked<PostgresBackend>;

/// Where the connections come from.
#[derive(Debug)]
enum Source {
    Url(String),
    Pool(PgPool),
}

/// Options for [`PostgresBackend`]; start with [`PostgresBackend::builder`] (a URL) or
/// [`PostgresBackend::with_pool`] (your own pool), finish with [`connect`](Self::connect).
#[derive(Debug)]
pub struct PostgresBuilder {
    source: Source,
    key_prefix: String,
    schema_mode: SchemaMode,
    connect_timeout: Duration,
    statement_timeout: Duration,
    max_connections: u32,
    sweep_interval: Option<Duration>,
    sweep_batch: i64,
    clock: Option<Arc<dyn Clock>>,
}

impl PostgresBuilder {
    fn new(source: Source) -> Self {
        Self {
            source,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            schema_mode: SchemaMode::Create,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
            max_connections: 10,
            sweep_interval: Some(Duration::from_secs(60)),
            sweep_batch: 1000,
            clock: None,
        }
    }

    /// The `key_prefix` every row is stored under (default [`DEFAULT_KEY_PREFIX`]). Bots
    /// that share state, in either language, use the same prefix.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Create/migrate the schema (default) or only verify it.
    pub fn schema_mode(mut self, mode: SchemaMode) -> Self {
        self.schema_mode = mode;
        self
    }

    /// How long to wait for a connection (default 5 s); past it a call fails with
    /// `ErrorKind::Timeout`.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one call may take (default 5 s): sent to the server as `statement_timeout`
    /// (URL connections only) and enforced on the client for every call, which then fails
    /// with `ErrorKind::Timeout`.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Pool size for URL connections (default 10).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How often the background sweep deletes this prefix's expired rows (default every
    /// 60 s); `None` turns it off. Expiry never depends on it: every read checks it.
    pub fn sweep_interval(mut self, interval: Option<Duration>) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// Rows deleted per table per sweep statement (default 1000), so a sweep never holds
    /// long locks.
    pub fn sweep_batch(mut self, rows: usize) -> Self {
        self.sweep_batch = i64::try_from(rows.max(1)).unwrap_or(i64::MAX);
        self
    }

    /// Test only: a clock the statements use instead of the server's
    /// `statement_timestamp()` (e.g. `chat_state_core::ManualClock`). Never use it with
    /// other clients on the database: they keep the server's time.
    #[doc(hidden)]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Connects, prepares the schema (per [`schema_mode`](Self::schema_mode)), measures the
    /// server's clock and starts the sweep.
    ///
    /// A server that cannot be reached fails with a retryable `Unavailable`/`Timeout`
    /// within the connect timeout; an invalid URL is `InvalidInput`; a schema problem is a
    /// `Backend` error whose source is an [`OpenFailure`].
    pub async fn connect(self) -> Result<PostgresState, Error> {
        let pool = match &self.source {
            Source::Pool(pool) => pool.clone(),
            Source::Url(url) => {
                let options = PgConnectOptions::from_str(url)
                    .map_err(|e| {
                        OpenFailure::InvalidUrl {
                            reason: e.to_string(),
                        }
                        .into_error()
                    })?
                    .options([(
                        "statement_timeout",
                        self.statement_timeout.as_millis().to_string(),
                    )]);
                PgPoolOptions::new()
                    .max_connections(self.max_connections)
                    .acquire_timeout(self.connect_timeout)
                    // sqlx pings every connection it hands out (a round trip before each
                    // statement) and again on its return (which stays). With one statement
                    // per call, the first ping doubled the round trips; a connection that
                    // broke while idle now fails its one call with a retryable error and is
                    // dropped.
                    .test_before_acquire(false)
                    .connect_lazy_with(options)
            }
        };
        let owns_pool = matches!(self.source, Source::Url(_));
        let backend = PostgresBackend::new(pool, owns_pool, &self);
        let limit = self.connect_timeout + self.statement_timeout;
        match tokio::time::timeout(limit, backend.open(self.schema_mode)).await {
            Ok(result) => result?,
            Err(_) => return Err(error::timed_out(Operation::Open, limit)),
        }
        backend.start_sweep(self.sweep_interval, self.sweep_batch);
        Ok(Checked::new(backend))
    }
}

impl PostgresBackend {
    /// A builder connecting to `url` (`postgres://user:password@host:port/database`).
    pub fn builder(url: impl Into<String>) -> PostgresBuilder {
        PostgresBuilder::new(Source::Url(url.into()))
    }

    /// A builder on your own pool (its timeouts and size are yours; closing the adapter
    /// does not close it).
    pub fn with_pool(pool: PgPool) -> PostgresBuilder {
        PostgresBuilder::new(Source::Pool(pool))
    }

    /// The full DDL of the schema this crate expects (state-pg's five tables plus this
    /// crate's additions), for applying by hand before [`SchemaMode::VerifyOnly`].
    pub fn schema_sql() -> String {
        schema::schema_sql()
    }
}

/// Connects to `url` with the default options: [`PostgresBackend::builder`]`(url).connect()`.
pub async fn connect(url: &str) -> Result<PostgresState, Error> {
    PostgresBackend::builder(url).connect().await
}

#[allow(dead_code)]
fn _assert_adapter(s: PostgresState) -> Arc<dyn StateAdapter> {
    Arc::new(s)
}
