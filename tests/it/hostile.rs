//! Hostile input, end to end: each class of request an attacker or a careless script sends is
//! answered with a 4xx problem in bounded time, the server stays alive and answers its probes,
//! and nothing is stored. Runs on a tokenless loopback server (no token needed, as a stranger
//! on the host would find it) against Postgres and SQLite.

use crate::common;

use std::time::Duration;

use common::{Db, TestApp, expect_problem};
use reqwest::header::{CONTENT_TYPE, HOST};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

on_both_databases!(
    deep_and_dense_dependency_graphs,
    amplification_is_refused_before_it_is_built,
    deep_nesting_is_refused,
    clone_refs_cannot_become_options,
    label_filters_are_bounded,
    text_a_database_cannot_store,
    paths_leaving_the_workspace,
    secret_values_are_never_echoed,
    foreign_host_names_are_misdirected,
    expect_continue_over_the_limit,
    large_secrets_are_bounded_and_masked_off_the_async_threads,
    substitution_cannot_multiply_a_variable,
    a_trickled_body_is_cut_off,
);

/// Every refusal must come well within this; the slowest case took 23 s before the fix.
const BOUND: Duration = Duration::from_secs(20);

/// A server as a stranger on the host finds it: no token, loopback only.
async fn tokenless(db: Db) -> TestApp {
    TestApp::spawn_api_with(
        db,
        piculet::config::Settings {
            api_tokens: Some(String::new()),
            ..Default::default()
        },
    )
    .await
}

/// Sends, within [`BOUND`], and checks the server still answers its liveness probe at once.
async fn send(app: &TestApp, request: reqwest::RequestBuilder) -> reqwest::Response {
    let response = tokio::time::timeout(BOUND, request.send())
        .await
        .expect("answered in bounded time")
        .expect("answered at all");
    assert_alive(app).await;
    response
}

async fn assert_alive(app: &TestApp) {
    let health = tokio::time::timeout(Duration::from_secs(5), app.get("/api/v1/healthz").send())
        .await
        .expect("/healthz answers at once")
        .unwrap();
    assert_eq!(health.status(), 200);
}

async fn submit_yaml(app: &TestApp, yaml: &str) -> reqwest::Response {
    send(
        app,
        app.post("/api/v1/pipelines")
            .header(CONTENT_TYPE, "application/yaml")
            .body(yaml.to_string()),
    )
    .await
}

async fn submit_json(app: &TestApp, body: &Value) -> reqwest::Response {
    send(app, app.post("/api/v1/pipelines").json(body)).await
}

async fn lint_yaml(app: &TestApp, yaml: &str) -> Value {
    let response = send(
        app,
        app.post("/api/v1/lint")
            .header(CONTENT_TYPE, "application/yaml")
            .body(yaml.to_string()),
    )
    .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// A refused submission: the status and problem type, and `/lint` saying the same body is
/// invalid with a message containing `lint_says`.
async fn refused_yaml(app: &TestApp, yaml: &str, says: &str) -> Value {
    let body = expect_problem(submit_yaml(app, yaml).await, 422, "validation-failed").await;
    assert!(
        body.to_string().contains(says),
        "the refusal says {says:?}: {}",
        truncate(&body.to_string())
    );
    let lint = lint_yaml(app, yaml).await;
    assert_eq!(
        lint["valid"],
        false,
        "lint agrees: {}",
        truncate(&lint.to_string())
    );
    assert!(lint.to_string().contains(says), "lint says {says:?} too");
    body
}

/// Asserts that one of a problem's errors points at `pointer`.
fn assert_names(problem: &Value, pointer: &str) {
    let errors = problem["errors"].as_array().expect("a list of errors");
    assert!(
        errors.iter().any(|e| e["pointer"] == pointer),
        "{pointer} named: {problem:#}"
    );
}

fn truncate(s: &str) -> &str {
    &s[..s.floor_char_boundary(2000)]
}

fn step(name: &str, deps: &[String]) -> String {
    let deps = if deps.is_empty() {
        String::new()
    } else {
        format!("    depends_on: [{}]\n", deps.join(", "))
    };
    format!("  - name: {name}\n    image: alpine\n    commands: [true]\n{deps}")
}

async fn deep_and_dense_dependency_graphs(db: Db) {
    let app = tokenless(db).await;

    // A chain and a cycle of 4,000 steps: once enough to overflow the stack of the check.
    let long_chain = chain(4000);
    let body = refused_yaml(
        &app,
        &format!("steps:\n{long_chain}"),
        "PICULET_MAX_STEPS_PER_WORKFLOW",
    )
    .await;
    assert!(body.to_string().contains("4000"), "names the value");

    let long_cycle = cycle(4000);
    refused_yaml(
        &app,
        &format!("steps:\n{long_cycle}"),
        "PICULET_MAX_STEPS_PER_WORKFLOW",
    )
    .await;

    // Every step depending on every other: once 10.7 s, 465 MB and a 40 MB answer.
    let dense = all_to_all(300);
    let body = refused_yaml(&app, &dense, "PICULET_MAX_STEPS_PER_WORKFLOW").await;
    assert!(
        body.to_string().len() < 4096,
        "{}",
        truncate(&body.to_string())
    );

    // Within the limits, a cycle is named once, briefly.
    let small_cycle = cycle(200);
    let body = refused_yaml(&app, &format!("steps:\n{small_cycle}"), "dependency cycle").await;
    assert!(
        body.to_string().len() < 4096,
        "{}",
        truncate(&body.to_string())
    );
    assert_eq!(app.pipeline_count().await, 0);

    // With the limits raised by the administrator, the same graphs are checked in linear time:
    // a 10,000-step chain is valid, and a 300-step graph of 89,700 edges is one short error.
    let raised = TestApp::spawn_api_with(
        db,
        piculet::config::Settings {
            api_tokens: Some(String::new()),
            max_steps_per_workflow: Some("20000".into()),
            max_steps_per_pipeline: Some("20000".into()),
            max_dependencies: Some("200000".into()),
            max_events_per_pipeline: Some("100000".into()),
            ..Default::default()
        },
    )
    .await;
    let long_chain = chain(10_000);
    let lint = lint_yaml(&raised, &format!("steps:\n{long_chain}")).await;
    assert_eq!(lint["valid"], true, "{}", truncate(&lint.to_string()));
    let long_cycle = cycle(4000);
    let body = refused_yaml(
        &raised,
        &format!("steps:\n{long_cycle}"),
        "dependency cycle",
    )
    .await;
    assert!(
        body.to_string().len() < 4096,
        "{}",
        truncate(&body.to_string())
    );
    let body = refused_yaml(&raised, &all_to_all(300), "dependency cycle").await;
    assert!(
        body.to_string().len() < 4096,
        "{}",
        truncate(&body.to_string())
    );
    assert_eq!(raised.pipeline_count().await, 0);
}

/// The steps of a chain: each depends on the one before (without the `steps:` key).
fn chain(n: usize) -> String {
    (0..n)
        .map(|i| {
            let before: Vec<String> = (i > 0).then(|| format!("s{}", i - 1)).into_iter().collect();
            step(&format!("s{i}"), &before)
        })
        .collect()
}

/// The steps of a cycle: each depends on the next, the last on the first.
fn cycle(n: usize) -> String {
    (0..n)
        .map(|i| step(&format!("s{i}"), &[format!("s{}", (i + 1) % n)]))
        .collect()
}

fn all_to_all(n: usize) -> String {
    let names: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
    let steps: String = names
        .iter()
        .map(|name| {
            let others: Vec<String> = names.iter().filter(|o| *o != name).cloned().collect();
            step(name, &others)
        })
        .collect();
    format!("steps:\n{steps}")
}

async fn amplification_is_refused_before_it_is_built(db: Db) {
    let app = tokenless(db).await;

    // 14 KB: 8 matrix axes of 4 values × 200 steps once made 51,200 step rows.
    let axes: String = (0..8)
        .map(|a| format!("  AXIS{a}: [a, b, c, d]\n"))
        .collect();
    let steps: String = (0..200).map(|i| step(&format!("s{i}"), &[])).collect();
    let yaml = format!("matrix:\n{axes}steps:\n{steps}");
    let body = refused_yaml(&app, &yaml, "PICULET_MAX_WORKFLOWS_PER_PIPELINE").await;
    assert!(
        body.to_string().contains("65536"),
        "names the value: {}",
        truncate(&body.to_string())
    );

    // Many configs, each within its own limits, together over the pipeline's.
    let config: String = format!(
        "steps:\n{}",
        (0..100)
            .map(|i| step(&format!("s{i}"), &[]))
            .collect::<String>()
    );
    let configs: Vec<Value> = (0..40)
        .map(|i| json!({"name": format!("c{i}"), "content": config}))
        .collect();
    let body = expect_problem(
        submit_json(&app, &json!({"configs": configs})).await,
        422,
        "validation-failed",
    )
    .await;
    assert!(
        body.to_string().contains("PICULET_MAX_STEPS_PER_PIPELINE"),
        "{}",
        truncate(&body.to_string())
    );

    // Labels per submission.
    let labels: serde_json::Map<String, Value> =
        (0..1000).map(|i| (format!("k{i}"), json!("v"))).collect();
    let body = expect_problem(
        submit_json(&app, &json!({"configs": [{"name": "a", "content": "steps:\n".to_string() + &step("a", &[])}], "labels": labels})).await,
        422,
        "validation-failed",
    )
    .await;
    assert!(
        body.to_string().contains("PICULET_MAX_LABELS"),
        "{}",
        truncate(&body.to_string())
    );

    // One very long string.
    let long = format!(
        "steps:\n  - name: a\n    image: alpine\n    commands: [\"{}\"]\n",
        "x".repeat(300_000)
    );
    refused_yaml(&app, &long, "PICULET_MAX_STRING_LENGTH").await;

    assert_eq!(app.pipeline_count().await, 0);
}

async fn deep_nesting_is_refused(db: Db) {
    let app = tokenless(db).await;
    let depth = 100_000;
    let yaml = format!(
        "steps:\n  - name: a\n    image: alpine\n    commands: [true]\n    settings:\n      x: {}{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let response = submit_yaml(&app, &yaml).await;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(status, 422, "{}", truncate(&text));
    assert!(
        text.contains("PICULET_MAX_NESTING_DEPTH"),
        "{}",
        truncate(&text)
    );

    // As an already-parsed pipeline object just under serde_json's own limit.
    let mut nested = json!("leaf");
    for _ in 0..100 {
        nested = json!({"x": nested});
    }
    let body = json!({"pipeline": {"steps": [{"name": "a", "image": "alpine", "settings": {"deep": nested}}]}});
    let body = expect_problem(submit_json(&app, &body).await, 422, "validation-failed").await;
    assert!(
        body.to_string().contains("PICULET_MAX_NESTING_DEPTH"),
        "{}",
        truncate(&body.to_string())
    );

    // A billion laughs: aliases of aliases.
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (prev, next) in ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
    {
        bomb.push_str(&format!("{next}: &{next} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
    }
    bomb.push_str("steps:\n  - name: a\n    image: alpine\n    commands: [true]\n    settings:\n      x: *i\n");
    let response = submit_yaml(&app, &bomb).await;
    assert_eq!(response.status(), 422);

    assert_eq!(app.pipeline_count().await, 0);
}

async fn clone_refs_cannot_become_options(db: Db) {
    let app = tokenless(db).await;
    let pipeline = format!("steps:\n{}", step("a", &[]));
    for (field, repo) in [
        (
            "/repo/ref",
            json!({"clone_url": "https://example.com/a.git", "ref": "--upload-pack=touch /tmp/x"}),
        ),
        (
            "/repo/sha",
            json!({"clone_url": "https://example.com/a.git", "sha": "--upload-pack=touch /tmp/x"}),
        ),
        (
            "/repo/sha",
            json!({"clone_url": "https://example.com/a.git", "sha": "abc123"}),
        ),
        (
            "/repo/clone_url",
            json!({"clone_url": "--upload-pack=touch /tmp/x"}),
        ),
        (
            "/repo/clone_url",
            json!({"clone_url": "ext::sh -c touch% /tmp/x"}),
        ),
        ("/repo/clone_url", json!({"clone_url": "file:///etc"})),
    ] {
        let body = json!({"configs": [{"name": "a", "content": pipeline}], "repo": repo});
        let problem =
            expect_problem(submit_json(&app, &body).await, 422, "validation-failed").await;
        assert_names(&problem, field);
    }
    assert_eq!(app.pipeline_count().await, 0);
}

async fn label_filters_are_bounded(db: Db) {
    let app = tokenless(db).await;
    let query: String = (0..300).map(|i| format!("label=k{i}%3Dv&")).collect();
    let response = send(&app, app.get(&format!("/api/v1/pipelines?{query}"))).await;
    let body = expect_problem(response, 400, "invalid-query").await;
    assert!(
        body.to_string().contains("PICULET_MAX_LABEL_FILTERS"),
        "{body:#}"
    );

    // Sixteen at once, each with as many filters as allowed, answer and leave the pool free.
    let query: String = (0..16).map(|i| format!("label=k{i}%3Dv&")).collect();
    let url = format!("/api/v1/pipelines?{query}");
    let requests: Vec<_> = (0..16).map(|_| send(&app, app.get(&url))).collect();
    for response in futures::future::join_all(requests).await {
        assert_eq!(response.status(), 200);
    }
    let ready = send(&app, app.get("/api/v1/readyz")).await;
    assert_eq!(ready.status(), 200);
}

async fn text_a_database_cannot_store(db: Db) {
    let app = tokenless(db).await;

    // In a YAML command.
    let body = refused_yaml(
        &app,
        "steps:\n  - name: a\n    image: alpine\n    commands: [\"echo \\0\"]\n",
        "NUL",
    )
    .await;
    assert!(body.to_string().contains("/steps/0/commands/0"), "{body:#}");

    // In a JSON submission's name, variable and label.
    for (pointer, body) in [
        (
            "/name",
            json!({"name": "a\u{0}b", "configs": [{"name": "a", "content": format!("steps:\n{}", step("a", &[]))}]}),
        ),
        (
            "/variables/V",
            json!({"variables": {"V": "a\u{0}"}, "configs": [{"name": "a", "content": format!("steps:\n{}", step("a", &[]))}]}),
        ),
        (
            "/labels/k",
            json!({"labels": {"k": "\u{0}"}, "configs": [{"name": "a", "content": format!("steps:\n{}", step("a", &[]))}]}),
        ),
        (
            "/pipeline/steps/0/name",
            json!({"pipeline": {"steps": [{"name": "a\u{0}", "image": "alpine", "commands": ["true"]}]}}),
        ),
    ] {
        let problem =
            expect_problem(submit_json(&app, &body).await, 422, "validation-failed").await;
        assert!(
            problem["errors"]
                .as_array()
                .unwrap()
                .iter()
                .any(
                    |e| e["pointer"].as_str().unwrap_or_default().contains(pointer)
                        || (pointer.starts_with("/pipeline") && e["pointer"] == "/steps/0/name")
                ),
            "{pointer} named: {problem:#}"
        );
        let lint = send(&app, app.post("/api/v1/lint").json(&body)).await;
        let lint: Value = lint.json().await.unwrap();
        assert_eq!(lint["valid"], false, "lint agrees: {lint:#}");
    }

    // In a label filter, and in a query the events stream does not take.
    let response = send(&app, app.get("/api/v1/pipelines?label=k%3Da%00b")).await;
    expect_problem(response, 400, "invalid-query").await;
    let id = uuid::Uuid::now_v7();
    let response = send(
        &app,
        app.get(&format!("/api/v1/pipelines/{id}/events?after=%00")),
    )
    .await;
    expect_problem(response, 400, "invalid-query").await;

    assert_eq!(app.pipeline_count().await, 0);
}

async fn paths_leaving_the_workspace(db: Db) {
    let app = tokenless(db).await;
    for (yaml, pointer) in [
        (
            format!("workspace:\n  path: ../../etc\nsteps:\n{}", step("a", &[])),
            "/workspace/path",
        ),
        (
            format!("workspace:\n  base: relative\nsteps:\n{}", step("a", &[])),
            "/workspace/base",
        ),
        (
            "steps:\n  - name: a\n    image: alpine\n    commands: [true]\n    directory: ../..\n"
                .to_string(),
            "/steps/0/directory",
        ),
        (
            "steps:\n  - name: a\n    image: alpine\n    commands: [true]\n    directory: /etc\n"
                .to_string(),
            "/steps/0/directory",
        ),
    ] {
        let body = expect_problem(submit_yaml(&app, &yaml).await, 422, "validation-failed").await;
        assert_names(&body, pointer);
    }
    assert_eq!(app.pipeline_count().await, 0);
}

async fn secret_values_are_never_echoed(db: Db) {
    let app = tokenless(db).await;
    let content = format!("steps:\n{}", step("a", &[]));
    for value in [
        json!(918273645),
        json!(918273645.5),
        json!(true),
        json!(["918273645"]),
        json!({"v": "918273645"}),
    ] {
        let body = json!({"configs": [{"name": "a", "content": content}], "secrets": [{"name": "s", "value": value}]});
        let response = submit_json(&app, &body).await;
        assert!(response.status().is_client_error());
        let text = response.text().await.unwrap();
        assert!(!text.contains("918273645"), "the value is echoed: {text}");
        assert!(
            !text.contains("true,") && !text.contains("boolean `true`"),
            "the value is echoed: {text}"
        );
    }
    assert_eq!(app.pipeline_count().await, 0);
}

async fn foreign_host_names_are_misdirected(db: Db) {
    let app = tokenless(db).await;
    for host in [
        "evil.example",
        "evil.example:8080",
        "127.0.0.1.evil.example",
        "localhost.evil.example",
    ] {
        let response = send(&app, app.get("/api/v1/pipelines").header(HOST, host)).await;
        expect_problem(response, 421, "misdirected-request").await;
        let response = send(
            &app,
            app.post("/api/v1/pipelines")
                .header(HOST, host)
                .header(CONTENT_TYPE, "application/yaml")
                .body(format!("steps:\n{}", step("a", &[]))),
        )
        .await;
        assert_eq!(response.status(), 421);
    }
    for host in [
        "localhost",
        "localhost:8080",
        "127.0.0.1:1",
        "[::1]:8080",
        "app.localhost",
    ] {
        let response = send(&app, app.get("/api/v1/pipelines").header(HOST, host)).await;
        assert_eq!(response.status(), 200, "{host} is loopback");
    }
    assert_eq!(app.pipeline_count().await, 0);

    // The administrator's own names.
    let named = TestApp::spawn_api_with(
        db,
        piculet::config::Settings {
            api_tokens: Some(String::new()),
            allowed_hosts: Some("ci.example.com,*.build.example".into()),
            ..Default::default()
        },
    )
    .await;
    for (host, status) in [
        ("ci.example.com", 200),
        ("x.build.example:443", 200),
        ("evil.example", 421),
    ] {
        let response = send(&named, named.get("/api/v1/pipelines").header(HOST, host)).await;
        assert_eq!(response.status(), status, "{host}");
    }
}

async fn expect_continue_over_the_limit(db: Db) {
    let app = tokenless(db).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(
            format!(
                "POST /api/v1/pipelines HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/yaml\r\n\
                 Content-Length: 1000000000\r\nExpect: 100-continue\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut head = vec![0u8; 4096];
    let n = tokio::time::timeout(BOUND, stream.read(&mut head))
        .await
        .expect("answered before the body")
        .unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(!head.contains("100 Continue"), "{head}");
    assert_alive(&app).await;
    assert_eq!(app.pipeline_count().await, 0);
}

async fn large_secrets_are_bounded_and_masked_off_the_async_threads(db: Db) {
    // With the engine: the masking automaton is built when the workflow starts.
    let app = TestApp::start(
        db,
        piculet::config::Settings {
            api_tokens: Some(String::new()),
            ..Default::default()
        },
        true,
    )
    .await;
    // 60 KB of a two-letter alphabet: once minutes of automaton building on the async threads,
    // which stopped every probe, lease and follower meanwhile.
    let secret = "ab".repeat(30_000);
    let content = "steps:\n  - name: s\n    image: alpine\n    environment:\n      S:\n        from_secret: s\n    commands: [printf '%s\\n' \"$S\" | head -c 20]\n";
    let body = json!({"configs": [{"name": "c", "content": content}], "secrets": [{"name": "s", "value": secret}]});
    let response = submit_json(&app, &body).await;
    assert_eq!(response.status(), 201);
    let p: Value = response.json().await.unwrap();
    let id = p["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + BOUND;
    let done = loop {
        assert_alive(&app).await;
        let p = app.pipeline(&id).await;
        if !matches!(p["status"].as_str(), Some("queued" | "running")) {
            break p;
        }
        assert!(std::time::Instant::now() < deadline, "still running: {p:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["status"], "success", "{done:#}");

    // Over PICULET_MAX_SECRET_SIZE together.
    let secrets: Vec<Value> = (0..3)
        .map(|i| json!({"name": format!("s{i}"), "value": "x".repeat(50_000)}))
        .collect();
    let body = json!({"configs": [{"name": "c", "content": content}], "secrets": secrets});
    let problem = expect_problem(submit_json(&app, &body).await, 422, "validation-failed").await;
    assert!(
        problem.to_string().contains("PICULET_MAX_SECRET_SIZE"),
        "{problem:#}"
    );
    assert!(!problem.to_string().contains("xxxxxxxx"), "no value echoed");
}

async fn substitution_cannot_multiply_a_variable(db: Db) {
    let app = tokenless(db).await;
    // 2,000 references to a 65,000-byte variable: 130 MB from a 150 KB body.
    let commands = vec!["\"${A}\""; 2000].join(", ");
    let content = format!("steps:\n  - name: s\n    image: alpine\n    commands: [{commands}]\n");
    let body = json!({"configs": [{"name": "c", "content": content}], "variables": {"A": "x".repeat(65_000)}});
    for path in ["/api/v1/pipelines", "/api/v1/render", "/api/v1/lint"] {
        let response = send(&app, app.post(path).json(&body)).await;
        let text = response.text().await.unwrap();
        assert!(
            text.len() < 64 * 1024,
            "{path}: a small answer, not {} bytes",
            text.len()
        );
        assert!(
            text.contains("PICULET_MAX_PLANNED_SIZE"),
            "{path}: {}",
            truncate(&text)
        );
    }
    // A matrix copying a large config: 90 elements of 240 KB of commands.
    let commands = vec![format!("\"{}\"", "x".repeat(60_000)); 4].join(", ");
    let axis: Vec<String> = (0..90).map(|i| i.to_string()).collect();
    let content = format!(
        "matrix:\n  N: [{}]\nsteps:\n  - name: s\n    image: alpine\n    commands: [{commands}]\n",
        axis.join(", ")
    );
    let body = json!({"configs": [{"name": "c", "content": content}]});
    let problem = expect_problem(submit_json(&app, &body).await, 422, "validation-failed").await;
    assert!(
        problem.to_string().contains("PICULET_MAX_PLANNED_SIZE"),
        "{}",
        truncate(&problem.to_string())
    );
    assert_eq!(app.pipeline_count().await, 0);
}

async fn a_trickled_body_is_cut_off(db: Db) {
    let app = TestApp::spawn_api_with(
        db,
        piculet::config::Settings {
            api_tokens: Some(String::new()),
            body_timeout: Some("1s".into()),
            ..Default::default()
        },
    )
    .await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // A tenth of the body announced, then nothing more: a slow client holding its connection.
    stream
        .write_all(
            format!(
                "POST /api/v1/lint HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/yaml\r\n\
                 Content-Length: 100\r\n\r\nsteps:\n  -"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(BOUND, stream.read(&mut answer))
        .await
        .expect("answered without the rest of the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("PICULET_BODY_TIMEOUT"), "{answer}");
    assert_alive(&app).await;
}
