//! The key layout, shared with the TypeScript Chat SDK's Redis adapter.
//!
//! Single node (exactly upstream's layout, plus our fence counters and fence records):
//!
//! | what | key | type |
//! |---|---|---|
//! | subscriptions | `<p>:subscriptions` | SET of thread ids |
//! | lock | `<p>:lock:<id>` | string = token, expiring (`PX`) |
//! | fence counter | `<p>:fence:<id>` | integer, never expires |
//! | cache | `<p>:cache:<key>` | string (JSON text) |
//! | fence record | `<p>:fenced:<key>` | string `<fence>:<lock id>`, the TTL of the last fenced write of `<p>:cache:<key>` |
//! | list | `<p>:list:<key>` | LIST of JSON text |
//! | queue | `<p>:queue:<id>` | LIST of JSON `{enqueuedAt, expiresAt, message}` |
//!
//! Fence records are ours alone (written only by `set_fenced`): a TypeScript bot never reads
//! them, and its plain `set`/`delete` of the cache key leave them alone, as ours do.
//!
//! Redis Cluster: a script's keys must live in one hash slot.
//! - The acquire script touches the lock key and its fence counter; admit and
//!   release_or_next touch those and the thread's queue. So all three carry a hash tag built
//!   from the id: `<p>:lock:{<id>}`, `<p>:fence:{<id>}`, `<p>:queue:{<id>}`. An id containing
//!   `{` or `}` would end or empty the tag, so such ids are hex-encoded behind a second brace:
//!   `<p>:lock:{{<hex>}`. (A plain id never contains `{`, so the two forms cannot collide.)
//!   The queue key's tag is a cluster-only change of layout (queues written by a TypeScript
//!   bot or by an earlier version under `<p>:queue:<id>` are not read); the lock keys already
//!   differ from upstream's on a cluster.
//! - The set_fenced script touches a cache key and its fence record, so the record is tagged
//!   with a short string that hashes to the cache key's own slot (and the cache key keeps the
//!   upstream layout): `<p>:fenced:{<tag>}:<key>`.
//! - What does not fit in one slot costs round trips. The dedupe key (a cache key) has its
//!   own slot, so admit is two steps: the claim, then the thread's script (with `SISMEMBER`
//!   sent beside it). Admit with a read key (another cache key, another slot) adds a `GET`
//!   after those, sent only when admitted (it must follow the lock): three round trips
//!   instead of one. release_or_next_with is set_fenced's script on the cache key's slot,
//!   then, if stored, release_or_next's on the thread's: two instead of one. Tagging the
//!   cache keys by thread would save them, but cache keys are free-form (a key is not tied
//!   to one thread) and keep the upstream layout a TypeScript bot reads.
//!
//! Every other key is single-key and keeps the upstream layout on a cluster too.

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
    /// `<p>:<kind>:{<tag>}:<id>`: pinned to the hash slot `<tag>` hashes to (another key's
    /// slot, see [`slot_tag`]).
    #[cfg(feature = "cluster")]
    Slot(&'static str),
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
            #[cfg(feature = "cluster")]
            Tag::Slot(tag) => {
                piece(b"{");
                piece(tag.as_bytes());
                piece(b"}:");
                piece(id.as_bytes());
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
                #[cfg(feature = "cluster")]
                Tag::Slot(tag) => tag.len() + 3 + id.len(),
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
    /// Tagged like the lock on a cluster: admit and release_or_next touch both in one script.
    pub(crate) fn queue<'a>(&'a self, id: &'a str) -> Key<'a> {
        self.tagged("queue", id)
    }
    /// The fence record of cache key `key`: in the cache key's hash slot on a cluster.
    pub(crate) fn fenced<'a>(&'a self, key: &'a str) -> Key<'a> {
        #[cfg(feature = "cluster")]
        if self.cluster {
            return Key {
                tag: Tag::Slot(slot_tag(&self.cache(key))),
                ..self.plain("fenced", key)
            };
        }
        self.plain("fenced", key)
    }
}

/// A short tag (decimal digits) that hashes to the same cluster slot as `key`, so a key
/// carrying it as its hash tag lands beside `key`. One tag per slot, all 16384 found once
/// (about 170,000 CRC16s of short strings, a few milliseconds) on first use.
#[cfg(feature = "cluster")]
fn slot_tag(key: &Key<'_>) -> &'static str {
    use redis::cluster_routing::Slot;
    use std::collections::HashMap;
    use std::sync::OnceLock;
    /// Hash slots of a Redis Cluster.
    const SLOTS: usize = 16384;
    // Keyed by the redis crate's `Slot` (its number is private), so the hashing, hash-tag
    // rules included, is exactly the one the cluster client routes by.
    static TAGS: OnceLock<HashMap<Slot, Box<str>>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = HashMap::with_capacity(SLOTS);
        let mut n = 0u32;
        while tags.len() < SLOTS {
            let tag = n.to_string();
            tags.entry(Slot::for_key(&tag))
                .or_insert_with(|| tag.into_boxed_str());
            n += 1;
        }
        tags
    });
    let mut bytes = Vec::with_capacity(key.len());
    key.emit(|p| bytes.extend_from_slice(p));
    // Every slot has a tag (the table is filled until it does), so the fallback, which would
    // make the script fail with CROSSSLOT rather than write to the wrong place, is unreachable.
    tags.get(&Slot::for_key(&bytes)).map_or("", |tag| tag)
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
        assert_eq!(
            k.fenced("thread-state:t").to_string(),
            "chat-sdk:fenced:thread-state:t"
        );
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
        assert_eq!(k.queue("a:b").to_string(), "p:queue:{a:b}");
        assert_eq!(k.queue("}x").to_string(), "p:queue:{{7d78}");
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn cluster_fence_records_share_the_cache_key_slot() {
        use redis::cluster_routing::Slot;
        let k = Keys::new("chat-sdk", true);
        for key in [
            "thread-state:t1",
            "a",
            "",
            "x{y}z",
            "{}",
            "é:1",
            &"k".repeat(500),
        ] {
            let (cache, record) = (k.cache(key).to_string(), k.fenced(key).to_string());
            assert_eq!(Slot::for_key(&cache), Slot::for_key(&record), "{record}");
            assert!(record.starts_with("chat-sdk:fenced:{"), "{record}");
            assert!(record.ends_with(&format!("}}:{key}")), "{record}");
        }
        // Different keys, different records, even when their tags are equal.
        assert_ne!(k.fenced("a").to_string(), k.fenced("b").to_string());
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
                k.queue("}x"),
                k.fenced("é:{1}"),
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
