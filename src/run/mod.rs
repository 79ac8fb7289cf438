//! A run: what a stored pipeline's workflows run with besides their plans. The engine gets it
//! typed from the store ([`Run`], sealed values in [`sealed`]); the dry run builds the same from
//! a submission that is not stored, so that both render and run steps alike.
//!
//! - [`Run`]: the submission's variables, repository and namespace, as kept with the pipeline;
//! - [`Repo`], [`RegistryCredential`], [`SecretValue`]: the parts of a submission a run uses;
//! - [`sealed`]: the secret values and registry credentials, sealed apart from the rest;
//! - [`env`]: the built-in `CI_*` variables every step sees.

pub mod env;
pub mod sealed;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use sealed::Sealed;

/// What a workflow runs with besides its plan and its sealed values, as kept with its pipeline.
///
/// Its keys are the submission's own names, and it is stored flattened into the kept submission
/// (see [`crate::submission::Kept`]): every kept submission reads as a run, including those
/// stored before this type existed. The keys the engine does not use (configs, labels, …) are
/// skipped when it is read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// The submission's variables: `when` matched against them when planning, and steps see
    /// them under the built-in `CI_*` ones.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// The repository the implicit clone step clones; `CI_REPO_CLONE_URL` and `CI_COMMIT_*`
    /// come from it.
    #[serde(default)]
    pub repo: Option<Repo>,
    /// The namespace the submission asks for (Kubernetes; the policy allowed it at submit).
    #[serde(default)]
    pub namespace: Option<String>,
}

// The schema types below carry no doc comments: utoipa would make them descriptions in the
// API document, which describes them where they are used.

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Repo {
    pub clone_url: String,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub sha: Option<String>,
}

// Credentials for a private registry, from the submission; the API document calls them
// `Registry`, as the submission's `registries` holds them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = Registry)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredential {
    pub address: String,
    pub username: String,
    pub password: String,
}

// A secret value of the submission, referenced from the pipeline with `from_secret`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretValue {
    pub name: String,
    pub value: String,
}

// Debug output must never carry secret values or passwords: they end up in logs.
impl fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RegistryCredential({})", self.address)
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue({})", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> Run {
        Run {
            variables: [("CI_COMMIT_BRANCH".to_string(), "main".to_string())].into(),
            repo: Some(Repo {
                clone_url: "https://example.com/acme/api.git".into(),
                git_ref: Some("refs/heads/main".into()),
                sha: None,
            }),
            namespace: Some("ci-acme".into()),
        }
    }

    #[test]
    fn a_run_round_trips() {
        let run = run();
        let json = serde_json::to_value(&run).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "variables": {"CI_COMMIT_BRANCH": "main"},
                "repo": {"clone_url": "https://example.com/acme/api.git", "ref": "refs/heads/main", "sha": null},
                "namespace": "ci-acme"
            })
        );
        assert_eq!(serde_json::from_value::<Run>(json).unwrap(), run);
        assert_eq!(
            serde_json::from_value::<Run>(serde_json::to_value(Run::default()).unwrap()).unwrap(),
            Run::default()
        );
    }

    /// A submission as versions before the typed run kept it: the whole submission with secret
    /// values and registry passwords cut out. It still reads as the run it was submitted with.
    #[test]
    fn a_submission_kept_by_an_older_version_reads_as_its_run() {
        let kept = serde_json::json!({
            "name": "acme/api #42",
            "configs": [{"name": "build", "content": "steps: []"}],
            "pipeline": null,
            "variables": {"CI_COMMIT_BRANCH": "main"},
            "secrets": [{"name": "token"}],
            "registries": [{"address": "registry.example.com", "username": "ci"}],
            "repo": {"clone_url": "https://example.com/acme/api.git", "ref": "refs/heads/main", "sha": null},
            "labels": {"project": "acme/api"},
            "namespace": "ci-acme",
            "timeout": "1h",
            "platform": null
        });
        assert_eq!(serde_json::from_value::<Run>(kept).unwrap(), run());
        // One without any of the optional keys.
        let bare = serde_json::json!({"name": null, "configs": [], "pipeline": {"steps": []}});
        assert_eq!(serde_json::from_value::<Run>(bare).unwrap(), Run::default());
    }

    #[test]
    fn debug_output_hides_secret_values() {
        let credential = RegistryCredential {
            address: "registry.example.com".into(),
            username: "ci".into(),
            password: "s3cr3t".into(),
        };
        let secret = SecretValue {
            name: "token".into(),
            value: "s3cr3t".into(),
        };
        let shown = format!("{credential:?} {secret:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }
}
