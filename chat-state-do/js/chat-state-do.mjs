// chat-state-do's Durable Object class as the runtime needs it for Workers RPC.
//
// The runtime only calls RPC methods on a class that extends DurableObject, and the class
// wasm-bindgen generates for the Rust ChatStateDO cannot. rpcClass wraps it in one that does
// and forwards every call to the Rust object. The Worker's entry module (wrangler.toml
// `main`) exports the wrapped class under the name wrangler.toml binds:
//
//   import * as rust from "./build/index.js";
//   import { rpcClass } from "./chat-state-do.mjs";
//   export * from "./build/index.js";
//   export default rust.default;
//   export const ChatStateDO = rpcClass(rust.ChatStateDO);
//
// The list of methods comes from the Rust class itself (ChatStateDO.rpcMethods()), so this
// file does not change between chat-state-do versions; a Worker and a class of different
// versions are told apart by the protocol version every call carries.
import { DurableObject, RpcTarget } from "cloudflare:workers";

// The Rust object lives under a symbol: RPC callers can only name string properties.
const inner = Symbol("chat-state-do object");

function forward(cls, names) {
  for (const name of names) {
    Object.defineProperty(cls.prototype, name, {
      value: function (...args) {
        return this[inner][name](...args);
      },
      writable: true,
      configurable: true,
    });
  }
}

export function rpcClass(RustClass) {
  if (typeof RustClass?.rpcMethods !== "function") {
    throw new TypeError(
      "rpcClass expects the ChatStateDO class of a chat-state-do Worker build " +
        "(import { ChatStateDO } from \"./build/index.js\")",
    );
  }
  const methods = RustClass.rpcMethods();

  // What session() answers: the same methods on a capability of one caller. Calls on it
  // skip the runtime's per-request setup on both sides, which costs more than the work of
  // most operations.
  class ChatStateSession extends RpcTarget {
    constructor(object) {
      super();
      this[inner] = object;
    }
  }
  forward(ChatStateSession, methods);

  class ChatStateDO extends DurableObject {
    constructor(ctx, env) {
      super(ctx, env);
      this[inner] = new RustClass(ctx, env);
    }
    session() {
      return new ChatStateSession(this[inner]);
    }
    // Only callers from before Workers RPC use fetch; the object answers them with a
    // version error.
    fetch(request) {
      return this[inner].fetch(request);
    }
    alarm() {
      return this[inner].alarm();
    }
  }
  forward(ChatStateDO, methods);
  return ChatStateDO;
}
