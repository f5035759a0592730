// Message-cycle throughput of chat-state-do (Rust, wasm, Workers RPC) vs the npm TypeScript
// package chat-state-cloudflare-do 0.1.1, in workerd through Miniflare on 127.0.0.1. Run it
// through bench/run.sh, which builds the Rust Worker first.
//
// A message cycle is is_subscribed, acquire_lock, get, set, release_lock (five object calls).
// Each is measured two ways: inside the Worker (one request runs many cycles, so no HTTP
// client sits in the loop) and one HTTP request per cycle; on one object and on 16 shards; at
// concurrency 1 and 16; with the objects' storage on disk and on tmpfs. Every cell of every
// kind is measured once per round, the rounds interleaved, and the tables show medians.
//
// In the same run, on the Rust runtimes only: a new message handled with the dispatch
// operations (admit -> the handler's get + set_fenced of the thread state -> release_or_next),
// with them fused (admit reading the thread state -> release_or_next_with its fenced write),
// and the same work with the primitive calls (set_if_not_exists -> is_subscribed ->
// acquire_lock -> get + set -> dequeue -> release_lock), inside the Worker, on one object, at
// concurrency 1 and 16, on both storages, interleaved with the other cells; messages/s and
// round trips to the object per message.
//
// usage: node bench.mjs <rust-dir> <out-dir>
//   rust-dir  holds entry.mjs (the Rust Worker's entry module) and what it imports
// env: CHAT_STATE_TOOLS, BENCH_ROUNDS (5), BENCH_SECONDS (about how long each measurement
//      runs, 1.5; disk storage is many times slower than tmpfs, so every cell gets a cycle count
//      that fills this time for the slower kind, the same count for both kinds), BENCH_TMPFS
//      (/dev/shm), BENCH_SIZES (sizes line from run.sh), BENCH_DISPATCH_ONLY (1: only the
//      dispatch comparison, for a quick look; the README's tables come from full runs)
import { createRequire } from "node:module";
import { pathToFileURL, fileURLToPath } from "node:url";
import path from "node:path";
import fs from "node:fs";
import os from "node:os";

const [rustDir, outDir] = process.argv.slice(2).map((p) => path.resolve(p));
const tools = path.resolve(process.env.CHAT_STATE_TOOLS);
const require = createRequire(path.join(tools, "package.json"));
const { Miniflare, Log, LogLevel } = await import(pathToFileURL(require.resolve("miniflare")).href);
const esbuild = require("esbuild");
const here = path.dirname(fileURLToPath(import.meta.url));

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 1.5);
const THREADS = 256;
const tmpfs = process.env.BENCH_TMPFS ?? "/dev/shm";

const tsDir = path.join(outDir, "ts");
fs.mkdirSync(tsDir, { recursive: true });
await esbuild.build({
  entryPoints: [path.join(here, "ts-worker.mjs")],
  bundle: true,
  format: "esm",
  platform: "neutral",
  external: ["cloudflare:workers"],
  nodePaths: [path.join(tools, "node_modules")],
  outfile: path.join(tsDir, "index.js"),
  logLevel: "warning",
});

const KINDS = {
  rust: { label: "Rust chat-state-do, RPC", root: rustDir, main: "entry.mjs" },
  ts: { label: "TS chat-state-cloudflare-do", root: tsDir, main: "index.js" },
};
const STORAGE = {
  disk: path.join(outDir, "state"),
  tmpfs: path.join(tmpfs, `chat-state-do-bench-${process.pid}`),
};

function options(kind, persist) {
  const k = KINDS[kind];
  return {
    host: "127.0.0.1",
    port: 0,
    modules: true,
    modulesRoot: k.root,
    scriptPath: path.join(k.root, k.main),
    modulesRules: [
      { type: "ESModule", include: ["**/*.js", "**/*.mjs"] },
      { type: "CompiledWasm", include: ["**/*.wasm"] },
    ],
    compatibilityDate: "2026-01-01",
    compatibilityFlags: ["nodejs_compat"],
    durableObjects: { CHAT_STATE: { className: "ChatStateDO", useSQLite: true } },
    durableObjectsPersist: persist,
    cf: false,
    log: new Log(LogLevel.WARN),
  };
}

async function post(url, body) {
  const r = await fetch(url, { method: "POST", body: JSON.stringify(body) });
  const text = await r.text();
  if (!r.ok) throw new Error(`${url}: ${r.status} ${text}`);
  return JSON.parse(text);
}

async function oneCycle(url, config, thread) {
  const v = await post(`${url}cycle`, { config, thread });
  if (v.locked !== true) throw new Error(`cycle on ${thread} did not get the lock: ${JSON.stringify(v)}`);
}

/// Cycles per second inside the Worker: one request runs `cycles` of them.
async function inWorker(url, config, concurrency, cycles) {
  const t0 = performance.now();
  await post(`${url}cycles`, { config, cycles, concurrency, threads: THREADS });
  return { rate: cycles / ((performance.now() - t0) / 1000) };
}

/// Cycles per second with one HTTP request per cycle, `concurrency` clients, and each
/// request's latency.
async function perRequest(url, config, concurrency, requests) {
  let next = 0;
  const latencies = [];
  const t0 = performance.now();
  async function client() {
    while (next < requests) {
      const i = next++;
      const s = performance.now();
      await oneCycle(url, config, `thread-${i % THREADS}`);
      latencies.push(performance.now() - s);
    }
  }
  await Promise.all(Array.from({ length: concurrency }, client));
  return { rate: requests / ((performance.now() - t0) / 1000), latencies };
}

const median = (xs) => {
  const v = [...xs].sort((a, b) => a - b);
  return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
};
const quantile = (xs, q) => {
  const v = [...xs].sort((a, b) => a - b);
  return v[Math.min(v.length - 1, Math.floor(q * v.length))];
};

// Cold start: a new runtime until it serves, then the first cycle (which creates the object).
const cold = {};
for (const kind of Object.keys(KINDS)) {
  const ready = [];
  const first = [];
  for (let i = 0; i < 3; i++) {
    const dir = path.join(STORAGE.tmpfs, `cold-${kind}-${i}`);
    const t0 = performance.now();
    const mf = new Miniflare(options(kind, dir));
    const url = (await mf.ready).href;
    ready.push(performance.now() - t0);
    const t1 = performance.now();
    await oneCycle(url, { object: "cold" }, "cold");
    first.push(performance.now() - t1);
    await mf.dispose();
  }
  cold[kind] = { ready: median(ready), first: median(first) };
}

const setups = [
  { name: "1 object", config: { shards: 0 } },
  { name: "16 shards", config: { shards: 16 } },
];
const modes = ["in Worker", "HTTP per cycle"];
const DISPATCH_ONLY = process.env.BENCH_DISPATCH_ONLY === "1";
const cells = [];
if (!DISPATCH_ONLY)
  for (const storage of Object.keys(STORAGE))
    for (const mode of modes)
      for (const setup of setups)
        for (const concurrency of [1, 16]) cells.push({ storage, mode, setup, concurrency });
// The dispatch comparison's cells: Rust only, in the Worker, one object.
const DISPATCH_MODES = ["dispatch", "fused", "primitives"];
const dispatchCells = [];
for (const storage of Object.keys(STORAGE))
  for (const concurrency of [1, 16]) dispatchCells.push({ storage, concurrency });
const dkey = (c) => `dispatch | ${c.storage} | c${c.concurrency}`;
const DISPATCH_CONFIG = { object: "bench-dispatch", shards: 0 };

/// Messages per second and round trips per message for one dispatch cell and mode.
async function dispatchRun(c, mode, count) {
  const { url } = runtimes[`rust/${c.storage}`];
  const t0 = performance.now();
  const r = await post(`${url}dispatch-cycles`, {
    config: DISPATCH_CONFIG,
    cycles: count,
    concurrency: c.concurrency,
    threads: THREADS,
    mode,
  });
  return { rate: count / ((performance.now() - t0) / 1000), trips: r.round_trips / count };
}
const key = (c) => `${c.mode} | ${c.storage} | ${c.setup.name} | c${c.concurrency}`;

const runtimes = {};
for (const storage of Object.keys(STORAGE))
  for (const kind of Object.keys(KINDS)) {
    const mf = new Miniflare(options(kind, path.join(STORAGE[storage], kind)));
    runtimes[`${kind}/${storage}`] = { mf, url: (await mf.ready).href };
  }
const configOf = (c) => ({ ...c.setup.config, object: `bench-${c.setup.name.replace(/\W+/g, "-")}` });
const measure = (kind, c, count) => {
  const { url } = runtimes[`${kind}/${c.storage}`];
  return c.mode === "in Worker"
    ? inWorker(url, configOf(c), c.concurrency, count)
    : perRequest(url, configOf(c), c.concurrency, count);
};

const load = [os.loadavg()[0]];
// Warm-up: every object exists and every code path is hot before anything is timed; the
// warm-up's rates size each cell's measurements.
const counts = {};
for (const c of cells) {
  let slowest = Infinity;
  for (const kind of Object.keys(KINDS)) {
    await measure(kind, c, 16 * c.concurrency);
    slowest = Math.min(slowest, (await measure(kind, c, 32 * c.concurrency)).rate);
  }
  counts[key(c)] = Math.max(32, Math.round(slowest * SECONDS));
}
for (const c of dispatchCells) {
  let slowest = Infinity;
  for (const mode of DISPATCH_MODES) {
    await dispatchRun(c, mode, 16 * c.concurrency);
    slowest = Math.min(slowest, (await dispatchRun(c, mode, 32 * c.concurrency)).rate);
  }
  counts[dkey(c)] = Math.max(32, Math.round(slowest * SECONDS));
}

const results = {};
for (let round = 0; round < ROUNDS; round++) {
  for (const c of cells) {
    // Alternate who goes first, so neither kind always meets a machine the other warmed.
    const order = round % 2 ? ["ts", "rust"] : ["rust", "ts"];
    const r = (results[key(c)] ??= { rust: [], ts: [], ratios: [], latencies: { rust: [], ts: [] } });
    const rates = {};
    for (const kind of order) {
      const m = await measure(kind, c, counts[key(c)]);
      rates[kind] = m.rate;
      r[kind].push(m.rate);
      if (m.latencies) r.latencies[kind].push(...m.latencies);
    }
    r.ratios.push(rates.rust / rates.ts);
  }
  for (const c of dispatchCells) {
    const order = round % 2 ? [...DISPATCH_MODES].reverse() : DISPATCH_MODES;
    const r = (results[dkey(c)] ??= {
      dispatch: [], fused: [], primitives: [], ratios: [], fusedRatios: [],
      trips: { dispatch: [], fused: [], primitives: [] },
    });
    const rates = {};
    for (const mode of order) {
      const m = await dispatchRun(c, mode, counts[dkey(c)]);
      rates[mode] = m.rate;
      r[mode].push(m.rate);
      r.trips[mode].push(m.trips);
    }
    r.ratios.push(rates.dispatch / rates.primitives);
    r.fusedRatios.push(rates.fused / rates.primitives);
  }
  load.push(os.loadavg()[0]);
  console.error(`round ${round + 1}/${ROUNDS} done`);
}
for (const { mf } of Object.values(runtimes)) await mf.dispose();
fs.rmSync(STORAGE.tmpfs, { recursive: true, force: true });

const fmt = (x) => x.toFixed(0);
const lines = [];
lines.push(
  `Message cycle = is_subscribed, acquire_lock, get, set, release_lock (5 object calls). ` +
    `${ROUNDS} interleaved rounds; per round, cell and kind one measurement of about ` +
    `${SECONDS} s (the same cycle count for both kinds); medians of the rates and of the ` +
    `per-round Rust/TS ratios; p50/p99 over every request of every round. ` +
    `Miniflare (workerd) on 127.0.0.1, client on the same machine; ${os.cpus().length} cores, ` +
    `load average ${load.map((l) => l.toFixed(1)).join(" → ")} (other jobs share the machine).`,
);
lines.push("");
lines.push("| mode | storage | setup | concurrency | cycles per measurement | Rust, RPC (cycles/s) | TS (cycles/s) | Rust / TS | p50 / p99 ms Rust | p50 / p99 ms TS |");
lines.push("|---|---|---|---|---|---|---|---|---|---|");
for (const c of cells) {
  const r = results[key(c)];
  const lat = (kind) =>
    r.latencies[kind].length
      ? `${quantile(r.latencies[kind], 0.5).toFixed(1)} / ${quantile(r.latencies[kind], 0.99).toFixed(1)}`
      : "";
  lines.push(
    `| ${c.mode} | ${c.storage} | ${c.setup.name} | ${c.concurrency} | ${counts[key(c)]} | ${fmt(median(r.rust))} | ` +
      `${fmt(median(r.ts))} | ${median(r.ratios).toFixed(2)} | ${lat("rust")} | ${lat("ts")} |`,
  );
}
lines.push("");
lines.push(
  `Message cycle via dispatch (admit, get, set_fenced, release_or_next), via fused dispatch ` +
    `(admit with the read, release_or_next_with the fenced write) and with the primitive ` +
    `calls (set_if_not_exists, is_subscribed, acquire_lock, get, set, dequeue, release_lock): ` +
    `Rust only, inside the Worker, one object, a new dedupe key per message; the same rounds, ` +
    `medians of the rates and of the per-round ratios; round trips = RPC exchanges with the ` +
    `object per message (a batch is one).`,
);
lines.push("");
lines.push("| storage | concurrency | messages per measurement | dispatch (msg/s) | fused (msg/s) | primitives (msg/s) | dispatch / primitives | fused / primitives | round trips per message: dispatch / fused / primitives |");
lines.push("|---|---|---|---|---|---|---|---|---|");
for (const c of dispatchCells) {
  const r = results[dkey(c)];
  const trips = DISPATCH_MODES.map((m) => median(r.trips[m]).toFixed(2)).join(" / ");
  lines.push(
    `| ${c.storage} | ${c.concurrency} | ${counts[dkey(c)]} | ${fmt(median(r.dispatch))} | ` +
      `${fmt(median(r.fused))} | ${fmt(median(r.primitives))} | ${median(r.ratios).toFixed(2)} | ` +
      `${median(r.fusedRatios).toFixed(2)} | ${trips} |`,
  );
}
lines.push("");
lines.push(
  `Cold start (median of 3: a new runtime until it serves / its first cycle, which creates the ` +
    `object): Rust ${fmt(cold.rust.ready)} ms / ${fmt(cold.rust.first)} ms, TS ` +
    `${fmt(cold.ts.ready)} ms / ${fmt(cold.ts.first)} ms.`,
);
if (process.env.BENCH_SIZES) lines.push(process.env.BENCH_SIZES);
const text = lines.join("\n");
console.log(text);
fs.writeFileSync(path.join(outDir, "results.md"), text + "\n");
fs.writeFileSync(path.join(outDir, "results.json"), JSON.stringify({ cold, load, counts, results }, null, 1));
process.exit(0);
