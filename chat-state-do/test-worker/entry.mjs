// The test Worker's entry module: the worker-build output, with the Durable Object class
// wrapped for Workers RPC as a user's Worker does it (see ../js/chat-state-do.mjs).
import * as rust from "./build/index.js";
import { rpcClass } from "../js/chat-state-do.mjs";

export * from "./build/index.js";
export default rust.default;
export const ChatStateDO = rpcClass(rust.ChatStateDO);
// The same class without the wrapper, bound as UNWRAPPED (tests only).
export const UnwrappedChatStateDO = rust.ChatStateDO;
