//! The entry point: a planned workflow and the administrator's configuration in, the exact
//! Kubernetes objects piculet will create out — or every policy violation, or else every field
//! of those objects the API server's validation would refuse ([`super::validation`], traced to
//! the submission by [`super::trace`]; owner references, filled in at creation, are the one
//! part left to the API server). Pure and
//! deterministic: the same input renders the same objects, byte for byte, so `POST /render`
//! shows what a run creates, and an adopting replica finds the objects by name.
//!
//! Creation order: the workspace PVC (the anchor), the Secrets, the headless Service, then the
//! pods — services first, then steps in plan order.
//!
//! **Owner reference.** Every object but the PVC names the workspace PVC as its controlling
//! owner, so deleting the PVC garbage-collects the whole workflow. The PVC is the anchor
//! because it is created first (every other object can carry the reference from its creation:
//! no PATCH, no moment without an owner) and it lives exactly as long as the workflow. The
//! owner's `uid` is only known once the PVC exists: rendering leaves it empty — which the API
//! server refuses, so an object cannot be created with a wrong owner by mistake — and
//! [`RenderedWorkflow::set_owner_uid`] fills it in. Delete the PVC with
//! `propagationPolicy: Foreground`: the PVC carries the `kubernetes.io/pvc-protection`
//! finalizer and stays while pods use it, and with background propagation the garbage
//! collector would wait for it rather than delete those pods.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use uuid::Uuid;

use super::labels;
use super::names::{self, WorkflowNames};
use super::policy::{PolicyViolation, Violations, allow_by_regex};
use super::settings::KubernetesConfig;
use super::trace::{self, Object, Origin};
use super::validation;
use super::{pod, secret, service, volume};
use crate::pipeline::diagnostic::MAX_PER_CONFIG;
use crate::pipeline::{StepKind, StepSpec, WorkflowPlan};
use crate::run::RegistryCredential;

/// Everything a workflow's objects are rendered from.
#[derive(Clone)]
pub struct RenderInput {
    pub pipeline_id: Uuid,
    pub workflow_id: Uuid,
    /// The id of each step and service, by name. A name without an id (a dry-run before the
    /// pipeline is stored) is labelled with the nil UUID.
    pub step_ids: BTreeMap<String, Uuid>,
    /// The attempt of this workflow's steps (1 for the first run); part of every pod name.
    pub attempt: u32,
    /// The namespace the submission asks for; allowed by
    /// `PICULET_K8S_NAMESPACE_OVERWRITE_ALLOWED`, else the configured one is used.
    pub namespace: Option<String>,
    pub workflow: WorkflowPlan,
    /// The submission's secret values by name; only those the workflow uses are rendered.
    pub secrets: BTreeMap<String, String>,
    pub registries: Vec<RegistryCredential>,
    /// Built-in variables every step and service gets (`CI_*`, from the engine); they take
    /// precedence over a step's `environment`.
    pub environment: BTreeMap<String, String>,
    /// Show `<redacted>` instead of secret values (dry-run). Pod specs never hold secret
    /// values either way: they reference the Secret.
    pub redact_secrets: bool,
}

/// Written out whole but for the secret values, so that no debug line or panic message can
/// hold one: their names only.
impl std::fmt::Debug for RenderInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenderInput")
            .field("pipeline_id", &self.pipeline_id)
            .field("workflow_id", &self.workflow_id)
            .field("step_ids", &self.step_ids)
            .field("attempt", &self.attempt)
            .field("namespace", &self.namespace)
            .field("workflow", &self.workflow)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("registries", &self.registries)
            .field("environment", &self.environment)
            .field("redact_secrets", &self.redact_secrets)
            .finish()
    }
}

/// A step's or service's pod.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedPod {
    /// The step or service name, as in the plan.
    pub step: String,
    pub kind: StepKind,
    pub pod: Pod,
}

/// The objects of one workflow, in creation order.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedWorkflow {
    pub namespace: String,
    /// The anchor: owner of every other object.
    pub workspace: PersistentVolumeClaim,
    /// The Secret of secret values (when any step uses one), then the registry pull Secret
    /// (when the submission carries registry credentials).
    pub secrets: Vec<Secret>,
    /// Headless; every pod's `subdomain`.
    pub service: Service,
    /// Services first, then steps in plan order.
    pub pods: Vec<RenderedPod>,
    /// The administrator's pull policies, tried in order when a pull fails; the first (or
    /// `Always` for a `pull: true` step) is rendered. Empty: the cluster's default.
    pub pull_policies: Vec<String>,
    /// Whether the workspace is ReadWriteOnce: then every pod must run on the node of the
    /// first one (see [`pod::pin_to_node`]).
    pub read_write_once: bool,
}

impl RenderedWorkflow {
    /// Sets the workspace PVC's `uid` in every owner reference, once the PVC is created.
    pub fn set_owner_uid(&mut self, uid: &str) {
        let set = |refs: &mut Option<Vec<OwnerReference>>| {
            for r in refs.iter_mut().flatten() {
                r.uid = uid.to_string();
            }
        };
        for s in &mut self.secrets {
            set(&mut s.metadata.owner_references);
        }
        set(&mut self.service.metadata.owner_references);
        for p in &mut self.pods {
            set(&mut p.pod.metadata.owner_references);
        }
    }

    /// The pod of a step or service, by name.
    pub fn pod(&self, step: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.step == step).map(|p| &p.pod)
    }

    /// Every object exactly as it is sent to the API server (with `apiVersion` and `kind`),
    /// in creation order.
    pub fn to_list(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut push = |v: Result<serde_json::Value, serde_json::Error>| {
            // k8s-openapi types always serialize; an error here would be a bug in that crate.
            if let Ok(v) = v {
                out.push(v);
            }
        };
        push(serde_json::to_value(&self.workspace));
        for s in &self.secrets {
            push(serde_json::to_value(s));
        }
        push(serde_json::to_value(&self.service));
        for p in &self.pods {
            push(serde_json::to_value(&p.pod));
        }
        out
    }
}

/// What every part of the rendering needs to know about the workflow.
pub(crate) struct Ctx<'a> {
    pub config: &'a KubernetesConfig,
    pub input: &'a RenderInput,
    pub names: WorkflowNames,
    pub namespace: String,
    /// Labels of every object.
    pub labels: BTreeMap<String, String>,
    pub owner: OwnerReference,
    /// Key in the workflow Secret of each secret used, by secret name.
    pub secret_keys: BTreeMap<String, String>,
    pub has_registry_secret: bool,
}

impl Ctx<'_> {
    pub fn metadata(
        &self,
        name: &str,
    ) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels.clone()),
            owner_references: Some(vec![self.owner.clone()]),
            ..Default::default()
        }
    }
}

/// Why a workflow is not rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// It asks for what the administrator's policy (or piculet) does not allow; every
    /// violation found.
    Policy(Vec<PolicyViolation>),
    /// An object it renders to would be refused by the Kubernetes API server (see
    /// [`super::validation`]): every field, traced to where it came from. Checked once the
    /// policy allows the workflow, on the objects exactly as they would be sent.
    Invalid(Vec<PolicyViolation>),
}

impl Refused {
    pub fn violations(&self) -> &[PolicyViolation] {
        match self {
            Refused::Policy(v) | Refused::Invalid(v) => v,
        }
    }
}

/// Renders one workflow, or refuses it with every policy violation found, or else with every
/// field the API server would refuse.
pub fn render_workflow(
    config: &KubernetesConfig,
    input: &RenderInput,
) -> Result<RenderedWorkflow, Refused> {
    let mut v = Violations::default();

    let namespace = match &input.namespace {
        Some(ns) if ns != &config.namespace => {
            let allowed = allow_by_regex(
                config.namespace_overwrite_allowed.as_ref(),
                "namespace_overwrite_allowed",
                None,
                config,
                &mut v,
                "",
                "namespace",
                ns,
            );
            if allowed && !names::is_dns_label(ns) {
                v.push(
                    "",
                    "namespace",
                    ns,
                    super::policy::RULE_KUBERNETES,
                    "is not a namespace name: use lowercase letters, digits and '-', at most 63 characters",
                );
            }
            ns.clone()
        }
        _ => config.namespace.clone(),
    };

    let names = WorkflowNames::new(&input.workflow_id);
    let all_steps: Vec<&StepSpec> = input
        .workflow
        .services
        .iter()
        .chain(&input.workflow.steps)
        .collect();
    let secret_keys = secret::keys_used(&all_steps, &input.secrets, &mut v);

    let ctx = Ctx {
        config,
        input,
        namespace,
        labels: labels::workflow_labels(&input.pipeline_id, &input.workflow_id),
        owner: OwnerReference {
            api_version: "v1".to_string(),
            kind: "PersistentVolumeClaim".to_string(),
            name: names.workspace.clone(),
            uid: String::new(),
            controller: Some(true),
            block_owner_deletion: None,
        },
        names,
        secret_keys,
        has_registry_secret: !input.registries.is_empty(),
    };

    let workspace = volume::workspace_claim(&ctx);
    let mut secrets = Vec::new();
    if let Some(s) = secret::values_secret(&ctx) {
        secrets.push(s);
    }
    if let Some(s) = secret::registry_secret(&ctx) {
        secrets.push(s);
    }
    let service = service::headless_service(&ctx);
    let mut hostnames: BTreeMap<String, String> = BTreeMap::new();
    let mut pods = Vec::new();
    for step in &all_steps {
        let p = pod::render_pod(&ctx, step, &mut v);
        // Two names with the same hostname would resolve to either pod.
        let host = p
            .spec
            .as_ref()
            .and_then(|s| s.hostname.clone())
            .unwrap_or_default();
        if let Some(other) = hostnames.insert(host.clone(), step.name.clone()) {
            v.push(
                &step.name,
                "name",
                &step.name,
                super::policy::RULE_KUBERNETES,
                &format!("has the same hostname \"{host}\" as \"{other}\"; rename one of them"),
            );
        }
        pods.push(RenderedPod {
            step: step.name.clone(),
            kind: step.kind,
            pod: p,
        });
    }

    if !v.is_empty() {
        return Err(Refused::Policy(v.0));
    }
    let invalid = api_server_refusals(&ctx, &all_steps, &workspace, &secrets, &service, &pods);
    if !invalid.is_empty() {
        return Err(Refused::Invalid(invalid));
    }
    Ok(RenderedWorkflow {
        namespace: ctx.namespace.clone(),
        workspace,
        secrets,
        service,
        pods,
        pull_policies: config.pull_policies.clone(),
        read_write_once: !config.storage_rwx,
    })
}

/// Every field of the workflow's objects the API server would refuse, each traced to where it
/// came from and said in the API server's words.
fn api_server_refusals(
    ctx: &Ctx,
    steps: &[&StepSpec],
    workspace: &PersistentVolumeClaim,
    secrets: &[Secret],
    service: &Service,
    pods: &[RenderedPod],
) -> Vec<PolicyViolation> {
    let mut out = Vec::new();
    let name = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        meta.name.clone().unwrap_or_default()
    };
    let mut others: Vec<(Object, String, Vec<validation::FieldError>)> = vec![(
        Object::Claim,
        format!("the workspace claim \"{}\"", name(&workspace.metadata)),
        validation::claim(workspace),
    )];
    for s in secrets {
        let object = if s.metadata.name.as_deref() == Some(ctx.names.registry_secret.as_str()) {
            Object::RegistrySecret
        } else {
            Object::ValuesSecret
        };
        others.push((
            object,
            format!("the Secret \"{}\"", name(&s.metadata)),
            validation::secret(s),
        ));
    }
    others.push((
        Object::Service,
        format!("the Service \"{}\"", name(&service.metadata)),
        validation::service(service),
    ));
    // Tracing a field may look through the step's keys, so only as many are traced as are
    // shown (the dry run shows this many per workflow and counts the rest): tracing each of
    // thousands of refused variables cost the square of their number.
    let traced = |out: &Vec<PolicyViolation>| out.len() < MAX_PER_CONFIG;
    for (object, what, errors) in others {
        for e in errors {
            let origin = traced(&out).then(|| trace::object_field(ctx, object, &e));
            out.push(refusal("", &what, &e, origin));
        }
    }
    for p in pods {
        let Some(step) = steps.iter().find(|s| s.name == p.step && s.kind == p.kind) else {
            continue;
        };
        let what = format!("its pod \"{}\"", name(&p.pod.metadata));
        for e in validation::pod(&p.pod) {
            let origin = traced(&out).then(|| trace::pod_field(ctx, step, &p.pod, &e));
            out.push(refusal(&p.step, &what, &e, origin));
        }
    }
    out
}

/// A field the API server would refuse, with what to change where it was traced.
fn refusal(
    step: &str,
    what: &str,
    e: &validation::FieldError,
    origin: Option<Origin>,
) -> PolicyViolation {
    let who = if step.is_empty() {
        String::new()
    } else {
        format!("step {}: ", super::policy::quote(step))
    };
    let change = match &origin {
        Some(Origin::Step(f) | Origin::Workflow(f)) => format!("; change {f}"),
        Some(Origin::Submission(f)) => format!("; change the submission's {f}"),
        Some(Origin::Setting(s)) => {
            format!("; the value comes from the server's setting {s}: ask the administrator")
        }
        Some(Origin::Piculet) => "; piculet made this value: please report it".to_string(),
        None => String::new(),
    };
    PolicyViolation {
        step: step.to_string(),
        field: e.field.clone(),
        value: e.value.clone(),
        rule: e.rule(),
        message: format!(
            "{who}the Kubernetes API server would refuse {what}: {}: {}{change}",
            e.field,
            e.message()
        ),
        origin,
        ..Default::default()
    }
}
