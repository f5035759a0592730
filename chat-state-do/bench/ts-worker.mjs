// The baseline: the TypeScript package `chat-state-cloudflare-do` (npm) doing the same message
// cycle as the Rust test Worker's POST /cycle, in the same runtime. Bundled by bench.mjs.
import { createCloudflareState, ChatStateDO } from "chat-state-cloudflare-do";
import { hashedShardName } from "./shard-name.mjs";

export { ChatStateDO };

export default {
  async fetch(req, env) {
    const { config, thread } = await req.json();
    const shards = config.shards ?? 0;
    const shardKey = shards > 0 ? (id) => hashedShardName(`${config.object}-shard`, shards, id) : undefined;
    const s = createCloudflareState({ namespace: env.CHAT_STATE, name: config.object, shardKey });
    await s.connect();
    const subscribed = await s.isSubscribed(thread);
    const lock = await s.acquireLock(thread, 30000);
    if (!lock) return Response.json({ locked: false });
    const key = `thread-state:${thread}`;
    const state = await s.get(key);
    const n = (state?.n ?? 0) + 1;
    await s.set(key, { n }, 86400000);
    await s.releaseLock(lock);
    return Response.json({ locked: true, subscribed, n });
  },
};
