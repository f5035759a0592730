//! Connect-by-URL: the backend is chosen by the URL's scheme, among those compiled in.

use std::sync::Arc;
use std::time::Duration;

use chat_state_core::{Error, ErrorKind, Operation, Result, StateAdapter};

/// Backend name used in errors raised while parsing a URL, before any backend is involved.
const FACADE: &str = "chat-state";

/// The URL schemes this build understands, one entry per enabled backend feature.
///
/// ```
/// # #[cfg(feature = "memory")]
/// assert!(chat_state::compiled_schemes().contains(&"memory://"));
/// ```
pub fn compiled_schemes() -> &'static [&'static str] {
    &[
        #[cfg(feature = "memory")]
        "memory://",
        #[cfg(all(feature = "sqlite", not(target_arch = "wasm32")))]
        "sqlite://PATH",
        #[cfg(all(feature = "redis", not(target_arch = "wasm32")))]
        "redis://",
        #[cfg(all(feature = "redis-tls", not(target_arch = "wasm32")))]
        "rediss://",
        #[cfg(all(feature = "redis-cluster", not(target_arch = "wasm32")))]
        "redis+cluster://",
        #[cfg(all(feature = "postgres", not(target_arch = "wasm32")))]
        "postgres://",
        #[cfg(all(feature = "postgres", not(target_arch = "wasm32")))]
        "postgresql://",
    ]
}

/// How [`connect_with`] builds the adapter. `Default` is what [`connect`] uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Wrap the adapter in [`Traced`](crate::Traced), emitting a `tracing` span per call.
    /// Off by default: the spans cost time on every call even with no subscriber that
    /// records them. Native targets only (ignored on wasm32, where there is no monotonic
    /// clock to time calls with).
    pub trace: bool,
    /// Key prefix for backends that share storage (SQLite, Redis, Postgres); overrides the URL's
    /// `prefix=` parameter. Ignored by `memory://`, whose every connection is private anyway.
    pub prefix: Option<String>,
}

impl ConnectOptions {
    /// The defaults: no tracing, the prefix from the URL (or the backend's default).
    pub fn new() -> Self {
        Self::default()
    }

    /// Turns per-call `tracing` spans on or off.
    pub fn trace(mut self, on: bool) -> Self {
        self.trace = on;
        self
    }

    /// Uses `prefix` as the key prefix, whatever the URL says.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }
}

/// A parsed connection URL: the backend [`connect`] would open, and its settings.
///
/// [`Target::parse`] checks a URL without connecting (a bot's configuration at startup);
/// [`connect`] parses with it too, so both give the same errors.
///
/// ```
/// use chat_state::Target;
/// let target = Target::parse("sqlite:///var/lib/my%20bot/state.db?prefix=bot1")?;
/// let Target::Sqlite { path, prefix, .. } = target else { unreachable!() };
/// assert_eq!(path, "/var/lib/my bot/state.db");
/// assert_eq!(prefix.as_deref(), Some("bot1"));
/// # Ok::<_, chat_state::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// `memory://`: a fresh in-process adapter.
    Memory,
    /// `sqlite://PATH` (relative), `sqlite:///abs/path` or `sqlite:PATH`.
    #[non_exhaustive]
    Sqlite {
        /// The database file, percent-decoded (`my%20dir` is `my dir`).
        path: String,
        /// The `?prefix=` parameter, percent-decoded.
        prefix: Option<String>,
    },
    /// `redis://`, `rediss://`, `redis+unix://` (single node) or
    /// `redis+cluster://h1:p1,h2:p2` (cluster).
    #[non_exhaustive]
    Redis {
        /// The URLs handed to the redis client (one per node), without our own `prefix=`
        /// parameter; user and password stay percent-encoded, as the client expects.
        nodes: Vec<String>,
        /// Whether the nodes form a Redis Cluster.
        cluster: bool,
        /// The `?prefix=` parameter, percent-decoded.
        prefix: Option<String>,
    },
    /// `postgres://[user[:password]@][host][:port][/database][?params]` (or `postgresql://`),
    /// with libpq's parameters.
    #[non_exhaustive]
    Postgres {
        /// The URL handed to sqlx, without our own parameters (`prefix=`, `connect_timeout=`);
        /// user and password stay percent-encoded, as sqlx expects.
        url: String,
        /// The `?prefix=` parameter, percent-decoded (the rows' `key_prefix`).
        prefix: Option<String>,
        /// libpq's `?connect_timeout=` (seconds): how long getting a connection may take.
        connect_timeout: Option<Duration>,
        /// The `sslmode=` parameter (libpq's default is `prefer`).
        ssl_mode: Option<String>,
    },
}

impl Target {
    /// The scheme as the user wrote it, for messages.
    pub fn scheme(&self) -> &'static str {
        match self {
            Target::Memory => "memory://",
            Target::Sqlite { .. } => "sqlite://",
            Target::Redis { cluster: true, .. } => "redis+cluster://",
            Target::Redis { nodes, .. } if nodes.iter().any(|n| n.starts_with("rediss:")) => {
                "rediss://"
            }
            Target::Redis { .. } => "redis://",
            Target::Postgres { .. } => "postgres://",
        }
    }

    /// Whether the data outlives the adapter (so a second connection sees it).
    pub fn is_shared(&self) -> bool {
        match self {
            Target::Memory => false,
            Target::Sqlite { .. } => true,
            Target::Redis { .. } => true,
            Target::Postgres { .. } => true,
        }
    }

    /// Parses a connection URL (see [`connect`] for the forms). A URL that cannot be
    /// parsed, an unknown scheme or parameter, or a part that makes no sense for the backend
    /// is an [`ErrorKind::InvalidInput`] error saying what is wrong. Whether the backend's
    /// feature is compiled in is checked by [`connect`], not here.
    pub fn parse(url: &str) -> Result<Target> {
        let url = url.trim();
        if url.is_empty() {
            return Err(invalid(format!(
                "empty URL; this build understands {}",
                schemes_list()
            )));
        }
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("redis+cluster:") {
            return parse_cluster(url);
        }
        if lower.starts_with("sqlite:") {
            return parse_sqlite(url);
        }
        let parsed = parse_url(url, url)?;
        match parsed.scheme() {
            "memory" => {
                let query = Query::of(url, &parsed)?;
                let has_host = parsed.host_str().is_some_and(|h| !h.is_empty());
                if has_host
                    || !parsed.username().is_empty()
                    || parsed.password().is_some()
                    || parsed.port().is_some()
                    || !parsed.path().is_empty()
                    || parsed.fragment().is_some()
                {
                    return Err(invalid(format!(
                        "{url:?}: memory:// takes no host or path (each connection is a fresh, \
                         private in-process store); use `memory://`"
                    )));
                }
                query.only_prefix(url, "memory://")?;
                Ok(Target::Memory)
            }
            "redis" | "rediss" | "redis+unix" | "unix" => {
                let query = Query::of(url, &parsed)?;
                check_redis_node(url, &parsed, false)?;
                Ok(Target::Redis {
                    nodes: vec![query.node_url(parsed)],
                    cluster: false,
                    prefix: query.prefix,
                })
            }
            "postgres" | "postgresql" => parse_postgres(url, parsed),
            other => Err(invalid(format!(
                "{url:?}: unknown URL scheme `{other}://`; this build understands {}",
                schemes_list()
            ))),
        }
    }
}

/// `url::Url::parse`, with an error that names the URL and says what is wrong.
fn parse_url(input: &str, shown: &str) -> Result<url::Url> {
    url::Url::parse(input).map_err(|e| {
        let hint = match e {
            url::ParseError::RelativeUrlWithoutBase => format!(
                " (no `scheme://`); this build understands {}",
                schemes_list()
            ),
            url::ParseError::InvalidPort => " (a port is a number from 0 to 65535)".into(),
            url::ParseError::InvalidIpv6Address => {
                " (write an IPv6 host in brackets: `redis://[::1]:6379`)".into()
            }
            url::ParseError::InvalidDomainCharacter => {
                " (percent-encode reserved characters, e.g. a space as %20)".into()
            }
            _ => String::new(),
        };
        invalid(format!("{shown:?} is not a valid URL: {e}{hint}"))
    })
}

/// The query of a URL: our `prefix=` (percent-decoded) and the parameters passed through to
/// the backend's client.
struct Query {
    prefix: Option<String>,
    passthrough: Vec<(String, String)>,
}

impl Query {
    fn of(shown: &str, url: &url::Url) -> Result<Query> {
        let mut query = Query {
            prefix: None,
            passthrough: Vec::new(),
        };
        for (key, value) in url.query_pairs() {
            if key != "prefix" {
                query
                    .passthrough
                    .push((key.into_owned(), value.into_owned()));
            } else if value.is_empty() {
                return Err(invalid(format!(
                    "{shown:?}: `prefix=` needs a value, e.g. `?prefix=mybot`"
                )));
            } else if query.prefix.is_some() {
                return Err(invalid(format!(
                    "{shown:?}: `prefix=` is given twice; give it once"
                )));
            } else {
                query.prefix = Some(value.into_owned());
            }
        }
        Ok(query)
    }

    /// Refuses parameters other than `prefix=`, for backends that take no others.
    fn only_prefix(&self, shown: &str, scheme: &str) -> Result<()> {
        if self.passthrough.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = self.passthrough.iter().map(|(k, _)| k.as_str()).collect();
        Err(invalid(format!(
            "{shown:?}: unknown parameter(s) {}; {scheme} accepts only `prefix=`",
            names.join(", ")
        )))
    }

    /// `url` with the passthrough parameters as its query (no `prefix=`).
    fn node_url(&self, mut url: url::Url) -> String {
        if self.passthrough.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut()
                .clear()
                .extend_pairs(self.passthrough.iter());
        }
        url.to_string()
    }
}

/// Percent-decodes a URL part, which must be UTF-8 once decoded.
fn decode(shown: &str, what: &str, part: &str) -> Result<String> {
    percent_encoding::percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| {
            invalid(format!(
                "{shown:?}: the {what} is not UTF-8 once percent-decoded"
            ))
        })
}

/// `sqlite://rel/path`, `sqlite:///abs/path`, `sqlite:PATH`, each with `?prefix=`.
fn parse_sqlite(url: &str) -> Result<Target> {
    let rest = &url["sqlite:".len()..];
    // `sqlite://rel/path` is relative, `sqlite:///abs/path` absolute (the third slash starts
    // the path), as in sqlx and SQLAlchemy. The path is not a host: it is parsed as the path
    // of `sqlite:PATH`, so `.`/`..` stay as written and a relative path may hold a space.
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let parsed = parse_url(&format!("sqlite:{rest}"), url)?;
    if parsed.fragment().is_some() {
        return Err(invalid(format!(
            "{url:?}: a file path has no `#fragment`; percent-encode `#` in a file name as %23"
        )));
    }
    let query = Query::of(url, &parsed)?;
    query.only_prefix(url, "sqlite://")?;
    // The path as written (the URL parser would resolve `a/../b`, which a file system with
    // symlinks does not), up to the query or fragment.
    let raw = rest.split(['?', '#']).next().unwrap_or_default();
    let path = decode(url, "path", raw)?;
    if path == ":memory:" {
        // The SQLite backend runs a writer connection beside a read pool; with an
        // in-memory database each connection would get its own private database.
        return Err(invalid(format!(
            "{url:?}: an in-memory SQLite database is not supported (the backend's \
             writer and readers would each see a different one); use `memory://` for \
             a throwaway store, or a file path"
        )));
    }
    if path.is_empty() {
        return Err(invalid(format!(
            "{url:?}: no database file; write `sqlite://state.db` (relative) or \
             `sqlite:///var/lib/bot/state.db` (absolute)"
        )));
    }
    Ok(Target::Sqlite {
        path,
        prefix: query.prefix,
    })
}

/// `redis+cluster://[user:password@]h1:p1,h2:p2[?params]`: one node URL per host, each with
/// the user, password and parameters.
fn parse_cluster(url: &str) -> Result<Target> {
    let rest = &url["redis+cluster:".len()..];
    let Some(rest) = rest.strip_prefix("//") else {
        return Err(invalid(format!(
            "{url:?}: write `redis+cluster://host1:6379,host2:6379`"
        )));
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
        None => (String::new(), authority),
    };
    let mut nodes = Vec::new();
    let mut prefix = None;
    for host in hosts.split(',').filter(|h| !h.is_empty()) {
        let node = parse_url(&format!("redis://{userinfo}{host}{tail}"), url)?;
        check_redis_node(url, &node, true)?;
        let query = Query::of(url, &node)?;
        prefix = query.prefix.clone();
        nodes.push(query.node_url(node));
    }
    if nodes.is_empty() {
        return Err(invalid(format!(
            "{url:?}: no cluster nodes; write `redis+cluster://host1:6379,host2:6379`"
        )));
    }
    Ok(Target::Redis {
        nodes,
        cluster: true,
        prefix,
    })
}

/// What the redis client would refuse, refused first with a message naming the part.
fn check_redis_node(shown: &str, url: &url::Url, cluster: bool) -> Result<()> {
    let unix = matches!(url.scheme(), "redis+unix" | "unix");
    if unix {
        if url.path().is_empty() || url.path() == "/" {
            return Err(invalid(format!(
                "{shown:?}: no socket path; write `redis+unix:///run/redis/redis.sock`"
            )));
        }
        return Ok(());
    }
    match url.host() {
        None => {
            return Err(invalid(format!(
                "{shown:?}: no host; write `redis://127.0.0.1:6379` (IPv6: `redis://[::1]:6379`)"
            )));
        }
        Some(url::Host::Domain("")) => {
            return Err(invalid(format!("{shown:?}: empty host")));
        }
        Some(_) => {}
    }
    decode(shown, "user name", url.username())?;
    if let Some(password) = url.password() {
        decode(shown, "password", password)?;
    }
    let db = url.path().trim_matches('/');
    if cluster && !db.is_empty() {
        return Err(invalid(format!(
            "{shown:?}: Redis Cluster has only database 0; drop the `/{db}`"
        )));
    }
    if !db.is_empty() && db.parse::<u32>().is_err() {
        return Err(invalid(format!(
            "{shown:?}: the path is the database number (`redis://host:6379/2`), not `{db}`"
        )));
    }
    match url.fragment() {
        None => Ok(()),
        Some("insecure") if url.scheme() == "rediss" => Err(invalid(format!(
            "{shown:?}: `#insecure` (TLS without certificate checks) is not supported; trust \
             a private CA with SSL_CERT_FILE=/path/to/ca.pem, or pass your own root \
             certificate through redis::Client::build_with_tls and \
             RedisBackend::builder_with_client"
        ))),
        Some(fragment) => Err(invalid(format!(
            "{shown:?}: a Redis URL has no `#{fragment}`"
        ))),
    }
}

/// libpq parameters sqlx understands, passed through to it as written.
const POSTGRES_PARAMETERS: &[&str] = &[
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
    "statement-cache-capacity",
];

/// libpq's `sslmode` values; `allow` connects without TLS (as sqlx does).
const POSTGRES_SSL_MODES: &[&str] = &[
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// The `sslmode`s that need TLS, so the `postgres-tls` feature.
fn ssl_mode_needs_tls(mode: Option<&str>) -> bool {
    matches!(mode, Some("require" | "verify-ca" | "verify-full"))
}

/// `postgres://` / `postgresql://`: libpq's URL form. sqlx would ignore an unknown parameter
/// with only a log line (a typo in `sslmode` would silently connect without TLS), so every
/// parameter is checked here.
fn parse_postgres(shown: &str, mut url: url::Url) -> Result<Target> {
    if let Some(fragment) = url.fragment() {
        return Err(invalid(format!(
            "{shown:?}: a PostgreSQL URL has no `#{fragment}`"
        )));
    }
    if url.host_str().is_some_and(|h| h.contains(',')) {
        return Err(invalid(format!(
            "{shown:?}: several hosts (libpq's failover list) are not supported; name one \
             server, or a proxy in front of them"
        )));
    }
    decode(shown, "user name", url.username())?;
    if let Some(password) = url.password() {
        decode(shown, "password", password)?;
    }
    decode(shown, "database name", url.path().trim_start_matches('/'))?;
    let query = Query::of(shown, &url)?;
    let mut connect_timeout = None;
    let mut ssl_mode = None;
    let mut passthrough = Vec::new();
    for (key, value) in query.passthrough {
        match key.as_str() {
            "connect_timeout" => {
                let seconds: u64 = value.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                    invalid(format!(
                        "{shown:?}: `connect_timeout=` is a whole number of seconds above 0, \
                         not {value:?}"
                    ))
                })?;
                connect_timeout = Some(Duration::from_secs(seconds));
            }
            "sslmode" | "ssl-mode" => {
                if !POSTGRES_SSL_MODES.contains(&value.as_str()) {
                    return Err(invalid(format!(
                        "{shown:?}: `sslmode={value}` is not one of {}",
                        POSTGRES_SSL_MODES.join(", ")
                    )));
                }
                ssl_mode = Some(value.clone());
                passthrough.push((key, value));
            }
            k if POSTGRES_PARAMETERS.contains(&k) || k.starts_with("options[") => {
                passthrough.push((key, value))
            }
            other => {
                return Err(invalid(format!(
                    "{shown:?}: unknown parameter `{other}`; postgres:// accepts `prefix=`, \
                     `connect_timeout=` and {}",
                    POSTGRES_PARAMETERS.join(", ")
                )));
            }
        }
    }
    let query = Query {
        prefix: query.prefix,
        passthrough,
    };
    // sqlx reads only `postgres://` and `postgresql://`; normalise the case it was given in.
    if url.scheme() != "postgres" && url.set_scheme("postgres").is_err() {
        return Err(invalid(format!("{shown:?}: cannot use this URL's scheme")));
    }
    Ok(Target::Postgres {
        url: query.node_url(url),
        prefix: query.prefix,
        connect_timeout,
        ssl_mode,
    })
}

fn schemes_list() -> String {
    let schemes = compiled_schemes();
    if schemes.is_empty() {
        "no scheme at all (no backend feature is enabled; enable `memory`, `sqlite` or `redis`)"
            .to_string()
    } else {
        schemes.join(", ")
    }
}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidInput, message).context(FACADE, Operation::Open)
}

/// The error for a scheme whose backend feature is off in this build.
#[allow(dead_code)] // unused when every backend feature is on
fn disabled(target: &Target, feature: &str) -> Error {
    invalid(format!(
        "{} needs the `{feature}` cargo feature of chat-state, which this build lacks; \
         this build understands {}",
        target.scheme(),
        schemes_list()
    ))
}

/// Connects to the backend named by `url` and returns a shareable, connected adapter.
///
/// | URL | backend (feature) |
/// |---|---|
/// | `memory://` | a fresh in-process store (`memory`) |
/// | `sqlite://state.db` (relative), `sqlite:///abs/state.db` | SQLite file (`sqlite`) |
/// | `redis://[user:password@]host:6379/0`, `redis://[::1]:6379`, `redis+unix:///path.sock` | Redis (`redis`) |
/// | `rediss://host:6380` | Redis over TLS (`redis-tls`), system roots or `SSL_CERT_FILE` |
/// | `redis+cluster://h1:6379,h2:6379` | Redis Cluster (`redis-cluster`) |
/// | `postgres://[user:password@]host:5432/db` (or `postgresql://`) | PostgreSQL (`postgres`) |
/// | `postgres://host/db?sslmode=verify-full&sslrootcert=ca.pem` | PostgreSQL over TLS (`postgres-tls`) |
///
/// URLs are parsed as URLs: percent-encoded parts are decoded (`sqlite:///srv/my%20bot/state.db`
/// is the file `/srv/my bot/state.db`; a password with `@` is written `p%40ss`), IPv6 hosts
/// go in brackets. `?prefix=NAME` isolates keys of SQLite, Redis and Postgres backends
/// (several bots, or a test per prefix, on one file or server); other query parameters go to
/// the redis client (e.g. `protocol=resp3`); for Postgres, libpq's `sslmode`, `sslrootcert`,
/// `sslcert`, `sslkey`, `host`, `port`, `dbname`, `user`, `password`, `application_name`,
/// `options` go to sqlx and `connect_timeout` (seconds) bounds getting a connection; any other
/// parameter is refused. A URL that does not parse, an
/// unknown scheme, or one whose feature is off, is an [`ErrorKind::InvalidInput`] error
/// that says what is wrong, listing the schemes this build understands where that helps.
///
/// ```
/// # #[cfg(feature = "memory")]
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let state = chat_state::connect("memory://").await?;
/// assert_eq!(state.backend_name(), "memory");
/// let err = chat_state::connect("mongodb://localhost").await.err().unwrap();
/// assert_eq!(err.kind(), chat_state::ErrorKind::InvalidInput);
/// assert!(err.to_string().contains("memory://"));
/// # Ok::<_, chat_state::Error>(())
/// # }).unwrap();
/// ```
pub async fn connect(url: &str) -> Result<Arc<dyn StateAdapter>> {
    connect_with(url, &ConnectOptions::default()).await
}

/// [`connect`] with options (tracing, prefix override).
pub async fn connect_with(url: &str, options: &ConnectOptions) -> Result<Arc<dyn StateAdapter>> {
    let mut target = Target::parse(url)?;
    if let Some(p) = &options.prefix {
        match &mut target {
            Target::Memory => {}
            Target::Sqlite { prefix, .. }
            | Target::Redis { prefix, .. }
            | Target::Postgres { prefix, .. } => *prefix = Some(p.clone()),
        }
    }
    let adapter = open(target).await?;
    adapter.connect().await?;
    #[cfg(not(target_arch = "wasm32"))]
    if options.trace {
        return Ok(crate::traced(adapter));
    }
    Ok(adapter)
}

#[allow(unused_variables, unreachable_code)] // arms depend on the enabled features
async fn open(target: Target) -> Result<Arc<dyn StateAdapter>> {
    match target {
        Target::Memory => {
            #[cfg(feature = "memory")]
            return Ok(Arc::new(chat_state_memory::MemoryState::default()));
            Err(disabled(&target, "memory"))
        }
        Target::Sqlite { path, prefix } => {
            #[cfg(all(feature = "sqlite", not(target_arch = "wasm32")))]
            return crate::backends::open_sqlite(&path, prefix.as_deref()).await;
            Err(disabled(&Target::Sqlite { path, prefix }, "sqlite"))
        }
        Target::Redis {
            nodes,
            cluster,
            prefix,
        } => {
            let tls = nodes.iter().any(|n| n.starts_with("rediss:"));
            #[cfg(all(feature = "redis", not(target_arch = "wasm32")))]
            if (!cluster || cfg!(feature = "redis-cluster"))
                && (!tls || cfg!(feature = "redis-tls"))
            {
                return crate::backends::open_redis(&nodes, cluster, prefix.as_deref()).await;
            }
            let feature = if cluster {
                "redis-cluster"
            } else if tls && cfg!(feature = "redis") {
                "redis-tls"
            } else {
                "redis"
            };
            Err(disabled(
                &Target::Redis {
                    nodes,
                    cluster,
                    prefix,
                },
                feature,
            ))
        }
        Target::Postgres {
            url,
            prefix,
            connect_timeout,
            ssl_mode,
        } => {
            let tls = ssl_mode_needs_tls(ssl_mode.as_deref());
            #[cfg(all(feature = "postgres", not(target_arch = "wasm32")))]
            if !tls || cfg!(feature = "postgres-tls") {
                return crate::backends::open_postgres(&url, prefix.as_deref(), connect_timeout)
                    .await;
            }
            if tls && cfg!(feature = "postgres") {
                return Err(invalid(format!(
                    "postgres:// with `sslmode={}` needs the `postgres-tls` cargo feature of \
                     chat-state, which this build lacks",
                    ssl_mode.unwrap_or_default()
                )));
            }
            let target = Target::Postgres {
                url,
                prefix,
                connect_timeout,
                ssl_mode,
            };
            Err(disabled(&target, "postgres"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(path: &str, prefix: Option<&str>) -> Option<Target> {
        Some(Target::Sqlite {
            path: path.into(),
            prefix: prefix.map(Into::into),
        })
    }

    fn redis(nodes: &[&str], cluster: bool, prefix: Option<&str>) -> Option<Target> {
        Some(Target::Redis {
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            cluster,
            prefix: prefix.map(Into::into),
        })
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(Target::parse("memory://").ok(), Some(Target::Memory));
        assert_eq!(Target::parse("memory:").ok(), Some(Target::Memory));
        assert_eq!(Target::parse(" MEMORY:// ").ok(), Some(Target::Memory));
        assert_eq!(
            Target::parse("sqlite://data/state.db?prefix=bot1").ok(),
            sqlite("data/state.db", Some("bot1"))
        );
        assert_eq!(
            Target::parse("sqlite:///var/lib/state.db").ok(),
            sqlite("/var/lib/state.db", None)
        );
        assert_eq!(
            Target::parse("sqlite:state.db").ok(),
            sqlite("state.db", None)
        );
        assert_eq!(
            Target::parse("redis://127.0.0.1:6380/2?prefix=p&protocol=resp3").ok(),
            redis(
                &["redis://127.0.0.1:6380/2?protocol=resp3"],
                false,
                Some("p")
            )
        );
        assert_eq!(
            Target::parse("redis+cluster://a:1,b:2?prefix=x").ok(),
            redis(&["redis://a:1", "redis://b:2"], true, Some("x"))
        );
        assert_eq!(
            Target::parse("redis+unix:///run/redis.sock?db=1").ok(),
            redis(&["redis+unix:///run/redis.sock?db=1"], false, None)
        );
    }

    fn postgres(
        url: &str,
        prefix: Option<&str>,
        timeout: Option<u64>,
        ssl: Option<&str>,
    ) -> Option<Target> {
        Some(Target::Postgres {
            url: url.into(),
            prefix: prefix.map(Into::into),
            connect_timeout: timeout.map(Duration::from_secs),
            ssl_mode: ssl.map(Into::into),
        })
    }

    #[test]
    fn postgres_urls_keep_libpq_parameters_and_take_ours_out() {
        assert_eq!(
            Target::parse("postgres://bot:p%40ss@db:5433/bots?prefix=b%201").ok(),
            postgres(
                "postgres://bot:p%40ss@db:5433/bots",
                Some("b 1"),
                None,
                None
            )
        );
        assert_eq!(
            Target::parse(
                "PostgreSQL://h/d?sslmode=verify-full&sslrootcert=/ca.pem&connect_timeout=3"
            )
            .ok(),
            postgres(
                "postgres://h/d?sslmode=verify-full&sslrootcert=%2Fca.pem",
                None,
                Some(3),
                Some("verify-full")
            )
        );
        assert_eq!(
            Target::parse("postgres:///bots?host=/run/postgresql&application_name=bot").ok(),
            postgres(
                "postgres:///bots?host=%2Frun%2Fpostgresql&application_name=bot",
                None,
                None,
                None
            )
        );
        assert_eq!(
            Target::parse("postgres://[::1]:5432/db?options=-c%20search_path%3Dbots").ok(),
            postgres(
                "postgres://[::1]:5432/db?options=-c+search_path%3Dbots",
                None,
                None,
                None
            )
        );
        let target = Target::parse("postgresql://h/d").ok();
        assert_eq!(target.as_ref().map(Target::scheme), Some("postgres://"));
        assert_eq!(target.map(|t| t.is_shared()), Some(true));
    }

    #[test]
    fn sqlite_paths_are_percent_decoded_and_kept_as_written() {
        assert_eq!(
            Target::parse("sqlite:///tmp/my%20dir/state.db").ok(),
            sqlite("/tmp/my dir/state.db", None)
        );
        assert_eq!(
            Target::parse("sqlite://my%20dir/state.db").ok(),
            sqlite("my dir/state.db", None)
        );
        // A relative path is not a host: a raw space, `.` and `..` stay as written.
        assert_eq!(
            Target::parse("sqlite://my dir/../state.db").ok(),
            sqlite("my dir/../state.db", None)
        );
        assert_eq!(
            Target::parse("sqlite://./State.DB").ok(),
            sqlite("./State.DB", None)
        );
        assert_eq!(
            Target::parse("sqlite:///srv/%C3%A9t%C3%A9/a%23b.db").ok(),
            sqlite("/srv/été/a#b.db", None)
        );
    }

    #[test]
    fn prefix_is_percent_decoded() {
        assert_eq!(
            Target::parse("sqlite://a.db?prefix=my%20bot").ok(),
            sqlite("a.db", Some("my bot"))
        );
        assert_eq!(
            Target::parse("redis://h:1?prefix=a%2Fb").ok(),
            redis(&["redis://h:1"], false, Some("a/b"))
        );
        assert_eq!(
            Target::parse("redis://h:1?prefix=a+b").ok(),
            redis(&["redis://h:1"], false, Some("a b"))
        );
    }

    #[test]
    fn redis_passwords_reach_the_client_encoded_as_it_expects() {
        // The redis client percent-decodes user and password itself; the node URL keeps
        // them encoded, so `p%40ss` reaches the server as `p@ss`.
        assert_eq!(
            Target::parse("redis://:p%40ss@127.0.0.1:6379").ok(),
            redis(&["redis://:p%40ss@127.0.0.1:6379"], false, None)
        );
        assert_eq!(
            Target::parse("redis://bot:s%3Acret%2F1@h:6379/3?prefix=p").ok(),
            redis(&["redis://bot:s%3Acret%2F1@h:6379/3"], false, Some("p"))
        );
        assert_eq!(
            Target::parse("redis+cluster://:p%40ss@a:1,b:2").ok(),
            redis(&["redis://:p%40ss@a:1", "redis://:p%40ss@b:2"], true, None)
        );
    }

    #[test]
    fn ipv6_hosts() {
        assert_eq!(
            Target::parse("redis://[::1]:6379").ok(),
            redis(&["redis://[::1]:6379"], false, None)
        );
        assert_eq!(
            Target::parse("redis://[2001:db8::1]/1?prefix=p").ok(),
            redis(&["redis://[2001:db8::1]/1"], false, Some("p"))
        );
        assert_eq!(
            Target::parse("redis+cluster://[::1]:7000,[::1]:7001").ok(),
            redis(&["redis://[::1]:7000", "redis://[::1]:7001"], true, None)
        );
    }

    #[test]
    fn rediss_keeps_its_scheme() {
        let target = Target::parse("rediss://bot:p%40ss@cache.example:6380/0?prefix=p").ok();
        assert_eq!(
            target,
            redis(
                &["rediss://bot:p%40ss@cache.example:6380/0"],
                false,
                Some("p")
            )
        );
        assert_eq!(target.map(|t| t.scheme()), Some("rediss://"));
    }

    #[test]
    fn rejects_bad_urls_saying_what_is_wrong() {
        for (url, hint) in [
            ("", "empty URL"),
            (
                "mongodb://x",
                "unknown URL scheme `mongodb://`; this build understands",
            ),
            ("localhost:6379", "unknown URL scheme"),
            ("not a url", "no `scheme://`"),
            ("sqlite://", "no database file"),
            ("sqlite:", "no database file"),
            ("sqlite::memory:", "use `memory://`"),
            ("sqlite://a.db#x", "no `#fragment`"),
            (
                "sqlite://a.db?mode=ro",
                "unknown parameter(s) mode; sqlite:// accepts only",
            ),
            ("sqlite:///bad%FF.db", "path is not UTF-8"),
            ("memory://x", "use `memory://`"),
            ("memory:///x", "use `memory://`"),
            ("memory://?foo=1", "accepts only `prefix=`"),
            ("sqlite://a.db?prefix=", "needs a value"),
            ("sqlite://a.db?prefix=a&prefix=b", "given twice"),
            ("redis+cluster://", "no cluster nodes"),
            ("redis+cluster:a:1", "redis+cluster://host1"),
            ("redis+cluster://a:1/2", "only database 0"),
            ("redis://h:99999", "invalid port number (a port is a number"),
            ("redis://[::1:6379", "IPv6 host in brackets"),
            ("redis://", "no host"),
            ("redis:///0", "no host"),
            ("redis://h:1/x", "database number"),
            ("redis://h:1#insecure", "no `#insecure`"),
            ("rediss://h:1#nope", "no `#nope`"),
            ("rediss://h:1/#insecure", "SSL_CERT_FILE"),
            ("redis://:%FF@h:1", "password is not UTF-8"),
            ("redis+unix://", "no socket path"),
            (
                "postgres://h/d?sslmode=required",
                "not one of disable, allow",
            ),
            (
                "postgres://h/d?ssl_mode=require",
                "unknown parameter `ssl_mode`",
            ),
            (
                "postgres://h/d?connect_timeout=0",
                "whole number of seconds",
            ),
            (
                "postgres://h/d?connect_timeout=2.5",
                "whole number of seconds",
            ),
            ("postgres://h/d#x", "no `#x`"),
            ("postgres://a,b/d", "several hosts"),
            ("postgres://:%FF@h/d", "password is not UTF-8"),
            ("postgres://h/d%FF", "database name is not UTF-8"),
            ("postgres://h/d?prefix=", "needs a value"),
            ("postgres://h:70000/d", "invalid port number"),
        ] {
            let err = Target::parse(url).err().map(|e| (e.kind(), e.to_string()));
            let Some((kind, text)) = err else {
                panic!("{url:?} parsed")
            };
            assert_eq!(kind, ErrorKind::InvalidInput, "{url}");
            assert!(text.contains(hint), "{url}: {text}");
            assert!(text.starts_with("chat-state: open failed"), "{url}: {text}");
        }
    }

    #[cfg(not(feature = "redis"))]
    #[tokio::test]
    async fn disabled_scheme_lists_compiled_ones() {
        let err = connect("redis://127.0.0.1:1")
            .await
            .err()
            .map(|e| e.to_string());
        let text = err.unwrap_or_default();
        assert!(text.contains("`redis` cargo feature"), "{text}");
        for scheme in compiled_schemes() {
            assert!(text.contains(scheme), "{text}");
        }
    }

    #[cfg(not(feature = "postgres"))]
    #[tokio::test]
    async fn postgres_without_the_feature_names_it() {
        let err = connect("postgres://127.0.0.1:1/d").await.err();
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("`postgres` cargo feature"), "{text}");
    }

    #[cfg(all(feature = "postgres", not(feature = "postgres-tls")))]
    #[tokio::test]
    async fn postgres_tls_without_the_feature_names_it() {
        let err = connect("postgres://127.0.0.1:1/d?sslmode=require")
            .await
            .err();
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("`postgres-tls` cargo feature"), "{text}");
        assert!(text.contains("sslmode=require"), "{text}");
    }

    #[cfg(all(feature = "redis", not(feature = "redis-tls")))]
    #[tokio::test]
    async fn rediss_without_tls_names_the_feature() {
        let err = connect("rediss://127.0.0.1:1").await.err();
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("`redis-tls` cargo feature"), "{text}");
        assert!(!compiled_schemes().contains(&"rediss://"));
    }
}
