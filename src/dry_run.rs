//! Dry run: the exact Kubernetes objects a submission would create, with the administrator's
//! policy applied and secret values redacted — whatever backend the server runs. Serves
//! `POST /render`, `piculet render`, and the policy check of submissions to a Kubernetes
//! backend.

use std::collections::BTreeMap;

use chrono::Utc;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::engine::env::{EnvContext, workflow_env};
use crate::k8s::{
    KubernetesConfig, PolicyViolation, RegistryCredential, RenderInput, render_workflow,
};
use crate::pipeline::{Diagnostic, Limits, Report};
use crate::submission::Submission;

/// The objects of one workflow, in the order they would be created.
#[derive(Debug, Serialize, ToSchema)]
pub struct RenderedWorkflowObjects {
    pub name: String,
    pub matrix: BTreeMap<String, String>,
    pub namespace: String,
    /// PersistentVolumeClaim, Secrets, Service, then one Pod per service and step, each as it
    /// would be sent to the API server (`apiVersion` and `kind` included).
    #[schema(value_type = Vec<Object>)]
    pub objects: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Rendered {
    pub workflows: Vec<RenderedWorkflowObjects>,
    /// Keys accepted but not honoured.
    pub warnings: Vec<Diagnostic>,
}

/// Why a submission cannot be rendered.
#[derive(Debug)]
pub enum Refusal {
    /// The submission or its pipeline is invalid.
    Invalid(Report),
    /// It asks for what the administrator does not allow.
    Policy(Vec<PolicyViolation>),
}

/// Renders every workflow of the submission; ids are fresh, so object names differ from run to
/// run, but everything else is exactly what a run would create.
pub fn render(
    submission: &Submission,
    default_platform: &str,
    limits: &Limits,
    config: &KubernetesConfig,
) -> Result<Rendered, Refusal> {
    let planned = submission
        .plan(default_platform, limits)
        .map_err(Refusal::Invalid)?;
    let pipeline_id = Uuid::now_v7();
    let now = Utc::now();
    let secrets: BTreeMap<String, String> = submission
        .secrets
        .iter()
        .map(|s| (s.name.clone(), s.value.clone()))
        .collect();
    let registries: Vec<RegistryCredential> = submission
        .registries
        .iter()
        .cloned()
        .map(RegistryCredential::from)
        .collect();
    // The clone step's CI_REPO_*/CI_COMMIT_* come from `repo`, as in a run.
    let repo = serde_json::to_value(&submission.repo).ok();
    let mut workflows = Vec::new();
    let mut violations = Vec::new();
    for plan in &planned.plan.workflows {
        let workflow_id = Uuid::now_v7();
        let environment = workflow_env(
            &EnvContext {
                pipeline_id,
                workflow_id,
                step_id: Uuid::nil(),
                pipeline_created: now,
                pipeline_started: now,
                step_started: now,
                pipeline_status: "success",
                variables: &submission.variables,
                repo: repo.as_ref().filter(|r| !r.is_null()),
            },
            plan,
        );
        let input = RenderInput {
            pipeline_id,
            workflow_id,
            step_ids: BTreeMap::new(),
            attempt: 1,
            namespace: submission.namespace.clone(),
            workflow: plan.clone(),
            secrets: secrets.clone(),
            registries: registries.clone(),
            environment,
            redact_secrets: true,
        };
        match render_workflow(config, &input) {
            Ok(rendered) => workflows.push(RenderedWorkflowObjects {
                name: plan.name.clone(),
                matrix: plan.matrix.clone(),
                namespace: rendered.namespace.clone(),
                objects: rendered.to_list(),
            }),
            Err(mut refused) => violations.append(&mut refused),
        }
    }
    if !violations.is_empty() {
        return Err(Refusal::Policy(violations));
    }
    Ok(Rendered {
        workflows,
        warnings: planned.warnings,
    })
}
