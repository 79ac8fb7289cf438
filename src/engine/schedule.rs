//! The workflow's scheduling, decided without I/O: which steps and services start and how
//! (fresh, or adopted from an earlier lease), which steps end without running and why, when a
//! `failure: cancel` cancels the pipeline, when the services and detached steps are stopped,
//! and the workflow's outcome.
//!
//! [`Schedule`] is built from the plan and the stored step states of a claimed workflow. The
//! engine (`workflow::run`) asks it [`Schedule::next`], performs the [`Decision`], and feeds it
//! what happened meanwhile: a step ended ([`Schedule::ended`]), the pipeline was canceled or
//! timed out, the lease was lost. Keeping the rules here, apart from the store and the backend,
//! lets each one be tested alone; the engine decides nothing of its own.
//!
//! Decided here too: what an adopting replica does with an attempt it finds recorded as
//! running ([`adoption`], [`rerun`]), and how one step ends once it ran (its exit, its
//! timeout, a cancel: [`step_end`]).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use uuid::Uuid;

use crate::backend::{Presence, StepExit};
use crate::model::{Status, StepKind};
use crate::pipeline::{self, Failure, StepSpec, WorkflowPlan};
use crate::store::StepState;

/// How a step task begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Begin {
    /// A step never started: commit the start of attempt 1, then start it.
    Fresh,
    /// A step the store records as running at `attempt` under an earlier lease: ask the
    /// backend what it holds of that attempt before anything is started.
    Adopt { attempt: u32, launched: bool },
}

/// Which of the workflow's two sets of step tasks a started step belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    /// A step the DAG waits for.
    Foreground,
    /// A service or a detached step: it runs beside the rest and is stopped at the end.
    Background,
}

/// A step (or service) to start.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Start<'p> {
    pub id: Uuid,
    pub spec: &'p StepSpec,
    pub begin: Begin,
    pub lane: Lane,
    /// The workflow's status so far, which the step sees as `CI_PIPELINE_STATUS`.
    pub so_far: pipeline::Conclusion,
}

/// What the engine does next.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Decision<'p> {
    Start(Start<'p>),
    /// Record that the step ended without running (skipped, canceled before it started), or
    /// that its task failed.
    End {
        id: Uuid,
        status: Status,
        reason: String,
    },
    /// A `failure: cancel` step failed: cancel the rest of the pipeline, this workflow's
    /// other steps with it.
    CancelPipeline {
        step: &'p str,
    },
    /// Wait for the next foreground step to end, and say how with [`Schedule::ended`].
    AwaitStep,
    /// Every foreground step is done: stop the services and detached steps.
    StopBackground,
    /// Wait for the next service or detached step to end, and say how.
    AwaitBackground,
    /// Everything ended: tear the workflow down and record this outcome.
    Finish {
        status: Status,
        reason: Option<String>,
    },
    /// This replica gave the workflow up: leave it as it stands for whoever adopts it.
    Leave,
}

/// How a step task ended: what it returns, and what the engine tells the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// The step's end is recorded with this status.
    Finished(Status),
    /// This replica stopped working on it (shutdown, lost lease); the store still says
    /// `running` and whoever adopts the workflow finishes it.
    Abandoned,
    /// The task failed: a bug of piculet's, not of the step.
    Lost,
}

/// What the engine says of the task failure of a foreground step.
pub(super) const LOST: &str = "piculet failed while running the step; see the server log";

/// A step or service not started yet.
#[derive(Debug, Clone)]
struct Waiting<'p> {
    id: Uuid,
    spec: &'p StepSpec,
    /// Recorded as running under an earlier lease.
    adopted: Option<Begin>,
}

#[derive(Debug, Clone, Copy)]
struct Running<'p> {
    spec: &'p StepSpec,
    lane: Lane,
    service: bool,
}

/// The scheduling state of one claimed workflow; see the module documentation.
#[derive(Debug)]
pub(super) struct Schedule<'p> {
    plan: &'p WorkflowPlan,
    /// Services still to start, in the plan's order.
    services: VecDeque<Waiting<'p>>,
    /// Steps neither started nor ended, in the plan's order.
    pending: Vec<Waiting<'p>>,
    /// The steps found ready together, decided one by one before the next are looked for.
    pass: VecDeque<Waiting<'p>>,
    /// Steps by name: their status once ended, `running` for a detached step once started.
    done: HashMap<String, Status>,
    services_done: HashMap<String, Status>,
    running: HashMap<Uuid, Running<'p>>,
    /// Decisions that follow from an event, given before any other.
    queued: VecDeque<Decision<'p>>,
    /// A step that counts against the workflow failed.
    failed: bool,
    canceled: bool,
    expired: bool,
    /// This replica gives the workflow up: nothing new starts.
    giving_up: bool,
    /// A step task was abandoned: the workflow is left for adoption.
    left: bool,
    background_stopped: bool,
}

impl<'p> Schedule<'p> {
    /// The schedule of a claimed workflow. `takeover`: the claim took over an expired lease,
    /// so steps recorded as running are adopted (their task asks the backend about them
    /// before it starts anything) and are never skipped here. Steps and services the store
    /// records as finished stay as they are; a plan entry without a stored step (rows are
    /// created with the plan) is never started.
    pub fn new(plan: &'p WorkflowPlan, steps: &[StepState], takeover: bool) -> Schedule<'p> {
        // Services and steps apart: a step may share its name with a service.
        let stored: HashMap<(bool, &str), &StepState> = steps
            .iter()
            .map(|s| ((s.kind.0 == StepKind::Service, s.name.as_str()), s))
            .collect();
        let mut schedule = Schedule {
            plan,
            services: VecDeque::new(),
            pending: Vec::new(),
            pass: VecDeque::new(),
            done: HashMap::new(),
            services_done: HashMap::new(),
            running: HashMap::new(),
            queued: VecDeque::new(),
            failed: false,
            canceled: false,
            expired: false,
            giving_up: false,
            left: false,
            background_stopped: false,
        };
        for (spec, service) in plan
            .services
            .iter()
            .map(|s| (s, true))
            .chain(plan.steps.iter().map(|s| (s, false)))
        {
            let Some(state) = stored.get(&(service, spec.name.as_str())) else {
                continue;
            };
            let adopted = (takeover && state.status.0 == Status::Running).then(|| Begin::Adopt {
                attempt: u32::try_from(state.attempt).unwrap_or(1),
                launched: state.launched,
            });
            let status = state.status.0;
            if adopted.is_none() && status.is_finished() {
                if service {
                    schedule.services_done.insert(spec.name.clone(), status);
                } else {
                    schedule.failed |= fails_workflow(status, spec);
                    schedule.done.insert(spec.name.clone(), status);
                }
                continue;
            }
            let waiting = Waiting {
                id: state.id,
                spec,
                adopted,
            };
            if service {
                schedule.services.push_back(waiting);
            } else {
                schedule.pending.push(waiting);
            }
        }
        schedule
    }

    /// A cancel of the pipeline was requested: steps not started yet end `canceled`.
    pub fn cancel(&mut self) {
        self.canceled = true;
    }

    /// The pipeline's timeout ran out: steps not started yet are skipped.
    pub fn expire(&mut self) {
        self.expired = true;
    }

    /// This replica gives the workflow up (shutdown, lost lease): nothing new starts, and once
    /// the running tasks are done the workflow is left for adoption.
    pub fn give_up(&mut self) {
        self.giving_up = true;
    }

    /// The task of a started step ended.
    pub fn ended(&mut self, id: Uuid, how: Ended) {
        let Some(task) = self.running.remove(&id) else {
            return;
        };
        let spec = task.spec;
        match (task.lane, how) {
            (_, Ended::Abandoned) => self.left = true,
            (Lane::Foreground, Ended::Finished(status)) => self.step_ended(spec, status),
            (Lane::Foreground, Ended::Lost) => {
                // Recorded rather than left running with its dependents waiting forever.
                self.queued.push_back(Decision::End {
                    id,
                    status: Status::Error,
                    reason: LOST.into(),
                });
                self.step_ended(spec, Status::Error);
            }
            // A service that ended on its own with a failure counts against the workflow
            // (one stopped at the end ends `success`); a detached step's end does not count.
            (Lane::Background, Ended::Finished(status)) if task.service => {
                self.services_done.insert(spec.name.clone(), status);
            }
            (Lane::Background, _) => {}
        }
    }

    fn step_ended(&mut self, spec: &'p StepSpec, status: Status) {
        let fails = fails_workflow(status, spec);
        self.failed |= fails;
        if fails && spec.failure == Failure::Cancel {
            // `failure: cancel`: the rest of the pipeline stops, this workflow's other steps
            // with it; this workflow itself ends `failure` (see `outcome`).
            self.queued
                .push_back(Decision::CancelPipeline { step: &spec.name });
            self.canceled = true;
        }
        self.done.insert(spec.name.clone(), status);
    }

    /// What to do next. Services start first, then every step whose dependencies are done,
    /// in the plan's order; then the engine waits for a step to end, and once none runs the
    /// services and detached steps are stopped and the outcome is decided.
    pub fn next(&mut self) -> Decision<'p> {
        if let Some(decision) = self.queued.pop_front() {
            return decision;
        }
        if let Some(service) = self.services.pop_front() {
            self.running.insert(
                service.id,
                Running {
                    spec: service.spec,
                    lane: Lane::Background,
                    service: true,
                },
            );
            return Decision::Start(Start {
                id: service.id,
                spec: service.spec,
                begin: service.adopted.unwrap_or(Begin::Fresh),
                lane: Lane::Background,
                so_far: pipeline::Conclusion::Success,
            });
        }
        if let Some(step) = self.next_ready() {
            return self.decide(step);
        }
        let lanes = |lane| self.running.values().filter(|r| r.lane == lane).count();
        if lanes(Lane::Foreground) > 0 {
            return Decision::AwaitStep;
        }
        if !self.background_stopped {
            self.background_stopped = true;
            return Decision::StopBackground;
        }
        if lanes(Lane::Background) > 0 {
            return Decision::AwaitBackground;
        }
        if self.left || self.giving_up {
            return Decision::Leave;
        }
        let (status, reason) = outcome(
            self.plan,
            &self.done,
            &self.services_done,
            self.canceled,
            self.expired,
        );
        Decision::Finish { status, reason }
    }

    /// The next step of the current pass or, once it is through, of the next one: every
    /// pending step whose dependencies are done. Nothing new starts once the workflow is
    /// given up.
    fn next_ready(&mut self) -> Option<Waiting<'p>> {
        if let Some(step) = self.pass.pop_front() {
            return Some(step);
        }
        if self.giving_up {
            return None;
        }
        let done = &self.done;
        let (ready, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|w| w.spec.depends_on.iter().all(|d| done.contains_key(d)));
        self.pending = rest;
        self.pass = ready.into();
        self.pass.pop_front()
    }

    /// Starts a ready step, or ends it without running: canceled once the pipeline is,
    /// skipped once it timed out or when its `when.status` does not hold. An adopted step is
    /// always started: its task settles what the backend holds of it first.
    fn decide(&mut self, step: Waiting<'p>) -> Decision<'p> {
        let spec = step.spec;
        if step.adopted.is_none()
            && let Some((status, reason)) = self.before_start(spec)
        {
            self.done.insert(spec.name.clone(), status);
            return Decision::End {
                id: step.id,
                status,
                reason,
            };
        }
        let lane = if spec.detach {
            // A detached step runs beside the rest; its dependents go on at once.
            self.done.insert(spec.name.clone(), Status::Running);
            Lane::Background
        } else {
            Lane::Foreground
        };
        self.running.insert(
            step.id,
            Running {
                spec,
                lane,
                service: false,
            },
        );
        Decision::Start(Start {
            id: step.id,
            spec,
            begin: step.adopted.unwrap_or(Begin::Fresh),
            lane,
            so_far: self.so_far(),
        })
    }

    fn so_far(&self) -> pipeline::Conclusion {
        if self.failed {
            pipeline::Conclusion::Failure
        } else {
            pipeline::Conclusion::Success
        }
    }

    /// How a ready step ends without running, if it does.
    fn before_start(&self, spec: &StepSpec) -> Option<(Status, String)> {
        if self.canceled {
            return Some((Status::Canceled, "canceled before it started".into()));
        }
        if self.expired {
            return Some((Status::Skipped, "skipped: the pipeline timed out".into()));
        }
        if spec.when_status.contains(&self.so_far()) {
            return None;
        }
        let runs_when = if spec.when_status.contains(&pipeline::Conclusion::Failure) {
            "fails"
        } else {
            "succeeds"
        };
        let it = if self.failed {
            "failed"
        } else {
            "has not failed"
        };
        Some((
            Status::Skipped,
            format!("skipped: runs when the workflow {runs_when}, and it {it}"),
        ))
    }
}

/// A step that counts against the workflow: failed or errored, and not `failure: ignore`.
fn fails_workflow(status: Status, spec: &StepSpec) -> bool {
    matches!(status, Status::Failure | Status::Error) && spec.failure.fails_workflow()
}

/// The workflow's status from its steps' and its services'.
pub(super) fn outcome(
    plan: &WorkflowPlan,
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

/// What an adopting replica does with the attempt the store records as running, once the
/// backend said what it holds of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Adoption {
    /// The backend holds it: re-attach to it.
    Attach,
    /// Recorded, and the backend never accepted it: this attempt never began, start it
    /// (Kubernetes meets its deterministic pod name should it have begun after all).
    Launch,
    /// It was interrupted (the text says how): stop what is left of it and run the step
    /// again, see [`rerun`].
    Interrupted(String),
}

/// What to do with an adopted attempt: `launched` says whether the backend had accepted its
/// start, `backend` names the backend for the reason.
pub(super) fn adoption(presence: Presence, launched: bool, backend: &str) -> Adoption {
    match presence {
        Presence::Present => Adoption::Attach,
        Presence::Absent if !launched => Adoption::Launch,
        Presence::Absent => Adoption::Interrupted(format!(
            "piculet stopped while it ran, and the {backend} backend holds nothing of it any more"
        )),
        Presence::Interrupted { reason } => Adoption::Interrupted(reason),
    }
}

/// After `attempt` was interrupted (`what` says how): the next attempt and why it runs, or,
/// once the step had its `max` attempts (`PICULET_MAX_ATTEMPTS`), the reason it ends as an
/// error.
pub(super) fn rerun(attempt: u32, max: u32, what: &str) -> Result<(u32, String), String> {
    if attempt >= max {
        return Err(format!(
            "attempt {attempt} interrupted: {what}; not run again, {max} attempts is the most PICULET_MAX_ATTEMPTS allows"
        ));
    }
    let next = attempt + 1;
    Ok((
        next,
        format!("attempt {attempt} interrupted: {what}; running it again as attempt {next}"),
    ))
}

/// Why a step was stopped before it ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// Its own `timeout` (or the server's maximum).
    TimedOut(Duration),
    /// The pipeline's timeout.
    PipelineTimedOut(Duration),
    Canceled,
    /// A service or detached step, at the end of the workflow.
    EndOfWorkflow,
}

/// How a step that ran ends: its status, exit code and reason, from how the backend saw it
/// exit and why piculet stopped it, if it did.
pub(super) fn step_end(
    stop: Option<Stop>,
    exit: StepExit,
) -> (Status, Option<i32>, Option<String>) {
    let code = match &exit {
        StepExit::Exited { code, .. } => Some(*code),
        StepExit::Error { .. } => None,
    };
    match (stop, exit) {
        (Some(Stop::TimedOut(d)), _) => (
            Status::Failure,
            code,
            Some(format!("timed out after {}", human(d))),
        ),
        (Some(Stop::PipelineTimedOut(d)), _) => {
            (Status::Failure, code, Some(pipeline_timed_out(d)))
        }
        (Some(Stop::Canceled), _) => (Status::Canceled, code, Some("canceled".into())),
        (Some(Stop::EndOfWorkflow), _) => (Status::Success, code, None),
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
    }
}

/// The reason of a step stopped, or not started again, by the pipeline's timeout.
pub(super) fn pipeline_timed_out(timeout: Duration) -> String {
    format!(
        "timed out after {} (the pipeline's timeout)",
        human(timeout)
    )
}

fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()
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
            runs_on: vec![pipeline::Conclusion::Success],
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

    // The scheduling rules, one by one. A plan is written as steps with their dependencies
    // (as the planner resolves them: a chain without `depends_on`), the stored states default
    // to `queued`, and a schedule is driven until it waits, each decision written as a line.

    fn step(name: &str, deps: &[&str]) -> StepSpec {
        StepSpec {
            depends_on: deps.iter().map(|d| (*d).to_string()).collect(),
            ..StepSpec::new(name, pipeline::StepKind::Step, "alpine")
        }
    }

    fn workflow(services: &[&str], steps: Vec<StepSpec>) -> WorkflowPlan {
        let mut p = plan(&[]);
        p.services = services
            .iter()
            .map(|n| StepSpec::new(n, pipeline::StepKind::Service, "x"))
            .collect();
        p.steps = steps;
        p
    }

    /// Services, then steps, with ids 1, 2, … in that order.
    fn queued(p: &WorkflowPlan) -> Vec<StepState> {
        let services = p.services.iter().map(|s| (s, StepKind::Service));
        let steps = p.steps.iter().map(|s| (s, StepKind::Step));
        services
            .chain(steps)
            .enumerate()
            .map(|(i, (spec, kind))| StepState {
                id: Uuid::from_u128(i as u128 + 1),
                pipeline_id: Uuid::nil(),
                name: spec.name.clone(),
                kind: kind.as_str().to_string().try_into().unwrap(),
                status: "queued".to_string().try_into().unwrap(),
                exit_code: None,
                reason: None,
                started_at: None,
                attempt: 0,
                launched: false,
            })
            .collect()
    }

    fn stored(states: &mut [StepState], name: &str, status: Status, attempt: i32) {
        let s = states.iter_mut().find(|s| s.name == name).unwrap();
        s.status = status.as_str().to_string().try_into().unwrap();
        s.attempt = attempt;
        s.launched = attempt > 0;
    }

    struct Run<'p> {
        schedule: Schedule<'p>,
        names: HashMap<Uuid, String>,
        ids: HashMap<String, Uuid>,
    }

    impl<'p> Run<'p> {
        fn new(p: &'p WorkflowPlan, states: &[StepState], takeover: bool) -> Run<'p> {
            Run {
                schedule: Schedule::new(p, states, takeover),
                names: states.iter().map(|s| (s.id, s.name.clone())).collect(),
                ids: states.iter().map(|s| (s.name.clone(), s.id)).collect(),
            }
        }

        /// The decisions up to and including the next one that waits or ends.
        fn decide(&mut self) -> Vec<String> {
            let mut lines = Vec::new();
            loop {
                let decision = self.schedule.next();
                let line = match &decision {
                    Decision::Start(s) => format!(
                        "start {}{}{}{}",
                        s.spec.name,
                        if s.lane == Lane::Background {
                            " in the background"
                        } else {
                            ""
                        },
                        match s.begin {
                            Begin::Fresh => String::new(),
                            Begin::Adopt { attempt, .. } => format!(" adopting attempt {attempt}"),
                        },
                        if s.so_far == pipeline::Conclusion::Failure {
                            " (failing so far)"
                        } else {
                            ""
                        }
                    ),
                    Decision::End { id, status, reason } => {
                        format!("end {} {status}: {reason}", self.names[id])
                    }
                    Decision::CancelPipeline { step } => format!("cancel the pipeline for {step}"),
                    Decision::AwaitStep => "await a step".into(),
                    Decision::StopBackground => "stop the background".into(),
                    Decision::AwaitBackground => "await the background".into(),
                    Decision::Finish { status, reason } => {
                        format!("finish {status}: {}", reason.as_deref().unwrap_or("-"))
                    }
                    Decision::Leave => "leave".into(),
                };
                lines.push(line);
                if matches!(
                    decision,
                    Decision::AwaitStep
                        | Decision::AwaitBackground
                        | Decision::Finish { .. }
                        | Decision::Leave
                ) {
                    return lines;
                }
            }
        }

        fn ended(&mut self, name: &str, how: Ended) -> Vec<String> {
            self.schedule.ended(self.ids[name], how);
            self.decide()
        }

        fn finished(&mut self, name: &str, status: Status) -> Vec<String> {
            self.ended(name, Ended::Finished(status))
        }
    }

    const FINISHED: [&str; 2] = ["stop the background", "finish success: -"];

    #[test]
    fn steps_without_depends_on_run_one_after_another() {
        let p = workflow(
            &[],
            vec![step("a", &[]), step("b", &["a"]), step("c", &["b"])],
        );
        let mut run = Run::new(&p, &queued(&p), false);
        assert_eq!(run.decide(), ["start a", "await a step"]);
        assert_eq!(
            run.finished("a", Status::Success),
            ["start b", "await a step"]
        );
        assert_eq!(
            run.finished("b", Status::Success),
            ["start c", "await a step"]
        );
        assert_eq!(run.finished("c", Status::Success), FINISHED);
    }

    #[test]
    fn a_dag_starts_every_step_whose_dependencies_are_done() {
        let p = workflow(
            &[],
            vec![
                step("a", &[]),
                step("b", &["a"]),
                step("c", &["a"]),
                step("d", &["b", "c"]),
                step("e", &[]),
            ],
        );
        let mut run = Run::new(&p, &queued(&p), false);
        assert_eq!(run.decide(), ["start a", "start e", "await a step"]);
        assert_eq!(
            run.finished("a", Status::Success),
            ["start b", "start c", "await a step"]
        );
        assert_eq!(run.finished("c", Status::Success), ["await a step"]);
        assert_eq!(
            run.finished("b", Status::Success),
            ["start d", "await a step"]
        );
        assert_eq!(run.finished("d", Status::Success), ["await a step"]);
        assert_eq!(run.finished("e", Status::Success), FINISHED);
    }

    #[test]
    fn when_status_holds_against_the_status_so_far() {
        let on = |name: &str, deps: &[&str], statuses: &[pipeline::Conclusion]| StepSpec {
            when_status: statuses.to_vec(),
            ..step(name, deps)
        };
        use pipeline::Conclusion::{Failure as Fails, Success as Succeeds};
        let p = workflow(
            &[],
            vec![
                on("notify", &[], &[Fails]),
                on("test", &["notify"], &[Succeeds]),
                on("deploy", &["test"], &[Succeeds]),
                on("report", &["deploy"], &[Fails]),
                on("always", &["report"], &[Succeeds, Fails]),
            ],
        );
        let mut run = Run::new(&p, &queued(&p), false);
        assert_eq!(
            run.decide(),
            [
                "end notify skipped: skipped: runs when the workflow fails, and it has not failed",
                "start test",
                "await a step"
            ]
        );
        assert_eq!(
            run.finished("test", Status::Failure),
            [
                "end deploy skipped: skipped: runs when the workflow succeeds, and it failed",
                "start report (failing so far)",
                "await a step"
            ]
        );
        assert_eq!(
            run.finished("report", Status::Success),
            ["start always (failing so far)", "await a step"]
        );
        assert_eq!(
            run.finished("always", Status::Success),
            ["stop the background", "finish failure: step test failed"]
        );
    }

    #[test]
    fn an_error_counts_as_a_failure_and_failure_ignore_counts_neither() {
        let mut ignored = step("lint", &[]);
        ignored.failure = Failure::Ignore;
        let p = workflow(
            &[],
            vec![ignored, step("test", &["lint"]), step("b", &["test"])],
        );
        let mut run = Run::new(&p, &queued(&p), false);
        run.decide();
        assert_eq!(
            run.finished("lint", Status::Error),
            ["start test", "await a step"]
        );
        assert_eq!(
            run.finished("test", Status::Error),
            [
                "end b skipped: skipped: runs when the workflow succeeds, and it failed",
                "stop the background",
                "finish error: step test could not run"
            ]
        );
    }

    #[test]
    fn failure_cancel_cancels_the_pipeline_and_the_steps_not_started() {
        let mut deploy = step("deploy", &[]);
        deploy.failure = Failure::Cancel;
        let p = workflow(
            &[],
            vec![deploy, step("other", &[]), step("after", &["deploy"])],
        );
        let mut run = Run::new(&p, &queued(&p), false);
        assert_eq!(
            run.decide(),
            ["start deploy", "start other", "await a step"]
        );
        assert_eq!(
            run.finished("deploy", Status::Failure),
            [
                "cancel the pipeline for deploy",
                "end after canceled: canceled before it started",
                "await a step"
            ]
        );
        assert_eq!(
            run.finished("other", Status::Canceled),
            [
                "stop the background",
                "finish failure: step deploy failed, and its failure: cancel canceled the rest of the pipeline"
            ]
        );

        // A success of the same step cancels nothing.
        let mut run = Run::new(&p, &queued(&p), false);
        run.decide();
        assert_eq!(
            run.finished("deploy", Status::Success),
            ["start after", "await a step"]
        );
    }

    #[test]
    fn a_cancel_ends_every_step_not_started_and_the_workflow() {
        let p = workflow(
            &[],
            vec![step("a", &[]), step("b", &["a"]), step("c", &["b"])],
        );
        let mut run = Run::new(&p, &queued(&p), false);
        run.decide();
        run.schedule.cancel();
        assert_eq!(
            run.finished("a", Status::Canceled),
            [
                "end b canceled: canceled before it started",
                "end c canceled: canceled before it started",
                "stop the background",
                "finish canceled: canceled"
            ]
        );

        // Canceled before the claim: nothing starts.
        let mut run = Run::new(&p, &queued(&p), false);
        run.schedule.cancel();
        assert_eq!(
            run.decide()[0],
            "end a canceled: canceled before it started"
        );
    }

    #[test]
    fn the_pipelines_timeout_skips_the_steps_not_started() {
        let p = workflow(&[], vec![step("a", &[]), step("b", &["a"])]);
        let mut run = Run::new(&p, &queued(&p), false);
        run.decide();
        run.schedule.expire();
        assert_eq!(
            run.finished("a", Status::Failure),
            [
                "end b skipped: skipped: the pipeline timed out",
                "stop the background",
                "finish failure: step a failed (the pipeline timed out)"
            ]
        );
    }

    #[test]
    fn a_detached_step_runs_beside_its_dependents_and_its_end_does_not_count() {
        let mut watcher = step("watch", &[]);
        watcher.detach = true;
        let p = workflow(&[], vec![watcher, step("test", &["watch"])]);
        let mut run = Run::new(&p, &queued(&p), false);
        assert_eq!(
            run.decide(),
            [
                "start watch in the background",
                "start test",
                "await a step"
            ]
        );
        assert_eq!(
            run.finished("test", Status::Success),
            ["stop the background", "await the background"]
        );
        assert_eq!(
            run.finished("watch", Status::Failure),
            ["finish success: -"]
        );
    }

    #[test]
    fn services_start_first_and_stop_once_the_steps_are_done() {
        let p = workflow(&["db", "cache"], vec![step("a", &[])]);
        let mut run = Run::new(&p, &queued(&p), false);
        assert_eq!(
            run.decide(),
            [
                "start db in the background",
                "start cache in the background",
                "start a",
                "await a step"
            ]
        );
        assert_eq!(
            run.finished("a", Status::Success),
            ["stop the background", "await the background"]
        );
        // Stopped at the end, a service ends `success`; one that failed by itself counts.
        assert_eq!(
            run.finished("db", Status::Success),
            ["await the background"]
        );
        assert_eq!(
            run.finished("cache", Status::Failure),
            ["finish failure: service cache failed"]
        );

        // Services start even for a workflow canceled before its claim: their task ends them.
        let mut run = Run::new(&p, &queued(&p), false);
        run.schedule.cancel();
        assert_eq!(
            run.decide()[..2],
            [
                "start db in the background",
                "start cache in the background"
            ]
        );
    }

    #[test]
    fn a_takeover_adopts_running_steps_and_keeps_finished_ones() {
        let p = workflow(
            &["db", "old"],
            vec![step("a", &[]), step("b", &["a"]), step("c", &["b"])],
        );
        let mut states = queued(&p);
        stored(&mut states, "old", Status::Failure, 1);
        stored(&mut states, "db", Status::Running, 1);
        stored(&mut states, "a", Status::Success, 1);
        stored(&mut states, "b", Status::Running, 2);
        let mut run = Run::new(&p, &states, true);
        // An adopted step is started even once the pipeline is canceled: its task settles what
        // the backend holds of it first.
        run.schedule.cancel();
        assert_eq!(
            run.decide(),
            [
                "start db in the background adopting attempt 1",
                "start b adopting attempt 2",
                "await a step"
            ]
        );
        assert_eq!(
            run.finished("b", Status::Canceled),
            [
                "end c canceled: canceled before it started",
                "stop the background",
                "await the background"
            ]
        );
        // The service that ended before the takeover still counts.
        assert_eq!(
            run.finished("db", Status::Success),
            ["finish canceled: canceled"]
        );

        // Without a takeover a step recorded as running is started afresh.
        let mut run = Run::new(&p, &states, false);
        assert_eq!(
            run.decide(),
            ["start db in the background", "start b", "await a step"]
        );
        assert_eq!(
            run.finished("b", Status::Success),
            ["start c", "await a step"]
        );
        assert_eq!(
            run.finished("c", Status::Success),
            ["stop the background", "await the background"]
        );
        assert_eq!(
            run.finished("db", Status::Success),
            ["finish failure: service old failed"]
        );
    }

    #[test]
    fn a_step_that_failed_before_the_takeover_is_the_status_so_far() {
        let p = workflow(&[], vec![step("a", &[]), step("b", &["a"])]);
        let mut states = queued(&p);
        stored(&mut states, "a", Status::Failure, 1);
        let mut run = Run::new(&p, &states, true);
        assert_eq!(
            run.decide(),
            [
                "end b skipped: skipped: runs when the workflow succeeds, and it failed",
                "stop the background",
                "finish failure: step a failed"
            ]
        );
    }

    #[test]
    fn a_workflow_given_up_starts_nothing_new_and_is_left_for_adoption() {
        let p = workflow(&["db"], vec![step("a", &[]), step("b", &["a"])]);
        let mut run = Run::new(&p, &queued(&p), false);
        run.decide();
        run.schedule.give_up();
        assert_eq!(
            run.ended("a", Ended::Abandoned),
            ["stop the background", "await the background"]
        );
        assert_eq!(run.ended("db", Ended::Abandoned), ["leave"]);

        // A step task abandoned alone (its start was refused: another replica holds the
        // lease) leaves the workflow too, and its dependents unstarted.
        let mut run = Run::new(&p, &queued(&p), false);
        run.decide();
        assert_eq!(
            run.ended("a", Ended::Abandoned),
            ["stop the background", "await the background"]
        );
        assert_eq!(run.finished("db", Status::Success), ["leave"]);
    }

    #[test]
    fn a_step_whose_task_failed_ends_as_an_error() {
        let p = workflow(&["db"], vec![step("a", &[]), step("b", &["a"])]);
        let mut run = Run::new(&p, &queued(&p), false);
        run.decide();
        assert_eq!(
            run.ended("a", Ended::Lost),
            [
                format!("end a error: {LOST}").as_str(),
                "end b skipped: skipped: runs when the workflow succeeds, and it failed",
                "stop the background",
                "await the background"
            ]
        );
        // A service's task that failed is not counted.
        assert_eq!(
            run.ended("db", Ended::Lost),
            ["finish error: step a could not run"]
        );
    }

    #[test]
    fn a_step_ends_by_its_exit_or_by_why_it_was_stopped() {
        let exited = |code| StepExit::Exited { code, reason: None };
        let killed = StepExit::Exited {
            code: 137,
            reason: Some("OOMKilled".into()),
        };
        let lost = StepExit::Error {
            reason: "image pull failed".into(),
        };
        assert_eq!(step_end(None, exited(0)), (Status::Success, Some(0), None));
        assert_eq!(
            step_end(None, exited(2)),
            (Status::Failure, Some(2), Some("exit code 2".into()))
        );
        assert_eq!(
            step_end(None, killed.clone()),
            (
                Status::Failure,
                Some(137),
                Some("exit code 137 (OOMKilled)".into())
            )
        );
        assert_eq!(
            step_end(None, lost.clone()),
            (Status::Error, None, Some("image pull failed".into()))
        );
        let minute = Duration::from_secs(60);
        assert_eq!(
            step_end(Some(Stop::TimedOut(minute)), killed.clone()),
            (
                Status::Failure,
                Some(137),
                Some("timed out after 1m".into())
            )
        );
        assert_eq!(
            step_end(
                Some(Stop::PipelineTimedOut(Duration::from_millis(10))),
                lost
            ),
            (
                Status::Failure,
                None,
                Some("timed out after 1s (the pipeline's timeout)".into())
            )
        );
        assert_eq!(
            step_end(Some(Stop::Canceled), exited(0)),
            (Status::Canceled, Some(0), Some("canceled".into()))
        );
        assert_eq!(
            step_end(Some(Stop::EndOfWorkflow), killed),
            (Status::Success, Some(137), None),
            "a service stopped at the end succeeded"
        );
    }

    #[test]
    fn an_adopted_attempt_is_re_attached_started_or_run_again() {
        assert_eq!(adoption(Presence::Present, true, "local"), Adoption::Attach);
        assert_eq!(
            adoption(Presence::Absent, false, "kubernetes"),
            Adoption::Launch,
            "recorded but never accepted: that same attempt starts"
        );
        assert_eq!(
            adoption(Presence::Absent, true, "kubernetes"),
            Adoption::Interrupted(
                "piculet stopped while it ran, and the kubernetes backend holds nothing of it any more"
                    .into()
            )
        );
        let died = Presence::Interrupted {
            reason: "its process died".into(),
        };
        assert_eq!(
            adoption(died, true, "local"),
            Adoption::Interrupted("its process died".into())
        );
        assert_eq!(
            rerun(1, 3, "its process died"),
            Ok((
                2,
                "attempt 1 interrupted: its process died; running it again as attempt 2".into()
            ))
        );
        assert_eq!(
            rerun(3, 3, "its process died"),
            Err("attempt 3 interrupted: its process died; not run again, 3 attempts is the most PICULET_MAX_ATTEMPTS allows".into())
        );
    }
}
