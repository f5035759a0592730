//! In-process chat-state backend: the embedded default and the reference for the contract (work in progress).
