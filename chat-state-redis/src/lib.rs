//! Redis chat-state backend, wire-compatible with the TypeScript Chat SDK (work in progress).
