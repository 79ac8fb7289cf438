//! The built-in environment of a step: the `CI_*` variables Woodpecker steps expect, over the
//! submission's own variables. The engine gives them to the steps it runs, and the dry run
//! renders them into the objects it shows.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Run;
use crate::pipeline::{Conclusion, StepSpec, WorkflowPlan};

/// What the environment is made from, besides the plan.
pub struct EnvContext<'a> {
    pub pipeline_id: Uuid,
    pub workflow_id: Uuid,
    pub step_id: Uuid,
    pub pipeline_created: DateTime<Utc>,
    pub pipeline_started: DateTime<Utc>,
    pub step_started: DateTime<Utc>,
    /// The workflow's status so far.
    pub pipeline_status: Conclusion,
    /// The submission's variables and repository.
    pub run: &'a Run,
}

/// The variables a step sees besides its own `environment`.
pub fn step_env(
    ctx: &EnvContext<'_>,
    workflow: &WorkflowPlan,
    step: &StepSpec,
) -> BTreeMap<String, String> {
    let mut env = workflow_env(ctx, workflow);
    env.insert("CI_STEP_ID".into(), ctx.step_id.to_string());
    env.insert("CI_STEP_NAME".into(), step.name.clone());
    env.insert(
        "CI_STEP_STARTED".into(),
        ctx.step_started.timestamp().to_string(),
    );
    env
}

/// The variables every step of a workflow shares.
pub fn workflow_env(ctx: &EnvContext<'_>, workflow: &WorkflowPlan) -> BTreeMap<String, String> {
    // The submission's variables first (CI_COMMIT_*, CI_REPO_*, …); piculet's own win.
    let mut env = ctx.run.variables.clone();
    let workspace = format!(
        "{}/{}",
        workflow.workspace.base.trim_end_matches('/'),
        workflow.workspace.path
    );
    let (os, arch) = workflow
        .platform
        .split_once('/')
        .unwrap_or((workflow.platform.as_str(), ""));
    let mut set = |k: &str, v: String| {
        env.insert(k.to_string(), v);
    };
    set("CI", "woodpecker".into());
    set("CI_SYSTEM_NAME", "piculet".into());
    set("CI_SYSTEM_VERSION", env!("CARGO_PKG_VERSION").into());
    set("CI_SYSTEM_PLATFORM", workflow.platform.clone());
    set("CI_PIPELINE_ID", ctx.pipeline_id.to_string());
    set(
        "CI_PIPELINE_CREATED",
        ctx.pipeline_created.timestamp().to_string(),
    );
    set(
        "CI_PIPELINE_STARTED",
        ctx.pipeline_started.timestamp().to_string(),
    );
    set("CI_PIPELINE_STATUS", ctx.pipeline_status.as_str().into());
    set("CI_WORKFLOW_ID", ctx.workflow_id.to_string());
    set("CI_WORKFLOW_NAME", workflow.name.clone());
    set("CI_WORKSPACE", workspace);
    set("CI_OS", os.to_string());
    set("CI_ARCH", arch.to_string());
    if let Some(repo) = &ctx.run.repo {
        set("CI_REPO_CLONE_URL", repo.clone_url.clone());
        if let Some(sha) = &repo.sha {
            set("CI_COMMIT_SHA", sha.clone());
        }
        if let Some(r) = &repo.git_ref {
            set("CI_COMMIT_REF", r.clone());
        }
    }
    for (axis, value) in &workflow.matrix {
        set(axis, value.clone());
    }
    env
}
