// The TypeScript baseline of `cargo bench -p chat-state-memory`: the same workloads, ids and
// value through npm `@chat-adapter/state-memory` (pinned in package.json / package-lock.json).
//
//   node bench.mjs <workload> <concurrency> <iterations>
//
// workload: lock | contended-lock | cache | subscriptions | message
// Prints one JSON line: {"impl":"ts","workload":..,"concurrency":..,"iterations":..,
// "successes":..,"seconds":..,"perSec":..,"node":..,"adapter":..}.
//
// Kept in step with chat-state-memory/benches/throughput.rs: same 10,000 thread ids, same
// per-task id order, same ~225-byte thread state (thread-state.json), same TTLs, same warm-up.
// Concurrency N = N async loops on the one event loop (`Promise.all`).

import { readFileSync } from "node:fs";
import { createMemoryState } from "@chat-adapter/state-memory";

const IDS = 10_000;
/** Ids the contended-lock workload fights over. */
const HOT = 8;
/** The Chat SDK's DEFAULT_LOCK_TTL_MS and THREAD_STATE_TTL_MS. */
const LOCK_TTL_MS = 30_000;
const STATE_TTL_MS = 30 * 24 * 60 * 60 * 1000;
/** Warm-up cycles before timing (JIT, map growth); the Rust side does the same. */
const WARMUP = 20_000;

const [workload, concArg, itersArg] = process.argv.slice(2);
const concurrency = Number(concArg);
const iterations = Number(itersArg);
const WORKLOADS = ["lock", "contended-lock", "cache", "subscriptions", "message"];
if (!WORKLOADS.includes(workload) || !(concurrency >= 1) || !(iterations >= 1)) {
  console.error(`usage: node bench.mjs <${WORKLOADS.join("|")}> <concurrency> <iterations>`);
  process.exit(2);
}

const pad = (n, w) => String(n).padStart(w, "0");
const ids = Array.from({ length: IDS }, (_, i) => `slack:C${pad(i, 7)}:1700000000.${pad(i, 6)}`);
const stateKeys = ids.map((id) => `thread-state:${id}`);
const stateJson = readFileSync(new URL("../../test-support/bench/thread-state.json", import.meta.url), "utf8").trim();
const adapterVersion = JSON.parse(
  readFileSync(
    new URL("./node_modules/@chat-adapter/state-memory/package.json", import.meta.url),
    "utf8",
  ),
).version;

/** Task `w` of `c`, iteration `i`: a scattered walk over the task's own slice of the ids. */
function idIndex(w, c, i) {
  const per = Math.floor(IDS / c);
  return w + c * ((i * 7919) % per);
}

const state = createMemoryState();
await state.connect();

if (workload === "message") {
  // A bot's threads: subscribed, with state stored (as the Chat SDK stores it: the object).
  for (let k = 0; k < IDS; k++) {
    await state.subscribe(ids[k]);
    await state.set(stateKeys[k], JSON.parse(stateJson), STATE_TTL_MS);
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
      await state.set(key, stateJson, STATE_TTL_MS);
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

/** `total` cycles split over `c` concurrent loops; returns the successes. */
async function run(c, total) {
  const loops = [];
  for (let w = 0; w < c; w++) {
    const mine = Math.floor(total / c) + (w < total % c ? 1 : 0);
    loops.push(
      (async () => {
        let ok = 0;
        for (let i = 0; i < mine; i++) if (await cycle(w, c, i)) ok++;
        return ok;
      })(),
    );
  }
  return (await Promise.all(loops)).reduce((a, b) => a + b, 0);
}

await run(concurrency, Math.min(WARMUP, iterations));
const start = process.hrtime.bigint();
const successes = await run(concurrency, iterations);
const seconds = Number(process.hrtime.bigint() - start) / 1e9;

console.log(
  JSON.stringify({
    impl: "ts",
    workload,
    concurrency,
    iterations,
    successes,
    seconds,
    perSec: iterations / seconds,
    node: process.version,
    adapter: `@chat-adapter/state-memory@${adapterVersion}`,
  }),
);
