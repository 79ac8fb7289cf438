//! The typed pipeline: what a config says once its keys and shapes are checked. Step and
//! workflow types here keep the place each value came from, for the semantic checks that
//! follow; the Kubernetes options and the small enums are also part of the stored plan.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::diagnostic::{Pos, child};

/// How the steps (or workflows) before came out, as far as a condition asks: a step's `when`
/// `status`, a workflow's `runs_on`, and `CI_PIPELINE_STATUS`. Not a [`crate::model::Status`],
/// whose other states no condition names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conclusion {
    Success,
    Failure,
}

impl Conclusion {
    /// The name a condition and `CI_PIPELINE_STATUS` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Conclusion::Success => "success",
            Conclusion::Failure => "failure",
        }
    }
}

/// What a failed step (or service) does to its workflow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The workflow fails.
    #[default]
    Fail,
    /// The workflow stays green.
    Ignore,
    /// The workflow fails and the rest of the pipeline is canceled (Woodpecker's
    /// `failure: cancel`, steps only).
    Cancel,
}

impl Failure {
    /// Whether a failure of the step counts against its workflow.
    pub fn fails_workflow(self) -> bool {
        self != Failure::Ignore
    }
}

/// What a step is: planned from the pipeline, kept as each step row's `kind`, and shown by
/// the API (where it is the one kind of step rows, services included).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(description = "What a step row stands for.")]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Runs its commands (or entrypoint), to completion.
    Step,
    /// A long-running container reachable by name; started first, stopped once the steps are
    /// done.
    Service,
    /// Clones the repository into the workspace (the implicit one of a submission with `repo`,
    /// or from `clone:`).
    Clone,
    /// Runs its image's own entrypoint with `settings` as `PLUGIN_*` variables.
    Plugin,
}

impl StepKind {
    pub const ALL: [StepKind; 4] = [
        StepKind::Step,
        StepKind::Service,
        StepKind::Clone,
        StepKind::Plugin,
    ];

    /// The name as stored and as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Step => "step",
            StepKind::Service => "service",
            StepKind::Clone => "clone",
            StepKind::Plugin => "plugin",
        }
    }

    pub fn parse(text: &str) -> Option<StepKind> {
        StepKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// An environment value: literal text, or the value of a submission secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvValue {
    Literal(String),
    FromSecret(String),
}

/// A plugin setting: any JSON value, or the value of a submission secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SettingValue {
    Value(serde_json::Value),
    FromSecret(String),
}

/// Where steps run: `base/path`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workspace {
    pub base: String,
    pub path: String,
}

impl Default for Workspace {
    fn default() -> Self {
        Workspace {
            base: "/woodpecker".to_string(),
            path: "src".to_string(),
        }
    }
}

/// `backend_options.kubernetes` of a step or service, as Woodpecker's Kubernetes backend reads
/// it (field names as in the YAML), plus `hostUsers`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesOptions {
    pub resources: Resources,
    pub runtime_class_name: Option<String>,
    pub service_account_name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    /// A Kubernetes `Affinity` object; its top-level keys are checked, the rest is passed on.
    pub affinity: Option<serde_json::Value>,
    pub security_context: Option<SecurityContext>,
    pub secrets: Vec<SecretRef>,
    pub host_users: Option<bool>,
    /// `workspaceVolume: false`: the pod is rendered without the workspace volume and its
    /// mount (a service or helper that needs no files, free to run on any node with a
    /// ReadWriteOnce workspace). Absent or `true`: the workspace is mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_volume: Option<bool>,
}

impl KubernetesOptions {
    /// Whether the pod mounts the workflow's workspace (the default).
    pub fn mounts_workspace(&self) -> bool {
        self.workspace_volume != Some(false)
    }
}

/// Requests and limits by resource name (`cpu`, `memory`, `ephemeral-storage`, …); every value
/// is a valid Kubernetes quantity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub requests: BTreeMap<String, String>,
    pub limits: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Toleration {
    pub key: Option<String>,
    /// `Exists` or `Equal`.
    pub operator: Option<String>,
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: Option<String>,
    pub toleration_seconds: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityContext {
    pub privileged: Option<bool>,
    pub run_as_non_root: Option<bool>,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub fs_group: Option<i64>,
    /// `OnRootMismatch` or `Always`.
    pub fs_group_change_policy: Option<String>,
    pub seccomp_profile: Option<SecProfile>,
    pub apparmor_profile: Option<SecProfile>,
    pub allow_privilege_escalation: Option<bool>,
    pub capabilities: Option<Capabilities>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecProfile {
    /// `RuntimeDefault`, `Localhost` or `Unconfined`.
    #[serde(rename = "type")]
    pub kind: String,
    pub localhost_profile: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub drop: Vec<String>,
}

/// A reference to an existing Kubernetes Secret, exposed as an env variable or a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    pub name: String,
    pub key: String,
    pub target: SecretTarget,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretTarget {
    Env(String),
    File(String),
}

/// Which section of a workflow a step was declared in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Section {
    Step,
    Service,
    Clone,
}

impl Section {
    pub(crate) fn noun(self) -> &'static str {
        match self {
            Section::Step | Section::Clone => "step",
            Section::Service => "service",
        }
    }
}

/// A `depends_on` entry with its place.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Dependency {
    pub name: String,
    pub optional: bool,
    pub pointer: String,
    pub pos: Pos,
}

/// `include`/`exclude` glob lists (`branch`, `ref`, `repo`, …).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct GlobList {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl GlobList {
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PathCondition {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub ignore_message: Option<String>,
    pub on_empty: bool,
}

/// One condition map of a `when`; every key given must match.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Condition {
    pub pointer: String,
    pub pos: Pos,
    pub repo: GlobList,
    pub branch: GlobList,
    pub event: GlobList,
    pub reference: GlobList,
    pub cron: GlobList,
    pub platform: GlobList,
    pub instance: GlobList,
    pub status: Vec<Conclusion>,
    pub matrix_include: BTreeMap<String, String>,
    pub matrix_exclude: BTreeMap<String, String>,
    pub path: Option<PathCondition>,
    pub evaluate: Option<String>,
}

/// A step, service or clone step as declared.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StepModel {
    pub section: Section,
    pub name: String,
    pub pointer: String,
    pub pos: Pos,
    pub image: Option<String>,
    pub commands: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub settings: Option<IndexMap<String, SettingValue>>,
    pub directory: Option<String>,
    pub environment: BTreeMap<String, EnvValue>,
    /// Every `from_secret` of the step, with its place.
    pub secret_refs: Vec<(String, String, Pos)>,
    pub depends_on: Option<Vec<Dependency>>,
    pub when: Vec<Condition>,
    pub failure: Failure,
    pub detach: bool,
    pub privileged: bool,
    pub pull: bool,
    pub volumes: Vec<String>,
    pub extra_hosts: Vec<String>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub timeout: Option<std::time::Duration>,
    pub ports: Vec<String>,
    pub kubernetes: KubernetesOptions,
    /// Where each key of the step was written, for checks that look at the step as a whole.
    pub key_pos: BTreeMap<String, Pos>,
}

impl StepModel {
    pub(crate) fn new(section: Section, name: String, pointer: String, pos: Pos) -> StepModel {
        StepModel {
            section,
            name,
            pointer,
            pos,
            image: None,
            commands: None,
            entrypoint: None,
            settings: None,
            directory: None,
            environment: BTreeMap::new(),
            secret_refs: Vec::new(),
            depends_on: None,
            when: Vec::new(),
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
            kubernetes: KubernetesOptions::default(),
            key_pos: BTreeMap::new(),
        }
    }

    /// A plugin step runs its image's own entrypoint: it has `settings`, or neither `commands`
    /// nor `entrypoint` (Woodpecker's own CI has such steps, with only an image).
    pub(crate) fn is_plugin(&self) -> bool {
        self.section == Section::Step
            && (self.settings.is_some() || (self.commands.is_none() && self.entrypoint.is_none()))
    }

    /// The pointer and place of one of the step's keys (the step's own when it has none).
    pub(crate) fn place_of(&self, key: &str) -> (String, Pos) {
        match self.key_pos.get(key) {
            Some(pos) => (child(&self.pointer, key), *pos),
            None => (self.pointer.clone(), self.pos),
        }
    }
}

/// A workflow as declared (one matrix element, variables substituted).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct WorkflowModel {
    pub steps: Vec<StepModel>,
    pub services: Vec<StepModel>,
    pub clone: Option<Vec<StepModel>>,
    pub skip_clone: bool,
    pub workspace: Workspace,
    pub labels: BTreeMap<String, String>,
    pub depends_on: Vec<Dependency>,
    /// `runs_on` as given (Woodpecker's older form of the workflow's `when.status`).
    pub runs_on: Option<Vec<Conclusion>>,
    pub runs_on_pos: Option<Pos>,
    pub when: Vec<Condition>,
    pub concurrency: Option<ConcurrencyModel>,
}

/// `concurrency` as declared: `N`, or `{limit: N, group: NAME}`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ConcurrencyModel {
    /// At least 1 (checked when read); the upper bound is a limit of the server's, checked
    /// when the workflow is planned.
    pub limit: i64,
    /// Where the limit was written, for the refusal of one too high.
    pub limit_pointer: String,
    pub limit_pos: Pos,
    /// `None` (or empty): the workflow's name.
    pub group: Option<String>,
    /// Where the group was written, or `concurrency` itself when it names none: for the
    /// refusal of one too long.
    pub group_pointer: String,
    pub group_pos: Pos,
}
