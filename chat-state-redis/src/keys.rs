//! The key layout, shared with the TypeScript Chat SDK's Redis adapter.
//!
//! Single node (exactly upstream's layout, plus our fence counters):
//!
//! | what | key | type |
//! |---|---|---|
//! | subscriptions | `<p>:subscriptions` | SET of thread ids |
//! | lock | `<p>:lock:<id>` | string = token, expiring (`PX`) |
//! | fence counter | `<p>:fence:<id>` | integer, never expires |
//! | cache | `<p>:cache:<key>` | string (JSON text) |
//! | list | `<p>:list:<key>` | LIST of JSON text |
//! | queue | `<p>:queue:<id>` | LIST of JSON `{enqueuedAt, expiresAt, message}` |
//!
//! Redis Cluster: the acquire script touches the lock key and its fence counter, which must
//! live in one hash slot, so both carry a hash tag built from the lock id:
//! `<p>:lock:{<id>}` and `<p>:fence:{<id>}`. An id containing `{` or `}` would end or empty
//! the tag, so such ids are hex-encoded behind a second brace: `<p>:lock:{{<hex>}`. (A plain
//! id never contains `{`, so the two forms cannot collide.) Every other key is single-key and
//! keeps the upstream layout on a cluster too.

use chat_state_core::{Error, ErrorKind, Operation, Result};

/// The default key prefix, the same as upstream's.
pub const DEFAULT_PREFIX: &str = "chat-sdk";

/// Longest accepted prefix, in bytes.
pub const MAX_PREFIX_BYTES: usize = 64;

/// Checks a key prefix: 1 to [`MAX_PREFIX_BYTES`] bytes of ASCII letters, digits, `-`, `_`
/// and `.`.
///
/// The separator `:` is refused because it lets two prefixes collide (prefix `a:lock` with
/// cache key `x` is the same Redis key as prefix `a` with lock id `cache:x`); `{` and `}`
/// are refused because on a cluster they would pin every key to one hash slot.
pub fn validate_prefix(backend: &'static str, prefix: &str) -> Result<()> {
    let fail = |why: String| {
        Err(Error::new(ErrorKind::InvalidInput, why).context(backend, Operation::Open))
    };
    if prefix.is_empty() {
        return fail("key prefix is empty; use the default `chat-sdk` or a bot name".into());
    }
    if prefix.len() > MAX_PREFIX_BYTES {
        return fail(format!(
            "key prefix is {} bytes; the limit is {MAX_PREFIX_BYTES}",
            prefix.len()
        ));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return fail(format!(
            "key prefix {prefix:?} contains {c:?}; use only ASCII letters, digits, `-`, `_` and \
             `.` (a `:` would let two prefixes address the same keys)"
        ));
    }
    Ok(())
}

/// Builds the keys of one adapter.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    cluster: bool,
}

impl Keys {
    pub(crate) fn new(prefix: &str, cluster: bool) -> Self {
        Self {
            prefix: prefix.to_owned(),
            cluster,
        }
    }

    fn plain(&self, kind: &str, id: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + kind.len() + id.len() + 2);
        k.push_str(&self.prefix);
        k.push(':');
        k.push_str(kind);
        k.push(':');
        k.push_str(id);
        k
    }

    /// Keys of multi-key scripts: tagged with the id on a cluster.
    fn tagged(&self, kind: &str, id: &str) -> String {
        if !self.cluster {
            return self.plain(kind, id);
        }
        let tag = if id.contains(['{', '}']) {
            let mut hex = String::with_capacity(1 + 2 * id.len());
            hex.push('{');
            for b in id.bytes() {
                hex.push_str(&format!("{b:02x}"));
            }
            hex
        } else {
            id.to_owned()
        };
        self.plain(kind, &format!("{{{tag}}}"))
    }

    pub(crate) fn is_cluster(&self) -> bool {
        self.cluster
    }

    pub(crate) fn subscriptions(&self) -> String {
        format!("{}:subscriptions", self.prefix)
    }
    pub(crate) fn lock(&self, id: &str) -> String {
        self.tagged("lock", id)
    }
    pub(crate) fn fence(&self, id: &str) -> String {
        self.tagged("fence", id)
    }
    pub(crate) fn cache(&self, key: &str) -> String {
        self.plain("cache", key)
    }
    pub(crate) fn list(&self, key: &str) -> String {
        self.plain("list", key)
    }
    pub(crate) fn queue(&self, id: &str) -> String {
        self.plain("queue", id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_node_layout_is_upstream() {
        let k = Keys::new("chat-sdk", false);
        assert_eq!(k.subscriptions(), "chat-sdk:subscriptions");
        assert_eq!(k.lock("slack:C1:t1"), "chat-sdk:lock:slack:C1:t1");
        assert_eq!(k.fence("slack:C1:t1"), "chat-sdk:fence:slack:C1:t1");
        assert_eq!(k.cache("dedupe:x"), "chat-sdk:cache:dedupe:x");
        assert_eq!(k.list("msg-history:t"), "chat-sdk:list:msg-history:t");
        assert_eq!(k.queue("t"), "chat-sdk:queue:t");
    }

    #[test]
    fn cluster_lock_keys_share_a_tag_built_from_the_id() {
        let k = Keys::new("p", true);
        assert_eq!(k.lock("a:b"), "p:lock:{a:b}");
        assert_eq!(k.fence("a:b"), "p:fence:{a:b}");
        // Braces in the id would end or empty the tag: hex behind a second brace.
        assert_eq!(k.lock("}x"), "p:lock:{{7d78}");
        assert_eq!(k.fence("}x"), "p:fence:{{7d78}");
        assert_eq!(k.cache("a"), "p:cache:a");
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(validate_prefix("redis", "chat-sdk").is_ok());
        assert!(validate_prefix("redis", "bot_1.v2").is_ok());
        for bad in ["", "a:lock", "a{b}", "a b", "é", &"x".repeat(65)] {
            let err = validate_prefix("redis", bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
            assert_eq!(err.operation(), Some(Operation::Open));
        }
    }
}
