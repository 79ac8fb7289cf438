//! The public entry points: `lint` and `plan`. Planning turns a submission (its configs and
//! context) into workflows — one per config and matrix element — each with its services and a
//! DAG of steps, after dropping what `when` excludes. The `Plan` is stored as JSON and read back
//! by the engine, so it is plain data.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::diagnostic::{Diagnostic, Pos, Report, Sink, child};
use super::duration;
use super::graph;
use super::limits::{self, Limits, over};
use super::matrix::{self, Room};
use super::model::*;
use super::node::{self, Node, ParseError, Value};
use super::subst;
use super::text;
use super::validate::{self, Reader};
use super::when::{self, Facts, Outcome};

/// Image of the implicit clone step (Woodpecker's git plugin).
pub const DEFAULT_CLONE_IMAGE: &str = "docker.io/woodpeckerci/plugin-git:2.6.0";

/// One config file of a submission.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    pub name: String,
    pub content: SourceContent,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SourceContent {
    /// YAML or JSON text.
    Text(String),
    /// An already-parsed pipeline object (no line/column in diagnostics).
    Value(serde_json::Value),
}

/// The repository the implicit clone step fetches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoSpec {
    pub clone_url: String,
    pub r#ref: String,
    pub sha: String,
}

/// What a submission brings besides its configs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    /// `CI_COMMIT_BRANCH`, `CI_PIPELINE_EVENT`, … (also `${NAME}` substitution).
    pub variables: BTreeMap<String, String>,
    /// Names of the secrets the submission carries (values never reach this module).
    pub secret_names: BTreeSet<String>,
    /// Whether `from_secret` must name one of `secret_names`; off for offline lint, where the
    /// secrets a server will get are not known.
    pub check_secrets: bool,
    /// Default platform, e.g. `linux/amd64`.
    pub platform: String,
    /// When set, an implicit `clone` step comes first in every workflow (unless `skip_clone`).
    pub repo: Option<RepoSpec>,
    /// How much the submission may ask for; past a limit, reading stops with a refusal.
    pub limits: Limits,
}

impl Default for Context {
    fn default() -> Self {
        Context {
            variables: BTreeMap::new(),
            secret_names: BTreeSet::new(),
            check_secrets: true,
            platform: "linux/amd64".to_string(),
            repo: None,
            limits: Limits::default(),
        }
    }
}

/// A plan and the warnings found on the way.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    pub plan: Plan,
    pub warnings: Vec<Diagnostic>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub workflows: Vec<WorkflowPlan>,
    /// Workflows dropped before planning (unmet `when`, absent dependency), with the reason.
    pub dropped_workflows: Vec<DroppedWorkflow>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedWorkflow {
    pub name: String,
    pub matrix: BTreeMap<String, String>,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowPlan {
    /// The config name; the elements of a matrix share it.
    pub name: String,
    /// This element's matrix values (empty without a matrix).
    pub matrix: BTreeMap<String, String>,
    pub platform: String,
    pub workspace: Workspace,
    pub labels: BTreeMap<String, String>,
    /// Names of workflows that must finish first.
    pub depends_on: Vec<String>,
    /// Which outcomes of those dependencies let this workflow run (default `[success]`).
    pub runs_on: Vec<Conclusion>,
    pub services: Vec<StepSpec>,
    /// In order; clone step(s) first.
    pub steps: Vec<StepSpec>,
    /// Steps and services dropped by `when`, to be shown as `skipped`.
    pub dropped_steps: Vec<DroppedStep>,
    /// At most how many workflows of a group run at once (`concurrency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
}

/// A workflow's `concurrency`: at most `limit` workflows of the group run at once, across
/// replicas; the others wait, in the order their pipelines were created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Concurrency {
    /// From 1 to the server's `PICULET_MAX_CONCURRENCY_LIMIT`.
    pub limit: u32,
    /// After `${NAME}` substitution; the workflow's name when the config names none.
    pub group: String,
    /// The submission's `CI_REPO`, when it has one: groups of the same name in two
    /// repositories are two groups, as Woodpecker scopes them by repository.
    pub scope: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedStep {
    pub name: String,
    pub kind: StepKind,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepSpec {
    pub name: String,
    pub kind: StepKind,
    pub image: String,
    pub commands: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub settings: IndexMap<String, SettingValue>,
    pub directory: Option<String>,
    pub environment: BTreeMap<String, EnvValue>,
    /// Steps that must be done before this one starts (resolved: no absent or dropped names).
    pub depends_on: Vec<String>,
    /// Workflow statuses in which the step runs (default `[success]`).
    pub when_status: Vec<Conclusion>,
    pub failure: Failure,
    pub detach: bool,
    pub privileged: bool,
    pub pull: bool,
    pub volumes: Vec<String>,
    pub extra_hosts: Vec<String>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    /// A humantime string in JSON, e.g. `"10m"`.
    #[serde(with = "duration::opt_serde")]
    pub timeout: Option<Duration>,
    pub ports: Vec<String>,
    pub backend_options: KubernetesOptions,
}

impl StepSpec {
    /// A step with every option at its default: no commands, no dependencies, runs on
    /// success, fails the workflow when it fails.
    pub fn new(name: &str, kind: StepKind, image: &str) -> StepSpec {
        StepSpec {
            name: name.to_string(),
            kind,
            image: image.to_string(),
            commands: Vec::new(),
            entrypoint: None,
            settings: IndexMap::new(),
            directory: None,
            environment: BTreeMap::new(),
            depends_on: Vec::new(),
            when_status: vec![Conclusion::Success],
            failure: Failure::Fail,
            detach: false,
            privileged: false,
            pull: false,
            volumes: Vec::new(),
            extra_hosts: Vec::new(),
            dns: Vec::new(),
            dns_search: Vec::new(),
            timeout: None,
            ports: Vec::new(),
            backend_options: KubernetesOptions::default(),
        }
    }
}

/// Validates a submission without planning it: every error and warning.
pub fn lint(sources: &[Source], ctx: &Context) -> Report {
    run(sources, ctx).1
}

/// Validates and plans a submission; refused with the full report when there is any error.
pub fn plan(sources: &[Source], ctx: &Context) -> Result<Planned, Report> {
    let (plan, report) = run(sources, ctx);
    if report.errors.is_empty() {
        Ok(Planned {
            plan,
            warnings: report.warnings,
        })
    } else {
        Err(report)
    }
}

/// A workflow element on its way to the plan, with what the workflow-level checks need.
struct Candidate {
    source: usize,
    plan: WorkflowPlan,
    deps: Vec<Dependency>,
    /// Where its status condition (`when.status`, or `runs_on`) is written, when it has one.
    status_place: Option<(String, Pos)>,
}

/// Reads a config into a tree; nothing deeper than the limit is built, and no text holding a
/// NUL is parsed.
fn read_source(source: &Source, limits: &Limits) -> Result<Node, ParseError> {
    let depth = limits.nesting_depth;
    let from_json = |v: &serde_json::Value, pos: Pos| match node::json_nesting(v, depth) {
        Some(pointer) => Err(ParseError::nesting(depth, pos, pointer)),
        None => Ok(Node::from_json(v)),
    };
    match &source.content {
        SourceContent::Value(v) => from_json(v, Pos::NONE),
        SourceContent::Text(text) => {
            if let Some(pos) = text::nul_position(text) {
                return Err(ParseError::syntax(
                    format!("the text {}", text::NUL_REFUSAL),
                    pos,
                ));
            }
            if is_blank(text) {
                return Err(ParseError::syntax(
                    "the pipeline file is empty (nothing but whitespace and comments); a \
                     pipeline needs at least `steps`"
                        .into(),
                    Pos::at(1, 1),
                ));
            }
            Node::parse(text, depth).or_else(|yaml_err| {
                // JSON is YAML, but not every JSON text is valid YAML (tabs for indentation);
                // take serde_json's word for text that is meant to be JSON. A limit stands.
                if yaml_err.limit || !text.trim_start().starts_with(['{', '[']) {
                    return Err(yaml_err);
                }
                let value = serde_json::from_str::<serde_json::Value>(text).map_err(|e| {
                    ParseError::syntax(
                        format!("invalid JSON: {e}"),
                        Pos::at(
                            u32::try_from(e.line()).unwrap_or(u32::MAX),
                            u32::try_from(e.column()).unwrap_or(u32::MAX),
                        ),
                    )
                })?;
                from_json(&value, Pos::NONE)
            })
        }
    }
}

/// Whether a text holds no YAML at all: only blank lines and comments.
fn is_blank(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#')
    })
}

/// What one workflow element of a config holds, counted on its tree before the matrix
/// multiplies it (substitution never changes the shape).
struct Shape {
    /// Steps, services and clone steps.
    steps: usize,
    /// `depends_on` entries of its steps and of the workflow.
    dependencies: usize,
    /// Where the steps are, for a refusal.
    pointer: &'static str,
    pos: Pos,
}

impl Shape {
    fn of(node: &Node, ctx: &Context) -> Shape {
        let items = |key: &str| -> Vec<&Node> {
            match node.get(key).map(|e| &e.value.value) {
                Some(Value::Seq(items)) => items.iter().collect(),
                Some(Value::Map(entries)) => entries.iter().map(|e| &e.value).collect(),
                _ => Vec::new(),
            }
        };
        let dependencies = |n: &Node| match n.get("depends_on").map(|e| &e.value.value) {
            Some(Value::Seq(items)) => items.len(),
            None | Some(Value::Null) => 0,
            Some(_) => 1,
        };
        let skip_clone = matches!(
            node.get("skip_clone").map(|e| &e.value.value),
            Some(Value::Bool(true))
        );
        let clone_section = node.get("clone").filter(|e| !e.value.is_null());
        let clone = if skip_clone {
            Vec::new()
        } else if clone_section.is_some() {
            items("clone")
        } else {
            Vec::new()
        };
        let implicit_clone =
            usize::from(!skip_clone && clone_section.is_none() && ctx.repo.is_some());
        let steps = items("steps");
        let (pointer, pos) = match node.get("steps") {
            Some(e) => ("/steps", e.value.pos),
            None => ("", node.pos),
        };
        Shape {
            steps: steps.len() + items("services").len() + clone.len() + implicit_clone,
            dependencies: dependencies(node)
                + steps
                    .iter()
                    .chain(&clone)
                    .map(|s| dependencies(s))
                    .sum::<usize>(),
            pointer,
            pos,
        }
    }
}

/// What the configs read so far take of the pipeline's limits.
#[derive(Default)]
struct Used {
    workflows: usize,
    steps: usize,
    dependencies: usize,
    /// Bytes of text of the workflows planned so far (after substitution).
    bytes: usize,
}

/// Checks that a config's workflows fit in what the configs before it left; reports the first
/// limit they would cross. Nothing of the config has been expanded yet.
fn fits(
    shape: &Shape,
    elements: usize,
    used: &Used,
    matrix: Option<&Node>,
    limits: &Limits,
    sink: &mut Sink,
) -> bool {
    let (pointer, pos) = match matrix {
        Some(m) if elements > 1 => ("/matrix", m.pos),
        _ => (shape.pointer, shape.pos),
    };
    let checks = [
        (
            "steps",
            shape.steps,
            used.steps,
            limits.steps_per_pipeline,
            limits::STEPS_PER_PIPELINE,
        ),
        (
            "depends_on entries",
            shape.dependencies,
            used.dependencies,
            limits.dependencies,
            limits::DEPENDENCIES,
        ),
    ];
    for (what, each, before, limit, setting) in checks {
        let here = elements.saturating_mul(each);
        let total = before.saturating_add(here);
        if total <= limit {
            continue;
        }
        let parts = match (elements, before) {
            (1, 0) => String::new(),
            (1, _) => format!(" ({each} here, and {before} in the configs before it)"),
            (_, 0) => format!(" ({elements} workflows of {each} {what})"),
            _ => format!(
                " ({elements} workflows of {each} {what}, and {before} in the configs before it)"
            ),
        };
        sink.error(
            pointer,
            pos,
            format!(
                "the pipeline would have {total} {what}{parts}, {}",
                over(limit, setting)
            ),
        );
        return false;
    }
    true
}

fn run(sources: &[Source], ctx: &Context) -> (Plan, Report) {
    let limits = &ctx.limits;
    let mut sinks: Vec<Sink> = sources.iter().map(|s| Sink::new(&s.name)).collect();
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut plan = Plan::default();

    // Each config is at least one workflow: too many is refused before any is read.
    if sources.len() > limits.workflows_per_pipeline {
        sinks[limits.workflows_per_pipeline].error(
            "",
            Pos::NONE,
            format!(
                "the submission has {} configs, {}",
                sources.len(),
                over(
                    limits.workflows_per_pipeline,
                    limits::WORKFLOWS_PER_PIPELINE
                )
            ),
        );
        return (plan, report(sinks));
    }

    let mut names_seen: HashSet<&str> = HashSet::new();
    for (i, source) in sources.iter().enumerate() {
        if !names_seen.insert(source.name.as_str()) {
            sinks[i].error(
                "",
                Pos::NONE,
                format!(
                    "duplicate config name \"{}\": every config of a submission needs its own name",
                    source.name
                ),
            );
        }
    }

    let files = when::changed_files(&ctx.variables);
    let mut used = Used::default();
    for (i, source) in sources.iter().enumerate() {
        let sink = &mut sinks[i];
        let node = match read_source(source, limits) {
            Ok(n) => n,
            Err(e) => {
                sink.error(&e.pointer, e.pos, e.message);
                continue;
            }
        };
        if !text::check_strings(&node, limits, sink) {
            continue;
        }
        let shape = Shape::of(&node, ctx);
        if shape.steps > limits.steps_per_workflow {
            sink.error(
                shape.pointer,
                shape.pos,
                format!(
                    "workflow has {} steps, {}",
                    shape.steps,
                    over(limits.steps_per_workflow, limits::STEPS_PER_WORKFLOW)
                ),
            );
            continue;
        }
        let matrix_node = node.get("matrix").map(|e| &e.value);
        let room = Room {
            left: limits.workflows_per_pipeline - used.workflows,
            limit: limits.workflows_per_pipeline,
        };
        let Some(elements) = matrix::expand(matrix_node, sink, room) else {
            continue;
        };
        if !fits(&shape, elements.len(), &used, matrix_node, limits, sink) {
            continue;
        }
        used.workflows += elements.len();
        used.steps += elements.len() * shape.steps;
        used.dependencies += elements.len() * shape.dependencies;

        for element in elements {
            let mut node = node.clone();
            let done = subst::substitute_node(
                &mut node,
                &element,
                &ctx.variables,
                limits.string_length,
                limits.planned_bytes.saturating_sub(used.bytes),
            );
            used.bytes = used.bytes.saturating_add(done.bytes);
            if done.over_budget {
                // Nothing after this would fit either: one error, and no more work.
                sink.error(
                    "",
                    Pos::NONE,
                    format!(
                        "the planned pipeline's text, with every matrix element expanded and \
                         ${{NAME}} variables substituted, is {} bytes",
                        over(limits.planned_bytes, limits::PLANNED_SIZE)
                    ),
                );
                return (plan, report(sinks));
            }
            let too_long = done.too_long;
            for (pointer, pos) in &too_long {
                sink.error(
                    pointer,
                    *pos,
                    format!(
                        "string is longer than the limit of {} bytes ({}) once ${{NAME}} variables are substituted",
                        limits.string_length,
                        limits::STRING_LENGTH
                    ),
                );
            }
            if !too_long.is_empty() {
                continue;
            }
            let Some(model) = (Reader { sink: &mut *sink }).workflow(&node) else {
                break;
            };
            validate::check_workflow(&model, sink);
            match plan_workflow(&source.name, &element, model, ctx, files.as_deref(), sink) {
                Ok(candidate) => candidates.push(Candidate {
                    source: i,
                    ..candidate
                }),
                Err(dropped) => plan.dropped_workflows.push(dropped),
            }
        }
    }

    resolve_workflow_dependencies(sources, &mut candidates, &mut plan, &mut sinks);
    check_events(&candidates, limits, &mut sinks);
    plan.workflows = candidates.into_iter().map(|c| c.plan).collect();
    (plan, report(sinks))
}

fn report(sinks: Vec<Sink>) -> Report {
    let mut report = Report::default();
    for sink in sinks {
        let (e, w) = sink.into_parts();
        report.errors.extend(e);
        report.warnings.extend(w);
    }
    report
}

/// The events the planned pipeline can record must stay within the limit; the config of the
/// workflow that crosses it is blamed.
fn check_events(candidates: &[Candidate], limits: &Limits, sinks: &mut [Sink]) {
    let steps = |c: &Candidate| c.plan.steps.len() + c.plan.services.len();
    let events = |c: &Candidate| limits::workflow_events(steps(c), c.plan.concurrency.is_some());
    let bound = candidates.iter().fold(limits::event_bound([]), |sum, c| {
        sum.saturating_add(events(c))
    });
    if bound <= limits.events_per_pipeline {
        return;
    }
    // The first workflow whose events, with those before it, cross the limit.
    let mut running = limits::event_bound([]);
    let crossing = candidates
        .iter()
        .position(|c| {
            running = running.saturating_add(events(c));
            running > limits.events_per_pipeline
        })
        .unwrap_or(candidates.len() - 1);
    sinks[candidates[crossing].source].error(
        "",
        Pos::NONE,
        format!(
            "the pipeline can record up to {bound} events ({} workflows with {} steps and services in all), {}",
            candidates.len(),
            candidates.iter().map(steps).sum::<usize>(),
            over(limits.events_per_pipeline, limits::EVENTS_PER_PIPELINE)
        ),
    );
}

/// Why a workflow that runs only after a failure cannot run: nothing it waits for can fail.
fn never_fails_before(c: &Candidate) -> String {
    if c.deps.is_empty() {
        "skipped: it runs only when a workflow it depends on fails (its status condition is [failure]), and it depends on none".to_string()
    } else {
        "skipped: it runs only when a workflow it depends on fails (its status condition is [failure]), and none of them is in this pipeline".to_string()
    }
}

/// Workflow `depends_on`: an absent or dropped required dependency drops the workflow (and,
/// in turn, those depending on it), as Woodpecker does; optional ones are ignored; cycles are
/// errors. A workflow that runs only after a failure (`when.status: [failure]`, or
/// `runs_on: [failure]`) and is left with no dependency that could fail is dropped too, since
/// nothing could ever start it. Linear: each drop is propagated once, to the workflows
/// depending on its name.
fn resolve_workflow_dependencies(
    sources: &[Source],
    candidates: &mut Vec<Candidate>,
    plan: &mut Plan,
    sinks: &mut [Sink],
) {
    // Elements alive per workflow name (matrix elements share theirs).
    let mut alive: HashMap<String, usize> = HashMap::new();
    for c in candidates.iter() {
        *alive.entry(c.plan.name.clone()).or_default() += 1;
    }
    warn_never_runs(candidates, sinks);
    let (order, reasons) = workflows_to_drop(sources, candidates, &mut alive, sinks);
    remove_dropped(candidates, order, reasons, plan);
    set_depends_on(candidates, &alive);
    report_cycles(candidates, sinks);
}

/// Only runs after a failure of a workflow it depends on.
fn runs_after_failure_only(c: &Candidate) -> bool {
    !c.plan.runs_on.contains(&Conclusion::Success)
}

/// Warns of a workflow that runs only when one it depends on fails, and depends on none.
fn warn_never_runs(candidates: &[Candidate], sinks: &mut [Sink]) {
    for c in candidates.iter() {
        if c.deps.is_empty()
            && runs_after_failure_only(c)
            && let Some((pointer, pos)) = &c.status_place
        {
            sinks[c.source].warn(
                pointer,
                *pos,
                format!(
                    "workflow \"{}\" runs only when a workflow it depends on fails, and it has no depends_on: it never runs",
                    c.plan.name
                ),
            );
        }
    }
}

/// The workflows to drop, in the order they are found, with the reason of each: one that
/// requires a workflow dropped or not in the submission, or that runs only after a failure
/// of workflows of which none is left. `alive` is left counting the elements kept per name.
fn workflows_to_drop(
    sources: &[Source],
    candidates: &[Candidate],
    alive: &mut HashMap<String, usize>,
    sinks: &mut [Sink],
) -> (Vec<usize>, Vec<Option<String>>) {
    let declared: HashSet<&str> = sources.iter().map(|s| s.name.as_str()).collect();
    let mut required_by: HashMap<&str, Vec<usize>> = HashMap::new();
    // Every dependent of a name, required or optional, once per dependent.
    let mut depended_by: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, c) in candidates.iter().enumerate() {
        let mut seen = HashSet::new();
        for d in &c.deps {
            if !d.optional {
                required_by.entry(d.name.as_str()).or_default().push(i);
            }
            if seen.insert(d.name.as_str()) {
                depended_by.entry(d.name.as_str()).or_default().push(i);
            }
        }
    }
    // Per candidate: how many distinct workflow names it depends on are still alive.
    let mut live_deps: Vec<usize> = candidates
        .iter()
        .map(|c| {
            let names: HashSet<&str> = c
                .deps
                .iter()
                .filter(|d| alive.get(&d.name).copied().unwrap_or(0) > 0)
                .map(|d| d.name.as_str())
                .collect();
            names.len()
        })
        .collect();
    let mut reasons: Vec<Option<String>> = vec![None; candidates.len()];
    let mut order: Vec<usize> = Vec::new();
    let mut queue: VecDeque<usize> = VecDeque::new();
    for (i, c) in candidates.iter().enumerate() {
        let Some(d) = c
            .deps
            .iter()
            .find(|d| !d.optional && alive.get(&d.name).copied().unwrap_or(0) == 0)
        else {
            if live_deps[i] == 0 && runs_after_failure_only(c) {
                reasons[i] = Some(never_fails_before(c));
                order.push(i);
                queue.push_back(i);
            }
            continue;
        };
        let reason = if declared.contains(d.name.as_str()) {
            format!("depends on workflow \"{}\", which was dropped", d.name)
        } else {
            sinks[c.source].warn(
                &d.pointer,
                d.pos,
                format!(
                    "workflow \"{}\" is not in this submission; workflow \"{}\" is dropped",
                    d.name, c.plan.name
                ),
            );
            format!(
                "depends on workflow \"{}\", which is not in this submission",
                d.name
            )
        };
        reasons[i] = Some(reason);
        order.push(i);
        queue.push_back(i);
    }
    while let Some(i) = queue.pop_front() {
        let name = candidates[i].plan.name.as_str();
        let Some(count) = alive.get_mut(name) else {
            continue;
        };
        *count -= 1;
        if *count > 0 {
            continue;
        }
        for &j in required_by.get(name).into_iter().flatten() {
            if reasons[j].is_none() {
                reasons[j] = Some(format!("depends on workflow \"{name}\", which was dropped"));
                order.push(j);
                queue.push_back(j);
            }
        }
        for &j in depended_by.get(name).into_iter().flatten() {
            live_deps[j] -= 1;
            if live_deps[j] == 0 && reasons[j].is_none() && runs_after_failure_only(&candidates[j])
            {
                reasons[j] = Some(never_fails_before(&candidates[j]));
                order.push(j);
                queue.push_back(j);
            }
        }
    }
    (order, reasons)
}

/// Moves the dropped workflows from `candidates` to the plan's dropped ones, in `order`.
fn remove_dropped(
    candidates: &mut Vec<Candidate>,
    order: Vec<usize>,
    mut reasons: Vec<Option<String>>,
    plan: &mut Plan,
) {
    let mut kept: Vec<Option<Candidate>> =
        std::mem::take(candidates).into_iter().map(Some).collect();
    for i in order {
        if let (Some(c), Some(reason)) = (kept[i].take(), reasons[i].take()) {
            plan.dropped_workflows.push(DroppedWorkflow {
                name: c.plan.name,
                matrix: c.plan.matrix,
                reason,
            });
        }
    }
    *candidates = kept.into_iter().flatten().collect();
}

/// Each kept workflow depends on the names it named that are still there, each once.
fn set_depends_on(candidates: &mut [Candidate], alive: &HashMap<String, usize>) {
    for c in candidates.iter_mut() {
        let mut seen = HashSet::new();
        c.plan.depends_on = c
            .deps
            .iter()
            .filter(|d| alive.get(&d.name).copied().unwrap_or(0) > 0)
            .filter(|d| seen.insert(d.name.as_str()))
            .map(|d| d.name.clone())
            .collect();
    }
}

/// Refuses cycles between workflows, by name in submission order.
fn report_cycles(candidates: &[Candidate], sinks: &mut [Sink]) {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut first: Vec<&Candidate> = Vec::new();
    for c in candidates.iter() {
        if !index.contains_key(c.plan.name.as_str()) {
            index.insert(&c.plan.name, first.len());
            first.push(c);
        }
    }
    let edges: Vec<Vec<usize>> = first
        .iter()
        .map(|c| {
            c.plan
                .depends_on
                .iter()
                .filter_map(|d| index.get(d.as_str()).copied())
                .collect()
        })
        .collect();
    for cycle in graph::cycles(&edges) {
        let c = first[cycle[0]];
        let names: Vec<&str> = cycle.iter().map(|&i| first[i].plan.name.as_str()).collect();
        let pos = c.deps.first().map(|d| d.pos).unwrap_or_default();
        sinks[c.source].error(
            "/depends_on",
            pos,
            format!("dependency cycle: {}", graph::describe(&names, "workflows")),
        );
    }
}

/// The statuses of the workflows it depends on in which a workflow runs: its `when.status`
/// (Woodpecker's current form: the statuses of the conditions that match, a matching condition
/// without one meaning success) joined with its `runs_on` (the older form); `[success]` when
/// neither says anything.
fn workflow_runs_on(
    runs_on: Option<Vec<Conclusion>>,
    when: &[Condition],
    matched: Vec<Conclusion>,
) -> Vec<Conclusion> {
    let says_status = when.iter().any(|c| !c.status.is_empty());
    let mut statuses = match (runs_on, says_status) {
        (Some(mut given), true) => {
            given.extend(matched);
            given
        }
        (Some(given), false) => given,
        (None, true) => matched,
        (None, false) => vec![Conclusion::Success],
    };
    statuses.sort();
    statuses.dedup();
    statuses
}

/// Where a workflow's status condition is written: its first `when` condition with a
/// `status`, else its `runs_on`.
fn status_place(w: &WorkflowModel, runs_on_pos: Option<Pos>) -> Option<(String, Pos)> {
    w.when
        .iter()
        .find(|c| !c.status.is_empty())
        .map(|c| (child(&c.pointer, "status"), c.pos))
        .or_else(|| runs_on_pos.map(|pos| ("/runs_on".to_string(), pos)))
}

/// Plans one workflow element, or drops it when its `when` is not met.
fn plan_workflow(
    name: &str,
    element: &BTreeMap<String, String>,
    w: WorkflowModel,
    ctx: &Context,
    files: Option<&[String]>,
    sink: &mut Sink,
) -> Result<Candidate, DroppedWorkflow> {
    let platform = w
        .labels
        .get("platform")
        .cloned()
        .unwrap_or_else(|| ctx.platform.clone());
    let facts = Facts {
        vars: &ctx.variables,
        platform: &platform,
        matrix: element,
        files,
    };
    let matched = match when::evaluate(&w.when, &facts, false, sink) {
        Outcome::Skip(reason) => {
            return Err(DroppedWorkflow {
                name: name.to_string(),
                matrix: element.clone(),
                reason,
            });
        }
        Outcome::Run(statuses) => statuses,
    };
    let status_place = status_place(&w, w.runs_on_pos);
    let runs_on = workflow_runs_on(w.runs_on, &w.when, matched);

    let mut dropped_steps = Vec::new();
    let mut keep = |s: StepModel, sink: &mut Sink| -> Option<(StepModel, Vec<Conclusion>)> {
        match when::evaluate(&s.when, &facts, true, sink) {
            Outcome::Run(statuses) => Some((s, statuses)),
            Outcome::Skip(reason) => {
                dropped_steps.push(DroppedStep {
                    name: s.name.clone(),
                    kind: kind_of(&s),
                    reason,
                });
                None
            }
        }
    };

    // Clone steps: none with skip_clone, the `clone:` section if given, else the implicit one.
    let mut clone_steps: Vec<StepSpec> = Vec::new();
    if w.skip_clone {
        if w.clone.is_some() {
            sink.warn(
                "/clone",
                Pos::NONE,
                "\"clone\" is ignored because \"skip_clone\" is true",
            );
        }
    } else if let Some(clone) = w.clone {
        for s in clone {
            if let Some((s, statuses)) = keep(s, sink) {
                clone_steps.push(spec(s, statuses));
            }
        }
    } else if let Some(repo) = &ctx.repo {
        if let Some(user) = w
            .steps
            .iter()
            .chain(&w.services)
            .find(|s| s.name == "clone")
        {
            sink.error(
                &user.pointer,
                user.pos,
                "duplicate name \"clone\": the implicit clone step uses it; rename the step or set \"skip_clone\"",
            );
        }
        clone_steps.push(implicit_clone(repo));
    }

    let concurrency = w.concurrency.and_then(|c| concurrency(name, c, ctx, sink));

    let dag = w.steps.iter().any(|s| s.depends_on.is_some());
    let mut kept: Vec<(StepModel, Vec<Conclusion>)> = Vec::new();
    for s in w.steps {
        if let Some(k) = keep(s, sink) {
            kept.push(k);
        }
    }
    let mut services = Vec::new();
    for s in w.services {
        if let Some((s, statuses)) = keep(s, sink) {
            check_secrets(&s, ctx, sink);
            services.push(spec(s, statuses));
        }
    }

    // The step DAG.
    for i in 1..clone_steps.len() {
        let prev = clone_steps[i - 1].name.clone();
        clone_steps[i].depends_on = vec![prev];
    }
    let last_clone = clone_steps.last().map(|s| s.name.clone());
    let kept_names: BTreeSet<String> = kept.iter().map(|(s, _)| s.name.clone()).collect();
    let mut steps = clone_steps;
    let mut previous = last_clone.clone();
    for (s, statuses) in kept {
        check_secrets(&s, ctx, sink);
        let deps: Vec<String> = if dag {
            // A dependency on an absent (optional) or dropped step is left out: the step runs.
            let explicit: Vec<String> = s
                .depends_on
                .iter()
                .flatten()
                .filter(|d| kept_names.contains(&d.name))
                .map(|d| d.name.clone())
                .collect();
            if explicit.is_empty() {
                last_clone.iter().cloned().collect()
            } else {
                explicit
            }
        } else {
            previous.iter().cloned().collect()
        };
        previous = Some(s.name.clone());
        let mut step = spec(s, statuses);
        step.depends_on = deps;
        steps.push(step);
    }

    Ok(Candidate {
        source: 0,
        plan: WorkflowPlan {
            name: name.to_string(),
            matrix: element.clone(),
            platform,
            workspace: w.workspace,
            labels: w.labels,
            depends_on: Vec::new(),
            runs_on,
            services,
            steps,
            dropped_steps,
            concurrency,
        },
        deps: w.depends_on,
        status_place,
    })
}

/// The workflow's concurrency as it is enforced: its limit within the server's bound, its
/// group (the workflow's name by default), scoped by the submission's `CI_REPO`.
fn concurrency(
    name: &str,
    c: ConcurrencyModel,
    ctx: &Context,
    sink: &mut Sink,
) -> Option<Concurrency> {
    let bound = ctx.limits.concurrency_limit;
    let limit = match u32::try_from(c.limit) {
        Ok(limit) if (limit as usize) <= bound => limit,
        _ => {
            sink.error(
                &c.limit_pointer,
                c.limit_pos,
                format!(
                    "a concurrency limit of {} is {}",
                    c.limit,
                    over(bound, limits::CONCURRENCY_LIMIT)
                ),
            );
            return None;
        }
    };
    let group = c
        .group
        .filter(|g| !g.is_empty())
        .unwrap_or_else(|| name.to_string());
    let scope = ctx
        .variables
        .get("CI_REPO")
        .filter(|r| !r.is_empty())
        .cloned();
    let most = limits::CONCURRENCY_GROUP_BYTES;
    if group.len() > most {
        sink.error(
            &c.group_pointer,
            c.group_pos,
            format!(
                "a concurrency group of {} bytes is more than the limit of {most} bytes; name a shorter group",
                group.len()
            ),
        );
        return None;
    }
    if let Some(scope) = scope.as_ref().filter(|s| s.len() > most) {
        sink.error(
            &c.group_pointer,
            c.group_pos,
            format!(
                "concurrency groups are scoped by the submission's CI_REPO, and its {} bytes are more than the limit of {most} bytes",
                scope.len()
            ),
        );
        return None;
    }
    Some(Concurrency {
        limit,
        group,
        scope,
    })
}

fn check_secrets(s: &StepModel, ctx: &Context, sink: &mut Sink) {
    if !ctx.check_secrets {
        return;
    }
    for (name, pointer, pos) in &s.secret_refs {
        if !ctx.secret_names.contains(name) {
            sink.error(
                pointer,
                *pos,
                format!("secret \"{name}\" is not provided by the submission"),
            );
        }
    }
}

fn kind_of(s: &StepModel) -> StepKind {
    match s.section {
        Section::Clone => StepKind::Clone,
        Section::Service => StepKind::Service,
        Section::Step if s.is_plugin() => StepKind::Plugin,
        Section::Step => StepKind::Step,
    }
}

fn spec(s: StepModel, when_status: Vec<Conclusion>) -> StepSpec {
    let kind = kind_of(&s);
    let image = match (&s.image, s.section) {
        (Some(i), _) if !i.is_empty() => i.clone(),
        (_, Section::Clone) => DEFAULT_CLONE_IMAGE.to_string(),
        _ => String::new(),
    };
    StepSpec {
        name: s.name,
        kind,
        image,
        commands: s.commands.unwrap_or_default(),
        entrypoint: s.entrypoint,
        settings: s.settings.unwrap_or_default(),
        directory: s.directory,
        environment: s.environment,
        depends_on: Vec::new(),
        when_status,
        failure: s.failure,
        detach: s.detach,
        privileged: s.privileged,
        pull: s.pull,
        volumes: s.volumes,
        extra_hosts: s.extra_hosts,
        dns: s.dns,
        dns_search: s.dns_search,
        timeout: s.timeout,
        ports: s.ports,
        backend_options: s.kubernetes,
    }
}

fn implicit_clone(repo: &RepoSpec) -> StepSpec {
    let mut settings = IndexMap::new();
    for (k, v) in [
        ("remote", &repo.clone_url),
        ("ref", &repo.r#ref),
        ("sha", &repo.sha),
    ] {
        settings.insert(
            k.to_string(),
            SettingValue::Value(serde_json::Value::String(v.clone())),
        );
    }
    StepSpec {
        settings,
        ..StepSpec::new("clone", StepKind::Clone, DEFAULT_CLONE_IMAGE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(name: &str, t: &str) -> Source {
        Source {
            name: name.to_string(),
            content: SourceContent::Text(t.to_string()),
        }
    }

    fn ctx(vars: &[(&str, &str)]) -> Context {
        Context {
            variables: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Context::default()
        }
    }

    fn planned(sources: &[Source], c: &Context) -> Planned {
        match plan(sources, c) {
            Ok(p) => p,
            Err(r) => panic!("refused: {:#?}", r.errors),
        }
    }

    fn deps(w: &WorkflowPlan) -> Vec<(String, Vec<String>)> {
        w.steps
            .iter()
            .map(|s| (s.name.clone(), s.depends_on.clone()))
            .collect()
    }

    #[test]
    fn woodpecker_docs_kubernetes_example_is_accepted_unmodified() {
        let src = [text("docs", include_str!("testdata/docs_kubernetes.yaml"))];
        let p = planned(&src, &ctx(&[]));
        assert!(p.warnings.is_empty(), "{:#?}", p.warnings);
        let k = &p.plan.workflows[0].steps[0].backend_options;
        assert_eq!(
            k.service_account_name.as_deref(),
            Some("my-service-account")
        );
        assert_eq!(k.tolerations[0].toleration_seconds, Some(3600));
    }

    /// Woodpecker's own CI file, accepted unmodified: it names a step and a service alike
    /// (`postgres`, `mysql`), as Woodpecker allows.
    #[test]
    fn woodpeckers_own_test_pipeline() {
        let src = [text("test", include_str!("testdata/woodpecker_test.yaml"))];
        let mut c = ctx(&[
            ("CI_PIPELINE_EVENT", "pull_request"),
            ("CI_COMMIT_BRANCH", "main"),
            ("CI_PIPELINE_FILES", "[\"server/main.go\"]"),
        ]);
        c.secret_names.insert("codecov_token".into());
        let r = lint(&src, &c);
        assert!(r.errors.is_empty(), "{:#?}", r.errors);
        assert!(r.warnings.is_empty(), "{:#?}", r.warnings);

        // It plans: DAG, dropped step, plugin with a secret.
        let p = planned(&src, &c);
        let w = &p.plan.workflows[0];
        assert_eq!(w.dropped_steps.len(), 1);
        assert_eq!(w.dropped_steps[0].name, "lint-pipeline");
        assert_eq!(w.services.len(), 2);
        let codecov = w
            .steps
            .iter()
            .find(|s| s.name == "codecov")
            .expect("codecov");
        assert_eq!(codecov.kind, StepKind::Plugin);
        assert_eq!(codecov.failure, Failure::Ignore);
        assert_eq!(codecov.depends_on, ["test", "sqlite"]);
        assert_eq!(
            codecov.settings.get("token"),
            Some(&SettingValue::FromSecret("codecov_token".into()))
        );
        let license = w
            .steps
            .iter()
            .find(|s| s.name == "lint-license-header")
            .expect("step");
        assert!(
            license.depends_on.is_empty(),
            "DAG: no depends_on starts at once"
        );
        let vendor = w.steps.iter().find(|s| s.name == "vendor").expect("vendor");
        assert_eq!(vendor.image, "docker.io/golang:1.22");
    }

    #[test]
    fn missing_secret_is_an_error() {
        let src = [text(
            "ci",
            "steps:\n  - name: a\n    image: x\n    commands: [ls]\n    environment:\n      TOKEN:\n        from_secret: tok\n",
        )];
        let r = plan(&src, &ctx(&[])).expect_err("refused");
        assert_eq!(r.errors.len(), 1);
        let d = &r.errors[0];
        assert_eq!(
            d.message,
            "secret \"tok\" is not provided by the submission"
        );
        assert_eq!(d.pointer, "/steps/0/environment/TOKEN/from_secret");
        assert_eq!((d.line, d.column), (Some(7), Some(22)));
        assert_eq!(d.config, "ci");
    }

    #[test]
    fn sequential_without_depends_on_and_implicit_clone() {
        let mut c = ctx(&[]);
        c.repo = Some(RepoSpec {
            clone_url: "https://example.com/r.git".into(),
            r#ref: "refs/heads/main".into(),
            sha: "abc".into(),
        });
        let p = planned(
            &[text(
                "ci",
                "steps:\n  a: {image: x, commands: [ls]}\n  b: {image: x, commands: [ls]}\n",
            )],
            &c,
        );
        let w = &p.plan.workflows[0];
        assert_eq!(
            deps(w),
            [
                ("clone".to_string(), vec![]),
                ("a".to_string(), vec!["clone".to_string()]),
                ("b".to_string(), vec!["a".to_string()])
            ]
        );
        assert_eq!(w.steps[0].kind, StepKind::Clone);
        assert_eq!(w.steps[0].image, DEFAULT_CLONE_IMAGE);
        assert_eq!(w.workspace, Workspace::default());
        assert_eq!(w.runs_on, [Conclusion::Success]);
        assert_eq!(w.platform, "linux/amd64");
    }

    /// Clone settings are checked once `${NAME}` is substituted: a variable can neither
    /// smuggle an option into a ref nor make a valid commit id look invalid.
    #[test]
    fn clone_settings_are_checked_after_substitution() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let src = [text(
            "ci",
            "clone:\n  git:\n    settings:\n      ref: ${MY_REF}\n      sha: ${MY_SHA}\nsteps: [{name: a, image: x, commands: [ls]}]\n",
        )];
        let good = lint(&src, &ctx(&[("MY_REF", "main"), ("MY_SHA", sha)]));
        assert!(good.errors.is_empty(), "{:#?}", good.errors);
        let bad = lint(
            &src,
            &ctx(&[("MY_REF", "--upload-pack=touch /tmp/x"), ("MY_SHA", sha)]),
        );
        let found: Vec<(&str, Option<u32>)> = bad
            .errors
            .iter()
            .map(|d| (d.pointer.as_str(), d.line))
            .collect();
        assert_eq!(found, [("/clone/git/settings/ref", Some(4))]);
        assert!(!bad.errors[0].message.contains("upload-pack"));
    }

    #[test]
    fn clone_override_and_skip() {
        let mut c = ctx(&[]);
        c.repo = Some(RepoSpec {
            clone_url: "u".into(),
            r#ref: "r".into(),
            sha: "s".into(),
        });
        let p = planned(
            &[text(
                "ci",
                "clone:\n  git:\n    image: woodpeckerci/plugin-git:2.5\n    settings: {depth: 50}\nsteps: {a: {image: x, commands: [ls], depends_on: []}}\n",
            )],
            &c,
        );
        let w = &p.plan.workflows[0];
        assert_eq!(
            deps(w),
            [
                ("git".to_string(), vec![]),
                ("a".to_string(), vec!["git".to_string()])
            ]
        );
        assert_eq!(w.steps[0].kind, StepKind::Clone);
        assert_eq!(w.steps[0].image, "woodpeckerci/plugin-git:2.5");
        assert_eq!(
            w.steps[0].settings.get("depth"),
            Some(&SettingValue::Value(50.into()))
        );

        let p = planned(
            &[text(
                "ci",
                "skip_clone: true\nsteps: {a: {image: x, commands: [ls]}}\n",
            )],
            &c,
        );
        assert_eq!(deps(&p.plan.workflows[0]), [("a".to_string(), vec![])]);
    }

    #[test]
    fn dag_with_optional_and_dropped_dependencies() {
        let yaml = "steps:\n  a: {image: x, commands: [ls]}\n  b: {image: x, commands: [ls], when: {branch: release}}\n  c: {image: x, commands: [ls], depends_on: [a, b, {name: zz, optional: true}]}\n  d: {image: x, commands: [ls]}\n";
        let p = planned(
            &[text("ci", yaml)],
            &ctx(&[("CI_COMMIT_BRANCH", "main"), ("CI_PIPELINE_EVENT", "push")]),
        );
        let w = &p.plan.workflows[0];
        assert_eq!(
            deps(w),
            [
                ("a".to_string(), vec![]),
                ("c".to_string(), vec!["a".to_string()]),
                ("d".to_string(), vec![])
            ]
        );
        assert_eq!(
            w.dropped_steps,
            [DroppedStep {
                name: "b".into(),
                kind: StepKind::Step,
                reason: "when.branch does not match \"main\"".into()
            }]
        );
    }

    #[test]
    fn when_as_list_and_status() {
        let yaml = "steps:\n  notify:\n    image: x\n    commands: [ls]\n    when:\n      - event: tag\n      - branch: main\n        status: [success, failure]\n";
        let p = planned(
            &[text("ci", yaml)],
            &ctx(&[("CI_COMMIT_BRANCH", "main"), ("CI_PIPELINE_EVENT", "push")]),
        );
        assert_eq!(
            p.plan.workflows[0].steps[0].when_status,
            [Conclusion::Success, Conclusion::Failure]
        );
        let p = planned(
            &[text("ci", yaml)],
            &ctx(&[("CI_COMMIT_BRANCH", "dev"), ("CI_PIPELINE_EVENT", "push")]),
        );
        assert_eq!(
            p.plan.workflows[0].dropped_steps[0].reason,
            "none of the when conditions is met"
        );
    }

    #[test]
    fn matrix_axes_include_and_substitution() {
        let yaml = "matrix:\n  GO: ['1.21', '1.22']\n  DB: [pg]\nsteps:\n  test:\n    image: golang:${GO}\n    commands: ['echo ${DB} ${CI_COMMIT_BRANCH} $${GO} ${HOME}']\n    when: {matrix: {GO: '1.22'}}\n  always: {image: x, commands: [ls]}\n";
        let p = planned(&[text("ci", yaml)], &ctx(&[("CI_COMMIT_BRANCH", "main")]));
        let ws = &p.plan.workflows;
        assert_eq!(ws.len(), 2);
        assert_eq!(ws[0].matrix.get("GO").map(String::as_str), Some("1.21"));
        assert_eq!(
            ws[0].dropped_steps[0].reason,
            "when.matrix does not match GO=\"1.21\""
        );
        assert_eq!(ws[1].steps[0].image, "golang:1.22");
        assert_eq!(ws[1].steps[0].commands, ["echo pg main ${GO} ${HOME}"]);
        assert_eq!(ws[0].name, ws[1].name);

        let yaml = "matrix:\n  include:\n    - {IMAGE: alpine, TAG: '3.20'}\n    - {IMAGE: debian, TAG: '12'}\nlabels:\n  platform: linux/${ARCH}\nsteps: [{name: t, image: '${IMAGE}:${TAG}', commands: [ls]}]\n";
        let p = planned(&[text("ci", yaml)], &ctx(&[("ARCH", "arm64")]));
        let images: Vec<&str> = p
            .plan
            .workflows
            .iter()
            .map(|w| w.steps[0].image.as_str())
            .collect();
        assert_eq!(images, ["alpine:3.20", "debian:12"]);
        assert_eq!(p.plan.workflows[0].platform, "linux/arm64");
    }

    #[test]
    fn workflow_when_and_dependencies() {
        let sources = [
            text("build", "steps: [{name: a, image: x, commands: [ls]}]"),
            text(
                "deploy",
                "when: {event: tag}\nsteps: [{name: a, image: x, commands: [ls]}]",
            ),
            text(
                "notify",
                "depends_on: [deploy]\nsteps: [{name: a, image: x, commands: [ls]}]",
            ),
            text(
                "ghost",
                "depends_on: [nowhere]\nsteps: [{name: a, image: x, commands: [ls]}]",
            ),
            text(
                "opt",
                "depends_on: [build, {name: nowhere, optional: true}]\nruns_on: [success, failure]\nsteps: [{name: a, image: x, commands: [ls]}]",
            ),
        ];
        let p = planned(&sources, &ctx(&[("CI_PIPELINE_EVENT", "push")]));
        let names: Vec<&str> = p.plan.workflows.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["build", "opt"]);
        assert_eq!(p.plan.workflows[1].depends_on, ["build"]);
        assert_eq!(
            p.plan.workflows[1].runs_on,
            [Conclusion::Success, Conclusion::Failure]
        );
        let dropped: Vec<(&str, &str)> = p
            .plan
            .dropped_workflows
            .iter()
            .map(|d| (d.name.as_str(), d.reason.as_str()))
            .collect();
        assert_eq!(
            dropped,
            [
                ("deploy", "when.event does not match \"push\""),
                (
                    "notify",
                    "depends on workflow \"deploy\", which was dropped"
                ),
                (
                    "ghost",
                    "depends on workflow \"nowhere\", which is not in this submission"
                ),
            ]
        );
        assert_eq!(
            p.warnings[0].message,
            "workflow \"nowhere\" is not in this submission; workflow \"ghost\" is dropped"
        );
        assert_eq!(
            (
                p.warnings[0].config.as_str(),
                p.warnings[0].pointer.as_str()
            ),
            ("ghost", "/depends_on/0")
        );
    }

    /// Woodpecker's workflow `when.status` (and the older `runs_on`): the statuses of the
    /// workflows it depends on in which it runs; one that runs only after a failure and has
    /// nothing that could fail before it is dropped, saying why.
    #[test]
    fn workflow_when_status() {
        let step = "steps: [{name: a, image: x, commands: [ls]}]";
        let sources = [
            text("build", step),
            text(
                "on-failure",
                &format!("depends_on: [build]\nwhen: {{status: failure}}\n{step}"),
            ),
            text(
                "always",
                &format!(
                    "depends_on: [build]\nwhen: [{{event: push, status: [success, failure]}}]\n{step}"
                ),
            ),
            text(
                "joined",
                &format!(
                    "depends_on: [build]\nruns_on: [success]\nwhen: {{status: [failure]}}\n{step}"
                ),
            ),
            text("lonely", &format!("when: {{status: [failure]}}\n{step}")),
            text(
                "after-lonely",
                &format!(
                    "depends_on: [{{name: lonely, optional: true}}]\nruns_on: [failure]\n{step}"
                ),
            ),
        ];
        let p = planned(&sources, &ctx(&[("CI_PIPELINE_EVENT", "push")]));
        let runs_on: Vec<(&str, &[Conclusion])> = p
            .plan
            .workflows
            .iter()
            .map(|w| (w.name.as_str(), w.runs_on.as_slice()))
            .collect();
        assert_eq!(
            runs_on,
            [
                ("build", &[Conclusion::Success][..]),
                ("on-failure", &[Conclusion::Failure][..]),
                ("always", &[Conclusion::Success, Conclusion::Failure][..]),
                ("joined", &[Conclusion::Success, Conclusion::Failure][..]),
            ]
        );
        let dropped: Vec<(&str, &str)> = p
            .plan
            .dropped_workflows
            .iter()
            .map(|d| (d.name.as_str(), d.reason.as_str()))
            .collect();
        assert_eq!(
            dropped,
            [
                (
                    "lonely",
                    "skipped: it runs only when a workflow it depends on fails (its status condition is [failure]), and it depends on none"
                ),
                (
                    "after-lonely",
                    "skipped: it runs only when a workflow it depends on fails (its status condition is [failure]), and none of them is in this pipeline"
                ),
            ]
        );
        let warning = &p.warnings[0];
        assert_eq!(
            (
                warning.config.as_str(),
                warning.pointer.as_str(),
                warning.line
            ),
            ("lonely", "/when/status", Some(1))
        );
        assert_eq!(p.warnings.len(), 1, "{:#?}", p.warnings);
    }

    #[test]
    fn workflow_dependency_cycle() {
        let sources = [
            text(
                "a",
                "depends_on: [b]\nsteps: [{name: s, image: x, commands: [ls]}]",
            ),
            text(
                "b",
                "depends_on: [a]\nsteps: [{name: s, image: x, commands: [ls]}]",
            ),
        ];
        let r = lint(&sources, &ctx(&[]));
        assert_eq!(r.errors.len(), 1);
        assert_eq!(r.errors[0].message, "dependency cycle: a -> b -> a");
    }

    #[test]
    fn json_text_has_positions_and_parsed_value_has_none() {
        let json = "{\n  \"steps\": [\n    {\"name\": \"a\", \"image\": \"x\", \"comands\": [\"ls\"]}\n  ]\n}";
        let r = lint(&[text("j", json)], &ctx(&[]));
        let d = r
            .errors
            .iter()
            .find(|d| d.pointer == "/steps/0/comands")
            .expect("unknown key");
        assert_eq!((d.line, d.column), (Some(3), Some(33)));

        let value: serde_json::Value = serde_json::from_str(json).expect("json");
        let src = Source {
            name: "v".into(),
            content: SourceContent::Value(value),
        };
        let r = lint(&[src], &ctx(&[]));
        let d = r
            .errors
            .iter()
            .find(|d| d.pointer == "/steps/0/comands")
            .expect("unknown key");
        assert_eq!((d.line, d.column), (None, None));
        assert_eq!(
            d.message,
            "unknown key \"comands\", did you mean \"commands\"?"
        );
    }

    #[test]
    fn malformed_text_is_a_parse_error_with_position() {
        let r = lint(&[text("bad", "steps:\n  - name: a\n   bad: [")], &ctx(&[]));
        assert_eq!(r.errors.len(), 1);
        assert_eq!((r.errors[0].line, r.errors[0].column), (Some(3), Some(4)));
        assert_eq!(
            r.errors[0].message,
            "invalid YAML/JSON: while parsing a block collection, did not find expected '-' indicator"
        );
        let r = lint(&[text("bad", "{\"steps\": [}")], &ctx(&[]));
        assert_eq!(r.errors[0].line, Some(1));
    }

    #[test]
    fn concurrency_groups_default_to_the_workflow_name_and_are_scoped_by_the_repository() {
        let sources = [
            text(
                "deploy",
                "concurrency: 1\nmatrix: {ENV: [staging, prod]}\nsteps: [{name: a, image: x, commands: [ls]}]",
            ),
            text(
                "release",
                "concurrency: {limit: 2, group: \"rollout-${ENV}-${CI_COMMIT_BRANCH}\"}\nmatrix: {ENV: [eu]}\nsteps: [{name: a, image: x, commands: [ls]}]",
            ),
            text("test", "steps: [{name: a, image: x, commands: [ls]}]"),
        ];
        let p = planned(
            &sources,
            &ctx(&[("CI_REPO", "acme/api"), ("CI_COMMIT_BRANCH", "main")]),
        );
        let got: Vec<Option<Concurrency>> = p
            .plan
            .workflows
            .iter()
            .map(|w| w.concurrency.clone())
            .collect();
        let scoped = |limit: u32, group: &str| {
            Some(Concurrency {
                limit,
                group: group.into(),
                scope: Some("acme/api".into()),
            })
        };
        assert_eq!(
            got,
            [
                scoped(1, "deploy"),
                scoped(1, "deploy"),
                scoped(2, "rollout-eu-main"),
                None
            ]
        );
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);

        // Without CI_REPO, one scope for every submission.
        let p = planned(&sources[..1], &ctx(&[]));
        assert_eq!(
            p.plan.workflows[0].concurrency.as_ref().unwrap().scope,
            None
        );
        // An empty group is the workflow's name too.
        let p = planned(
            &[text(
                "ship",
                "concurrency: {limit: 1, group: \"\"}\nsteps: [{name: a, image: x, commands: [ls]}]",
            )],
            &ctx(&[]),
        );
        assert_eq!(
            p.plan.workflows[0].concurrency.as_ref().unwrap().group,
            "ship"
        );
    }

    #[test]
    fn a_concurrency_limit_over_the_servers_bound_is_refused_at_its_place() {
        let c = with_limits(Limits {
            concurrency_limit: 3,
            ..Limits::default()
        });
        let yaml = |limit: &str| {
            format!(
                "steps: [{{name: a, image: x, commands: [ls]}}]\nconcurrency:\n  limit: {limit}\n"
            )
        };
        assert!(lint(&[text("ci", &yaml("3"))], &c).errors.is_empty());
        let r = lint(&[text("ci", &yaml("4"))], &c);
        let [e] = r.errors.as_slice() else {
            panic!("one error: {r:?}")
        };
        assert_eq!(
            (e.pointer.as_str(), e.line, e.column),
            ("/concurrency/limit", Some(3), Some(10))
        );
        assert_eq!(
            e.message,
            "a concurrency limit of 4 is more than the limit of 3 (PICULET_MAX_CONCURRENCY_LIMIT)"
        );
        let r = lint(&[text("ci", &yaml("99999999999"))], &c);
        assert_eq!(r.errors.len(), 1, "{r:?}");
    }

    #[test]
    fn a_workflow_with_concurrency_may_record_one_event_more() {
        // 3 for the pipeline, 2 for the workflow, 2 for its step: 7; waiting for its group: 8.
        let c = with_limits(Limits {
            events_per_pipeline: 7,
            ..Limits::default()
        });
        let step = "steps: [{name: a, image: x, commands: [ls]}]";
        assert!(lint(&[text("ci", step)], &c).errors.is_empty());
        let r = lint(&[text("ci", &format!("concurrency: 1\n{step}"))], &c);
        assert_eq!(
            r.errors[0].message,
            "the pipeline can record up to 8 events (1 workflows with 1 steps and services in all), more than the limit of 7 (PICULET_MAX_EVENTS_PER_PIPELINE)"
        );
    }

    #[test]
    fn plan_round_trips_through_json() {
        let yaml = include_str!("testdata/kubernetes.yaml");
        let p = planned(&[text("k", yaml)], &ctx(&[]));
        let mut plan = p.plan;
        plan.workflows[0].steps[0].timeout = Some(Duration::from_secs(600));
        let json = serde_json::to_string(&plan).expect("serialize");
        assert!(json.contains("\"timeout\":\"10m\""), "{json}");
        assert!(json.contains("\"runtimeClassName\":\"gvisor\""), "{json}");
        let back: Plan = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, plan);
    }

    #[test]
    fn no_panic_on_odd_inputs() {
        for t in [
            "",
            "~",
            "[]",
            "42",
            "steps:",
            "steps: {a: ~}",
            "steps: [[]]",
            "matrix: 3\nsteps: []",
            "a: &x [*x]",
            "<<: 1",
            "steps: {a: {<<: [1]}}",
        ] {
            let r = lint(&[text("odd", t)], &ctx(&[]));
            assert!(!r.errors.is_empty(), "{t:?}");
        }
    }

    // ---- limits and hostile input ------------------------------------------------------------

    fn with_limits(limits: Limits) -> Context {
        Context {
            limits,
            ..Context::default()
        }
    }

    fn messages(r: &Report) -> Vec<(String, String)> {
        r.errors
            .iter()
            .map(|d| (d.pointer.clone(), d.message.clone()))
            .collect()
    }

    /// `n` steps named s0…, each depending on the `deps(i)` steps it names.
    fn steps_yaml(n: usize, deps: impl Fn(usize) -> Vec<usize>) -> String {
        let mut y = String::from("steps:\n");
        for i in 0..n {
            let d: Vec<String> = deps(i).iter().map(|j| format!("s{j}")).collect();
            y.push_str(&format!(
                "  s{i}: {{image: x, commands: [ls], depends_on: [{}]}}\n",
                d.join(", ")
            ));
        }
        y
    }

    fn steps_only(n: usize) -> String {
        steps_yaml(n, |_| Vec::new()).replace(", depends_on: []", "")
    }

    #[test]
    fn steps_per_workflow_at_and_over_the_limit() {
        let c = with_limits(Limits {
            steps_per_workflow: 3,
            ..Limits::default()
        });
        assert!(lint(&[text("ci", &steps_only(3))], &c).is_ok());
        let r = lint(&[text("ci", &steps_only(4))], &c);
        assert_eq!(
            messages(&r),
            [(
                "/steps".to_string(),
                "workflow has 4 steps, more than the limit of 3 (PICULET_MAX_STEPS_PER_WORKFLOW)"
                    .to_string()
            )]
        );
        assert_eq!((r.errors[0].line, r.errors[0].column), (Some(2), Some(3)));
        // Services and the implicit clone step count.
        let mut c = c;
        c.repo = Some(RepoSpec {
            clone_url: "u".into(),
            r#ref: "r".into(),
            sha: "s".into(),
        });
        assert!(lint(&[text("ci", &steps_only(2))], &c).is_ok());
        let r = lint(&[text("ci", &steps_only(3))], &c);
        assert!(r.errors[0].message.starts_with("workflow has 4 steps"));
        let with_service = format!("services: [{{name: db, image: pg}}]\n{}", steps_only(2));
        assert!(
            lint(&[text("ci", &with_service)], &c).errors[0]
                .message
                .starts_with("workflow has 4 steps")
        );
    }

    #[test]
    fn workflows_per_pipeline_at_and_over_the_limit() {
        let c = with_limits(Limits {
            workflows_per_pipeline: 4,
            ..Limits::default()
        });
        let one = steps_only(1);
        let configs =
            |n: usize| -> Vec<Source> { (0..n).map(|i| text(&format!("c{i}"), &one)).collect() };
        assert!(lint(&configs(4), &c).is_ok());
        let r = lint(&configs(5), &c);
        assert_eq!(
            messages(&r),
            [(
                "".to_string(),
                "the submission has 5 configs, more than the limit of 4 (PICULET_MAX_WORKFLOWS_PER_PIPELINE)".to_string()
            )]
        );

        let matrix = |a: usize, b: usize| {
            format!(
                "matrix:\n  A: [{}]\n  B: [{}]\n{one}",
                (0..a).map(|i| i.to_string()).collect::<Vec<_>>().join(", "),
                (0..b).map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
            )
        };
        let p = planned(&[text("m", &matrix(2, 2))], &c);
        assert_eq!(p.plan.workflows.len(), 4);
        let r = lint(&[text("m", &matrix(2, 3))], &c);
        assert_eq!(
            messages(&r),
            [(
                "/matrix".to_string(),
                "matrix has 6 combinations, more than the limit of 4 (PICULET_MAX_WORKFLOWS_PER_PIPELINE)".to_string()
            )]
        );
        // What earlier configs took counts.
        let r = lint(&[text("a", &one), text("m", &matrix(2, 2))], &c);
        assert_eq!(r.errors[0].config, "m");
        assert_eq!(
            r.errors[0].message,
            "matrix has 4 combinations; with the 1 workflows of the configs before it, the pipeline would have 5 workflows, more than the limit of 4 (PICULET_MAX_WORKFLOWS_PER_PIPELINE)"
        );
    }

    /// The issue's 14 KB body: 8 matrix axes of 2 values and 200 steps would be 51,200 steps;
    /// it is refused on the matrix product, before a single element is built.
    #[test]
    fn a_matrix_cannot_multiply_steps_past_the_limits() {
        let axes: String = (0..8).map(|i| format!("  A{i}: [x, y]\n")).collect();
        let yaml = format!("matrix:\n{axes}{}", steps_only(200));
        let r = lint(&[text("ci", &yaml)], &ctx(&[]));
        assert_eq!(
            messages(&r),
            [(
                "/matrix".to_string(),
                "matrix has 256 combinations, more than the limit of 100 (PICULET_MAX_WORKFLOWS_PER_PIPELINE)".to_string()
            )]
        );
        // Within the workflow limit, the steps limit stops it.
        let yaml = format!(
            "matrix:\n  A: [{}]\n{}",
            (0..11)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            steps_only(200)
        );
        let r = plan(&[text("ci", &yaml)], &ctx(&[])).expect_err("refused");
        assert_eq!(
            messages(&r),
            [(
                "/matrix".to_string(),
                "the pipeline would have 2200 steps (11 workflows of 200 steps), more than the limit of 2000 (PICULET_MAX_STEPS_PER_PIPELINE)".to_string()
            )]
        );
    }

    #[test]
    fn steps_per_pipeline_at_and_over_the_limit() {
        let c = with_limits(Limits {
            steps_per_pipeline: 6,
            ..Limits::default()
        });
        let three = steps_only(3);
        assert!(lint(&[text("a", &three), text("b", &three)], &c).is_ok());
        let r = lint(&[text("a", &three), text("b", &steps_only(4))], &c);
        assert_eq!(
            messages(&r),
            [(
                "/steps".to_string(),
                "the pipeline would have 7 steps (4 here, and 3 in the configs before it), more than the limit of 6 (PICULET_MAX_STEPS_PER_PIPELINE)".to_string()
            )]
        );
        assert_eq!(r.errors[0].config, "b");
    }

    #[test]
    fn dependencies_at_and_over_the_limit() {
        let c = with_limits(Limits {
            dependencies: 3,
            ..Limits::default()
        });
        let chain = |n| steps_yaml(n, |i| if i == 0 { vec![] } else { vec![i - 1] });
        assert!(lint(&[text("ci", &chain(4))], &c).is_ok());
        let r = lint(&[text("ci", &chain(5))], &c);
        assert_eq!(
            messages(&r),
            [(
                "/steps".to_string(),
                "the pipeline would have 4 depends_on entries, more than the limit of 3 (PICULET_MAX_DEPENDENCIES)".to_string()
            )]
        );
        // Workflow dependencies count too.
        let r = lint(&[text("ci", &format!("depends_on: [x]\n{}", chain(4)))], &c);
        assert!(
            r.errors[0]
                .message
                .starts_with("the pipeline would have 4 depends_on entries")
        );
    }

    #[test]
    fn events_per_pipeline_at_and_over_the_limit() {
        // One workflow of two steps: 3 + 2 + 2 × 2 = 9 events.
        let two = steps_only(2);
        let at = with_limits(Limits {
            events_per_pipeline: 9,
            ..Limits::default()
        });
        assert!(plan(&[text("ci", &two)], &at).is_ok());
        let over = with_limits(Limits {
            events_per_pipeline: 8,
            ..Limits::default()
        });
        let r = plan(&[text("ci", &two)], &over).expect_err("refused");
        assert_eq!(
            messages(&r),
            [(
                "".to_string(),
                "the pipeline can record up to 9 events (1 workflows with 2 steps and services in all), more than the limit of 8 (PICULET_MAX_EVENTS_PER_PIPELINE)".to_string()
            )]
        );
        // Steps dropped by `when` record no event.
        let dropped = format!("{two}  s2: {{image: x, commands: [ls], when: {{event: tag}}}}\n");
        let mut at = at;
        at.variables
            .insert("CI_PIPELINE_EVENT".into(), "push".into());
        assert!(plan(&[text("ci", &dropped)], &at).is_ok());
    }

    #[test]
    fn strings_grown_by_substitution_are_refused() {
        let mut c = with_limits(Limits {
            string_length: 256,
            ..Limits::default()
        });
        c.variables.insert("X".into(), "x".repeat(200));
        let yaml = "steps: [{name: a, image: x, commands: ['${X}', '${X}${X}']}]";
        let r = lint(&[text("ci", yaml)], &c);
        assert_eq!(
            messages(&r),
            [(
                "/steps/0/commands/1".to_string(),
                "string is longer than the limit of 256 bytes (PICULET_MAX_STRING_LENGTH) once ${NAME} variables are substituted".to_string()
            )]
        );
    }

    /// A value whose drop would recurse as deep as it nests, taken apart iteratively.
    fn drop_deep(v: serde_json::Value) {
        let mut stack = vec![v];
        while let Some(v) = stack.pop() {
            match v {
                serde_json::Value::Array(a) => stack.extend(a),
                serde_json::Value::Object(o) => stack.extend(o.into_iter().map(|(_, v)| v)),
                _ => {}
            }
        }
    }

    #[test]
    fn deep_nesting_is_refused_where_it_crosses_the_limit() {
        let c = with_limits(Limits {
            nesting_depth: 4,
            ..Limits::default()
        });
        let refusal =
            "maps and lists nest 5 deep here, more than the limit of 4 (PICULET_MAX_NESTING_DEPTH)";
        // Depth 4 (root, steps, step, commands) is fine; one more is not.
        assert!(
            lint(
                &[text("ci", "steps: [{name: a, image: x, commands: [ls]}]")],
                &c
            )
            .is_ok()
        );
        let deeper = "steps: [{name: a, image: x, commands: [ls], settings: {k: [1]}}]";
        for source in [
            text("yaml", deeper),
            text(
                "json",
                "{\"steps\": [{\"name\": \"a\", \"image\": \"x\", \"settings\": {\"k\": [1]}}]}",
            ),
            Source {
                name: "value".into(),
                content: SourceContent::Value(serde_json::json!(
                    {"steps": [{"name": "a", "image": "x", "settings": {"k": [1]}}]}
                )),
            },
        ] {
            let r = lint(std::slice::from_ref(&source), &c);
            assert_eq!(
                messages(&r),
                [("/steps/0/settings/k".to_string(), refusal.to_string())],
                "{}",
                source.name
            );
        }
        let r = lint(&[text("yaml", deeper)], &c);
        // The list that crosses the limit begins at column 59.
        assert_eq!((r.errors[0].line, r.errors[0].column), (Some(1), Some(59)));
    }

    #[test]
    fn hundred_thousand_levels_do_not_overflow_the_stack() {
        let c = ctx(&[]);
        let flow = "[".repeat(100_000);
        let json_map = "{\"a\": ".repeat(100_000);
        let yaml_map = "{a: ".repeat(100_000);
        for t in [&flow, &json_map, &yaml_map] {
            let r = lint(&[text("deep", t)], &c);
            assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
            assert!(
                r.errors[0].message.contains("(PICULET_MAX_NESTING_DEPTH)"),
                "{}",
                r.errors[0].message
            );
        }
        // A block-style tree: each level one space deeper.
        let block: String = (0..2000)
            .map(|i| format!("{}a:\n", " ".repeat(i)))
            .collect();
        let r = lint(&[text("deep", &block)], &c);
        assert_eq!(r.errors.len(), 1);
        assert_eq!(r.errors[0].pointer, format!("/a{}", "/a".repeat(31)));

        // An already-parsed object, deeper than any parser would hand over.
        let mut deep = serde_json::json!("leaf");
        for _ in 0..100_000 {
            // Built by hand: `json!` would serialize `deep` again, recursively.
            let mut object = serde_json::Map::new();
            object.insert("k".into(), serde_json::Value::Array(vec![deep]));
            deep = serde_json::Value::Object(object);
        }
        let source = Source {
            name: "pipeline".into(),
            content: SourceContent::Value(deep),
        };
        let r = lint(std::slice::from_ref(&source), &c);
        assert_eq!(r.errors.len(), 1);
        assert_eq!(r.errors[0].pointer, "/k/0".repeat(16));
        let SourceContent::Value(deep) = source.content else {
            unreachable!()
        };
        drop_deep(deep);
    }

    /// Plans `depth`-deep settings, and lints one level more, on a thread of `stack` bytes.
    fn plan_nested(depth: usize, stack: usize) -> (Result<usize, Vec<Diagnostic>>, usize) {
        let nest = |levels: usize| {
            let mut nested = String::from("1");
            for _ in 0..levels {
                nested = format!("[{nested}]");
            }
            // Root, steps, step and settings are four levels.
            format!("steps: [{{name: a, image: x, settings: {{k: {nested}}}}}]")
        };
        let (fits, deeper) = (nest(depth - 4), nest(depth - 3));
        let c = with_limits(Limits {
            nesting_depth: depth,
            ..Limits::default()
        });
        std::thread::Builder::new()
            .stack_size(stack)
            .spawn(move || {
                let planned = plan(&[text("ci", &fits)], &c)
                    .map(|p| p.plan.workflows.len())
                    .map_err(|r| r.errors);
                (planned, lint(&[text("ci", &deeper)], &c).errors.len())
            })
            .expect("thread")
            .join()
            .expect("no stack overflow")
    }

    /// The default depth, and the deepest a setting may allow, are read, checked and planned
    /// within 2 MiB of stack: the size of tokio's threads. A debug build of the YAML parser
    /// takes about ten times the stack per level of an optimized one, so there the deepest
    /// allowed tree gets more.
    #[test]
    fn the_deepest_allowed_tree_fits_a_thread_stack() {
        let two_mib = 2 << 20;
        assert_eq!(
            plan_nested(Limits::default().nesting_depth, two_mib),
            (Ok(1), 1)
        );
        let stack = if cfg!(debug_assertions) {
            8 * two_mib
        } else {
            two_mib
        };
        assert_eq!(plan_nested(limits::MAX_NESTING_DEPTH, stack), (Ok(1), 1));
    }

    #[test]
    fn an_alias_bomb_is_refused() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let mut prev = 'a';
        for name in 'b'..='j' {
            let refs = vec![format!("*{prev}"); 10].join(", ");
            bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
            prev = name;
        }
        bomb.push_str("steps: [{name: s, image: x, commands: [ls]}]\n");
        let r = lint(&[text("bomb", &bomb)], &ctx(&[]));
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert_eq!(
            r.errors[0].message,
            format!(
                "YAML aliases expand to more than {} values; write the repeated parts out, or repeat them less",
                node::MAX_ALIAS_EVENTS
            )
        );
    }

    /// Woodpecker configs reuse one anchor in every step; that is no bomb.
    #[test]
    fn an_anchor_reused_by_every_step_is_fine() {
        let mut yaml = String::from(
            "variables:\n  - &defaults\n    image: golang:1.22\n    pull: true\nsteps:\n",
        );
        for i in 0..200 {
            yaml.push_str(&format!("  s{i}:\n    <<: *defaults\n    commands: [ls]\n"));
        }
        let r = lint(&[text("ci", &yaml)], &ctx(&[]));
        assert!(r.is_ok(), "{:?}", r.errors);
    }

    #[test]
    fn a_ten_thousand_step_chain_is_planned() {
        let n = 10_000;
        let c = with_limits(Limits {
            steps_per_workflow: n,
            steps_per_pipeline: n,
            events_per_pipeline: 3 + 2 + 2 * n,
            ..Limits::default()
        });
        let yaml = steps_yaml(n, |i| if i == 0 { vec![] } else { vec![i - 1] });
        let started = std::time::Instant::now();
        let p = planned(&[text("chain", &yaml)], &c);
        eprintln!("10,000-step chain planned in {:?}", started.elapsed());
        let steps = &p.plan.workflows[0].steps;
        assert_eq!(steps.len(), n);
        assert_eq!(steps[n - 1].depends_on, [format!("s{}", n - 2)]);
        assert!(steps[0].depends_on.is_empty());
    }

    #[test]
    fn a_four_thousand_step_cycle_is_reported_briefly() {
        let n = 4000;
        let c = with_limits(Limits {
            steps_per_workflow: n,
            steps_per_pipeline: n,
            ..Limits::default()
        });
        // s0 depends on s3999, each other step on the one before it.
        let yaml = steps_yaml(n, |i| vec![(i + n - 1) % n]);
        let r = lint(&[text("ring", &yaml)], &c);
        assert_eq!(
            messages(&r),
            [(
                "/steps/s0/depends_on".to_string(),
                "dependency cycle: s0 -> s3999 -> s3998 -> s3997 -> s3996 -> s3995 -> s3994 -> s3993 -> s3992 -> s3991 -> … -> s0 (4000 steps)".to_string()
            )]
        );
    }

    #[test]
    fn an_all_to_all_graph_is_one_small_answer() {
        let n = 300;
        let c = with_limits(Limits {
            steps_per_workflow: n,
            dependencies: n * n,
            ..Limits::default()
        });
        let yaml = steps_yaml(n, |i| (0..n).filter(|j| *j != i).collect());
        let started = std::time::Instant::now();
        let r = lint(&[text("all", &yaml)], &c);
        eprintln!("300-step all-to-all linted in {:?}", started.elapsed());
        assert_eq!(
            messages(&r),
            [(
                "/steps/s0/depends_on".to_string(),
                "dependency cycle: s0 -> s1 -> s0".to_string()
            )]
        );
        assert!(serde_json::to_string(&r).expect("json").len() < 1000);
    }

    #[test]
    fn workflow_dependencies_resolve_in_one_pass() {
        // w0 <- w1 <- … <- w99: dropping w0 drops all of them, each once, in order.
        let mut sources = vec![text(
            "w0",
            "when: {event: tag}\nsteps: [{name: a, image: x, commands: [ls]}]",
        )];
        for i in 1..100 {
            sources.push(text(
                &format!("w{i}"),
                &format!(
                    "depends_on: [w{}]\nsteps: [{{name: a, image: x, commands: [ls]}}]",
                    i - 1
                ),
            ));
        }
        let p = planned(&sources, &ctx(&[("CI_PIPELINE_EVENT", "push")]));
        assert!(p.plan.workflows.is_empty());
        let dropped: Vec<&str> = p
            .plan
            .dropped_workflows
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        let expected: Vec<String> = (0..100).map(|i| format!("w{i}")).collect();
        assert_eq!(dropped, expected);
        assert_eq!(
            p.plan.dropped_workflows[99].reason,
            "depends on workflow \"w98\", which was dropped"
        );
    }

    #[test]
    fn nul_is_refused_in_every_syntax() {
        let expected =
            |pointer: &str| (pointer.to_string(), format!("string {}", text::NUL_REFUSAL));
        let r = lint(
            &[text(
                "yaml",
                "steps: [{name: a, image: x, commands: [\"ls\\0\"]}]",
            )],
            &ctx(&[]),
        );
        assert_eq!(messages(&r), [expected("/steps/0/commands/0")]);
        let r = lint(
            &[text(
                "json",
                "{\"steps\": [{\"name\": \"a\", \"image\": \"x\", \"commands\": [\"ls\\u0000\"]}]}",
            )],
            &ctx(&[]),
        );
        assert_eq!(messages(&r), [expected("/steps/0/commands/0")]);
        let value = Source {
            name: "pipeline".into(),
            content: SourceContent::Value(serde_json::json!(
                {"steps": [{"name": "a", "image": "x", "commands": ["ls\u{0}"]}]}
            )),
        };
        let r = lint(&[value], &ctx(&[]));
        assert_eq!(messages(&r), [expected("/steps/0/commands/0")]);
        // A raw NUL anywhere in the text, even in a comment.
        let r = lint(
            &[text(
                "raw",
                "steps: [{name: a, image: x, commands: [ls]}] # \0\n",
            )],
            &ctx(&[]),
        );
        assert_eq!(
            messages(&r),
            [("".to_string(), format!("the text {}", text::NUL_REFUSAL))]
        );
        assert_eq!((r.errors[0].line, r.errors[0].column), (Some(1), Some(48)));
    }
}
