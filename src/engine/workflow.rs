//! Running one claimed workflow: performing what its [`Schedule`] decides (services first,
//! then the step DAG with independent steps in parallel, at the end the services stopped, the
//! backend torn down and the outcome recorded), and running each step task: its start
//! protocol, its output, its timeout and cancel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use super::logs::{LIMIT_NOTICE, Stored, pump};
use super::mask::Masker;
use super::schedule::{
    Adoption, Begin, Decision, Ended, Lane, Schedule, Start, Stop, adoption, pipeline_timed_out,
    rerun, step_end,
};
use super::{Inner, Opened};
use crate::backend::{BackendError, Presence, StepExit, StepHandle, StepRun, WorkflowRun};
use crate::model::Status;
use crate::pipeline::{self, StepSpec};
use crate::run::Run;
use crate::run::env::{EnvContext, step_env};
use crate::store::{ClaimedWorkflow, StartRecord};

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
    /// What the submission gave the run: variables and repository for the steps' `CI_*`.
    submitted: Run,
    first_start: std::sync::atomic::AtomicBool,
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

/// The longest wait between two tries of a database or backend call that failed.
const RETRY_MAX_DELAY: Duration = Duration::from_secs(5);

/// The waits between tries of a database or backend call that failed: doubling from `first`
/// up to [`RETRY_MAX_DELAY`], with no end of their own (the callers count their tries, or
/// wait for the workflow to be given up).
fn retry_waits(first: Duration) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder as _;
    backon::ExponentialBuilder::new()
        .with_min_delay(first)
        .with_max_delay(RETRY_MAX_DELAY)
        .without_max_times()
        .build()
}

/// Waits the next of `waits` before another try; false when the workflow was given up
/// meanwhile (the wait ends at once then), or when `waits` has an end and reached it (those
/// of [`retry_waits`] have none).
async fn backoff(waits: &mut backon::ExponentialBackoff, abandon: &CancellationToken) -> bool {
    let Some(delay) = waits.next() else {
        return false;
    };
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = abandon.cancelled() => false,
    }
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
        pipeline_status: pipeline::Conclusion,
        begin: Begin,
    ) -> Ended {
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
                run: &self.submitted,
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

        // The database and backend calls before and after the step run are boxed: the task's
        // future is as large as its largest state, and it spends the step's whole run waiting
        // on the exit, which needs little.
        let (handle, first_number) = match Box::pin(self.open(&mut step, begin, started_at)).await {
            Ok(opened) => opened,
            Err(outcome) => return outcome,
        };

        // The size cap is the step's: what earlier attempts or replicas stored counts.
        let already = if first_number > 1 {
            match Box::pin(self.stored(id)).await {
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
                    &inner.metrics,
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
                return Ended::Abandoned;
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

        let (status, exit_code, reason) = step_end(why, exit);
        Box::pin(self.finish(id, &step.spec, status, exit_code, reason, started_at)).await
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
    ) -> Result<(StepHandle, i64), Ended> {
        let id = step.step_id;
        let backend = self.inner.backend.clone();
        let mut opening = match begin {
            Begin::Fresh => Opening::Record {
                attempt: 1,
                why: None,
            },
            Begin::Adopt { attempt, launched } => {
                let attempt = attempt.max(1);
                let presence = self.probe(id, attempt).await?;
                match adoption(presence, launched, backend.name()) {
                    Adoption::Attach => Opening::Attach { attempt },
                    Adoption::Launch => Opening::Launch { attempt },
                    Adoption::Interrupted(what) => {
                        self.interrupted(step, attempt, what, started_at).await?
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
                    let reason = pipeline_timed_out(self.stops.pipeline_timeout);
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
    async fn probe(&self, id: Uuid, attempt: u32) -> Result<Presence, Ended> {
        let mut waits = retry_waits(Duration::from_millis(200));
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
                    if !backoff(&mut waits, &self.stops.abandon).await {
                        return Err(Ended::Abandoned);
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
    ) -> Result<Opening, Ended> {
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
        self.inner
            .metrics
            .counter("piculet_step_attempts_interrupted_total", &[])
            .increment(1);
        match rerun(attempt, max, &what) {
            Ok((attempt, why)) => Ok(Opening::Record {
                attempt,
                why: Some(why),
            }),
            Err(reason) => Err(self
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

    /// Commits the start of `attempt`, trying again while the database cannot be written:
    /// the backend is never asked to start an attempt whose start is not committed.
    async fn record_start(&self, id: Uuid, attempt: u32, why: Option<String>) -> Result<(), Ended> {
        let store = &self.inner.store;
        let mut waits = retry_waits(Duration::from_millis(100));
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
                    return Err(Ended::Abandoned);
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "recording the step's start failed; retrying");
                    if !backoff(&mut waits, &self.stops.abandon).await {
                        return Err(Ended::Abandoned);
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
    ) -> Result<(StepHandle, i64), Ended> {
        let started = self.inner.backend.start_step(&self.run, step).await;
        if !self
            .first_start
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let waited = (started_at - self.claimed_created)
                .to_std()
                .unwrap_or_default();
            self.inner
                .metrics
                .histogram("piculet_submit_to_start_seconds", &[])
                .record(waited.as_secs_f64());
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
    async fn last_line(&self, id: Uuid) -> Result<Option<crate::model::LogLine>, Ended> {
        let mut waits = retry_waits(Duration::from_millis(100));
        loop {
            match self.inner.store.last_log_line(id).await {
                Ok(last) => return Ok(last),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the step's last log line failed; retrying");
                    if !backoff(&mut waits, &self.stops.abandon).await {
                        return Err(Ended::Abandoned);
                    }
                }
            }
        }
    }

    /// How much of the step's log is stored, trying again while the database cannot be read:
    /// a wrong guess would let the log grow past its cap.
    async fn stored(&self, id: Uuid) -> Result<Stored, Ended> {
        let mut waits = retry_waits(Duration::from_millis(100));
        loop {
            match self.inner.store.log_size(id, LIMIT_NOTICE).await {
                Ok((bytes, truncated)) => return Ok(Stored { bytes, truncated }),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the size of the step's log failed; retrying");
                    if !backoff(&mut waits, &self.stops.abandon).await {
                        return Err(Ended::Abandoned);
                    }
                }
            }
        }
    }

    /// Ends a step that has no handle, without the duration metric of a step that ran here.
    async fn finish_unstarted(&self, id: Uuid, status: Status, reason: Option<String>) -> Ended {
        if let Err(e) = self
            .inner
            .store
            .step_finished(
                self.run.pipeline_id,
                id,
                &self.inner.owner,
                status,
                None,
                reason,
                Utc::now(),
            )
            .await
        {
            tracing::error!(error = %e, "recording the step's end failed");
        }
        Ended::Finished(status)
    }

    async fn finish(
        &self,
        id: Uuid,
        spec: &StepSpec,
        status: Status,
        exit_code: Option<i32>,
        reason: Option<String>,
        started_at: DateTime<Utc>,
    ) -> Ended {
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
        self.inner
            .metrics
            .histogram(
                "piculet_step_duration_seconds",
                &[("status", status.as_str())],
            )
            .record(seconds);
        tracing::info!(step = %spec.name, %status, ?exit_code, reason = reason.as_deref().unwrap_or(""), "step finished");
        Ended::Finished(status)
    }
}

/// Runs the workflow to its end, or until this replica gives it up.
pub(super) async fn run(
    inner: Arc<Inner>,
    claimed: ClaimedWorkflow,
    opened: Opened,
    cancel: CancellationToken,
    abandon: CancellationToken,
) {
    let pipeline_timeout = claimed
        .pipeline_timeout
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
    let stops = Stops {
        cancel,
        pipeline_expired,
        pipeline_timeout,
        abandon: abandon.clone(),
        end_of_workflow: CancellationToken::new(),
    };
    let decided = match context(&inner, &claimed, opened, stops).await {
        Some(ctx) => perform(&ctx, &claimed).await,
        // The runtime is shutting down: the lease runs out and another replica (or this one,
        // restarted) adopts the workflow, as after a crash.
        None => None,
    };
    expiry.abort();
    // The database calls of a workflow's task are boxed: its future is as large as its
    // largest state, and it spends the workflow's whole run waiting for step tasks.
    if let Some((status, reason)) = decided {
        Box::pin(record_end(&inner, &claimed, status, reason, &abandon)).await;
    }
}

/// What every step task of the workflow shares; `None` when the runtime is shutting down.
async fn context(
    inner: &Arc<Inner>,
    claimed: &ClaimedWorkflow,
    opened: Opened,
    stops: Stops,
) -> Option<Arc<StepContext>> {
    let Opened {
        run: submitted,
        secrets,
        registries,
    } = opened;
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
                Err(_) => return None,
            },
        };
    let run = WorkflowRun {
        pipeline_id: claimed.pipeline_id,
        workflow_id: claimed.workflow_id,
        plan: claimed.plan.clone(),
        secrets,
        step_ids: claimed
            .steps
            .iter()
            .map(|s| (s.name.clone(), s.id))
            .collect(),
        namespace: submitted.namespace.clone(),
        registries,
    };
    Some(Arc::new(StepContext {
        masker,
        inner: inner.clone(),
        run,
        stops,
        claimed_created: claimed.pipeline_created_at,
        pipeline_started: claimed.pipeline_started_at,
        submitted,
        // Submit-to-start is measured once per workflow that could start at once: not after a
        // takeover, nor for a workflow that waited for others.
        first_start: std::sync::atomic::AtomicBool::new(
            claimed.takeover || !claimed.plan.depends_on.is_empty(),
        ),
    }))
}

/// The step tasks of a workflow: foreground (the DAG waits for them) and background
/// (services and detached steps, which end with the workflow). A task's id names its step
/// should the task fail.
#[derive(Default)]
struct Tasks {
    foreground: JoinSet<Ended>,
    background: JoinSet<Ended>,
    steps: HashMap<tokio::task::Id, Uuid>,
}

impl Tasks {
    fn spawn(&mut self, ctx: &Arc<StepContext>, start: Start<'_>) {
        let Start {
            id,
            spec,
            begin,
            lane,
            so_far,
        } = start;
        let ctx = ctx.clone();
        let span = tracing::info_span!("step", step_id = %id, step = %spec.name);
        let spec = spec.clone();
        let handle = self
            .set(lane)
            .spawn(async move { ctx.run_step(id, spec, so_far, begin).await }.instrument(span));
        self.steps.insert(handle.id(), id);
    }

    fn set(&mut self, lane: Lane) -> &mut JoinSet<Ended> {
        match lane {
            Lane::Foreground => &mut self.foreground,
            Lane::Background => &mut self.background,
        }
    }

    /// The next task of `lane` to end: its step and how it ended.
    async fn next(&mut self, lane: Lane) -> Option<(Uuid, Ended)> {
        let (task, ended) = match self.set(lane).join_next_with_id().await? {
            Ok((task, ended)) => (task, Ok(ended)),
            Err(e) => (e.id(), Err(e)),
        };
        let step_id = self.steps.get(&task).copied().unwrap_or_default();
        let ended = ended.unwrap_or_else(|e| {
            tracing::error!(%step_id, error = %e, "a step task failed");
            Ended::Lost
        });
        Some((step_id, ended))
    }
}

/// Sets the workflow up in the backend and performs what its schedule decides until it
/// ends: the outcome to record, or `None` when the workflow is left for adoption (or was
/// already recorded as an error).
async fn perform(
    ctx: &Arc<StepContext>,
    claimed: &ClaimedWorkflow,
) -> Option<(Status, Option<String>)> {
    let inner = &ctx.inner;
    let store = &inner.store;
    if let Err(e) = inner.backend.setup_workflow(&ctx.run).await {
        Box::pin(setup_failed(
            inner,
            claimed,
            format!("could not set the workflow up: {e}"),
        ))
        .await;
        return None;
    }
    if claimed.takeover {
        inner
            .metrics
            .counter("piculet_lease_takeovers_total", &[])
            .increment(1);
    }
    // Steps recorded as running under an earlier lease are adopted: each step task asks the
    // backend about its attempt before it starts anything (see `StepContext::open`).
    let mut schedule = Schedule::new(&claimed.plan, &claimed.steps, claimed.takeover);
    let mut tasks = Tasks::default();
    loop {
        let stops = &ctx.stops;
        if stops.cancel.is_cancelled() {
            schedule.cancel();
        }
        if stops.pipeline_expired.is_cancelled() {
            schedule.expire();
        }
        if stops.abandon.is_cancelled() {
            schedule.give_up();
        }
        let lane = match schedule.next() {
            Decision::Start(start) => {
                tasks.spawn(ctx, start);
                continue;
            }
            Decision::End { id, status, reason } => {
                let _ = Box::pin(store.step_finished(
                    claimed.pipeline_id,
                    id,
                    &inner.owner,
                    status,
                    None,
                    Some(reason),
                    Utc::now(),
                ))
                .await;
                continue;
            }
            Decision::CancelPipeline { step } => {
                tracing::info!(step, "failure: cancel, canceling the pipeline");
                if let Err(e) = Box::pin(store.cancel_pipeline(claimed.pipeline_id)).await {
                    tracing::warn!(error = %e, "canceling the pipeline after a failure: cancel step failed");
                }
                inner.control.cancel(claimed.pipeline_id);
                continue;
            }
            Decision::StopBackground => {
                stops.end_of_workflow.cancel();
                continue;
            }
            Decision::AwaitStep => Lane::Foreground,
            Decision::AwaitBackground => Lane::Background,
            Decision::Finish { status, reason } => {
                if let Err(e) = inner.backend.teardown_workflow(&ctx.run).await {
                    tracing::warn!(error = %e, "tearing the workflow down failed");
                }
                return Some((status, reason));
            }
            Decision::Leave => {
                tracing::info!("workflow left for adoption");
                return None;
            }
        };
        match tasks.next(lane).await {
            Some((id, ended)) => schedule.ended(id, ended),
            None => {
                // The schedule counts a task the set does not hold: a bug of piculet's. The
                // lease runs out and the replica that takes the workflow over finishes it.
                tracing::error!(
                    ?lane,
                    "the schedule waits for a step task that is not running"
                );
                return None;
            }
        }
    }
}

/// Ends every unfinished step and the workflow as errors: the backend could not set the
/// workflow up.
async fn setup_failed(inner: &Inner, claimed: &ClaimedWorkflow, reason: String) {
    let store = &inner.store;
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
            claimed.workflow_id,
            &inner.owner,
            Status::Error,
            Some(reason),
        )
        .await;
}

/// Records the workflow's end. Retried while this replica holds the lease (its keeper renews
/// it meanwhile): given up, the workflow would stay `running` until its lease ran out and
/// another replica found every step finished and recorded the end in its place.
async fn record_end(
    inner: &Inner,
    claimed: &ClaimedWorkflow,
    status: Status,
    reason: Option<String>,
    abandon: &CancellationToken,
) {
    let mut waits = retry_waits(Duration::from_millis(100));
    for tries in 1.. {
        match inner
            .store
            .workflow_finished(
                claimed.pipeline_id,
                claimed.workflow_id,
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
                if tries >= FINISH_TRIES || !backoff(&mut waits, abandon).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    // The waits double from the first up to their cap, as the loops they replace did, and a
    // workflow given up ends a wait at once.
    #[tokio::test(start_paused = true)]
    async fn retry_waits_double_up_to_the_cap_and_giving_up_ends_a_wait_at_once() {
        let waits: Vec<_> = retry_waits(Duration::from_millis(100)).take(8).collect();
        let ms: Vec<_> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);

        let abandon = CancellationToken::new();
        let mut waits = retry_waits(Duration::from_millis(100));
        let before = tokio::time::Instant::now();
        assert!(backoff(&mut waits, &abandon).await);
        assert_eq!(before.elapsed(), Duration::from_millis(100));

        let mut waits = retry_waits(Duration::from_secs(5));
        let waiting = tokio::spawn({
            let abandon = abandon.clone();
            async move { backoff(&mut waits, &abandon).await }
        });
        tokio::task::yield_now().await;
        let before = tokio::time::Instant::now();
        abandon.cancel();
        assert!(!waiting.await.unwrap());
        assert!(before.elapsed() < Duration::from_secs(5));
    }
}
