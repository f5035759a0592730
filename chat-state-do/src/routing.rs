//! Which Durable Object an operation goes to.
//!
//! One object handles roughly 500-1000 requests/s, so busy bots spread threads over shards:
//!
//! * thread-scoped operations (subscriptions, locks, queues) go to `shard_key(thread_id)`, or
//!   to the default object when there is no shard function;
//! * cache and list keys go to the default object, unless a key router maps the key to a
//!   thread, in which case they go to that thread's shard. [`thread_of_key`] is the ready-made
//!   router: it co-locates `thread-state:<id>`, `msg-history:<id>`, `active-turn:<id>` and
//!   `abort-turn:<id>` with thread `<id>`.
//!
//! Every lock id must always reach the same object, because fencing numbers are issued per
//! object: changing the shard function of a live deployment can move a lock id to an object
//! whose fence counter is lower. Add shards by deploying under a new default-object name.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// Maps a thread id (or lock id) to the name of the object that owns it.
pub type ShardFn = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// Maps a cache or list key to the thread it belongs to, or `None` for the default object.
pub type KeyRouteFn = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The cache/list key prefixes [`thread_of_key`] recognises; what follows is the thread id.
pub const THREAD_KEY_PREFIXES: &[&str] = &[
    "thread-state:",
    "msg-history:",
    "active-turn:",
    "abort-turn:",
];

/// The ready-made key router: the thread id named by a `thread-state:`, `msg-history:`,
/// `active-turn:` or `abort-turn:` key, `None` for any other key.
///
/// ```
/// use chat_state_do::routing::thread_of_key;
/// assert_eq!(thread_of_key("msg-history:slack:C1:17").as_deref(), Some("slack:C1:17"));
/// assert_eq!(thread_of_key("dedupe:slack:m1"), None);
/// assert_eq!(thread_of_key("thread-state:"), None); // no id: default object
/// ```
pub fn thread_of_key(key: &str) -> Option<String> {
    THREAD_KEY_PREFIXES
        .iter()
        .find_map(|p| key.strip_prefix(p))
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
}

/// A shard function spreading ids over `shards` objects named `<prefix>-<n>` by a stable
/// hash (FNV-1a, identical on every platform and release, so ids never move).
///
/// ```
/// use chat_state_do::routing::hashed_shards;
/// let shard = hashed_shards("chat-state", 16);
/// let name = shard("slack:C1:17");
/// assert!(name.starts_with("chat-state-"));
/// assert_eq!(name, shard("slack:C1:17"));
/// ```
pub fn hashed_shards(prefix: &str, shards: u32) -> ShardFn {
    let prefix = prefix.to_owned();
    // Zero shards is a configuration mistake; one object is the closest sane meaning.
    let shards = u64::from(shards.max(1));
    Arc::new(move |id: &str| format!("{prefix}-{}", fnv1a(id.as_bytes()) % shards))
}

/// FNV-1a 64 of `bytes`. Object names are derived from it and objects keep their data, so it
/// must never change: the tests pin it to the published test vectors.
fn fnv1a(bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(bytes);
    hasher.finish()
}

/// The routing rules of one adapter.
#[derive(Clone)]
pub struct Router {
    default_object: String,
    shard_key: Option<ShardFn>,
    key_route: Option<KeyRouteFn>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("default_object", &self.default_object)
            .field("shard_key", &self.shard_key.is_some())
            .field("key_route", &self.key_route.is_some())
            .finish()
    }
}

impl Router {
    /// Everything goes to `default_object`.
    pub fn new(default_object: impl Into<String>) -> Self {
        Self {
            default_object: default_object.into(),
            shard_key: None,
            key_route: None,
        }
    }

    /// Replaces the default object's name, keeping the functions.
    pub fn with_default_object(mut self, default_object: impl Into<String>) -> Self {
        self.default_object = default_object.into();
        self
    }

    /// Thread-scoped operations go to `shard(thread_id)`.
    pub fn with_shard_key(mut self, shard: ShardFn) -> Self {
        self.shard_key = Some(shard);
        self
    }

    /// Cache and list keys that `route` maps to a thread go to that thread's object.
    pub fn with_key_route(mut self, route: KeyRouteFn) -> Self {
        self.key_route = Some(route);
        self
    }

    /// The default object's name.
    pub fn default_object(&self) -> &str {
        &self.default_object
    }

    /// The object for a thread-scoped operation (subscription, lock, queue).
    ///
    /// ```
    /// use chat_state_do::routing::{Router, hashed_shards, thread_of_key};
    /// use std::sync::Arc;
    /// let r = Router::new("main")
    ///     .with_shard_key(hashed_shards("shard", 4))
    ///     .with_key_route(Arc::new(thread_of_key));
    /// let t = r.object_for_thread("T1").into_owned();
    /// assert_eq!(r.object_for_key("thread-state:T1"), t);
    /// assert_eq!(r.object_for_key("dedupe:x"), "main");
    /// ```
    pub fn object_for_thread<'a>(&'a self, thread_id: &str) -> Cow<'a, str> {
        match &self.shard_key {
            Some(shard) => Cow::Owned(shard(thread_id)),
            None => Cow::Borrowed(&self.default_object),
        }
    }

    /// The object for a cache or list key.
    pub fn object_for_key<'a>(&'a self, key: &str) -> Cow<'a, str> {
        match self.key_route.as_ref().and_then(|route| route(key)) {
            Some(thread) => Cow::Owned(self.object_for_thread(&thread).into_owned()),
            None => Cow::Borrowed(&self.default_object),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_functions_everything_is_the_default_object() {
        let r = Router::new("main");
        assert_eq!(r.object_for_thread("t"), "main");
        assert_eq!(r.object_for_key("thread-state:t"), "main");
    }

    #[test]
    fn key_route_without_shards_stays_on_the_default_object() {
        let r = Router::new("main").with_key_route(Arc::new(thread_of_key));
        assert_eq!(r.object_for_key("msg-history:t"), "main");
    }

    #[test]
    fn hashed_shards_are_stable_and_spread() {
        let shard = hashed_shards("s", 16);
        // Pinned values: a changed hash would silently move every lock id to another object.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let used: std::collections::BTreeSet<String> =
            (0..1000).map(|i| shard(&format!("thread-{i}"))).collect();
        assert_eq!(used.len(), 16, "{used:?}");
        assert_eq!(hashed_shards("s", 0)("x"), "s-0");
    }

    #[test]
    fn only_thread_naming_prefixes_are_routed() {
        for p in THREAD_KEY_PREFIXES {
            assert_eq!(thread_of_key(&format!("{p}abc")).as_deref(), Some("abc"));
        }
        assert_eq!(thread_of_key("channel-state:abc"), None);
        assert_eq!(thread_of_key("xthread-state:abc"), None);
    }
}
