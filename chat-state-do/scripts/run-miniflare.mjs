// Starts workerd (through the Miniflare API) on 127.0.0.1 with a worker-build output and the
// CHAT_STATE Durable Object binding, prints `READY <url>` once it serves, and stops cleanly
// (dispose: workerd exits too) on SIGTERM/SIGINT or when stdin closes, so a test that dies
// never leaves workerd behind.
//
// usage: node run-miniflare.mjs <build-dir> [persist-dir|-] [main-module]
//   build-dir    directory holding index.js (worker-build's `build/`), or a JS bundle's dir
//   persist-dir  Durable Object storage directory (kept across restarts); `-` = in memory
//   main-module  entry file inside build-dir (default index.js)
// stdin: each line `{"object": NAME, "path": "/v1", "headers": {...}, "body": TEXT}` sends one
//   POST straight to that CHAT_STATE object, past the Worker, answered on stdout as
//   `RESPONSE {"status": N, "body": TEXT}` (or `RESPONSE {"error": TEXT}`). Tests use it to reach
//   objects of production builds, whose Workers have no test routes.
// env: CHAT_STATE_TOOLS (where npm installed miniflare), MF_PORT (default 0 = any free port),
//      MF_CLASS (Durable Object class name, default ChatStateDO)
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import path from "node:path";
import readline from "node:readline";

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

const url = await mf.ready;
const namespace = await mf.getDurableObjectNamespace("CHAT_STATE");
readline.createInterface({ input: process.stdin }).on("line", async (line) => {
  let answer;
  try {
    const { object, path: objectPath, headers = {}, body = "" } = JSON.parse(line);
    const stub = namespace.get(namespace.idFromName(object));
    const response = await stub.fetch(`https://object${objectPath}`, { method: "POST", headers, body });
    answer = { status: response.status, body: await response.text() };
  } catch (e) {
    answer = { error: String(e) };
  }
  console.log(`RESPONSE ${JSON.stringify(answer)}`);
});
console.log(`READY ${url.href}`);
