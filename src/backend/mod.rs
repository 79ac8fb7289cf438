//! The backend interface: how the engine runs a workflow's steps somewhere (local processes,
//! Kubernetes pods) without knowing where.
//!
//! # Call order, per workflow
//! 1. [`Backend::setup_workflow`] once (workspace, shared objects). Idempotent: a workflow
//!    adopted after a restart calls it again.
//! 2. [`Backend::start_step`] for each service and step, concurrently for independent steps.
//!    Idempotent per step id and attempt: starting a step that already runs returns a handle
//!    on the running one where the backend can (Kubernetes), or an error.
//! 3. For every handle: read [`StepHandle::output`] to its end, then await
//!    [`StepHandle::exit`]. The output channel closes only after the step's last byte was
//!    read, and `exit` resolves only once the process or container has terminated: a step is
//!    never reported finished early.
//! 4. [`Backend::stop_step`] at any time (cancel, timeout, end of a service or a detached
//!    step): terminate, then kill after the grace period. Stopping a finished step is a no-op.
//! 5. [`Backend::teardown_workflow`] once, after every handle's output was read: removes
//!    everything the workflow created, including what still runs. Idempotent.
//!
//! After a restart, [`Backend::running_steps`] names the steps of a workflow that still run,
//! and [`Backend::attach_step`] re-attaches to one, resuming its output after the last line
//! the engine stored.
//!
//! Every method may be called from several tasks at once for different steps.

pub mod kubernetes;
pub mod lines;
pub mod local;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::pipeline::{StepSpec, WorkflowPlan};
use crate::run::RegistryCredential;

/// A workflow as the engine hands it to a backend.
#[derive(Clone)]
pub struct WorkflowRun {
    pub pipeline_id: Uuid,
    pub workflow_id: Uuid,
    pub plan: WorkflowPlan,
    /// Secret values by name, for this run only; steps get them through `from_secret`.
    pub secrets: BTreeMap<String, String>,
    /// The id of each step and service, by name.
    pub step_ids: BTreeMap<String, Uuid>,
    /// The namespace the submission asks for (Kubernetes; the policy allowed it at submit).
    pub namespace: Option<String>,
    /// The submission's registry credentials.
    pub registries: Vec<RegistryCredential>,
}

impl std::fmt::Debug for WorkflowRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowRun")
            .field("pipeline_id", &self.pipeline_id)
            .field("workflow_id", &self.workflow_id)
            .field("name", &self.plan.name)
            .finish_non_exhaustive()
    }
}

/// A step (or service) to start.
#[derive(Clone, Debug)]
pub struct StepRun {
    pub step_id: Uuid,
    pub attempt: u32,
    pub spec: StepSpec,
    /// The built-in `CI_*` variables and the submission's variables. The step's own
    /// `environment` (with its secrets) is in `spec` and resolved by the backend.
    pub env: BTreeMap<String, String>,
    /// When the engine found the step runnable: a backend measures its own delay from here.
    pub runnable_at: std::time::Instant,
}

/// One line of a step's output: stdout and stderr merged in the order they were written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputLine {
    pub at: DateTime<Utc>,
    /// The line with its `\n`; the last line may lack it, and a very long line comes in
    /// several pieces, only the last with `\n`, so that concatenating them gives back the
    /// exact bytes.
    pub text: String,
}

/// How a step ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepExit {
    /// It ran and exited with this code; `reason` names what the platform saw (`OOMKilled`,
    /// `killed by signal 9`).
    Exited { code: i32, reason: Option<String> },
    /// It could not run or was lost (image pull failed, unschedulable, vanished); the reason
    /// says why in words a person can act on.
    Error { reason: String },
}

/// What a backend holds of one attempt of a step (see [`Backend::probe_step`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Presence {
    /// Nothing of it: the attempt never ran, or (where the backend cannot tell the two apart,
    /// Kubernetes) it ran and its objects are gone. The engine decides with what it stored.
    Absent,
    /// It runs, or it ended with an exit the backend still knows: [`Backend::attach_step`]
    /// resumes its output and reports that exit.
    Present,
    /// It started and can be neither re-attached nor trusted to finish (its process died with
    /// no exit recorded, its output is gone); `reason` says what was found. The engine stops
    /// what is left of it and runs the step again as a new attempt.
    Interrupted { reason: String },
}

/// A started step: its output, then its exit.
pub struct StepHandle {
    pub output: mpsc::Receiver<OutputLine>,
    pub exit: BoxFuture<'static, StepExit>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The step cannot run on this backend, for a reason the user can act on.
    #[error("{0}")]
    Refused(String),
    /// The backend failed (I/O, API error) doing what it was asked.
    #[error("{0}")]
    Failed(String),
}

#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// `local` or `kubernetes`, for logs and metrics.
    fn name(&self) -> &'static str;

    async fn setup_workflow(&self, workflow: &WorkflowRun) -> Result<(), BackendError>;

    async fn start_step(
        &self,
        workflow: &WorkflowRun,
        step: &StepRun,
    ) -> Result<StepHandle, BackendError>;

    async fn stop_step(
        &self,
        workflow: &WorkflowRun,
        step_id: Uuid,
        grace: Duration,
    ) -> Result<(), BackendError>;

    async fn teardown_workflow(&self, workflow: &WorkflowRun) -> Result<(), BackendError>;

    /// The ids of this workflow's steps that still run (after a restart of piculet).
    async fn running_steps(&self, workflow: &WorkflowRun) -> Result<Vec<Uuid>, BackendError>;

    /// What the backend holds of one attempt of a step whose start the store recorded: the
    /// adopting replica asks this before it starts anything, so that no attempt runs twice.
    async fn probe_step(
        &self,
        workflow: &WorkflowRun,
        step_id: Uuid,
        attempt: u32,
    ) -> Result<Presence, BackendError> {
        let _ = attempt;
        Ok(if self.running_steps(workflow).await?.contains(&step_id) {
            Presence::Present
        } else {
            Presence::Absent
        })
    }

    /// Re-attaches to a running step, its output resuming after `after` (the time of the
    /// last line stored). A backend that cannot re-attach refuses.
    async fn attach_step(
        &self,
        workflow: &WorkflowRun,
        step: &StepRun,
        after: Option<DateTime<Utc>>,
    ) -> Result<StepHandle, BackendError>;

    /// Whether the backend can run steps now; the error says what is missing (`/readyz`).
    async fn readiness(&self) -> Result<(), String> {
        Ok(())
    }

    /// The workflows that own objects in the backend (for the reaper at start-up).
    async fn managed_workflows(&self) -> Result<Vec<Uuid>, BackendError> {
        Ok(Vec::new())
    }

    /// Removes every object of a workflow that no replica runs any more (the reaper).
    async fn remove_workflow(&self, _workflow_id: Uuid) -> Result<(), BackendError> {
        Ok(())
    }
}
