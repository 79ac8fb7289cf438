//! Administrator settings of the Kubernetes backend: every `PICULET_K8S_*` variable (and
//! `--k8s-*` flag, and key of the `[kubernetes]` table of the TOML file), read as text into
//! [`KubernetesSettings`], then parsed and checked once into the typed [`KubernetesConfig`].
//! A bad value stops start-up with one line that names the setting and says what to write.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use clap::Args as _;
use globset::{Glob, GlobSet, GlobSetBuilder};
use k8s_openapi::api::core::v1::{
    CSIVolumeSource, ConfigMapVolumeSource, EmptyDirVolumeSource, HostPathVolumeSource,
    PersistentVolumeClaimVolumeSource, PodDNSConfig, SecretVolumeSource, Toleration, Volume,
    VolumeMount,
};
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::labels;
use super::names;
use super::quantity::Quantity;
use crate::pipeline::duration;

/// The raw settings, as flags, environment variables or TOML keys: every field optional text,
/// parsed by [`KubernetesConfig::from_settings`]. Each is declared once, here, with its help
/// and its default: `default_value` (what `--help` shows and the parser falls back to), or,
/// for a setting whose unset state means something other than a value, a `[default: …]`
/// that says what. README.md's table is tested against these declarations.
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSettings {
    /// Namespace of every workflow object
    #[arg(
        long = "k8s-namespace",
        env = "PICULET_K8S_NAMESPACE",
        global = true,
        default_value = "piculet",
        value_name = "NAME"
    )]
    pub namespace: Option<String>,

    /// Regular expression a submission's namespace must match in full; empty: submissions cannot choose a namespace [default: empty]
    #[arg(
        long = "k8s-namespace-overwrite-allowed",
        env = "PICULET_K8S_NAMESPACE_OVERWRITE_ALLOWED",
        global = true,
        value_name = "REGEX"
    )]
    pub namespace_overwrite_allowed: Option<String>,

    /// Size of each workflow's workspace volume
    #[arg(
        long = "k8s-volume-size",
        env = "PICULET_K8S_VOLUME_SIZE",
        global = true,
        default_value = "10G",
        value_name = "QUANTITY"
    )]
    pub volume_size: Option<String>,

    /// StorageClass of the workspace volume [default: the cluster's default]
    #[arg(
        long = "k8s-storage-class",
        env = "PICULET_K8S_STORAGE_CLASS",
        global = true,
        value_name = "NAME"
    )]
    pub storage_class: Option<String>,

    /// Workspace access mode: true for ReadWriteMany, false for ReadWriteOnce (then a workflow's pods share one node)
    #[arg(
        long = "k8s-storage-rwx",
        env = "PICULET_K8S_STORAGE_RWX",
        global = true,
        default_value = "true",
        value_name = "BOOL"
    )]
    pub storage_rwx: Option<String>,

    /// Labels of every pod: a JSON object or k=v,k=v [default: none]
    #[arg(
        long = "k8s-pod-labels",
        env = "PICULET_K8S_POD_LABELS",
        global = true,
        value_name = "LABELS"
    )]
    pub pod_labels: Option<String>,

    /// Annotations of every pod: a JSON object or k=v,k=v [default: none]
    #[arg(
        long = "k8s-pod-annotations",
        env = "PICULET_K8S_POD_ANNOTATIONS",
        global = true,
        value_name = "ANNOTATIONS"
    )]
    pub pod_annotations: Option<String>,

    /// Regular expression an annotation key set by a step must match in full; empty: only with annotations in --k8s-allow-from-step [default: empty]
    #[arg(
        long = "k8s-annotations-overwrite-allowed",
        env = "PICULET_K8S_ANNOTATIONS_OVERWRITE_ALLOWED",
        global = true,
        value_name = "REGEX"
    )]
    pub annotations_overwrite_allowed: Option<String>,

    /// Node selector of every pod, merged with kubernetes.io/arch of the platform: a JSON object or k=v,k=v [default: none]
    #[arg(
        long = "k8s-node-selector",
        env = "PICULET_K8S_NODE_SELECTOR",
        global = true,
        value_name = "LABELS"
    )]
    pub node_selector: Option<String>,

    /// Tolerations of every pod, a JSON list of Kubernetes tolerations [default: none]
    #[arg(
        long = "k8s-tolerations",
        env = "PICULET_K8S_TOLERATIONS",
        global = true,
        value_name = "JSON"
    )]
    pub tolerations: Option<String>,

    /// ServiceAccount of every pod; without one, pods get no API token [default: none]
    #[arg(
        long = "k8s-service-account",
        env = "PICULET_K8S_SERVICE_ACCOUNT",
        global = true,
        value_name = "NAME"
    )]
    pub service_account: Option<String>,

    /// Regular expression a step's serviceAccountName must match in full; empty: only with serviceAccountName in --k8s-allow-from-step [default: empty]
    #[arg(
        long = "k8s-service-account-overwrite-allowed",
        env = "PICULET_K8S_SERVICE_ACCOUNT_OVERWRITE_ALLOWED",
        global = true,
        value_name = "REGEX"
    )]
    pub service_account_overwrite_allowed: Option<String>,

    /// RuntimeClass of every pod, e.g. gvisor [default: none]
    #[arg(
        long = "k8s-runtime-class",
        env = "PICULET_K8S_RUNTIME_CLASS",
        global = true,
        value_name = "NAME"
    )]
    pub runtime_class: Option<String>,

    /// Run every pod with runAsNonRoot: true, as Woodpecker's SECCTX_NONROOT
    #[arg(
        long = "k8s-secctx-nonroot",
        env = "PICULET_K8S_SECCTX_NONROOT",
        global = true,
        default_value = "false",
        value_name = "BOOL"
    )]
    pub secctx_nonroot: Option<String>,

    /// Pod Security Standard every pod meets: baseline or restricted
    #[arg(
        long = "k8s-pod-security",
        env = "PICULET_K8S_POD_SECURITY",
        global = true,
        default_value = "baseline",
        value_name = "LEVEL"
    )]
    pub pod_security: Option<String>,

    /// User every pod runs as when non-root is required (PICULET_K8S_POD_SECURITY=restricted or PICULET_K8S_SECCTX_NONROOT) and the step sets no runAsUser; `image` keeps the image's own user (which the kubelet refuses when it is root)
    #[arg(
        long = "k8s-run-as-user",
        env = "PICULET_K8S_RUN_AS_USER",
        global = true,
        default_value = "1000",
        value_name = "UID"
    )]
    pub run_as_user: Option<String>,

    /// Group every pod runs as when non-root is required and the step sets no runAsGroup; `image` keeps the image's group. The workspace's fsGroup follows it
    #[arg(
        long = "k8s-run-as-group",
        env = "PICULET_K8S_RUN_AS_GROUP",
        global = true,
        default_value = "1000",
        value_name = "GID"
    )]
    pub run_as_group: Option<String>,

    /// Comma-separated backend_options.kubernetes fields a step may set: nodeSelector, tolerations, affinity, serviceAccountName, runtimeClassName, labels, annotations, hostUsers, secrets [default: none]
    #[arg(
        long = "k8s-allow-from-step",
        env = "PICULET_K8S_ALLOW_FROM_STEP",
        global = true,
        value_name = "FIELDS"
    )]
    pub allow_from_step: Option<String>,

    /// Comma-separated glob patterns of images that may run privileged [default: none]
    #[arg(
        long = "k8s-privileged-images",
        env = "PICULET_K8S_PRIVILEGED_IMAGES",
        global = true,
        value_name = "GLOBS"
    )]
    pub privileged_images: Option<String>,

    /// Comma-separated glob patterns of existing PersistentVolumeClaims a step may mount with volumes: [default: none]
    #[arg(
        long = "k8s-allowed-claims",
        env = "PICULET_K8S_ALLOWED_CLAIMS",
        global = true,
        value_name = "GLOBS"
    )]
    pub allowed_claims: Option<String>,

    /// Comma-separated image pull Secrets of every pod [default: none]
    #[arg(
        long = "k8s-pull-secret-names",
        env = "PICULET_K8S_PULL_SECRET_NAMES",
        global = true,
        value_name = "NAMES"
    )]
    pub pull_secret_names: Option<String>,

    /// Comma-separated image pull policies (Always, IfNotPresent, Never), tried in order when a pull fails [default: the cluster's]
    #[arg(
        long = "k8s-pull-policy",
        env = "PICULET_K8S_PULL_POLICY",
        global = true,
        value_name = "POLICIES"
    )]
    pub pull_policy: Option<String>,

    /// PriorityClass of every pod [default: none]
    #[arg(
        long = "k8s-priority-class",
        env = "PICULET_K8S_PRIORITY_CLASS",
        global = true,
        value_name = "NAME"
    )]
    pub priority_class: Option<String>,

    /// DNS policy of every pod: ClusterFirst, Default, ClusterFirstWithHostNet or None [default: the cluster's, ClusterFirst]
    #[arg(
        long = "k8s-dns-policy",
        env = "PICULET_K8S_DNS_POLICY",
        global = true,
        value_name = "POLICY"
    )]
    pub dns_policy: Option<String>,

    /// DNS config of every pod, a JSON object {nameservers, searches, options} [default: none]
    #[arg(
        long = "k8s-dns-config",
        env = "PICULET_K8S_DNS_CONFIG",
        global = true,
        value_name = "JSON"
    )]
    pub dns_config: Option<String>,

    /// Grace period of a stopped pod, in seconds or as 30s, 2m [default: the cluster's, 30s]
    #[arg(
        long = "k8s-termination-grace-period",
        env = "PICULET_K8S_TERMINATION_GRACE_PERIOD",
        global = true,
        value_name = "DURATION"
    )]
    pub termination_grace_period: Option<String>,

    /// Volumes mounted into every pod: a JSON list of {name, type, mount_path, ...}, type one of host_path, pvc, config_map, secret, empty_dir, csi [default: none]
    #[arg(
        long = "k8s-volumes",
        env = "PICULET_K8S_VOLUMES",
        global = true,
        value_name = "JSON"
    )]
    pub volumes: Option<String>,

    /// Image of the implicit clone step
    #[arg(
        long = "k8s-clone-image",
        env = "PICULET_K8S_CLONE_IMAGE",
        global = true,
        default_value = "docker.io/woodpeckerci/plugin-git:2.6",
        value_name = "IMAGE"
    )]
    pub clone_image: Option<String>,

    /// How long a pod may take to start before its step is an error
    #[arg(
        long = "k8s-start-timeout",
        env = "PICULET_K8S_START_TIMEOUT",
        global = true,
        default_value = "180s",
        value_name = "DURATION"
    )]
    pub start_timeout: Option<String>,

    /// How long reading a step's log is retried while the API server cannot serve it (a kubelet restart answers 500) before the rest of the log is given up
    #[arg(
        long = "k8s-log-retry-timeout",
        env = "PICULET_K8S_LOG_RETRY_TIMEOUT",
        global = true,
        default_value = "5m",
        value_name = "DURATION"
    )]
    pub log_retry_timeout: Option<String>,

    /// Requests per second to the Kubernetes API
    #[arg(
        long = "k8s-qps",
        env = "PICULET_K8S_QPS",
        global = true,
        default_value = "20",
        value_name = "NUMBER"
    )]
    pub qps: Option<String>,

    /// Requests allowed above --k8s-qps in a burst
    #[arg(
        long = "k8s-burst",
        env = "PICULET_K8S_BURST",
        global = true,
        default_value = "40",
        value_name = "NUMBER"
    )]
    pub burst: Option<String>,

    /// Kubeconfig file [default: in-cluster configuration, else $KUBECONFIG or ~/.kube/config]
    #[arg(
        long = "k8s-kubeconfig",
        env = "PICULET_K8S_KUBECONFIG",
        global = true,
        value_name = "PATH"
    )]
    pub kubeconfig: Option<String>,

    /// Kubeconfig context [default: the current one]
    #[arg(
        long = "k8s-context",
        env = "PICULET_K8S_CONTEXT",
        global = true,
        value_name = "NAME"
    )]
    pub context: Option<String>,

    /// Keep the pods of failed workflows for inspection (the reaper deletes them later)
    #[arg(
        long = "k8s-keep-failed-pods",
        env = "PICULET_K8S_KEEP_FAILED_PODS",
        global = true,
        default_value = "false",
        value_name = "BOOL"
    )]
    pub keep_failed_pods: Option<String>,

    /// DNS domain of the cluster, for the service search entry
    #[arg(
        long = "k8s-cluster-domain",
        env = "PICULET_K8S_CLUSTER_DOMAIN",
        global = true,
        default_value = "cluster.local",
        value_name = "DOMAIN"
    )]
    pub cluster_domain: Option<String>,

    /// Default CPU request of step containers [default: none]
    #[arg(
        long = "k8s-cpu-request",
        env = "PICULET_K8S_CPU_REQUEST",
        global = true,
        value_name = "QUANTITY"
    )]
    pub cpu_request: Option<String>,

    /// Largest CPU request a step may ask for [default: no maximum]
    #[arg(
        long = "k8s-cpu-request-max",
        env = "PICULET_K8S_CPU_REQUEST_MAX",
        global = true,
        value_name = "QUANTITY"
    )]
    pub cpu_request_max: Option<String>,

    /// Default CPU limit of step containers [default: none]
    #[arg(
        long = "k8s-cpu-limit",
        env = "PICULET_K8S_CPU_LIMIT",
        global = true,
        value_name = "QUANTITY"
    )]
    pub cpu_limit: Option<String>,

    /// Largest CPU limit a step may ask for [default: no maximum]
    #[arg(
        long = "k8s-cpu-limit-max",
        env = "PICULET_K8S_CPU_LIMIT_MAX",
        global = true,
        value_name = "QUANTITY"
    )]
    pub cpu_limit_max: Option<String>,

    /// Default memory request of step containers [default: none]
    #[arg(
        long = "k8s-memory-request",
        env = "PICULET_K8S_MEMORY_REQUEST",
        global = true,
        value_name = "QUANTITY"
    )]
    pub memory_request: Option<String>,

    /// Largest memory request a step may ask for [default: no maximum]
    #[arg(
        long = "k8s-memory-request-max",
        env = "PICULET_K8S_MEMORY_REQUEST_MAX",
        global = true,
        value_name = "QUANTITY"
    )]
    pub memory_request_max: Option<String>,

    /// Default memory limit of step containers [default: none]
    #[arg(
        long = "k8s-memory-limit",
        env = "PICULET_K8S_MEMORY_LIMIT",
        global = true,
        value_name = "QUANTITY"
    )]
    pub memory_limit: Option<String>,

    /// Largest memory limit a step may ask for [default: no maximum]
    #[arg(
        long = "k8s-memory-limit-max",
        env = "PICULET_K8S_MEMORY_LIMIT_MAX",
        global = true,
        value_name = "QUANTITY"
    )]
    pub memory_limit_max: Option<String>,

    /// Default ephemeral storage request of step containers [default: none]
    #[arg(
        long = "k8s-ephemeral-storage-request",
        env = "PICULET_K8S_EPHEMERAL_STORAGE_REQUEST",
        global = true,
        value_name = "QUANTITY"
    )]
    pub ephemeral_storage_request: Option<String>,

    /// Largest ephemeral storage request a step may ask for [default: no maximum]
    #[arg(
        long = "k8s-ephemeral-storage-request-max",
        env = "PICULET_K8S_EPHEMERAL_STORAGE_REQUEST_MAX",
        global = true,
        value_name = "QUANTITY"
    )]
    pub ephemeral_storage_request_max: Option<String>,

    /// Default ephemeral storage limit of step containers [default: none]
    #[arg(
        long = "k8s-ephemeral-storage-limit",
        env = "PICULET_K8S_EPHEMERAL_STORAGE_LIMIT",
        global = true,
        value_name = "QUANTITY"
    )]
    pub ephemeral_storage_limit: Option<String>,

    /// Largest ephemeral storage limit a step may ask for [default: no maximum]
    #[arg(
        long = "k8s-ephemeral-storage-limit-max",
        env = "PICULET_K8S_EPHEMERAL_STORAGE_LIMIT_MAX",
        global = true,
        value_name = "QUANTITY"
    )]
    pub ephemeral_storage_limit_max: Option<String>,

    /// Default CPU request of service containers [default: none]
    #[arg(
        long = "k8s-service-cpu-request",
        env = "PICULET_K8S_SERVICE_CPU_REQUEST",
        global = true,
        value_name = "QUANTITY"
    )]
    pub service_cpu_request: Option<String>,

    /// Largest CPU request a service may ask for [default: no maximum]
    #[arg(
        long = "k8s-service-cpu-request-max",
        env = "PICULET_K8S_SERVICE_CPU_REQUEST_MAX",
        global = true,
        value_name = "QUANTITY"
    )]
    pub service_cpu_request_max: Option<String>,

    /// Default CPU limit of service containers [default: none]
    #[arg(
        long = "k8s-service-cpu-limit",
        env = "PICULET_K8S_SERVICE_CPU_LIMIT",
        global = true,
        value_name = "QUANTITY"
    )]
    pub service_cpu_limit: Option<String>,

    /// Largest CPU limit a service may ask for [default: no maximum]
    #[arg(
        long = "k8s-service-cpu-limit-max",
        env = "PICULET_K8S_SERVICE_CPU_LIMIT_MAX",
        global = true,
        value_name = "QUANTITY"
    )]
    pub service_cpu_limit_max: Option<String>,

    /// Default memory request of service containers [default: none]
    #[arg(
        long = "k8s-service-memory-request",
        env = "PICULET_K8S_SERVICE_MEMORY_REQUEST",
        global = true,
        value_name = "QUANTITY"
    )]
    pub service_memory_request: Option<String>,

    /// Largest memory request a service may ask for [default: no maximum]
    #[arg(
        long = "k8s-service-memory-request-max",
        env = "PICULET_K8S_SERVICE_MEMORY_REQUEST_MAX",
        global = true,
        value_name = "QUANTITY"
    )]
    pub service_memory_request_max: Option<String>,

    /// Default memory limit of service containers [default: none]
    #[arg(
        long = "k8s-service-memory-limit",
        env = "PICULET_K8S_SERVICE_MEMORY_LIMIT",
        global = true,
        value_name = "QUANTITY"
    )]
    pub service_memory_limit: Option<String>,

    /// Largest memory limit a service may ask for [default: no maximum]
    #[arg(
        long = "k8s-service-memory-limit-max",
        env = "PICULET_K8S_SERVICE_MEMORY_LIMIT_MAX",
        global = true,
        value_name = "QUANTITY"
    )]
    pub service_memory_limit_max: Option<String>,

    /// Default ephemeral storage request of service containers [default: none]
    #[arg(
        long = "k8s-service-ephemeral-storage-request",
        env = "PICULET_K8S_SERVICE_EPHEMERAL_STORAGE_REQUEST",
        global = true,
        value_name = "QUANTITY"
    )]
    pub service_ephemeral_storage_request: Option<String>,

    /// Largest ephemeral storage request a service may ask for [default: no maximum]
    #[arg(
        long = "k8s-service-ephemeral-storage-request-max",
        env = "PICULET_K8S_SERVICE_EPHEMERAL_STORAGE_REQUEST_MAX",
        global = true,
        value_name = "QUANTITY"
    )]
    pub service_ephemeral_storage_request_max: Option<String>,

    /// Default ephemeral storage limit of service containers [default: none]
    #[arg(
        long = "k8s-service-ephemeral-storage-limit",
        env = "PICULET_K8S_SERVICE_EPHEMERAL_STORAGE_LIMIT",
        global = true,
        value_name = "QUANTITY"
    )]
    pub service_ephemeral_storage_limit: Option<String>,

    /// Largest ephemeral storage limit a service may ask for [default: no maximum]
    #[arg(
        long = "k8s-service-ephemeral-storage-limit-max",
        env = "PICULET_K8S_SERVICE_EPHEMERAL_STORAGE_LIMIT_MAX",
        global = true,
        value_name = "QUANTITY"
    )]
    pub service_ephemeral_storage_limit_max: Option<String>,

    /// Default CPU request of clone containers [default: none]
    #[arg(
        long = "k8s-clone-cpu-request",
        env = "PICULET_K8S_CLONE_CPU_REQUEST",
        global = true,
        value_name = "QUANTITY"
    )]
    pub clone_cpu_request: Option<String>,

    /// Largest CPU request a clone may ask for [default: no maximum]
    #[arg(
        long = "k8s-clone-cpu-request-max",
        env = "PICULET_K8S_CLONE_CPU_REQUEST_MAX",
        global = true,
        value_name = "QUANTITY"
    )]
    pub clone_cpu_request_max: Option<String>,

    /// Default CPU limit of clone containers [default: none]
    #[arg(
        long = "k8s-clone-cpu-limit",
        env = "PICULET_K8S_CLONE_CPU_LIMIT",
        global = true,
        value_name = "QUANTITY"
    )]
    pub clone_cpu_limit: Option<String>,

    /// Largest CPU limit a clone may ask for [default: no maximum]
    #[arg(
        long = "k8s-clone-cpu-limit-max",
        env = "PICULET_K8S_CLONE_CPU_LIMIT_MAX",
        global = true,
        value_name = "QUANTITY"
    )]
    pub clone_cpu_limit_max: Option<String>,

    /// Default memory request of clone containers [default: none]
    #[arg(
        long = "k8s-clone-memory-request",
        env = "PICULET_K8S_CLONE_MEMORY_REQUEST",
        global = true,
        value_name = "QUANTITY"
    )]
    pub clone_memory_request: Option<String>,

    /// Largest memory request a clone may ask for [default: no maximum]
    #[arg(
        long = "k8s-clone-memory-request-max",
        env = "PICULET_K8S_CLONE_MEMORY_REQUEST_MAX",
        global = true,
        value_name = "QUANTITY"
    )]
    pub clone_memory_request_max: Option<String>,

    /// Default memory limit of clone containers [default: none]
    #[arg(
        long = "k8s-clone-memory-limit",
        env = "PICULET_K8S_CLONE_MEMORY_LIMIT",
        global = true,
        value_name = "QUANTITY"
    )]
    pub clone_memory_limit: Option<String>,

    /// Largest memory limit a clone may ask for [default: no maximum]
    #[arg(
        long = "k8s-clone-memory-limit-max",
        env = "PICULET_K8S_CLONE_MEMORY_LIMIT_MAX",
        global = true,
        value_name = "QUANTITY"
    )]
    pub clone_memory_limit_max: Option<String>,

    /// Default ephemeral storage request of clone containers [default: none]
    #[arg(
        long = "k8s-clone-ephemeral-storage-request",
        env = "PICULET_K8S_CLONE_EPHEMERAL_STORAGE_REQUEST",
        global = true,
        value_name = "QUANTITY"
    )]
    pub clone_ephemeral_storage_request: Option<String>,

    /// Largest ephemeral storage request a clone may ask for [default: no maximum]
    #[arg(
        long = "k8s-clone-ephemeral-storage-request-max",
        env = "PICULET_K8S_CLONE_EPHEMERAL_STORAGE_REQUEST_MAX",
        global = true,
        value_name = "QUANTITY"
    )]
    pub clone_ephemeral_storage_request_max: Option<String>,

    /// Default ephemeral storage limit of clone containers [default: none]
    #[arg(
        long = "k8s-clone-ephemeral-storage-limit",
        env = "PICULET_K8S_CLONE_EPHEMERAL_STORAGE_LIMIT",
        global = true,
        value_name = "QUANTITY"
    )]
    pub clone_ephemeral_storage_limit: Option<String>,

    /// Largest ephemeral storage limit a clone may ask for [default: no maximum]
    #[arg(
        long = "k8s-clone-ephemeral-storage-limit-max",
        env = "PICULET_K8S_CLONE_EPHEMERAL_STORAGE_LIMIT_MAX",
        global = true,
        value_name = "QUANTITY"
    )]
    pub clone_ephemeral_storage_limit_max: Option<String>,
}

/// A setting that cannot be used; displays as one line:
/// `--k8s-namespace (PICULET_K8S_NAMESPACE): <what is wrong and what to write>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SettingError {
    /// The setting's field name (`namespace`, `cpu_limit_max`, …).
    pub setting: &'static str,
    pub message: String,
}

impl SettingError {
    fn new(setting: &'static str, message: impl Into<String>) -> SettingError {
        let message: String = message.into();
        // One line, whatever a library's error text looks like.
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        SettingError { setting, message }
    }

    /// `--k8s-namespace (PICULET_K8S_NAMESPACE)`.
    pub fn setting_name(&self) -> String {
        setting_name(self.setting)
    }
}

/// How a setting is named in messages: its flag and its environment variable.
pub fn setting_name(field: &str) -> String {
    format!("--k8s-{} ({})", field.replace('_', "-"), env_name(field))
}

/// `PICULET_K8S_<FIELD>`.
pub fn env_name(field: &str) -> String {
    format!("PICULET_K8S_{}", field.to_ascii_uppercase())
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting_name(), self.message)
    }
}

/// The Pod Security Standard every rendered pod meets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PodSecurity {
    #[default]
    Baseline,
    Restricted,
}

/// A `backend_options.kubernetes` field a step may set only when the administrator allows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StepField {
    NodeSelector,
    Tolerations,
    Affinity,
    ServiceAccountName,
    RuntimeClassName,
    Labels,
    Annotations,
    HostUsers,
    Secrets,
}

impl StepField {
    pub const ALL: [StepField; 9] = [
        StepField::NodeSelector,
        StepField::Tolerations,
        StepField::Affinity,
        StepField::ServiceAccountName,
        StepField::RuntimeClassName,
        StepField::Labels,
        StepField::Annotations,
        StepField::HostUsers,
        StepField::Secrets,
    ];

    /// The field's name in `backend_options.kubernetes`.
    pub fn name(self) -> &'static str {
        match self {
            StepField::NodeSelector => "nodeSelector",
            StepField::Tolerations => "tolerations",
            StepField::Affinity => "affinity",
            StepField::ServiceAccountName => "serviceAccountName",
            StepField::RuntimeClassName => "runtimeClassName",
            StepField::Labels => "labels",
            StepField::Annotations => "annotations",
            StepField::HostUsers => "hostUsers",
            StepField::Secrets => "secrets",
        }
    }

    /// Reads a field name; case, `_` and `-` do not matter (`node_selector` = `nodeSelector`).
    pub fn parse(text: &str) -> Option<StepField> {
        let norm = |s: &str| -> String {
            s.chars()
                .filter(|c| *c != '_' && *c != '-')
                .flat_map(char::to_lowercase)
                .collect()
        };
        let t = norm(text);
        StepField::ALL.into_iter().find(|f| norm(f.name()) == t)
    }
}

/// Glob patterns (`docker.io/plugins/*`), kept with their text for messages.
#[derive(Clone, Debug, Default)]
pub struct GlobList {
    patterns: Vec<String>,
    set: GlobSet,
}

impl GlobList {
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn is_match(&self, text: &str) -> bool {
        self.set.is_match(text)
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

/// A request or limit default with its maximum, for one resource of one container class.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceBounds {
    pub request: Option<Quantity>,
    pub request_max: Option<Quantity>,
    pub limit: Option<Quantity>,
    pub limit_max: Option<Quantity>,
}

/// Defaults and maxima of one container class (step, service or clone).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourcePolicy {
    pub cpu: ResourceBounds,
    pub memory: ResourceBounds,
    pub ephemeral_storage: ResourceBounds,
}

impl ResourcePolicy {
    /// The resources piculet has defaults and maxima for, with their Kubernetes name.
    pub fn each(&self) -> [(&'static str, &ResourceBounds); 3] {
        [
            ("cpu", &self.cpu),
            ("memory", &self.memory),
            ("ephemeral-storage", &self.ephemeral_storage),
        ]
    }
}

/// An administrator volume, mounted into every pod.
#[derive(Clone, Debug, PartialEq)]
pub struct AdminVolume {
    /// `host_path`, `pvc`, `config_map`, `secret`, `empty_dir` or `csi`.
    pub kind: &'static str,
    pub volume: Volume,
    pub mount: VolumeMount,
}

/// The typed, checked configuration of the Kubernetes backend.
#[derive(Clone, Debug)]
pub struct KubernetesConfig {
    pub namespace: String,
    pub namespace_overwrite_allowed: Option<Regex>,
    pub volume_size: Quantity,
    pub storage_class: Option<String>,
    pub storage_rwx: bool,
    pub pod_labels: BTreeMap<String, String>,
    pub pod_annotations: BTreeMap<String, String>,
    pub annotations_overwrite_allowed: Option<Regex>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    pub service_account: Option<String>,
    pub service_account_overwrite_allowed: Option<Regex>,
    pub runtime_class: Option<String>,
    pub secctx_nonroot: bool,
    pub pod_security: PodSecurity,
    pub allow_from_step: BTreeSet<StepField>,
    pub privileged_images: GlobList,
    pub allowed_claims: GlobList,
    pub pull_secret_names: Vec<String>,
    /// Tried in order when a pull fails; the first is rendered.
    pub pull_policies: Vec<String>,
    pub priority_class: Option<String>,
    pub dns_policy: Option<String>,
    pub dns_config: Option<PodDNSConfig>,
    pub termination_grace_period: Option<i64>,
    pub volumes: Vec<AdminVolume>,
    pub clone_image: String,
    pub start_timeout: Duration,
    /// How long a log read is retried through an outage.
    pub log_retry_timeout: Duration,
    /// The user and group of pods that must run as non-root, when the step names none;
    /// `None`: the image's own.
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub qps: f32,
    pub burst: u32,
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub keep_failed_pods: bool,
    pub cluster_domain: String,
    pub step_resources: ResourcePolicy,
    pub service_resources: ResourcePolicy,
    pub clone_resources: ResourcePolicy,
}

type Res<T> = Result<T, SettingError>;

/// The defaults declared on the fields of [`KubernetesSettings`], by field name.
static DEFAULTS: LazyLock<BTreeMap<String, String>> = LazyLock::new(|| {
    KubernetesSettings::augment_args(clap::Command::new("kubernetes"))
        .get_arguments()
        .filter_map(|arg| {
            let default = arg.get_default_values().first()?.to_str()?;
            Some((arg.get_id().to_string(), default.to_string()))
        })
        .collect()
});

/// The setting's text, trimmed, else its declared default: empty counts as not set. `None`
/// for a setting not set that has no declared default.
fn text(field: &'static str, value: &Option<String>) -> Option<(&'static str, String)> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .or_else(|| LazyLock::force(&DEFAULTS).get(field).map(String::as_str))
        .map(|t| (field, t.to_string()))
}

/// The text of a setting that has a declared default.
fn with_default(field: &'static str, value: &Option<String>) -> Res<(&'static str, String)> {
    text(field, value).ok_or_else(|| undeclared(field))
}

/// A setting the parser needs a value of has no declared default: every start-up would stop
/// here, naming it.
fn undeclared(field: &'static str) -> SettingError {
    SettingError::new(field, "has no value and no default")
}

fn boolean(field: &'static str, value: &Option<String>) -> Res<bool> {
    let (f, t) = with_default(field, value)?;
    match t.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(SettingError::new(
            f,
            format!("\"{t}\" is not a boolean; write true or false"),
        )),
    }
}

fn regex(field: &'static str, value: &Option<String>) -> Res<Option<Regex>> {
    let Some((f, t)) = text(field, value) else {
        return Ok(None);
    };
    // Anchored: a pattern allows what it matches in full, not any name containing a match.
    Regex::new(&format!("^(?:{t})$")).map(Some).map_err(|e| {
        let detail = e
            .to_string()
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("invalid syntax")
            .trim()
            .trim_start_matches("error: ")
            .to_string();
        SettingError::new(
            f,
            format!("\"{t}\" is not a regular expression ({detail}); write one such as ^ci-.*$, or leave it empty to disable"),
        )
    })
}

fn list(value: &Option<String>) -> Vec<String> {
    value
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn globs(field: &'static str, value: &Option<String>) -> Res<GlobList> {
    let patterns = list(value);
    let mut b = GlobSetBuilder::new();
    for p in &patterns {
        let g = Glob::new(p).map_err(|e| {
            SettingError::new(field, format!("\"{p}\" is not a glob pattern ({e}); write patterns such as docker.io/plugins/*, separated by commas"))
        })?;
        b.add(g);
    }
    let set = b
        .build()
        .map_err(|e| SettingError::new(field, format!("invalid glob patterns: {e}")))?;
    Ok(GlobList { patterns, set })
}

/// A string map as a JSON object or `k=v,k=v`, keys and values checked as labels.
fn label_map(
    field: &'static str,
    value: &Option<String>,
    values_are_labels: bool,
) -> Res<BTreeMap<String, String>> {
    let Some((f, t)) = text(field, value) else {
        return Ok(BTreeMap::new());
    };
    let map: BTreeMap<String, String> = if t.starts_with('{') {
        let v: BTreeMap<String, serde_json::Value> = serde_json::from_str(&t).map_err(|e| {
            SettingError::new(
                f,
                format!(
                    "invalid JSON object ({e}); write {{\"key\":\"value\"}} or key=value,key=value"
                ),
            )
        })?;
        v.into_iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect()
    } else {
        let mut m = BTreeMap::new();
        for item in list(value) {
            let Some((k, v)) = item.split_once('=') else {
                return Err(SettingError::new(
                    f,
                    format!("\"{item}\" has no '='; write key=value,key=value or a JSON object"),
                ));
            };
            m.insert(k.trim().to_string(), v.trim().to_string());
        }
        m
    };
    for (k, v) in &map {
        labels::check_key(k).map_err(|m| SettingError::new(f, m))?;
        if labels::is_reserved(k) {
            return Err(SettingError::new(
                f,
                format!("\"{k}\" is piculet's own key; choose another"),
            ));
        }
        if values_are_labels {
            labels::check_value(v).map_err(|m| SettingError::new(f, m))?;
        }
    }
    Ok(map)
}

fn quantity(field: &'static str, value: &Option<String>) -> Res<Option<Quantity>> {
    let Some((f, t)) = text(field, value) else {
        return Ok(None);
    };
    Quantity::parse(&t)
        .map(Some)
        .map_err(|m| SettingError::new(f, m))
}

fn dns_subdomain(field: &'static str, value: &Option<String>, what: &str) -> Res<Option<String>> {
    let Some((f, t)) = text(field, value) else {
        return Ok(None);
    };
    let ok = t.len() <= 253 && t.split('.').all(names::is_dns_label);
    if ok {
        Ok(Some(t))
    } else {
        Err(SettingError::new(
            f,
            format!(
                "\"{t}\" is not a valid {what} name: lowercase letters, digits, '-' and '.', at most 253 characters"
            ),
        ))
    }
}

/// A non-root user or group id, or `image` for the image's own. (The declared default, 1000,
/// is what Woodpecker's SECCTX_NONROOT uses and what most images that run as non-root pick.)
fn run_as_id(field: &'static str, value: &Option<String>) -> Res<Option<i64>> {
    let (f, t) = with_default(field, value)?;
    if t.eq_ignore_ascii_case("image") {
        return Ok(None);
    }
    match t.parse::<i64>() {
        Ok(n) if n > 0 && n <= i64::from(u32::MAX) => Ok(Some(n)),
        Ok(0) => Err(SettingError::new(
            f,
            "0 is root, which non-root pods cannot run as; write a non-zero id or image",
        )),
        _ => Err(SettingError::new(
            f,
            format!("\"{t}\" is not an id; write a number from 1 to 4294967295, or image"),
        )),
    }
}

fn duration_setting(field: &'static str, value: &Option<String>) -> Res<Option<Duration>> {
    let Some((f, t)) = text(field, value) else {
        return Ok(None);
    };
    duration::parse(&t)
        .map(Some)
        .map_err(|m| SettingError::new(f, m))
}

fn required_duration(field: &'static str, value: &Option<String>) -> Res<Duration> {
    let (f, t) = with_default(field, value)?;
    duration::parse(&t).map_err(|m| SettingError::new(f, m))
}

fn resource_bounds(
    [request, request_max, limit, limit_max]: [(&'static str, &Option<String>); 4],
) -> Res<ResourceBounds> {
    let b = ResourceBounds {
        request: quantity(request.0, request.1)?,
        request_max: quantity(request_max.0, request_max.1)?,
        limit: quantity(limit.0, limit.1)?,
        limit_max: quantity(limit_max.0, limit_max.1)?,
    };
    let over = |d: &Option<Quantity>,
                m: &Option<Quantity>,
                field: &'static str,
                max_field: &'static str|
     -> Res<()> {
        if let (Some(d), Some(m)) = (d, m)
            && d > m
        {
            return Err(SettingError::new(
                field,
                format!(
                    "the default {d} is above the maximum {m} of {}; lower one or raise the other",
                    env_name(max_field)
                ),
            ));
        }
        Ok(())
    };
    over(&b.request, &b.request_max, request.0, request_max.0)?;
    over(&b.limit, &b.limit_max, limit.0, limit_max.0)?;
    if let (Some(r), Some(l)) = (&b.request, &b.limit)
        && r > l
    {
        return Err(SettingError::new(
            request.0,
            format!(
                "the default request {r} is above the default limit {l} of {}; a request cannot exceed its limit",
                env_name(limit.0)
            ),
        ));
    }
    Ok(b)
}

macro_rules! bounds {
    ($s:expr, $req:ident, $reqm:ident, $lim:ident, $limm:ident) => {
        resource_bounds([
            (stringify!($req), &$s.$req),
            (stringify!($reqm), &$s.$reqm),
            (stringify!($lim), &$s.$lim),
            (stringify!($limm), &$s.$limm),
        ])?
    };
}

/// The namespace of every object: a DNS label.
fn namespace(s: &KubernetesSettings) -> Res<String> {
    let namespace = match with_default("namespace", &s.namespace)? {
        (_, t) if names::is_dns_label(&t) => t,
        (f, t) => {
            return Err(SettingError::new(
                f,
                format!(
                    "\"{t}\" is not a namespace name: lowercase letters, digits and '-', at most 63 characters"
                ),
            ));
        }
    };
    Ok(namespace)
}

/// The Pod Security Standard the pods meet.
fn pod_security(s: &KubernetesSettings) -> Res<PodSecurity> {
    let (f, t) = with_default("pod_security", &s.pod_security)?;
    let pod_security = match t.to_ascii_lowercase().as_str() {
        "baseline" => PodSecurity::Baseline,
        "restricted" => PodSecurity::Restricted,
        _ => {
            return Err(SettingError::new(
                f,
                format!(
                    "\"{t}\" is not a Pod Security Standard piculet meets; write baseline or restricted"
                ),
            ));
        }
    };
    Ok(pod_security)
}

/// The step fields the administrator allows; an unknown one is refused with the nearest
/// known name.
fn allow_from_step(s: &KubernetesSettings) -> Res<BTreeSet<StepField>> {
    let mut allow_from_step = BTreeSet::new();
    for name in list(&s.allow_from_step) {
        match StepField::parse(&name) {
            Some(field) => {
                allow_from_step.insert(field);
            }
            None => {
                let known: Vec<&str> = StepField::ALL.iter().map(|f| f.name()).collect();
                let hint = known
                    .iter()
                    .map(|k| (strsim::jaro_winkler(k, &name), *k))
                    .filter(|(score, _)| *score > 0.8)
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, k)| format!("did you mean \"{k}\"? "))
                    .unwrap_or_default();
                return Err(SettingError::new(
                    "allow_from_step",
                    format!(
                        "\"{name}\" is not a step field piculet can allow; {hint}write some of {}",
                        known.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(allow_from_step)
}

/// The administrator's tolerations: a JSON list, with operators and effects Kubernetes knows.
fn tolerations(s: &KubernetesSettings) -> Res<Vec<Toleration>> {
    let tolerations: Vec<Toleration> = match text("tolerations", &s.tolerations) {
        None => Vec::new(),
        Some((f, t)) => {
            let list: Vec<Toleration> = serde_json::from_str(&t).map_err(|e| {
                SettingError::new(f, format!("invalid tolerations ({e}); write a JSON list such as [{{\"key\":\"ci\",\"operator\":\"Exists\",\"effect\":\"NoSchedule\"}}]"))
            })?;
            for tol in &list {
                if let Some(op) = &tol.operator
                    && op != "Exists"
                    && op != "Equal"
                {
                    return Err(SettingError::new(
                        f,
                        format!("operator \"{op}\" is not Exists or Equal"),
                    ));
                }
                if let Some(e) = &tol.effect
                    && !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&e.as_str())
                {
                    return Err(SettingError::new(
                        f,
                        format!("effect \"{e}\" is not NoSchedule, PreferNoSchedule or NoExecute"),
                    ));
                }
            }
            list
        }
    };
    Ok(tolerations)
}

/// The administrator's DNS config: a JSON object of at most 3 nameservers.
fn dns_config(s: &KubernetesSettings) -> Res<Option<PodDNSConfig>> {
    let dns_config: Option<PodDNSConfig> = match text("dns_config", &s.dns_config) {
        None => None,
        Some((f, t)) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct DnsOption {
                name: String,
                value: Option<String>,
            }
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Dns {
                #[serde(default)]
                nameservers: Vec<String>,
                #[serde(default)]
                searches: Vec<String>,
                #[serde(default)]
                options: Vec<DnsOption>,
            }
            let d: Dns = serde_json::from_str(&t).map_err(|e| {
                SettingError::new(f, format!("invalid DNS config ({e}); write a JSON object such as {{\"nameservers\":[\"10.0.0.10\"],\"searches\":[\"ci.example.com\"],\"options\":[{{\"name\":\"ndots\",\"value\":\"2\"}}]}}"))
            })?;
            if d.nameservers.len() > 3 {
                return Err(SettingError::new(
                    f,
                    "at most 3 nameservers are allowed by Kubernetes",
                ));
            }
            Some(PodDNSConfig {
                nameservers: (!d.nameservers.is_empty()).then_some(d.nameservers),
                searches: (!d.searches.is_empty()).then_some(d.searches),
                options: (!d.options.is_empty()).then(|| {
                    d.options
                        .into_iter()
                        .map(|o| k8s_openapi::api::core::v1::PodDNSConfigOption {
                            name: Some(o.name),
                            value: o.value,
                        })
                        .collect()
                }),
            })
        }
    };
    Ok(dns_config)
}

/// The pull secrets' names: Secret names.
fn pull_secret_names(s: &KubernetesSettings) -> Res<Vec<String>> {
    let mut pull_secret_names = Vec::new();
    for n in list(&s.pull_secret_names) {
        let ok = n.len() <= 253 && n.split('.').all(names::is_dns_label);
        if !ok {
            return Err(SettingError::new(
                "pull_secret_names",
                format!("\"{n}\" is not a Secret name: lowercase letters, digits, '-' and '.'"),
            ));
        }
        pull_secret_names.push(n);
    }
    Ok(pull_secret_names)
}

/// The clone step's image: an image reference, without white space.
fn clone_image(s: &KubernetesSettings) -> Res<String> {
    let clone_image = match with_default("clone_image", &s.clone_image)? {
        (f, t) if t.chars().any(char::is_whitespace) => {
            return Err(SettingError::new(
                f,
                format!("\"{t}\" is not an image reference: it contains white space"),
            ));
        }
        (_, t) => t,
    };
    Ok(clone_image)
}

/// The client's requests per second to the API server.
fn qps(s: &KubernetesSettings) -> Res<f32> {
    let (f, t) = with_default("qps", &s.qps)?;
    let qps = match t.parse::<f32>() {
        Ok(v) if v.is_finite() && v > 0.0 => v,
        _ => {
            return Err(SettingError::new(
                f,
                format!("\"{t}\" is not a positive number of requests per second"),
            ));
        }
    };
    Ok(qps)
}

/// The client's burst of requests above `qps`.
fn burst(s: &KubernetesSettings) -> Res<u32> {
    let (f, t) = with_default("burst", &s.burst)?;
    let burst = match t.parse::<u32>() {
        Ok(v) if v > 0 => v,
        _ => {
            return Err(SettingError::new(
                f,
                format!("\"{t}\" is not a positive whole number"),
            ));
        }
    };
    Ok(burst)
}

/// Refuses what breaks the restricted Pod Security Standard, when that is the one to meet.
fn check_restricted(
    pod_security: PodSecurity,
    privileged_images: &GlobList,
    volumes: &[AdminVolume],
) -> Res<()> {
    if pod_security == PodSecurity::Restricted {
        if !privileged_images.is_empty() {
            return Err(SettingError::new(
                "privileged_images",
                "privileged containers break the restricted Pod Security Standard; leave this empty or set PICULET_K8S_POD_SECURITY=baseline",
            ));
        }
        if let Some(v) = volumes.iter().find(|v| v.kind == "host_path") {
            return Err(SettingError::new(
                "volumes",
                format!(
                    "volume \"{}\": host_path volumes break the restricted Pod Security Standard; use another type or set PICULET_K8S_POD_SECURITY=baseline",
                    v.mount.name
                ),
            ));
        }
    }
    Ok(())
}

/// The resource bounds of steps, services and clone steps.
fn resource_policies(
    s: &KubernetesSettings,
) -> Res<(ResourcePolicy, ResourcePolicy, ResourcePolicy)> {
    let step_resources = ResourcePolicy {
        cpu: bounds!(s, cpu_request, cpu_request_max, cpu_limit, cpu_limit_max),
        memory: bounds!(
            s,
            memory_request,
            memory_request_max,
            memory_limit,
            memory_limit_max
        ),
        ephemeral_storage: bounds!(
            s,
            ephemeral_storage_request,
            ephemeral_storage_request_max,
            ephemeral_storage_limit,
            ephemeral_storage_limit_max
        ),
    };
    let service_resources = ResourcePolicy {
        cpu: bounds!(
            s,
            service_cpu_request,
            service_cpu_request_max,
            service_cpu_limit,
            service_cpu_limit_max
        ),
        memory: bounds!(
            s,
            service_memory_request,
            service_memory_request_max,
            service_memory_limit,
            service_memory_limit_max
        ),
        ephemeral_storage: bounds!(
            s,
            service_ephemeral_storage_request,
            service_ephemeral_storage_request_max,
            service_ephemeral_storage_limit,
            service_ephemeral_storage_limit_max
        ),
    };
    let clone_resources = ResourcePolicy {
        cpu: bounds!(
            s,
            clone_cpu_request,
            clone_cpu_request_max,
            clone_cpu_limit,
            clone_cpu_limit_max
        ),
        memory: bounds!(
            s,
            clone_memory_request,
            clone_memory_request_max,
            clone_memory_limit,
            clone_memory_limit_max
        ),
        ephemeral_storage: bounds!(
            s,
            clone_ephemeral_storage_request,
            clone_ephemeral_storage_request_max,
            clone_ephemeral_storage_limit,
            clone_ephemeral_storage_limit_max
        ),
    };
    Ok((step_resources, service_resources, clone_resources))
}

/// The administrator volume syntax of `PICULET_K8S_VOLUMES`: a flat object per volume.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeSpec {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    mount_path: String,
    #[serde(default)]
    read_only: bool,
    sub_path: Option<String>,
    /// host_path
    path: Option<String>,
    host_path_type: Option<String>,
    /// pvc
    claim_name: Option<String>,
    /// config_map
    config_map_name: Option<String>,
    /// secret
    secret_name: Option<String>,
    /// config_map, secret
    items: Option<BTreeMap<String, String>>,
    /// empty_dir
    medium: Option<String>,
    size_limit: Option<String>,
    /// csi
    driver: Option<String>,
    fs_type: Option<String>,
    #[serde(default)]
    volume_attributes: BTreeMap<String, String>,
}

/// Volume names piculet uses itself inside a pod.
pub fn is_reserved_volume_name(name: &str) -> bool {
    name == names::WORKSPACE_VOLUME || name.starts_with("claim-") || name.starts_with("secret-")
}

fn admin_volumes(field: &'static str, value: &Option<String>) -> Res<Vec<AdminVolume>> {
    let Some((f, t)) = text(field, value) else {
        return Ok(Vec::new());
    };
    let specs: Vec<VolumeSpec> = serde_json::from_str(&t).map_err(|e| {
        SettingError::new(f, format!("invalid volume list ({e}); write a JSON list such as [{{\"name\":\"cache\",\"type\":\"pvc\",\"claim_name\":\"ci-cache\",\"mount_path\":\"/cache\"}}]"))
    })?;
    let mut out = Vec::new();
    let mut seen_names = BTreeSet::new();
    let mut seen_paths = BTreeSet::new();
    for s in specs {
        let err = |m: String| SettingError::new(f, format!("volume \"{}\": {m}", s.name));
        if !names::is_dns_label(&s.name) || is_reserved_volume_name(&s.name) {
            return Err(err("the name must be a DNS label (lowercase letters, digits and '-') other than workspace, claim-* and secret-*".into()));
        }
        if !seen_names.insert(s.name.clone()) {
            return Err(err("the name is used twice".into()));
        }
        if !s.mount_path.starts_with('/') {
            return Err(err(format!(
                "mount_path \"{}\" must be an absolute path",
                s.mount_path
            )));
        }
        if !seen_paths.insert(s.mount_path.clone()) {
            return Err(err(format!(
                "mount_path \"{}\" is used twice",
                s.mount_path
            )));
        }
        let given = given_keys(&s);
        let (kind, allowed, mut volume) = volume_source(&s, &err)?;
        if let Some(extra) = given.iter().find(|k| !allowed.contains(k)) {
            return Err(err(format!("\"{extra}\" does not apply to type {kind}")));
        }
        volume.name = s.name.clone();
        out.push(AdminVolume {
            kind,
            volume,
            mount: VolumeMount {
                name: s.name.clone(),
                mount_path: s.mount_path.clone(),
                read_only: s.read_only.then_some(true),
                sub_path: s.sub_path.clone(),
                ..Default::default()
            },
        });
    }
    Ok(out)
}

/// The type-specific keys a volume gives.
fn given_keys(s: &VolumeSpec) -> Vec<&'static str> {
    // Which type-specific keys each type takes; any other is a mistake worth reporting.
    [
        ("path", s.path.is_some()),
        ("host_path_type", s.host_path_type.is_some()),
        ("claim_name", s.claim_name.is_some()),
        ("config_map_name", s.config_map_name.is_some()),
        ("secret_name", s.secret_name.is_some()),
        ("items", s.items.is_some()),
        ("medium", s.medium.is_some()),
        ("size_limit", s.size_limit.is_some()),
        ("driver", s.driver.is_some()),
        ("fs_type", s.fs_type.is_some()),
        ("volume_attributes", !s.volume_attributes.is_empty()),
    ]
    .into_iter()
    .filter_map(|(k, g)| g.then_some(k))
    .collect()
}

/// A volume's type, the type-specific keys it takes, and its source.
type VolumeSource = (&'static str, &'static [&'static str], Volume);

/// The source of a volume of the administrator's, by its type.
fn volume_source(s: &VolumeSpec, err: &dyn Fn(String) -> SettingError) -> Res<VolumeSource> {
    let need = |v: &Option<String>, key: &str| required(s, v, key, err);
    let items = |m: &Option<BTreeMap<String, String>>| {
        m.as_ref().map(|m| {
            m.iter()
                .map(|(k, p)| k8s_openapi::api::core::v1::KeyToPath {
                    key: k.clone(),
                    path: p.clone(),
                    ..Default::default()
                })
                .collect()
        })
    };
    let source: VolumeSource = match s.kind.as_str() {
        "host_path" => host_path_volume(s, err)?,
        "pvc" => (
            "pvc",
            &["claim_name"],
            Volume {
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: need(&s.claim_name, "claim_name")?,
                    read_only: s.read_only.then_some(true),
                }),
                ..Default::default()
            },
        ),
        "config_map" => (
            "config_map",
            &["config_map_name", "items"],
            Volume {
                config_map: Some(ConfigMapVolumeSource {
                    name: need(&s.config_map_name, "config_map_name")?,
                    items: items(&s.items),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        "secret" => (
            "secret",
            &["secret_name", "items"],
            Volume {
                secret: Some(SecretVolumeSource {
                    secret_name: Some(need(&s.secret_name, "secret_name")?),
                    items: items(&s.items),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        "empty_dir" => empty_dir_volume(s, err)?,
        "csi" => (
            "csi",
            &["driver", "fs_type", "volume_attributes"],
            Volume {
                csi: Some(CSIVolumeSource {
                    driver: need(&s.driver, "driver")?,
                    fs_type: s.fs_type.clone(),
                    read_only: s.read_only.then_some(true),
                    volume_attributes: (!s.volume_attributes.is_empty())
                        .then(|| s.volume_attributes.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        other => {
            return Err(err(format!(
                "type \"{other}\" is not one of host_path, pvc, config_map, secret, empty_dir, csi"
            )));
        }
    };
    Ok(source)
}

/// A type-specific key the volume's type needs.
fn required(
    s: &VolumeSpec,
    value: &Option<String>,
    key: &str,
    err: &dyn Fn(String) -> SettingError,
) -> Res<String> {
    value
        .clone()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| err(format!("type {} needs \"{key}\"", s.kind)))
}

/// A `host_path` volume, of a type Kubernetes knows.
fn host_path_volume(s: &VolumeSpec, err: &dyn Fn(String) -> SettingError) -> Res<VolumeSource> {
    if let Some(t) = &s.host_path_type {
        const TYPES: [&str; 7] = [
            "DirectoryOrCreate",
            "Directory",
            "FileOrCreate",
            "File",
            "Socket",
            "CharDevice",
            "BlockDevice",
        ];
        if !TYPES.contains(&t.as_str()) {
            return Err(err(format!(
                "host_path_type \"{t}\" is not one of {}",
                TYPES.join(", ")
            )));
        }
    }
    Ok((
        "host_path",
        &["path", "host_path_type"],
        Volume {
            host_path: Some(HostPathVolumeSource {
                path: required(s, &s.path, "path", err)?,
                type_: s.host_path_type.clone(),
            }),
            ..Default::default()
        },
    ))
}

/// An `empty_dir` volume, in memory or on the node's disk.
fn empty_dir_volume(s: &VolumeSpec, err: &dyn Fn(String) -> SettingError) -> Res<VolumeSource> {
    let size_limit = match &s.size_limit {
        Some(q) => Some(
            Quantity::parse(q)
                .map_err(|m| err(format!("size_limit: {m}")))?
                .to_k8s(),
        ),
        None => None,
    };
    if let Some(m) = &s.medium
        && m != "Memory"
        && !m.is_empty()
    {
        return Err(err(format!("medium \"{m}\" is not Memory or empty")));
    }
    Ok((
        "empty_dir",
        &["medium", "size_limit"],
        Volume {
            empty_dir: Some(EmptyDirVolumeSource {
                medium: s.medium.clone(),
                size_limit,
                ..Default::default()
            }),
            ..Default::default()
        },
    ))
}

fn pull_policies(field: &'static str, value: &Option<String>) -> Res<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for p in list(value) {
        // GitLab Runner's spelling (if-not-present) is accepted too.
        let norm = match p.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "always" => "Always",
            "ifnotpresent" => "IfNotPresent",
            "never" => "Never",
            _ => {
                return Err(SettingError::new(
                    field,
                    format!(
                        "\"{p}\" is not a pull policy; write Always, IfNotPresent or Never, separated by commas"
                    ),
                ));
            }
        };
        if out.iter().any(|o| o == norm) {
            return Err(SettingError::new(field, format!("{norm} is listed twice")));
        }
        out.push(norm.to_string());
    }
    Ok(out)
}

fn dns_policy(field: &'static str, value: &Option<String>) -> Res<Option<String>> {
    let Some((f, t)) = text(field, value) else {
        return Ok(None);
    };
    let norm = match t.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
        "clusterfirst" => "ClusterFirst",
        "default" => "Default",
        "clusterfirstwithhostnet" => "ClusterFirstWithHostNet",
        "none" => "None",
        _ => {
            return Err(SettingError::new(
                f,
                format!(
                    "\"{t}\" is not a DNS policy; write ClusterFirst, Default, ClusterFirstWithHostNet or None"
                ),
            ));
        }
    };
    Ok(Some(norm.to_string()))
}

impl KubernetesConfig {
    /// Parses and checks every setting; the first bad one is the error.
    pub fn from_settings(s: &KubernetesSettings) -> Result<KubernetesConfig, SettingError> {
        let namespace = namespace(s)?;
        let (f, t) = with_default("volume_size", &s.volume_size)?;
        let volume_size = Quantity::parse(&t).map_err(|m| SettingError::new(f, m))?;
        let pod_security = pod_security(s)?;
        let allow_from_step = allow_from_step(s)?;
        let tolerations = tolerations(s)?;
        let dns_config = dns_config(s)?;
        let dns_policy = dns_policy("dns_policy", &s.dns_policy)?;
        if dns_policy.as_deref() == Some("None")
            && dns_config
                .as_ref()
                .and_then(|d| d.nameservers.as_ref())
                .is_none()
        {
            return Err(SettingError::new(
                "dns_policy",
                "None needs at least one nameserver in --k8s-dns-config (PICULET_K8S_DNS_CONFIG)",
            ));
        }

        let termination_grace_period =
            duration_setting("termination_grace_period", &s.termination_grace_period)?
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));

        let privileged_images = globs("privileged_images", &s.privileged_images)?;
        let volumes = admin_volumes("volumes", &s.volumes)?;
        check_restricted(pod_security, &privileged_images, &volumes)?;

        let pull_secret_names = pull_secret_names(s)?;
        let clone_image = clone_image(s)?;
        let qps = qps(s)?;
        let burst = burst(s)?;
        let (step_resources, service_resources, clone_resources) = resource_policies(s)?;

        let config = KubernetesConfig {
            namespace,
            namespace_overwrite_allowed: regex(
                "namespace_overwrite_allowed",
                &s.namespace_overwrite_allowed,
            )?,
            volume_size,
            storage_class: dns_subdomain("storage_class", &s.storage_class, "StorageClass")?,
            storage_rwx: boolean("storage_rwx", &s.storage_rwx)?,
            pod_labels: label_map("pod_labels", &s.pod_labels, true)?,
            pod_annotations: label_map("pod_annotations", &s.pod_annotations, false)?,
            annotations_overwrite_allowed: regex(
                "annotations_overwrite_allowed",
                &s.annotations_overwrite_allowed,
            )?,
            node_selector: label_map("node_selector", &s.node_selector, true)?,
            tolerations,
            service_account: dns_subdomain(
                "service_account",
                &s.service_account,
                "ServiceAccount",
            )?,
            service_account_overwrite_allowed: regex(
                "service_account_overwrite_allowed",
                &s.service_account_overwrite_allowed,
            )?,
            runtime_class: dns_subdomain("runtime_class", &s.runtime_class, "RuntimeClass")?,
            secctx_nonroot: boolean("secctx_nonroot", &s.secctx_nonroot)?,
            pod_security,
            allow_from_step,
            privileged_images,
            allowed_claims: globs("allowed_claims", &s.allowed_claims)?,
            pull_secret_names,
            pull_policies: pull_policies("pull_policy", &s.pull_policy)?,
            priority_class: dns_subdomain("priority_class", &s.priority_class, "PriorityClass")?,
            dns_policy,
            dns_config,
            termination_grace_period,
            volumes,
            clone_image,
            start_timeout: required_duration("start_timeout", &s.start_timeout)?,
            log_retry_timeout: required_duration("log_retry_timeout", &s.log_retry_timeout)?,
            run_as_user: run_as_id("run_as_user", &s.run_as_user)?,
            run_as_group: run_as_id("run_as_group", &s.run_as_group)?,
            qps,
            burst,
            kubeconfig: text("kubeconfig", &s.kubeconfig).map(|(_, t)| PathBuf::from(t)),
            context: text("context", &s.context).map(|(_, t)| t),
            keep_failed_pods: boolean("keep_failed_pods", &s.keep_failed_pods)?,
            cluster_domain: dns_subdomain("cluster_domain", &s.cluster_domain, "cluster domain")?
                .ok_or_else(|| undeclared("cluster_domain"))?,
            step_resources,
            service_resources,
            clone_resources,
        };
        config.check_objects()?;
        Ok(config)
    }

    /// Refuses settings that would make every object the API server's validation refuses (a
    /// toleration with `tolerationSeconds` and no `NoExecute`, more than 3 nameservers, …):
    /// renders a workflow of one step, one service and a clone step, and names the first
    /// setting one of its refused fields comes from. Otherwise every submission would be
    /// refused for what only the administrator can change.
    fn check_objects(&self) -> Result<(), SettingError> {
        use crate::pipeline::{DEFAULT_CLONE_IMAGE, StepKind, StepSpec, WorkflowPlan};
        /// The settings a rendered object's field can come from.
        const SHAPING: &[&str] = &[
            "namespace",
            "volume_size",
            "storage_class",
            "pod_labels",
            "pod_annotations",
            "node_selector",
            "tolerations",
            "service_account",
            "runtime_class",
            "priority_class",
            "pull_policy",
            "dns_policy",
            "dns_config",
            "volumes",
            "clone_image",
            "run_as_user",
            "run_as_group",
            "cluster_domain",
        ];
        let mut step = StepSpec::new("build", StepKind::Step, "busybox");
        step.commands = vec!["true".into()];
        let workflow = WorkflowPlan {
            name: "settings".into(),
            matrix: BTreeMap::new(),
            platform: "linux/amd64".into(),
            workspace: Default::default(),
            labels: BTreeMap::new(),
            depends_on: Vec::new(),
            runs_on: Vec::new(),
            concurrency: None,
            services: vec![StepSpec::new("db", StepKind::Service, "busybox")],
            steps: vec![
                StepSpec::new("clone", StepKind::Clone, DEFAULT_CLONE_IMAGE),
                step,
            ],
            dropped_steps: Vec::new(),
        };
        let input = super::RenderInput {
            pipeline_id: uuid::Uuid::nil(),
            workflow_id: uuid::Uuid::nil(),
            step_ids: BTreeMap::new(),
            attempt: 1,
            namespace: None,
            workflow,
            secrets: BTreeMap::new(),
            registries: Vec::new(),
            environment: BTreeMap::new(),
            redact_secrets: true,
        };
        let Err(super::Refused::Invalid(refused)) = super::render_workflow(self, &input) else {
            return Ok(());
        };
        for v in refused {
            let Some(super::trace::Origin::Setting(env)) = &v.origin else {
                continue;
            };
            if let Some(field) = SHAPING.iter().find(|f| env_name(f) == *env) {
                return Err(SettingError::new(
                    field,
                    format!(
                        "the Kubernetes API server would refuse every workflow's objects with it: {} {}: {}",
                        v.field,
                        super::policy::quote(&v.value),
                        v.rule
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether a step may set `field`, by `PICULET_K8S_ALLOW_FROM_STEP`.
    pub fn allows(&self, field: StepField) -> bool {
        self.allow_from_step.contains(&field)
    }
}
