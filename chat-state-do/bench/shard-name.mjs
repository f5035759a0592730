// The shard naming of chat_state_do::routing::hashed_shards, so the baseline Workers spread
// threads over the same objects as the Rust one: `<prefix>-<FNV-1a 64 of the id's UTF-8 % shards>`.
function fnv1a(s) {
  let h = 0xcbf29ce484222325n;
  for (const b of new TextEncoder().encode(s)) {
    h ^= BigInt(b);
    h = (h * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return h;
}

export function hashedShardName(prefix, shards, id) {
  return `${prefix}-${fnv1a(id) % BigInt(shards)}`;
}
