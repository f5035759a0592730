// What the TypeScript sides of the memory, Redis and Postgres benches (`bench/bench.mjs` of
// each crate) share: the ids, keys, values and TTLs, the id walk, the concurrent loops and the
// timed run, each kept in step with the Rust sides in `test-support/src/bench.rs`.

import { readFileSync } from "node:fs";

export const IDS = 10_000;
/** The Chat SDK's DEFAULT_LOCK_TTL_MS and THREAD_STATE_TTL_MS; dedupe and history TTLs. */
export const LOCK_TTL_MS = 30_000;
export const STATE_TTL_MS = 30 * 24 * 60 * 60 * 1000;
export const DEDUPE_TTL_MS = 600_000;
export const HISTORY = { maxLength: 100, ttlMs: 7 * 24 * 60 * 60 * 1000 };

const pad = (n, w) => String(n).padStart(w, "0");
export const ids = Array.from(
  { length: IDS },
  (_, i) => `slack:C${pad(i, 7)}:1700000000.${pad(i, 6)}`,
);
export const stateKeys = ids.map((id) => `thread-state:${id}`);
export const historyKeys = ids.map((id) => `msg-history:${id}`);
/** The ~225-byte thread state the Rust sides store (`THREAD_STATE_JSON`). */
export const threadStateJson = readFileSync(
  new URL("./thread-state.json", import.meta.url),
  "utf8",
).trim();
export const historyEntry = { id: "m", text: "hello" };

/** Task `w` of `c`, iteration `i`: a scattered walk over the task's own slice of the ids. */
export function idIndex(w, c, i) {
  const per = Math.floor(IDS / c);
  return w + c * ((i * 7919) % per);
}

/**
 * Prints the bench's one JSON line: `impl: "ts"`, the run's `args` (workload, concurrency,
 * iterations), the `measured` fields of [`timed`], node's version and, for each entry of
 * `packages` (`{ adapter: "@chat-adapter/state-pg", client: "pg" }`), `name@version` of the
 * package installed beside the bench whose module URL is `benchUrl`.
 */
export function printResult(benchUrl, { workload, concurrency, iterations }, measured, packages) {
  const version = (pkg) => {
    const manifest = new URL(`./node_modules/${pkg}/package.json`, benchUrl);
    return `${pkg}@${JSON.parse(readFileSync(manifest, "utf8")).version}`;
  };
  const installed = Object.fromEntries(
    Object.entries(packages).map(([role, pkg]) => [role, version(pkg)]),
  );
  const line = { impl: "ts", workload, concurrency, iterations, ...measured };
  console.log(JSON.stringify({ ...line, node: process.version, ...installed }));
}

/**
 * Parses `node bench.mjs <leading...> <workload> <concurrency> <iterations> <trailing...>`:
 * `leading` names the bench's arguments before the workload (a URL), `trailing` its numeric
 * ones after the iterations (a pool size). Exits with the usage line when anything is
 * missing, extra, or not a positive number.
 */
export function parseArgs({ leading = [], workloads, trailing = [] }) {
  const argv = process.argv.slice(2);
  const numberNames = ["concurrency", "iterations", ...trailing];
  const workload = argv[leading.length];
  const numbers = argv.slice(leading.length + 1).map(Number);
  const ok =
    argv.length === leading.length + 1 + numberNames.length &&
    argv.slice(0, leading.length).every(Boolean) &&
    workloads.includes(workload) &&
    numbers.every((n) => n >= 1);
  if (!ok) {
    const usage = [...leading, workloads.join("|"), ...numberNames].map((n) => `<${n}>`);
    console.error(`usage: node bench.mjs ${usage.join(" ")}`);
    process.exit(2);
  }
  return {
    ...Object.fromEntries(leading.map((n, i) => [n, argv[i]])),
    workload,
    ...Object.fromEntries(numberNames.map((n, i) => [n, numbers[i]])),
  };
}

/**
 * `total` cycles split over `c` concurrent loops on the one event loop (`Promise.all`);
 * `cycle(w, c, i)` returns `false` when it did not get what it asked for. Returns the
 * cycles that did.
 */
async function run(c, total, cycle) {
  const loops = [];
  for (let w = 0; w < c; w++) {
    const mine = Math.floor(total / c) + (w < total % c ? 1 : 0);
    loops.push(
      (async () => {
        let ok = 0;
        for (let i = 0; i < mine; i++) if ((await cycle(w, c, i)) !== false) ok++;
        return ok;
      })(),
    );
  }
  return (await Promise.all(loops)).reduce((a, b) => a + b, 0);
}

/**
 * Warms up with `min(warmup, iterations)` cycles, then times `iterations` cycles at
 * `concurrency` and returns the JSON line's measured fields.
 */
export async function timed({ concurrency, iterations, warmup, cycle }) {
  await run(concurrency, Math.min(warmup, iterations), cycle);
  const start = process.hrtime.bigint();
  const successes = await run(concurrency, iterations, cycle);
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  return { successes, seconds, perSec: iterations / seconds };
}

/**
 * The Redis and Postgres benches' cycle of `workload` on a Chat SDK `state` adapter:
 * lock, cache (set + get of the thread state), subscriptions, or message (dedupe, lock the
 * thread, append to its history, unlock).
 */
export function storeCycle(state, workload) {
  // The adapter JSON.stringifies what it is given: objects, so that it stores exactly the
  // bytes the Rust side stores, as a TS bot would call it.
  const threadState = JSON.parse(threadStateJson);
  let seq = 0;
  return async (w, c, i) => {
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
        const n = seq++;
        if (!(await state.setIfNotExists(`dedupe:slack:m${n}`, true, DEDUPE_TTL_MS)))
          throw new Error("duplicate");
        const lock = await state.acquireLock(ids[k], LOCK_TTL_MS);
        if (!lock) throw new Error("lock held");
        await state.appendToList(historyKeys[k], historyEntry, HISTORY);
        await state.releaseLock(lock);
        return;
      }
      default:
        throw new Error(`unknown workload ${workload}`);
    }
  };
}
