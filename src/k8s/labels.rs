//! Labels and annotations piculet puts on its objects, and the syntax checks for the keys and
//! values that administrators and steps add. Every object carries
//! `app.kubernetes.io/managed-by=piculet` and the ids of its pipeline and workflow (pods also
//! their step), so the engine finds a workflow's objects by label when it adopts or reaps them.

use std::collections::BTreeMap;

use uuid::Uuid;

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "piculet";
pub const PIPELINE_ID: &str = "piculet.dev/pipeline-id";
pub const WORKFLOW_ID: &str = "piculet.dev/workflow-id";
pub const STEP_ID: &str = "piculet.dev/step-id";
/// The step's name as a DNS-label slug (the exact name is in the annotation below).
pub const STEP: &str = "piculet.dev/step";
/// `step`, `service`, `clone` or `plugin`.
pub const KIND: &str = "piculet.dev/kind";
pub const ATTEMPT: &str = "piculet.dev/attempt";
/// Annotation: the step's name exactly as written.
pub const STEP_NAME_ANNOTATION: &str = "piculet.dev/step-name";
/// Annotation: the administrator's pull policies, tried in order when a pull fails.
pub const PULL_POLICIES_ANNOTATION: &str = "piculet.dev/pull-policies";

/// Prefix no administrator or step label may use: piculet finds its objects by these.
pub const RESERVED_PREFIX: &str = "piculet.dev/";

/// The label selector of everything piculet makes.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY}={MANAGER}")
}

/// The labels of every object of a workflow.
pub fn workflow_labels(pipeline_id: &Uuid, workflow_id: &Uuid) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_string(), MANAGER.to_string()),
        (PIPELINE_ID.to_string(), pipeline_id.to_string()),
        (WORKFLOW_ID.to_string(), workflow_id.to_string()),
    ])
}

/// Whether a label or annotation key belongs to piculet.
pub fn is_reserved(key: &str) -> bool {
    key == MANAGED_BY || key.starts_with(RESERVED_PREFIX)
}

fn is_name_segment(s: &str) -> bool {
    s.len() <= 63 && super::validation::label_name_matches(s)
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && super::validation::subdomain_matches(s, false)
}

/// Checks a label or annotation key: `[prefix/]name`, the prefix a DNS subdomain, the name at
/// most 63 characters of alphanumerics, `-`, `_` and `.`.
pub fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if prefix.is_some_and(|p| !is_dns_subdomain(p)) || !is_name_segment(name) {
        return Err(format!(
            "\"{key}\" is not a valid label or annotation key: write [prefix/]name, the name at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks a label value: empty, or at most 63 alphanumerics, `-`, `_` and `.`, starting and
/// ending with an alphanumeric.
pub fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_name_segment(value) {
        Ok(())
    } else {
        Err(format!(
            "\"{value}\" is not a valid label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values() {
        for k in ["a", "app.kubernetes.io/name", "example.com/x_y.z", "A-b"] {
            assert_eq!(check_key(k), Ok(()), "{k}");
        }
        for k in [
            "",
            "/a",
            "a/",
            "Example.com/a",
            "-a",
            &"a".repeat(64),
            "a/b/c",
        ] {
            assert!(check_key(k).is_err(), "{k}");
        }
        assert_eq!(check_value(""), Ok(()));
        assert_eq!(check_value("v1.2_x"), Ok(()));
        assert!(check_value("a b").is_err());
        assert!(is_reserved("piculet.dev/step"));
        assert!(is_reserved(MANAGED_BY));
        assert!(!is_reserved("app.kubernetes.io/name"));
    }
}
