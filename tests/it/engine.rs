//! Pipelines run end to end over HTTP with the local backend, on Postgres and SQLite: the
//! engine, the step DAG, services, timeouts, cancel, secrets, and logs stored and streamed.

use crate::common;

use base64::Engine as _;
use common::{
    Db, TestApp, expect_problem, find_step, log_text, read_log_events, step_id, wait_finished,
    wait_step,
};
use serde_json::{Value, json};
use sha2::Digest as _;

on_both_databases!(
    independent_steps_run_at_the_same_time,
    on_failure_step_sees_the_failure,
    failure_ignore_keeps_the_workflow_green,
    a_service_is_reached_over_localhost,
    a_step_timeout_stops_the_step,
    cancel_stops_a_running_step_and_its_processes,
    secret_values_never_reach_logs_or_streams,
    sse_resume_gets_every_line_exactly_once,
    a_megabyte_of_output_is_stored_byte_exact,
    a_silent_step_ends_cleanly,
    log_requests_with_bad_input_are_refused,
    dependent_workflows_are_skipped_when_one_fails,
    workflow_when_status_follows_the_workflows_it_depends_on,
    an_image_only_step_is_refused_by_the_local_backend_in_words,
    a_failed_service_fails_its_workflow_unless_ignored,
    failure_cancel_cancels_the_rest_of_the_pipeline,
    retry_runs_the_submission_again,
    a_pipeline_kept_by_an_older_version_runs_and_retries,
    pipeline_timeout_stops_everything,
    events_stream_every_change_and_ends,
    metrics_count_what_happened,
);

async fn submit(app: &TestApp, body: Value) -> Value {
    let response = app.submit_json(&body).await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    response.json().await.unwrap()
}

async fn submit_yaml(app: &TestApp, yaml: &str) -> Value {
    let response = app.submit_yaml(yaml).await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    response.json().await.unwrap()
}

fn id(p: &Value) -> String {
    p["id"].as_str().unwrap().to_string()
}

async fn independent_steps_run_at_the_same_time(db: Db) {
    let app = TestApp::spawn(db).await;
    // Each step announces itself, then waits for the other: both succeed only if they run at
    // the same time.
    let wait_for = |other: &str| {
        format!(
            "for i in $(seq 1 200); do [ -f {other}.started ] && exit 0; sleep 0.05; done; exit 1"
        )
    };
    let yaml = format!(
        "\
steps:
  - name: a
    image: alpine
    commands:
      - touch a.started
      - '{}'
  - name: b
    image: alpine
    commands:
      - touch b.started
      - '{}'
  - name: c
    image: alpine
    depends_on: [a, b]
    commands: [echo both done]
",
        wait_for("b"),
        wait_for("a")
    );
    let p = submit_yaml(&app, &yaml).await;
    let done = wait_finished(&app, &id(&p), 60).await;
    assert_eq!(done["status"], "success", "{done:#}");
    for name in ["a", "b", "c"] {
        assert_eq!(find_step(&done, name).unwrap()["status"], "success");
    }
    let started = |n: &str| {
        find_step(&done, n).unwrap()["started_at"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let finished = |n: &str| {
        find_step(&done, n).unwrap()["finished_at"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        started("c") >= finished("a") && started("c") >= finished("b"),
        "c waits for both"
    );
}

async fn on_failure_step_sees_the_failure(db: Db) {
    let app = TestApp::spawn(db).await;
    let p = submit_yaml(
        &app,
        "\
steps:
  - name: build
    image: alpine
    commands: [echo building, exit 2]
  - name: deploy
    image: alpine
    commands: [echo deploying]
  - name: notify
    image: alpine
    commands: ['echo status=$CI_PIPELINE_STATUS step=$CI_STEP_NAME']
    when:
      status: [failure]
",
    )
    .await;
    let done = wait_finished(&app, &id(&p), 60).await;
    // The pipeline failed with its build (exit code 2); a failed step skips the steps that
    // run on success, and the step that runs on failure succeeded.
    insta::assert_json_snapshot!("pipeline_with_a_failed_step", done, {
        ".id" => common::uuid_redaction("[pipeline id]"),
        ".**.created_at" => common::time_redaction(),
        ".**.started_at" => common::time_redaction(),
        ".**.finished_at" => common::time_redaction(),
        ".workflows[].id" => common::uuid_redaction("[workflow id]"),
        ".workflows[].steps[].id" => common::uuid_redaction("[step id]"),
    });
    let log = log_text(&app, &step_id(&done, "notify")).await;
    assert!(log.contains("status=failure step=notify\n"), "{log}");
}

async fn failure_ignore_keeps_the_workflow_green(db: Db) {
    let app = TestApp::spawn(db).await;
    let p = submit_yaml(
        &app,
        "\
steps:
  - name: flaky
    image: alpine
    commands: [exit 1]
    failure: ignore
  - name: next
    image: alpine
    commands: ['echo status=$CI_PIPELINE_STATUS']
",
    )
    .await;
    let done = wait_finished(&app, &id(&p), 60).await;
    assert_eq!(done["status"], "success", "{done:#}");
    assert_eq!(find_step(&done, "flaky").unwrap()["status"], "failure");
    assert_eq!(find_step(&done, "next").unwrap()["status"], "success");
    let log = log_text(&app, &step_id(&done, "next")).await;
    assert!(log.contains("status=success\n"), "{log}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn a_service_is_reached_over_localhost(db: Db) {
    let app = TestApp::spawn(db).await;
    let port = free_port().to_string();
    let p = submit(
        &app,
        json!({
            "configs": [{"name": "ci", "content": "\
services:
  - name: web
    image: python:3
    commands:
      - echo served > index.html
      - exec python3 -m http.server ${PORT} --bind 127.0.0.1
steps:
  - name: fetch
    image: alpine
    commands:
      - for i in $(seq 1 100); do python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:${PORT}/index.html').read().decode())\" && exit 0; sleep 0.1; done; exit 1
"}],
            "variables": {"PORT": port}
        }),
    )
    .await;
    let done = wait_finished(&app, &id(&p), 60).await;
    assert_eq!(done["status"], "success", "{done:#}");
    let log = log_text(&app, &step_id(&done, "fetch")).await;
    assert!(log.contains("served\n"), "{log}");
    let web = find_step(&done, "web").unwrap();
    assert_eq!(web["kind"], "service");
    assert_eq!(
        web["status"], "success",
        "a service stopped at the end counts as success"
    );
}

async fn a_step_timeout_stops_the_step(db: Db) {
    let app = TestApp::spawn(db).await;
    let p = submit_yaml(
        &app,
        "\
steps:
  - name: slow
    image: alpine
    timeout: 1s
    commands: [echo start, sleep 60]
",
    )
    .await;
    let done = wait_finished(&app, &id(&p), 30).await;
    assert_eq!(done["status"], "failure");
    let slow = find_step(&done, "slow").unwrap();
    assert_eq!(slow["status"], "failure");
    assert_eq!(slow["reason"], "timed out after 1s");
    let took = chrono::DateTime::parse_from_rfc3339(slow["finished_at"].as_str().unwrap()).unwrap()
        - chrono::DateTime::parse_from_rfc3339(slow["started_at"].as_str().unwrap()).unwrap();
    assert!(
        took.num_seconds() < 20,
        "stopped long before the sleep ended: {took}"
    );
}

fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie has exited; only its parent has yet to reap it.
        Ok(stat) => stat
            .split(") ")
            .nth(1)
            .is_some_and(|rest| rest.starts_with('Z')),
    }
}

async fn cancel_stops_a_running_step_and_its_processes(db: Db) {
    let app = TestApp::spawn(db).await;
    let dir = app.data_dir.join("cancel-probe");
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    let p = submit_yaml(
        &app,
        &format!(
            "\
steps:
  - name: long
    image: alpine
    commands:
      - sleep 1000 &
      - echo $! > {d}/child
      - echo $$ > {d}/shell
      - wait
  - name: later
    image: alpine
    commands: [echo never]
"
        ),
    )
    .await;
    wait_step(&app, &id(&p), "long", "running", 30).await;
    let read_pid = |name: &str| -> Option<i32> {
        std::fs::read_to_string(dir.join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (shell, child) = loop {
        if let (Some(s), Some(c)) = (read_pid("shell"), read_pid("child")) {
            break (s, c);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the step never wrote its pids"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(!process_gone(child), "the child runs before the cancel");

    let response = app
        .post(&format!("/api/v1/pipelines/{}/cancel", id(&p)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let done = wait_finished(&app, &id(&p), 30).await;
    assert_eq!(done["status"], "canceled", "{done:#}");
    assert_eq!(find_step(&done, "long").unwrap()["status"], "canceled");
    assert_eq!(find_step(&done, "later").unwrap()["status"], "canceled");
    for _ in 0..100 {
        if process_gone(shell) && process_gone(child) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(process_gone(shell), "the step's shell is gone");
    assert!(process_gone(child), "and so is the process it started");

    let again = app
        .post(&format!("/api/v1/pipelines/{}/cancel", id(&p)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.status(),
        200,
        "canceling a finished pipeline answers 200"
    );
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["status"], "canceled");
}

async fn secret_values_never_reach_logs_or_streams(db: Db) {
    let app = TestApp::spawn(db).await;
    let secret = "s3cr3t V@lue/42";
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    let p = submit(
        &app,
        json!({
            "configs": [{"name": "ci", "content": "\
steps:
  - name: leak
    image: alpine
    environment:
      TOKEN:
        from_secret: token
    commands:
      - echo \"plain $TOKEN\"
      - printf '%s' \"$TOKEN\" | base64
      - printf 'user:%s' \"$TOKEN\" | base64
      - python3 -c \"import os, urllib.parse; print(urllib.parse.quote(os.environ['TOKEN'], safe=''))\"
"}],
            "secrets": [{"name": "token", "value": secret}]
        }),
    )
    .await;
    let done = wait_finished(&app, &id(&p), 60).await;
    assert_eq!(done["status"], "success", "{done:#}");
    let step = step_id(&done, "leak");
    let url = "s3cr3t%20V%40lue%2F42";
    // HTTP Basic: the characters of base64("user:" + secret) that come from the secret alone.
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("user:{secret}"));
    let basic_core = &basic[7..(8 * (5 + secret.len())) / 6];
    let forms = [secret, b64.as_str(), url, basic_core];

    let log = log_text(&app, &step).await;
    assert_eq!(log.matches("********").count(), 4, "{log}");
    let sse: String = read_log_events(&app, &step, None, None)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    let ndjson = app
        .get(&format!("/api/v1/steps/{step}/logs"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let pipeline = app.text(&format!("/api/v1/pipelines/{}", id(&p))).await;
    for text in [&log, &sse, &ndjson, &pipeline] {
        for form in forms {
            assert!(!text.contains(form), "{form:?} leaked into {text}");
        }
    }
    assert!(log.contains("plain ********\n"), "{log}");
}

async fn sse_resume_gets_every_line_exactly_once(db: Db) {
    let app = TestApp::spawn(db).await;
    let p = submit_yaml(
        &app,
        "\
steps:
  - name: count
    image: alpine
    commands:
      - 'for i in $(seq 1 400); do echo line $i; if [ $((i % 50)) = 0 ]; then sleep 0.1; fi; done'
",
    )
    .await;
    let step = step_id(&p, "count");
    // Read part of the stream live, drop the connection, and resume where it stopped.
    let first = read_log_events(&app, &step, None, Some(120)).await;
    assert_eq!(first.len(), 120);
    let last = first.last().unwrap().id.clone();
    let rest = read_log_events(&app, &step, Some(&last), None).await;
    let end = rest.last().unwrap();
    assert_eq!(end.event, "end");
    let end: Value = serde_json::from_str(&end.data).unwrap();
    assert_eq!(
        end,
        json!({"status": "success", "exit_code": 0, "reason": null})
    );

    let lines: Vec<Value> = first
        .iter()
        .chain(rest.iter())
        .filter(|e| e.event == "message")
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    let numbers: Vec<i64> = lines
        .iter()
        .map(|l| l["number"].as_i64().unwrap())
        .collect();
    let expected: Vec<i64> = (1..=numbers.len() as i64).collect();
    assert_eq!(numbers, expected, "no gap and no duplicate");
    for (event, line) in first.iter().chain(rest.iter()).zip(&lines) {
        assert_eq!(event.id, line["number"].to_string(), "id = line number");
    }
    let text: String = lines.iter().map(|l| l["text"].as_str().unwrap()).collect();
    assert_eq!(
        text,
        log_text(&app, &step).await,
        "the stream is the stored log"
    );
    for i in 1..=400 {
        assert_eq!(
            text.matches(&format!("line {i}\n")).count(),
            1,
            "line {i} exactly once"
        );
    }
}

/// Output with UTF-8, a long line, many short ones, and no newline at the end.
fn megabyte() -> String {
    let mut out = String::new();
    out.push_str("héllo wörld ✓ 日本語 🚀\n");
    out.push_str(&"long-line-".repeat(20_000));
    out.push('\n');
    let mut i = 0u64;
    while out.len() < 1 << 20 {
        i += 1;
        out.push_str(&format!(
            "{i} ünïcode {:x}\n",
            i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ));
    }
    out.push_str("the end, without a newline");
    out
}

async fn a_megabyte_of_output_is_stored_byte_exact(db: Db) {
    let app = TestApp::spawn(db).await;
    let content = megabyte();
    let file = app.data_dir.join("output.txt");
    std::fs::write(&file, &content).unwrap();
    let p = submit_yaml(
        &app,
        &format!(
            "steps:\n  - name: big\n    image: alpine\n    commands: [cat {}]\n",
            file.display()
        ),
    )
    .await;
    let done = wait_finished(&app, &id(&p), 60).await;
    assert_eq!(done["status"], "success", "{done:#}");
    let log = log_text(&app, &step_id(&done, "big")).await;
    let prefix = format!(
        "piculet: the local backend ignores image \"alpine\"; the step runs on this host\n+ cat {}\n",
        file.display()
    );
    assert!(log.starts_with(&prefix), "{}", &log[..200.min(log.len())]);
    let stored = &log[prefix.len()..];
    assert_eq!(stored.len(), content.len());
    assert_eq!(
        sha2::Sha256::digest(stored.as_bytes()),
        sha2::Sha256::digest(content.as_bytes()),
        "the stored log is the output, byte for byte"
    );
}

async fn a_silent_step_ends_cleanly(db: Db) {
    let app = TestApp::spawn(db).await;
    let p = submit_yaml(
        &app,
        "steps:\n  - name: quiet\n    image: alpine\n    entrypoint: [/bin/true]\n",
    )
    .await;
    let done = wait_finished(&app, &id(&p), 30).await;
    assert_eq!(done["status"], "success", "{done:#}");
    let step = step_id(&done, "quiet");
    let log = log_text(&app, &step).await;
    assert_eq!(
        log, "piculet: the local backend ignores image \"alpine\"; the step runs on this host\n",
        "nothing but the backend's notice"
    );
    let events = read_log_events(&app, &step, Some("1"), None).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].event, "end");
}

async fn log_requests_with_bad_input_are_refused(db: Db) {
    let app = TestApp::spawn(db).await;
    let unknown = app
        .get("/api/v1/steps/0193a5c4-6a5e-7cc0-a7e1-3f1b2f7d9e10/logs")
        .send()
        .await
        .unwrap();
    expect_problem(unknown, 404, "not-found").await;
    let unknown_sse = app
        .get("/api/v1/steps/0193a5c4-6a5e-7cc0-a7e1-3f1b2f7d9e10/logs")
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    expect_problem(unknown_sse, 404, "not-found").await;
    expect_problem(
        app.get("/api/v1/steps/nope/logs").send().await.unwrap(),
        400,
        "invalid-id",
    )
    .await;

    let p = submit_yaml(
        &app,
        "steps:\n  - name: a\n    image: alpine\n    commands: [echo hi]\n",
    )
    .await;
    let step = step_id(&p, "a");
    let bad = app
        .get(&format!("/api/v1/steps/{step}/logs"))
        .header("accept", "text/event-stream")
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    let body = expect_problem(bad, 400, "invalid-header").await;
    assert!(body["detail"].as_str().unwrap().contains("Last-Event-ID"));
    let bad = app
        .get(&format!("/api/v1/pipelines/{}/events", id(&p)))
        .header("last-event-id", "-3")
        .send()
        .await
        .unwrap();
    expect_problem(bad, 400, "invalid-header").await;
    expect_problem(
        app.get("/api/v1/pipelines/0193a5c4-6a5e-7cc0-a7e1-3f1b2f7d9e10/events")
            .send()
            .await
            .unwrap(),
        404,
        "not-found",
    )
    .await;
    expect_problem(
        app.post("/api/v1/pipelines/0193a5c4-6a5e-7cc0-a7e1-3f1b2f7d9e10/retry")
            .send()
            .await
            .unwrap(),
        404,
        "not-found",
    )
    .await;
}

async fn dependent_workflows_are_skipped_when_one_fails(db: Db) {
    let app = TestApp::spawn(db).await;
    let step =
        |cmd: &str| format!("steps:\n  - name: s\n    image: alpine\n    commands: [{cmd}]\n");
    let p = submit(
        &app,
        json!({"configs": [
            {"name": "build", "content": step("exit 1")},
            {"name": "deploy", "content": format!("depends_on: [build]\n{}", step("echo deploy"))},
            {"name": "report", "content": format!("depends_on: [build]\nruns_on: [success, failure]\n{}", step("echo report"))},
            {"name": "other", "content": step("echo other")},
        ]}),
    )
    .await;
    let done = wait_finished(&app, &id(&p), 60).await;
    let statuses: Vec<(&str, &str)> = done["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["name"].as_str().unwrap(), w["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("build", "failure"),
            ("deploy", "skipped"),
            ("report", "success"),
            ("other", "success")
        ]
    );
    assert_eq!(done["status"], "failure");
    assert_eq!(done["workflows"][1]["steps"][0]["status"], "skipped");
}

fn workflow_statuses(done: &Value) -> Vec<(String, String, String)> {
    done["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["name"].as_str().unwrap().to_string(),
                w["status"].as_str().unwrap().to_string(),
                w["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Woodpecker's workflow-level `when.status`: the statuses of the workflows it depends on in
/// which a workflow runs; a workflow skipped for it says why.
async fn workflow_when_status_follows_the_workflows_it_depends_on(db: Db) {
    let app = TestApp::spawn(db).await;
    let step =
        |cmd: &str| format!("steps:\n  - name: s\n    image: alpine\n    commands: [{cmd}]\n");
    let p = submit(
        &app,
        json!({"configs": [
            {"name": "build", "content": step("exit 1")},
            {"name": "lint", "content": step("echo lint")},
            {"name": "on-build-failure", "content": format!("depends_on: [build]\nwhen:\n  - status: [failure]\n{}", step("echo notify"))},
            {"name": "on-lint-failure", "content": format!("depends_on: [lint]\nwhen: {{status: failure}}\n{}", step("echo notify"))},
            {"name": "after-lint", "content": format!("depends_on: [lint]\nwhen: {{status: [success, failure]}}\n{}", step("echo always"))},
        ]}),
    )
    .await;
    let done = wait_finished(&app, &id(&p), 60).await;
    let statuses = workflow_statuses(&done);
    let of = |name: &str| statuses.iter().find(|w| w.0 == name).unwrap().clone();
    assert_eq!(of("build").1, "failure");
    assert_eq!(of("on-build-failure").1, "success", "{done:#}");
    assert_eq!(of("after-lint").1, "success");
    assert_eq!(
        (of("on-lint-failure").1, of("on-lint-failure").2),
        (
            "skipped".to_string(),
            "skipped: it runs only when a workflow it depends on fails (its status condition is [failure]), and lint did not fail".to_string()
        )
    );
    assert_eq!(done["status"], "failure");
}

/// A step with only an image runs the image's own entrypoint, which the local backend has
/// not got: the step ends `error`, saying so and what to do, and nothing runs in its place.
async fn an_image_only_step_is_refused_by_the_local_backend_in_words(db: Db) {
    let app = TestApp::spawn(db).await;
    let p = submit_yaml(
        &app,
        "skip_clone: true\nsteps:\n  - name: publish\n    image: woodpeckerci/plugin-release\n",
    )
    .await;
    let done = wait_finished(&app, &id(&p), 60).await;
    let step = find_step(&done, "publish").unwrap();
    assert_eq!(step["status"], "error", "{done:#}");
    let reason = step["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("\"publish\"")
            && reason.contains("woodpeckerci/plugin-release")
            && reason.contains("PICULET_BACKEND=kubernetes"),
        "{reason}"
    );
    assert_eq!(done["status"], "error", "{done:#}");
}

/// A service that ends on its own with a failure fails its workflow (a service stopped at the
/// end is a success), unless it says `failure: ignore`, as in Woodpecker.
async fn a_failed_service_fails_its_workflow_unless_ignored(db: Db) {
    let app = TestApp::spawn(db).await;
    let config = |failure: &str| {
        format!(
            "services:\n  - name: broken\n    image: alpine\n    failure: {failure}\n    commands: [exit 3]\nsteps:\n  - name: s\n    image: alpine\n    commands: [sleep 1]\n"
        )
    };
    let p = submit(
        &app,
        json!({"configs": [
            {"name": "counted", "content": config("fail")},
            {"name": "ignored", "content": config("ignore")},
        ]}),
    )
    .await;
    let done = wait_finished(&app, &id(&p), 60).await;
    let statuses = workflow_statuses(&done);
    assert_eq!(
        statuses,
        [
            (
                "counted".to_string(),
                "failure".to_string(),
                "service broken failed".to_string()
            ),
            ("ignored".to_string(), "success".to_string(), String::new()),
        ],
        "{done:#}"
    );
    assert_eq!(done["workflows"][1]["steps"][0]["status"], "failure");
}

/// `failure: cancel`: the step's failure cancels the rest of the pipeline; its workflow ends
/// `failure`, saying so, and so does the pipeline.
async fn failure_cancel_cancels_the_rest_of_the_pipeline(db: Db) {
    let app = TestApp::spawn(db).await;
    let p = submit(
        &app,
        json!({"configs": [
            {"name": "deploy", "content": "steps:\n  - name: push\n    image: alpine\n    failure: cancel\n    commands: [sleep 1, exit 1]\n  - name: after\n    image: alpine\n    commands: [echo never]\n"},
            {"name": "slow", "content": "steps:\n  - name: wait\n    image: alpine\n    commands: [sleep 60]\n"},
            {"name": "later", "content": "depends_on: [slow]\nsteps:\n  - name: s\n    image: alpine\n    commands: [echo later]\n"},
        ]}),
    )
    .await;
    let done = wait_finished(&app, &id(&p), 30).await;
    let statuses = workflow_statuses(&done);
    assert_eq!(
        statuses[0],
        (
            "deploy".to_string(),
            "failure".to_string(),
            "step push failed, and its failure: cancel canceled the rest of the pipeline"
                .to_string()
        ),
        "{done:#}"
    );
    assert_eq!(statuses[1].1, "canceled", "{done:#}");
    assert_eq!(statuses[2].1, "canceled", "{done:#}");
    assert_eq!(find_step(&done, "after").unwrap()["status"], "canceled");
    assert_eq!(done["status"], "failure");
}

async fn retry_runs_the_submission_again(db: Db) {
    let app = TestApp::spawn(db).await;
    let p = submit(
        &app,
        json!({
            "configs": [{"name": "ci", "content": "steps:\n  - name: a\n    image: alpine\n    environment:\n      T:\n        from_secret: t\n    commands: ['test \"$T\" = abc123']\n"}],
            "secrets": [{"name": "t", "value": "abc123"}]
        }),
    )
    .await;
    assert_eq!(wait_finished(&app, &id(&p), 60).await["status"], "success");
    let retried = app
        .post(&format!("/api/v1/pipelines/{}/retry", id(&p)))
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), 201);
    let retried: Value = retried.json().await.unwrap();
    assert_ne!(retried["id"], p["id"]);
    assert_eq!(retried["retry_of"], p["id"]);
    let done = wait_finished(&app, &id(&retried), 60).await;
    assert_eq!(done["status"], "success", "the secret came along: {done:#}");
}

/// A pipeline whose submission an older version kept (the whole submission as JSON, secret
/// values cut out and their names left in) runs with its variables and secrets, and retries.
async fn a_pipeline_kept_by_an_older_version_runs_and_retries(db: Db) {
    let api = TestApp::spawn_api(db).await;
    let content = "steps:\n  - name: a\n    image: alpine\n    environment:\n      T:\n        from_secret: t\n    commands: ['test \"$T\" = abc123', 'test \"$GREETING\" = hello']\n";
    let p = submit(
        &api,
        json!({
            "configs": [{"name": "ci", "content": content}],
            "variables": {"GREETING": "hello"},
            "secrets": [{"name": "t", "value": "abc123"}]
        }),
    )
    .await;
    let old = json!({
        "name": null,
        "configs": [{"name": "ci", "content": content}],
        "pipeline": null,
        "variables": {"GREETING": "hello"},
        "secrets": [{"name": "t"}],
        "registries": [],
        "repo": null,
        "labels": {},
        "namespace": null,
        "timeout": null,
        "platform": null
    });
    let pipeline_id: uuid::Uuid = id(&p).parse().unwrap();
    let update = "UPDATE pipelines SET submission = $1 WHERE id = $2";
    let updated = {
        use sqlx::Connection as _;
        match db {
            Db::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&api.database_url)
                    .await
                    .unwrap();
                sqlx::query(update)
                    .bind(sqlx::types::Json(&old))
                    .bind(pipeline_id)
                    .execute(&mut conn)
                    .await
                    .unwrap()
                    .rows_affected()
            }
            Db::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&api.database_url)
                    .await
                    .unwrap();
                sqlx::query(update)
                    .bind(sqlx::types::Json(&old))
                    .bind(pipeline_id)
                    .execute(&mut conn)
                    .await
                    .unwrap()
                    .rows_affected()
            }
        }
    };
    assert_eq!(updated, 1);
    let app = TestApp::start_sharing(&api, piculet::config::Settings::default(), true).await;
    let done = wait_finished(&app, &id(&p), 60).await;
    assert_eq!(done["status"], "success", "{done:#}");
    let retried = app
        .post(&format!("/api/v1/pipelines/{}/retry", id(&p)))
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), 201);
    let retried: Value = retried.json().await.unwrap();
    let done = wait_finished(&app, &id(&retried), 60).await;
    assert_eq!(done["status"], "success", "{done:#}");
}

async fn pipeline_timeout_stops_everything(db: Db) {
    let app = TestApp::spawn(db).await;
    let p = submit(
        &app,
        json!({
            "configs": [{"name": "ci", "content": "steps:\n  - name: slow\n    image: alpine\n    commands: [sleep 60]\n  - name: after\n    image: alpine\n    commands: [echo after]\n"}],
            "timeout": "1s"
        }),
    )
    .await;
    let done = wait_finished(&app, &id(&p), 30).await;
    assert_eq!(done["status"], "failure", "{done:#}");
    let slow = find_step(&done, "slow").unwrap();
    assert_eq!(
        slow["reason"],
        "timed out after 1s (the pipeline's timeout)"
    );
    assert_eq!(find_step(&done, "after").unwrap()["status"], "skipped");
}

async fn events_stream_every_change_and_ends(db: Db) {
    use eventsource_stream::Eventsource as _;
    use futures::StreamExt as _;
    let app = TestApp::spawn(db).await;
    let p = submit_yaml(&app, "steps:\n  - name: a\n    image: alpine\n    commands: [echo a]\n  - name: b\n    image: alpine\n    commands: [exit 4]\n").await;
    let response = app
        .get(&format!("/api/v1/pipelines/{}/events", id(&p)))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let events: Vec<_> = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        response
            .bytes_stream()
            .eventsource()
            .map(|e| e.unwrap())
            .collect::<Vec<_>>(),
    )
    .await
    .expect("the stream ends");
    let (end, changes) = events.split_last().unwrap();
    assert_eq!(end.event, "end");
    assert_eq!(
        serde_json::from_str::<Value>(&end.data).unwrap()["status"],
        "failure"
    );
    let seen: Vec<(String, String, String)> = changes
        .iter()
        .map(|e| {
            assert_eq!(e.event, "status");
            let v: Value = serde_json::from_str(&e.data).unwrap();
            assert_eq!(e.id, v["seq"].to_string());
            (
                v["subject"].as_str().unwrap().into(),
                v["name"].as_str().unwrap().into(),
                v["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected = [
        ("pipeline", "pipeline", "queued"),
        ("workflow", "pipeline", "running"),
        ("pipeline", "pipeline", "running"),
        ("step", "a", "running"),
        ("step", "a", "success"),
        ("step", "b", "running"),
        ("step", "b", "failure"),
        ("workflow", "pipeline", "failure"),
        ("pipeline", "pipeline", "failure"),
    ];
    let expected: Vec<(String, String, String)> = expected
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(seen, expected);
    let b = changes
        .iter()
        .map(|e| serde_json::from_str::<Value>(&e.data).unwrap())
        .find(|v| v["name"] == "b" && v["status"] == "failure")
        .unwrap();
    assert_eq!(b["exit_code"], 4);

    // Resuming after the third event replays the rest only.
    let third = changes[2].id.clone();
    let response = app
        .get(&format!("/api/v1/pipelines/{}/events", id(&p)))
        .header("last-event-id", third)
        .send()
        .await
        .unwrap();
    let resumed: Vec<_> = response
        .bytes_stream()
        .eventsource()
        .map(|e| e.unwrap())
        .collect()
        .await;
    assert_eq!(resumed.len(), changes.len() - 3 + 1);
}

/// The value of an unlabelled (or fully labelled) sample in Prometheus text.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn metrics_count_what_happened(db: Db) {
    let app = TestApp::spawn(db).await;
    let scrape = || async {
        let response = app.get("/api/v1/metrics").send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    };
    let unauthenticated = app
        .client
        .get(app.url("/api/v1/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401, "metrics need the token");
    let before = scrape().await;
    let p = submit_yaml(
        &app,
        "steps:\n  - name: a\n    image: alpine\n    commands: ['seq 1 100']\n",
    )
    .await;
    wait_finished(&app, &id(&p), 30).await;
    let after = scrape().await;
    // The app has a registry of its own: other tests running meanwhile count elsewhere, so
    // what grew is exactly what this pipeline did.
    let grew = |name: &str| sample(&after, name) - sample(&before, name);
    assert_eq!(grew("piculet_log_lines_stored_total"), 102.0, "{after}");
    // The 100 numbers (292 bytes), the local backend's word on the image and the echoed command.
    assert_eq!(grew("piculet_log_bytes_stored_total"), 382.0, "{after}");
    assert_eq!(
        grew("piculet_step_duration_seconds_count{status=\"success\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(
        grew("piculet_submit_to_start_seconds_count"),
        1.0,
        "{after}"
    );
    for metric in [
        "piculet_workflows{status=\"queued\"}",
        "piculet_workflows{status=\"running\"}",
    ] {
        assert!(after.contains(metric), "{metric} in\n{after}");
    }
}

on_both_databases!(submit_follow_prints_every_line_and_exits_with_the_outcome);

async fn submit_follow_prints_every_line_and_exits_with_the_outcome(db: Db) {
    let app = TestApp::spawn(db).await;
    let dir = app.data_dir.join("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.yaml");
    std::fs::write(
        &good,
        "steps:\n  - name: hello\n    image: alpine\n    commands: ['echo hello $WHO', 'echo $TOKEN']\n    environment:\n      TOKEN:\n        from_secret: token\n  - name: bye\n    image: alpine\n    commands: [echo bye]\n",
    )
    .unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "steps:\n  - name: boom\n    image: alpine\n    commands: [echo boom, exit 7]\n",
    )
    .unwrap();
    let run = |file: std::path::PathBuf| {
        let base = app.base.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_piculet"))
                .args([
                    "submit",
                    "--follow",
                    "--var",
                    "WHO=world",
                    "--secret",
                    "token=cli-secret-xyz",
                ])
                .arg(&file)
                .env("PICULET_SERVER", base)
                .env("PICULET_TOKEN", common::TOKEN)
                .output()
                .unwrap()
        })
    };
    let out = run(good).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("hello | hello world\n"), "{stdout}");
    assert!(stdout.contains("hello | ********\n"), "{stdout}");
    assert!(stdout.contains("  bye | bye\n"), "{stdout}");
    assert!(!stdout.contains("cli-secret-xyz"));

    let out = run(bad).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed pipeline exits 1: {stdout}"
    );
    assert!(stdout.contains("boom | boom\n"), "{stdout}");
}

on_both_databases!(sigterm_hands_running_work_over_to_the_next_replica);

/// A `piculet serve` process of its own, to send signals to.
struct Server {
    child: std::process::Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    async fn start(database_url: &str, data_dir: &std::path::Path, args: &[&str]) -> Server {
        let port = free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_piculet"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--lease",
                "2s",
            ])
            .args(args)
            .env("PICULET_DATABASE_URL", database_url)
            .env("PICULET_DATA_DIR", data_dir)
            .env("PICULET_API_TOKENS", common::TOKEN)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..200 {
            if reqwest::get(format!("{}/api/v1/healthz", server.base))
                .await
                .is_ok()
            {
                return server;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("piculet serve did not come up");
    }

    fn terminate(&mut self) -> std::time::Duration {
        let started = std::time::Instant::now();
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "a clean exit on SIGTERM: {status}");
        started.elapsed()
    }
}

async fn sigterm_hands_running_work_over_to_the_next_replica(db: Db) {
    // The test app is only a way to get a fresh database and a client; the servers under test
    // are real processes. No grace: the running steps are handed over at once.
    let app = TestApp::spawn_api(db).await;
    let data_dir = app.data_dir.join("server");
    let no_grace = ["--shutdown-grace", "0s"];
    let mut first = Server::start(&app.database_url, &data_dir, &no_grace).await;
    let client = reqwest::Client::new();
    let auth = format!("Bearer {}", common::TOKEN);
    // Two workflows at once: one step that keeps printing numbered lines and one that is
    // silent; both outlive the server (their output goes to a file, not a pipe).
    let p: Value = client
        .post(format!("{}/api/v1/pipelines", first.base))
        .header("authorization", &auth)
        .json(&json!({"configs": [
            {"name": "chatty", "content": "steps:\n  - name: ticking\n    image: alpine\n    commands: ['for i in $(seq 1 40); do echo tick $i; sleep 0.05; done']\n  - name: after-ticking\n    image: alpine\n    commands: [echo after]\n"},
            {"name": "quiet", "content": "steps:\n  - name: sleeping\n    image: alpine\n    commands: [echo started, sleep 2]\n  - name: after-sleeping\n    image: alpine\n    commands: [echo after]\n"}
        ]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pid = id(&p);
    let sleeping = step_id(&p, "sleeping");
    let ticking = step_id(&p, "ticking");
    wait_step(&app, &pid, "sleeping", "running", 30).await;
    wait_step(&app, &pid, "ticking", "running", 30).await;
    while !log_text(&app, &ticking).await.contains("tick 3\n") {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // An SSE client following a step is let go when the server stops.
    let follower = client
        .get(format!("{}/api/v1/steps/{sleeping}/logs", first.base))
        .header("authorization", &auth)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    first.terminate();
    // Only a guard against a stream that never ends: generous, so load cannot fail it.
    let rest = tokio::time::timeout(std::time::Duration::from_secs(60), follower.text()).await;
    assert!(rest.is_ok(), "the SSE stream ended with the server");

    // Handed over, not failed: the steps are still running as far as the database knows,
    // their output so far is stored, and the leases are free for the next replica.
    let during = app.pipeline(&pid).await;
    assert_eq!(find_step(&during, "sleeping").unwrap()["status"], "running");
    assert_eq!(find_step(&during, "ticking").unwrap()["status"], "running");
    assert!(log_text(&app, &sleeping).await.contains("started\n"));
    let ticks_before = log_text(&app, &ticking).await;
    assert!(ticks_before.contains("tick 1\n"));

    // The next replica re-attaches to both: nothing is run again, and the ticking step's log
    // goes on where it stopped, every line exactly once.
    let mut second = Server::start(&app.database_url, &data_dir, &no_grace).await;
    let done = wait_finished(&app, &pid, 60).await;
    assert_eq!(done["status"], "success", "{done:#}");
    for step in ["sleeping", "ticking", "after-sleeping", "after-ticking"] {
        let s = find_step(&done, step).unwrap();
        assert_eq!(s["status"], "success", "{done:#}");
        assert_eq!(
            s["attempt"].as_u64(),
            Some(1),
            "re-attached, not run again: {s}"
        );
    }
    let ticks = log_text(&app, &ticking).await;
    assert!(ticks.starts_with(&ticks_before), "{ticks}");
    let numbers: Vec<usize> = ticks
        .lines()
        .filter_map(|l| l.strip_prefix("tick "))
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(numbers, (1..=40).collect::<Vec<_>>(), "{ticks}");
    // Started once: the silent step printed its line once.
    let silent = log_text(&app, &sleeping).await;
    assert_eq!(
        silent.lines().filter(|l| *l == "started").count(),
        1,
        "{silent}"
    );
    second.terminate();
}

on_both_databases!(a_secret_across_the_pieces_of_a_long_line_is_masked);

async fn a_secret_across_the_pieces_of_a_long_line_is_masked(db: Db) {
    let app = TestApp::spawn(db).await;
    let secret = "s3cr3t-V@lue-42";
    // 65,530 bytes, then the secret: it spans the 64 KiB (65,536 bytes) boundary where the line
    // is cut into pieces.
    let p = submit(
        &app,
        json!({
            "configs": [{"name": "ci", "content": "\
steps:
  - name: long
    image: alpine
    environment:
      TOKEN:
        from_secret: token
    commands:
      - python3 -c \"import os; print('x' * 65530 + os.environ['TOKEN'] + ' end')\"
"}],
            "secrets": [{"name": "token", "value": secret}]
        }),
    )
    .await;
    let done = wait_finished(&app, &id(&p), 60).await;
    assert_eq!(done["status"], "success", "{done:#}");
    let log = log_text(&app, &step_id(&done, "long")).await;
    assert!(
        !log.contains("s3cr3t"),
        "no part of the secret's start is stored"
    );
    assert!(
        log.contains(&format!("{}******** end\n", "x".repeat(10))),
        "masked in place"
    );
}

on_both_databases!(a_log_over_its_size_cap_ends_with_a_notice);

async fn a_log_over_its_size_cap_ends_with_a_notice(db: Db) {
    let app = TestApp::start(
        db,
        piculet::config::Settings {
            max_log_size: Some("2KiB".into()),
            ..Default::default()
        },
        true,
    )
    .await;
    let p = submit_yaml(
        &app,
        "steps:\n  - name: chatty\n    image: alpine\n    commands: ['seq 1 5000', 'echo still running']\n",
    )
    .await;
    let done = wait_finished(&app, &id(&p), 60).await;
    assert_eq!(
        done["status"], "success",
        "the step is not cut short, only its log: {done:#}"
    );
    let log = log_text(&app, &step_id(&done, "chatty")).await;
    assert!(log.len() <= 2048 + 200, "{} bytes", log.len());
    assert!(
        log.ends_with("piculet: the log reached its limit of 2048 bytes (PICULET_MAX_LOG_SIZE); further output of this step is discarded\n"),
        "{log}"
    );
    assert!(!log.contains("still running"));
}

on_both_databases!(odd_output_and_log_queries);

async fn odd_output_and_log_queries(db: Db) {
    let app = TestApp::spawn(db).await;
    let p = submit_yaml(
        &app,
        "steps:\n  - name: odd\n    image: alpine\n    commands: [\"printf 'a\\\\0b\\\\n'\", echo done]\n",
    )
    .await;
    let done = wait_finished(&app, &id(&p), 30).await;
    assert_eq!(done["status"], "success", "{done:#}");
    let step = step_id(&done, "odd");
    let log = log_text(&app, &step).await;
    assert!(
        log.contains("a\u{FFFD}b\n"),
        "a NUL byte is shown, not stored: {log:?}"
    );
    assert!(log.ends_with("done\n"));

    let tail = app
        .text(&format!("/api/v1/steps/{step}/logs?after=3"))
        .await;
    assert!(
        log.ends_with(&tail) && tail.len() < log.len() && !tail.is_empty(),
        "{tail:?}"
    );
    for bad in ["after=abc", "after=-1", "from=3"] {
        let response = app
            .get(&format!("/api/v1/steps/{step}/logs?{bad}"))
            .send()
            .await
            .unwrap();
        expect_problem(response, 400, "invalid-query").await;
    }
}

on_both_databases!(a_repository_value_never_runs_as_a_git_option);

/// `repo.ref`, `repo.sha` and `repo.clone_url` are handed to git, and so are the `remote`,
/// `ref` and `sha` settings of a pipeline's own `clone:` step: an option, a remote helper or a
/// local path in one of them is refused at submission, and lint agrees. (The clone script's own
/// defence, should a value get past this, is run against a real repository in the local
/// backend's tests.)
async fn a_repository_value_never_runs_as_a_git_option(db: Db) {
    let app = TestApp::spawn(db).await;
    let hostile = "--upload-pack=touch /tmp/pwned";
    let url = "https://example.com/acme/api.git";
    let config = json!([{"name": "ci", "content": "steps:\n  - name: a\n    image: alpine\n    commands: [ls]\n"}]);
    for (pointer, repo) in [
        ("/repo/ref", json!({"clone_url": url, "ref": hostile})),
        ("/repo/sha", json!({"clone_url": url, "sha": hostile})),
        (
            "/repo/clone_url",
            json!({"clone_url": hostile, "ref": "main"}),
        ),
        (
            "/repo/clone_url",
            json!({"clone_url": "ext::sh -c touch% /tmp/x"}),
        ),
        ("/repo/clone_url", json!({"clone_url": "file:///etc"})),
    ] {
        let response = app
            .submit_json(&json!({"configs": config, "repo": repo}))
            .await;
        let body = expect_problem(response, 422, "validation-failed").await;
        let errors = body["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1, "{body:#}");
        assert_eq!(errors[0]["pointer"], pointer, "{body:#}");
        assert!(!body.to_string().contains("upload-pack"), "{body:#}");
    }
    // Lint agrees with submission.
    let lint = app
        .post("/api/v1/lint")
        .json(&json!({"configs": config, "repo": {"clone_url": url, "ref": hostile}}))
        .send()
        .await
        .unwrap();
    let lint: Value = lint.json().await.unwrap();
    assert_eq!(lint["valid"], false, "{lint:#}");
    assert_eq!(lint["errors"][0]["pointer"], "/repo/ref", "{lint:#}");

    // A pipeline whose own clone step asks for the options, in the map and the list form.
    let settings = format!(
        "      remote: 'ext::sh -c touch% /tmp/x'\n      ref: '{hostile}'\n      sha: '--upload-pack=x'\n"
    );
    let steps = "steps:\n  - name: build\n    image: alpine\n    commands: [ls]\n";
    for (yaml, at) in [
        (
            format!(
                "clone:\n  git:\n    image: woodpeckerci/plugin-git\n    settings:\n{settings}{steps}"
            ),
            "/clone/git/settings",
        ),
        (
            format!(
                "clone:\n  - name: git\n    image: woodpeckerci/plugin-git\n    settings:\n{settings}{steps}"
            ),
            "/clone/0/settings",
        ),
    ] {
        let expected: Vec<(String, i64)> = [("remote", 5), ("ref", 6), ("sha", 7)]
            .iter()
            .map(|(key, line)| (format!("{at}/{key}"), *line))
            .collect();
        let found = |errors: &Value| -> Vec<(String, i64)> {
            errors
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        e["pointer"].as_str().unwrap().to_string(),
                        e["line"].as_i64().unwrap(),
                    )
                })
                .collect()
        };
        let body = expect_problem(app.submit_yaml(&yaml).await, 422, "validation-failed").await;
        assert_eq!(found(&body["errors"]), expected, "{body:#}");
        let lint: Value = app
            .post("/api/v1/lint")
            .header("content-type", "application/yaml")
            .body(yaml.clone())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(lint["valid"], false, "{lint:#}");
        assert_eq!(found(&lint["errors"]), expected, "{lint:#}");
        for answer in [body.to_string(), lint.to_string()] {
            assert!(!answer.contains("upload-pack"), "{answer}");
            assert!(!answer.contains("ext::"), "{answer}");
        }
    }
    assert_eq!(app.pipeline_count().await, 0, "nothing is stored");
}

/// Postgres only: SQLite locks the whole database, not a table, so nothing holds its API
/// readers without holding the engine too. The store's unit tests show the same on SQLite with
/// the API's connections taken directly.
mod api_readers_filling_their_pool_leave_the_engine_running {
    #[tokio::test]
    async fn postgres() {
        super::api_readers_filling_their_pool_leave_the_engine_running(super::common::Db::Postgres)
            .await
    }
}

/// API requests that hold every connection of the API's pool (label lists blocked on a locked
/// table) leave the engine its own: a step that outlives its lease several times renews it,
/// stores its log, and the pipeline succeeds, while the API cannot even read it.
async fn api_readers_filling_their_pool_leave_the_engine_running(db: Db) {
    use sqlx::Connection as _;
    use std::time::Duration;
    let app = TestApp::start(
        db,
        piculet::config::Settings {
            db_api_connections: Some("2".into()),
            db_read_timeout: Some("60s".into()),
            lease: Some("2s".into()),
            ..Default::default()
        },
        true,
    )
    .await;
    let p = submit_yaml(
        &app,
        "steps:\n  - name: ticking\n    image: alpine\n    commands:\n      - 'for i in $(seq 1 12); do echo tick $i; sleep 0.5; done'\n",
    )
    .await;
    let pid = id(&p);
    wait_step(&app, &pid, "ticking", "running", 30).await;

    let mut db_conn = sqlx::PgConnection::connect(&app.database_url)
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE pipeline_labels IN ACCESS EXCLUSIVE MODE")
        .execute(&mut db_conn)
        .await
        .unwrap();
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let request = app.get("/api/v1/pipelines?label=team=red");
            tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let starved = tokio::time::timeout(
        Duration::from_secs(1),
        app.get(&format!("/api/v1/pipelines/{pid}")).send(),
    )
    .await;
    assert!(starved.is_err(), "the API's connections are all taken");

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let (status,): (String,) = sqlx::query_as("SELECT status FROM pipelines WHERE id = $1")
            .bind(uuid::Uuid::parse_str(&pid).unwrap())
            .fetch_one(&mut db_conn)
            .await
            .unwrap();
        if status != "queued" && status != "running" {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "still {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, "success");
    let (claims,): (i32,) = sqlx::query_as("SELECT claims FROM workflows WHERE pipeline_id = $1")
        .bind(uuid::Uuid::parse_str(&pid).unwrap())
        .fetch_one(&mut db_conn)
        .await
        .unwrap();
    assert_eq!(claims, 1, "the lease was never lost and taken over");
    let readers_done = readers.iter().filter(|r| r.is_finished()).count();
    assert_eq!(readers_done, 0, "the API's readers were held all along");

    sqlx::raw_sql("COMMIT").execute(&mut db_conn).await.unwrap();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), 200);
    }
    let done = app.pipeline(&pid).await;
    assert_eq!(done["status"], "success", "{done:#}");
    let log = log_text(&app, &step_id(&done, "ticking")).await;
    assert!(
        log.contains("tick 1\n") && log.contains("tick 12\n"),
        "{log}"
    );
}
