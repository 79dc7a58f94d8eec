//! The published JSON Schema must be exactly what the Rust types generate, and must accept
//! what the Rust side writes. Regenerate with `ATR_DIST_BLESS=1 cargo test -p atr-dist-shared`.

use std::path::PathBuf;

use atr_dist_shared::job::envelope_schema;

/// Read at run time (cargo sets `CARGO_MANIFEST_DIR` for the tests it runs): a test binary
/// reused from another checkout through a shared `CARGO_TARGET_DIR` carries that checkout's
/// path in `env!`, and would compare against its schema instead of this one.
fn schema_path() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .join("../docs/job-envelope.schema.json")
}

#[test]
fn checked_in_schema_matches_the_types() {
    let generated = envelope_schema();
    let path = schema_path();
    if std::env::var_os("ATR_DIST_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "docs/job-envelope.schema.json is out of date with the Rust types; \
         run `ATR_DIST_BLESS=1 cargo test -p atr-dist-shared --test schema` and commit the result"
    );
}

#[test]
fn schema_names_the_contract() {
    let schema: serde_json::Value = serde_json::from_str(&envelope_schema()).unwrap();
    assert_eq!(schema["title"], "atr-dist job envelope");
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    for field in ["v", "id", "idempotency_key", "enqueued_at"] {
        assert!(
            required.contains(&field),
            "{field} not required: {required:?}"
        );
    }
    let text = envelope_schema();
    for needle in ["\"stage\"", "\"promote\"", "NPM_SCOPED", "sha3_256"] {
        assert!(text.contains(needle), "schema lacks {needle}");
    }
}
