//! The `piculet` binary: its offline commands (lint, render, settings, help, version), and its
//! client commands against a real server on both databases.

use crate::common;

use std::process::{Command, Output};

use common::{Db, TOKEN, TestApp, wait_finished, wait_step};

fn piculet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_piculet"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("run piculet")
}

/// The binary with a clean environment and these variables.
fn piculet_env(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_piculet"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(envs.iter().copied())
        .output()
        .expect("run piculet")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("piculet-cli-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn lint_accepts_a_valid_file() {
    let file = temp_file(
        ".woodpecker.yaml",
        "steps:\n  - name: test\n    image: alpine\n    commands: [echo hi]\n    environment:\n      TOKEN:\n        from_secret: token\n",
    );
    let out = piculet(&["lint", "--secret", "token", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Woodpecker's verdicts from the binary itself: its own CI's plugin steps with only an image
/// pass; a plugin step with `environment` is refused where the key is, in Woodpecker's words.
#[test]
fn lint_gives_woodpeckers_verdicts() {
    let fixtures = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/pipeline/testdata/woodpecker"
    );
    let accepted = format!("{fixtures}/accept/plugin-image-only.yaml");
    let out = piculet(&["lint", &accepted]);
    assert!(
        out.status.success() && text(&out.stdout).is_empty(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let refused = format!("{fixtures}/refuse/plugin-with-environment.yaml");
    let out = piculet(&["lint", &refused]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(&format!(
            "{refused}:9:5: step \"publish\" has both \"settings\" and \"environment\""
        )) && stdout.contains("Should not configure both `environment` and `settings`"),
        "{stdout}"
    );
}

#[test]
fn lint_applies_the_servers_limit_settings() {
    let file = temp_file(
        "ci.yaml",
        "steps:\n  a: {image: alpine, commands: [ls]}\n  b: {image: alpine, commands: [ls]}\n",
    );
    let path = file.to_str().unwrap();
    assert!(piculet(&["lint", path]).status.success());
    let out = piculet_env(&["lint", path], &[("PICULET_MAX_STEPS_PER_WORKFLOW", "1")]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stdout),
        format!(
            "{path}:2:3: workflow has 2 steps, more than the limit of 1 (PICULET_MAX_STEPS_PER_WORKFLOW)\n"
        )
    );
    let config = temp_file("piculet.toml", "max_steps_per_workflow = \"1\"\n");
    let out = piculet(&["lint", "--config", config.to_str().unwrap(), path]);
    assert_eq!(out.status.code(), Some(1), "the server's file counts too");
    let out = piculet_env(&["lint", path], &[("PICULET_MAX_NESTING_DEPTH", "0")]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "piculet: error: --max-nesting-depth (PICULET_MAX_NESTING_DEPTH): \"0\" is not a number from 4 to 256\n"
    );
}

/// With a Kubernetes backend, lint reports what the API server would refuse at its place in
/// the file; `render` refuses it the same way; a local backend runs no pods.
#[test]
fn lint_and_render_report_what_the_kubernetes_api_server_would_refuse() {
    let file = temp_file(
        "ci.yaml",
        "steps:\n  - name: build\n    image: alpine\n    commands: [make]\n    backend_options:\n      kubernetes:\n        tolerations:\n          - {key: key1, operator: Exists, value: value1}\n",
    );
    let path = file.to_str().unwrap();
    assert!(piculet(&["lint", path]).status.success(), "local backend");
    let k8s = [
        ("PICULET_BACKEND", "kubernetes"),
        ("PICULET_K8S_ALLOW_FROM_STEP", "tolerations"),
    ];
    let expected =
        format!("{path}:8:35: step \"build\": the Kubernetes API server would refuse its pod ");
    for args in [vec!["lint", path], vec!["render", path]] {
        let out = piculet_env(&args, &k8s);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stdout = text(&out.stdout);
        assert!(stdout.starts_with(&expected), "{args:?}: {stdout}");
        assert!(
            stdout.contains(": spec.tolerations[0].operator: Invalid value: \"value1\": value must be empty when `operator` is 'Exists'; change backend_options.kubernetes.tolerations[0].operator\n"),
            "{args:?}: {stdout}"
        );
    }
}

#[test]
fn lint_prints_every_error_with_its_place() {
    let file = temp_file(
        "build.yaml",
        "steps:\n  - name: test\n    image: alpine\n    comands: [echo hi]\n  - name: test\n    image: alpine\n    commands: [true]\n",
    );
    let out = piculet(&["lint", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let path = file.display().to_string();
    assert!(
        stdout.contains(&format!(
            "{path}:4:5: unknown key \"comands\", did you mean \"commands\"?"
        )),
        "{stdout}"
    );
    let errors = stdout
        .lines()
        .filter(|l| !l.contains(": warning: "))
        .count();
    assert!(errors >= 2, "every error, not just the first: {stdout}");
    for line in stdout.lines() {
        assert!(
            line.starts_with(&format!("{path}:")),
            "file:line:column: message — {line}"
        );
    }
}

/// As the server refuses a submission whose `from_secret` names a secret it does not carry,
/// so does lint; secrets are given as `submit` takes them, or by name alone.
#[test]
fn lint_checks_secrets_as_the_server_does() {
    let file = temp_file(
        "a.yaml",
        "steps:\n  - name: t\n    image: alpine\n    commands: [true]\n    environment:\n      X:\n        from_secret: nope\n",
    );
    let path = file.to_str().unwrap();
    let out = piculet(&["lint", path]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert_eq!(
        text(&out.stdout),
        format!("{path}:7:22: secret \"nope\" is not provided by the submission\n")
    );
    for given in ["nope", "nope=value"] {
        let out = piculet(&["lint", "--secret", given, path]);
        assert!(out.status.success(), "{given}: {}", text(&out.stdout));
    }
    let out = piculet(&["lint", "--secret", "other=x", path]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("\"nope\""));
}

#[test]
fn lint_of_a_missing_file_is_one_line() {
    let out = piculet(&["lint", "/nonexistent/pipeline.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("piculet: error: cannot read /nonexistent/pipeline.yaml"));
}

#[test]
fn bad_setting_stops_start_up_with_one_line() {
    let out = piculet(&["serve", "--max-workflows", "lots"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "piculet: error: --max-workflows (PICULET_MAX_WORKFLOWS): \"lots\" is not a number from 1 to 10000\n"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_piculet"))
        .args(["serve"])
        .env_clear()
        .env("PICULET_LISTEN", "0.0.0.0:8080")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("not a loopback address") && stderr.contains("PICULET_API_TOKENS"),
        "{stderr}"
    );
}

#[test]
fn config_file_errors_name_the_file() {
    let file = temp_file("piculet.toml", "lisen = \"127.0.0.1:1\"\n");
    let out = piculet(&["migrate", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!("piculet: error: config file {}", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains("lisen"), "{stderr}");
}

#[test]
fn serve_help_lists_every_setting() {
    let out = piculet(&["serve", "--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for setting in [
        "PICULET_CONFIG",
        "PICULET_LISTEN",
        "PICULET_DATABASE_URL",
        "PICULET_DATA_DIR",
        "PICULET_BACKEND",
        "PICULET_API_TOKENS",
        "PICULET_MAX_WORKFLOWS",
        "PICULET_PLATFORM",
        "PICULET_MAX_BODY_SIZE",
        "PICULET_SECRET_KEY",
        "PICULET_LOG_FORMAT",
        "PICULET_LOG",
        "PICULET_MAX_STEPS_PER_WORKFLOW",
        "PICULET_MAX_WORKFLOWS_PER_PIPELINE",
        "PICULET_MAX_STEPS_PER_PIPELINE",
        "PICULET_MAX_DEPENDENCIES",
        "PICULET_MAX_NESTING_DEPTH",
        "PICULET_MAX_STRING_LENGTH",
        "PICULET_MAX_LABELS",
        "PICULET_MAX_EVENTS_PER_PIPELINE",
        "PICULET_MAX_PLANNED_SIZE",
        "PICULET_MAX_SECRET_SIZE",
        "PICULET_MAX_CONCURRENCY_LIMIT",
        "PICULET_METRICS_CONCURRENCY_GROUPS",
        "PICULET_MAX_LABEL_FILTERS",
        "PICULET_ALLOWED_HOSTS",
        "PICULET_MAX_PLANNING",
        "PICULET_PLANNING_QUEUE_TIMEOUT",
        "PICULET_DB_READ_TIMEOUT",
        "PICULET_DB_WRITE_TIMEOUT",
        "PICULET_DB_API_CONNECTIONS",
        "PICULET_DB_ENGINE_CONNECTIONS",
        "PICULET_BODY_TIMEOUT",
    ] {
        assert!(help.contains(setting), "--help lists {setting}");
    }
    let top = text(&piculet(&["--help"]).stdout);
    for command in [
        "serve", "migrate", "openapi", "lint", "render", "submit", "list", "status", "events",
        "logs", "cancel", "retry",
    ] {
        assert!(top.contains(command), "--help lists {command}");
    }
    assert!(top.contains("Exit codes:"), "{top}");
}

/// A client command's help holds client flags only: no server or Kubernetes setting.
#[test]
fn client_help_is_short() {
    for command in [
        "submit", "list", "status", "events", "logs", "cancel", "retry", "lint",
    ] {
        let out = piculet(&[command, "--help"]);
        assert!(out.status.success());
        let help = text(&out.stdout);
        assert!(
            help.lines().count() < 60,
            "{command} --help has {} lines:\n{help}",
            help.lines().count()
        );
        for server_only in [
            "PICULET_LISTEN",
            "PICULET_K8S_",
            "--database-url",
            "--max-workflows",
        ] {
            assert!(
                !help.contains(server_only),
                "{command} --help shows {server_only}"
            );
        }
    }
    let submit = text(&piculet(&["submit", "--help"]).stdout);
    for flag in [
        "--label",
        "--name",
        "--idempotency-key",
        "--timeout",
        "--follow",
        "--server",
        "--token",
    ] {
        assert!(submit.contains(flag), "submit takes {flag}");
    }
    // The server's settings are no longer accepted before or after a client command.
    let out = piculet(&["submit", "--listen", "127.0.0.1:1", "x.yaml"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn version_and_openapi() {
    let out = piculet(&["--version"]);
    assert_eq!(
        text(&out.stdout),
        format!("piculet {}\n", env!("CARGO_PKG_VERSION"))
    );
    let out = piculet(&["openapi"]);
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["info"]["title"], "piculet");
}

#[test]
fn migrate_creates_the_embedded_database() {
    let dir = std::env::temp_dir().join(format!("piculet-migrate-{}", uuid::Uuid::now_v7()));
    let out = piculet(&["migrate", "--data-dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(dir.join("piculet.db").exists());
    let again = piculet(&["migrate", "--data-dir", dir.to_str().unwrap()]);
    assert!(
        again.status.success(),
        "migrations apply twice without harm"
    );
}

#[test]
fn render_prints_the_objects_as_yaml() {
    let file = temp_file(
        "ci.yaml",
        "services:\n  - name: db\n    image: postgres:16\nsteps:\n  - name: test\n    image: golang:1.22\n    commands: [go test]\n    environment:\n      T:\n        from_secret: t\n",
    );
    let out = piculet(&[
        "render",
        file.to_str().unwrap(),
        "--secret",
        "t=render-cli-secret",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    assert!(
        !yaml.contains("render-cli-secret"),
        "secret values are redacted"
    );
    let kinds: Vec<&str> = yaml
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .collect();
    assert_eq!(
        kinds,
        ["PersistentVolumeClaim", "Secret", "Service", "Pod", "Pod"]
    );
    assert_eq!(yaml.matches("---\n").count(), 5);
}

#[test]
fn render_applies_the_administrators_policy() {
    let file = temp_file(
        "ci.yaml",
        "steps:\n  - name: test\n    image: golang:1.22\n    commands: [go test]\n    backend_options:\n      kubernetes:\n        nodeSelector:\n          disk: ssd\n",
    );
    let path = file.to_str().unwrap();
    let out = piculet(&["render", path]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("policy: step \"test\": "), "{stdout}");
    assert!(stdout.contains("nodeSelector"), "{stdout}");
    let allowed = Command::new(env!("CARGO_BIN_EXE_piculet"))
        .args(["render", path])
        .env_clear()
        .env("PICULET_K8S_ALLOW_FROM_STEP", "nodeSelector")
        .output()
        .unwrap();
    assert!(allowed.status.success(), "{}", text(&allowed.stdout));
    assert!(text(&allowed.stdout).contains("disk: ssd"));
    let bad = Command::new(env!("CARGO_BIN_EXE_piculet"))
        .args(["render", path])
        .env_clear()
        .env("PICULET_K8S_SERVICE_ACCOUNT_OVERWRITE_ALLOWED", "(unclosed")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let stderr = text(&bad.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("PICULET_K8S_SERVICE_ACCOUNT_OVERWRITE_ALLOWED"),
        "{stderr}"
    );
}

/// The dry run shows the user a restricted pod runs as, so that a user can see why an image
/// that expects root behaves differently.
#[test]
fn render_shows_the_restricted_profiles_user() {
    let file = temp_file(
        "ci.yaml",
        "steps:\n  - name: test\n    image: golang:1.22\n    commands: [go test]\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_piculet"))
        .args(["render", file.to_str().unwrap()])
        .env_clear()
        .env("PICULET_K8S_POD_SECURITY", "restricted")
        .env("PICULET_K8S_RUN_AS_USER", "2000")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    for field in [
        "runAsUser: 2000",
        "runAsGroup: 1000",
        "fsGroup: 1000",
        "runAsNonRoot: true",
    ] {
        assert!(yaml.contains(field), "{field} in\n{yaml}");
    }
}

// ---- Client commands against a real server, on both databases -------------------------------

/// Runs a client command against `app` and returns its output; bounded, so that a command
/// that hangs fails the test instead of holding it.
async fn cli(app: &TestApp, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_piculet"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PICULET_SERVER", &app.base)
        .env("PICULET_TOKEN", TOKEN)
        .envs(envs.iter().copied())
        .kill_on_drop(true);
    tokio::time::timeout(std::time::Duration::from_secs(120), command.output())
        .await
        .unwrap_or_else(|_| panic!("piculet {args:?} did not end within 120s"))
        .expect("run piculet")
}

/// Two steps, the second failing with exit code 3, and a third skipped by that; a Docker-only
/// key draws a warning (`concurrency` is honoured, without one).
const FAILING: &str = "\
concurrency: 2
steps:
  - name: build
    image: alpine
    shm_size: 64m
    commands: [echo built]
  - name: test
    image: alpine
    commands: [echo testing, exit 3]
  - name: deploy
    image: alpine
    commands: [echo never]
";

const PASSING: &str = "steps:\n  - name: hello\n    image: alpine\n    commands: [echo hello]\n";

const LONG: &str = "steps:\n  - name: wait\n    image: alpine\n    commands: [sleep 60]\n";

fn id_of(out: &Output) -> String {
    let id = text(&out.stdout).trim().to_string();
    assert!(
        uuid::Uuid::parse_str(&id).is_ok(),
        "an id on stdout: {id:?}, stderr {}",
        text(&out.stderr)
    );
    id
}

async fn submit_following(db: Db) {
    let app = TestApp::spawn(db).await;
    let file = temp_file("ci.yaml", FAILING);
    let path = file.to_str().unwrap();
    let out = cli(
        &app,
        &[
            "submit", path, "--follow", "--label", "team=a", "--name", "nightly",
        ],
        &[],
    )
    .await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("build | built\n"), "{stdout}");
    assert!(stdout.contains(" test | testing\n"), "{stdout}");
    assert!(!stdout.contains("never"), "{stdout}");
    assert!(
        stderr.contains(&format!("{path}:5:5: warning: \"shm_size\"")),
        "the pipeline's warnings, placed in the file: {stderr}"
    );
    let line = |start: &str| {
        stderr
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("a line starting {start:?} in {stderr}"))
            .to_string()
    };
    let build = line("✓ build");
    assert!(
        build.contains("success in ") && build.ends_with('s'),
        "{build}"
    );
    let test = line("✗ test");
    assert!(
        test.contains("failure in ") && test.ends_with("(exit code 3)"),
        "{test}"
    );
    assert!(line("- deploy").contains("skipped"), "{stderr}");
    for l in stderr.lines() {
        assert!(
            l.matches("exit").count() <= 1,
            "the exit code said once: {l}"
        );
    }
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour off a terminal: {stderr:?}"
    );
    // The summary comes last and names the pipeline.
    let summary = line("pipeline ");
    assert!(
        summary.contains("\"nightly\": failure") && summary.contains(" in "),
        "{summary}"
    );
    let id = summary.split(' ').nth(1).unwrap();
    let stored = app.pipeline(id).await;
    assert_eq!(stored["labels"], serde_json::json!({"team": "a"}));
    assert_eq!(stored["name"], "nightly");
}

async fn submit_options(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let file = temp_file("ci.yaml", PASSING);
    let path = file.to_str().unwrap();
    let args = [
        "submit",
        path,
        "--idempotency-key",
        "build-42",
        "--timeout",
        "1h",
    ];
    let first = cli(&app, &args, &[]).await;
    let id = id_of(&first);
    assert_eq!(
        text(&first.stderr),
        format!("piculet: submitted pipeline {id}\n")
    );
    assert_eq!(
        id_of(&cli(&app, &args, &[]).await),
        id,
        "the same key, the same pipeline"
    );
    assert_eq!(app.pipeline_count().await, 1);

    let out = cli(&app, &["submit", path, "--timeout", "soon"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("piculet: error: ") && last.ends_with("(422)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("/timeout"),
        "the refusal names the field: {stderr}"
    );

    let bad = temp_file(
        "bad.yaml",
        "steps:\n  - name: x\n    image: alpine\n    comands: [ls]\n",
    );
    let out = cli(&app, &["submit", bad.to_str().unwrap()], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(&format!("{}:4:5: unknown key \"comands\"", bad.display())),
        "{}",
        text(&out.stderr)
    );
}

async fn list_filters_and_pages(db: Db) {
    let app = TestApp::spawn(db).await;
    let passing = temp_file("ok.yaml", PASSING);
    let failing = temp_file("ci.yaml", FAILING);
    let mut ids = Vec::new();
    for (file, team) in [(&passing, "a"), (&failing, "a"), (&passing, "b")] {
        let label = format!("team={team}");
        let out = cli(
            &app,
            &["submit", file.to_str().unwrap(), "--label", &label],
            &[],
        )
        .await;
        ids.push(id_of(&out));
    }
    for id in &ids {
        wait_finished(&app, id, 60).await;
    }
    let rows = |out: &Output| -> Vec<serde_json::Value> {
        text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let ids_of = |rows: &[serde_json::Value]| -> Vec<String> {
        rows.iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    let out = cli(&app, &["list", "--json", "--label", "team=a"], &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        ids_of(&rows(&out)),
        [ids[1].clone(), ids[0].clone()],
        "newest first"
    );
    let out = cli(&app, &["list", "--json", "--status", "failure,error"], &[]).await;
    assert_eq!(ids_of(&rows(&out)), [ids[1].clone()]);

    // Pages: the cursor to go on with is said on stderr.
    let out = cli(&app, &["list", "--json", "--limit", "2"], &[]).await;
    assert_eq!(ids_of(&rows(&out)), [ids[2].clone(), ids[1].clone()]);
    let stderr = text(&out.stderr);
    let cursor = stderr
        .trim()
        .strip_prefix("piculet: more pipelines: add --cursor ")
        .unwrap_or_else(|| panic!("{stderr}"));
    let out = cli(
        &app,
        &["list", "--json", "--limit", "2", "--cursor", cursor],
        &[],
    )
    .await;
    assert_eq!(ids_of(&rows(&out)), [ids[0].clone()]);

    // The table: a header, then one row per pipeline with its status and labels.
    let out = cli(&app, &["list", "--label", "team=b"], &[]).await;
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(
        lines[0].starts_with("ID ") && lines[0].contains("STATUS"),
        "{table}"
    );
    assert!(
        lines[1].starts_with(&format!("{}  success", ids[2])),
        "{table}"
    );
    assert!(lines[1].ends_with("team=b"), "{table}");

    let out = cli(&app, &["list", "--status", "bogus"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
}

async fn list_watch(db: Db) {
    use tokio::io::AsyncBufReadExt as _;
    let app = TestApp::spawn(db).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_piculet"))
        .args(["list", "--watch", "--json", "--interval", "100ms"])
        .env_clear()
        .env("PICULET_SERVER", &app.base)
        .env("PICULET_TOKEN", TOKEN)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let file = temp_file("ok.yaml", PASSING);
    let id = id_of(&cli(&app, &["submit", file.to_str().unwrap()], &[]).await);
    // Every status the watch sees is printed, once each, until the pipeline's last.
    let mut statuses = Vec::new();
    let seen = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let row: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(row["id"], id.as_str());
            statuses.push(row["status"].as_str().unwrap().to_string());
            if row["status"] == "success" {
                break;
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "the watch printed {statuses:?}");
    let mut unique = statuses.clone();
    unique.dedup();
    assert_eq!(unique, statuses, "a row only when the status changes");
    child.kill().await.unwrap();
}

async fn status_events_and_logs(db: Db) {
    let app = TestApp::spawn(db).await;
    let failing = temp_file("ci.yaml", FAILING);
    let id = id_of(&cli(&app, &["submit", failing.to_str().unwrap()], &[]).await);
    let p = wait_finished(&app, &id, 60).await;
    let passing = temp_file("ok.yaml", PASSING);
    let ok = id_of(&cli(&app, &["submit", passing.to_str().unwrap()], &[]).await);
    wait_finished(&app, &ok, 60).await;

    let out = cli(&app, &["status", &id], &[]).await;
    assert_eq!(out.status.code(), Some(0), "without --exit-status, 0");
    let table = text(&out.stdout);
    assert!(
        table.starts_with(&format!("pipeline {id} \"{}\": failure", failing.display())),
        "{table}"
    );
    let test = table.lines().find(|l| l.contains(" test  ")).unwrap();
    assert!(
        test.trim_start().starts_with("✗ failure") && test.ends_with("  exit code 3"),
        "{test}"
    );
    assert_eq!(
        cli(&app, &["status", &id, "--exit-status"], &[])
            .await
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        cli(&app, &["status", &ok, "--exit-status"], &[])
            .await
            .status
            .code(),
        Some(0)
    );
    let json = cli(&app, &["status", &ok, "--json"], &[]).await;
    let body: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(body["status"], "success");

    let out = cli(&app, &["events", &id], &[]).await;
    assert_eq!(out.status.code(), Some(0));
    let events = text(&out.stdout);
    let last = events.lines().last().unwrap();
    assert!(
        last.contains("pipeline  failure"),
        "the pipeline's end comes last: {events}"
    );
    assert!(
        events
            .lines()
            .any(|l| l.contains("step      failure    test  exit code 3")),
        "{events}"
    );
    let out = cli(&app, &["events", &id, "--exit-status", "--json"], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    for line in text(&out.stdout).lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(event["pipeline_id"], id.as_str());
    }

    let step = common::step_id(&p, "test");
    let out = cli(&app, &["logs", &step], &[]).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("testing\n"));
    let out = cli(&app, &["logs", &step, "--follow"], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("testing\n"));
    assert_eq!(
        text(&out.stderr),
        format!("piculet: step {step} failure: exit code 3\n"),
        "a failed step says why"
    );
    let out = cli(
        &app,
        &["logs", &uuid::Uuid::now_v7().to_string(), "--follow"],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.ends_with("(404)\n"), "{stderr}");
}

async fn cancel_and_retry(db: Db) {
    let app = TestApp::spawn(db).await;
    let file = temp_file("long.yaml", LONG);
    let id = id_of(&cli(&app, &["submit", file.to_str().unwrap()], &[]).await);
    wait_step(&app, &id, "wait", "running", 60).await;
    let out = cli(&app, &["cancel", &id], &[]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        format!("{id}: canceling\n"),
        "not `running`"
    );
    let out = cli(&app, &["cancel", &id, "--wait"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{id}: canceled\n"));
    let out = cli(&app, &["cancel", &id], &[]).await;
    assert_eq!(text(&out.stdout), format!("{id}: canceled\n"), "idempotent");

    let out = cli(&app, &["retry", &id], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let again = id_of(&out);
    assert_ne!(again, id);
    assert_eq!(app.pipeline(&again).await["retry_of"], id.as_str());
    let out = cli(&app, &["cancel", &again], &[]).await;
    assert!(out.status.success());

    let passing = temp_file("ok.yaml", PASSING);
    let ok = id_of(&cli(&app, &["submit", passing.to_str().unwrap()], &[]).await);
    wait_finished(&app, &ok, 60).await;
    let out = cli(&app, &["retry", &ok, "--follow"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("hello | hello\n"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("✓ hello success in "),
        "{}",
        text(&out.stderr)
    );
}

async fn errors_and_colour(db: Db) {
    let app = TestApp::spawn_api(db).await;
    let file = temp_file("ok.yaml", PASSING);
    let path = file.to_str().unwrap();
    for (args, envs) in [
        (vec!["status", "not-an-id"], vec![]),
        (
            vec!["list"],
            vec![("PICULET_TOKEN", "wrong-token-0123456789")],
        ),
        (vec!["list"], vec![("PICULET_SERVER", "http://127.0.0.1:1")]),
        (vec!["submit", "/nonexistent.yaml"], vec![]),
        (
            vec!["status", "0193a5c4-6a5e-7cc0-a7e1-3f1b2f7d9e10"],
            vec![],
        ),
    ] {
        let out = cli(&app, &args, &envs).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(stderr.starts_with("piculet: error: "), "{args:?}: {stderr}");
    }

    let id = id_of(&cli(&app, &["submit", path], &[]).await);
    let plain = cli(&app, &["status", &id], &[]).await;
    assert!(!text(&plain.stdout).contains('\u{1b}'));
    let forced = cli(&app, &["status", &id], &[("CLICOLOR_FORCE", "1")]).await;
    assert!(
        text(&forced.stdout).contains("\u{1b}["),
        "colour when forced"
    );
    let always = cli(&app, &["status", &id, "--color", "always"], &[]).await;
    assert!(
        text(&always.stdout).contains("\u{1b}["),
        "colour with --color always"
    );
    let no_color = cli(
        &app,
        &["status", &id],
        &[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")],
    )
    .await;
    assert_eq!(text(&no_color.stdout), text(&plain.stdout), "NO_COLOR wins");
}

on_both_databases!(
    submit_following,
    submit_options,
    list_filters_and_pages,
    list_watch,
    status_events_and_logs,
    cancel_and_retry,
    errors_and_colour,
);

/// `piculet openapi | head -1`: the reader goes away mid-output, and the command ends as Unix
/// tools do (by SIGPIPE), without a panic on stderr.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let mut child = Command::new(env!("CARGO_BIN_EXE_piculet"))
        .arg("openapi")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The document is larger than a pipe's buffer: closing the read end makes a write fail.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(13), "{:?}", out.status);
}
