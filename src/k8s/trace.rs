//! Where a field of a rendered object came from: a key of the step, of the workflow file, of
//! the submission, an administrator's setting, or piculet itself. A field the API server would
//! refuse (see [`super::validation`]) is traced back this way, so the refusal points at what the
//! user wrote. Tracing matches the rendered values against the step's own, so the renderer
//! keeps no bookkeeping of its own.

use k8s_openapi::api::core::v1::Pod;

use super::labels;
use super::names;
use super::pod::plugin_variable;
use super::render::Ctx;
use super::settings::env_name;
use super::validation::FieldError;
use crate::pipeline::{self, EnvValue, SecretTarget, StepKind, StepSpec};

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A key of the step or service, in the pipeline's notation:
    /// `backend_options.kubernetes.tolerations[0].effect`.
    Step(String),
    /// A key of the workflow file: `workspace.base`, `labels.platform`, `matrix.GO`.
    Workflow(String),
    /// A key of the submission: `variables.NAME`, `namespace`, `secrets`, `repo`.
    Submission(String),
    /// An administrator's setting: `PICULET_K8S_TOLERATIONS`.
    Setting(String),
    /// piculet itself (object names, its own labels): a fault of piculet's.
    Piculet,
}

const OPTIONS: &str = "backend_options.kubernetes";

/// What follows `prefix` in `field`, if `field` starts with it at a boundary.
fn after<'a>(field: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = field.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with(['.', '['])).then_some(rest)
}

/// `[3].effect` → (3, ".effect").
fn index(rest: &str) -> Option<(usize, &str)> {
    let rest = rest.strip_prefix('[')?;
    let (i, rest) = rest.split_once(']')?;
    Some((i.parse().ok()?, rest))
}

fn setting(name: &str) -> Origin {
    Origin::Setting(env_name(name))
}

fn namespace(ctx: &Ctx) -> Origin {
    match ctx.input.namespace {
        Some(_) => Origin::Submission("namespace".into()),
        None => setting("namespace"),
    }
}

/// The origin of a field of a step's or service's pod.
pub(crate) fn pod_field(ctx: &Ctx, step: &StepSpec, pod: &Pod, e: &FieldError) -> Origin {
    metadata_field(ctx, step, e)
        .or_else(|| container_field(ctx, step, pod, e))
        .or_else(|| pod_spec_field(ctx, step, pod, e))
        .unwrap_or(Origin::Piculet)
}

/// The origin of a field of the pod's metadata.
fn metadata_field(ctx: &Ctx, step: &StepSpec, e: &FieldError) -> Option<Origin> {
    let opts = &step.backend_options;
    let key = e.key.as_deref().unwrap_or_default();
    let f = e.field.as_str();
    if after(f, "metadata.labels").is_some() {
        return Some(if opts.labels.contains_key(key) {
            Origin::Step(format!("{OPTIONS}.labels.{key}"))
        } else if ctx.config.pod_labels.contains_key(key) {
            setting("pod_labels")
        } else {
            Origin::Piculet
        });
    }
    if after(f, "metadata.annotations").is_some() {
        return Some(match e.key.as_deref() {
            Some(k) if opts.annotations.contains_key(k) => {
                Origin::Step(format!("{OPTIONS}.annotations.{k}"))
            }
            Some(k) if ctx.config.pod_annotations.contains_key(k) => setting("pod_annotations"),
            Some(labels::STEP_NAME_ANNOTATION) => Origin::Step("name".into()),
            Some(labels::PULL_POLICIES_ANNOTATION) => setting("pull_policy"),
            Some(_) => Origin::Piculet,
            // The total size: the step's own annotations, else its name (an annotation too).
            None if !opts.annotations.is_empty() => Origin::Step(format!("{OPTIONS}.annotations")),
            None if !ctx.config.pod_annotations.is_empty() => setting("pod_annotations"),
            None => Origin::Step("name".into()),
        });
    }
    if after(f, "metadata.namespace").is_some() {
        return Some(namespace(ctx));
    }
    None
}

/// The origin of a field of the pod's container.
fn container_field(ctx: &Ctx, step: &StepSpec, pod: &Pod, e: &FieldError) -> Option<Origin> {
    let opts = &step.backend_options;
    let key = e.key.as_deref().unwrap_or_default();
    let f = e.field.as_str();
    let spec = pod.spec.as_ref();
    let container = spec.and_then(|s| s.containers.first());
    if after(f, "spec.containers[0].securityContext").is_some() {
        let own = opts
            .security_context
            .as_ref()
            .is_some_and(|s| s.privileged.is_some() || s.allow_privilege_escalation.is_some());
        return Some(if own {
            Origin::Step(format!("{OPTIONS}.securityContext"))
        } else {
            Origin::Step("privileged".into())
        });
    }
    if let Some((i, rest)) = after(f, "spec.containers[0].env").and_then(index) {
        let name = container
            .and_then(|c| c.env.as_ref())
            .and_then(|env| env.get(i))
            .map(|v| v.name.as_str())
            .unwrap_or_default();
        return Some(env_var(ctx, step, name, rest));
    }
    if let Some(rest) = after(f, "spec.containers[0].volumeMounts") {
        let mounts = container
            .and_then(|c| c.volume_mounts.as_deref())
            .unwrap_or_default();
        let mount = match index(rest) {
            Some((i, _)) => mounts.get(i),
            // `volumeMounts.subPath`: the API server names no mount; the value tells which.
            None => mounts
                .iter()
                .find(|m| m.sub_path.as_deref() == Some(e.value.as_str())),
        };
        let sub_path = rest.ends_with("subPath");
        return Some(mount.map_or(Origin::Piculet, |m| volume(ctx, &m.name, sub_path)));
    }
    for which in ["requests", "limits"] {
        if after(f, &format!("spec.containers[0].resources.{which}")).is_some() {
            let asked = match which {
                "requests" => &opts.resources.requests,
                _ => &opts.resources.limits,
            };
            return Some(if asked.contains_key(key) {
                Origin::Step(format!("{OPTIONS}.resources.{which}.{key}"))
            } else {
                let class = super::resources::class_prefix(step.kind);
                let kind = &which[..which.len() - 1];
                setting(&format!("{class}{}_{kind}", key.replace('-', "_")))
            });
        }
    }
    if after(f, "spec.containers[0].image").is_some() {
        return Some(
            if step.kind == StepKind::Clone && step.image == pipeline::DEFAULT_CLONE_IMAGE {
                setting("clone_image")
            } else {
                Origin::Step("image".into())
            },
        );
    }
    if let Some((i, _)) = after(f, "spec.containers[0].ports").and_then(index) {
        return Some(Origin::Step(format!("ports[{i}]")));
    }
    if after(f, "spec.containers[0].imagePullPolicy").is_some() {
        return Some(if step.pull {
            Origin::Step("pull".into())
        } else {
            setting("pull_policy")
        });
    }
    None
}

/// The origin of a field of the pod's spec outside its container.
fn pod_spec_field(ctx: &Ctx, step: &StepSpec, pod: &Pod, e: &FieldError) -> Option<Origin> {
    let opts = &step.backend_options;
    let key = e.key.as_deref().unwrap_or_default();
    let f = e.field.as_str();
    let spec = pod.spec.as_ref();
    if after(f, "spec.nodeSelector").is_some() {
        return Some(if opts.node_selector.contains_key(key) {
            Origin::Step(format!("{OPTIONS}.nodeSelector.{key}"))
        } else if key == "kubernetes.io/arch" {
            Origin::Workflow("labels.platform".into())
        } else {
            setting("node_selector")
        });
    }
    if let Some((i, rest)) = after(f, "spec.tolerations").and_then(index) {
        let admin = ctx.config.tolerations.len();
        return Some(if i < admin {
            setting("tolerations")
        } else {
            Origin::Step(format!("{OPTIONS}.tolerations[{}]{rest}", i - admin))
        });
    }
    if let Some(rest) = after(f, "spec.affinity") {
        return Some(Origin::Step(format!("{OPTIONS}.affinity{rest}")));
    }
    if let Some(rest) = after(f, "spec.securityContext") {
        return Some(pod_security_context(step, rest));
    }
    if let Some((i, rest)) = after(f, "spec.volumes").and_then(index) {
        let name = spec
            .and_then(|s| s.volumes.as_ref())
            .and_then(|v| v.get(i))
            .map(|v| v.name.as_str())
            .unwrap_or_default();
        return Some(volume(ctx, name, rest.contains(".items")));
    }
    if let Some(rest) = after(f, "spec.dnsConfig") {
        return Some(dns(ctx, step, rest, &e.value));
    }
    if after(f, "spec.dnsPolicy").is_some() {
        return Some(setting("dns_policy"));
    }
    if let Some((i, _)) = after(f, "spec.hostAliases").and_then(index) {
        return Some(Origin::Step(format!("extra_hosts[{i}]")));
    }
    if after(f, "spec.hostname").is_some() {
        return Some(Origin::Step("name".into()));
    }
    if after(f, "spec.serviceAccountName").is_some() {
        return Some(match opts.service_account_name {
            Some(_) => Origin::Step(format!("{OPTIONS}.serviceAccountName")),
            None => setting("service_account"),
        });
    }
    if after(f, "spec.runtimeClassName").is_some() {
        return Some(match opts.runtime_class_name {
            Some(_) => Origin::Step(format!("{OPTIONS}.runtimeClassName")),
            None => setting("runtime_class"),
        });
    }
    if after(f, "spec.priorityClassName").is_some() {
        return Some(setting("priority_class"));
    }
    if after(f, "spec.activeDeadlineSeconds").is_some() {
        return Some(Origin::Step("timeout".into()));
    }
    None
}

/// `spec.securityContext…`: the step's `securityContext` where it set the field, else the
/// administrator's ids or piculet's defaults.
fn pod_security_context(step: &StepSpec, rest: &str) -> Origin {
    let own = serde_json::to_value(&step.backend_options.security_context).unwrap_or_default();
    let field = rest.trim_start_matches('.');
    let (name, tail) = field.split_once('.').unwrap_or((field, ""));
    // The pod's `appArmorProfile` is the step's `apparmorProfile`, as Woodpecker spells it.
    let theirs = if name == "appArmorProfile" {
        "apparmorProfile"
    } else {
        name
    };
    if own.get(theirs).is_some_and(|v| !v.is_null()) {
        let tail = if tail.is_empty() {
            String::new()
        } else {
            format!(".{tail}")
        };
        return Origin::Step(format!("{OPTIONS}.securityContext.{theirs}{tail}"));
    }
    match name {
        "runAsUser" => setting("run_as_user"),
        "runAsGroup" => setting("run_as_group"),
        _ => Origin::Piculet,
    }
}

/// A variable of the pod: the step's `environment`, a Secret reference, a plugin setting, a
/// variable of the submission or an axis of the matrix.
fn env_var(ctx: &Ctx, step: &StepSpec, name: &str, rest: &str) -> Origin {
    let opts = &step.backend_options;
    for (j, s) in opts.secrets.iter().enumerate() {
        if matches!(&s.target, SecretTarget::Env(var) if var == name) {
            let part = if rest.ends_with(".key") {
                "key"
            } else if rest.ends_with(".name") && rest.contains("valueFrom") {
                "name"
            } else {
                "target.env"
            };
            return Origin::Step(format!("{OPTIONS}.secrets[{j}].{part}"));
        }
    }
    if let Some(value) = step.environment.get(name) {
        return match (value, rest.contains("valueFrom")) {
            (EnvValue::FromSecret(_), true) => Origin::Submission("secrets".into()),
            _ => Origin::Step(format!("environment.{name}")),
        };
    }
    if let Some(key) = step.settings.keys().find(|k| plugin_variable(k) == name) {
        return Origin::Step(format!("settings.{key}"));
    }
    if ctx.input.workflow.matrix.contains_key(name) {
        return Origin::Workflow(format!("matrix.{name}"));
    }
    if ctx.input.environment.contains_key(name) {
        return Origin::Submission(format!("variables.{name}"));
    }
    Origin::Piculet
}

/// A volume of the pod, by its name: the workspace, a step's claim or Secret file, or the
/// administrator's.
fn volume(ctx: &Ctx, name: &str, secret_key: bool) -> Origin {
    if name == names::WORKSPACE_VOLUME {
        return Origin::Workflow("workspace.base".into());
    }
    if let Some(j) = name.strip_prefix("claim-") {
        return Origin::Step(format!("volumes[{j}]"));
    }
    if let Some(j) = name.strip_prefix("secret-") {
        let part = if secret_key { "key" } else { "target.file" };
        return Origin::Step(format!("{OPTIONS}.secrets[{j}].{part}"));
    }
    if ctx.config.volumes.iter().any(|v| v.volume.name == name) {
        return setting("volumes");
    }
    Origin::Piculet
}

/// `spec.dnsConfig…`: the step's `dns` and `dns_search`, the workflow's search domain, or the
/// administrator's DNS config.
fn dns(ctx: &Ctx, step: &StepSpec, rest: &str, value: &str) -> Origin {
    if let Some(list_rest) = rest.strip_prefix(".nameservers") {
        if index(list_rest).is_some() {
            if let Some(j) = step.dns.iter().position(|d| d == value) {
                return Origin::Step(format!("dns[{j}]"));
            }
        } else if !step.dns.is_empty() {
            return Origin::Step("dns".into());
        }
        return setting("dns_config");
    }
    if let Some(list_rest) = rest.strip_prefix(".searches") {
        match index(list_rest) {
            Some((0, _)) => return namespace(ctx),
            Some(_) => {
                if let Some(j) = step
                    .dns_search
                    .iter()
                    .position(|d| d.strip_suffix('.').unwrap_or(d) == value)
                {
                    return Origin::Step(format!("dns_search[{j}]"));
                }
            }
            None if !step.dns_search.is_empty() => return Origin::Step("dns_search".into()),
            None => {}
        }
    }
    setting("dns_config")
}

/// The origin of a field of one of the workflow's other objects: the Secrets, the Service,
/// the workspace claim.
pub(crate) fn object_field(ctx: &Ctx, object: Object, e: &FieldError) -> Origin {
    let f = e.field.as_str();
    if after(f, "metadata.namespace").is_some() {
        return namespace(ctx);
    }
    match object {
        Object::ValuesSecret if after(f, "data").is_some() => Origin::Submission("secrets".into()),
        Object::RegistrySecret if after(f, "data").is_some() => {
            Origin::Submission("registries".into())
        }
        Object::Claim if after(f, "spec.storageClassName").is_some() => setting("storage_class"),
        Object::Claim if after(f, "spec.resources").is_some() => setting("volume_size"),
        _ => Origin::Piculet,
    }
}

/// The workflow's objects other than pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Object {
    Claim,
    ValuesSecret,
    RegistrySecret,
    Service,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            after("spec.tolerations[0].effect", "spec.tolerations"),
            Some("[0].effect")
        );
        assert_eq!(after("spec.tolerationsX", "spec.tolerations"), None);
        assert_eq!(index("[12].effect"), Some((12, ".effect")));
        assert_eq!(index(".effect"), None);
    }
}
