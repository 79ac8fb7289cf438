//! A submission as clients send it, and its conversion into a planned pipeline ready to store:
//! checked, planned, secret values sealed and removed from what is kept.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{SubsecRound as _, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::model::{Status, StepKind};
use crate::pipeline::diagnostic::MAX_PER_CONFIG;
use crate::pipeline::limits::{self, over};
use crate::pipeline::text::{NUL_REFUSAL, has_nul, too_long};
use crate::pipeline::{self, Context, Diagnostic, Limits, RepoSpec, Report, Source, SourceContent};
use crate::run::{RegistryCredential, Repo, Run, Sealed, SecretValue};
use crate::secrets::SecretBox;
use crate::store::{NewPipeline, NewStep, NewWorkflow};

/// The name diagnostics carry for problems of the submission itself, not of a config.
pub const SUBMISSION: &str = "submission";

/// Longest label key and value, in bytes: past the label keys and values anyone stores, within
/// what a database index entry holds (Postgres: about 2.7 KB), and the same bounds a list's
/// label filter has.
pub const MAX_LABEL_KEY_BYTES: usize = 256;
pub const MAX_LABEL_VALUE_BYTES: usize = 1024;

/// A pipeline submission: one or more pipeline files, or one already-parsed pipeline, with the
/// variables, secrets and metadata of the run.
#[derive(Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "acme/api #42",
    "configs": [{"name": "build", "content": "steps:\n  - name: test\n    image: golang:1.22\n    commands: [go test ./...]\n"}],
    "variables": {"CI_COMMIT_BRANCH": "main", "CI_PIPELINE_EVENT": "push"},
    "secrets": [{"name": "registry_password", "value": "s3cr3t"}],
    "labels": {"project": "acme/api"},
    "timeout": "1h"
}))]
pub struct Submission {
    /// A name for people; defaults to the first config's name.
    pub name: Option<String>,
    /// Pipeline files (YAML or JSON text), one workflow each (or one per matrix element).
    #[serde(default)]
    pub configs: Vec<ConfigFile>,
    /// One already-parsed pipeline, instead of `configs`.
    #[schema(value_type = Option<Object>)]
    #[serde(default, deserialize_with = "pipeline_object")]
    pub pipeline: Option<serde_json::Value>,
    /// Submission variables (`CI_COMMIT_BRANCH`, `CI_PIPELINE_EVENT`, …): `when` conditions
    /// match against them, `${NAME}` substitutes them, and steps see them.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// Secret values, referenced from the pipeline with `from_secret`. Never stored in
    /// plaintext, never returned.
    #[serde(default)]
    pub secrets: Vec<SecretValue>,
    /// Registry credentials for pulling step images.
    #[serde(default)]
    pub registries: Vec<RegistryCredential>,
    /// A repository to clone into the workspace by an implicit first step `clone`.
    pub repo: Option<Repo>,
    /// Free metadata; `GET /pipelines?label=k=v` filters on it.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The Kubernetes namespace to run in, where the administrator allows it.
    pub namespace: Option<String>,
    /// The longest the whole pipeline may run, e.g. `1h`.
    pub timeout: Option<String>,
    /// The platform (`linux/arm64`) when the workflow does not name one.
    pub platform: Option<String>,
}

/// `pipeline` is an object (a pipeline as a file parses into) or absent: another JSON type is
/// a wrong type of the submission, refused with its pointer like any other.
fn pipeline_object<'de, D>(deserializer: D) -> Result<Option<serde_json::Value>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::{Error, Unexpected};
    use serde_json::Value;
    let value = Option::<Value>::deserialize(deserializer)?;
    let unexpected = match &value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(_)) => return Ok(value),
        Some(Value::Array(_)) => Unexpected::Seq,
        Some(Value::Bool(b)) => Unexpected::Bool(*b),
        Some(Value::Number(_)) => Unexpected::Other("integer or floating point"),
        Some(Value::String(s)) => Unexpected::Str(s),
    };
    Err(D::Error::invalid_type(unexpected, &"a pipeline object"))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The workflow's name; other workflows refer to it in `depends_on`.
    pub name: String,
    /// The pipeline file, YAML or JSON.
    pub content: String,
}

// Debug output must never carry secret values: they end up in logs.
impl fmt::Debug for Submission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Submission")
            .field("name", &self.name)
            .field("configs", &self.configs.len())
            .field(
                "secrets",
                &self.secrets.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// A submission as it is kept with its pipeline (the `submission` column): what its workflows
/// run with ([`Run`], whose keys are the submission's own) and what a retry submits again. The
/// secret values and registry credentials are sealed apart ([`Sealed`]).
///
/// It reads what every version kept: the keys are the submission's own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    pub name: Option<String>,
    #[serde(default)]
    pub configs: Vec<ConfigFile>,
    #[serde(default)]
    pub pipeline: Option<serde_json::Value>,
    #[serde(flatten)]
    pub run: Run,
    /// The names of the secrets given, for whoever reads the database; the values are sealed.
    #[serde(default)]
    pub secrets: Vec<KeptSecret>,
    /// The registries given, without their passwords (sealed with the rest of them).
    #[serde(default)]
    pub registries: Vec<KeptRegistry>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub platform: Option<String>,
}

/// A secret of a [`Kept`] submission: its name only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptSecret {
    pub name: String,
}

/// A registry of a [`Kept`] submission: no password.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptRegistry {
    pub address: String,
    pub username: String,
}

impl Submission {
    /// A submission of one pipeline file, as sent with `Content-Type: application/yaml`.
    pub fn from_file(content: String) -> Submission {
        Submission {
            configs: vec![ConfigFile {
                name: "pipeline".into(),
                content,
            }],
            ..Submission::default()
        }
    }

    fn sources(&self) -> Vec<Source> {
        let mut sources: Vec<Source> = self
            .configs
            .iter()
            .map(|c| Source {
                name: c.name.clone(),
                content: SourceContent::Text(c.content.clone()),
            })
            .collect();
        if let Some(value) = &self.pipeline {
            sources.push(Source {
                name: "pipeline".into(),
                content: SourceContent::Value(value.clone()),
            });
        }
        sources
    }

    fn context(&self, default_platform: &str, limits: &Limits) -> Context {
        Context {
            limits: limits.clone(),
            variables: self.variables.clone(),
            secret_names: self.secrets.iter().map(|s| s.name.clone()).collect(),
            check_secrets: true,
            platform: self
                .platform
                .clone()
                .unwrap_or_else(|| default_platform.to_string()),
            repo: self.repo.as_ref().map(|r| RepoSpec {
                clone_url: r.clone_url.clone(),
                r#ref: r.git_ref.clone().unwrap_or_default(),
                sha: r.sha.clone().unwrap_or_default(),
            }),
        }
    }

    /// Problems of the submission itself, outside its pipeline files.
    fn check(&self, limits: &Limits) -> Vec<Diagnostic> {
        let mut errors = Vec::new();
        let mut error = |pointer: String, message: String| {
            errors.push(Diagnostic {
                config: SUBMISSION.into(),
                pointer,
                line: None,
                column: None,
                message,
            })
        };
        match (self.configs.is_empty(), self.pipeline.is_some()) {
            (true, false) => error(
                String::new(),
                "give the pipeline as `configs` (files) or `pipeline` (an object)".into(),
            ),
            (false, true) => error(
                "/pipeline".into(),
                "give either `configs` or `pipeline`, not both".into(),
            ),
            _ => {}
        }
        for problem in self.text_problems(limits) {
            error(problem.0, problem.1);
        }
        let mut config_names = BTreeSet::new();
        for (i, c) in self.configs.iter().enumerate() {
            if c.name.trim().is_empty() {
                error(format!("/configs/{i}/name"), "a config needs a name".into());
            } else if !config_names.insert(c.name.as_str()) {
                error(
                    format!("/configs/{i}/name"),
                    format!("config name {:?} is used twice", c.name),
                );
            }
        }
        let mut secret_names = BTreeSet::new();
        for (i, s) in self.secrets.iter().enumerate() {
            if s.name.is_empty() {
                error(format!("/secrets/{i}/name"), "a secret needs a name".into());
            } else if !secret_names.insert(s.name.as_str()) {
                error(
                    format!("/secrets/{i}/name"),
                    format!("secret {:?} is given twice", s.name),
                );
            }
        }
        if let Some(timeout) = self.timeout.as_ref().filter(|t| !has_nul(t)) {
            match humantime::parse_duration(timeout) {
                Ok(d) if d.as_secs() > 0 => {}
                _ => error(
                    "/timeout".into(),
                    format!("{timeout:?} is not a duration; write e.g. 30m or 1h"),
                ),
            }
        }
        if let Some(ns) = self.namespace.as_ref().filter(|n| !has_nul(n))
            && !is_dns_label(ns)
        {
            error(
                "/namespace".into(),
                format!(
                    "{ns:?} is not a Kubernetes namespace name (lowercase letters, digits and '-', at most 63)"
                ),
            );
        }
        if let Some(platform) = self.platform.as_ref().filter(|p| !has_nul(p))
            && platform
                .split_once('/')
                .is_none_or(|(os, arch)| os.is_empty() || arch.is_empty())
        {
            error(
                "/platform".into(),
                format!("{platform:?} is not OS/ARCH, e.g. linux/arm64"),
            );
        }
        let secret_bytes = self
            .secrets
            .iter()
            .map(|s| s.value.len())
            .chain(self.registries.iter().map(|r| r.password.len()))
            .fold(0usize, usize::saturating_add);
        if secret_bytes > limits.secret_bytes {
            error(
                "/secrets".into(),
                format!(
                    "the secret values and registry passwords are {secret_bytes} bytes together, {}",
                    over(limits.secret_bytes, limits::SECRET_SIZE)
                ),
            );
        }
        if self.labels.len() > limits.labels {
            error(
                "/labels".into(),
                format!(
                    "the submission has {} labels, {}",
                    self.labels.len(),
                    over(limits.labels, limits::LABELS)
                ),
            );
        }
        for (key, value) in &self.labels {
            let pointer = format!("/labels/{}", escape_pointer(key));
            if key.len() > MAX_LABEL_KEY_BYTES {
                error(
                    pointer,
                    format!(
                        "a label key of {} bytes is longer than {MAX_LABEL_KEY_BYTES}; labels are \
                         for short names such as project=acme/api",
                        key.len()
                    ),
                );
            } else if key.is_empty() || key.contains('=') {
                error(
                    pointer,
                    format!("label key {key:?} must be non-empty and without '='"),
                );
            } else if value.len() > MAX_LABEL_VALUE_BYTES {
                error(
                    pointer,
                    format!(
                        "a label value of {} bytes is longer than {MAX_LABEL_VALUE_BYTES}; put \
                         long text in a variable instead",
                        value.len()
                    ),
                );
            }
        }
        errors.extend(crate::repo::check(self.repo.as_ref(), &self.variables));
        // As for a config: a few hundred bytes of hostile fields must not become a large answer.
        if errors.len() > MAX_PER_CONFIG {
            let left_out = errors.len() - MAX_PER_CONFIG;
            errors.truncate(MAX_PER_CONFIG);
            errors.push(Diagnostic {
                config: SUBMISSION.into(),
                pointer: String::new(),
                line: None,
                column: None,
                message: format!(
                    "{left_out} more errors of the submission are not shown; fix the ones above first"
                ),
            });
        }
        errors
    }

    /// Text a database cannot store (NUL) anywhere in the submission outside its configs, and
    /// strings over the length limit; as pointers and messages. A value is never quoted: it
    /// may be a secret.
    fn text_problems(&self, limits: &Limits) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        // (pointer, text, whether the length limit applies, whether it is a key)
        let mut fields: Vec<(String, &str, bool, bool)> = Vec::new();
        if let Some(name) = &self.name {
            fields.push(("/name".into(), name, true, false));
        }
        for (i, c) in self.configs.iter().enumerate() {
            fields.push((format!("/configs/{i}/name"), &c.name, true, false));
        }
        for (map, name) in [(&self.variables, "variables"), (&self.labels, "labels")] {
            for (k, v) in map {
                let pointer = format!("/{name}/{}", escape_pointer(k));
                fields.push((pointer.clone(), k, true, true));
                fields.push((pointer, v, true, false));
            }
        }
        for (i, s) in self.secrets.iter().enumerate() {
            fields.push((format!("/secrets/{i}/name"), &s.name, true, false));
            // Secret values are bounded together, by PICULET_MAX_SECRET_SIZE.
            fields.push((format!("/secrets/{i}/value"), &s.value, false, false));
        }
        for (i, r) in self.registries.iter().enumerate() {
            fields.push((format!("/registries/{i}/address"), &r.address, true, false));
            fields.push((
                format!("/registries/{i}/username"),
                &r.username,
                true,
                false,
            ));
            fields.push((
                format!("/registries/{i}/password"),
                &r.password,
                true,
                false,
            ));
        }
        if let Some(repo) = &self.repo {
            fields.push(("/repo/clone_url".into(), &repo.clone_url, false, false));
            if let Some(r) = &repo.git_ref {
                fields.push(("/repo/ref".into(), r, false, false));
            }
            if let Some(sha) = &repo.sha {
                fields.push(("/repo/sha".into(), sha, false, false));
            }
        }
        for (pointer, value) in [
            ("/namespace", &self.namespace),
            ("/timeout", &self.timeout),
            ("/platform", &self.platform),
        ] {
            if let Some(v) = value {
                // Copied into every workflow (the platform) or shown in messages.
                fields.push((pointer.into(), v, true, false));
            }
        }
        for (pointer, text, limited, key) in fields {
            let what = if key { "key" } else { "value" };
            if has_nul(text) {
                problems.push((pointer.clone(), format!("{what} {NUL_REFUSAL}")));
            }
            if limited && text.len() > limits.string_length {
                problems.push((pointer, too_long(what, text.len(), limits)));
            }
        }
        problems
    }

    /// Checks the submission and plans its pipeline within `limits`; every error at once.
    pub fn plan(
        &self,
        default_platform: &str,
        limits: &Limits,
    ) -> Result<pipeline::Planned, Report> {
        let problems = self.check(limits);
        match (
            pipeline::plan(&self.sources(), &self.context(default_platform, limits)),
            problems.is_empty(),
        ) {
            (Ok(planned), true) => Ok(planned),
            (Ok(planned), false) => Err(Report {
                errors: problems,
                warnings: planned.warnings,
            }),
            (Err(mut report), _) => {
                let mut errors = problems;
                errors.append(&mut report.errors);
                report.errors = errors;
                Err(report)
            }
        }
    }

    /// Validates without storing anything: what `POST /lint` answers. The same checks as
    /// [`Submission::plan`], so that both agree on every body.
    pub fn lint(&self, default_platform: &str, limits: &Limits) -> Report {
        let mut report = pipeline::lint(&self.sources(), &self.context(default_platform, limits));
        let mut errors = self.check(limits);
        errors.append(&mut report.errors);
        report.errors = errors;
        report
    }

    /// What a run of the submission is given besides its plan and sealed values.
    pub fn run(&self) -> Run {
        Run {
            variables: self.variables.clone(),
            repo: self.repo.clone(),
            namespace: self.namespace.clone(),
        }
    }

    /// The submission as it is kept: without its secret values and registry credentials, which
    /// are sealed apart.
    fn kept(&self) -> Kept {
        Kept {
            name: self.name.clone(),
            configs: self.configs.clone(),
            pipeline: self.pipeline.clone(),
            run: self.run(),
            secrets: self
                .secrets
                .iter()
                .map(|s| KeptSecret {
                    name: s.name.clone(),
                })
                .collect(),
            registries: self
                .registries
                .iter()
                .map(|r| KeptRegistry {
                    address: r.address.clone(),
                    username: r.username.clone(),
                })
                .collect(),
            labels: self.labels.clone(),
            timeout: self.timeout.clone(),
            platform: self.platform.clone(),
        }
    }

    fn sealed(&self) -> Sealed {
        Sealed {
            secrets: self.secrets.clone(),
            registries: self.registries.clone(),
        }
    }

    /// The submission as it was received, from what was kept and the sealed secrets: what a
    /// retry submits again.
    pub fn restore(
        kept: Kept,
        sealed: Option<&[u8]>,
        secret_box: &SecretBox,
    ) -> Result<Submission, String> {
        let Sealed {
            secrets,
            registries,
        } = Sealed::open(secret_box, sealed)?;
        let Kept {
            name,
            configs,
            pipeline,
            run,
            // Sealed: what was kept of them names them only.
            secrets: _,
            registries: _,
            labels,
            timeout,
            platform,
        } = kept;
        Ok(Submission {
            name,
            configs,
            pipeline,
            variables: run.variables,
            secrets,
            registries,
            repo: run.repo,
            labels,
            namespace: run.namespace,
            timeout,
            platform,
        })
    }

    /// Checks and plans the submission into a pipeline ready to insert; refuses it with every
    /// error at once.
    pub fn prepare(
        &self,
        default_platform: &str,
        limits: &Limits,
        secret_box: &SecretBox,
    ) -> Result<NewPipeline, Report> {
        let planned = self.plan(default_platform, limits)?;

        let mut workflows = Vec::new();
        for w in &planned.plan.workflows {
            let mut steps = Vec::new();
            for (spec, kind) in w
                .services
                .iter()
                .map(|s| (s, StepKind::Service))
                .chain(w.steps.iter().map(|s| (s, s.kind)))
            {
                steps.push(NewStep {
                    id: Uuid::now_v7(),
                    name: spec.name.clone(),
                    kind,
                    status: Status::Queued,
                    reason: None,
                });
            }
            for dropped in &w.dropped_steps {
                steps.push(NewStep {
                    id: Uuid::now_v7(),
                    name: dropped.name.clone(),
                    kind: dropped.kind,
                    status: Status::Skipped,
                    reason: Some(dropped.reason.clone()),
                });
            }
            workflows.push(NewWorkflow {
                id: Uuid::now_v7(),
                name: w.name.clone(),
                matrix: w.matrix.clone(),
                plan: serde_json::to_value(w).unwrap_or_default(),
                status: Status::Queued,
                reason: None,
                ready: w.depends_on.is_empty(),
                concurrency: w.concurrency.clone(),
                steps,
            });
        }
        for dropped in &planned.plan.dropped_workflows {
            workflows.push(NewWorkflow {
                id: Uuid::now_v7(),
                name: dropped.name.clone(),
                matrix: dropped.matrix.clone(),
                plan: serde_json::Value::Null,
                status: Status::Skipped,
                reason: Some(dropped.reason.clone()),
                ready: false,
                concurrency: None,
                steps: Vec::new(),
            });
        }

        let name = self
            .name
            .clone()
            .or_else(|| self.configs.first().map(|c| c.name.clone()))
            .unwrap_or_else(|| "pipeline".into());
        Ok(NewPipeline {
            id: Uuid::now_v7(),
            name,
            submission: self.kept(),
            sealed_secrets: self.sealed().seal(secret_box),
            labels: self.labels.clone(),
            warnings: planned.warnings,
            namespace: self.namespace.clone(),
            timeout_seconds: self
                .timeout
                .as_deref()
                .and_then(|t| humantime::parse_duration(t).ok())
                // Beyond i64 it would wrap negative, and a negative timeout ends at once; the
                // server's maximum caps it anyway.
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            idempotency: None,
            retry_of: None,
            // Microseconds: what Postgres keeps, so that the answer equals a later read.
            created_at: Utc::now().trunc_subsecs(6),
            workflows,
        })
    }
}

/// RFC 1123 label: what Kubernetes accepts as a namespace name.
/// [`is_dns_label`] as a regular expression, for the API document.
pub const NAMESPACE_PATTERN: &str = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIPELINE: &str = "steps: [{name: a, image: x, commands: [ls]}]";

    fn valid() -> Submission {
        Submission::from_file(PIPELINE.to_string())
    }

    fn errors(s: &Submission, limits: &Limits) -> Vec<(String, String)> {
        let lint = s.lint("linux/amd64", limits);
        let plan = s.plan("linux/amd64", limits).err().unwrap_or_default();
        // `/lint` and submission agree on every body.
        assert_eq!(lint.errors, plan.errors);
        lint.errors
            .into_iter()
            .map(|d| (d.pointer, d.message))
            .collect()
    }

    fn full() -> Submission {
        let mut s = valid();
        s.name = Some("acme/api #42".into());
        s.variables.insert("CI_COMMIT_BRANCH".into(), "main".into());
        s.secrets.push(SecretValue {
            name: "token".into(),
            value: "s3cr3t".into(),
        });
        s.registries.push(RegistryCredential {
            address: "registry.example.com".into(),
            username: "ci".into(),
            password: "pa55".into(),
        });
        s.repo = Some(Repo {
            clone_url: "https://example.com/acme/api.git".into(),
            git_ref: Some("refs/heads/main".into()),
            sha: None,
        });
        s.labels.insert("project".into(), "acme/api".into());
        s.namespace = Some("ci-acme".into());
        s.timeout = Some("1h".into());
        s.platform = Some("linux/arm64".into());
        s
    }

    #[test]
    fn what_is_kept_holds_no_secret_and_restores_the_submission() {
        let secret_box = SecretBox::new([7; 32]);
        let s = full();
        let new = s
            .prepare("linux/amd64", &Limits::default(), &secret_box)
            .unwrap();
        let stored = serde_json::to_string(&new.submission).unwrap();
        assert!(
            !stored.contains("s3cr3t") && !stored.contains("pa55"),
            "{stored}"
        );
        let kept: Kept = serde_json::from_str(&stored).unwrap();
        assert_eq!(kept, new.submission);
        assert_eq!(kept.run, s.run());
        // What the engine reads from the same column.
        assert_eq!(serde_json::from_str::<Run>(&stored).unwrap(), s.run());
        let restored =
            Submission::restore(kept, new.sealed_secrets.as_deref(), &secret_box).unwrap();
        assert_eq!(
            serde_json::to_value(&restored).unwrap(),
            serde_json::to_value(&s).unwrap()
        );
    }

    /// What versions before the typed [`Kept`] stored: the submission as JSON with the secret
    /// values and registry passwords cut out. A retry of such a pipeline submits it again.
    #[test]
    fn a_submission_kept_by_an_older_version_is_restored() {
        let secret_box = SecretBox::new([7; 32]);
        let s = full();
        let mut old = serde_json::to_value(&s).unwrap();
        for (list, field) in [("secrets", "value"), ("registries", "password")] {
            for item in old[list].as_array_mut().unwrap() {
                item.as_object_mut().unwrap().remove(field);
            }
        }
        let kept: Kept = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(kept, s.kept());
        assert_eq!(serde_json::from_value::<Run>(old).unwrap(), s.run());
        let sealed = s.sealed().seal(&secret_box);
        let restored = Submission::restore(kept, sealed.as_deref(), &secret_box).unwrap();
        assert_eq!(
            serde_json::to_value(&restored).unwrap(),
            serde_json::to_value(&s).unwrap()
        );
    }

    #[test]
    fn a_timeout_beyond_what_is_stored_is_kept_as_the_longest() {
        let mut s = valid();
        s.timeout = Some("500000000000y".into());
        let new = s
            .prepare("linux/amd64", &Limits::default(), &SecretBox::new([7; 32]))
            .unwrap();
        assert_eq!(new.timeout_seconds, Some(i64::MAX));
        s.timeout = Some("90s".into());
        let new = s
            .prepare("linux/amd64", &Limits::default(), &SecretBox::new([7; 32]))
            .unwrap();
        assert_eq!(new.timeout_seconds, Some(90));
    }

    #[test]
    fn label_keys_and_values_fit_an_index_entry() {
        let mut s = Submission::from_file(
            "steps:\n  - name: a\n    image: alpine\n    commands: [true]\n".into(),
        );
        s.labels.insert(
            "k".repeat(MAX_LABEL_KEY_BYTES),
            "v".repeat(MAX_LABEL_VALUE_BYTES),
        );
        assert!(s.check(&Limits::default()).is_empty());
        s.labels
            .insert("long".into(), "v".repeat(MAX_LABEL_VALUE_BYTES + 1));
        s.labels
            .insert("k".repeat(MAX_LABEL_KEY_BYTES + 1), "v".into());
        let errors = s.check(&Limits::default());
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(
            errors[0].pointer,
            format!("/labels/{}", "k".repeat(MAX_LABEL_KEY_BYTES + 1))
        );
        assert!(
            errors[0].message.starts_with("a label key of 257 bytes"),
            "{errors:?}"
        );
        assert_eq!(errors[1].pointer, "/labels/long");
        assert!(
            errors[1].message.starts_with("a label value of 1025 bytes"),
            "{errors:?}"
        );
    }

    #[test]
    fn secret_values_together_within_the_limit() {
        let limits = Limits {
            secret_bytes: 1000,
            ..Limits::default()
        };
        let mut s = valid();
        s.secrets.push(SecretValue {
            name: "a".into(),
            value: "x".repeat(600),
        });
        s.registries.push(RegistryCredential {
            address: "r.example".into(),
            username: "u".into(),
            password: "y".repeat(400),
        });
        assert_eq!(errors(&s, &limits), []);
        s.registries[0].password.push('y');
        assert_eq!(
            errors(&s, &limits),
            [(
                "/secrets".to_string(),
                "the secret values and registry passwords are 1001 bytes together, more than the \
                 limit of 1000 (PICULET_MAX_SECRET_SIZE)"
                    .to_string()
            )]
        );
    }

    #[test]
    fn labels_at_and_over_the_limit() {
        let limits = Limits {
            labels: 2,
            ..Limits::default()
        };
        let mut s = valid();
        s.labels = [("a", "1"), ("b", "2")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(errors(&s, &limits), []);
        s.labels.insert("c".into(), "3".into());
        assert_eq!(
            errors(&s, &limits),
            [(
                "/labels".to_string(),
                "the submission has 3 labels, more than the limit of 2 (PICULET_MAX_LABELS)"
                    .to_string()
            )]
        );
    }

    #[test]
    fn strings_at_and_over_the_limit() {
        let limits = Limits {
            string_length: 200,
            ..Limits::default()
        };
        let at = "x".repeat(200);
        let over = "x".repeat(201);
        let mut s = valid();
        s.name = Some(at.clone());
        s.variables.insert(at.clone(), at.clone());
        s.labels.insert(at.clone(), at.clone());
        s.secrets.push(SecretValue {
            name: at.clone(),
            value: over.repeat(10),
        });
        s.configs[0].name = at.clone();
        assert_eq!(errors(&s, &limits), []);

        let mut s = valid();
        s.name = Some(over.clone());
        s.variables.insert("V".into(), over.clone());
        s.labels.insert(over.clone(), "v".into());
        s.secrets.push(SecretValue {
            name: over.clone(),
            value: "v".into(),
        });
        s.configs[0].name = over.clone();
        let message = |what: &str| {
            format!("{what} of 201 bytes, more than the limit of 200 (PICULET_MAX_STRING_LENGTH)")
        };
        let found = errors(&s, &limits);
        for expected in [
            ("/name".to_string(), message("value")),
            ("/configs/0/name".to_string(), message("value")),
            ("/variables/V".to_string(), message("value")),
            (format!("/labels/{over}"), message("key")),
            ("/secrets/0/name".to_string(), message("value")),
        ] {
            assert!(found.contains(&expected), "{expected:?} in {found:#?}");
        }
    }

    #[test]
    fn nul_is_refused_in_every_field_without_echoing_it() {
        let nul = "a\0b";
        type Set = Box<dyn Fn(&mut Submission)>;
        let cases: Vec<(&str, Set)> = vec![
            ("/name", Box::new(|s| s.name = Some(nul.into()))),
            (
                "/configs/0/name",
                Box::new(|s| s.configs[0].name = nul.into()),
            ),
            (
                "/variables/K",
                Box::new(|s| {
                    s.variables.insert("K".into(), nul.into());
                }),
            ),
            (
                "/labels/a\0b",
                Box::new(|s| {
                    s.labels.insert(nul.into(), "v".into());
                }),
            ),
            (
                "/secrets/0/value",
                Box::new(|s| {
                    s.secrets.push(SecretValue {
                        name: "tok".into(),
                        value: "s3cr\0t".into(),
                    })
                }),
            ),
            (
                "/secrets/0/name",
                Box::new(|s| {
                    s.secrets.push(SecretValue {
                        name: nul.into(),
                        value: "v".into(),
                    })
                }),
            ),
            (
                "/registries/0/password",
                Box::new(|s| {
                    s.registries.push(RegistryCredential {
                        address: "r".into(),
                        username: "u".into(),
                        password: "p\0w".into(),
                    })
                }),
            ),
            (
                "/repo/ref",
                Box::new(|s| {
                    s.repo = Some(Repo {
                        clone_url: "https://example.com/r.git".into(),
                        git_ref: Some(nul.into()),
                        sha: None,
                    })
                }),
            ),
            ("/namespace", Box::new(|s| s.namespace = Some(nul.into()))),
            ("/timeout", Box::new(|s| s.timeout = Some("1\0h".into()))),
            (
                "/platform",
                Box::new(|s| s.platform = Some("linux/\0".into())),
            ),
        ];
        for (pointer, set) in cases {
            let mut s = valid();
            set(&mut s);
            let found = errors(&s, &Limits::default());
            let nul_errors: Vec<&(String, String)> =
                found.iter().filter(|(_, m)| m.contains("NUL")).collect();
            assert_eq!(nul_errors.len(), 1, "{pointer}: {found:#?}");
            assert_eq!(nul_errors[0].0, pointer);
            assert!(
                nul_errors[0].1.ends_with(NUL_REFUSAL),
                "{}",
                nul_errors[0].1
            );
            assert!(
                !found
                    .iter()
                    .any(|(_, m)| m.contains('\0') || m.contains("s3cr")),
                "{pointer}: a refusal repeats the value: {found:#?}"
            );
        }
    }

    #[test]
    fn many_bad_fields_make_a_bounded_answer() {
        let mut s = valid();
        for i in 0..1000 {
            s.variables.insert(format!("V{i}"), "\0".into());
        }
        let found = errors(&s, &Limits::default());
        assert_eq!(found.len(), MAX_PER_CONFIG + 1);
        assert_eq!(
            found[MAX_PER_CONFIG].1,
            "900 more errors of the submission are not shown; fix the ones above first"
        );
    }

    #[test]
    fn nul_in_a_config_is_refused_whatever_its_syntax() {
        for (content, pointer) in [
            (
                "steps: [{name: \"a\\0\", image: x, commands: [ls]}]",
                "/steps/0/name",
            ),
            (
                "{\"steps\": [{\"name\": \"a\", \"image\": \"x\\u0000\", \"commands\": [\"ls\"]}]}",
                "/steps/0/image",
            ),
            ("# \0\nsteps: [{name: a, image: x, commands: [ls]}]", ""),
        ] {
            let s = Submission::from_file(content.to_string());
            let found = errors(&s, &Limits::default());
            assert_eq!(found.len(), 1, "{found:#?}");
            assert_eq!(found[0].0, pointer);
            assert!(found[0].1.ends_with(NUL_REFUSAL));
        }
        let mut s = valid();
        s.configs.clear();
        s.pipeline = Some(serde_json::json!({
            "steps": [{"name": "a", "image": "x", "commands": ["ls"], "environment": {"K\u{0}": "v"}}]
        }));
        assert_eq!(
            errors(&s, &Limits::default()),
            [(
                "/steps/0/environment/K\0".to_string(),
                format!("key {NUL_REFUSAL}")
            )]
        );
    }

    #[test]
    fn hostile_bodies_get_the_same_answer_from_lint_and_plan() {
        let deep = format!("{}1{}", "[".repeat(50_000), "]".repeat(50_000));
        let ring: String = (0..300)
            .map(|i| {
                format!(
                    "  s{i}: {{image: x, commands: [ls], depends_on: [s{}]}}\n",
                    (i + 1) % 300
                )
            })
            .collect();
        for content in [
            deep,
            format!("steps:\n{ring}"),
            "steps: [{name: a, image: x, commands: [ls], directory: ../..}]".to_string(),
        ] {
            let found = errors(&Submission::from_file(content), &Limits::default());
            assert!(!found.is_empty());
        }
    }
}
