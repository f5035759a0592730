// The TypeScript baseline of `cargo bench -p chat-state-redis`: the same workloads, ids and
// values through npm `@chat-adapter/state-redis` (pinned with its `redis` client in
// package.json / package-lock.json), against the bench's loopback redis-server.
//
//   node bench.mjs <redis-url> <workload> <concurrency> <iterations>
//
// workload: lock | cache | subscriptions | message
// Prints one JSON line: {"impl":"ts","workload":..,"concurrency":..,"iterations":..,
// "successes":..,"seconds":..,"perSec":..,"node":..,"adapter":..,"client":..}.
//
// Kept in step with chat-state-redis/benches/throughput.rs through
// test-support/bench/workload.mjs: same 10,000 thread ids, same per-task id order, same values
// (thread-state.json, the history entry), same TTLs, same key prefix (`chat-sdk`; the Rust side
// flushes the database before every run). Concurrency N = N async loops on the one event loop
// (`Promise.all`), one adapter = one connection (the adapter's own `createClient({ url })`),
// as in production.

import { createRedisState } from "@chat-adapter/state-redis";
import {
  parseArgs,
  printResult,
  storeCycle,
  timed,
} from "../../test-support/bench/workload.mjs";

/** Warm-up cycles before timing (JIT, connection); the Rust side does the same. */
const WARMUP = 2_000;

const { url, workload, concurrency, iterations } = parseArgs({
  leading: ["url"],
  workloads: ["lock", "cache", "subscriptions", "message"],
});

const state = createRedisState({ url, keyPrefix: "chat-sdk" });
await state.connect();
const measured = await timed({
  concurrency,
  iterations,
  warmup: WARMUP,
  cycle: storeCycle(state, workload),
});
await state.disconnect();

printResult(import.meta.url, { workload, concurrency, iterations }, measured, {
  adapter: "@chat-adapter/state-redis",
  client: "redis",
});
