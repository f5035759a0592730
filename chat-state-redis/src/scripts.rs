//! The Lua scripts. Each runs atomically on the server in one round trip (`EVALSHA`; when
//! the server answers `NOSCRIPT`, as it does after a restart or a failover, the backend
//! loads the script and sends the same command once more).

use redis::Cmd;

// The scripts are put together from Lua fragments at compile time (`concat!` of the macros
// below), so each piece of logic (taking a lock, appending to a queue, popping a live entry)
// is written once and the dispatch scripts run exactly what the single operations run.
// Macros rather than `const`s because `concat!` only takes literals.

/// `acquire(lock, fence, token, ttl)`: `SET lock token NX PX ttl`, and if it was set, `INCR
/// fence`. Returns the new fence, or 0 if the lock is held. The fence counter never expires
/// and is bumped in the same script as the `SET NX`, so fences strictly increase per lock id.
macro_rules! acquire_fn {
    () => {
        r"
local function acquire(lock, fence, token, ttl)
  if redis.call('SET', lock, token, 'NX', 'PX', ttl) then
    return redis.call('INCR', fence)
  end
  return 0
end
"
    };
}

/// Shared by the queue scripts: whether a stored entry is alive at `now`. Entries another
/// client wrote that do not decode count as alive, so `dequeue` reports them as corrupt
/// instead of dropping them silently.
///
/// cjson refuses lone surrogate escapes (`"\ud83e"`, which `JSON.stringify` writes for a
/// string cut inside an emoji); only `expiresAt` matters here, so such an entry is read again
/// with every surrogate escape masked, and the client decodes the message itself.
macro_rules! alive_fn {
    () => {
        r"
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
"
    };
}

/// `enqueue(queue, entry, max, now, grace)` (needs `alive_fn`): drops expired entries,
/// appends `entry` (unless it is already dead), trims to the newest `max`, sets the key to
/// expire `grace` ms after its last entry, and returns the number of live entries.
macro_rules! enqueue_fn {
    () => {
        r"
local function enqueue(queue, entry, max, now, grace)
  local items = redis.call('LRANGE', queue, 0, -1)
  for _, raw in ipairs(items) do
    if not alive(raw, now) then
      redis.call('LREM', queue, 1, raw)
    end
  end
  -- An entry dead on arrival is accepted but never stored (it could only take a live one's slot).
  if alive(entry, now) then
    redis.call('RPUSH', queue, entry)
  end
  redis.call('LTRIM', queue, -tonumber(max), -1)
  items = redis.call('LRANGE', queue, 0, -1)
  local live, last = 0, now
  for _, raw in ipairs(items) do
    local a, at = alive(raw, now)
    if a then live = live + 1 end
    if at and at > last then last = at end
  end
  -- Capped at ~300 years so the number stays an integer when Lua formats it.
  local ttl = math.min(math.floor(last - now) + tonumber(grace), 1e13)
  redis.call('PEXPIRE', queue, string.format('%d', ttl))
  return live
end
"
    };
}

/// `dequeue(queue, now)` (needs `alive_fn`): pops until a live entry; returns `{'ok', raw}`,
/// `{'corrupt', raw}` for an entry that does not decode (popped too, so it cannot block the
/// queue), or nil when none is left.
macro_rules! dequeue_fn {
    () => {
        r"
local function dequeue(queue, now)
  while true do
    local raw = redis.call('LPOP', queue)
    if not raw then return nil end
    local a, at = alive(raw, now)
    if a then
      if at then return {'ok', raw} end
      return {'corrupt', raw}
    end
  end
end
"
    };
}

/// `take_or_queue()` (needs `acquire_fn`, `alive_fn`, `enqueue_fn`), admit's part on the
/// thread's own keys, shared by the one-script admit and the cluster's second step, so both
/// read the same key and argument positions: `KEYS[1]` lock, `KEYS[2]` fence counter,
/// `KEYS[3]` queue; `ARGV[1]` token, `ARGV[2]` lock TTL (ms), `ARGV[3]` entry JSON or ''
/// (drop when busy), `ARGV[4]` max size, `ARGV[5]` now (ms), `ARGV[6]` queue key grace (ms).
/// Takes the lock, or, if it is held, drops or queues the entry. Returns `{'admitted',
/// fence, 0}`, `{'dropped', 0, 0}` or `{'queued', live entries, 0}`.
macro_rules! take_or_queue_fn {
    () => {
        r"
local function take_or_queue()
  local fence = acquire(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
  if fence > 0 then return {'admitted', fence, 0} end
  if ARGV[3] == '' then return {'dropped', 0, 0} end
  return {'queued', enqueue(KEYS[3], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]), 0}
end
"
    };
}

/// `KEYS[1]` lock, `KEYS[2]` fence counter; `ARGV[1]` token, `ARGV[2]` TTL in ms.
/// Returns the new fence, or 0 if the lock is held (`acquire_fn`).
pub(crate) const ACQUIRE: &str = concat!(
    acquire_fn!(),
    "return acquire(KEYS[1], KEYS[2], ARGV[1], ARGV[2])\n"
);

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

/// `KEYS[1]` queue; `ARGV[1]` entry JSON, `ARGV[2]` max size, `ARGV[3]` now (ms),
/// `ARGV[4]` grace (ms) added to the key's expiry. Returns the live entries (`enqueue_fn`).
const ENQUEUE: &str = concat!(
    alive_fn!(),
    enqueue_fn!(),
    "return enqueue(KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4])\n"
);

/// `KEYS[1]` queue; `ARGV[1]` now (ms). `{'ok', raw}`, `{'corrupt', raw}` or nil
/// (`dequeue_fn`).
const DEQUEUE: &str = concat!(
    alive_fn!(),
    dequeue_fn!(),
    "return dequeue(KEYS[1], tonumber(ARGV[1]))\n"
);

/// `KEYS[1]` queue; `ARGV[1]` now (ms). Counts live entries (read only).
const DEPTH: &str = concat!(
    alive_fn!(),
    r"
local now = tonumber(ARGV[1])
local live = 0
for _, raw in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if alive(raw, now) then live = live + 1 end
end
return live
"
);

/// KEYS: lock, fence. Returns nil when free, else `{token, pttl, last fence or nil}` read in
/// one atomic step (the two keys share a slot on a cluster). Read-only.
const INSPECT: &str = r"
local token = redis.call('GET', KEYS[1])
if not token then return nil end
return {token, redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[2])}
";

/// `admit()` (needs `acquire_fn`, `alive_fn`, `enqueue_fn`, `take_or_queue_fn`), admit in
/// one step on a single node: the keys and arguments of `take_or_queue_fn`, then `KEYS[4]`
/// the dedupe cache key, `KEYS[5]` subscriptions; `ARGV[7]` the dedupe value, `ARGV[8]` its
/// TTL (ms), `ARGV[9]` the thread id. A live dedupe key answers `{'duplicate', 0, 0}` and
/// changes nothing; otherwise the claim is stored (`SET NX PX`, as `set_if_not_exists` does)
/// and the thread's part runs; an admitted reply carries `SISMEMBER` as its third element.
/// A function, so the admit that also reads a key runs exactly this.
macro_rules! admit_fn {
    () => {
        r"
local function admit()
  if not redis.call('SET', KEYS[4], ARGV[7], 'NX', 'PX', ARGV[8]) then
    return {'duplicate', 0, 0}
  end
  local reply = take_or_queue()
  if reply[1] == 'admitted' then
    reply[3] = redis.call('SISMEMBER', KEYS[5], ARGV[9])
  end
  return reply
end
"
    };
}

/// Admit in one script (single node): `admit_fn`'s keys, arguments and reply.
const ADMIT: &str = concat!(
    acquire_fn!(),
    alive_fn!(),
    enqueue_fn!(),
    take_or_queue_fn!(),
    admit_fn!(),
    "return admit()\n"
);

/// Admit and read in one script (single node): `admit_fn`'s keys and arguments, plus
/// `KEYS[6]` the cache key to read. The reply is `admit_fn`'s with a fourth element: the
/// read key's value when admitted (nil if missing), nil otherwise.
///
/// The key is read first, before anything is written: one of another Redis type fails the
/// script with `WRONGTYPE` (as `get` reports it) while nothing has changed, rather than after
/// the claim and the lock, which the caller would then never release. The script is atomic,
/// so that value is the one under the new lock, except when the read key is the dedupe key
/// itself, which the admit just wrote: then it is read again.
const ADMIT_AND_READ: &str = concat!(
    acquire_fn!(),
    alive_fn!(),
    enqueue_fn!(),
    take_or_queue_fn!(),
    admit_fn!(),
    r"
local value = redis.call('GET', KEYS[6])
local reply = admit()
if reply[1] ~= 'admitted' then
  value = false
elseif KEYS[6] == KEYS[4] then
  value = redis.call('GET', KEYS[6])
end
reply[4] = value
return reply
"
);

/// Admit's second step on a cluster, after the dedupe claim: `take_or_queue_fn` alone, on
/// the thread's keys, which share the thread's hash slot.
const ADMIT_THREAD: &str = concat!(
    acquire_fn!(),
    alive_fn!(),
    enqueue_fn!(),
    take_or_queue_fn!(),
    "return take_or_queue()\n"
);

/// `release_or_next(lock, queue, token, ttl, now)` (needs `alive_fn`, `dequeue_fn`): not the
/// holder (or no lock): `{'notholder', ''}`, nothing touched. Otherwise pops the oldest live
/// entry (`dequeue_fn`); if there is one, moves the lock's expiry to now + `ttl` (ms) and
/// returns `{'ok', raw}` (or `{'corrupt', raw}`, popped, lock kept, so the next call goes on
/// with the queue); if not, deletes the lock: `{'released', ''}`.
macro_rules! release_or_next_fn {
    () => {
        r"
local function release_or_next(lock, queue, token, ttl, now)
  if redis.call('GET', lock) ~= token then return {'notholder', ''} end
  local entry = dequeue(queue, now)
  if entry then
    redis.call('PEXPIRE', lock, ttl)
    return entry
  end
  redis.call('DEL', lock)
  return {'released', ''}
end
"
    };
}

/// `set_fenced(cache, record, value, ttl, lock_id, fence)`: `record` is the fence record of
/// cache key `cache`, the string `<fence>:<lock id>`; `ttl` is in ms, or '' (no expiry);
/// `fence` is decimal. Refuses (`{'stale', ''}`) when the record names the same lock id with
/// a greater fence (core's `dispatch::is_stale`); a record that does not parse answers
/// `{'corrupt', raw}`; both change nothing. Otherwise writes the value as `set` does and the
/// record with the same TTL: `{'stored', ''}`.
///
/// Fences are compared as decimal strings (leading zeros dropped, then longer is greater,
/// then bytewise), exact over the whole `u64` range, where Lua's doubles are not.
macro_rules! set_fenced_fn {
    () => {
        r"
local function greater(a, b)
  a, b = (string.gsub(a, '^0+', '')), (string.gsub(b, '^0+', ''))
  if #a ~= #b then return #a > #b end
  return a > b
end
local function set_fenced(cache, record, value, ttl, lock_id, fence)
  local raw = redis.call('GET', record)
  if raw then
    local held, id = string.match(raw, '^(%d+):(.*)$')
    if not held then return {'corrupt', raw} end
    if id == lock_id and greater(held, fence) then return {'stale', ''} end
  end
  local written = fence .. ':' .. lock_id
  if ttl == '' then
    redis.call('SET', cache, value)
    redis.call('SET', record, written)
  else
    redis.call('SET', cache, value, 'PX', ttl)
    redis.call('SET', record, written, 'PX', ttl)
  end
  return {'stored', ''}
end
"
    };
}

/// `KEYS[1]` lock, `KEYS[2]` queue; `ARGV[1]` token, `ARGV[2]` TTL (ms), `ARGV[3]` now (ms).
/// `release_or_next_fn`'s reply.
const RELEASE_OR_NEXT: &str = concat!(
    alive_fn!(),
    dequeue_fn!(),
    release_or_next_fn!(),
    "return release_or_next(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]))\n"
);

/// `KEYS[1]` cache key, `KEYS[2]` its fence record; `ARGV[1]` value, `ARGV[2]` TTL (ms) or ''
/// (no expiry), `ARGV[3]` lock id, `ARGV[4]` fence (decimal). `set_fenced_fn`'s reply.
const SET_FENCED: &str = concat!(
    set_fenced_fn!(),
    "return set_fenced(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])\n"
);

/// A turn's last write and the handoff in one script (single node): `RELEASE_OR_NEXT`'s keys
/// and arguments, then `SET_FENCED`'s: `KEYS[3]` cache key, `KEYS[4]` its fence record;
/// `ARGV[4]` value, `ARGV[5]` its TTL (ms) or '', `ARGV[6]` lock id, `ARGV[7]` fence. The
/// write first (`set_fenced_fn`): refused as stale, the script answers `{'notholder', ''}`
/// and touches nothing else (a later holder wrote the key); a foreign record answers
/// `{'fencecorrupt', raw}`, also with nothing changed (its own status: `'corrupt'` is a
/// queue entry's). Stored, it goes on with `release_or_next_fn` and its reply.
const RELEASE_OR_NEXT_WITH: &str = concat!(
    alive_fn!(),
    dequeue_fn!(),
    release_or_next_fn!(),
    set_fenced_fn!(),
    r"
local written = set_fenced(KEYS[3], KEYS[4], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
if written[1] == 'stale' then return {'notholder', ''} end
if written[1] == 'corrupt' then return {'fencecorrupt', written[2]} end
return release_or_next(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]))
"
);

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
    pub(crate) admit: LuaScript,
    pub(crate) admit_and_read: LuaScript,
    pub(crate) admit_thread: LuaScript,
    pub(crate) release_or_next: LuaScript,
    pub(crate) release_or_next_with: LuaScript,
    pub(crate) set_fenced: LuaScript,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            acquire: LuaScript::new(ACQUIRE.to_owned()),
            inspect: LuaScript::new(INSPECT.to_owned()),
            release: LuaScript::new(RELEASE.to_owned()),
            extend: LuaScript::new(EXTEND.to_owned()),
            append: LuaScript::new(APPEND.to_owned()),
            enqueue: LuaScript::new(ENQUEUE.to_owned()),
            dequeue: LuaScript::new(DEQUEUE.to_owned()),
            depth: LuaScript::new(DEPTH.to_owned()),
            admit: LuaScript::new(ADMIT.to_owned()),
            admit_and_read: LuaScript::new(ADMIT_AND_READ.to_owned()),
            admit_thread: LuaScript::new(ADMIT_THREAD.to_owned()),
            release_or_next: LuaScript::new(RELEASE_OR_NEXT.to_owned()),
            release_or_next_with: LuaScript::new(RELEASE_OR_NEXT_WITH.to_owned()),
            set_fenced: LuaScript::new(SET_FENCED.to_owned()),
        }
    }

    /// Every script, for loading them all at connect.
    pub(crate) fn all(&self) -> [&LuaScript; 14] {
        [
            &self.acquire,
            &self.inspect,
            &self.release,
            &self.extend,
            &self.append,
            &self.enqueue,
            &self.dequeue,
            &self.depth,
            &self.admit,
            &self.admit_and_read,
            &self.admit_thread,
            &self.release_or_next,
            &self.release_or_next_with,
            &self.set_fenced,
        ]
    }
}
