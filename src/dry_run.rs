//! Dry run: the exact Kubernetes objects a submission would create, with the administrator's
//! policy applied and secret values redacted — whatever backend the server runs. Serves
//! `POST /render`, `piculet render`, and the [admission](crate::admission) of submissions to a
//! Kubernetes backend (the policy's and the API server's checks, also for `lint`). Every refusal is traced to the
//! place in the submission it comes from (config, JSON pointer, line and column).

use std::collections::BTreeMap;

use chrono::Utc;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::k8s::trace::Origin;
use crate::k8s::{KubernetesConfig, PolicyViolation, Refused, RenderInput, render_workflow};
use crate::pipeline::diagnostic::{MAX_PER_CONFIG, Pos, child, index};
use crate::pipeline::node::{Node, Value};
use crate::pipeline::{Conclusion, Diagnostic, Limits, Report, StepKind, WorkflowPlan, subst};
use crate::run::env::{EnvContext, workflow_env};
use crate::submission::{SUBMISSION, Submission};

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
    /// An object it renders to would be refused by the Kubernetes API server.
    Kubernetes(Vec<PolicyViolation>),
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
    // The clone step's CI_REPO_*/CI_COMMIT_* come from `repo`, as in a run.
    let run = submission.run();
    let mut workflows = Vec::new();
    let mut violations = Vec::new();
    let mut invalid = Vec::new();
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
                pipeline_status: Conclusion::Success,
                run: &run,
            },
            plan,
        );
        let input = RenderInput {
            pipeline_id,
            workflow_id,
            step_ids: BTreeMap::new(),
            attempt: 1,
            namespace: run.namespace.clone(),
            workflow: plan.clone(),
            secrets: secrets.clone(),
            registries: submission.registries.clone(),
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
            Err(Refused::Policy(refused)) => {
                violations.extend(located(submission, limits, plan, refused));
            }
            Err(Refused::Invalid(refused)) => {
                invalid.extend(located(submission, limits, plan, refused));
            }
        }
    }
    if !violations.is_empty() {
        return Err(Refusal::Policy(violations));
    }
    if !invalid.is_empty() {
        return Err(Refusal::Kubernetes(invalid));
    }
    Ok(Rendered {
        workflows,
        warnings: planned.warnings,
    })
}

/// The first [`MAX_PER_CONFIG`] refusals of one workflow with their places, and how many more
/// there are. Placing one costs up to the size of the config, so placing every one of the
/// thousands a large config can draw (one per variable, per volume) would cost its square; and
/// the answer stays short, as for the config's own errors.
fn located(
    submission: &Submission,
    limits: &Limits,
    plan: &WorkflowPlan,
    refused: Vec<PolicyViolation>,
) -> Vec<PolicyViolation> {
    let left_out = refused.len().saturating_sub(MAX_PER_CONFIG);
    let mut places = Places::new(submission, limits, plan);
    let mut shown: Vec<PolicyViolation> = refused
        .into_iter()
        .take(MAX_PER_CONFIG)
        .map(|v| places.locate(v))
        .collect();
    if left_out > 0 {
        shown.push(PolicyViolation {
            message: format!(
                "{left_out} more refusals of workflow {:?} are not shown; fix the ones above first",
                plan.name
            ),
            config: Some(plan.name.clone()),
            ..Default::default()
        });
    }
    shown
}

/// A refusal as a lint error.
pub fn diagnostic(v: PolicyViolation) -> Diagnostic {
    Diagnostic {
        config: v.config.unwrap_or_else(|| SUBMISSION.to_string()),
        pointer: v.pointer.unwrap_or_default(),
        line: v.line,
        column: v.column,
        message: v.message,
    }
}

/// Where in the submission the refused values of one workflow were written. The config is
/// read again at most once, and only when something is refused.
struct Places<'a> {
    submission: &'a Submission,
    limits: &'a Limits,
    plan: &'a WorkflowPlan,
    workflow: Option<Option<Node>>,
    keys: Option<Option<Node>>,
}

impl<'a> Places<'a> {
    fn new(submission: &'a Submission, limits: &'a Limits, plan: &'a WorkflowPlan) -> Self {
        Places {
            submission,
            limits,
            plan,
            workflow: None,
            keys: None,
        }
    }

    /// Fills in where a refused value was written: the config, a JSON pointer, and line and
    /// column when the config was text. A value of the server's own settings (or of
    /// piculet's) has no place in the submission and gets none.
    fn locate(&mut self, mut v: PolicyViolation) -> PolicyViolation {
        // The policy's refusals name the step's key in their `field`.
        let origin = v.origin.clone().unwrap_or_else(|| {
            if v.step.is_empty() {
                Origin::Submission(v.field.clone())
            } else {
                Origin::Step(v.field.clone())
            }
        });
        let plan = self.plan;
        let found = match &origin {
            Origin::Submission(path) => {
                // The submission's own keys (a variable's name may hold dots), on its JSON.
                let submission = self.submission;
                let keys = self.keys.get_or_insert_with(|| {
                    serde_json::to_value(submission)
                        .ok()
                        .map(|v| Node::from_json(&v))
                });
                let (pointer, _) = walk_path(keys.as_ref(), "", path);
                Some((SUBMISSION.to_string(), pointer, Pos::NONE))
            }
            Origin::Step(path) => {
                let kind = plan
                    .services
                    .iter()
                    .chain(&plan.steps)
                    .find(|s| s.name == v.step)
                    .map(|s| s.kind);
                self.workflow().and_then(|root| match kind {
                    // The implicit clone step is the submission's `repo`.
                    Some(StepKind::Clone) if root.get("clone").is_none() => {
                        Some((SUBMISSION.to_string(), "/repo".to_string(), Pos::NONE))
                    }
                    Some(kind) => {
                        let (pointer, node) = step_node(root, kind, &v.step)?;
                        let (pointer, pos) = walk_path(Some(node), &pointer, path);
                        Some((plan.name.clone(), pointer, pos))
                    }
                    None => None,
                })
            }
            Origin::Workflow(path) => self.workflow().map(|root| {
                let (pointer, pos) = walk_path(Some(root), "", path);
                (plan.name.clone(), pointer, pos)
            }),
            Origin::Setting(_) | Origin::Piculet => None,
        };
        if let Some((config, pointer, pos)) = found {
            v.config = Some(config);
            v.pointer = Some(pointer);
            v.line = pos.line;
            v.column = pos.column;
        }
        v
    }

    fn workflow(&mut self) -> Option<&Node> {
        let (submission, limits, plan) = (self.submission, self.limits, self.plan);
        self.workflow
            .get_or_insert_with(|| workflow_tree(submission, limits, plan))
            .as_ref()
    }
}

/// The tree of the config a workflow was planned from, with its matrix element's and the
/// submission's variables substituted, as the planner read it. `None` if it cannot be read
/// again (it could, since it was planned).
fn workflow_tree(submission: &Submission, limits: &Limits, plan: &WorkflowPlan) -> Option<Node> {
    let mut node = match submission.configs.iter().find(|c| c.name == plan.name) {
        Some(c) => Node::parse(&c.content, limits.nesting_depth)
            .ok()
            .or_else(|| {
                serde_json::from_str::<serde_json::Value>(&c.content)
                    .ok()
                    .map(|v| Node::from_json(&v))
            })?,
        None => Node::from_json(submission.pipeline.as_ref()?),
    };
    subst::substitute_node(
        &mut node,
        &plan.matrix,
        &submission.variables,
        limits.string_length,
        limits.planned_bytes,
    );
    Some(node)
}

/// The node of a step or service by name, and its pointer: list form by `name`, map form by
/// key.
fn step_node<'a>(root: &'a Node, kind: StepKind, name: &str) -> Option<(String, &'a Node)> {
    let section = match kind {
        StepKind::Service => "services",
        StepKind::Clone => "clone",
        StepKind::Step | StepKind::Plugin => "steps",
    };
    let list = &root.get(section)?.value;
    let base = child("", section);
    match &list.value {
        Value::Seq(items) => items.iter().enumerate().find_map(|(i, item)| {
            let named = item.get("name").and_then(|e| e.value.scalar_text());
            (named.as_deref() == Some(name)).then(|| (index(&base, i), item))
        }),
        Value::Map(entries) => entries
            .iter()
            .find(|e| e.key == name)
            .map(|e| (child(&base, &e.key), &e.value)),
        _ => None,
    }
}

/// A path in the pipeline's notation (`backend_options.kubernetes.tolerations[0].effect`)
/// as a JSON pointer below `pointer`, walked down `node` as far as the tree goes (a key the
/// step left out is where it would be written). Keys may hold dots (`app.kubernetes.io/name`):
/// at each map the longest run of parts that is a key is taken.
fn walk_path(node: Option<&Node>, pointer: &str, path: &str) -> (String, Pos) {
    enum Part<'a> {
        Key(&'a str),
        Index(usize),
    }
    let mut parts = Vec::new();
    for segment in path.split('.') {
        let (key, mut rest) = segment
            .split_once('[')
            .map_or((segment, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            parts.push(Part::Key(key));
        }
        while let Some((i, after)) = rest.split_once(']') {
            if let Ok(i) = i.parse() {
                parts.push(Part::Index(i));
            }
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    let mut pointer = pointer.to_string();
    let mut pos = node.map_or(Pos::NONE, |n| n.pos);
    let mut node = node;
    let mut i = 0;
    while i < parts.len() {
        match &parts[i] {
            Part::Index(n) => {
                pointer = index(&pointer, *n);
                node = match node.map(|n| &n.value) {
                    Some(Value::Seq(items)) => items.get(*n),
                    _ => None,
                };
                i += 1;
            }
            Part::Key(_) => {
                // The run of keys up to the next index.
                let run: Vec<&str> = parts[i..]
                    .iter()
                    .map_while(|p| match p {
                        Part::Key(k) => Some(*k),
                        Part::Index(_) => None,
                    })
                    .collect();
                // Joined once, with where each part ends: trying every run length by joining
                // it anew costs the square of the parts, and a key may hold thousands of dots.
                let text = run.join(".");
                let mut ends = std::collections::HashMap::new();
                let mut end = 0;
                for (n, key) in run.iter().enumerate() {
                    end += key.len() + usize::from(n > 0);
                    ends.insert(end, n + 1);
                }
                // Of the map's keys, the one that covers the most parts.
                let found = node
                    .and_then(Node::as_map)
                    .into_iter()
                    .flatten()
                    .filter_map(|e| {
                        let n = *ends.get(&e.key.len())?;
                        text.starts_with(e.key.as_str()).then_some((n, e))
                    })
                    .fold(None, |best: Option<(usize, _)>, (n, e)| match best {
                        Some((most, _)) if most >= n => best,
                        _ => Some((n, e)),
                    });
                match found {
                    Some((n, e)) => {
                        pointer = child(&pointer, &e.key);
                        node = Some(&e.value);
                        i += n;
                    }
                    None => {
                        pointer = child(&pointer, &text);
                        node = None;
                        i += run.len();
                    }
                }
            }
        }
        if let Some(n) = node {
            pos = n.pos;
        }
    }
    (pointer, pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(yaml: &str) -> Node {
        Node::parse(yaml, 32).expect("yaml")
    }

    #[test]
    fn paths_become_pointers_with_places() {
        let root = tree(
            "steps:\n  - name: a\n    backend_options:\n      kubernetes:\n        labels:\n          app.kubernetes.io/name: x\n        tolerations:\n          - {key: k, effect: NoSchedule}\n",
        );
        let (pointer, node) = step_node(&root, StepKind::Step, "a").expect("step");
        assert_eq!(pointer, "/steps/0");
        let walk = |path: &str| walk_path(Some(node), &pointer, path);
        assert_eq!(
            walk("backend_options.kubernetes.labels.app.kubernetes.io/name"),
            (
                "/steps/0/backend_options/kubernetes/labels/app.kubernetes.io~1name".to_string(),
                Pos::at(6, 35)
            ),
            "a key with dots is taken whole"
        );
        assert_eq!(
            walk("backend_options.kubernetes.tolerations[0].effect"),
            (
                "/steps/0/backend_options/kubernetes/tolerations/0/effect".to_string(),
                Pos::at(8, 30)
            )
        );
        // A key the step left out: the pointer says where it would be, the place is the
        // nearest one written.
        assert_eq!(
            walk("backend_options.kubernetes.tolerations[0].tolerationSeconds"),
            (
                "/steps/0/backend_options/kubernetes/tolerations/0/tolerationSeconds".to_string(),
                Pos::at(8, 13)
            )
        );
        let map = tree("steps:\n  build:\n    image: x\n");
        assert_eq!(
            step_node(&map, StepKind::Step, "build").map(|(p, _)| p),
            Some("/steps/build".to_string())
        );
        assert!(step_node(&map, StepKind::Service, "build").is_none());
    }

    /// A step whose `environment` holds `names`, linted with the Kubernetes backend.
    fn lint_environment(names: impl Iterator<Item = String>) -> Report {
        let environment: serde_json::Map<String, serde_json::Value> =
            names.map(|n| (n, serde_json::json!("v"))).collect();
        let config = serde_json::json!({"steps": [
            {"name": "a", "image": "x", "commands": ["ls"], "environment": environment}
        ]});
        let submission: Submission = serde_json::from_value(serde_json::json!({
            "configs": [{"name": "ci", "content": config.to_string()}]
        }))
        .expect("submission");
        let kubernetes = KubernetesConfig::from_settings(&Default::default()).expect("settings");
        crate::admission::lint(
            &submission,
            &crate::admission::Rules {
                platform: "linux/amd64",
                limits: &Limits::default(),
                kubernetes: Some(&kubernetes),
            },
        )
    }

    /// Each run of dotted parts was joined anew for every length: a 64 KB key of dots took
    /// minutes to place.
    #[test]
    fn a_key_of_thousands_of_dots_is_placed_at_once() {
        let name = |n| format!("{}=", "a.".repeat(n));
        let report = crate::work::linear(32_000, |n| lint_environment(std::iter::once(name(n))));
        let name = name(32_000);
        assert_eq!(report.errors.len(), 1);
        assert_eq!(
            report.errors[0].pointer,
            format!("/steps/0/environment/{name}")
        );
    }

    /// Every refusal was placed, each at a cost of up to the config's size: thousands of
    /// refused variables took minutes, and made an answer as long.
    #[test]
    fn refusals_past_a_hundred_are_counted_not_placed() {
        // Thousands more than are shown: placing each would cost the square of their number.
        crate::work::linear(20_000, |n| {
            lint_environment((0..n).map(|i| format!("V{i}=")))
        });
        let report = lint_environment((0..MAX_PER_CONFIG + 50).map(|i| format!("V{i}=")));
        assert_eq!(report.errors.len(), MAX_PER_CONFIG + 1);
        assert!(
            report.errors[..MAX_PER_CONFIG]
                .iter()
                .all(|e| e.config == "ci" && e.pointer.starts_with("/steps/0/environment/V")),
            "{:#?}",
            report.errors
        );
        let last = &report.errors[MAX_PER_CONFIG];
        assert_eq!(
            (
                last.config.as_str(),
                last.pointer.as_str(),
                last.message.as_str()
            ),
            (
                "ci",
                "",
                "50 more refusals of workflow \"ci\" are not shown; fix the ones above first"
            )
        );
    }

    /// Each `dns` and `dns_search` entry was looked for among those before it in a list: a
    /// step naming 80000 took a minute of a request to be refused.
    #[test]
    fn thousands_of_dns_entries_are_refused_at_once() {
        let submission = |n: u32| -> Submission {
            let dns: Vec<String> = (0..n)
                .map(|i| std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string())
                .collect();
            let searches: Vec<String> = (0..n).map(|i| format!("d{i}.example.com")).collect();
            let config = serde_json::json!({"steps": [{
                "name": "a", "image": "x", "commands": ["ls"], "dns": dns, "dns_search": searches
            }]});
            serde_json::from_value(serde_json::json!({
                "configs": [{"name": "ci", "content": config.to_string()}]
            }))
            .expect("submission")
        };
        let kubernetes = KubernetesConfig::from_settings(&Default::default()).expect("settings");
        let refused = crate::work::linear(80_000, |n| {
            let submission = submission(n as u32);
            render(&submission, "linux/amd64", &Limits::default(), &kubernetes)
        });
        let Err(Refusal::Policy(refused)) = refused else {
            panic!("not refused by the policy");
        };
        let fields: Vec<&str> = refused.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["dns", "dns_search"]);
    }

    /// Every field the API server would refuse was traced, and tracing a variable looks
    /// through a plugin step's settings: 20000 refused variable names beside 20000 settings
    /// took two minutes of a request. Only those shown are traced now.
    #[test]
    fn thousands_of_refused_variables_are_refused_at_once() {
        let submission = |n: usize| -> Submission {
            let settings: serde_json::Map<String, serde_json::Value> = (0..n)
                .map(|i| (format!("s{i}"), serde_json::json!("v")))
                .collect();
            let variables: serde_json::Map<String, serde_json::Value> = (0..n)
                .map(|i| (format!("V{i}="), serde_json::json!("v")))
                .collect();
            let config = serde_json::json!({"skip_clone": true, "steps": [
                {"name": "a", "image": "x", "settings": settings}
            ]});
            serde_json::from_value(serde_json::json!({
                "configs": [{"name": "ci", "content": config.to_string()}],
                "variables": variables,
            }))
            .expect("submission")
        };
        let kubernetes = KubernetesConfig::from_settings(&Default::default()).expect("settings");
        let refused = crate::work::linear(20_000, |n| {
            let submission = submission(n);
            render(&submission, "linux/amd64", &Limits::default(), &kubernetes)
        });
        let Err(Refusal::Kubernetes(refused)) = refused else {
            panic!("not refused as the API server would");
        };
        assert_eq!(refused.len(), MAX_PER_CONFIG + 1);
        assert!(
            refused[..MAX_PER_CONFIG].iter().all(|v| v
                .pointer
                .as_deref()
                .is_some_and(|p| p.starts_with("/variables/V"))),
            "{:#?}",
            &refused[..3]
        );
    }
}
