// The Worker's entry module (wrangler.toml: main = "entry.mjs"): worker-build's output, with
// the Durable Object class wrapped so the runtime offers it Workers RPC. In your own project,
// copy chat-state-do's js/chat-state-do.mjs next to this file and import it from there.
import * as rust from "./build/index.js";
import { rpcClass } from "../../js/chat-state-do.mjs";

export * from "./build/index.js";
export default rust.default;
export const ChatStateDO = rpcClass(rust.ChatStateDO);
