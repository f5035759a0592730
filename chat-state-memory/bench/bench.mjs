// The TypeScript baseline of `cargo bench -p chat-state-memory`: the same workloads, ids and
// value through npm `@chat-adapter/state-memory` (pinned in package.json / package-lock.json).
//
//   node bench.mjs <workload> <concurrency> <iterations>
//
// workload: lock | contended-lock | cache | subscriptions | message
// Prints one JSON line: {"impl":"ts","workload":..,"concurrency":..,"iterations":..,
// "successes":..,"seconds":..,"perSec":..,"node":..,"adapter":..}.
//
// Kept in step with chat-state-memory/benches/throughput.rs through
// test-support/bench/workload.mjs: same 10,000 thread ids, same per-task id order, same
// ~225-byte thread state (thread-state.json), same TTLs, same warm-up. Concurrency N = N async
// loops on the one event loop (`Promise.all`).

import { createMemoryState } from "@chat-adapter/state-memory";
import {
  IDS,
  LOCK_TTL_MS,
  STATE_TTL_MS,
  idIndex,
  ids,
  parseArgs,
  printResult,
  stateKeys,
  threadStateJson,
  timed,
} from "../../test-support/bench/workload.mjs";

/** Ids the contended-lock workload fights over. */
const HOT = 8;
/** Warm-up cycles before timing (JIT, map growth); the Rust side does the same. */
const WARMUP = 20_000;

const { workload, concurrency, iterations } = parseArgs({
  workloads: ["lock", "contended-lock", "cache", "subscriptions", "message"],
});

const state = createMemoryState();
await state.connect();

if (workload === "message") {
  // A bot's threads: subscribed, with state stored (as the Chat SDK stores it: the object).
  for (let k = 0; k < IDS; k++) {
    await state.subscribe(ids[k]);
    await state.set(stateKeys[k], JSON.parse(threadStateJson), STATE_TTL_MS);
  }
}

/** One cycle; returns whether it got what it asked for (only the contended lock may not). */
async function cycle(w, c, i) {
  switch (workload) {
    case "lock": {
      const lock = await state.acquireLock(ids[idIndex(w, c, i)], LOCK_TTL_MS);
      if (!lock) throw new Error("lock held");
      await state.releaseLock(lock);
      return true;
    }
    case "contended-lock": {
      const lock = await state.acquireLock(ids[(w + i) % HOT], LOCK_TTL_MS);
      if (!lock) return false;
      await state.releaseLock(lock);
      return true;
    }
    case "cache": {
      const key = stateKeys[idIndex(w, c, i)];
      await state.set(key, threadStateJson, STATE_TTL_MS);
      if ((await state.get(key)) == null) throw new Error("cache miss");
      return true;
    }
    case "subscriptions": {
      const id = ids[idIndex(w, c, i)];
      await state.subscribe(id);
      if (!(await state.isSubscribed(id))) throw new Error("not subscribed");
      await state.unsubscribe(id);
      return true;
    }
    case "message": {
      // What the Chat SDK does per incoming message on a subscribed thread, with the
      // handler's thread.setState({ turn }) (merge: get, spread, set).
      const k = idIndex(w, c, i);
      if (!(await state.isSubscribed(ids[k]))) throw new Error("not subscribed");
      const lock = await state.acquireLock(ids[k], LOCK_TTL_MS);
      if (!lock) throw new Error("lock held");
      const existing = await state.get(stateKeys[k]);
      await state.set(stateKeys[k], { ...existing, turn: existing.turn + 1 }, STATE_TTL_MS);
      await state.releaseLock(lock);
      return true;
    }
  }
}

const measured = await timed({ concurrency, iterations, warmup: WARMUP, cycle });

printResult(import.meta.url, { workload, concurrency, iterations }, measured, {
  adapter: "@chat-adapter/state-memory",
});
