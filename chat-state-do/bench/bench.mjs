// Message-cycle throughput of chat-state-do (Rust, wasm) vs the npm TypeScript package
// chat-state-cloudflare-do, both in workerd through Miniflare on 127.0.0.1, one object and 16
// shards. Run through bench/run.sh (it builds the Rust Worker first).
//
// usage: node bench.mjs <rust-build-dir> <out-dir>   env: CHAT_STATE_TOOLS, BENCH_CYCLES,
//        BENCH_CONCURRENCY, BENCH_ROUNDS
import { createRequire } from "node:module";
import { pathToFileURL, fileURLToPath } from "node:url";
import path from "node:path";
import fs from "node:fs";
import zlib from "node:zlib";

const [rustBuild, outDir] = process.argv.slice(2);
const tools = path.resolve(process.env.CHAT_STATE_TOOLS);
const require = createRequire(path.join(tools, "package.json"));
const { Miniflare, Log, LogLevel } = await import(pathToFileURL(require.resolve("miniflare")).href);
const esbuild = require("esbuild");
const here = path.dirname(fileURLToPath(import.meta.url));

// Many short interleaved rounds, reported as medians: on a shared machine the load changes
// from minute to minute, and back-to-back slices of each kind see about the same load.
const CYCLES = Number(process.env.BENCH_CYCLES ?? 300);
const CONC = Number(process.env.BENCH_CONCURRENCY ?? 16);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 7);
const THREADS = 256;

// Bundle the TypeScript baseline Worker and the fetch-transport control.
const dirs = { rust: path.resolve(rustBuild) };
for (const [kind, entry] of [["ts", "ts-worker.mjs"], ["tsfetch", "ts-fetch-worker.mjs"]]) {
  dirs[kind] = path.join(outDir, kind);
  fs.mkdirSync(dirs[kind], { recursive: true });
  await esbuild.build({
    entryPoints: [path.join(here, entry)],
    bundle: true,
    format: "esm",
    platform: "neutral",
    external: ["cloudflare:workers"],
    nodePaths: [path.join(tools, "node_modules")],
    outfile: path.join(dirs[kind], "index.js"),
    logLevel: "warning",
  });
}
const KINDS = ["rust", "ts", "tsfetch"];

function options(kind) {
  const root = dirs[kind];
  return {
    host: "127.0.0.1",
    port: 0,
    modules: true,
    modulesRoot: root,
    scriptPath: path.join(root, "index.js"),
    modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"] }],
    compatibilityDate: "2026-01-01",
    compatibilityFlags: ["nodejs_compat"],
    durableObjects: { CHAT_STATE: { className: "ChatStateDO", useSQLite: true } },
    cf: false,
    log: new Log(LogLevel.WARN),
  };
}

async function cycle(url, config, thread) {
  const r = await fetch(`${url}cycle`, {
    method: "POST",
    body: JSON.stringify({ config, thread }),
  });
  const body = await r.json();
  if (!r.ok || body.locked !== true) throw new Error(`cycle failed: ${r.status} ${JSON.stringify(body)}`);
  return body;
}

async function start(kind) {
  const t0 = performance.now();
  const mf = new Miniflare(options(kind));
  const url = (await mf.ready).href;
  const ready = performance.now() - t0;
  const t1 = performance.now();
  await cycle(url, { object: `cold-${kind}` }, "cold");
  const first = performance.now() - t1;
  return { mf, url, ready, first };
}

async function load(url, config, n) {
  let next = 0;
  const t0 = performance.now();
  async function worker() {
    while (next < n) {
      const i = next++;
      await cycle(url, config, `thread-${i % THREADS}`);
    }
  }
  await Promise.all(Array.from({ length: CONC }, worker));
  return n / ((performance.now() - t0) / 1000);
}

const setups = [
  { name: "1 object", rust: { shards: 0 }, ts: { shards: 0 }, tsfetch: { shards: 0 } },
  { name: "16 shards", rust: { shards: 16 }, ts: { shards: 16 }, tsfetch: { shards: 16 } },
  { name: "16 shards + thread-key routing (Rust only)", rust: { shards: 16, route_thread_keys: true } },
];

const results = { rust: {}, ts: {}, tsfetch: {} };
const cold = {};
const runs = {};
for (const kind of KINDS) runs[kind] = await start(kind);
for (const kind of KINDS) cold[kind] = { ready: runs[kind].ready, first: runs[kind].first };

const ratios = {};
for (const s of setups) {
  for (const kind of KINDS) {
    if (!s[kind]) continue;
    // Warm-up: the objects exist and the JIT is warm before anything is timed.
    await load(runs[kind].url, { ...s[kind], object: `bench-${s.name.replace(/\W+/g, "-")}` }, 200);
  }
  for (let round = 0; round < ROUNDS; round++) {
    for (const kind of KINDS) {
      if (!s[kind]) continue;
      const config = { ...s[kind], object: `bench-${s.name.replace(/\W+/g, "-")}` };
      const rate = await load(runs[kind].url, config, CYCLES);
      (results[kind][s.name] ??= []).push(rate);
    }
    if (s.ts) (ratios[s.name] ??= []).push(results.rust[s.name].at(-1) / results.ts[s.name].at(-1));
  }
}
for (const kind of KINDS) await runs[kind].mf.dispose();

const median = (xs) => {
  if (!xs) return undefined;
  const v = [...xs].sort((a, b) => a - b);
  return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
};
const wasm = path.join(path.resolve(rustBuild), "index_bg.wasm");
const wasmBytes = fs.readFileSync(wasm);
const lines = [];
lines.push(`Message cycle = is_subscribed, acquire_lock, get, set, release_lock (5 object round trips).`);
lines.push(`${ROUNDS} interleaved rounds of ${CYCLES} cycles per kind after a 200-cycle warm-up, ${CONC} concurrent clients, ${THREADS} threads; medians (rates) and median of the per-round ratios; Miniflare (workerd) on 127.0.0.1, client on the same machine.`);
lines.push("");
lines.push("| setup | Rust chat-state-do (cycles/s) | TS chat-state-cloudflare-do, RPC (cycles/s) | Rust / TS | control: same TS object over fetch+JSON (cycles/s) |");
lines.push("|---|---|---|---|---|");
const fmt = (x) => (x ? x.toFixed(0) : "n/a");
for (const s of setups) {
  const r = median(results.rust[s.name]);
  const t = median(results.ts[s.name]);
  const f = median(results.tsfetch[s.name]);
  const q = median(ratios[s.name]);
  lines.push(`| ${s.name} | ${fmt(r)} | ${fmt(t)} | ${q ? q.toFixed(2) : "n/a"} | ${fmt(f)} |`);
}
lines.push("");
lines.push(`Cold start (new runtime to ready / first cycle incl. object creation): Rust ${cold.rust.ready.toFixed(0)} ms / ${cold.rust.first.toFixed(0)} ms, TS ${cold.ts.ready.toFixed(0)} ms / ${cold.ts.first.toFixed(0)} ms.`);
lines.push(`Rust wasm (test Worker, release, no wasm-opt): ${wasmBytes.length} bytes, ${zlib.gzipSync(wasmBytes).length} gzipped.`);
const opt = process.env.BENCH_WASM_OPT_BYTES;
if (opt) lines.push(`After wasm-opt -Oz: ${opt}.`);
const text = lines.join("\n");
console.log(text);
fs.writeFileSync(path.join(outDir, "results.md"), text + "\n");
process.exit(0);
