//! The conformance fixtures in `tests/conformance/`, which any client can run: every envelope
//! goes to the worker's parser and to the published JSON Schema, and both must say what the
//! fixture says. `ATR_DIST_BLESS=1` writes the worker's messages into the fixtures (review
//! the diff: a changed message is a changed contract).

use std::path::PathBuf;

use atr_dist_shared::Envelope;
use serde_json::Value;

fn checkout() -> PathBuf {
    // The checkout's path at run time, not the build's (see shared/tests/schema.rs).
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .join("..")
}

#[test]
fn the_worker_and_the_schema_agree_with_every_envelope_fixture() {
    let path = checkout().join("tests/conformance/envelopes.json");
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(checkout().join("docs/job-envelope.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&schema)
        .expect("the published schema compiles");
    let bless = std::env::var_os("ATR_DIST_BLESS").is_some();
    let mut failures = Vec::new();
    let cases = doc["cases"].as_array_mut().expect("cases");
    assert!(cases.len() >= 20, "the fixtures are there");
    for case in cases.iter_mut() {
        let name = case["name"].as_str().unwrap_or("?").to_owned();
        let envelope = case["envelope"].clone();
        let worker = Envelope::parse(envelope.to_string().as_bytes())
            .err()
            .map(|e| e.to_string());
        let expected = case["worker_error"].as_str().map(str::to_owned);
        if bless {
            case["worker_error"] = worker.clone().map_or(Value::Null, Value::String);
        } else if worker != expected {
            failures.push(format!(
                "{name}: the worker says {worker:?}, the fixture {expected:?}"
            ));
        }
        let schema_errors: Vec<String> = validator
            .iter_errors(&envelope)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        let can_tell = case["schema_can_tell"].as_bool().unwrap_or(true);
        let valid = worker.is_none();
        if can_tell && schema_errors.is_empty() != valid {
            failures.push(format!(
                "{name}: the worker says {}, the schema {}",
                worker.as_deref().unwrap_or("valid"),
                if schema_errors.is_empty() {
                    "valid".to_owned()
                } else {
                    schema_errors.join("; ")
                }
            ));
        }
        if !can_tell && (valid || !schema_errors.is_empty()) {
            failures.push(format!(
                "{name}: marked schema_can_tell = false, but the schema does tell (or the envelope is valid): {schema_errors:?}"
            ));
        }
    }
    if bless {
        let mut text = serde_json::to_string_pretty(&doc).unwrap();
        text.push('\n');
        std::fs::write(&path, text).unwrap();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
