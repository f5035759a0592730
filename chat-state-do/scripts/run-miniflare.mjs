// Starts workerd (through the Miniflare API) on 127.0.0.1 with a worker-build output and the
// CHAT_STATE Durable Object binding, prints `READY <url>` once it serves, and stops cleanly
// (dispose: workerd exits too) on SIGTERM/SIGINT or when stdin closes, so a test that dies
// never leaves workerd behind.
//
// usage: node run-miniflare.mjs <build-dir> [persist-dir|-] [main-module]
//   build-dir    directory holding index.js (worker-build's `build/`), or a JS bundle's dir
//   persist-dir  Durable Object storage directory (kept across restarts); `-` = in memory
//   main-module  entry file inside build-dir (default index.js)
// env: CHAT_STATE_TOOLS (where npm installed miniflare), MF_PORT (default 0 = any free port),
//      MF_CLASS (Durable Object class name, default ChatStateDO)
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import path from "node:path";

const [buildDir, persist = "-", main = "index.js"] = process.argv.slice(2);
const tools = process.env.CHAT_STATE_TOOLS;
if (!buildDir || !tools) {
  console.error("usage: CHAT_STATE_TOOLS=<dir> node run-miniflare.mjs <build-dir> [persist-dir|-] [main]");
  process.exit(2);
}
const require = createRequire(path.join(path.resolve(tools), "package.json"));
const { Miniflare, Log, LogLevel } = await import(pathToFileURL(require.resolve("miniflare")).href);

const root = path.resolve(buildDir);
const mf = new Miniflare({
  host: "127.0.0.1",
  port: Number(process.env.MF_PORT ?? 0),
  modules: true,
  modulesRoot: root,
  scriptPath: path.join(root, main),
  modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"] }],
  compatibilityDate: "2026-01-01",
  compatibilityFlags: ["nodejs_compat"],
  durableObjects: { CHAT_STATE: { className: process.env.MF_CLASS ?? "ChatStateDO", useSQLite: true } },
  durableObjectsPersist: persist === "-" ? false : path.resolve(persist),
  cf: false,
  log: new Log(LogLevel.WARN),
});

let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  try { await mf.dispose(); } finally { process.exit(0); }
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
process.stdin.on("end", stop);
process.stdin.on("close", stop);
process.stdin.resume();

const url = await mf.ready;
console.log(`READY ${url.href}`);
