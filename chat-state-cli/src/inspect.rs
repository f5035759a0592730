//! `chat-state inspect` and `chat-state force-release`: an operator's view of one id.

use chat_state::{StateAdapter, validate};
use serde_json::{Value, json};

use super::CliError;
use chat_state::{LockInfo, lock_inspector};

/// `chat-state inspect` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct InspectArgs {
    /// Backend URL (`sqlite://FILE?prefix=...`, `redis://HOST:PORT?prefix=...`,
    /// `postgres://USER:PASSWORD@HOST/DB?prefix=...`).
    #[arg(long, env = "CHAT_STATE_URL")]
    pub url: String,
    /// The thread id, lock id or key to look at. The namespaces are separate, so the same id
    /// is looked up as a subscription, lock, cache key, list and queue.
    pub id: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `chat-state force-release` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ForceReleaseArgs {
    /// Backend URL.
    #[arg(long, env = "CHAT_STATE_URL")]
    pub url: String,
    /// The lock id (usually a thread id) to release.
    pub lock_id: String,
}

/// What a backend holds for one id.
pub async fn snapshot(state: &dyn StateAdapter, url: &str, id: &str) -> Result<Value, CliError> {
    let lock = match lock_inspector(url).await {
        Ok(inspector) => match inspector.lock_info(id).await? {
            Some(info) => json!({ "held": true, "holder": info }),
            None => json!({ "held": false }),
        },
        Err(e) => json!({ "held": null, "unavailable": e.message() }),
    };
    let cache = match state.get(id).await? {
        Some(bytes) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(value) => value,
            Err(_) => json!({ "nonJsonBytes": bytes.len() }),
        },
        None => Value::Null,
    };
    Ok(json!({
        "backend": state.backend_name(),
        "id": id,
        "subscribed": state.is_subscribed(id).await?,
        "lock": lock,
        "cache": cache,
        "listLength": state.get_list(id).await?.len(),
        "queueDepth": state.queue_depth(id).await?,
    }))
}

fn render_lock(lock: &Value) -> String {
    match lock["held"].as_bool() {
        Some(true) => format!(
            "held by token {} until {} (unix ms), fence {}",
            lock["holder"]["token"].as_str().unwrap_or("?"),
            lock["holder"]["expiresAt"],
            lock["holder"]["fence"]
        ),
        Some(false) => "free".to_string(),
        None => format!(
            "unknown ({})",
            lock["unavailable"].as_str().unwrap_or("no lock read")
        ),
    }
}

pub(crate) async fn inspect_command(args: InspectArgs, trace: bool) -> Result<bool, CliError> {
    validate::key("chat-state", chat_state::Operation::Get, "id", &args.id)?;
    let state = super::open(&args.url, trace).await?;
    let view = snapshot(&*state, &args.url, &args.id).await;
    let _ = state.close().await;
    let view = view?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        println!("backend      {}", view["backend"].as_str().unwrap_or("?"));
        println!("id           {}", args.id);
        println!("subscribed   {}", view["subscribed"]);
        println!("lock         {}", render_lock(&view["lock"]));
        println!(
            "cache        {}",
            if view["cache"].is_null() {
                "(none)".to_string()
            } else {
                view["cache"].to_string()
            }
        );
        println!("list length  {}", view["listLength"]);
        println!("queue depth  {}", view["queueDepth"]);
    }
    Ok(true)
}

pub(crate) async fn force_release_command(
    args: ForceReleaseArgs,
    trace: bool,
) -> Result<bool, CliError> {
    validate::key(
        "chat-state",
        chat_state::Operation::ForceReleaseLock,
        "lock id",
        &args.lock_id,
    )?;
    let state = super::open(&args.url, trace).await?;
    let before: Option<Option<LockInfo>> = match lock_inspector(&args.url).await {
        Ok(inspector) => Some(inspector.lock_info(&args.lock_id).await?),
        Err(_) => None,
    };
    let result = state.force_release_lock(&args.lock_id).await;
    let _ = state.close().await;
    result?;
    match before {
        Some(Some(info)) => println!(
            "released {} (was held by token {}, fence {}, until {} unix ms)",
            args.lock_id,
            info.token,
            info.fence.map_or("?".to_string(), |f| f.to_string()),
            info.expires_at
        ),
        Some(None) => println!("{} was not held; nothing to release", args.lock_id),
        None => println!(
            "force-released {} (this backend cannot show whether it was held)",
            args.lock_id
        ),
    }
    Ok(true)
}
