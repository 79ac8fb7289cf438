//! Running one claimed workflow: services first, then the step DAG with independent steps in
//! parallel, `when.status` against the workflow's status so far, timeouts, cancel, and at the
//! end the services stopped, the backend torn down and the outcome recorded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use super::env::{EnvContext, step_env};
use super::logs::pump;
use super::mask::Masker;
use super::{Inner, Opened};
use crate::backend::{BackendError, StepExit, StepHandle, StepRun, WorkflowRun};
use crate::model::{Status, StepKind};
use crate::pipeline::{self, Failure, StepSpec};
use crate::store::{ClaimedWorkflow, StepState};

/// Why a step stopped before it ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Its own `timeout` (or the server's maximum).
    TimedOut(Duration),
    /// The pipeline's timeout.
    PipelineTimedOut(Duration),
    Canceled,
    /// A service or detached step, at the end of the workflow.
    EndOfWorkflow,
}

/// How a step task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Finished {
        status: Status,
        exit_code: Option<i32>,
        reason: Option<String>,
    },
    /// This replica stopped working on it (shutdown, lost lease); the database still says
    /// `running` and whoever adopts the workflow finishes it.
    Abandoned,
}

/// The tokens that stop steps early, shared by every step task of the workflow.
#[derive(Clone)]
struct Stops {
    cancel: CancellationToken,
    pipeline_expired: CancellationToken,
    pipeline_timeout: Duration,
    abandon: CancellationToken,
    /// Stops services and detached steps once the other steps are done.
    end_of_workflow: CancellationToken,
}

/// Everything a step task needs.
struct StepContext {
    inner: Arc<Inner>,
    run: WorkflowRun,
    masker: Masker,
    stops: Stops,
    claimed_created: DateTime<Utc>,
    pipeline_started: DateTime<Utc>,
    variables: BTreeMap<String, String>,
    repo: Option<serde_json::Value>,
    first_start: std::sync::atomic::AtomicBool,
}

/// How a step task begins: a fresh start, or re-attaching to a step that survived a restart.
enum Begin {
    Start,
    Attach {
        after: Option<DateTime<Utc>>,
        next_number: i64,
    },
}

fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()
}

impl StepContext {
    async fn run_step(
        self: Arc<Self>,
        id: Uuid,
        spec: StepSpec,
        pipeline_status: &'static str,
        begin: Begin,
    ) -> Outcome {
        let store = &self.inner.store;
        let runnable_at = std::time::Instant::now();
        let started_at = Utc::now();
        let env = step_env(
            &EnvContext {
                pipeline_id: self.run.pipeline_id,
                workflow_id: self.run.workflow_id,
                step_id: id,
                pipeline_created: self.claimed_created,
                pipeline_started: self.pipeline_started,
                step_started: started_at,
                pipeline_status,
                variables: &self.variables,
                repo: self.repo.as_ref(),
            },
            &self.run.plan,
            &spec,
        );
        let step = StepRun {
            step_id: id,
            attempt: 1,
            spec,
            env,
            runnable_at,
        };
        let background = step.spec.kind == pipeline::StepKind::Service || step.spec.detach;

        let attaching = matches!(begin, Begin::Attach { .. });
        let (handle, first_number) = match begin {
            Begin::Start => {
                // Recorded while the backend starts the step, not before, so that the start
                // does not wait for a database commit. A replica that dies in between leaves
                // the step queued (started again by whoever adopts the workflow: Kubernetes
                // pod names are deterministic, so that create meets the pod already there) or
                // running without a pod (recorded as lost).
                let (recorded, started) = tokio::join!(
                    store.step_started(self.run.pipeline_id, id, started_at),
                    self.inner.backend.start_step(&self.run, &step)
                );
                if let Err(e) = recorded {
                    tracing::error!(error = %e, "recording the step's start failed");
                }
                if !self
                    .first_start
                    .swap(true, std::sync::atomic::Ordering::SeqCst)
                {
                    let waited = (started_at - self.claimed_created)
                        .to_std()
                        .unwrap_or_default();
                    metrics::histogram!("piculet_submit_to_start_seconds")
                        .record(waited.as_secs_f64());
                }
                (started, 1)
            }
            Begin::Attach { after, next_number } => (
                self.inner
                    .backend
                    .attach_step(&self.run, &step, after)
                    .await,
                next_number,
            ),
        };
        let handle: StepHandle = match handle {
            Ok(h) => h,
            // A step that cannot be re-attached must not go on running unobserved.
            Err(e) if attaching => {
                let grace = self.inner.settings.grace;
                if let Err(stop) = self.inner.backend.stop_step(&self.run, id, grace).await {
                    tracing::warn!(error = %stop, "stopping a step that cannot be re-attached failed");
                }
                let reason = format!(
                    "lost: piculet stopped while the step ran, and the {} backend cannot re-attach to it ({e}); it was stopped",
                    self.inner.backend.name()
                );
                return self
                    .finish(
                        id,
                        &step.spec,
                        Status::Error,
                        None,
                        Some(reason),
                        started_at,
                    )
                    .await;
            }
            Err(BackendError::Refused(reason)) | Err(BackendError::Failed(reason)) => {
                return self
                    .finish(
                        id,
                        &step.spec,
                        Status::Error,
                        None,
                        Some(reason),
                        started_at,
                    )
                    .await;
            }
        };

        let pump_stop = CancellationToken::new();
        let pumping = tokio::spawn({
            let store = store.clone();
            let masker = self.masker.clone();
            let max = self.inner.settings.max_log_bytes;
            let stop = pump_stop.clone();
            async move { pump(&store, id, &masker, max, first_number, handle.output, stop).await }
                .in_current_span()
        });
        let mut exit = handle.exit;

        let timeout = step
            .spec
            .timeout
            .unwrap_or(self.inner.settings.max_timeout)
            .min(self.inner.settings.max_timeout);
        let stops = &self.stops;
        let stopped = tokio::select! {
            e = &mut exit => Ok(e),
            () = tokio::time::sleep(timeout), if !background => Err(Some(Stop::TimedOut(timeout))),
            () = stops.cancel.cancelled() => Err(Some(Stop::Canceled)),
            () = stops.pipeline_expired.cancelled() => Err(Some(Stop::PipelineTimedOut(stops.pipeline_timeout))),
            () = stops.end_of_workflow.cancelled(), if background => Err(Some(Stop::EndOfWorkflow)),
            () = stops.abandon.cancelled() => Err(None),
        };
        let (exit, why) = match stopped {
            Ok(exit) => (exit, None),
            Err(None) => {
                pump_stop.cancel();
                let _ = pumping.await;
                return Outcome::Abandoned;
            }
            Err(Some(why)) => {
                let grace = self.inner.settings.grace;
                if let Err(e) = self.inner.backend.stop_step(&self.run, id, grace).await {
                    tracing::warn!(error = %e, "stopping the step failed");
                }
                // The backend kills after the grace period; give it some room beyond that.
                let exit = tokio::time::timeout(grace + Duration::from_secs(30), &mut exit)
                    .await
                    .unwrap_or(StepExit::Error {
                        reason: "the step did not stop after it was killed".into(),
                    });
                (exit, Some(why))
            }
        };
        // Every line is stored before the step is recorded as finished.
        let _ = pumping.await;

        let (status, exit_code, reason) = match (why, exit) {
            (Some(Stop::TimedOut(d)), e) => (
                Status::Failure,
                exit_code(&e),
                Some(format!("timed out after {}", human(d))),
            ),
            (Some(Stop::PipelineTimedOut(d)), e) => (
                Status::Failure,
                exit_code(&e),
                Some(format!(
                    "timed out after {} (the pipeline's timeout)",
                    human(d)
                )),
            ),
            (Some(Stop::Canceled), e) => (Status::Canceled, exit_code(&e), Some("canceled".into())),
            (Some(Stop::EndOfWorkflow), e) => (Status::Success, exit_code(&e), None),
            (None, StepExit::Exited { code: 0, .. }) => (Status::Success, Some(0), None),
            (None, StepExit::Exited { code, reason }) => (
                Status::Failure,
                Some(code),
                Some(match reason {
                    Some(r) => format!("exit code {code} ({r})"),
                    None => format!("exit code {code}"),
                }),
            ),
            (None, StepExit::Error { reason }) => (Status::Error, None, Some(reason)),
        };
        self.finish(id, &step.spec, status, exit_code, reason, started_at)
            .await
    }

    async fn finish(
        &self,
        id: Uuid,
        spec: &StepSpec,
        status: Status,
        exit_code: Option<i32>,
        reason: Option<String>,
        started_at: DateTime<Utc>,
    ) -> Outcome {
        let now = Utc::now();
        if let Err(e) = self
            .inner
            .store
            .step_finished(
                self.run.pipeline_id,
                id,
                status,
                exit_code,
                reason.clone(),
                now,
            )
            .await
        {
            tracing::error!(error = %e, "recording the step's end failed");
        }
        let seconds = (now - started_at)
            .to_std()
            .unwrap_or_default()
            .as_secs_f64();
        metrics::histogram!("piculet_step_duration_seconds", "status" => status.as_str())
            .record(seconds);
        tracing::info!(step = %spec.name, %status, ?exit_code, reason = reason.as_deref().unwrap_or(""), "step finished");
        Outcome::Finished {
            status,
            exit_code,
            reason,
        }
    }
}

fn exit_code(e: &StepExit) -> Option<i32> {
    match e {
        StepExit::Exited { code, .. } => Some(*code),
        StepExit::Error { .. } => None,
    }
}

/// The step ids of a claimed workflow, by name: services and steps apart, since a step may
/// share its name with a service.
fn ids(steps: &[StepState]) -> (HashMap<String, &StepState>, HashMap<String, &StepState>) {
    let mut services = HashMap::new();
    let mut others = HashMap::new();
    for s in steps {
        if s.kind.0 == StepKind::Service {
            services.insert(s.name.clone(), s);
        } else {
            others.insert(s.name.clone(), s);
        }
    }
    (services, others)
}

/// A step that counts against the workflow: failed or errored, and not `failure: ignore`.
fn fails_workflow(status: Status, spec: &StepSpec) -> bool {
    matches!(status, Status::Failure | Status::Error) && spec.failure == Failure::Fail
}

/// Runs the workflow to its end, or until this replica gives it up.
pub(super) async fn run(
    inner: Arc<Inner>,
    claimed: ClaimedWorkflow,
    opened: Opened,
    cancel: CancellationToken,
    abandon: CancellationToken,
) {
    let workflow_id = claimed.workflow_id;
    let pipeline_timeout = claimed
        .pipeline_timeout_seconds
        .map(|s| Duration::from_secs(s.max(1) as u64))
        .unwrap_or(inner.settings.max_timeout)
        .min(inner.settings.max_timeout);
    let elapsed = (Utc::now() - claimed.pipeline_started_at)
        .to_std()
        .unwrap_or_default();
    let pipeline_expired = CancellationToken::new();
    let expiry = {
        let token = pipeline_expired.clone();
        let left = pipeline_timeout.saturating_sub(elapsed);
        tokio::spawn(async move {
            tokio::time::sleep(left).await;
            token.cancel();
        })
    };

    let Opened {
        secrets,
        registries,
    } = opened;
    let run = WorkflowRun {
        pipeline_id: claimed.pipeline_id,
        workflow_id,
        plan: claimed.plan.clone(),
        secrets: secrets.clone(),
        step_ids: claimed
            .steps
            .iter()
            .map(|s| (s.name.clone(), s.id))
            .collect(),
        namespace: claimed
            .submission
            .get("namespace")
            .and_then(|v| v.as_str())
            .map(str::to_string),
        registries,
    };
    let variables: BTreeMap<String, String> = claimed
        .submission
        .get("variables")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let stops = Stops {
        cancel: cancel.clone(),
        pipeline_expired: pipeline_expired.clone(),
        pipeline_timeout,
        abandon: abandon.clone(),
        end_of_workflow: CancellationToken::new(),
    };
    // Building the automaton costs time in proportion to the secrets' size: off the async
    // threads, which serve probes, leases and followers meanwhile.
    let values: Vec<String> = secrets.values().cloned().collect();
    let masker =
        match tokio::task::spawn_blocking(move || Masker::new(values.iter().map(String::as_str)))
            .await
        {
            Ok(masker) => masker,
            Err(e) => match e.try_into_panic() {
                // As if it had been built here: a step never runs without its masking.
                Ok(panic) => std::panic::resume_unwind(panic),
                // The runtime is shutting down: the lease runs out and another replica (or
                // this one, restarted) adopts the workflow, as after a crash.
                Err(_) => {
                    expiry.abort();
                    return;
                }
            },
        };
    let ctx = Arc::new(StepContext {
        masker,
        inner: inner.clone(),
        run,
        stops: stops.clone(),
        claimed_created: claimed.pipeline_created_at,
        pipeline_started: claimed.pipeline_started_at,
        variables,
        repo: claimed.submission.get("repo").cloned(),
        // Submit-to-start is measured once per workflow that could start at once: not after a
        // takeover, nor for a workflow that waited for others.
        first_start: std::sync::atomic::AtomicBool::new(
            claimed.takeover || !claimed.plan.depends_on.is_empty(),
        ),
    });
    let store = &inner.store;
    let plan = &claimed.plan;
    let (service_ids, step_ids) = ids(&claimed.steps);

    if let Err(e) = inner.backend.setup_workflow(&ctx.run).await {
        let reason = format!("could not set the workflow up: {e}");
        for s in claimed.steps.iter().filter(|s| !s.status.0.is_finished()) {
            let _ = store
                .step_finished(
                    claimed.pipeline_id,
                    s.id,
                    Status::Error,
                    None,
                    Some(reason.clone()),
                    Utc::now(),
                )
                .await;
        }
        let _ = store
            .workflow_finished(
                claimed.pipeline_id,
                workflow_id,
                Status::Error,
                Some(reason),
            )
            .await;
        expiry.abort();
        return;
    }

    // Steps that ran under an earlier lease: re-attach where the backend can; one gone from
    // the backend is lost. None is started twice.
    let mut adopted: HashSet<Uuid> = HashSet::new();
    let mut lost: HashSet<Uuid> = HashSet::new();
    if claimed.takeover {
        metrics::counter!("piculet_lease_takeovers_total").increment(1);
        let alive = inner
            .backend
            .running_steps(&ctx.run)
            .await
            .unwrap_or_default();
        for s in claimed
            .steps
            .iter()
            .filter(|s| s.status.0 == Status::Running)
        {
            if alive.contains(&s.id) {
                adopted.insert(s.id);
                continue;
            }
            lost.insert(s.id);
            let reason = format!(
                "lost: piculet stopped while the step ran, and the step is gone from the {} backend",
                inner.backend.name()
            );
            let _ = store
                .step_finished(
                    claimed.pipeline_id,
                    s.id,
                    Status::Error,
                    None,
                    Some(reason),
                    Utc::now(),
                )
                .await;
        }
    }
    // The status each step had when the workflow was claimed; `None` for a step still to run.
    let claimed_status = |s: &StepState| -> Option<Status> {
        if lost.contains(&s.id) {
            Some(Status::Error)
        } else {
            (s.status.0 != Status::Queued && !adopted.contains(&s.id)).then_some(s.status.0)
        }
    };
    let adopted = &adopted;
    let begin_for = |id: Uuid| async move {
        if adopted.contains(&id) {
            let last = store.last_log_line(id).await.ok().flatten();
            Begin::Attach {
                after: last.as_ref().map(|l| l.at),
                next_number: last.map(|l| l.number + 1).unwrap_or(1),
            }
        } else {
            Begin::Start
        }
    };

    // Step tasks, foreground (the DAG waits for them) and background (services and detached
    // steps, which end with the workflow); a task's id names its step should it panic.
    let mut tasks: HashMap<tokio::task::Id, (String, Uuid)> = HashMap::new();
    let spawn = |set: &mut JoinSet<Outcome>,
                 tasks: &mut HashMap<tokio::task::Id, (String, Uuid)>,
                 id: Uuid,
                 spec: StepSpec,
                 pipeline_status: &'static str,
                 begin: Begin| {
        let ctx = ctx.clone();
        let span = tracing::info_span!("step", step_id = %id, step = %spec.name);
        let name = spec.name.clone();
        let handle = set.spawn(
            async move { ctx.run_step(id, spec, pipeline_status, begin).await }.instrument(span),
        );
        tasks.insert(handle.id(), (name, id));
    };
    let mut background: JoinSet<Outcome> = JoinSet::new();

    // Services first, for the life of the workflow.
    for spec in &plan.services {
        let Some(state) = service_ids.get(&spec.name) else {
            continue;
        };
        if claimed_status(state).is_some_and(Status::is_finished) {
            continue;
        }
        let begin = begin_for(state.id).await;
        spawn(
            &mut background,
            &mut tasks,
            state.id,
            spec.clone(),
            "success",
            begin,
        );
    }

    // The step DAG.
    let specs: HashMap<&str, &StepSpec> = plan.steps.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut done: HashMap<String, Status> = HashMap::new();
    let mut failed = false;
    let mut pending: Vec<&StepSpec> = Vec::new();
    for spec in &plan.steps {
        match step_ids.get(&spec.name).and_then(|s| claimed_status(s)) {
            Some(status) if status.is_finished() => {
                failed |= fails_workflow(status, spec);
                done.insert(spec.name.clone(), status);
            }
            _ => pending.push(spec),
        }
    }
    let mut running: JoinSet<Outcome> = JoinSet::new();
    let mut abandoned = false;
    loop {
        // Start every step whose dependencies are done, until no more can start; nothing new
        // starts once this replica gives the workflow up.
        let mut progressed = !abandon.is_cancelled();
        while progressed {
            progressed = false;
            let ready: Vec<&StepSpec> = pending
                .iter()
                .copied()
                .filter(|s| s.depends_on.iter().all(|d| done.contains_key(d)))
                .collect();
            for spec in ready {
                pending.retain(|p| p.name != spec.name);
                progressed = true;
                let Some(state) = step_ids.get(&spec.name) else {
                    continue;
                };
                let id = state.id;
                let stopped_early = if cancel.is_cancelled() {
                    Some((Status::Canceled, "canceled before it started".to_string()))
                } else if pipeline_expired.is_cancelled() {
                    Some((
                        Status::Skipped,
                        "skipped: the pipeline timed out".to_string(),
                    ))
                } else {
                    let now = if failed {
                        pipeline::Status::Failure
                    } else {
                        pipeline::Status::Success
                    };
                    (!spec.when_status.contains(&now)).then(|| {
                        (
                            Status::Skipped,
                            format!(
                                "skipped: runs when the workflow {}, and it {}",
                                if spec.when_status.contains(&pipeline::Status::Failure) {
                                    "fails"
                                } else {
                                    "succeeds"
                                },
                                if failed { "failed" } else { "has not failed" }
                            ),
                        )
                    })
                };
                if let Some((status, reason)) = stopped_early
                    && !adopted.contains(&id)
                {
                    let _ = store
                        .step_finished(
                            claimed.pipeline_id,
                            id,
                            status,
                            None,
                            Some(reason),
                            Utc::now(),
                        )
                        .await;
                    done.insert(spec.name.clone(), status);
                    continue;
                }
                let pipeline_status = if failed { "failure" } else { "success" };
                let begin = begin_for(id).await;
                if spec.detach {
                    // A detached step runs beside the rest; its dependents go on at once.
                    spawn(
                        &mut background,
                        &mut tasks,
                        id,
                        spec.clone(),
                        pipeline_status,
                        begin,
                    );
                    done.insert(spec.name.clone(), Status::Running);
                } else {
                    spawn(
                        &mut running,
                        &mut tasks,
                        id,
                        spec.clone(),
                        pipeline_status,
                        begin,
                    );
                }
            }
        }
        let Some(joined) = running.join_next_with_id().await else {
            break;
        };
        let (name, status) = match joined {
            Ok((task, Outcome::Finished { status, .. })) => (
                tasks.get(&task).map(|t| t.0.clone()).unwrap_or_default(),
                status,
            ),
            Ok((_, Outcome::Abandoned)) => {
                abandoned = true;
                continue;
            }
            Err(e) => {
                // A bug of piculet's, not of the step: record it rather than leave the step
                // running and its dependents waiting forever.
                let (name, id) = tasks.get(&e.id()).cloned().unwrap_or_default();
                tracing::error!(step = %name, error = %e, "a step task failed");
                let reason =
                    "piculet failed while running the step; see the server log".to_string();
                let _ = store
                    .step_finished(
                        claimed.pipeline_id,
                        id,
                        Status::Error,
                        None,
                        Some(reason),
                        Utc::now(),
                    )
                    .await;
                (name, Status::Error)
            }
        };
        if let Some(spec) = specs.get(name.as_str()) {
            failed |= fails_workflow(status, spec);
        }
        done.insert(name, status);
    }

    // Services and detached steps end with the workflow.
    stops.end_of_workflow.cancel();
    while let Some(joined) = background.join_next().await {
        if matches!(joined, Ok(Outcome::Abandoned)) {
            abandoned = true;
        }
    }
    // Steps never started because the workflow was given up are left queued for whoever
    // adopts it.
    abandoned |= abandon.is_cancelled() && !pending.is_empty();
    expiry.abort();
    if abandoned || abandon.is_cancelled() {
        tracing::info!("workflow left for adoption");
        return;
    }

    if let Err(e) = inner.backend.teardown_workflow(&ctx.run).await {
        tracing::warn!(error = %e, "tearing the workflow down failed");
    }
    let (status, reason) = outcome(
        plan,
        &done,
        cancel.is_cancelled(),
        pipeline_expired.is_cancelled(),
    );
    if let Err(e) = store
        .workflow_finished(claimed.pipeline_id, workflow_id, status, reason)
        .await
    {
        tracing::error!(error = %e, "recording the workflow's end failed");
    }
    // Workflows that depended on this one may be ready now.
    inner.control.wake();
    tracing::info!(%status, "workflow finished");
}

/// The workflow's status from its steps'.
fn outcome(
    plan: &pipeline::WorkflowPlan,
    done: &HashMap<String, Status>,
    canceled: bool,
    expired: bool,
) -> (Status, Option<String>) {
    // A cancel that came after every step had ended changes nothing.
    if canceled && done.values().any(|s| *s == Status::Canceled) {
        return (Status::Canceled, Some("canceled".into()));
    }
    let counted = |wanted: Status| {
        plan.steps
            .iter()
            .find(|s| s.failure == Failure::Fail && done.get(&s.name) == Some(&wanted))
    };
    if let Some(s) = counted(Status::Error) {
        return (
            Status::Error,
            Some(format!("step {} could not run", s.name)),
        );
    }
    if let Some(s) = counted(Status::Failure) {
        let why = if expired {
            " (the pipeline timed out)"
        } else {
            ""
        };
        return (
            Status::Failure,
            Some(format!("step {} failed{why}", s.name)),
        );
    }
    (Status::Success, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(steps: &[(&str, Failure)]) -> pipeline::WorkflowPlan {
        pipeline::WorkflowPlan {
            name: "ci".into(),
            matrix: Default::default(),
            platform: "linux/amd64".into(),
            workspace: Default::default(),
            labels: Default::default(),
            depends_on: Vec::new(),
            runs_on: vec![pipeline::Status::Success],
            services: Vec::new(),
            steps: steps
                .iter()
                .map(|(name, failure)| StepSpec {
                    failure: *failure,
                    ..StepSpec::new(name, pipeline::StepKind::Step, "alpine")
                })
                .collect(),
            dropped_steps: Vec::new(),
        }
    }

    #[test]
    fn the_workflow_status_follows_its_steps() {
        let p = plan(&[
            ("a", Failure::Fail),
            ("b", Failure::Ignore),
            ("c", Failure::Fail),
        ]);
        let done = |s: &[(&str, Status)]| -> HashMap<String, Status> {
            s.iter().map(|(n, st)| ((*n).to_string(), *st)).collect()
        };
        let ok = done(&[
            ("a", Status::Success),
            ("b", Status::Failure),
            ("c", Status::Success),
        ]);
        assert_eq!(
            outcome(&p, &ok, false, false),
            (Status::Success, None),
            "failure: ignore"
        );
        assert_eq!(
            outcome(&p, &ok, true, false),
            (Status::Success, None),
            "a cancel after the end changes nothing"
        );
        let canceled = done(&[
            ("a", Status::Success),
            ("b", Status::Canceled),
            ("c", Status::Canceled),
        ]);
        assert_eq!(outcome(&p, &canceled, true, false).0, Status::Canceled);
        let failed = done(&[
            ("a", Status::Failure),
            ("b", Status::Success),
            ("c", Status::Skipped),
        ]);
        assert_eq!(
            outcome(&p, &failed, false, false),
            (Status::Failure, Some("step a failed".into()))
        );
        let errored = done(&[
            ("a", Status::Failure),
            ("b", Status::Success),
            ("c", Status::Error),
        ]);
        assert_eq!(
            outcome(&p, &errored, false, false).0,
            Status::Error,
            "an error outranks a failure"
        );
    }
}
