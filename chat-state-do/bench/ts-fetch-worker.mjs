// Control for the transport: the same TypeScript ChatStateDO (same SQL), but called with
// stub.fetch + a JSON body, as chat-state-do's adapter does, instead of Workers RPC. Comparing
// it with ts-worker.mjs separates the cost of the transport from the cost of Rust/wasm.
import { ChatStateDO as RpcChatStateDO } from "chat-state-cloudflare-do";
import { hashedShardName } from "./shard-name.mjs";

export class ChatStateDO extends RpcChatStateDO {
  async fetch(req) {
    const { m, a } = await req.json();
    return Response.json((await this[m](...a)) ?? null);
  }
}

export default {
  async fetch(req, env) {
    const { config, thread } = await req.json();
    const shards = config.shards ?? 0;
    const name = (id) => (shards > 0 && id ? hashedShardName(`${config.object}-shard`, shards, id) : config.object);
    const call = async (id, m, ...a) => {
      const stub = env.CHAT_STATE.get(env.CHAT_STATE.idFromName(name(id)));
      const r = await stub.fetch("https://chat-state.internal/v1", { method: "POST", body: JSON.stringify({ m, a }) });
      return r.json();
    };
    const subscribed = await call(thread, "isSubscribed", thread);
    const lock = await call(thread, "acquireLock", thread, 30000);
    if (!lock) return Response.json({ locked: false });
    const key = `thread-state:${thread}`;
    const raw = await call(undefined, "cacheGet", key);
    const n = (raw ? JSON.parse(raw).n : 0) + 1;
    await call(undefined, "cacheSet", key, JSON.stringify({ n }), 86400000);
    await call(thread, "releaseLock", lock.threadId, lock.token);
    return Response.json({ locked: true, subscribed, n });
  },
};
