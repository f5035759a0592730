//! The `chat-state` binary end to end: exit codes, tables and JSON, on the memory backend.

use std::process::{Command, Output};

fn chat_state(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chat-state"))
        .args(args)
        .env_remove("CHAT_STATE_URL")
        .output()
        .expect("the chat-state binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn simulate_prints_a_clean_json_report() {
    let out = chat_state(&[
        "simulate",
        "--url",
        "memory://",
        "--messages",
        "300",
        "--threads",
        "8",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON report");
    assert_eq!(report["backend"], "memory");
    assert_eq!(report["instances"], 16);
    assert_eq!(report["handled_twice"], 0);
    assert_eq!(report["lost"], 0);
    assert_eq!(
        report["handled_once"].as_u64().unwrap_or(0)
            + report["conflicts_dropped"].as_u64().unwrap_or(0),
        300
    );
}

#[test]
fn simulate_text_report_has_the_headline_lines() {
    let out = chat_state(&["simulate", "--url", "memory://", "--messages", "100"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    for line in [
        "handled exactly once",
        "duplicates suppressed",
        "conflicts queued",
        "handled twice          0",
        "lost                   0",
        "latency",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[test]
fn unknown_scheme_exits_2_listing_compiled_schemes() {
    let out = chat_state(&["simulate", "--url", "mongodb://localhost"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown URL scheme"), "{err}");
    assert!(err.contains("memory://"), "{err}");
}

#[test]
fn conformance_prints_a_table_and_passes_on_memory() {
    let out = chat_state(&["conformance", "--url", "memory://", "--filter", "cache_"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{out:?}");
    assert!(text.contains("backend: memory"), "{text}");
    assert!(text.contains(" pass "), "{text}");
    assert!(text.contains(" 0 failed"), "{text}");
}

#[test]
fn conformance_with_a_filter_matching_nothing_is_an_error() {
    let out = chat_state(&[
        "conformance",
        "--url",
        "memory://",
        "--filter",
        "no-such-case",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn bench_json_has_every_requested_workload() {
    let out = chat_state(&[
        "bench",
        "--url",
        "memory://",
        "--iterations",
        "200",
        "--concurrency",
        "4",
        "--workload",
        "lock-cycle",
        "--workload",
        "contended-lock",
        "--workload",
        "message-cycle",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let results = json["results"].as_array().expect("results");
    assert_eq!(results.len(), 3);
    for r in results {
        assert_eq!(r["iterations"], 200, "{r}");
        assert_eq!(r["concurrency"], 4, "{r}");
    }
    // Uncontended lock cycles always win; the contended one cannot win every race at 4.
    assert_eq!(results[0]["successes"], 200);
    assert!(results[1]["successes"].as_u64().unwrap_or(0) >= 1);
}

#[test]
fn inspect_and_force_release_on_memory() {
    let out = chat_state(&["inspect", "--url", "memory://", "slack:C1:t1", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let view: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(view["subscribed"], false);
    assert_eq!(view["queueDepth"], 0);
    // A fresh private store cannot show lock holders, and says so instead of guessing.
    assert!(view["lock"]["held"].is_null(), "{view}");

    let out = chat_state(&["force-release", "--url", "memory://", "slack:C1:t1"]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("force-released"));

    let out = chat_state(&["inspect", "--url", "memory://", ""]);
    assert_eq!(out.status.code(), Some(2), "empty id is refused: {out:?}");
}

#[test]
fn trace_flag_logs_one_event_per_adapter_call() {
    let out = chat_state(&[
        "--trace",
        "bench",
        "--url",
        "memory://",
        "--iterations",
        "3",
        "--concurrency",
        "1",
        "--workload",
        "lock-cycle",
    ]);
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("operation=\"acquire_lock\""), "{err}");
    assert!(err.contains("operation=\"release_lock\""), "{err}");
    assert!(err.contains("backend=\"memory\""), "{err}");
    assert!(err.contains("duration_us="), "{err}");
}

#[test]
fn bench_reports_ratios_to_a_baseline_measured_in_the_same_run() {
    let out = chat_state(&[
        "bench",
        "--url",
        "memory://",
        "--baseline",
        "memory://",
        "--iterations",
        "100",
        "--workload",
        "cache-set-get",
        "--workload",
        "subscriptions",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(json["baseline"]["backend"], "memory");
    let ratios = json["ratios"].as_array().expect("ratios");
    assert_eq!(ratios.len(), 2);
    assert_eq!(ratios[0]["workload"], "cache-set-get");
    assert!(
        ratios
            .iter()
            .all(|r| r["perSecVsBaseline"].as_f64().unwrap_or(0.0) > 0.0)
    );

    let out = chat_state(&[
        "bench",
        "--url",
        "memory://",
        "--baseline",
        "memory://",
        "--iterations",
        "50",
        "--workload",
        "lock-cycle",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("x baseline"), "{text}");
    assert!(text.contains("(baseline: memory)"), "{text}");
}
