//! The `piculet` binary: lint, settings, help, version.

use std::process::{Command, Output};

fn piculet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_piculet"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
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
    let out = piculet(&["lint", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn lint_applies_the_limit_settings() {
    let file = temp_file(
        "ci.yaml",
        "steps:\n  a: {image: alpine, commands: [ls]}\n  b: {image: alpine, commands: [ls]}\n",
    );
    let path = file.to_str().unwrap();
    assert!(piculet(&["lint", path]).status.success());
    let out = piculet(&["lint", "--max-steps-per-workflow", "1", path]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stdout),
        format!(
            "{path}:2:3: workflow has 2 steps, more than the limit of 1 (PICULET_MAX_STEPS_PER_WORKFLOW)\n"
        )
    );
    let out = piculet(&["lint", "--max-nesting-depth", "0", path]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "piculet: error: --max-nesting-depth (PICULET_MAX_NESTING_DEPTH): \"0\" is not a number from 4 to 256\n"
    );
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

#[test]
fn lint_checks_secrets_only_when_told_which_exist() {
    let file = temp_file(
        "a.yaml",
        "steps:\n  - name: t\n    image: alpine\n    commands: [true]\n    environment:\n      X:\n        from_secret: nope\n",
    );
    let path = file.to_str().unwrap();
    assert!(piculet(&["lint", path]).status.success());
    let out = piculet(&["lint", "--secret", "other", path]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("nope"));
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
    let out = piculet(&["--config", file.to_str().unwrap(), "migrate"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!("piculet: error: config file {}", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains("lisen"), "{stderr}");
}

#[test]
fn help_lists_every_setting() {
    let out = piculet(&["--help"]);
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
    for command in ["serve", "migrate", "openapi", "lint"] {
        assert!(help.contains(command), "--help lists {command}");
    }
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
