//! The checked-in OpenAPI document is the one the code generates.

#[test]
fn checked_in_document_is_current() {
    let generated = piculet::api::openapi::document();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        generated == checked_in,
        "openapi/openapi.json is stale; regenerate it with `cargo run -- openapi > openapi/openapi.json`"
    );
}

#[test]
fn every_operation_is_documented() {
    let doc: serde_json::Value = serde_json::from_str(&piculet::api::openapi::document()).unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                op["operationId"].is_string(),
                "{method} {path} has an operationId"
            );
            assert!(op["summary"].is_string(), "{method} {path} has a summary");
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()));
        }
    }
    let schemas = &doc["components"]["schemas"];
    for name in ["Submission", "Pipeline", "Problem"] {
        assert!(
            schemas[name]["example"].is_object(),
            "{name} has an example"
        );
    }
}
