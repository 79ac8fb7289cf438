//! The administrator's policy, as the renderer applies it: what a submission asks for that the
//! settings do not allow becomes a [`PolicyViolation`] naming the step, the field, the value
//! and the rule. Rendering collects every violation of a workflow (never just the first) and
//! refuses the workflow when there is any — the API answers 422 before anything is created.
//! Nothing is ever silently dropped or changed.

use regex::Regex;
use serde::Serialize;

use super::settings::{KubernetesConfig, StepField, env_name};
use super::trace::Origin;

/// One thing a submission asks for that piculet will not do (or that the Kubernetes API server
/// would refuse), and what to change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PolicyViolation {
    /// The step or service name; empty for the workflow itself (its namespace).
    pub step: String,
    /// Where in the pipeline, e.g. `backend_options.kubernetes.serviceAccountName`; for what
    /// the API server would refuse, its field path, e.g. `spec.tolerations[0].effect`.
    pub field: String,
    /// The value asked for (JSON for maps and lists).
    pub value: String,
    /// The setting or rule that refuses it, e.g. `PICULET_K8S_ALLOW_FROM_STEP`; for what the
    /// API server would refuse, its rule in its words.
    pub rule: String,
    /// A sentence for a person: what is refused, why, and what to change.
    pub message: String,
    /// The config (file) the refused value was written in; `submission` for the submission's
    /// own keys. Absent where the value is not the submission's (a server setting).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// RFC 6901 pointer into that config, e.g. `/steps/0/backend_options/kubernetes/tolerations/0/effect`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// 1-based line of that place, when the config was text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// 1-based column of that place, when the config was text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
    /// Where the value came from, for tracing it to the submission (see [`crate::dry_run`]).
    #[serde(skip)]
    #[schema(ignore)]
    pub origin: Option<Origin>,
}

/// Rule of values Kubernetes itself would refuse (a request above its limit, a malformed host
/// alias): caught here so nothing half-created is left behind.
pub const RULE_KUBERNETES: &str = "kubernetes";
/// Rule of values piculet cannot read (`volumes: ["x"]` without a path).
pub const RULE_FORMAT: &str = "format";
/// Rule of names and keys piculet keeps for itself.
pub const RULE_RESERVED: &str = "reserved";
/// Rule of render input that does not fit the plan (a secret the submission did not send).
pub const RULE_SUBMISSION: &str = "submission";

/// Collects violations for one workflow.
#[derive(Debug, Default)]
pub(crate) struct Violations(pub Vec<PolicyViolation>);

impl Violations {
    /// Records a violation. `problem` completes the sentence "<field> <value> …", e.g.
    /// "is not allowed: …; ask the administrator to allow it".
    pub fn push(&mut self, step: &str, field: &str, value: &str, rule: &str, problem: &str) {
        let who = if step.is_empty() {
            String::new()
        } else {
            format!("step {}: ", quote(step))
        };
        self.0.push(PolicyViolation {
            step: step.to_string(),
            field: field.to_string(),
            value: value.to_string(),
            rule: rule.to_string(),
            message: format!("{who}{field} {} {problem}", shown(value)),
            ..Default::default()
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A value as the message shows it: JSON text as is, anything else quoted.
fn shown(value: &str) -> String {
    let scalar = value == "true" || value == "false" || value.parse::<i64>().is_ok();
    if scalar || value.starts_with('{') || value.starts_with('[') {
        value.to_string()
    } else {
        quote(value)
    }
}

pub(crate) fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The field's full name in a step.
pub(crate) fn option_field(name: &str) -> String {
    format!("backend_options.kubernetes.{name}")
}

/// Refuses a step-level field the administrator has not listed in `PICULET_K8S_ALLOW_FROM_STEP`.
/// Returns whether the field may be used.
pub(crate) fn allow_field(
    config: &KubernetesConfig,
    v: &mut Violations,
    step: &str,
    field: StepField,
    value: &str,
) -> bool {
    if config.allows(field) {
        return true;
    }
    v.push(
        step,
        &option_field(field.name()),
        value,
        "PICULET_K8S_ALLOW_FROM_STEP",
        &format!(
            "is not allowed: PICULET_K8S_ALLOW_FROM_STEP does not list {}; remove it from the step or ask the administrator to allow it",
            field.name()
        ),
    );
    false
}

/// Checks a value governed by one of the `*_OVERWRITE_ALLOWED` expressions, as GitLab Runner
/// does: with the expression set, the value must match it in full; with it empty, only a
/// field listed in `PICULET_K8S_ALLOW_FROM_STEP` (when `listed_as` is given) is allowed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn allow_by_regex(
    regex: Option<&Regex>,
    setting: &str,
    listed_as: Option<StepField>,
    config: &KubernetesConfig,
    v: &mut Violations,
    step: &str,
    field: &str,
    value: &str,
) -> bool {
    let rule = env_name(setting);
    match regex {
        Some(r) if r.is_match(value) => true,
        Some(r) => {
            let pattern = r.as_str();
            let pattern = pattern
                .strip_prefix("^(?:")
                .and_then(|p| p.strip_suffix(")$"))
                .unwrap_or(pattern);
            v.push(
                step,
                field,
                value,
                &rule,
                &format!(
                    "is not allowed: it does not match {rule} ({pattern}); choose a value it matches or ask the administrator to allow it"
                ),
            );
            false
        }
        None if listed_as.is_some_and(|f| config.allows(f)) => true,
        None => {
            v.push(
                step,
                field,
                value,
                &rule,
                &format!("is not allowed: {rule} is empty; ask the administrator to allow it"),
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_shape() {
        let mut v = Violations::default();
        v.push("build", "privileged", "true", "R", "is not allowed: x; y");
        v.push("", "namespace", "{\"a\":1}", "R", "is odd");
        assert_eq!(
            v.0[0].message,
            "step \"build\": privileged true is not allowed: x; y"
        );
        assert_eq!(v.0[1].message, "namespace {\"a\":1} is odd");
    }
}
