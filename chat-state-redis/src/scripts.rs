//! The Lua scripts. Each runs atomically on the server in one round trip (`EVALSHA`; when
//! the server answers `NOSCRIPT`, as it does after a restart or a failover, the backend
//! loads the script and sends the same command once more).

use redis::Cmd;

/// `KEYS[1]` lock, `KEYS[2]` fence counter; `ARGV[1]` token, `ARGV[2]` TTL in ms.
/// Returns the new fence, or 0 if the lock is held. The fence counter never expires and is
/// bumped in the same script as the `SET NX`, so fences strictly increase per lock id.
pub(crate) const ACQUIRE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
";

/// Upstream's compare-and-delete: `KEYS[1]` lock, `ARGV[1]` token.
pub(crate) const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Upstream's compare-and-extend: `KEYS[1]` lock, `ARGV[1]` token, `ARGV[2]` TTL in ms
/// (validated non-zero before sending: `PEXPIRE key 0` would delete the lock).
const EXTEND: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// `KEYS[1]` list; `ARGV[1]` value, `ARGV[2]` max length or '', `ARGV[3]` TTL ms or ''.
/// Upstream does the same three commands in a MULTI; a script keeps it one round trip on a
/// cluster too.
pub(crate) const APPEND: &str = r"
redis.call('RPUSH', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then
  redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
end
if ARGV[3] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
";

/// Shared by the queue scripts: whether a stored entry is alive at `now`. Entries another
/// client wrote that do not decode count as alive, so `dequeue` reports them as corrupt
/// instead of dropping them silently.
///
/// cjson refuses lone surrogate escapes (`"\ud83e"`, which `JSON.stringify` writes for a
/// string cut inside an emoji); only `expiresAt` matters here, so such an entry is read again
/// with every surrogate escape masked, and the client decodes the message itself.
const ALIVE: &str = r"
local function decode(raw)
  local ok, e = pcall(cjson.decode, raw)
  if ok then return e end
  ok, e = pcall(cjson.decode, (string.gsub(raw, '\u[dD][89abcdefABCDEF]%x%x', '\u003f')))
  if ok then return e end
  return nil
end
local function alive(raw, now)
  local e = decode(raw)
  if type(e) ~= 'table' or type(e.expiresAt) ~= 'number' then
    return true, nil
  end
  return e.expiresAt > now, e.expiresAt
end
";

/// `KEYS[1]` queue; `ARGV[1]` entry JSON, `ARGV[2]` max size, `ARGV[3]` now (ms),
/// `ARGV[4]` grace (ms) added to the key's expiry.
/// Drops expired entries, appends (unless the entry is already dead), trims to the newest `max size`, sets the key to expire
/// after its last entry, and returns the number of live entries.
const ENQUEUE_BODY: &str = r"
local now = tonumber(ARGV[3])
local items = redis.call('LRANGE', KEYS[1], 0, -1)
for _, raw in ipairs(items) do
  if not alive(raw, now) then
    redis.call('LREM', KEYS[1], 1, raw)
  end
end
-- An entry dead on arrival is accepted but never stored (it could only take a live one's slot).
if alive(ARGV[1], now) then
  redis.call('RPUSH', KEYS[1], ARGV[1])
end
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
items = redis.call('LRANGE', KEYS[1], 0, -1)
local live, last = 0, now
for _, raw in ipairs(items) do
  local a, at = alive(raw, now)
  if a then live = live + 1 end
  if at and at > last then last = at end
end
-- Capped at ~300 years so the number stays an integer when Lua formats it.
local ttl = math.min(math.floor(last - now) + tonumber(ARGV[4]), 1e13)
redis.call('PEXPIRE', KEYS[1], string.format('%d', ttl))
return live
";

/// `KEYS[1]` queue; `ARGV[1]` now (ms). Pops until a live entry; returns `{'ok', raw}`,
/// `{'corrupt', raw}` for an entry that does not decode, or nil when none is left.
const DEQUEUE_BODY: &str = r"
local now = tonumber(ARGV[1])
while true do
  local raw = redis.call('LPOP', KEYS[1])
  if not raw then return nil end
  local a, at = alive(raw, now)
  if a then
    if at then return {'ok', raw} end
    return {'corrupt', raw}
  end
end
";

/// `KEYS[1]` queue; `ARGV[1]` now (ms). Counts live entries (read only).
const DEPTH_BODY: &str = r"
local now = tonumber(ARGV[1])
local live = 0
for _, raw in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if alive(raw, now) then live = live + 1 end
end
return live
";

/// KEYS: lock, fence. Returns nil when free, else `{token, pttl, last fence or nil}` read in
/// one atomic step (the two keys share a slot on a cluster). Read-only.
const INSPECT: &str = r"
local token = redis.call('GET', KEYS[1])
if not token then return nil end
return {token, redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[2])}
";

/// A script and its SHA-1, which `EVALSHA` names it by.
#[derive(Debug, Clone)]
pub(crate) struct LuaScript {
    pub(crate) code: String,
    sha: String,
}

impl LuaScript {
    fn new(code: String) -> Self {
        let sha = redis::Script::new(&code).get_hash().to_owned();
        Self { code, sha }
    }

    /// `EVALSHA <sha> <keys>`, with room for `args` more arguments of `bytes` bytes in all,
    /// so that appending the keys and arguments does not reallocate. Built directly rather
    /// than through `redis::ScriptInvocation`, which copies every key and argument into a
    /// `Vec` of its own and then again into a new command on every call.
    pub(crate) fn command(&self, keys: usize, args: usize, bytes: usize) -> Cmd {
        let mut cmd = Cmd::with_capacity(3 + args, 7 + self.sha.len() + 2 + bytes);
        cmd.arg("EVALSHA").arg(&self.sha).arg(keys);
        cmd
    }
}

/// The scripts, hashed once per adapter.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) acquire: LuaScript,
    pub(crate) inspect: LuaScript,
    pub(crate) release: LuaScript,
    pub(crate) extend: LuaScript,
    pub(crate) append: LuaScript,
    pub(crate) enqueue: LuaScript,
    pub(crate) dequeue: LuaScript,
    pub(crate) depth: LuaScript,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            acquire: LuaScript::new(ACQUIRE.to_owned()),
            inspect: LuaScript::new(INSPECT.to_owned()),
            release: LuaScript::new(RELEASE.to_owned()),
            extend: LuaScript::new(EXTEND.to_owned()),
            append: LuaScript::new(APPEND.to_owned()),
            enqueue: LuaScript::new(format!("{ALIVE}{ENQUEUE_BODY}")),
            dequeue: LuaScript::new(format!("{ALIVE}{DEQUEUE_BODY}")),
            depth: LuaScript::new(format!("{ALIVE}{DEPTH_BODY}")),
        }
    }

    /// Every script, for loading them all at connect.
    pub(crate) fn all(&self) -> [&LuaScript; 8] {
        [
            &self.acquire,
            &self.inspect,
            &self.release,
            &self.extend,
            &self.append,
            &self.enqueue,
            &self.dequeue,
            &self.depth,
        ]
    }
}
