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

/// How a key's id is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tag {
    /// `<p>:<kind>:<id>`: upstream's layout.
    None,
    /// `<p>:<kind>:{<id>}`: a cluster hash tag, for keys a script touches together.
    Braced,
    /// `<p>:<kind>:{{<hex>}`: an id holding `{` or `}`, which would end or empty the tag.
    Hex,
}

/// One Redis key, written straight into a command's argument buffer: building a command
/// allocates no `String` per key.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Key<'a> {
    prefix: &'a str,
    kind: &'static str,
    /// `None` for the one key of a kind (`<p>:subscriptions`).
    id: Option<&'a str>,
    tag: Tag,
}

impl Key<'_> {
    /// Hands the key's bytes to `piece`, in order. The one place the layout is spelled out.
    fn emit(&self, mut piece: impl FnMut(&[u8])) {
        piece(self.prefix.as_bytes());
        piece(b":");
        piece(self.kind.as_bytes());
        let Some(id) = self.id else { return };
        piece(b":");
        match self.tag {
            Tag::None => piece(id.as_bytes()),
            Tag::Braced => {
                piece(b"{");
                piece(id.as_bytes());
                piece(b"}");
            }
            Tag::Hex => {
                piece(b"{{");
                for b in id.bytes() {
                    let mut hex = [0u8; 2];
                    // Two output bytes per input byte: the slice always fits.
                    if hex::encode_to_slice([b], &mut hex).is_ok() {
                        piece(&hex);
                    }
                }
                piece(b"}");
            }
        }
    }

    /// Bytes the key takes, to size a command's buffer before it is written.
    pub(crate) fn len(&self) -> usize {
        let id = self.id.map_or(0, |id| {
            1 + match self.tag {
                Tag::None => id.len(),
                Tag::Braced => id.len() + 2,
                Tag::Hex => 2 * id.len() + 3,
            }
        });
        self.prefix.len() + 1 + self.kind.len() + id
    }

    /// Which of `n` connections carries this key's commands: the same one for every command
    /// on the key, so commands on one key keep their order on the wire.
    pub(crate) fn route(&self, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        use std::hash::BuildHasher;
        // Fixed seed: routing must be stable for the adapter's lifetime, and an attacker who
        // chooses thread ids gains nothing by piling them on one connection of a few.
        let hash =
            foldhash::fast::FixedState::with_seed(0x6368_6174).hash_one((self.kind, self.id));
        // `n` is a small connection count, so the cast back cannot truncate.
        (hash % n as u64) as usize
    }
}

impl std::fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut bytes = Vec::with_capacity(self.len());
        self.emit(|p| bytes.extend_from_slice(p));
        // Every piece is UTF-8 (`&str`s and ASCII hex), so nothing is replaced.
        f.write_str(&String::from_utf8_lossy(&bytes))
    }
}

impl redis::ToRedisArgs for Key<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        use std::io::Write;
        let mut arg = out.writer_for_next_arg();
        // Writing into the command's in-memory buffer cannot fail.
        self.emit(|p| {
            let _ = arg.write_all(p);
        });
    }
}

impl Keys {
    pub(crate) fn new(prefix: &str, cluster: bool) -> Self {
        Self {
            prefix: prefix.to_owned(),
            cluster,
        }
    }

    fn plain<'a>(&'a self, kind: &'static str, id: &'a str) -> Key<'a> {
        Key {
            prefix: &self.prefix,
            kind,
            id: Some(id),
            tag: Tag::None,
        }
    }

    /// Keys of multi-key scripts: tagged with the id on a cluster.
    fn tagged<'a>(&'a self, kind: &'static str, id: &'a str) -> Key<'a> {
        let tag = if !self.cluster {
            Tag::None
        } else if id.contains(['{', '}']) {
            Tag::Hex
        } else {
            Tag::Braced
        };
        Key {
            tag,
            ..self.plain(kind, id)
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        self.cluster
    }

    pub(crate) fn subscriptions(&self) -> Key<'_> {
        Key {
            prefix: &self.prefix,
            kind: "subscriptions",
            id: None,
            tag: Tag::None,
        }
    }
    pub(crate) fn lock<'a>(&'a self, id: &'a str) -> Key<'a> {
        self.tagged("lock", id)
    }
    pub(crate) fn fence<'a>(&'a self, id: &'a str) -> Key<'a> {
        self.tagged("fence", id)
    }
    pub(crate) fn cache<'a>(&'a self, key: &'a str) -> Key<'a> {
        self.plain("cache", key)
    }
    pub(crate) fn list<'a>(&'a self, key: &'a str) -> Key<'a> {
        self.plain("list", key)
    }
    pub(crate) fn queue<'a>(&'a self, id: &'a str) -> Key<'a> {
        self.plain("queue", id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_node_layout_is_upstream() {
        let k = Keys::new("chat-sdk", false);
        assert_eq!(k.subscriptions().to_string(), "chat-sdk:subscriptions");
        assert_eq!(
            k.lock("slack:C1:t1").to_string(),
            "chat-sdk:lock:slack:C1:t1"
        );
        assert_eq!(
            k.fence("slack:C1:t1").to_string(),
            "chat-sdk:fence:slack:C1:t1"
        );
        assert_eq!(k.cache("dedupe:x").to_string(), "chat-sdk:cache:dedupe:x");
        assert_eq!(
            k.list("msg-history:t").to_string(),
            "chat-sdk:list:msg-history:t"
        );
        assert_eq!(k.queue("t").to_string(), "chat-sdk:queue:t");
    }

    #[test]
    fn cluster_lock_keys_share_a_tag_built_from_the_id() {
        let k = Keys::new("p", true);
        assert_eq!(k.lock("a:b").to_string(), "p:lock:{a:b}");
        assert_eq!(k.fence("a:b").to_string(), "p:fence:{a:b}");
        // Braces in the id would end or empty the tag: hex behind a second brace.
        assert_eq!(k.lock("}x").to_string(), "p:lock:{{7d78}");
        assert_eq!(k.fence("}x").to_string(), "p:fence:{{7d78}");
        assert_eq!(k.cache("a").to_string(), "p:cache:a");
    }

    #[test]
    fn keys_written_into_commands_are_the_layout() {
        use redis::ToRedisArgs;
        for cluster in [false, true] {
            let k = Keys::new("chat-sdk", cluster);
            for key in [
                k.subscriptions(),
                k.lock("slack:C1:t1"),
                k.fence("}{x"),
                k.cache("é:1"),
                k.queue(""),
            ] {
                let written = key.to_redis_args();
                assert_eq!(written, vec![key.to_string().into_bytes()], "{key}");
                assert_eq!(key.len(), written[0].len(), "{key}");
            }
        }
    }

    #[test]
    fn a_key_always_takes_the_same_connection() {
        let k = Keys::new("p", false);
        assert_eq!(k.lock("t").route(1), 0);
        let routes: Vec<usize> = (0..64).map(|i| k.cache(&i.to_string()).route(4)).collect();
        for (i, route) in routes.iter().enumerate() {
            assert!(*route < 4);
            assert_eq!(k.cache(&i.to_string()).route(4), *route);
        }
        // Spread over every connection, not piled on one.
        for n in 0..4 {
            assert!(routes.contains(&n), "no key on connection {n}: {routes:?}");
        }
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
