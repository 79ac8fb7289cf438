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

fn document() -> serde_json::Value {
    serde_json::from_str(&piculet::api::openapi::document()).unwrap()
}

/// Calls `f` with the path, method and operation of every operation.
fn operations(doc: &serde_json::Value, mut f: impl FnMut(&str, &str, &serde_json::Value)) {
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            f(path, method, op);
        }
    }
}

/// Every problem example shows a body of its own status, and every status a handler can
/// answer with a problem has at least one example.
#[test]
fn problem_examples_match_their_status() {
    let doc = document();
    operations(&doc, |path, method, op| {
        for (status, response) in op["responses"].as_object().unwrap() {
            let Some(problem) = response["content"].get("application/problem+json") else {
                continue;
            };
            let examples = problem["examples"].as_object().unwrap();
            assert!(
                !examples.is_empty(),
                "{method} {path} {status} has examples"
            );
            for (name, example) in examples {
                let value = &example["value"];
                assert_eq!(
                    value["status"].to_string(),
                    *status,
                    "{method} {path} {status}: example {name}"
                );
                assert_eq!(
                    value["type"],
                    format!("urn:piculet:problem:{name}"),
                    "{method} {path} {status}: example {name} is named by its type"
                );
            }
        }
        if method != "get" || !path.ends_with("healthz") {
            assert!(
                op["responses"]["500"].is_object(),
                "{method} {path} documents 500"
            );
        }
        assert!(
            op["responses"]["413"].is_object(),
            "{method} {path} documents 413"
        );
    });
}

/// Every protected operation takes a request without a token too (a tokenless server): the
/// document-wide requirement says so, and no protected operation overrides it, since a
/// per-operation requirement makes openapi-python-client demand a token for every call. The
/// probes need none.
#[test]
fn security_is_optional_bearer() {
    let doc = document();
    assert_eq!(doc["security"], serde_json::json!([{}, {"bearer": []}]));
    operations(&doc, |path, method, op| {
        let probe = path.ends_with("healthz") || path.ends_with("readyz");
        if probe {
            assert_eq!(op["security"], serde_json::json!([]), "{method} {path}");
        } else {
            assert!(op.get("security").is_none(), "{method} {path}");
        }
    });
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

/// Ids are UUIDs and every parameter is as strict as the server's parser.
#[test]
fn parameters_are_constrained_as_the_server_enforces_them() {
    let doc = document();
    let mut seen = std::collections::BTreeSet::new();
    operations(&doc, |path, method, op| {
        for parameter in op["parameters"].as_array().into_iter().flatten() {
            let name = parameter["name"].as_str().unwrap();
            let schema = &parameter["schema"];
            seen.insert(name.to_string());
            match name {
                "id" | "cursor" => assert_eq!(schema["format"], "uuid", "{method} {path} {name}"),
                "limit" => {
                    assert_eq!(
                        (&schema["minimum"], &schema["maximum"]),
                        (&1.into(), &200.into())
                    )
                }
                "Last-Event-ID" | "after" => {
                    assert_eq!(schema["type"], "integer", "{method} {path} {name}");
                    assert_eq!(schema["minimum"], 0);
                    assert_eq!(schema["maximum"], i64::MAX);
                }
                "Idempotency-Key" => {
                    assert_eq!(schema["minLength"], 1);
                    assert_eq!(schema["maxLength"], 255);
                    assert_eq!(schema["pattern"], "^[!-~]+$");
                }
                "label" => {
                    assert_eq!(schema["type"], "array");
                    assert_eq!(schema["maxItems"], 16, "PICULET_MAX_LABEL_FILTERS' default");
                    assert!(schema["items"]["pattern"].is_string());
                    assert_eq!(parameter["explode"], true);
                }
                "status" => {
                    assert_eq!(schema["type"], "array");
                    assert_eq!(schema["items"]["enum"].as_array().unwrap().len(), 7);
                }
                other => panic!("{method} {path}: parameter {other} is not checked here"),
            }
        }
    });
    assert_eq!(seen.len(), 8, "{seen:?}");
}

/// Event streams are strings to a generated client, with every event listed with the schema of
/// its data, and that schema in the document.
#[test]
fn event_streams_list_their_events() {
    let doc = document();
    let mut streams = 0;
    operations(&doc, |path, _, op| {
        let Some(sse) = op["responses"]["200"]["content"].get("text/event-stream") else {
            return;
        };
        streams += 1;
        assert_eq!(sse["schema"]["type"], "string", "{path}");
        let events = sse["x-sse-events"].as_object().unwrap();
        let expected: &[&str] = if path.ends_with("/logs") {
            &["end", "message"]
        } else {
            &["end", "status"]
        };
        let mut names: Vec<&str> = events.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(names, expected, "{path}");
        for (name, event) in events {
            let reference = event["data"]["$ref"].as_str().unwrap();
            let schema = reference.strip_prefix("#/components/schemas/").unwrap();
            assert!(
                doc["components"]["schemas"][schema].is_object(),
                "{path} {name}: {schema} is in the document"
            );
        }
    });
    assert_eq!(streams, 2);
}

/// YAML bodies are text a client sends as it is; a submission needs its pipeline.
#[test]
fn bodies_are_in_forms_generators_accept() {
    let doc = document();
    operations(&doc, |path, method, op| {
        let Some(yaml) = op["requestBody"]["content"].get("application/yaml") else {
            return;
        };
        assert_eq!(yaml["schema"]["type"], "string", "{method} {path}");
        assert_eq!(yaml["schema"]["format"], "binary", "{method} {path}");
        assert_eq!(yaml["schema"]["contentMediaType"], "application/yaml");
    });
    let submission = &doc["components"]["schemas"]["Submission"];
    assert_eq!(
        submission["else"]["required"],
        serde_json::json!(["configs"])
    );
    assert_eq!(
        submission["if"]["required"],
        serde_json::json!(["pipeline"])
    );
    for name in ["ConfigFile", "SecretValue"] {
        let required = doc["components"]["schemas"][name]["required"]
            .as_array()
            .unwrap();
        assert_eq!(required.len(), 2, "{name}");
    }
    // Lint reports the rules' breaches instead of refusing them.
    let lint = &doc["components"]["schemas"]["LintSubmission"];
    assert!(lint.get("if").is_none() && lint["properties"]["namespace"].get("pattern").is_none());
}
