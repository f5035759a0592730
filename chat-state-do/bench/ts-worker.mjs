// The baseline: the TypeScript package `chat-state-cloudflare-do` (npm) doing the same message
// cycle as the Rust test Worker's /cycle and /cycles routes, in the same runtime. Bundled by
// bench.mjs.
//
//   POST /cycle  {"config": {"object", "shards"}, "thread"}  one cycle
//   POST /cycles {"config": {...}, "cycles", "concurrency", "threads", "prefix"}
//                `cycles` cycles inside this request, `concurrency` at a time
import { createCloudflareState, ChatStateDO } from "chat-state-cloudflare-do";
import { hashedShardName } from "./shard-name.mjs";

export { ChatStateDO };

function state(env, config) {
  const shards = config.shards ?? 0;
  const shardKey = shards > 0 ? (id) => hashedShardName(`${config.object}-shard`, shards, id) : undefined;
  return createCloudflareState({ namespace: env.CHAT_STATE, name: config.object, shardKey });
}

// is_subscribed, acquire_lock, get, set, release_lock: what the Rust cycle does.
async function cycle(s, thread) {
  const subscribed = await s.isSubscribed(thread);
  const lock = await s.acquireLock(thread, 30000);
  if (!lock) return { locked: false };
  const key = `thread-state:${thread}`;
  const current = await s.get(key);
  const n = (current?.n ?? 0) + 1;
  await s.set(key, { n }, 86400000);
  await s.releaseLock(lock);
  return { locked: true, subscribed, n };
}

export default {
  async fetch(req, env) {
    const path = new URL(req.url).pathname;
    const body = await req.json();
    const s = state(env, body.config);
    await s.connect();
    if (path === "/cycle") return Response.json(await cycle(s, body.thread));
    const { cycles, concurrency, threads, prefix = "" } = body;
    let next = 0;
    const started = Date.now();
    async function worker() {
      while (next < cycles) {
        const i = next++;
        const r = await cycle(s, `${prefix}thread-${i % threads}`);
        if (!r.locked) throw new Error(`cycle ${i}: lock held`);
      }
    }
    await Promise.all(Array.from({ length: concurrency }, worker));
    return Response.json({ cycles, ms: Date.now() - started });
  },
};
