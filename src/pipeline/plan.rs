//! The public entry points: `lint` and `plan`. Planning turns a submission (its configs and
//! context) into workflows — one per config and matrix element — each with its services and a
//! DAG of steps, after dropping what `when` excludes. The `Plan` is stored as JSON and read back
//! by the engine, so it is plain data.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::diagnostic::{Diagnostic, Pos, Report, Sink};
use super::duration;
use super::matrix;
use super::model::*;
use super::node::{Node, ParseError};
use super::subst;
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
}

impl Default for Context {
    fn default() -> Self {
        Context {
            variables: BTreeMap::new(),
            secret_names: BTreeSet::new(),
            check_secrets: true,
            platform: "linux/amd64".to_string(),
            repo: None,
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
    pub runs_on: Vec<Status>,
    pub services: Vec<StepSpec>,
    /// In order; clone step(s) first.
    pub steps: Vec<StepSpec>,
    /// Steps and services dropped by `when`, to be shown as `skipped`.
    pub dropped_steps: Vec<DroppedStep>,
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
    pub when_status: Vec<Status>,
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
            when_status: vec![Status::Success],
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
}

fn parse_source(source: &Source) -> Result<Node, ParseError> {
    match &source.content {
        SourceContent::Value(v) => Ok(Node::from_json(v)),
        SourceContent::Text(text) => Node::parse(text).or_else(|yaml_err| {
            // JSON is YAML, but not every JSON text is valid YAML (tabs for indentation); take
            // serde_json's word for text that is meant to be JSON.
            if !text.trim_start().starts_with(['{', '[']) {
                return Err(yaml_err);
            }
            serde_json::from_str::<serde_json::Value>(text)
                .map(|v| Node::from_json(&v))
                .map_err(|e| ParseError {
                    message: format!("invalid JSON: {e}"),
                    pos: Pos::at(
                        u32::try_from(e.line()).unwrap_or(u32::MAX),
                        u32::try_from(e.column()).unwrap_or(u32::MAX),
                    ),
                })
        }),
    }
}

fn run(sources: &[Source], ctx: &Context) -> (Plan, Report) {
    let mut sinks: Vec<Sink> = sources.iter().map(|s| Sink::new(&s.name)).collect();
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut plan = Plan::default();

    let mut names_seen: BTreeSet<&str> = BTreeSet::new();
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

    for (i, source) in sources.iter().enumerate() {
        let sink = &mut sinks[i];
        let node = match parse_source(source) {
            Ok(n) => n,
            Err(e) => {
                sink.error("", e.pos, e.message);
                continue;
            }
        };
        let elements = matrix::expand(node.get("matrix").map(|e| &e.value), sink);
        for element in elements {
            let mut node = node.clone();
            subst::substitute_node(&mut node, &element, &ctx.variables);
            let Some(model) = (Reader { sink: &mut *sink }).workflow(&node) else {
                break;
            };
            validate::check_workflow(&model, sink);
            match plan_workflow(&source.name, &element, model, ctx, sink) {
                Ok((wp, deps)) => candidates.push(Candidate {
                    source: i,
                    plan: wp,
                    deps,
                }),
                Err(dropped) => plan.dropped_workflows.push(dropped),
            }
        }
    }

    resolve_workflow_dependencies(sources, &mut candidates, &mut plan, &mut sinks);
    plan.workflows = candidates.into_iter().map(|c| c.plan).collect();

    let mut report = Report::default();
    for sink in sinks {
        let (e, w) = sink.into_parts();
        report.errors.extend(e);
        report.warnings.extend(w);
    }
    (plan, report)
}

/// Workflow `depends_on`: an absent or dropped required dependency drops the workflow (and,
/// in turn, those depending on it), as Woodpecker does; optional ones are ignored; cycles are
/// errors.
fn resolve_workflow_dependencies(
    sources: &[Source],
    candidates: &mut Vec<Candidate>,
    plan: &mut Plan,
    sinks: &mut [Sink],
) {
    let declared: BTreeSet<&str> = sources.iter().map(|s| s.name.as_str()).collect();
    loop {
        let alive: BTreeSet<String> = candidates.iter().map(|c| c.plan.name.clone()).collect();
        let Some((at, reason)) = candidates.iter().enumerate().find_map(|(i, c)| {
            let d = c
                .deps
                .iter()
                .find(|d| !d.optional && !alive.contains(&d.name))?;
            let sink = &mut sinks[c.source];
            let reason = if declared.contains(d.name.as_str()) {
                format!("depends on workflow \"{}\", which was dropped", d.name)
            } else {
                sink.warn(
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
            Some((i, reason))
        }) else {
            break;
        };
        let c = candidates.remove(at);
        plan.dropped_workflows.push(DroppedWorkflow {
            name: c.plan.name,
            matrix: c.plan.matrix,
            reason,
        });
    }
    let alive: BTreeSet<String> = candidates.iter().map(|c| c.plan.name.clone()).collect();
    for c in candidates.iter_mut() {
        let mut names: Vec<String> = c
            .deps
            .iter()
            .filter(|d| alive.contains(&d.name))
            .map(|d| d.name.clone())
            .collect();
        names.dedup();
        c.plan.depends_on = names;
    }

    // Cycles between workflows (by name; matrix elements share theirs).
    let mut graph: Vec<(&str, Vec<&str>)> = Vec::new();
    for c in candidates.iter() {
        if graph.iter().any(|(n, _)| *n == c.plan.name) {
            continue;
        }
        graph.push((
            &c.plan.name,
            c.plan.depends_on.iter().map(String::as_str).collect(),
        ));
    }
    for cycle in validate::find_cycles(&graph) {
        if let Some(c) = candidates
            .iter()
            .find(|c| cycle.first() == Some(&c.plan.name))
        {
            let pos = c.deps.first().map(|d| d.pos).unwrap_or_default();
            sinks[c.source].error(
                "/depends_on",
                pos,
                format!("dependency cycle: {}", cycle.join(" -> ")),
            );
        }
    }
}

/// Plans one workflow element, or drops it when its `when` is not met.
fn plan_workflow(
    name: &str,
    element: &BTreeMap<String, String>,
    w: WorkflowModel,
    ctx: &Context,
    sink: &mut Sink,
) -> Result<(WorkflowPlan, Vec<Dependency>), DroppedWorkflow> {
    let platform = w
        .labels
        .get("platform")
        .cloned()
        .unwrap_or_else(|| ctx.platform.clone());
    let facts = Facts {
        vars: &ctx.variables,
        platform: &platform,
        matrix: element,
    };
    if let Outcome::Skip(reason) = when::evaluate(&w.when, &facts, false, sink) {
        return Err(DroppedWorkflow {
            name: name.to_string(),
            matrix: element.clone(),
            reason,
        });
    }

    let mut dropped_steps = Vec::new();
    let mut keep = |s: StepModel, sink: &mut Sink| -> Option<(StepModel, Vec<Status>)> {
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

    let dag = w.steps.iter().any(|s| s.depends_on.is_some());
    let mut kept: Vec<(StepModel, Vec<Status>)> = Vec::new();
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

    Ok((
        WorkflowPlan {
            name: name.to_string(),
            matrix: element.clone(),
            platform,
            workspace: w.workspace,
            labels: w.labels,
            depends_on: Vec::new(),
            runs_on: w.runs_on,
            services,
            steps,
            dropped_steps,
        },
        w.depends_on,
    ))
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
        Section::Step if s.settings.is_some() => StepKind::Plugin,
        Section::Step => StepKind::Step,
    }
}

fn spec(s: StepModel, when_status: Vec<Status>) -> StepSpec {
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
        assert_eq!(w.runs_on, [Status::Success]);
        assert_eq!(w.platform, "linux/amd64");
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
            [Status::Success, Status::Failure]
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
            [Status::Success, Status::Failure]
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
}
