//! A step's or service's pod: one container that runs the commands as a script with `sh -e`
//! (or, for a plugin or clone step, the image's own entrypoint with `PLUGIN_*` variables), the
//! workspace mounted at `workspace.base`, and every step option and administrator setting in
//! its place. Options the administrator does not allow are refused through [`Violations`].

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, EnvVar, EnvVarSource, HostAlias, KeyToPath,
    LocalObjectReference, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    Pod, PodDNSConfig, PodSpec, SecretKeySelector, SecretVolumeSource, Toleration, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::labels;
use super::names;
use super::policy::{
    RULE_FORMAT, RULE_KUBERNETES, RULE_RESERVED, Violations, allow_by_regex, allow_field,
    option_field,
};
use super::render::Ctx;
use super::resources;
use super::security;
use super::service;
use super::settings::{KubernetesConfig, ResourcePolicy, StepField};
use super::volume;
use crate::pipeline::{self, EnvValue, SecretTarget, SettingValue, StepKind, StepSpec, script};

/// Escapes `$` where the kubelet would read it: `$(NAME)` expands and `$$` becomes `$` in env
/// values, commands and arguments. Doubling those `$` makes the container see exactly the text.
pub fn escape_expansion(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        // A run of `$`: the kubelet reads `$$` as `$` and `$(` as a reference, so a run is
        // doubled when it has more than one `$` or is followed by `(`.
        let mut run = 1;
        while chars.peek() == Some(&'$') {
            chars.next();
            run += 1;
        }
        let double = run > 1 || chars.peek() == Some(&'(');
        for _ in 0..(if double { run * 2 } else { run }) {
            out.push('$');
        }
    }
    out
}

/// `PLUGIN_<KEY>`: upper case, every character other than a letter or digit an underscore.
pub fn plugin_variable(key: &str) -> String {
    let k: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("PLUGIN_{k}")
}

/// A setting's value as its variable holds it: text as is, other scalars as their JSON text,
/// objects and lists as JSON.
pub fn plugin_value(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Joins `base`, `path` and `directory` as Woodpecker does (`path.Join`): each is relative to
/// the one before, even when written with a leading `/` (`path: /` is the base itself).
pub fn working_dir(base: &str, path: &str, directory: Option<&str>) -> String {
    let parts: Vec<&str> = [Some(base), Some(path), directory]
        .into_iter()
        .flatten()
        .flat_map(|p| p.split('/'))
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

/// Sets variables on a rendered pod's container, as rendering gives the built-ins: they win
/// over what the step sets. The backend renders a workflow once and sets each step's own
/// `CI_*` values (its id, its start, the pipeline status so far) when it starts the step.
/// The rendered script stays: a variable of that name does not replace it, as in rendering.
pub fn set_environment(pod: &mut Pod, environment: &BTreeMap<String, String>) {
    let Some(container) = pod.spec.as_mut().and_then(|s| s.containers.first_mut()) else {
        return;
    };
    let env = container.env.get_or_insert_with(Vec::new);
    for (name, value) in environment
        .iter()
        .filter(|(name, _)| *name != script::CI_SCRIPT)
    {
        let var = EnvVar {
            name: name.clone(),
            value: Some(escape_expansion(value)),
            value_from: None,
        };
        // Rendering keeps the variables sorted by name.
        match env.binary_search_by(|e| e.name.as_str().cmp(name)) {
            Ok(i) => env[i] = var,
            Err(i) => env.insert(i, var),
        }
    }
}

/// Whether a rendered pod mounts the workflow's workspace: a pod rendered with
/// `workspaceVolume: false` does not, and so need not follow the workspace to its node.
pub fn mounts_workspace(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .any(|v| v.name == names::WORKSPACE_VOLUME)
}

/// Pins a pod to a node: with a ReadWriteOnce workspace, every pod of a workflow must run on
/// the node of the first one. Uses the node's name (`metadata.name`), as DaemonSets do, since
/// the `kubernetes.io/hostname` label need not equal it.
pub fn pin_to_node(pod: &mut Pod, node_name: &str) {
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    let term = NodeSelectorRequirement {
        key: "metadata.name".to_string(),
        operator: "In".to_string(),
        values: Some(vec![node_name.to_string()]),
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    let required = node
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(|| NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm::default()],
        });
    if required.node_selector_terms.is_empty() {
        required
            .node_selector_terms
            .push(NodeSelectorTerm::default());
    }
    // Terms are ORed: the node must be added to each of them.
    for t in &mut required.node_selector_terms {
        t.match_fields
            .get_or_insert_with(Vec::new)
            .push(term.clone());
    }
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Renders the pod of `step`, recording what the policy refuses. Each part is decided by a
/// function of its own, in the order their refusals are reported.
pub(crate) fn render_pod(ctx: &Ctx, step: &StepSpec, v: &mut Violations) -> Pod {
    let config = ctx.config;
    let image = image(ctx, step, v);
    let privileged = security::privileged(ctx, step, &image, v);
    let (pod_security, container_security) = security::contexts(ctx, step, privileged, v);
    let metadata = metadata(ctx, step, v);
    let scheduling = scheduling(ctx, step, v);
    let Storage {
        volumes,
        mounts,
        secret_env,
    } = storage(ctx, step, v);
    let mut env = environment(ctx, step, secret_env);
    let command = command(step, &mut env);
    let ports = ports(step, v);
    let host_aliases = host_aliases(step, v);
    let dns_config = dns_config(ctx, step, v);
    let (image_pull_policy, pull_secrets) = pull(ctx, step);
    let resources = resources::requirements(resource_policy(config, step.kind), step, v);

    let container = Container {
        name: names::CONTAINER.to_string(),
        image: Some(image),
        image_pull_policy,
        command,
        working_dir: Some(container_working_dir(ctx, step)),
        env: (!env.is_empty()).then(|| env.into_values().collect()),
        ports: (!ports.is_empty()).then_some(ports),
        resources,
        security_context: Some(container_security),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        ..Default::default()
    };

    let Scheduling {
        node_selector,
        tolerations,
        affinity,
        service_account,
        runtime_class,
        host_users,
    } = scheduling;
    Pod {
        metadata,
        spec: Some(PodSpec {
            restart_policy: Some("Never".to_string()),
            hostname: Some(names::hostname(&step.name)),
            subdomain: Some(ctx.names.service.clone()),
            containers: vec![container],
            volumes: (!volumes.is_empty()).then_some(volumes),
            security_context: Some(pod_security),
            automount_service_account_token: service_account.is_none().then_some(false),
            service_account_name: service_account,
            // Service links would put variables of every Service in the namespace into each
            // step's environment, where they can shadow the step's own.
            enable_service_links: Some(false),
            node_selector: (!node_selector.is_empty()).then_some(node_selector),
            tolerations: (!tolerations.is_empty()).then_some(tolerations),
            affinity,
            runtime_class_name: runtime_class,
            host_users,
            priority_class_name: config.priority_class.clone(),
            dns_policy: config.dns_policy.clone(),
            dns_config: Some(dns_config),
            host_aliases: (!host_aliases.is_empty()).then_some(host_aliases),
            image_pull_secrets: (!pull_secrets.is_empty()).then_some(pull_secrets),
            termination_grace_period_seconds: config.termination_grace_period,
            active_deadline_seconds: active_deadline_seconds(step),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The step's image; the default clone image is the administrator's.
fn image(ctx: &Ctx, step: &StepSpec, v: &mut Violations) -> String {
    let image = if step.kind == StepKind::Clone && step.image == pipeline::DEFAULT_CLONE_IMAGE {
        ctx.config.clone_image.clone()
    } else {
        step.image.clone()
    };
    if image.trim().is_empty() {
        v.push(
            &step.name,
            "image",
            &image,
            RULE_FORMAT,
            "is empty: every step and service on Kubernetes needs an image",
        );
    }
    image
}

/// The pod's name, labels and annotations.
fn metadata(ctx: &Ctx, step: &StepSpec, v: &mut Violations) -> ObjectMeta {
    let input = ctx.input;
    let labels = pod_labels(ctx, step, v);
    let annotations = pod_annotations(ctx, step, v);
    let mut metadata = ctx.metadata(&names::pod_name(
        &input.workflow_id,
        &step.name,
        input.attempt,
    ));
    metadata.labels = Some(labels);
    metadata.annotations = Some(annotations);
    metadata
}

/// The administrator's labels, the step's allowed ones, then piculet's own, which win.
fn pod_labels(ctx: &Ctx, step: &StepSpec, v: &mut Violations) -> BTreeMap<String, String> {
    let (config, input) = (ctx.config, ctx.input);
    let opts = &step.backend_options;
    let name = step.name.as_str();
    let step_id = input.step_ids.get(name).copied().unwrap_or_default();
    let mut pod_labels = config.pod_labels.clone();
    if !opts.labels.is_empty()
        && allow_field(config, v, name, StepField::Labels, &json(&opts.labels))
    {
        for (k, val) in &opts.labels {
            let field = option_field(&format!("labels.{k}"));
            if labels::is_reserved(k) {
                v.push(name, &field, val, RULE_RESERVED, "is not allowed: piculet.dev/ and app.kubernetes.io/managed-by keys are piculet's own; choose another key");
            } else if let Err(m) = labels::check_key(k).and(labels::check_value(val)) {
                v.push(
                    name,
                    &field,
                    val,
                    RULE_KUBERNETES,
                    &format!("is not allowed: {m}"),
                );
            } else {
                pod_labels.insert(k.clone(), val.clone());
            }
        }
    }
    pod_labels.extend(ctx.labels.clone());
    pod_labels.insert(labels::STEP_ID.to_string(), step_id.to_string());
    let mut step_slug = names::slug(name, names::MAX_LABEL);
    if step_slug.is_empty() {
        step_slug = names::hostname(name);
    }
    pod_labels.insert(labels::STEP.to_string(), step_slug);
    pod_labels.insert(labels::KIND.to_string(), kind_name(step.kind).to_string());
    pod_labels.insert(labels::ATTEMPT.to_string(), input.attempt.to_string());
    pod_labels
}

/// The administrator's annotations, the step's allowed ones, then piculet's own.
fn pod_annotations(ctx: &Ctx, step: &StepSpec, v: &mut Violations) -> BTreeMap<String, String> {
    let config = ctx.config;
    let name = step.name.as_str();
    let mut annotations = config.pod_annotations.clone();
    for (k, val) in &step.backend_options.annotations {
        let field = option_field(&format!("annotations.{k}"));
        if labels::is_reserved(k) {
            v.push(
                name,
                &field,
                val,
                RULE_RESERVED,
                "is not allowed: piculet.dev/ keys are piculet's own; choose another key",
            );
            continue;
        }
        if let Err(m) = labels::check_key(k) {
            v.push(
                name,
                &field,
                val,
                RULE_KUBERNETES,
                &format!("is not allowed: {m}"),
            );
            continue;
        }
        if allow_by_regex(
            config.annotations_overwrite_allowed.as_ref(),
            "annotations_overwrite_allowed",
            Some(StepField::Annotations),
            config,
            v,
            name,
            &option_field("annotations"),
            k,
        ) {
            annotations.insert(k.clone(), val.clone());
        }
    }
    annotations.insert(labels::STEP_NAME_ANNOTATION.to_string(), name.to_string());
    if config.pull_policies.len() > 1 && !step.pull {
        annotations.insert(
            labels::PULL_POLICIES_ANNOTATION.to_string(),
            config.pull_policies.join(","),
        );
    }
    annotations
}

/// Where and as whom the pod runs.
struct Scheduling {
    node_selector: BTreeMap<String, String>,
    tolerations: Vec<Toleration>,
    affinity: Option<Affinity>,
    service_account: Option<String>,
    runtime_class: Option<String>,
    host_users: Option<bool>,
}

/// The administrator's scheduling settings, and the step's where allowed.
fn scheduling(ctx: &Ctx, step: &StepSpec, v: &mut Violations) -> Scheduling {
    let config = ctx.config;
    let opts = &step.backend_options;
    let name = step.name.as_str();
    let node_selector = node_selector(ctx, step, v);
    let tolerations = tolerations(ctx, step, v);
    let affinity = affinity(ctx, step, v);

    let mut service_account = config.service_account.clone();
    if let Some(sa) = &opts.service_account_name
        && allow_by_regex(
            config.service_account_overwrite_allowed.as_ref(),
            "service_account_overwrite_allowed",
            Some(StepField::ServiceAccountName),
            config,
            v,
            name,
            &option_field("serviceAccountName"),
            sa,
        )
    {
        service_account = Some(sa.clone());
    }

    let mut runtime_class = config.runtime_class.clone();
    if let Some(rc) = &opts.runtime_class_name
        && allow_field(config, v, name, StepField::RuntimeClassName, rc)
    {
        runtime_class = Some(rc.clone());
    }
    let mut host_users = None;
    if let Some(h) = opts.host_users
        && allow_field(config, v, name, StepField::HostUsers, &h.to_string())
    {
        host_users = Some(h);
    }
    Scheduling {
        node_selector,
        tolerations,
        affinity,
        service_account,
        runtime_class,
        host_users,
    }
}

/// The workflow's architecture, the administrator's selector, then the step's.
fn node_selector(ctx: &Ctx, step: &StepSpec, v: &mut Violations) -> BTreeMap<String, String> {
    let config = ctx.config;
    let opts = &step.backend_options;
    let name = step.name.as_str();
    let mut node_selector = BTreeMap::new();
    if let Some((_, arch)) = ctx.input.workflow.platform.split_once('/') {
        let arch = arch.split('/').next().unwrap_or(arch);
        if !arch.is_empty() {
            node_selector.insert("kubernetes.io/arch".to_string(), arch.to_string());
        }
    }
    node_selector.extend(config.node_selector.clone());
    if !opts.node_selector.is_empty()
        && allow_field(
            config,
            v,
            name,
            StepField::NodeSelector,
            &json(&opts.node_selector),
        )
    {
        for (k, val) in &opts.node_selector {
            if let Err(m) = labels::check_key(k).and(labels::check_value(val)) {
                v.push(
                    name,
                    &option_field(&format!("nodeSelector.{k}")),
                    val,
                    RULE_KUBERNETES,
                    &format!("is not allowed: {m}"),
                );
            } else {
                node_selector.insert(k.clone(), val.clone());
            }
        }
    }
    node_selector
}

/// The administrator's tolerations, then the step's.
fn tolerations(ctx: &Ctx, step: &StepSpec, v: &mut Violations) -> Vec<Toleration> {
    let config = ctx.config;
    let opts = &step.backend_options;
    let mut tolerations: Vec<Toleration> = config.tolerations.clone();
    if !opts.tolerations.is_empty()
        && allow_field(
            config,
            v,
            &step.name,
            StepField::Tolerations,
            &json(&opts.tolerations),
        )
    {
        tolerations.extend(opts.tolerations.iter().map(|t| Toleration {
            key: t.key.clone(),
            operator: t.operator.clone(),
            value: t.value.clone(),
            effect: t.effect.clone(),
            toleration_seconds: t.toleration_seconds,
        }));
    }
    tolerations
}

/// The step's affinity, when allowed and a Kubernetes affinity.
fn affinity(ctx: &Ctx, step: &StepSpec, v: &mut Violations) -> Option<Affinity> {
    let a = step.backend_options.affinity.as_ref()?;
    if !allow_field(
        ctx.config,
        v,
        &step.name,
        StepField::Affinity,
        &a.to_string(),
    ) {
        return None;
    }
    match serde_json::from_value::<Affinity>(a.clone()) {
        Ok(a) => Some(a),
        Err(e) => {
            v.push(
                &step.name,
                &option_field("affinity"),
                &a.to_string(),
                RULE_FORMAT,
                &format!("is not a Kubernetes affinity: {e}"),
            );
            None
        }
    }
}

/// The pod's volumes and the container's mounts, and the variables that Secret keys fill.
struct Storage {
    volumes: Vec<Volume>,
    mounts: Vec<VolumeMount>,
    secret_env: BTreeMap<String, EnvVar>,
}

/// Volumes: the workspace (unless the step says `workspaceVolume: false`), the
/// administrator's, the step's claims and Secret files; no two mounted at one path.
fn storage(ctx: &Ctx, step: &StepSpec, v: &mut Violations) -> Storage {
    let input = ctx.input;
    let name = step.name.as_str();
    let mut storage = Storage {
        volumes: Vec::new(),
        mounts: Vec::new(),
        secret_env: BTreeMap::new(),
    };
    if step.backend_options.mounts_workspace() {
        storage.volumes.push(volume::workspace_volume(ctx));
        storage.mounts.push(VolumeMount {
            name: names::WORKSPACE_VOLUME.to_string(),
            mount_path: input.workflow.workspace.base.clone(),
            ..Default::default()
        });
    }
    if !input.workflow.workspace.base.starts_with('/') {
        v.push(
            name,
            "workspace.base",
            &input.workflow.workspace.base,
            RULE_FORMAT,
            "is not an absolute path; write one such as /woodpecker",
        );
    }
    for a in &ctx.config.volumes {
        storage.volumes.push(a.volume.clone());
        storage.mounts.push(a.mount.clone());
    }
    let (claim_vols, claim_mounts) = volume::claim_volumes(ctx, name, &step.volumes, v);
    storage.volumes.extend(claim_vols);
    storage.mounts.extend(claim_mounts);
    step_secrets(ctx, step, v, &mut storage);
    check_mount_paths(name, &storage.mounts, v);
    storage
}

/// The step's `secrets` option: each key of a Secret as a variable or a read-only file.
fn step_secrets(ctx: &Ctx, step: &StepSpec, v: &mut Violations, storage: &mut Storage) {
    let opts = &step.backend_options;
    let name = step.name.as_str();
    if opts.secrets.is_empty()
        || !allow_field(
            ctx.config,
            v,
            name,
            StepField::Secrets,
            &json(&opts.secrets),
        )
    {
        return;
    }
    for (i, s) in opts.secrets.iter().enumerate() {
        match &s.target {
            SecretTarget::Env(var) => {
                storage
                    .secret_env
                    .insert(var.clone(), secret_env(var, &s.name, &s.key));
            }
            SecretTarget::File(path) => {
                if !path.starts_with('/') || path.ends_with('/') {
                    v.push(
                        name,
                        &option_field(&format!("secrets[{i}].target.file")),
                        path,
                        RULE_FORMAT,
                        "is not an absolute file path; write one such as /run/secrets/token",
                    );
                    continue;
                }
                let vol = format!("secret-{i}");
                storage.volumes.push(Volume {
                    name: vol.clone(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(s.name.clone()),
                        items: Some(vec![KeyToPath {
                            key: s.key.clone(),
                            path: s.key.clone(),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                storage.mounts.push(VolumeMount {
                    name: vol,
                    mount_path: path.clone(),
                    sub_path: Some(s.key.clone()),
                    read_only: Some(true),
                    ..Default::default()
                });
            }
        }
    }
}

/// Refuses two mounts at one path.
fn check_mount_paths(name: &str, mounts: &[VolumeMount], v: &mut Violations) {
    let mut seen_paths = BTreeMap::new();
    for m in mounts {
        if let Some(first) = seen_paths.insert(m.mount_path.clone(), m.name.clone()) {
            v.push(
                name,
                "volumes",
                &m.mount_path,
                RULE_KUBERNETES,
                &format!(
                    "is mounted twice (volumes {first} and {}); choose another path",
                    m.name
                ),
            );
        }
    }
}

/// A variable filled from a key of a Secret.
fn secret_env(var: &str, secret_name: &str, key: &str) -> EnvVar {
    EnvVar {
        name: var.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret_name.to_string(),
                key: key.to_string(),
                optional: None,
            }),
            ..Default::default()
        }),
    }
}

/// Environment: the `secrets` option's variables, the step's, then plugin settings, then
/// the built-ins; later wins.
fn environment(
    ctx: &Ctx,
    step: &StepSpec,
    mut env: BTreeMap<String, EnvVar>,
) -> BTreeMap<String, EnvVar> {
    for (k, e) in &step.environment {
        let var = match e {
            EnvValue::Literal(s) => EnvVar {
                name: k.clone(),
                value: Some(escape_expansion(s)),
                value_from: None,
            },
            EnvValue::FromSecret(s) => match ctx.secret_keys.get(s) {
                Some(key) => secret_env(k, &ctx.names.secret, key),
                None => continue,
            },
        };
        env.insert(k.clone(), var);
    }
    for (k, s) in &step.settings {
        let var = plugin_variable(k);
        let ev = match s {
            SettingValue::Value(val) => EnvVar {
                name: var.clone(),
                value: Some(escape_expansion(&plugin_value(val))),
                value_from: None,
            },
            SettingValue::FromSecret(s) => match ctx.secret_keys.get(s) {
                Some(key) => secret_env(&var, &ctx.names.secret, key),
                None => continue,
            },
        };
        env.insert(var, ev);
    }
    for (k, val) in &ctx.input.environment {
        env.insert(
            k.clone(),
            EnvVar {
                name: k.clone(),
                value: Some(escape_expansion(val)),
                value_from: None,
            },
        );
    }
    env
}

/// The container's command: the step's entrypoint, else the shell that runs `CI_SCRIPT`
/// (set in `env`) when there are commands, else the image's own.
fn command(step: &StepSpec, env: &mut BTreeMap<String, EnvVar>) -> Option<Vec<String>> {
    let mut command = None;
    if !step.commands.is_empty() {
        env.insert(
            script::CI_SCRIPT.to_string(),
            EnvVar {
                name: script::CI_SCRIPT.to_string(),
                value: Some(script::ci_script(&step.commands)),
                value_from: None,
            },
        );
        command = Some(script::CI_SCRIPT_COMMAND.map(String::from).to_vec());
    }
    if let Some(ep) = &step.entrypoint {
        command = Some(ep.iter().map(|s| escape_expansion(s)).collect());
    }
    command
}

fn ports(step: &StepSpec, v: &mut Violations) -> Vec<ContainerPort> {
    let mut ports = Vec::new();
    for (i, p) in step.ports.iter().enumerate() {
        match parse_port(p) {
            Some((number, protocol)) => ports.push(ContainerPort {
                container_port: number,
                protocol: Some(protocol.to_string()),
                ..Default::default()
            }),
            None => v.push(&step.name, &format!("ports[{i}]"), p, RULE_FORMAT, "is not a port: write a number from 1 to 65535, optionally followed by /tcp, /udp or /sctp"),
        }
    }
    ports
}

/// The step's `extra_hosts`, `hostname:ip` (or `hostname=ip`).
fn host_aliases(step: &StepSpec, v: &mut Violations) -> Vec<HostAlias> {
    let mut host_aliases: Vec<HostAlias> = Vec::new();
    for (i, h) in step.extra_hosts.iter().enumerate() {
        match h.split_once(':').or_else(|| h.split_once('=')) {
            Some((host, ip))
                if !host.is_empty() && !ip.is_empty() && ip.parse::<std::net::IpAddr>().is_ok() =>
            {
                host_aliases.push(HostAlias {
                    ip: ip.to_string(),
                    hostnames: Some(vec![host.to_string()]),
                });
            }
            _ => v.push(
                &step.name,
                &format!("extra_hosts[{i}]"),
                h,
                RULE_FORMAT,
                "is not a host alias: write hostname:ip, e.g. db.local:10.0.0.5",
            ),
        }
    }
    host_aliases
}

/// The image pull policy, and the administrator's pull secrets and the workflow's registry
/// secret.
fn pull(ctx: &Ctx, step: &StepSpec) -> (Option<String>, Vec<LocalObjectReference>) {
    let config = ctx.config;
    let image_pull_policy = if step.pull {
        Some("Always".to_string())
    } else {
        config.pull_policies.first().cloned()
    };
    let mut pull_secrets: Vec<LocalObjectReference> = config
        .pull_secret_names
        .iter()
        .map(|n| LocalObjectReference { name: n.clone() })
        .collect();
    if ctx.has_registry_secret {
        pull_secrets.push(LocalObjectReference {
            name: ctx.names.registry_secret.clone(),
        });
    }
    (image_pull_policy, pull_secrets)
}

fn resource_policy(config: &KubernetesConfig, kind: StepKind) -> &ResourcePolicy {
    match kind {
        StepKind::Service => &config.service_resources,
        StepKind::Clone => &config.clone_resources,
        StepKind::Step | StepKind::Plugin => &config.step_resources,
    }
}

fn active_deadline_seconds(step: &StepSpec) -> Option<i64> {
    match step.kind {
        // A service runs until the workflow's steps are done; the engine stops it.
        StepKind::Service => None,
        _ => step
            .timeout
            .map(|t| i64::try_from(t.as_secs().max(1)).unwrap_or(i64::MAX)),
    }
}

/// A service's absolute directory is a place in its own container, as Woodpecker takes it;
/// everything else is inside the workspace. Kept without the workspace volume too, as
/// Woodpecker keeps it: scripts and CI_WORKSPACE name the same directory, which the
/// container runtime then creates empty (owned by root).
fn container_working_dir(ctx: &Ctx, step: &StepSpec) -> String {
    let workspace = &ctx.input.workflow.workspace;
    match step.directory.as_deref() {
        Some(dir) if step.kind == StepKind::Service && dir.starts_with('/') => dir.to_string(),
        dir => working_dir(&workspace.base, &workspace.path, dir),
    }
}

fn kind_name(kind: StepKind) -> &'static str {
    match kind {
        StepKind::Step => "step",
        StepKind::Service => "service",
        StepKind::Clone => "clone",
        StepKind::Plugin => "plugin",
    }
}

/// `8080`, `8080/tcp`, `53/udp`.
fn parse_port(text: &str) -> Option<(i32, &'static str)> {
    let (number, protocol) = text.split_once('/').unwrap_or((text, "tcp"));
    let protocol = match protocol.to_ascii_lowercase().as_str() {
        "tcp" => "TCP",
        "udp" => "UDP",
        "sctp" => "SCTP",
        _ => return None,
    };
    let n: i32 = number.trim().parse().ok()?;
    (1..=65535).contains(&n).then_some((n, protocol))
}

/// The service search entry, the administrator's DNS config, and the step's `dns`/`dns_search`.
fn dns_config(ctx: &Ctx, step: &StepSpec, v: &mut Violations) -> PodDNSConfig {
    let admin = ctx.config.dns_config.clone().unwrap_or_default();
    let mut nameservers = admin.nameservers.unwrap_or_default();
    // Each entry is looked for among those before it in a set, not the list: a step may name
    // thousands, and the list would cost the square of their number.
    let mut seen: HashSet<String> = nameservers.iter().cloned().collect();
    for (i, ns) in step.dns.iter().enumerate() {
        if ns.parse::<std::net::IpAddr>().is_err() {
            v.push(
                &step.name,
                &format!("dns[{i}]"),
                ns,
                RULE_FORMAT,
                "is not an IP address of a nameserver",
            );
        } else if seen.insert(ns.clone()) {
            nameservers.push(ns.clone());
        }
    }
    if nameservers.len() > 3 {
        v.push(
            &step.name,
            "dns",
            &json(&step.dns),
            RULE_KUBERNETES,
            &format!(
                "is not allowed: a pod can have at most 3 nameservers, and this one would have {}",
                nameservers.len()
            ),
        );
    }
    let mut searches = vec![service::search_domain(ctx)];
    let mut seen: HashSet<String> = searches.iter().cloned().collect();
    for s in admin
        .searches
        .unwrap_or_default()
        .into_iter()
        .chain(step.dns_search.iter().cloned())
    {
        if seen.insert(s.clone()) {
            searches.push(s);
        }
    }
    if searches.len() > 32 {
        v.push(
            &step.name,
            "dns_search",
            &json(&step.dns_search),
            RULE_KUBERNETES,
            "is not allowed: a pod can have at most 32 search domains",
        );
    }
    PodDNSConfig {
        nameservers: (!nameservers.is_empty()).then_some(nameservers),
        searches: Some(searches),
        options: admin.options,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_environment_keeps_the_rendered_script() {
        let var = |name: &str, value: &str| EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        };
        let mut pod = Pod {
            spec: Some(k8s_openapi::api::core::v1::PodSpec {
                containers: vec![k8s_openapi::api::core::v1::Container {
                    name: "step".into(),
                    env: Some(vec![
                        var("CI_SCRIPT", "ZWNobyBoaQo="),
                        var("CI_STEP_ID", ""),
                    ]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let environment = BTreeMap::from([
            ("CI_SCRIPT".to_string(), "cm0gLXJmIC8K".to_string()),
            ("CI_STEP_ID".to_string(), "s-1".to_string()),
            ("A".to_string(), "$(x)".to_string()),
        ]);
        set_environment(&mut pod, &environment);
        let env = pod.spec.unwrap().containers.remove(0).env.unwrap();
        assert_eq!(
            env,
            [
                var("A", "$$(x)"),
                var("CI_SCRIPT", "ZWNobyBoaQo="),
                var("CI_STEP_ID", "s-1")
            ]
        );
    }

    #[test]
    fn escapes_only_what_the_kubelet_expands() {
        assert_eq!(
            escape_expansion("$(HOME) $$ $x ${Y} $"),
            "$$(HOME) $$$$ $x ${Y} $"
        );
        assert_eq!(escape_expansion("$$(A) $$$x $"), "$$$$(A) $$$$$$x $");
        assert_eq!(escape_expansion("no dollars"), "no dollars");
    }

    #[test]
    fn working_dirs() {
        assert_eq!(working_dir("/woodpecker", "src", None), "/woodpecker/src");
        assert_eq!(
            working_dir("/woodpecker", "src/", Some("sub/dir")),
            "/woodpecker/src/sub/dir"
        );
        assert_eq!(working_dir("/woodpecker", "/", None), "/woodpecker");
        assert_eq!(working_dir("/w", "src", Some("/abs")), "/w/src/abs");
        assert_eq!(working_dir("/w", "./src", Some(".")), "/w/src");
    }

    #[test]
    fn plugin_settings() {
        assert_eq!(plugin_variable("dry-run"), "PLUGIN_DRY_RUN");
        assert_eq!(plugin_variable("build.args"), "PLUGIN_BUILD_ARGS");
        assert_eq!(plugin_value(&serde_json::json!("x")), "x");
        assert_eq!(plugin_value(&serde_json::json!(3)), "3");
        assert_eq!(plugin_value(&serde_json::json!(true)), "true");
        assert_eq!(
            plugin_value(&serde_json::json!(["a", "b"])),
            "[\"a\",\"b\"]"
        );
        assert_eq!(plugin_value(&serde_json::json!({"a": 1})), "{\"a\":1}");
        assert_eq!(plugin_value(&serde_json::Value::Null), "");
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port("5432"), Some((5432, "TCP")));
        assert_eq!(parse_port("53/udp"), Some((53, "UDP")));
        assert_eq!(parse_port("0"), None);
        assert_eq!(parse_port("70000"), None);
        assert_eq!(parse_port("80/http"), None);
    }
}
