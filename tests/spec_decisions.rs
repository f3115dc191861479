//! The language-neutral decision fixtures (`spec/decisions/*.json`, see
//! `spec/README.md`) through the filter's stream runtime, natively: the same
//! files the CLI and Envoy runners read (`python/tests/test_spec_decisions.py`).

use augur::offline::Simulation;
use serde_json::{json, Value};

/// Every mismatch between one case's expectation and the decision record.
fn mismatches(expect: &Value, record: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if expect["stack"] != record["stack"] {
        out.push(format!("stack: want {}, got {}", expect["stack"], record["stack"]));
    }
    if let Some(segments) = expect.get("segments") {
        if *segments != record["segments"] {
            out.push(format!("segments: want {segments}, got {}", record["segments"]));
        }
    }
    for (name, want) in expect["features"].as_object().into_iter().flatten() {
        let got = &record["features"][name];
        if want["on"] != got["on"] || want["reason"] != got["reason"] {
            out.push(format!("feature {name}: want {want}, got {got}"));
        }
    }
    out
}

#[test]
fn every_fixture_case_is_decided_as_specified() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/spec/decisions");
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 3, "fixtures in {dir}");
    let mut failures = Vec::new();
    let mut cases = 0;
    for file in files {
        let spec: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        let config = augur::config::compile(&serde_json::to_vec(&spec["config"]).unwrap())
            .unwrap_or_else(|e| panic!("{}: config: {e}", file.display()));
        let mut sim = Simulation::new(config, 1);
        for (i, case) in spec["cases"].as_array().unwrap().iter().enumerate() {
            cases += 1;
            let out = sim.apply(&json!({"t_ms": i, "request": case["headers"]})).unwrap();
            for m in mismatches(&case["expect"], &out["record"]) {
                failures.push(format!(
                    "{} / {}: {m}",
                    file.file_name().unwrap().to_string_lossy(),
                    case["name"]
                ));
            }
        }
    }
    assert!(cases >= 8, "{cases} cases");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
