//! SQLite chat-state backend (sqlx): durable on one machine, safe across processes (work in progress).
