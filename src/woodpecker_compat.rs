//! Woodpecker compatibility, held to the parser: the files of `pipeline/testdata/woodpecker/`
//! (Woodpecker's schema fixtures and linter cases, written anew) get Woodpecker's verdict from
//! `piculet lint`, and README's "Woodpecker compatibility" table says of every key what the
//! parser does with it.

use std::path::{Path, PathBuf};

use crate::client::submission_from_files;
use crate::pipeline::{Diagnostic, Limits, Report};

/// What the submission says, as a CI server would: every `when` condition of the fixtures can
/// be evaluated (none is met by default), so that a warning means a key piculet cannot honour.
fn variables() -> Vec<(String, String)> {
    [
        ("CI_PIPELINE_EVENT", "push"),
        ("CI_COMMIT_BRANCH", "main"),
        ("CI_COMMIT_REF", "refs/heads/main"),
        ("CI_REPO", "acme/app"),
        ("CI_SYSTEM_HOST", "ci.example.com"),
        ("CI_PIPELINE_FILES", r#"["src/main.rs"]"#),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// `piculet lint FILE…`, as the CLI runs it (no server settings: the defaults).
fn lint(files: &[PathBuf]) -> Report {
    let submission = submission_from_files(files, &variables(), &[]).expect("readable fixture");
    submission.lint("linux/amd64", &Limits::default())
}

fn fixtures(folder: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/pipeline/testdata/woodpecker")
        .join(folder);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

/// The `# KEY: value` lines of a fixture.
fn expected(file: &Path, key: &str) -> Vec<String> {
    let prefix = format!("# {key}:");
    std::fs::read_to_string(file)
        .expect("readable fixture")
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.strip_prefix(' ').unwrap_or(v).to_string())
        .collect()
}

fn place(d: &Diagnostic) -> String {
    match (d.line, d.column) {
        (Some(l), Some(c)) => format!("{} at {l}:{c}", d.pointer),
        _ => format!("{} at ?", d.pointer),
    }
}

fn describe(report: &Report) -> String {
    let list = |ds: &[Diagnostic]| {
        ds.iter()
            .map(|d| format!("  {}: {}", place(d), d.message))
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "errors:\n{}\nwarnings:\n{}",
        list(&report.errors),
        list(&report.warnings)
    )
}

#[test]
fn what_woodpecker_accepts_piculet_accepts() {
    for file in fixtures("accept") {
        let report = lint(std::slice::from_ref(&file));
        let mut warnings: Vec<String> = report.warnings.iter().map(|d| d.pointer.clone()).collect();
        warnings.sort();
        let mut want = expected(&file, "warning");
        want.sort();
        assert!(
            report.errors.is_empty() && warnings == want,
            "{}: expected no error and warnings at {want:?}; got\n{}",
            file.display(),
            describe(&report)
        );
        assert!(
            !expected(&file, "woodpecker").is_empty(),
            "{}: say which of Woodpecker's cases it stands for",
            file.display()
        );
    }
}

#[test]
fn what_woodpecker_refuses_piculet_refuses_where_it_is() {
    let mut wrong = Vec::new();
    for folder in ["refuse", "differ"] {
        for file in fixtures(folder) {
            let report = lint(std::slice::from_ref(&file));
            let mut errors: Vec<String> = report.errors.iter().map(place).collect();
            errors.sort();
            let mut want = expected(&file, "error");
            want.sort();
            if want.is_empty() || errors != want {
                wrong.push(format!(
                    "{}: expected errors at {want:?}; got\n{}",
                    file.display(),
                    describe(&report)
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

/// One row of README's "Woodpecker compatibility" table.
struct Row {
    key: String,
    verdict: Verdict,
    example: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Honoured,
    Warned,
    Refused,
}

/// The text between backticks of a table cell.
fn code(cell: &str) -> Option<String> {
    let cell = cell.trim();
    Some(cell.strip_prefix('`')?.strip_suffix('`')?.to_string())
}

fn compatibility_table() -> Vec<Row> {
    let readme = include_str!("../README.md");
    let section = readme
        .split("\n## Woodpecker compatibility\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README has a \"Woodpecker compatibility\" section");
    let mut rows = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").collect();
        let [key, piculet, example] = cells.as_slice() else {
            panic!("a row needs a key, piculet's verdict and an example: {line}");
        };
        let word = piculet.split(':').next().unwrap_or_default().trim();
        let verdict = match word {
            "honoured" => Verdict::Honoured,
            "warned" => Verdict::Warned,
            "refused" => Verdict::Refused,
            other => panic!("unknown verdict {other:?} in: {line}"),
        };
        rows.push(Row {
            key: code(key).unwrap_or_else(|| panic!("key in backticks: {line}")),
            verdict,
            example: code(example).unwrap_or_else(|| panic!("example in backticks: {line}")),
        });
    }
    assert!(rows.len() > 100, "the table has only {} rows", rows.len());
    rows
}

/// The workflow an example stands for (see README: a workflow key's example is a workflow,
/// a `steps[]` key's one step, a `services[]` key's one service).
fn workflow_of(row: &Row) -> String {
    const STEP: &str = "{name: s, image: alpine, commands: [true]}";
    if row.key.starts_with("steps[]") {
        format!("steps: [{}]\n", row.example)
    } else if row.key.starts_with("services[]") {
        format!("services: [{}]\nsteps: [{STEP}]\n", row.example)
    } else if row.example.contains("steps:") {
        format!("{}\n", row.example)
    } else {
        let rest = row
            .example
            .strip_prefix('{')
            .unwrap_or_else(|| panic!("a workflow key's example is a flow map: {}", row.key));
        format!("{{steps: [{STEP}], {rest}\n")
    }
}

/// The last two named segments of a key (`steps[].when.path.include` → `include`, `path`):
/// a diagnostic about the key names one of them. Empty for a placeholder such as `<other>`.
fn last_segments(key: &str) -> Vec<&str> {
    let segments: Vec<&str> = key.rsplit('.').take(2).collect();
    if segments[0].starts_with('<') || segments[0].starts_with('$') {
        return Vec::new();
    }
    segments.iter().map(|s| s.trim_end_matches("[]")).collect()
}

#[test]
fn the_compatibility_table_says_what_the_parser_does() {
    let dir = std::env::temp_dir().join(format!("piculet-compat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let build = dir.join("build.yaml");
    std::fs::write(
        &build,
        "steps: [{name: b, image: alpine, commands: [true]}]\n",
    )
    .expect("write");
    let example = dir.join("example.yaml");
    let mut wrong = Vec::new();
    for row in compatibility_table() {
        let yaml = workflow_of(&row);
        std::fs::write(&example, &yaml).expect("write");
        let report = lint(&[build.clone(), example.clone()]);
        let named = last_segments(&row.key);
        let mentions = |d: &Diagnostic| {
            named.is_empty()
                || named
                    .iter()
                    .any(|k| d.pointer.contains(k) || d.message.contains(k))
        };
        let ok = match row.verdict {
            Verdict::Honoured => report.errors.is_empty() && report.warnings.is_empty(),
            Verdict::Warned => report.errors.is_empty() && report.warnings.iter().any(mentions),
            Verdict::Refused => report.errors.iter().any(mentions),
        };
        if !ok {
            wrong.push(format!(
                "`{}` is {:?} in README, but its example\n{yaml}gives\n{}",
                row.key,
                row.verdict,
                describe(&report)
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

#[test]
fn every_key_the_parser_knows_has_a_row() {
    use crate::pipeline::schema::*;
    let keys: Vec<String> = compatibility_table().into_iter().map(|r| r.key).collect();
    let k8s = "steps[].backend_options.kubernetes.";
    // Each list of schema.rs, and where its keys are written. A new list needs a line here.
    let lists: &[(&str, &[&str])] = &[
        ("", WORKFLOW_KEYS),
        ("steps[].", STEP_KEYS),
        ("steps[].", DOCKER_ONLY_STEP_KEYS),
        ("services[].", SERVICE_KEYS),
        ("steps[].when.", STEP_WHEN_KEYS),
        ("when.", WORKFLOW_WHEN_KEYS),
        ("steps[].when.branch.", INCLUDE_EXCLUDE_KEYS),
        ("steps[].when.path.", PATH_KEYS),
        ("workspace.", WORKSPACE_KEYS),
        ("depends_on[].", DEPENDENCY_KEYS),
        ("steps[].depends_on[].", STEP_DEPENDENCY_KEYS),
        ("concurrency.", CONCURRENCY_KEYS),
        ("steps[].backend_options.", BACKEND_KEYS),
        (k8s, KUBERNETES_KEYS),
        (
            "steps[].backend_options.kubernetes.resources.",
            RESOURCES_KEYS,
        ),
        (
            "steps[].backend_options.kubernetes.tolerations[].",
            TOLERATION_KEYS,
        ),
        (
            "steps[].backend_options.kubernetes.securityContext.",
            SECURITY_CONTEXT_KEYS,
        ),
        (
            "steps[].backend_options.kubernetes.securityContext.seccompProfile.",
            SEC_PROFILE_KEYS,
        ),
        (
            "steps[].backend_options.kubernetes.securityContext.capabilities.",
            CAPABILITIES_KEYS,
        ),
        (
            "steps[].backend_options.kubernetes.secrets[].",
            SECRET_REF_KEYS,
        ),
        (
            "steps[].backend_options.kubernetes.secrets[].target.",
            SECRET_TARGET_KEYS,
        ),
        (
            "steps[].backend_options.kubernetes.affinity.",
            AFFINITY_KEYS,
        ),
    ];
    let missing: Vec<String> = lists
        .iter()
        .flat_map(|(prefix, list)| list.iter().map(move |k| format!("{prefix}{k}")))
        .filter(|k| !keys.contains(k))
        .collect();
    assert!(
        missing.is_empty(),
        "keys without a row in README's compatibility table: {missing:?}"
    );
}
