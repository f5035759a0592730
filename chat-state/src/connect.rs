//! Connect-by-URL: the backend is chosen by the URL's scheme, among those compiled in.

use std::sync::Arc;

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
        #[cfg(all(feature = "redis", not(target_arch = "wasm32")))]
        "rediss://",
        #[cfg(all(feature = "redis-cluster", not(target_arch = "wasm32")))]
        "redis+cluster://",
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
    /// Key prefix for backends that share storage (SQLite, Redis); overrides the URL's
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

/// A parsed connection URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// `memory://`: a fresh in-process adapter.
    Memory,
    /// `sqlite://PATH` (relative), `sqlite:///abs/path` or `sqlite:PATH`.
    Sqlite {
        /// The database file.
        path: String,
        prefix: Option<String>,
    },
    /// `redis://`, `rediss://` (single node) or `redis+cluster://h1:p1,h2:p2` (cluster).
    Redis {
        /// The URLs handed to the redis client, without our own `prefix=` parameter.
        nodes: Vec<String>,
        cluster: bool,
        prefix: Option<String>,
    },
}

impl Target {
    /// The scheme as the user wrote it, for messages.
    pub(crate) fn scheme(&self) -> &'static str {
        match self {
            Target::Memory => "memory://",
            Target::Sqlite { .. } => "sqlite://",
            Target::Redis { cluster: false, .. } => "redis://",
            Target::Redis { cluster: true, .. } => "redis+cluster://",
        }
    }

    /// Whether the data outlives the adapter (so a second connection sees it).
    pub(crate) fn is_shared(&self) -> bool {
        match self {
            Target::Memory => false,
            Target::Sqlite { .. } => true,
            Target::Redis { .. } => true,
        }
    }

    pub(crate) fn parse(url: &str) -> Result<Target> {
        let url = url.trim();
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (url, None),
        };
        let mut prefix = None;
        let mut passthrough = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if key != "prefix" {
                passthrough.push(pair);
            } else if value.is_empty() {
                return Err(invalid(format!(
                    "{url:?}: `prefix=` needs a value, e.g. `?prefix=mybot`"
                )));
            } else {
                prefix = Some(value.to_string());
            }
        }
        let lower = base.to_ascii_lowercase();
        let target = if lower == "memory:" || lower.starts_with("memory://") {
            if base.len() > "memory://".len() {
                return Err(invalid(format!(
                    "{url:?}: memory:// takes no host or path (each connection is a fresh, \
                     private in-process store); use `memory://`"
                )));
            }
            Target::Memory
        } else if lower.starts_with("sqlite:") {
            let rest = &base["sqlite:".len()..];
            // `sqlite://rel/path` is relative, `sqlite:///abs/path` absolute (the third slash
            // starts the path), as in sqlx and SQLAlchemy.
            let path = rest.strip_prefix("//").unwrap_or(rest);
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
            Target::Sqlite {
                path: path.to_string(),
                prefix,
            }
        } else if lower.starts_with("redis+cluster://") {
            let hosts = &base["redis+cluster://".len()..];
            let nodes: Vec<String> = hosts
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| with_query(&format!("redis://{h}"), &passthrough))
                .collect();
            if nodes.is_empty() {
                return Err(invalid(format!(
                    "{url:?}: no cluster nodes; write `redis+cluster://host1:6379,host2:6379`"
                )));
            }
            Target::Redis {
                nodes,
                cluster: true,
                prefix,
            }
        } else if lower.starts_with("redis://")
            || lower.starts_with("rediss://")
            || lower.starts_with("redis+unix://")
            || lower.starts_with("unix://")
        {
            Target::Redis {
                nodes: vec![with_query(base, &passthrough)],
                cluster: false,
                prefix,
            }
        } else {
            return Err(invalid(format!(
                "{url:?}: unknown URL scheme; this build understands {}",
                schemes_list()
            )));
        };
        if !matches!(target, Target::Redis { .. }) && !passthrough.is_empty() {
            return Err(invalid(format!(
                "{url:?}: unknown parameter(s) {}; {} accepts only `prefix=`",
                passthrough.join(", "),
                target.scheme()
            )));
        }
        Ok(target)
    }
}

fn with_query(base: &str, pairs: &[&str]) -> String {
    if pairs.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", pairs.join("&"))
    }
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
/// | `redis://host:6379/0`, `rediss://...` | Redis (`redis`) |
/// | `redis+cluster://h1:6379,h2:6379` | Redis Cluster (`redis-cluster`) |
///
/// `?prefix=NAME` isolates keys of SQLite and Redis backends (several bots, or a test per
/// prefix, on one file or server). An unknown scheme, or one whose feature is off, is an
/// [`ErrorKind::InvalidInput`] error listing the schemes this build understands.
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
            Target::Sqlite { prefix, .. } | Target::Redis { prefix, .. } => {
                *prefix = Some(p.clone())
            }
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
            return Ok(Arc::new(chat_state_memory::MemoryState::new()));
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
            #[cfg(all(feature = "redis", not(target_arch = "wasm32")))]
            if !cluster || cfg!(feature = "redis-cluster") {
                return crate::backends::open_redis(&nodes, cluster, prefix.as_deref()).await;
            }
            let feature = if cluster { "redis-cluster" } else { "redis" };
            Err(disabled(
                &Target::Redis {
                    nodes,
                    cluster,
                    prefix,
                },
                feature,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(Target::parse("memory://").ok(), Some(Target::Memory));
        assert_eq!(
            Target::parse("sqlite://data/state.db?prefix=bot1").ok(),
            Some(Target::Sqlite {
                path: "data/state.db".into(),
                prefix: Some("bot1".into())
            })
        );
        assert_eq!(
            Target::parse("sqlite:///var/lib/state.db").ok(),
            Some(Target::Sqlite {
                path: "/var/lib/state.db".into(),
                prefix: None
            })
        );
        assert_eq!(
            Target::parse("redis://127.0.0.1:6380/2?prefix=p&protocol=resp3").ok(),
            Some(Target::Redis {
                nodes: vec!["redis://127.0.0.1:6380/2?protocol=resp3".into()],
                cluster: false,
                prefix: Some("p".into())
            })
        );
        assert_eq!(
            Target::parse("redis+cluster://a:1,b:2?prefix=x").ok(),
            Some(Target::Redis {
                nodes: vec!["redis://a:1".into(), "redis://b:2".into()],
                cluster: true,
                prefix: Some("x".into())
            })
        );
    }

    #[test]
    fn rejects_bad_urls_with_the_way_out() {
        for (url, hint) in [
            ("mongodb://x", "this build understands"),
            ("sqlite://", "no database file"),
            ("sqlite::memory:", "use `memory://`"),
            ("memory://x", "use `memory://`"),
            ("memory://?foo=1", "accepts only `prefix=`"),
            ("sqlite://a.db?prefix=", "needs a value"),
            ("redis+cluster://", "no cluster nodes"),
        ] {
            let err = Target::parse(url).err().map(|e| (e.kind(), e.to_string()));
            let Some((kind, text)) = err else {
                panic!("{url} parsed")
            };
            assert_eq!(kind, ErrorKind::InvalidInput, "{url}");
            assert!(text.contains(hint), "{url}: {text}");
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
}
