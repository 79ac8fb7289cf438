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
use super::logs::{LIMIT_NOTICE, Stored, pump};
use super::mask::Masker;
use super::{Inner, Opened};
use crate::backend::{BackendError, Presence, StepExit, StepHandle, StepRun, WorkflowRun};
use crate::model::{Status, StepKind};
use crate::pipeline::{self, Failure, StepSpec};
use crate::store::{ClaimedWorkflow, StartRecord, StepState};

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

/// How a step task begins.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Begin {
    /// A step never started: commit the start of attempt 1, then start it.
    Fresh,
    /// A step the store records as running at `attempt` under an earlier lease: ask the
    /// backend what it holds of that attempt before anything is started.
    Adopt { attempt: u32, launched: bool },
}

/// What a step task does next with the backend, once the store is settled.
enum Opening {
    /// Commit the start of `attempt` (`why`: the reason for a re-run), then start it.
    Record { attempt: u32, why: Option<String> },
    /// The start of `attempt` is committed and the backend never had it: start it.
    Launch { attempt: u32 },
    /// The backend holds `attempt`: re-attach to it.
    Attach { attempt: u32 },
}

fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()
}

/// Waits before the next try of a database or backend call that failed; false when the
/// workflow was given up meanwhile.
async fn backoff(delay: &mut Duration, abandon: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(*delay) => {},
        () = abandon.cancelled() => return false,
    }
    *delay = (*delay * 2).min(Duration::from_secs(5));
    true
}

/// How often the backend is asked about an adopted step before the step is given up as an
/// error: a minute or so of an unreachable backend.
const PROBE_TRIES: u32 = 8;

/// How often the end of a workflow is written before it is left to the replica that takes
/// the workflow over once the lease runs out.
const FINISH_TRIES: u32 = 64;

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
        let mut step = StepRun {
            step_id: id,
            attempt: 1,
            spec,
            env,
            runnable_at,
        };
        let background = step.spec.kind == pipeline::StepKind::Service || step.spec.detach;

        let (handle, first_number) = match self.open(&mut step, begin, started_at).await {
            Ok(opened) => opened,
            Err(outcome) => return outcome,
        };

        // The size cap is the step's: what earlier attempts or replicas stored counts.
        let already = if first_number > 1 {
            match self.stored(id).await {
                Ok(stored) => stored,
                Err(outcome) => return outcome,
            }
        } else {
            Stored::default()
        };
        let pump_stop = CancellationToken::new();
        let pumping = tokio::spawn({
            let store = store.clone();
            let masker = self.masker.clone();
            let max = self.inner.settings.max_log_bytes;
            let stop = pump_stop.clone();
            let output = handle.output;
            let inner = self.inner.clone();
            async move {
                pump(
                    &store,
                    id,
                    &inner.owner,
                    &masker,
                    max,
                    first_number,
                    already,
                    output,
                    stop,
                )
                .await
            }
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

    /// Settles where the step stands and gets a handle on it: the start of an attempt is
    /// committed before the backend is asked to start it, and an adopted attempt is asked
    /// about before anything is started, so that no attempt ever runs twice. An attempt that
    /// was interrupted is stopped and the step runs again as the next attempt, up to
    /// `PICULET_MAX_ATTEMPTS`. Returns the handle and the number of its first new log line, or
    /// how the step task ended without one.
    async fn open(
        &self,
        step: &mut StepRun,
        begin: Begin,
        started_at: DateTime<Utc>,
    ) -> Result<(StepHandle, i64), Outcome> {
        let id = step.step_id;
        let backend = self.inner.backend.clone();
        let mut opening = match begin {
            Begin::Fresh => Opening::Record {
                attempt: 1,
                why: None,
            },
            Begin::Adopt { attempt, launched } => {
                let attempt = attempt.max(1);
                match self.probe(id, attempt).await? {
                    Presence::Present => Opening::Attach { attempt },
                    // Recorded, and the backend never accepted it: this attempt never began
                    // (Kubernetes meets its deterministic pod name should it have after all).
                    Presence::Absent if !launched => Opening::Launch { attempt },
                    Presence::Absent => {
                        let what = format!(
                            "piculet stopped while it ran, and the {} backend holds nothing of it any more",
                            backend.name()
                        );
                        self.interrupted(step, attempt, what, started_at).await?
                    }
                    Presence::Interrupted { reason } => {
                        self.interrupted(step, attempt, reason, started_at).await?
                    }
                }
            }
        };
        loop {
            let attempt = match &opening {
                Opening::Record { attempt, .. }
                | Opening::Launch { attempt }
                | Opening::Attach { attempt } => *attempt,
            };
            step.attempt = attempt;
            // A first attempt of a step that never ran starts its log at line 1; anything
            // else continues after what earlier attempts (or this one, before a restart)
            // stored.
            let last = if matches!(opening, Opening::Record { attempt: 1, .. }) {
                None
            } else {
                self.last_line(id).await?
            };
            let next_number = last.as_ref().map_or(1, |l| l.number + 1);
            // An adopted or interrupted step of a pipeline canceled or timed out meanwhile is
            // not started again only to be stopped.
            if !matches!(opening, Opening::Attach { .. }) {
                if self.stops.cancel.is_cancelled() {
                    return Err(self
                        .finish_unstarted(id, Status::Canceled, Some("canceled".into()))
                        .await);
                }
                if self.stops.pipeline_expired.is_cancelled() {
                    let reason = format!(
                        "timed out after {} (the pipeline's timeout)",
                        human(self.stops.pipeline_timeout)
                    );
                    return Err(self
                        .finish_unstarted(id, Status::Failure, Some(reason))
                        .await);
                }
            }
            match opening {
                Opening::Record { attempt, why } => {
                    self.record_start(id, attempt, why.clone()).await?;
                    let next_number = match why {
                        // The log says why the lines start over.
                        Some(why) => {
                            super::logs::notice(
                                &self.inner.store,
                                id,
                                &self.inner.owner,
                                next_number,
                                format!("piculet: {why}\n"),
                            )
                            .await;
                            next_number + 1
                        }
                        None => next_number,
                    };
                    return self.launch(step, started_at, next_number).await;
                }
                Opening::Launch { .. } => return self.launch(step, started_at, next_number).await,
                Opening::Attach { attempt } => {
                    let after = last.as_ref().map(|l| l.at);
                    match backend.attach_step(&self.run, step, after).await {
                        Ok(handle) => return Ok((handle, next_number)),
                        // A step that cannot be re-attached must not go on running
                        // unobserved: it is stopped and run again.
                        Err(e) => {
                            let what = format!(
                                "piculet stopped while it ran, and the {} backend cannot re-attach to it ({e})",
                                backend.name()
                            );
                            opening = self.interrupted(step, attempt, what, started_at).await?;
                        }
                    }
                }
            }
        }
    }

    /// Asks the backend what it holds of an adopted attempt, trying again while it cannot
    /// answer: nothing is started without an answer.
    async fn probe(&self, id: Uuid, attempt: u32) -> Result<Presence, Outcome> {
        let mut delay = Duration::from_millis(200);
        let mut tries = 0;
        loop {
            tries += 1;
            match self.inner.backend.probe_step(&self.run, id, attempt).await {
                Ok(presence) => {
                    tracing::info!(
                        attempt,
                        ?presence,
                        "asked the backend about an adopted step"
                    );
                    return Ok(presence);
                }
                Err(e) if tries >= PROBE_TRIES => {
                    let reason = format!(
                        "piculet stopped while the step ran, and the {} backend could not say what became of attempt {attempt}: {e}",
                        self.inner.backend.name()
                    );
                    return Err(self.finish_unstarted(id, Status::Error, Some(reason)).await);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "asking the backend about an adopted step failed; retrying");
                    if !backoff(&mut delay, &self.stops.abandon).await {
                        return Err(Outcome::Abandoned);
                    }
                }
            }
        }
    }

    /// `attempt` was interrupted (`what` says how): what is left of it is stopped, and the
    /// step runs again as the next attempt, or ends as an error once it had its
    /// `PICULET_MAX_ATTEMPTS`.
    async fn interrupted(
        &self,
        step: &StepRun,
        attempt: u32,
        what: String,
        started_at: DateTime<Utc>,
    ) -> Result<Opening, Outcome> {
        let grace = self.inner.settings.grace;
        if let Err(e) = self
            .inner
            .backend
            .stop_step(&self.run, step.step_id, grace)
            .await
        {
            tracing::warn!(error = %e, "stopping what is left of an interrupted attempt failed");
        }
        let max = self.inner.settings.max_attempts;
        tracing::warn!(attempt, max, reason = %what, "a step attempt was interrupted");
        metrics::counter!("piculet_step_attempts_interrupted_total").increment(1);
        if attempt >= max {
            let reason = format!(
                "attempt {attempt} interrupted: {what}; not run again, {max} attempts is the most PICULET_MAX_ATTEMPTS allows"
            );
            return Err(self
                .finish(
                    step.step_id,
                    &step.spec,
                    Status::Error,
                    None,
                    Some(reason),
                    started_at,
                )
                .await);
        }
        let next = attempt + 1;
        Ok(Opening::Record {
            attempt: next,
            why: Some(format!(
                "attempt {attempt} interrupted: {what}; running it again as attempt {next}"
            )),
        })
    }

    /// Commits the start of `attempt`, trying again while the database cannot be written:
    /// the backend is never asked to start an attempt whose start is not committed.
    async fn record_start(
        &self,
        id: Uuid,
        attempt: u32,
        why: Option<String>,
    ) -> Result<(), Outcome> {
        let store = &self.inner.store;
        let mut delay = Duration::from_millis(100);
        loop {
            match store
                .step_started(
                    self.run.pipeline_id,
                    id,
                    &self.inner.owner,
                    attempt,
                    why.clone(),
                    Utc::now(),
                )
                .await
            {
                Ok(StartRecord::Recorded) => return Ok(()),
                Ok(StartRecord::Refused) => {
                    // Another replica holds the workflow now (this one's lease ran out): it
                    // decides about the step.
                    tracing::warn!(
                        attempt,
                        "the step's start was refused: the workflow's lease is no longer this replica's"
                    );
                    return Err(Outcome::Abandoned);
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "recording the step's start failed; retrying");
                    if !backoff(&mut delay, &self.stops.abandon).await {
                        return Err(Outcome::Abandoned);
                    }
                }
            }
        }
    }

    /// Asks the backend to start the attempt whose start is committed, then records that it
    /// accepted it (beside the step's first output: that record only matters to a replica
    /// that adopts the workflow).
    async fn launch(
        &self,
        step: &StepRun,
        started_at: DateTime<Utc>,
        first_number: i64,
    ) -> Result<(StepHandle, i64), Outcome> {
        let started = self.inner.backend.start_step(&self.run, step).await;
        if !self
            .first_start
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let waited = (started_at - self.claimed_created)
                .to_std()
                .unwrap_or_default();
            metrics::histogram!("piculet_submit_to_start_seconds").record(waited.as_secs_f64());
        }
        match started {
            Ok(handle) => {
                let store = self.inner.store.clone();
                let (id, attempt) = (step.step_id, step.attempt);
                tokio::spawn(
                    async move {
                        if let Err(e) = store.step_launched(id, attempt).await {
                            tracing::warn!(error = %e, "recording that the backend started the step failed; an adopting replica will ask it");
                        }
                    }
                    .in_current_span(),
                );
                Ok((handle, first_number))
            }
            Err(BackendError::Refused(reason)) | Err(BackendError::Failed(reason)) => Err(self
                .finish(
                    step.step_id,
                    &step.spec,
                    Status::Error,
                    None,
                    Some(reason),
                    started_at,
                )
                .await),
        }
    }

    /// The step's last stored log line, trying again while the database cannot be read: a
    /// wrong guess would number new lines over stored ones.
    async fn last_line(&self, id: Uuid) -> Result<Option<crate::model::LogLine>, Outcome> {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.inner.store.last_log_line(id).await {
                Ok(last) => return Ok(last),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the step's last log line failed; retrying");
                    if !backoff(&mut delay, &self.stops.abandon).await {
                        return Err(Outcome::Abandoned);
                    }
                }
            }
        }
    }

    /// How much of the step's log is stored, trying again while the database cannot be read:
    /// a wrong guess would let the log grow past its cap.
    async fn stored(&self, id: Uuid) -> Result<Stored, Outcome> {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.inner.store.log_size(id, LIMIT_NOTICE).await {
                Ok((bytes, truncated)) => return Ok(Stored { bytes, truncated }),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the size of the step's log failed; retrying");
                    if !backoff(&mut delay, &self.stops.abandon).await {
                        return Err(Outcome::Abandoned);
                    }
                }
            }
        }
    }

    /// Ends a step that has no handle, without the duration metric of a step that ran here.
    async fn finish_unstarted(&self, id: Uuid, status: Status, reason: Option<String>) -> Outcome {
        if let Err(e) = self
            .inner
            .store
            .step_finished(
                self.run.pipeline_id,
                id,
                &self.inner.owner,
                status,
                None,
                reason.clone(),
                Utc::now(),
            )
            .await
        {
            tracing::error!(error = %e, "recording the step's end failed");
        }
        Outcome::Finished {
            status,
            exit_code: None,
            reason,
        }
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
                &self.inner.owner,
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
    matches!(status, Status::Failure | Status::Error) && spec.failure.fails_workflow()
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
                    &inner.owner,
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
                &inner.owner,
                Status::Error,
                Some(reason),
            )
            .await;
        expiry.abort();
        return;
    }

    // Steps recorded as running under an earlier lease: each step task asks the backend about
    // its attempt before it starts anything (see `StepContext::open`). None is started twice.
    let adopted: HashMap<Uuid, Begin> = if claimed.takeover {
        metrics::counter!("piculet_lease_takeovers_total").increment(1);
        claimed
            .steps
            .iter()
            .filter(|s| s.status.0 == Status::Running)
            .map(|s| {
                (
                    s.id,
                    Begin::Adopt {
                        attempt: u32::try_from(s.attempt).unwrap_or(1),
                        launched: s.launched,
                    },
                )
            })
            .collect()
    } else {
        HashMap::new()
    };
    // The status each step had when the workflow was claimed; `None` for a step still to run.
    let claimed_status = |s: &StepState| -> Option<Status> {
        (s.status.0 != Status::Queued && !adopted.contains_key(&s.id)).then_some(s.status.0)
    };
    let adopted = &adopted;
    let begin_for = |id: Uuid| adopted.get(&id).cloned().unwrap_or(Begin::Fresh);

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
    let mut services_done: HashMap<String, Status> = HashMap::new();
    for spec in &plan.services {
        let Some(state) = service_ids.get(&spec.name) else {
            continue;
        };
        if let Some(status) = claimed_status(state).filter(|s| s.is_finished()) {
            services_done.insert(spec.name.clone(), status);
            continue;
        }
        let begin = begin_for(state.id);
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
                    && !adopted.contains_key(&id)
                {
                    let _ = store
                        .step_finished(
                            claimed.pipeline_id,
                            id,
                            &inner.owner,
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
                let begin = begin_for(id);
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
                        &inner.owner,
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
            if spec.failure == Failure::Cancel && fails_workflow(status, spec) {
                // `failure: cancel`: the rest of the pipeline stops, this workflow's other
                // steps with it; this workflow itself ends `failure` (see `outcome`).
                tracing::info!(step = %name, "failure: cancel, canceling the pipeline");
                if let Err(e) = store.cancel_pipeline(claimed.pipeline_id).await {
                    tracing::warn!(error = %e, "canceling the pipeline after a failure: cancel step failed");
                }
                inner.control.cancel(claimed.pipeline_id);
            }
        }
        done.insert(name, status);
    }

    // Services and detached steps end with the workflow; a service that ended on its own
    // with a failure counts against it (a service stopped here counts as success).
    stops.end_of_workflow.cancel();
    let service_task_ids: HashSet<Uuid> = service_ids.values().map(|s| s.id).collect();
    while let Some(joined) = background.join_next_with_id().await {
        match joined {
            Ok((_, Outcome::Abandoned)) => abandoned = true,
            Ok((task, Outcome::Finished { status, .. })) => {
                if let Some((name, id)) = tasks.get(&task)
                    && service_task_ids.contains(id)
                {
                    services_done.insert(name.clone(), status);
                }
            }
            Err(_) => {}
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
        &services_done,
        cancel.is_cancelled(),
        pipeline_expired.is_cancelled(),
    );
    // Retried while this replica holds the lease (its keeper renews it meanwhile): given up,
    // the workflow would stay `running` until its lease ran out and another replica found
    // every step finished and recorded the end in its place.
    let mut delay = Duration::from_millis(100);
    for tries in 1.. {
        match store
            .workflow_finished(
                claimed.pipeline_id,
                workflow_id,
                &inner.owner,
                status,
                reason.clone(),
            )
            .await
        {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "recording the workflow's end failed; retrying");
                // About five minutes of tries; then the lease is left to run out.
                if tries >= FINISH_TRIES || !backoff(&mut delay, &abandon).await {
                    tracing::error!(
                        "the lease is gone before the workflow's end was recorded; the replica that takes it over records it"
                    );
                    return;
                }
            }
        }
    }
    // Workflows that depended on this one may be ready now.
    inner.control.wake();
    tracing::info!(%status, "workflow finished");
}

/// The workflow's status from its steps' and its services'.
fn outcome(
    plan: &pipeline::WorkflowPlan,
    done: &HashMap<String, Status>,
    services: &HashMap<String, Status>,
    canceled: bool,
    expired: bool,
) -> (Status, Option<String>) {
    // A step with `failure: cancel` canceled the rest: its own failure is what this workflow
    // reports, not the cancel it caused.
    if let Some(s) = plan.steps.iter().find(|s| {
        s.failure == Failure::Cancel
            && matches!(done.get(&s.name), Some(Status::Failure | Status::Error))
    }) {
        return (
            Status::Failure,
            Some(format!(
                "step {} failed, and its failure: cancel canceled the rest of the pipeline",
                s.name
            )),
        );
    }
    // A cancel that came after every step had ended changes nothing.
    if canceled && done.values().any(|s| *s == Status::Canceled) {
        return (Status::Canceled, Some("canceled".into()));
    }
    let counted = |wanted: Status| {
        let step = plan
            .steps
            .iter()
            .find(|s| s.failure.fails_workflow() && done.get(&s.name) == Some(&wanted))
            .map(|s| ("step", &s.name));
        step.or_else(|| {
            plan.services
                .iter()
                .find(|s| s.failure.fails_workflow() && services.get(&s.name) == Some(&wanted))
                .map(|s| ("service", &s.name))
        })
    };
    if let Some((what, name)) = counted(Status::Error) {
        return (Status::Error, Some(format!("{what} {name} could not run")));
    }
    if let Some((what, name)) = counted(Status::Failure) {
        let why = if expired {
            " (the pipeline timed out)"
        } else {
            ""
        };
        return (Status::Failure, Some(format!("{what} {name} failed{why}")));
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
            concurrency: None,
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
        let none = HashMap::new();
        let ok = done(&[
            ("a", Status::Success),
            ("b", Status::Failure),
            ("c", Status::Success),
        ]);
        assert_eq!(
            outcome(&p, &ok, &none, false, false),
            (Status::Success, None),
            "failure: ignore"
        );
        assert_eq!(
            outcome(&p, &ok, &none, true, false),
            (Status::Success, None),
            "a cancel after the end changes nothing"
        );
        let canceled = done(&[
            ("a", Status::Success),
            ("b", Status::Canceled),
            ("c", Status::Canceled),
        ]);
        assert_eq!(
            outcome(&p, &canceled, &none, true, false).0,
            Status::Canceled
        );
        let failed = done(&[
            ("a", Status::Failure),
            ("b", Status::Success),
            ("c", Status::Skipped),
        ]);
        assert_eq!(
            outcome(&p, &failed, &none, false, false),
            (Status::Failure, Some("step a failed".into()))
        );
        let errored = done(&[
            ("a", Status::Failure),
            ("b", Status::Success),
            ("c", Status::Error),
        ]);
        assert_eq!(
            outcome(&p, &errored, &none, false, false).0,
            Status::Error,
            "an error outranks a failure"
        );
    }

    #[test]
    fn a_service_that_fails_fails_the_workflow_unless_ignored() {
        let mut p = plan(&[("a", Failure::Fail)]);
        p.services = ["db", "cache"]
            .into_iter()
            .map(|n| StepSpec::new(n, pipeline::StepKind::Service, "x"))
            .collect();
        p.services[1].failure = Failure::Ignore;
        let steps: HashMap<String, Status> = [("a".to_string(), Status::Success)].into();
        let services = |db: Status, cache: Status| -> HashMap<String, Status> {
            [("db".to_string(), db), ("cache".to_string(), cache)].into()
        };
        assert_eq!(
            outcome(
                &p,
                &steps,
                &services(Status::Success, Status::Failure),
                false,
                false
            ),
            (Status::Success, None),
            "a stopped service is a success; failure: ignore keeps the workflow green"
        );
        assert_eq!(
            outcome(
                &p,
                &steps,
                &services(Status::Failure, Status::Success),
                false,
                false
            ),
            (Status::Failure, Some("service db failed".into()))
        );
        assert_eq!(
            outcome(
                &p,
                &steps,
                &services(Status::Error, Status::Success),
                false,
                false
            ),
            (Status::Error, Some("service db could not run".into()))
        );
    }

    #[test]
    fn a_failure_cancel_step_is_what_its_workflow_reports() {
        let p = plan(&[("deploy", Failure::Cancel), ("after", Failure::Fail)]);
        let done: HashMap<String, Status> = [
            ("deploy".to_string(), Status::Failure),
            ("after".to_string(), Status::Canceled),
        ]
        .into();
        assert_eq!(
            outcome(&p, &done, &HashMap::new(), true, false),
            (
                Status::Failure,
                Some(
                    "step deploy failed, and its failure: cancel canceled the rest of the pipeline"
                        .into()
                )
            )
        );
    }
}
