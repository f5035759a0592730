//! A minimal chat bot Worker on `chat-state-do` (wasm32 only; natively this crate is empty).
//!
//! `POST /message {"thread": "...", "id": "...", "text": "..."}` handles one incoming message the
//! way the Chat SDK does: drop duplicates, take the thread's lock (or queue the message if the
//! thread is busy), record it in the thread's history, release. `GET /history/<thread>` shows the
//! history.

#[cfg(target_arch = "wasm32")]
mod bot {
    use std::time::Duration;

    use chat_state_core::{Locks as _, QueueEntry, Queues as _, StateExt as _};
    use chat_state_do::routing::hashed_shards;
    use chat_state_do::{DurableObjectAdapter, DurableObjectBackend};
    use serde_json::{Value, json};
    use worker::{Date, Env, Method, Request, Response, Result, event};

    /// Exported from the wasm module so that `entry.mjs` can wrap it for Workers RPC and
    /// export it under the class name wrangler.toml binds.
    pub use chat_state_do::ChatStateDO;

    fn state(env: &Env) -> Result<DurableObjectAdapter> {
        let namespace = env.durable_object("CHAT_STATE")?;
        let shard = hashed_shards("chat-state", 16);
        DurableObjectBackend::builder(namespace)
            .shard_key(move |thread| shard(thread))
            // thread-state:<id> and msg-history:<id> live next to the thread's lock.
            .route_thread_keys()
            .build()
            .map_err(|e| worker::Error::RustError(e.to_string()))
    }

    async fn on_message(env: &Env, msg: Value) -> chat_state_core::Result<Value> {
        let state = state(env).map_err(|e| chat_state_core::Error::invalid_input(e.to_string()))?;
        let thread = msg["thread"].as_str().unwrap_or_default();
        let id = msg["id"].as_str().unwrap_or_default();
        let ten_minutes = Some(Duration::from_secs(600));
        if !state
            .set_json_if_not_exists(&format!("dedupe:example:{id}"), &true, ten_minutes)
            .await?
        {
            return Ok(json!({ "status": "duplicate" }));
        }
        let Some(lock) = state.acquire_lock(thread, Duration::from_secs(30)).await? else {
            let entry = QueueEntry::new(
                msg.clone(),
                Date::now().as_millis(),
                Duration::from_secs(90),
            );
            let depth = state.enqueue(thread, entry, 10).await?;
            return Ok(json!({ "status": "queued", "depth": depth }));
        };
        let history = format!("msg-history:{thread}");
        let options = chat_state_core::ListOptions::new()
            .max_length(100)
            .ttl(Duration::from_secs(7 * 24 * 3600));
        let result = state.append_json(&history, &msg["text"], options).await;
        // Release even if the append failed; a failed release only shortens nobody's lock.
        state.release_lock(&lock).await?;
        result?;
        Ok(json!({ "status": "handled", "fence": lock.fence }))
    }

    #[event(fetch)]
    async fn fetch(mut req: Request, env: Env, _ctx: worker::Context) -> Result<Response> {
        let path = req.path();
        match (req.method(), path.as_str()) {
            (Method::Post, "/message") => {
                let msg: Value = req.json().await?;
                match on_message(&env, msg).await {
                    Ok(v) => Response::from_json(&v),
                    Err(e) => Response::error(e.to_string(), 500),
                }
            }
            (Method::Get, p) if p.starts_with("/history/") => {
                let thread = &p["/history/".len()..];
                let items: Vec<Value> = state(&env)?
                    .get_list_json(&format!("msg-history:{thread}"))
                    .await
                    .map_err(|e| worker::Error::RustError(e.to_string()))?;
                Response::from_json(&items)
            }
            _ => Response::error("not found", 404),
        }
    }
}

#[cfg(target_arch = "wasm32")]
pub use bot::ChatStateDO;
