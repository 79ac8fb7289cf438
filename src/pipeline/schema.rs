//! The keys the pipeline format allows where, taken from Woodpecker's schema
//! (`pipeline/frontend/yaml/linter/schema/schema.json`), its `Container` type and its Kubernetes
//! backend options, plus the few keys piculet adds (`timeout`, `hostUsers`). Also the did-you-mean
//! suggestion used by every "unknown key" error.
//!
//! Every key listed here is read: honoured, or answered with a warning or a refusal that says
//! why. README's "Woodpecker compatibility" table says which, and `src/woodpecker_compat.rs`
//! holds the two together (a new list here needs a line there).

/// Top level of a workflow file.
pub const WORKFLOW_KEYS: &[&str] = &[
    "$schema",
    "variables",
    "clone",
    "skip_clone",
    "when",
    "steps",
    "services",
    "workspace",
    "matrix",
    "labels",
    "depends_on",
    "runs_on",
    "concurrency",
    "compile",
];

/// Keys of a step (commands step and plugin step of Woodpecker's schema, plus `extra_hosts`,
/// `ports` from its `Container` type, and piculet's `timeout`).
pub const STEP_KEYS: &[&str] = &[
    "name",
    "image",
    "privileged",
    "pull",
    "commands",
    "entrypoint",
    "environment",
    "directory",
    "settings",
    "when",
    "volumes",
    "depends_on",
    "detach",
    "failure",
    "backend_options",
    "dns",
    "dns_search",
    "extra_hosts",
    "timeout",
    "ports",
];

/// Keys of a service: a step without the DAG keys.
pub const SERVICE_KEYS: &[&str] = &[
    "name",
    "image",
    "privileged",
    "pull",
    "commands",
    "entrypoint",
    "environment",
    "directory",
    "settings",
    "when",
    "volumes",
    "failure",
    "backend_options",
    "dns",
    "dns_search",
    "extra_hosts",
    "timeout",
    "ports",
];

/// Undocumented Docker-only keys of Woodpecker's `Container` type: accepted, with a warning.
pub const DOCKER_ONLY_STEP_KEYS: &[&str] = &[
    "cpu_quota",
    "cpuset",
    "cpu_shares",
    "devices",
    "mem_limit",
    "memswap_limit",
    "network_mode",
    "shm_size",
    "tmpfs",
];

/// Condition keys of a step's `when`.
pub const STEP_WHEN_KEYS: &[&str] = &[
    "repo", "branch", "event", "ref", "cron", "status", "platform", "matrix", "instance", "path",
    "evaluate",
];

/// Condition keys of a workflow's `when` (no `matrix`; `status` is about the workflows it
/// depends on).
pub const WORKFLOW_WHEN_KEYS: &[&str] = &[
    "repo", "branch", "event", "ref", "cron", "status", "platform", "instance", "path", "evaluate",
];

/// Woodpecker's pipeline events.
pub const EVENTS: &[&str] = &[
    "push",
    "pull_request",
    "pull_request_closed",
    "pull_request_metadata",
    "tag",
    "deployment",
    "cron",
    "manual",
    "release",
];

pub const INCLUDE_EXCLUDE_KEYS: &[&str] = &["include", "exclude"];
pub const PATH_KEYS: &[&str] = &["include", "exclude", "ignore_message", "on_empty"];
pub const WORKSPACE_KEYS: &[&str] = &["base", "path"];
pub const DEPENDENCY_KEYS: &[&str] = &["name", "optional"];
/// A step's `depends_on` entry: also Woodpecker's cross-workflow form (`workflow`, `step`),
/// which piculet refuses with the reason.
pub const STEP_DEPENDENCY_KEYS: &[&str] = &["name", "optional", "workflow", "step"];
pub const CONCURRENCY_KEYS: &[&str] = &["limit", "group"];

/// Backends of Woodpecker's `backend_options`; only `kubernetes` is read by piculet. Any other
/// key is accepted with a warning, as Woodpecker accepts options for backends it does not know.
pub const BACKEND_KEYS: &[&str] = &["kubernetes", "docker", "local"];

/// `failure` of a step: Woodpecker's commands steps also take `cancel`.
pub const STEP_FAILURE_VALUES: &[&str] = &["fail", "ignore", "cancel"];
/// `failure` of a service or a plugin step.
pub const FAILURE_VALUES: &[&str] = &["fail", "ignore"];

/// `backend_options.kubernetes`, as Woodpecker's Kubernetes backend reads it (`workspaceVolume`
/// since 2026), plus `hostUsers`.
pub const KUBERNETES_KEYS: &[&str] = &[
    "resources",
    "runtimeClassName",
    "serviceAccountName",
    "labels",
    "annotations",
    "nodeSelector",
    "tolerations",
    "affinity",
    "securityContext",
    "secrets",
    "hostUsers",
    "workspaceVolume",
];
pub const RESOURCES_KEYS: &[&str] = &["requests", "limits"];
pub const TOLERATION_KEYS: &[&str] = &["key", "operator", "value", "effect", "tolerationSeconds"];
pub const SECURITY_CONTEXT_KEYS: &[&str] = &[
    "privileged",
    "runAsNonRoot",
    "runAsUser",
    "runAsGroup",
    "fsGroup",
    "fsGroupChangePolicy",
    "seccompProfile",
    "apparmorProfile",
    "allowPrivilegeEscalation",
    "capabilities",
];
pub const SEC_PROFILE_KEYS: &[&str] = &["type", "localhostProfile"];
pub const CAPABILITIES_KEYS: &[&str] = &["drop"];
pub const SECRET_REF_KEYS: &[&str] = &["name", "key", "target"];
pub const SECRET_TARGET_KEYS: &[&str] = &["env", "file"];
pub const AFFINITY_KEYS: &[&str] = &["nodeAffinity", "podAffinity", "podAntiAffinity"];

/// The closest candidate to a mistyped word, if one is close enough to be what was meant.
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_lowercase();
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(&lower, &c.to_lowercase()), *c))
        .filter(|(d, c)| {
            // Close: a couple of edits, relative to the length of the word.
            *d <= (c.chars().count().max(word.chars().count()) / 3).max(1)
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `unknown key "comands", did you mean "commands"?`
pub fn unknown_key(key: &str, suggestion: Option<&str>) -> String {
    match suggestion {
        Some(s) => format!("unknown key \"{key}\", did you mean \"{s}\"?"),
        None => format!("unknown key \"{key}\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_with_suggestion() {
        assert_eq!(
            unknown_key("comands", suggest("comands", STEP_KEYS)),
            "unknown key \"comands\", did you mean \"commands\"?"
        );
        assert_eq!(
            unknown_key(
                "runtimeclassname",
                suggest("runtimeclassname", KUBERNETES_KEYS)
            ),
            "unknown key \"runtimeclassname\", did you mean \"runtimeClassName\"?"
        );
    }

    #[test]
    fn unknown_key_without_suggestion() {
        assert_eq!(
            unknown_key("zzzzzz", suggest("zzzzzz", STEP_KEYS)),
            "unknown key \"zzzzzz\""
        );
    }
}
