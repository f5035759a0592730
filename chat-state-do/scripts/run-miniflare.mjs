// Starts workerd (through the Miniflare API) on 127.0.0.1 with a Worker entry module and its
// Durable Object bindings, prints `READY <url>` once it serves, and stops cleanly (dispose:
// workerd exits too) on SIGTERM/SIGINT or when stdin closes, so a test that dies never leaves
// workerd behind.
//
// usage: node run-miniflare.mjs <root> <main> [persist-dir|-]
//   root         the directory every module lives under (the entry imports worker-build's
//                output and chat-state-do's js/chat-state-do.mjs from inside it)
//   main         the entry module, relative to root (e.g. test-worker/entry.mjs)
//   persist-dir  Durable Object storage directory (kept across restarts); `-` = in memory
// stdin: each line `{"object": NAME, "method": "get", "args": [...]}` makes one RPC call
//   straight on that CHAT_STATE object, past the Worker (from a second, JavaScript Worker in
//   the same runtime bound to the same class), answered on stdout as
//   `RESPONSE {"ok": result}` or `RESPONSE {"err": {"message": ...}}`. In args,
//   `{"$bytes": "text"}` is a Uint8Array of that text and `{"$undefined": true}` is
//   undefined; bytes in the result come back as `{"$bytes": "text"}`. Tests use it to reach
//   objects of production builds, whose Workers have no test routes.
// env: CHAT_STATE_TOOLS (where npm installed miniflare), MF_PORT (default 0 = any free port),
//      MF_DURABLE_OBJECTS (JSON: binding name -> class name; default
//      {"CHAT_STATE": "ChatStateDO"})
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import path from "node:path";
import readline from "node:readline";

const [rootDir, main, persist = "-"] = process.argv.slice(2);
const tools = process.env.CHAT_STATE_TOOLS;
if (!rootDir || !main || !tools) {
  console.error("usage: CHAT_STATE_TOOLS=<dir> node run-miniflare.mjs <root> <main> [persist-dir|-]");
  process.exit(2);
}
const require = createRequire(path.join(path.resolve(tools), "package.json"));
const { Miniflare, Log, LogLevel } = await import(pathToFileURL(require.resolve("miniflare")).href);

const bindings = JSON.parse(process.env.MF_DURABLE_OBJECTS ?? '{"CHAT_STATE": "ChatStateDO"}');
const durableObjects = Object.fromEntries(
  Object.entries(bindings).map(([name, className]) => [name, { className, useSQLite: true }]),
);
const root = path.resolve(rootDir);

// The second Worker behind the stdin calls: a plain JavaScript RPC caller, so any build's
// objects can be reached, whatever routes its own Worker has.
const PROBE = `
const toJs = (text) => JSON.parse(text, (_, v) => {
  if (v && typeof v === "object" && typeof v.$bytes === "string") return new TextEncoder().encode(v.$bytes);
  if (v && typeof v === "object" && v.$undefined === true) return undefined;
  return v;
});
const toJson = (v) => JSON.stringify(v === undefined ? null : v, (_, x) =>
  x instanceof ArrayBuffer || ArrayBuffer.isView(x) ? { $bytes: new TextDecoder().decode(x) } : x);
export default {
  async fetch(request, env) {
    const { object, method, args = [] } = JSON.parse(await request.text());
    try {
      const result = await env.CHAT_STATE.getByName(object)[method](...toJs(JSON.stringify(args)));
      return new Response('{"ok":' + toJson(result) + '}');
    } catch (e) {
      return new Response(JSON.stringify({ err: { message: String(e?.message ?? e) } }));
    }
  },
};`;

const mf = new Miniflare({
  host: "127.0.0.1",
  port: Number(process.env.MF_PORT ?? 0),
  durableObjectsPersist: persist === "-" ? false : path.resolve(persist),
  cf: false,
  log: new Log(LogLevel.WARN),
  workers: [
    {
      name: "main",
      modules: true,
      modulesRoot: root,
      scriptPath: path.join(root, main),
      // worker-build's index.js is an ES module too (Miniflare would take a .js import for
      // CommonJS).
      modulesRules: [
        { type: "ESModule", include: ["**/*.js", "**/*.mjs"] },
        { type: "CompiledWasm", include: ["**/*.wasm"] },
      ],
      compatibilityDate: "2026-01-01",
      compatibilityFlags: ["nodejs_compat"],
      durableObjects,
    },
    {
      name: "probe",
      modules: true,
      script: PROBE,
      compatibilityDate: "2026-01-01",
      durableObjects: {
        CHAT_STATE: { className: bindings.CHAT_STATE ?? "ChatStateDO", scriptName: "main", useSQLite: true },
      },
    },
  ],
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
const probe = await mf.getWorker("probe");
readline.createInterface({ input: process.stdin }).on("line", async (line) => {
  let answer;
  try {
    const response = await probe.fetch("http://probe/", { method: "POST", body: line });
    answer = await response.text();
  } catch (e) {
    answer = JSON.stringify({ err: { message: `probe failed: ${e}` } });
  }
  console.log(`RESPONSE ${answer}`);
});
console.log(`READY ${url.href}`);
