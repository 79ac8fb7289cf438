//! The REST API over real HTTP, against Postgres and SQLite from the same test code. The
//! engine does not run here, so that pipelines stay as submitted; `tests/it/engine.rs` runs them.

use crate::common;

use common::{Db, TOKEN, TestApp, expect_problem};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, LOCATION};
use serde_json::{Value, json};

const PIPELINE: &str = "\
services:
  - name: database
    image: postgres:16
steps:
  - name: build
    image: golang:1.22
    commands:
      - go build ./...
  - name: test
    image: golang:1.22
    commands: [go test ./...]
  - name: deploy
    image: alpine
    commands: [./deploy.sh]
    when:
      branch: release/*
";

on_both_databases!(
    submit_yaml_then_read_it_back,
    submit_json_with_matrix_and_two_configs,
    submit_already_parsed_pipeline,
    list_filters_and_pages,
    cancel_is_idempotent,
    idempotency_key_returns_the_first_pipeline,
    bad_input_is_refused_and_stores_nothing,
    secret_values_are_never_shown_or_stored_in_plaintext,
    a_secret_written_as_a_key_is_never_shown,
    lint_reports_errors_and_warnings,
    probes_and_documents_are_open,
    every_response_carries_a_request_id,
    json_answers_end_with_a_newline,
    without_tokens_only_loopback_names_are_answered,
    an_exactly_full_last_page_has_no_next_cursor,
    errors_name_the_field_and_the_form,
    the_documents_examples_are_accepted,
);

async fn submit_yaml_then_read_it_back(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let response = app.submit_yaml(PIPELINE).await;
    assert_eq!(response.status(), 201);
    let location = response.headers()[LOCATION].to_str().unwrap().to_string();
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    assert_eq!(location, format!("/api/v1/pipelines/{id}"));
    assert_eq!(created["status"], "queued");
    assert_eq!(created["name"], "pipeline");

    let fetched: Value = app
        .get(&location)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, created, "GET answers what POST created");
    // One workflow, services first and then the steps in order, all queued with ids and no
    // start or exit code yet; a `when.branch` without CI_COMMIT_BRANCH is met, and says so.
    insta::assert_json_snapshot!("submitted_pipeline", fetched, {
        ".id" => common::uuid_redaction("[pipeline id]"),
        ".created_at" => common::time_redaction(),
        ".workflows[].id" => common::uuid_redaction("[workflow id]"),
        ".workflows[].steps[].id" => common::uuid_redaction("[step id]"),
    });
}

async fn submit_json_with_matrix_and_two_configs(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let build = "\
matrix:
  GO: ['1.21', '1.22']
steps:
  - name: test
    image: golang:${GO}
    commands: [go test ./...]
";
    let deploy = "\
depends_on: [build]
steps:
  - name: push
    image: alpine
    commands:
      - echo push ${CI_COMMIT_BRANCH}
  - name: release
    image: alpine
    commands: [./release.sh]
    when:
      branch: release/*
";
    let response = app
        .submit_json(&json!({
            "name": "acme/api #42",
            "configs": [{"name": "build", "content": build}, {"name": "deploy", "content": deploy}],
            "variables": {"CI_COMMIT_BRANCH": "main", "CI_PIPELINE_EVENT": "push"},
            "labels": {"project": "acme/api"},
            "timeout": "1h"
        }))
        .await;
    assert_eq!(response.status(), 201);
    let p: Value = response.json().await.unwrap();
    // The name and labels as given; one workflow per matrix entry, then the deploy; a step
    // whose `when` does not match the variables is listed as skipped, saying why.
    insta::assert_json_snapshot!("matrix_pipeline", p, {
        ".id" => common::uuid_redaction("[pipeline id]"),
        ".created_at" => common::time_redaction(),
        ".workflows[].id" => common::uuid_redaction("[workflow id]"),
        ".workflows[].steps[].id" => common::uuid_redaction("[step id]"),
    });
}

async fn submit_already_parsed_pipeline(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let response = app
        .submit_json(&json!({
            "pipeline": {"steps": [{"name": "hello", "image": "alpine", "commands": ["echo hi"]}]}
        }))
        .await;
    assert_eq!(response.status(), 201);
    let p: Value = response.json().await.unwrap();
    assert_eq!(p["workflows"][0]["steps"][0]["name"], "hello");
}

async fn list_filters_and_pages(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let mut ids = Vec::new();
    for (i, team) in ["red", "blue", "red"].iter().enumerate() {
        let p: Value = app
            .submit_json(&json!({
                "name": format!("run {i}"),
                "configs": [{"name": "ci", "content": "steps:\n  - name: a\n    image: alpine\n    commands: [true]\n"}],
                "labels": {"team": team}
            }))
            .await
            .json()
            .await
            .unwrap();
        ids.push(p["id"].as_str().unwrap().to_string());
    }
    let list = |query: &'static str| {
        let request = app.get(&format!("/api/v1/pipelines{query}"));
        async move {
            let page: Value = request.send().await.unwrap().json().await.unwrap();
            let names: Vec<String> = page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["name"].as_str().unwrap().to_string())
                .collect();
            (names, page["next_cursor"].clone())
        }
    };
    assert_eq!(
        list("").await.0,
        ["run 2", "run 1", "run 0"],
        "newest first"
    );
    assert_eq!(list("?label=team=red").await.0, ["run 2", "run 0"]);
    assert_eq!(
        list("?label=team=red&label=team=blue").await.0,
        Vec::<String>::new()
    );
    assert_eq!(list("?status=queued").await.0.len(), 3);
    assert_eq!(list("?status=running,success").await.0.len(), 0);

    let (first, cursor) = list("?limit=2").await;
    assert_eq!(first, ["run 2", "run 1"]);
    assert_eq!(cursor, json!(ids[1]));
    let page: Value = app
        .get(&format!("/api/v1/pipelines?limit=2&cursor={}", ids[1]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"][0]["name"], "run 0");
    assert_eq!(page["next_cursor"], Value::Null, "last page");

    app.post(&format!("/api/v1/pipelines/{}/cancel", ids[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(list("?status=canceled").await.0, ["run 0"]);

    for bad in [
        "?status=done",
        "?label=team",
        "?limit=0",
        "?cursor=abc",
        "?sort=name",
    ] {
        expect_problem(
            app.get(&format!("/api/v1/pipelines{bad}"))
                .send()
                .await
                .unwrap(),
            400,
            "invalid-query",
        )
        .await;
    }
}

async fn cancel_is_idempotent(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let p: Value = app.submit_yaml(PIPELINE).await.json().await.unwrap();
    let cancel = format!("/api/v1/pipelines/{}/cancel", p["id"].as_str().unwrap());
    let first = app.post(&cancel).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    // The pipeline, its workflow and every step canceled, the pipeline with its end time.
    insta::assert_json_snapshot!("canceled_pipeline", first, {
        ".id" => common::uuid_redaction("[pipeline id]"),
        ".created_at" => common::time_redaction(),
        ".finished_at" => common::time_redaction(),
        ".workflows[].id" => common::uuid_redaction("[workflow id]"),
        ".workflows[].finished_at" => common::time_redaction(),
        ".workflows[].steps[].id" => common::uuid_redaction("[step id]"),
        ".workflows[].steps[].finished_at" => common::time_redaction(),
    });

    let again = app.post(&cancel).send().await.unwrap();
    assert_eq!(
        again.status(),
        200,
        "canceling a finished pipeline answers 200"
    );
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first, "and changes nothing");

    let unknown = "/api/v1/pipelines/0193a5c4-6a5e-7cc0-a7e1-3f1b2f7d9e10/cancel";
    expect_problem(app.post(unknown).send().await.unwrap(), 404, "not-found").await;
}

async fn idempotency_key_returns_the_first_pipeline(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let send = |key: &'static str, body: &'static str| {
        app.post("/api/v1/pipelines")
            .header("Idempotency-Key", key)
            .header(CONTENT_TYPE, "application/yaml")
            .body(body)
            .send()
    };
    let first = send("key-1", PIPELINE).await.unwrap();
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();

    let retried = send("key-1", PIPELINE).await.unwrap();
    assert_eq!(retried.status(), 201);
    assert_eq!(retried.headers()["idempotent-replayed"], "true");
    assert_eq!(
        retried.headers()[LOCATION].to_str().unwrap(),
        format!("/api/v1/pipelines/{}", first["id"].as_str().unwrap())
    );
    let retried: Value = retried.json().await.unwrap();
    assert_eq!(retried["id"], first["id"]);

    let other = "steps:\n  - name: x\n    image: alpine\n    commands: [true]\n";
    let reused = send("key-1", other).await.unwrap();
    expect_problem(reused, 422, "idempotency-key-reused").await;
    assert_eq!(app.pipeline_count().await, 1, "one pipeline for one key");

    let second = send("key-2", PIPELINE).await.unwrap();
    assert_eq!(second.status(), 201);
    assert_eq!(app.pipeline_count().await, 2);
}

async fn bad_input_is_refused_and_stores_nothing(db: Db) {
    let app = TestApp::spawn_api_with(
        db,
        piculet::config::Settings {
            max_body_size: Some("2KiB".into()),
            ..Default::default()
        },
    )
    .await;

    let malformed_json = app
        .post("/api/v1/pipelines")
        .header(CONTENT_TYPE, "application/json")
        .body("{\"configs\": [")
        .send()
        .await
        .unwrap();
    expect_problem(malformed_json, 400, "malformed-body").await;

    let wrong_field = app
        .submit_json(&json!({"configs": [], "pipelien": {}}))
        .await;
    let body = expect_problem(wrong_field, 422, "validation-failed").await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("unknown field `pipelien`"),
        "{body:#}"
    );

    let malformed_yaml = app.submit_yaml("steps:\n  - name: [unclosed\n").await;
    let body = expect_problem(malformed_yaml, 422, "validation-failed").await;
    let error = &body["errors"][0];
    assert!(
        error["line"].as_u64().is_some(),
        "a YAML error has its line: {body:#}"
    );
    assert!(error["column"].as_u64().is_some());

    let wrong_type = app
        .post("/api/v1/pipelines")
        .header(CONTENT_TYPE, "text/plain")
        .body(PIPELINE)
        .send()
        .await
        .unwrap();
    expect_problem(wrong_type, 415, "unsupported-media-type").await;
    let no_type = app
        .post("/api/v1/pipelines")
        .body(PIPELINE)
        .send()
        .await
        .unwrap();
    expect_problem(no_type, 415, "unsupported-media-type").await;

    let huge = format!("{PIPELINE}# {}\n", "x".repeat(4096));
    expect_problem(app.submit_yaml(&huge).await, 413, "payload-too-large").await;

    let unknown_key = app
        .submit_yaml("steps:\n  - name: build\n    image: alpine\n    comands: [make]\n")
        .await;
    let body = expect_problem(unknown_key, 422, "validation-failed").await;
    let errors = body["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e["pointer"] == "/steps/0/comands"
            && e["line"] == 4
            && e["column"] == 5
            && e["message"]
                .as_str()
                .unwrap()
                .contains("did you mean \"commands\"")),
        "{body:#}"
    );

    let cycle = "\
steps:
  - name: a
    image: alpine
    commands: [true]
    depends_on: [b]
  - name: b
    image: alpine
    commands: [true]
    depends_on: [a]
";
    let body = expect_problem(app.submit_yaml(cycle).await, 422, "validation-failed").await;
    assert!(
        body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["message"].as_str().unwrap().contains("cycle")),
        "{body:#}"
    );

    let missing_secret = app
        .submit_yaml(
            "steps:\n  - name: a\n    image: alpine\n    commands: [true]\n    environment:\n      TOKEN:\n        from_secret: token\n",
        )
        .await;
    expect_problem(missing_secret, 422, "validation-failed").await;

    let bad_timeout = app
        .submit_json(&json!({"pipeline": {"steps": [{"name": "a", "image": "alpine", "commands": ["true"]}]}, "timeout": "soon"}))
        .await;
    let body = expect_problem(bad_timeout, 422, "validation-failed").await;
    assert_eq!(body["errors"][0]["pointer"], "/timeout");

    let bad_key = app
        .post("/api/v1/pipelines")
        .header("Idempotency-Key", "")
        .header(CONTENT_TYPE, "application/yaml")
        .body(PIPELINE)
        .send()
        .await
        .unwrap();
    expect_problem(bad_key, 400, "invalid-header").await;

    let unknown_id = app
        .get("/api/v1/pipelines/0193a5c4-6a5e-7cc0-a7e1-3f1b2f7d9e10")
        .send()
        .await
        .unwrap();
    expect_problem(unknown_id, 404, "not-found").await;
    let malformed_id = app.get("/api/v1/pipelines/42").send().await.unwrap();
    let body = expect_problem(malformed_id, 400, "invalid-id").await;
    assert!(body["detail"].as_str().unwrap().contains("UUID"));

    let no_token = app
        .client
        .get(app.url("/api/v1/pipelines"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        no_token.headers()["www-authenticate"],
        "Bearer realm=\"piculet\""
    );
    expect_problem(no_token, 401, "unauthorized").await;
    let wrong_token = app
        .client
        .post(app.url("/api/v1/pipelines"))
        .header(AUTHORIZATION, "Bearer not-the-token-at-all")
        .header(CONTENT_TYPE, "application/yaml")
        .body(PIPELINE)
        .send()
        .await
        .unwrap();
    expect_problem(wrong_token, 401, "unauthorized").await;

    let no_route = app.get("/api/v1/nothing-here").send().await.unwrap();
    expect_problem(no_route, 404, "not-found").await;
    let wrong_method = app
        .client
        .delete(app.url("/api/v1/pipelines"))
        .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    expect_problem(wrong_method, 405, "method-not-allowed").await;

    assert_eq!(
        app.pipeline_count().await,
        0,
        "a refused submission stores nothing"
    );
}

async fn secret_values_are_never_shown_or_stored_in_plaintext(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let secret = "hunter2-very-secret-value";
    let registry_password = "registry-pass-0987";
    let response = app
        .submit_json(&json!({
            "configs": [{"name": "ci", "content": "steps:\n  - name: a\n    image: alpine\n    commands: [echo $TOKEN]\n    environment:\n      TOKEN:\n        from_secret: token\n"}],
            "secrets": [{"name": "token", "value": secret}],
            "registries": [{"address": "registry.example.com", "username": "ci", "password": registry_password}]
        }))
        .await;
    assert_eq!(response.status(), 201);
    let text = response.text().await.unwrap();
    assert!(
        !text.contains(secret) && !text.contains(registry_password),
        "{text}"
    );
    let id = serde_json::from_str::<Value>(&text).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let fetched = app.text(&format!("/api/v1/pipelines/{id}")).await;
    assert!(!fetched.contains(secret));

    // Read every stored column straight from the database.
    let dump: Vec<String> = match db {
        Db::Postgres => {
            use sqlx::Connection as _;
            let mut conn = sqlx::PgConnection::connect(&app.database_url)
                .await
                .unwrap();
            sqlx::query_scalar(
                "SELECT row_to_json(t)::text FROM (SELECT * FROM pipelines) t \
                 UNION ALL SELECT row_to_json(w)::text FROM workflows w \
                 UNION ALL SELECT row_to_json(e)::text FROM events e",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap()
        }
        Db::Sqlite => {
            // The whole file and its write-ahead log, byte for byte.
            let mut bytes = Vec::new();
            for name in ["piculet.db", "piculet.db-wal"] {
                if let Ok(b) = std::fs::read(app.data_dir.join(name)) {
                    bytes.extend(b);
                }
            }
            vec![String::from_utf8_lossy(&bytes).into_owned()]
        }
    };
    let all = dump.join("\n");
    assert!(
        all.contains("registry.example.com"),
        "the dump holds the submission"
    );
    assert!(!all.contains(secret), "secret value stored in plaintext");
    assert!(
        !all.contains(registry_password),
        "registry password stored in plaintext"
    );
}

/// A secret value written where a key belongs (`{"name": "s", "value": "x", "<secret>": 1}`):
/// the unknown-field answer points at the secret and lists what it takes, never the key, on
/// submission and lint alike.
async fn a_secret_written_as_a_key_is_never_shown(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let key = "987654321012345";
    let config = json!([{"name": "ci", "content": "steps:\n  - name: a\n    image: alpine\n    commands: [ls]\n"}]);
    for (body, pointer, takes) in [
        (
            json!({"configs": config, "secrets": [{"name": "s", "value": "x", key: 1}]}),
            "/secrets/0",
            "a secret takes only `name` and `value`",
        ),
        (
            json!({"configs": config, "registries": [
                {"address": "r.example.com", "username": "u", "password": "p"},
                {"address": "r.example.com", "username": "u", "password": "p", key: {"k": 1}}
            ]}),
            "/registries/1",
            "a registry takes only `address`, `username` and `password`",
        ),
    ] {
        for path in ["/api/v1/pipelines", "/api/v1/lint"] {
            let response = app.post(path).json(&body).send().await.unwrap();
            let answer = expect_problem(response, 422, "validation-failed").await;
            let text = answer.to_string();
            assert!(!text.contains(key), "{path}: the key is shown: {text}");
            let errors = answer["errors"].as_array().unwrap();
            assert_eq!(errors.len(), 1, "{path}: {answer:#}");
            assert_eq!(errors[0]["pointer"], pointer, "{path}: {answer:#}");
            assert_eq!(
                errors[0]["message"],
                format!("unknown field; {takes}"),
                "{path}: {answer:#}"
            );
        }
    }
    assert_eq!(app.pipeline_count().await, 0, "nothing is stored");
}

async fn lint_reports_errors_and_warnings(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let valid: Value = app
        .post("/api/v1/lint")
        .header(CONTENT_TYPE, "application/yaml")
        .body(PIPELINE)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(valid["valid"], true, "{valid:#}");
    assert_eq!(valid["errors"], json!([]));

    let invalid = app
        .post("/api/v1/lint")
        .header(CONTENT_TYPE, "application/yaml")
        .body("concurrency: {group: deploy}\nsteps:\n  - name: a\n    comands: [x]\n    shm_size: 64m\n")
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 200);
    let invalid: Value = invalid.json().await.unwrap();
    // Every error at once (a group without a limit among them), and a warning for the
    // Docker-only key.
    insta::assert_json_snapshot!("lint_errors_and_warnings", invalid);
    assert_eq!(app.pipeline_count().await, 0, "lint stores nothing");
}

async fn probes_and_documents_are_open(db: Db) {
    let app = TestApp::spawn_api(db).await;
    for path in [
        "/api/v1/healthz",
        "/api/v1/readyz",
        "/api/v1/openapi.json",
        "/api/v1/docs/",
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path} without a token");
    }
    let ready: Value = app
        .client
        .get(app.url("/api/v1/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
    let doc: Value = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(doc["paths"]["/api/v1/pipelines"]["post"].is_object());
    let page = app
        .client
        .get(app.url("/api/v1/docs/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("swagger-ui"),
        "the API page is served locally"
    );
    assert!(
        !page.contains("https://"),
        "and loads nothing from the internet"
    );
}

async fn every_response_carries_a_request_id(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let response = app.get("/api/v1/pipelines").send().await.unwrap();
    let generated = response.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    let response = app
        .get("/api/v1/pipelines/nope")
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["x-request-id"],
        "trace-me-42",
        "errors too, and a given id is kept"
    );
}

/// `curl` leaves the next prompt on a line of its own: every JSON answer, problems and the API
/// document included, ends with one newline, counted in its length. (Plain-text logs stay the
/// step's output byte for byte: tests/it/engine.rs compares them whole.)
async fn json_answers_end_with_a_newline(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let created = app.submit_yaml(PIPELINE).await;
    let id = created.headers()[LOCATION].to_str().unwrap().to_string();
    let answers = vec![
        created,
        app.get(&id).send().await.unwrap(),
        app.get("/api/v1/pipelines?limit=1").send().await.unwrap(),
        app.get("/api/v1/pipelines/nope").send().await.unwrap(),
        app.get("/api/v1/healthz").send().await.unwrap(),
        app.get("/api/v1/openapi.json").send().await.unwrap(),
        app.post("/api/v1/lint")
            .header(CONTENT_TYPE, "application/yaml")
            .body(PIPELINE)
            .send()
            .await
            .unwrap(),
        app.post("/api/v1/render")
            .header(CONTENT_TYPE, "application/yaml")
            .body(PIPELINE)
            .send()
            .await
            .unwrap(),
        app.post(&format!("{id}/cancel")).send().await.unwrap(),
    ];
    for response in answers {
        let url = response.url().clone();
        let status = response.status();
        let kind = response.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        assert!(kind.contains("json"), "{url}: {kind}");
        let length: usize = response.headers()[reqwest::header::CONTENT_LENGTH]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let body = response.bytes().await.unwrap();
        assert_eq!(
            body.len(),
            length,
            "{url}: Content-Length counts the newline"
        );
        assert!(
            body.ends_with(b"}\n"),
            "{url} ({status}): {:?}",
            body.last()
        );
        let _: Value = serde_json::from_slice(&body).unwrap();
    }
}

/// DNS rebinding: a page whose name now points at 127.0.0.1 reaches a tokenless server, but
/// its browser still sends that name as `Host`.
async fn without_tokens_only_loopback_names_are_answered(db: Db) {
    let app = TestApp::spawn_api_with(
        db,
        piculet::config::Settings {
            api_tokens: Some(String::new()),
            ..Default::default()
        },
    )
    .await;
    // What the test client sends everywhere else: Host 127.0.0.1:port.
    let response = app.submit_yaml(PIPELINE).await;
    assert_eq!(response.status(), 201);
    for host in ["localhost:8080", "ci.localhost", "[::1]:1"] {
        let response = app
            .client
            .get(app.url("/api/v1/pipelines"))
            .header(reqwest::header::HOST, host)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "Host {host}");
    }

    let refused = app
        .client
        .post(app.url("/api/v1/pipelines"))
        .header(reqwest::header::HOST, "rebound.example:8080")
        .header(CONTENT_TYPE, "application/yaml")
        .body(PIPELINE)
        .send()
        .await
        .unwrap();
    let problem = expect_problem(refused, 421, "misdirected-request").await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("\"rebound.example\""), "{detail}");
    assert!(detail.contains("PICULET_ALLOWED_HOSTS"), "{detail}");
    for path in [
        "/api/v1/pipelines",
        "/api/v1/openapi.json",
        "/api/v1/nowhere",
    ] {
        let response = app
            .client
            .get(app.url(path))
            .header(reqwest::header::HOST, "rebound.example")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 421, "{path}");
    }
    // The probes answer any name: Kubernetes sends the pod's IP.
    let probe = app
        .client
        .get(app.url("/api/v1/healthz"))
        .header(reqwest::header::HOST, "10.1.2.3:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 200);
    assert_eq!(
        app.pipeline_count().await,
        1,
        "the refused submission stored nothing"
    );
}

on_both_databases!(
    render_shows_the_objects_and_applies_the_policy,
    render_refuses_what_the_kubernetes_api_server_would_refuse,
);

/// `POST /render` holds every object to the API server's validation whatever the backend;
/// lint does so only with the Kubernetes backend (a local run has no pods).
async fn render_refuses_what_the_kubernetes_api_server_would_refuse(db: Db) {
    let app = TestApp::spawn_api_with(
        db,
        piculet::config::Settings {
            kubernetes: piculet::k8s::KubernetesSettings {
                allow_from_step: Some("annotations".into()),
                annotations_overwrite_allowed: Some(".*".into()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    // Five annotations of 60 KiB: more than the 256 KiB an object may carry.
    let annotations: String = (0..5)
        .map(|i| format!("          example.com/big-{i}: \"${{BIG}}\"\n"))
        .collect();
    let yaml = format!(
        "steps:\n  - name: build\n    image: alpine\n    commands: [make]\n    environment:\n      \"A=B\": x\n    backend_options:\n      kubernetes:\n        annotations:\n{annotations}"
    );
    let body = json!({
        "configs": [{"name": "build", "content": yaml}],
        "variables": {"BIG": "x".repeat(60 * 1024), "MY VAR": "spaces are fine since v1.34"},
    });
    let refused = app.post("/api/v1/render").json(&body).send().await.unwrap();
    let problem = expect_problem(refused, 422, "kubernetes-invalid").await;
    let got: Vec<(&str, &str, &str)> = problem["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["field"].as_str().unwrap(),
                v["config"].as_str().unwrap_or(""),
                v["pointer"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "metadata.annotations",
                "build",
                "/steps/0/backend_options/kubernetes/annotations"
            ),
            (
                "spec.containers[0].env[0].name",
                "build",
                "/steps/0/environment/A=B"
            )
        ],
        "{problem:#}"
    );
    let lint = app.post("/api/v1/lint").json(&body).send().await.unwrap();
    let lint: Value = lint.json().await.unwrap();
    assert_eq!(
        lint["valid"], true,
        "a local backend runs no pods: {lint:#}"
    );
    assert_eq!(app.pipeline_count().await, 0);

    // The dry run shows a pod with `workspaceVolume: false` without the workspace.
    let shown = app
        .post("/api/v1/render")
        .header(reqwest::header::CONTENT_TYPE, "application/yaml")
        .body("steps:\n  - name: notify\n    image: curlimages/curl\n    commands: [curl -fsS https://example.com]\n    backend_options: {kubernetes: {workspaceVolume: false}}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(shown.status(), 200);
    let shown: Value = shown.json().await.unwrap();
    let pod = shown["workflows"][0]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "Pod")
        .unwrap()
        .clone();
    assert!(pod["spec"]["volumes"].is_null(), "{pod:#}");
    assert!(
        pod["spec"]["containers"][0]["volumeMounts"].is_null(),
        "{pod:#}"
    );
}

async fn render_shows_the_objects_and_applies_the_policy(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let response = app
        .post("/api/v1/render")
        .json(&json!({
            "configs": [{"name": "ci", "content": PIPELINE.replace("commands: [go test ./...]", "commands: [go test ./...]\n    environment:\n      TOKEN:\n        from_secret: token")}],
            "secrets": [{"name": "token", "value": "render-secret-value"}],
            "registries": [{"address": "registry.example.com", "username": "ci", "password": "render-registry-password"}]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(
        !text.contains("render-secret-value"),
        "secret values are redacted"
    );
    assert!(!text.contains("render-registry-password"));
    let rendered: Value = serde_json::from_str(&text).unwrap();
    let objects = rendered["workflows"][0]["objects"].as_array().unwrap();
    let kinds: Vec<&str> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "PersistentVolumeClaim",
            "Secret",
            "Secret",
            "Service",
            "Pod",
            "Pod",
            "Pod",
            "Pod"
        ],
        "workspace, secrets, service, then the service's pod and one per step"
    );
    for pod in &objects[4..] {
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(
            pod["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "piculet"
        );
        let container = &spec["containers"][0];
        assert_eq!(
            container["securityContext"]["capabilities"]["drop"],
            json!(["NET_RAW"])
        );
    }
    assert_eq!(app.pipeline_count().await, 0, "a dry run stores nothing");

    let refused = app
        .post("/api/v1/render")
        .header(reqwest::header::CONTENT_TYPE, "application/yaml")
        .body("steps:\n  - name: build\n    image: alpine\n    commands: [make]\n    privileged: true\n")
        .send()
        .await
        .unwrap();
    let body = expect_problem(refused, 422, "policy-violation").await;
    let violation = &body["violations"][0];
    assert_eq!(violation["step"], "build");
    assert_eq!(violation["field"], "privileged");
    assert_eq!(violation["value"], "true");
    assert!(
        violation["rule"]
            .as_str()
            .unwrap()
            .contains("PICULET_K8S_PRIVILEGED_IMAGES"),
        "{body:#}"
    );
}

on_both_databases!(
    label_filters_are_bounded,
    several_labels_filter_and_page_like_one,
    blocked_requests_answer_503_in_time_and_free_their_connection,
);

async fn label_filters_are_bounded(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let labels = |n: usize| vec!["label=team=red"; n].join("&");
    let at_limit = app
        .get(&format!("/api/v1/pipelines?{}", labels(16)))
        .send()
        .await
        .unwrap();
    assert_eq!(at_limit.status(), 200, "16 filters, the default limit");
    let over = app
        .get(&format!("/api/v1/pipelines?{}", labels(17)))
        .send()
        .await
        .unwrap();
    let body = expect_problem(over, 400, "invalid-query").await;
    assert_eq!(
        body["detail"],
        "17 label filters are more than the limit of 16 (PICULET_MAX_LABEL_FILTERS); filter on \
         fewer labels"
    );

    // The limit is a setting.
    let app = TestApp::spawn_api_with(
        db,
        piculet::config::Settings {
            max_label_filters: Some("2".into()),
            ..Default::default()
        },
    )
    .await;
    let status = |query: String| {
        let request = app.get(&format!("/api/v1/pipelines?{query}"));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(labels(2)).await, 200);
    assert_eq!(status(labels(3)).await, 400);

    // Each filter is bounded too, and NUL is refused rather than sent to the database.
    let long_value = format!("label=team={}", "x".repeat(1025));
    let nul = "label=team=re%00d".to_string();
    for query in [long_value, nul] {
        let response = app
            .get(&format!("/api/v1/pipelines?{query}"))
            .send()
            .await
            .unwrap();
        expect_problem(response, 400, "invalid-query").await;
    }
}

async fn several_labels_filter_and_page_like_one(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let mut ids = Vec::new();
    for (i, (team, env)) in [
        ("red", "prod"),
        ("red", "dev"),
        ("blue", "prod"),
        ("red", "prod"),
        ("red", "prod"),
    ]
    .iter()
    .enumerate()
    {
        let p: Value = app
            .submit_json(&json!({
                "name": format!("run {i}"),
                "configs": [{"name": "ci", "content": "steps:\n  - name: a\n    image: alpine\n    commands: [true]\n"}],
                "labels": {"team": team, "env": env, "n": i.to_string()}
            }))
            .await
            .json()
            .await
            .unwrap();
        ids.push(p["id"].as_str().unwrap().to_string());
    }
    let page = |query: String| {
        let request = app.get(&format!("/api/v1/pipelines?{query}"));
        async move {
            let page: Value = request.send().await.unwrap().json().await.unwrap();
            let names: Vec<String> = page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["name"].as_str().unwrap().to_string())
                .collect();
            (names, page["next_cursor"].clone())
        }
    };
    let red_prod = ["run 4", "run 3", "run 0"];
    assert_eq!(
        page("label=team=red&label=env=prod".into()).await.0,
        red_prod
    );
    assert_eq!(
        page("label=env=prod&label=team=red".into()).await.0,
        red_prod,
        "the order of the filters does not change the answer"
    );
    assert_eq!(
        page("label=team=red&label=env=prod&label=team=red".into())
            .await
            .0,
        red_prod,
        "a filter given twice counts once"
    );
    assert_eq!(
        page("label=team=red&label=env=prod&label=n=3".into())
            .await
            .0,
        ["run 3"]
    );
    assert_eq!(
        page("label=team=red&label=env=staging".into()).await.0,
        Vec::<String>::new()
    );
    assert_eq!(
        page("label=team=red&label=nothing=here".into()).await.0,
        Vec::<String>::new()
    );

    // Pages of a filtered list follow the cursor as an unfiltered one does.
    let (first, cursor) = page("label=team=red&label=env=prod&limit=2".into()).await;
    assert_eq!(first, ["run 4", "run 3"]);
    assert_eq!(cursor, json!(ids[3]));
    let (rest, cursor) = page(format!(
        "label=team=red&label=env=prod&limit=2&cursor={}",
        ids[3]
    ))
    .await;
    assert_eq!(rest, ["run 0"]);
    assert_eq!(cursor, Value::Null, "last page");

    app.post(&format!("/api/v1/pipelines/{}/cancel", ids[3]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        page("label=team=red&label=env=prod&status=canceled".into())
            .await
            .0,
        ["run 3"]
    );
    assert_eq!(
        page("label=env=prod&status=queued".into()).await.0,
        ["run 4", "run 2", "run 0"]
    );
}

/// While the database cannot answer (a table locked on Postgres, the write lock held on
/// SQLite), a request gives up at its class's timeout with 503 and `Retry-After`, and the
/// database stops its statement then: the API's only connection serves the next request though
/// the lock is still held.
async fn blocked_requests_answer_503_in_time_and_free_their_connection(db: Db) {
    use sqlx::Connection as _;
    /// Far beyond the timeouts below: reached only if something waits forever.
    const HANG: std::time::Duration = std::time::Duration::from_secs(60);
    let app = TestApp::spawn_api_with(
        db,
        piculet::config::Settings {
            db_api_connections: Some("1".into()),
            // The write limit under the read limit: on SQLite the statement must stop at its
            // own deadline, not at the longest one the connection was opened with.
            db_read_timeout: Some("1s".into()),
            db_write_timeout: Some("300ms".into()),
            ..Default::default()
        },
    )
    .await;
    let submission = json!({
        "configs": [{"name": "ci", "content": "steps:\n  - name: a\n    image: alpine\n    commands: [true]\n"}]
    });
    // The lock is held until the end of the test, so a request that is answered at all was
    // given up at its class's timeout (the 503 and its setting below say which): the bound
    // here only turns a request that would wait forever into a failure that says so.
    let timed = |request: reqwest::RequestBuilder| async move {
        tokio::time::timeout(HANG, request.send())
            .await
            .expect("no answer: the request waits for the lock instead of timing out")
            .unwrap()
    };
    let unavailable = |response: reqwest::Response, setting: &'static str| async move {
        assert_eq!(response.headers()["retry-after"], "1");
        let body = expect_problem(response, 503, "unavailable").await;
        assert!(
            body["detail"].as_str().unwrap().contains(setting),
            "{body:#}"
        );
    };
    // A request that needs the API's connection but not what is locked.
    let unknown_step = format!("/api/v1/steps/{}/logs", uuid::Uuid::now_v7());

    let mut postgres_locker = None;
    let mut sqlite_locker = None;
    match db {
        Db::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&app.database_url)
                .await
                .unwrap();
            sqlx::raw_sql("BEGIN; LOCK TABLE pipelines IN ACCESS EXCLUSIVE MODE")
                .execute(&mut conn)
                .await
                .unwrap();
            let list = timed(app.get("/api/v1/pipelines")).await;
            unavailable(list, "PICULET_DB_READ_TIMEOUT").await;
            // The statement is stopped by the database, not only given up by piculet: the lock
            // is held until the end of the test, so a statement still running would run
            // forever. The bound only guards against that hang.
            let stopped_by = std::time::Instant::now() + HANG;
            loop {
                let running: Vec<(String,)> = sqlx::query_as(
                    "SELECT query FROM pg_stat_activity WHERE datname = current_database() \
                     AND state = 'active' AND pid <> pg_backend_pid()",
                )
                .fetch_all(&mut conn)
                .await
                .unwrap();
                if running.is_empty() {
                    break;
                }
                assert!(
                    std::time::Instant::now() < stopped_by,
                    "piculet's statement was never stopped by the database: {running:?}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            postgres_locker = Some(conn);
        }
        Db::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&app.database_url)
                .await
                .unwrap();
            sqlx::raw_sql("BEGIN IMMEDIATE")
                .execute(&mut conn)
                .await
                .unwrap();
            sqlite_locker = Some(conn);
        }
    }
    let submit = timed(app.post("/api/v1/pipelines").json(&submission)).await;
    unavailable(submit, "PICULET_DB_WRITE_TIMEOUT").await;
    // The lock is still held: the API's one connection serves this request (404, not a 503
    // after waiting its read timeout for a connection) only if the blocked statement was
    // stopped and the connection handed back.
    let free = timed(app.get(&unknown_step)).await;
    assert_eq!(free.status(), 404, "the API's one connection is free again");

    if let Some(mut conn) = postgres_locker {
        sqlx::raw_sql("COMMIT").execute(&mut conn).await.unwrap();
    }
    if let Some(mut conn) = sqlite_locker {
        sqlx::raw_sql("COMMIT").execute(&mut conn).await.unwrap();
    }
    assert_eq!(app.submit_json(&submission).await.status(), 201);
    assert_eq!(
        app.pipeline_count().await,
        1,
        "the refused submission stored nothing"
    );
}

/// A page that ends the list says so, also when it is exactly full: no cursor to an empty page.
async fn an_exactly_full_last_page_has_no_next_cursor(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let p: Value = app
            .submit_json(&json!({
                "name": format!("run {i}"),
                "configs": [{"name": "ci", "content": "steps:\n  - name: a\n    image: alpine\n    commands: [true]\n"}],
            }))
            .await
            .json()
            .await
            .unwrap();
        ids.push(p["id"].as_str().unwrap().to_string());
    }
    let page = |query: String| {
        let request = app.get(&format!("/api/v1/pipelines?{query}"));
        async move {
            let page: Value = request.send().await.unwrap().json().await.unwrap();
            (
                page["items"].as_array().unwrap().len(),
                page["next_cursor"].clone(),
            )
        }
    };
    // Newest first: ids[3], ids[2] | ids[1], ids[0].
    assert_eq!(page("limit=2".into()).await, (2, json!(ids[2])));
    assert_eq!(
        page(format!("limit=2&cursor={}", ids[2])).await,
        (2, Value::Null),
        "the second page is exactly full and the last"
    );
    assert_eq!(page("limit=4".into()).await, (4, Value::Null));
    assert_eq!(page("limit=3".into()).await, (3, json!(ids[1])));
    assert_eq!(
        page(format!("limit=3&cursor={}", ids[1])).await,
        (1, Value::Null)
    );
    // With a label filter too, which the database reads another way.
    assert_eq!(page("limit=4&label=x=y".into()).await, (0, Value::Null));
}

/// A refusal names the field by its JSON pointer, says what form it takes, and places YAML
/// errors at their line and column.
async fn errors_name_the_field_and_the_form(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let config = json!([{"name": "ci", "content": "steps:\n  - name: a\n    image: alpine\n    commands: [true]\n"}]);

    let body = expect_problem(
        app.submit_json(&json!({"configs": config, "timeout": 3600}))
            .await,
        422,
        "validation-failed",
    )
    .await;
    // The field's pointer and the form it takes, in the error and in the detail.
    insta::assert_json_snapshot!("timeout_as_a_number", body);

    let empty = app
        .post("/api/v1/pipelines")
        .header(CONTENT_TYPE, "application/json")
        .send()
        .await
        .unwrap();
    let body = expect_problem(empty, 400, "malformed-body").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("the body is empty;"),
        "{body:#}"
    );

    for yaml in ["", "\n", "# nothing yet\n\n"] {
        let body = expect_problem(app.submit_yaml(yaml).await, 422, "validation-failed").await;
        assert_eq!(
            body["errors"][0]["message"],
            "the pipeline file is empty (nothing but whitespace and comments); a pipeline needs \
             at least `steps`",
            "{yaml:?}"
        );
        assert_eq!(
            (&body["errors"][0]["line"], &body["errors"][0]["column"]),
            (&json!(1), &json!(1))
        );
    }

    let tabbed = "steps:\n  - name: a\n\timage: alpine\n    commands: [true]\n";
    let body = expect_problem(app.submit_yaml(tabbed).await, 422, "validation-failed").await;
    let error = &body["errors"][0];
    assert!(
        error["message"].as_str().unwrap().contains("tab"),
        "{body:#}"
    );
    assert_eq!(
        (&error["line"], &error["column"]),
        (&json!(3), &json!(1)),
        "{body:#}"
    );
    assert_eq!(app.pipeline_count().await, 0, "nothing refused is stored");
}

/// What the document shows is what the server takes: its YAML example and its submission
/// example are accepted when sent as they are.
async fn the_documents_examples_are_accepted(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let doc: Value = serde_json::from_str(&piculet::api::openapi::document()).unwrap();
    let content = &doc["paths"]["/api/v1/pipelines"]["post"]["requestBody"]["content"];
    let yaml = content["application/yaml"]["example"].as_str().unwrap();
    assert_eq!(app.submit_yaml(yaml).await.status(), 201);
    let submission = &doc["components"]["schemas"]["Submission"]["example"];
    assert_eq!(app.submit_json(submission).await.status(), 201);
}
