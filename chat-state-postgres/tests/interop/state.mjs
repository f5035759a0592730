// Runs one phase of tests/interop.rs with the real @chat-adapter/state-pg 4.41.0.
// Usage: node state.mjs <url> <keyPrefix> <phase>; prints one JSON object.
import { createPostgresState } from "@chat-adapter/state-pg";

const [url, keyPrefix, phase] = process.argv.slice(2);
const silent = { debug() {}, info() {}, warn() {}, error() {}, child() { return silent; } };
const state = createPostgresState({ url, keyPrefix, logger: silent });
await state.connect();
const out = {};
if (phase === "write") {
  await state.subscribe("ts-sub");
  const lock = await state.acquireLock("ts-lock", 60000);
  out.lock = lock;
  await state.set("ts-cache", { a: 1, s: "h\u00e9" });
  out.dedupe = await state.setIfNotExists("ts-dedupe", true, 60000);
  for (const v of [1, 2, 3]) await state.appendToList("ts-list", v, { maxLength: 2 });
  const now = Date.now();
  out.entry = { message: { text: "hi" }, enqueuedAt: now, expiresAt: now + 60000 };
  out.depth = await state.enqueue("ts-queue", out.entry, 10);
} else if (phase === "check") {
  out.subscribed = await state.isSubscribed("rs-sub");
  out.lock = await state.acquireLock("rs-lock", 60000);
  out.cache = await state.get("rs-cache");
  out.dedupe = await state.setIfNotExists("rs-dedupe", true, 60000);
  out.list = await state.getList("rs-list");
  out.depth = await state.queueDepth("rs-queue");
  out.entry = await state.dequeue("rs-queue");
  // Rust's native admit claimed its dedupe key as a TypeScript bot would, and its fenced
  // write is a plain cache value.
  out.admitDedupe = await state.setIfNotExists("rs-admitted", true, 60000);
  out.fenced = await state.get("rs-fenced");
  // Hand ts-lock back for the Rust side to take.
  const ok = await state.forceReleaseLock("ts-lock");
  out.released = ok === undefined;
}
await state.disconnect();
console.log(JSON.stringify(out));
