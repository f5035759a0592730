// The TypeScript baseline of `cargo bench -p chat-state-redis`: the same workloads, ids and
// values through npm `@chat-adapter/state-redis` (pinned with its `redis` client in
// package.json / package-lock.json), against the bench's loopback redis-server.
//
//   node bench.mjs <redis-url> <workload> <concurrency> <iterations>
//
// workload: lock | cache | subscriptions | message
// Prints one JSON line: {"impl":"ts","workload":..,"concurrency":..,"iterations":..,
// "seconds":..,"perSec":..,"node":..,"adapter":..,"client":..}.
//
// Kept in step with chat-state-redis/benches/throughput.rs: same 10,000 thread ids, same
// per-task id order, same values (thread-state.json, the history entry), same TTLs, same
// warm-up, same key prefix (`chat-sdk`; the Rust side flushes the database before every run).
// Concurrency N = N async loops on the one event loop (`Promise.all`), one adapter = one
// connection (the adapter's own `createClient({ url })`), as in production.

import { readFileSync } from "node:fs";
import { createRedisState } from "@chat-adapter/state-redis";

const IDS = 10_000;
/** The Chat SDK's DEFAULT_LOCK_TTL_MS and THREAD_STATE_TTL_MS; dedupe and history TTLs. */
const LOCK_TTL_MS = 30_000;
const STATE_TTL_MS = 30 * 24 * 60 * 60 * 1000;
const DEDUPE_TTL_MS = 600_000;
const HISTORY = { maxLength: 100, ttlMs: 7 * 24 * 60 * 60 * 1000 };
/** Warm-up cycles before timing (JIT, connection); the Rust side does the same. */
const WARMUP = 2_000;

const [url, workload, concArg, itersArg] = process.argv.slice(2);
const concurrency = Number(concArg);
const iterations = Number(itersArg);
const WORKLOADS = ["lock", "cache", "subscriptions", "message"];
if (!url || !WORKLOADS.includes(workload) || !(concurrency >= 1) || !(iterations >= 1)) {
  console.error(`usage: node bench.mjs <url> <${WORKLOADS.join("|")}> <concurrency> <iterations>`);
  process.exit(2);
}

const pad = (n, w) => String(n).padStart(w, "0");
const ids = Array.from({ length: IDS }, (_, i) => `slack:C${pad(i, 7)}:1700000000.${pad(i, 6)}`);
const stateKeys = ids.map((id) => `thread-state:${id}`);
const historyKeys = ids.map((id) => `msg-history:${id}`);
// The adapter JSON.stringifies what it is given: objects, so that it stores exactly the bytes
// the Rust side stores (thread-state.json, the history entry), as a TS bot would call it.
const threadState = JSON.parse(readFileSync(new URL("../../test-support/bench/thread-state.json", import.meta.url), "utf8"));
const historyEntry = { id: "m", text: "hello" };
const version = (pkg) =>
  JSON.parse(readFileSync(new URL(`./node_modules/${pkg}/package.json`, import.meta.url), "utf8"))
    .version;

/** Task `w` of `c`, iteration `i`: a scattered walk over the task's own slice of the ids. */
function idIndex(w, c, i) {
  const per = Math.floor(IDS / c);
  return w + c * ((i * 7919) % per);
}

const state = createRedisState({ url, keyPrefix: "chat-sdk" });
await state.connect();
let seq = 0;

async function cycle(w, c, i) {
  const k = idIndex(w, c, i);
  switch (workload) {
    case "lock": {
      const lock = await state.acquireLock(ids[k], LOCK_TTL_MS);
      if (!lock) throw new Error("lock held");
      await state.releaseLock(lock);
      return;
    }
    case "cache": {
      await state.set(stateKeys[k], threadState, STATE_TTL_MS);
      if ((await state.get(stateKeys[k])) == null) throw new Error("cache miss");
      return;
    }
    case "subscriptions": {
      await state.subscribe(ids[k]);
      if (!(await state.isSubscribed(ids[k]))) throw new Error("not subscribed");
      await state.unsubscribe(ids[k]);
      return;
    }
    case "message": {
      // Dedupe, lock the thread, append to its history, unlock.
      const n = seq++;
      if (!(await state.setIfNotExists(`dedupe:slack:m${n}`, true, DEDUPE_TTL_MS)))
        throw new Error("duplicate");
      const lock = await state.acquireLock(ids[k], LOCK_TTL_MS);
      if (!lock) throw new Error("lock held");
      await state.appendToList(historyKeys[k], historyEntry, HISTORY);
      await state.releaseLock(lock);
      return;
    }
  }
}

/** `total` cycles split over `c` concurrent loops. */
async function run(c, total) {
  const loops = [];
  for (let w = 0; w < c; w++) {
    const mine = Math.floor(total / c) + (w < total % c ? 1 : 0);
    loops.push(
      (async () => {
        for (let i = 0; i < mine; i++) await cycle(w, c, i);
      })(),
    );
  }
  await Promise.all(loops);
}

await run(concurrency, Math.min(WARMUP, iterations));
const start = process.hrtime.bigint();
await run(concurrency, iterations);
const seconds = Number(process.hrtime.bigint() - start) / 1e9;
await state.disconnect();

console.log(
  JSON.stringify({
    impl: "ts",
    workload,
    concurrency,
    iterations,
    seconds,
    perSec: iterations / seconds,
    node: process.version,
    adapter: `@chat-adapter/state-redis@${version("@chat-adapter/state-redis")}`,
    client: `redis@${version("redis")}`,
  }),
);
