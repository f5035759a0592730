// The TypeScript baseline of `cargo bench -p chat-state-postgres`: the same workloads, ids and
// values through npm `@chat-adapter/state-pg` (pinned with its `pg` client in package.json /
// package-lock.json), against the bench's loopback PostgreSQL.
//
//   node bench.mjs <postgres-url> <workload> <concurrency> <iterations> <pool-size>
//
// workload: lock | cache | message
// Prints one JSON line: {"impl":"ts","workload":..,"concurrency":..,"iterations":..,
// "successes":..,"seconds":..,"perSec":..,"node":..,"adapter":..,"client":..}.
//
// Kept in step with chat-state-postgres/benches/throughput.rs through
// test-support/bench/workload.mjs: same 10,000 thread ids, same per-task id order, same values
// (thread-state.json, the history entry), same TTLs, same key prefix (`chat-sdk`; the Rust side
// truncates the tables before every run), same pool size. Concurrency N = N async loops on the
// one event loop (`Promise.all`) sharing one adapter on one `pg.Pool` of <pool-size>
// connections (state-pg's own pool is a `new pg.Pool({ connectionString })`, whose default
// size is 10; the bench passes the size every side uses).

import { createPostgresState } from "@chat-adapter/state-pg";
import pg from "pg";
import {
  parseArgs,
  printResult,
  storeCycle,
  timed,
} from "../../test-support/bench/workload.mjs";

/** Warm-up cycles before timing (JIT, connections); the Rust side does the same. */
const WARMUP = 500;

const { url, workload, concurrency, iterations, poolSize } = parseArgs({
  leading: ["url"],
  workloads: ["lock", "cache", "message"],
  trailing: ["poolSize"],
});

const silent = { debug() {}, info() {}, warn() {}, error() {}, child: () => silent };
const pool = new pg.Pool({ connectionString: url, max: poolSize });
const state = createPostgresState({ client: pool, keyPrefix: "chat-sdk", logger: silent });
await state.connect();
const measured = await timed({
  concurrency,
  iterations,
  warmup: WARMUP,
  cycle: storeCycle(state, workload),
});
await state.disconnect();
await pool.end();

printResult(import.meta.url, { workload, concurrency, iterations }, measured, {
  adapter: "@chat-adapter/state-pg",
  client: "pg",
});
