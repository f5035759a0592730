//! Keeps the suite and `SEMANTICS.md` in step: every case is linked from the document, and
//! every case the document names exists.

use std::collections::BTreeSet;

fn semantics() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../SEMANTICS.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Words in backticks that look like case names (`area_what`).
fn named_cases(doc: &str) -> BTreeSet<String> {
    const AREAS: [&str; 11] = [
        "dispatch_",
        "lifecycle_",
        "subscription_",
        "lock_",
        "locks_",
        "cache_",
        "list_",
        "queue_",
        "namespace_",
        "validation_",
        "typed_",
    ];
    doc.split('`')
        .skip(1)
        .step_by(2)
        // Method names that share an area prefix are API, not cases.
        .filter(|w| !["queue_depth"].contains(w))
        .filter(|w| {
            AREAS.iter().any(|a| w.starts_with(a))
                && w.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_case_is_documented_in_semantics_md() {
    let doc = semantics();
    let named = named_cases(&doc);
    let missing: Vec<_> = chat_state_conformance::all_cases()
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !named.contains(*name) && *name != "model_based_operations")
        .collect();
    assert!(
        missing.is_empty(),
        "cases missing from SEMANTICS.md: {missing:?}"
    );
    assert!(doc.contains("model_based_operations"));
}

#[test]
fn every_case_named_in_semantics_md_exists() {
    let cases: BTreeSet<&str> = chat_state_conformance::all_cases()
        .iter()
        .map(|(name, _)| *name)
        .collect();
    let unknown: Vec<_> = named_cases(&semantics())
        .into_iter()
        .filter(|n| !cases.contains(n.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "SEMANTICS.md names cases that do not exist: {unknown:?}"
    );
}

#[test]
fn suite_has_at_least_80_cases_across_the_five_capabilities() {
    let names: Vec<&str> = chat_state_conformance::all_cases()
        .iter()
        .map(|(name, _)| *name)
        .collect();
    assert!(names.len() >= 80, "only {} cases", names.len());
    for area in ["subscription_", "lock", "cache_", "list_", "queue_"] {
        let n = names.iter().filter(|c| c.starts_with(area)).count();
        assert!(n >= 5, "only {n} cases for {area}");
    }
    let distinct: BTreeSet<_> = names.iter().collect();
    assert_eq!(distinct.len(), names.len(), "duplicate case names");
}
