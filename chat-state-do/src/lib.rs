//! Cloudflare Durable Object chat-state backend: the object class and the adapter (work in progress).
