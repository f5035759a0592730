// The TypeScript baseline of `cargo bench -p chat-state-postgres`: the same workloads, ids and
// values through npm `@chat-adapter/state-pg` (pinned with its `pg` client in package.json /
// package-lock.json), against the bench's loopback PostgreSQL.
//
//   node bench.mjs <postgres-url> <workload> <concurrency> <iterations> <pool-size>
//
// workload: lock | cache | message
// Prints one JSON line: {"impl":"ts","workload":..,"concurrency":..,"iterations":..,
// "seconds":..,"perSec":..,"node":..,"adapter":..,"client":..}.
//
// Kept in step with chat-state-postgres/benches/throughput.rs: same 10,000 thread ids, same
// per-task id order, same values (thread-state.json, the history entry), same TTLs, same
// warm-up, same key prefix (`chat-sdk`; the Rust side truncates the tables before every run),
// same pool size. Concurrency N = N async loops on the one event loop (`Promise.all`) sharing
// one adapter on one `pg.Pool` of <pool-size> connections (state-pg's own pool is a
// `new pg.Pool({ connectionString })`, whose default size is 10; the bench passes the size
// every side uses).

import { readFileSync } from "node:fs";
import { createPostgresState } from "@chat-adapter/state-pg";
import pg from "pg";

const IDS = 10_000;
/** The Chat SDK's DEFAULT_LOCK_TTL_MS and THREAD_STATE_TTL_MS; dedupe and history TTLs. */
const LOCK_TTL_MS = 30_000;
const STATE_TTL_MS = 30 * 24 * 60 * 60 * 1000;
const DEDUPE_TTL_MS = 600_000;
const HISTORY = { maxLength: 100, ttlMs: 7 * 24 * 60 * 60 * 1000 };
/** Warm-up cycles before timing (JIT, connections); the Rust side does the same. */
const WARMUP = 500;

const [url, workload, concArg, itersArg, poolArg] = process.argv.slice(2);
const concurrency = Number(concArg);
const iterations = Number(itersArg);
const poolSize = Number(poolArg);
const WORKLOADS = ["lock", "cache", "message"];
if (
  !url ||
  !WORKLOADS.includes(workload) ||
  !(concurrency >= 1) ||
  !(iterations >= 1) ||
  !(poolSize >= 1)
) {
  console.error(
    `usage: node bench.mjs <url> <${WORKLOADS.join("|")}> <concurrency> <iterations> <pool-size>`,
  );
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

const silent = { debug() {}, info() {}, warn() {}, error() {}, child: () => silent };
const pool = new pg.Pool({ connectionString: url, max: poolSize });
const state = createPostgresState({ client: pool, keyPrefix: "chat-sdk", logger: silent });
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
await pool.end();

console.log(
  JSON.stringify({
    impl: "ts",
    workload,
    concurrency,
    iterations,
    seconds,
    perSec: iterations / seconds,
    node: process.version,
    adapter: `@chat-adapter/state-pg@${version("@chat-adapter/state-pg")}`,
    client: `pg@${version("pg")}`,
  }),
);
