//! Security contexts. A step's `securityContext` is split as Woodpecker splits it: user, group,
//! fsGroup, runAsNonRoot, seccomp and AppArmor on the pod; privileged, allowPrivilegeEscalation
//! and capabilities on the container. Around it go piculet's defaults, so that every pod meets
//! the Pod Security Standard in force: baseline (seccomp RuntimeDefault, NET_RAW dropped, no
//! privilege unless the image is allowlisted) or restricted (non-root, drop ALL, no privilege
//! escalation). A step value that would break the standard is refused, never dropped.

use k8s_openapi::api::core::v1::{
    AppArmorProfile, Capabilities, PodSecurityContext, SeccompProfile, SecurityContext,
};

use super::policy::{Violations, option_field};
use super::render::Ctx;
use super::settings::PodSecurity;
use crate::pipeline::{SecurityContext as StepSecurity, StepSpec};

/// The group a non-root pod's volumes are made writable for when the step names none: the
/// kubelet gives the workspace this group (setgid, group-writable) and adds it to the
/// container's groups, so a non-root step can write files a root step created before it.
pub const DEFAULT_FS_GROUP: i64 = 1000;

/// Whether the step runs privileged: `securityContext.privileged` when given, else
/// `privileged:` (an explicit `false` in the security context wins, as in Woodpecker).
pub(crate) fn wants_privileged(step: &StepSpec) -> bool {
    step.backend_options
        .security_context
        .as_ref()
        .and_then(|s| s.privileged)
        .unwrap_or(step.privileged)
}

/// Checks privilege against the image allowlist and the profile; returns whether the pod runs
/// privileged.
pub(crate) fn privileged(ctx: &Ctx, step: &StepSpec, image: &str, v: &mut Violations) -> bool {
    if !wants_privileged(step) {
        return false;
    }
    let field = if step
        .backend_options
        .security_context
        .as_ref()
        .is_some_and(|s| s.privileged.is_some())
    {
        option_field("securityContext.privileged")
    } else {
        "privileged".to_string()
    };
    let config = ctx.config;
    if config.pod_security == PodSecurity::Restricted {
        v.push(&step.name, &field, "true", "PICULET_K8S_POD_SECURITY", "is not allowed: privileged containers break the restricted Pod Security Standard in force; remove it");
        return false;
    }
    let bare = image_without_tag(image);
    if config.privileged_images.is_match(image) || config.privileged_images.is_match(bare) {
        return true;
    }
    let why = if config.privileged_images.is_empty() {
        "PICULET_K8S_PRIVILEGED_IMAGES is empty".to_string()
    } else {
        format!(
            "image \"{image}\" matches none of PICULET_K8S_PRIVILEGED_IMAGES ({})",
            config.privileged_images.patterns().join(", ")
        )
    };
    v.push(
        &step.name,
        &field,
        "true",
        "PICULET_K8S_PRIVILEGED_IMAGES",
        &format!("is not allowed: {why}; remove it or ask the administrator to allow the image"),
    );
    false
}

/// `registry/name:tag@digest` without tag and digest (a port in the registry is kept).
pub fn image_without_tag(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    }
}

/// The pod's and the container's security contexts.
pub(crate) fn contexts(
    ctx: &Ctx,
    step: &StepSpec,
    privileged: bool,
    v: &mut Violations,
) -> (PodSecurityContext, SecurityContext) {
    let sc = step
        .backend_options
        .security_context
        .clone()
        .unwrap_or_default();
    let pod = pod_context(ctx, &step.name, &sc, v);
    let container = container_context(ctx, &step.name, &sc, privileged, v);
    (pod, container)
}

/// The pod's context: its user, group and fsGroup, non-root, seccomp and AppArmor.
fn pod_context(ctx: &Ctx, name: &str, sc: &StepSecurity, v: &mut Violations) -> PodSecurityContext {
    let config = ctx.config;
    let restricted = config.pod_security == PodSecurity::Restricted;
    // Why non-root is required, for messages: the profile, or Woodpecker's switch.
    let nonroot_rule = if restricted {
        Some("PICULET_K8S_POD_SECURITY")
    } else if config.secctx_nonroot {
        Some("PICULET_K8S_SECCTX_NONROOT")
    } else {
        None
    };

    let mut run_as_non_root = sc.run_as_non_root;
    if let Some(rule) = nonroot_rule {
        if sc.run_as_non_root == Some(false) {
            v.push(
                name,
                &option_field("securityContext.runAsNonRoot"),
                "false",
                rule,
                &format!("is not allowed: {rule} requires non-root pods; remove it"),
            );
        }
        run_as_non_root = Some(true);
    }
    for (field, value) in [
        ("runAsUser", sc.run_as_user),
        ("runAsGroup", sc.run_as_group),
        ("fsGroup", sc.fs_group),
    ] {
        if value.is_some_and(|n| n < 0) {
            v.push(
                name,
                &option_field(&format!("securityContext.{field}")),
                &value.unwrap_or_default().to_string(),
                super::policy::RULE_KUBERNETES,
                "is not allowed: ids cannot be negative",
            );
        }
    }
    if sc.run_as_user == Some(0) && run_as_non_root == Some(true) {
        let rule = nonroot_rule.unwrap_or("securityContext.runAsNonRoot");
        v.push(
            name,
            &option_field("securityContext.runAsUser"),
            "0",
            rule,
            "is not allowed: the pod must run as non-root; choose a non-zero user",
        );
    }

    // With non-root required by the administrator, a pod without a user of its own runs as
    // PICULET_K8S_RUN_AS_USER/_GROUP: the kubelet refuses `runAsNonRoot` for an image whose
    // user is root (busybox, alpine, golang: most CI images), so leaving the user to the image
    // would fail them all (recording 81). `image` in the setting keeps the image's user.
    let (run_as_user, run_as_group) = if nonroot_rule.is_some() {
        (
            sc.run_as_user.or(config.run_as_user),
            sc.run_as_group.or(config.run_as_group),
        )
    } else {
        (sc.run_as_user, sc.run_as_group)
    };
    let non_root = run_as_non_root == Some(true) || run_as_user.is_some_and(|u| u > 0);
    let fs_group = sc.fs_group.or_else(|| {
        non_root.then(|| {
            run_as_group
                .filter(|g| *g > 0)
                .or(run_as_user.filter(|u| *u > 0))
                .unwrap_or(DEFAULT_FS_GROUP)
        })
    });

    let (seccomp, apparmor) = profiles(ctx, name, sc, v);
    PodSecurityContext {
        run_as_non_root,
        run_as_user,
        run_as_group,
        fs_group,
        fs_group_change_policy: sc.fs_group_change_policy.clone(),
        seccomp_profile: seccomp,
        app_armor_profile: apparmor,
        ..Default::default()
    }
}

/// The seccomp and AppArmor profiles: the step's, never unconfined; seccomp RuntimeDefault
/// when the step names none.
fn profiles(
    ctx: &Ctx,
    name: &str,
    sc: &StepSecurity,
    v: &mut Violations,
) -> (Option<SeccompProfile>, Option<AppArmorProfile>) {
    let restricted = ctx.config.pod_security == PodSecurity::Restricted;
    let profile = if restricted { "restricted" } else { "baseline" };
    let seccomp = match &sc.seccomp_profile {
        Some(p) if p.kind == "Unconfined" => {
            v.push(name, &option_field("securityContext.seccompProfile.type"), "Unconfined", "PICULET_K8S_POD_SECURITY", &format!("is not allowed: the {profile} Pod Security Standard forbids an unconfined seccomp profile; use RuntimeDefault or Localhost"));
            None
        }
        Some(p) => Some(SeccompProfile {
            type_: p.kind.clone(),
            localhost_profile: p.localhost_profile.clone(),
        }),
        None => Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            localhost_profile: None,
        }),
    };
    let apparmor = match &sc.apparmor_profile {
        Some(p) if p.kind == "Unconfined" => {
            v.push(name, &option_field("securityContext.apparmorProfile.type"), "Unconfined", "PICULET_K8S_POD_SECURITY", &format!("is not allowed: the {profile} Pod Security Standard forbids an unconfined AppArmor profile; use RuntimeDefault or Localhost"));
            None
        }
        Some(p) => Some(AppArmorProfile {
            type_: p.kind.clone(),
            localhost_profile: p.localhost_profile.clone(),
        }),
        None => None,
    };
    (seccomp, apparmor)
}

/// The container's context: privileged, allowPrivilegeEscalation and capabilities.
fn container_context(
    ctx: &Ctx,
    name: &str,
    sc: &StepSecurity,
    privileged: bool,
    v: &mut Violations,
) -> SecurityContext {
    let restricted = ctx.config.pod_security == PodSecurity::Restricted;
    let allow_privilege_escalation = if privileged {
        // The API refuses allowPrivilegeEscalation: false together with privileged: true.
        None
    } else if restricted {
        if sc.allow_privilege_escalation == Some(true) {
            v.push(name, &option_field("securityContext.allowPrivilegeEscalation"), "true", "PICULET_K8S_POD_SECURITY", "is not allowed: the restricted Pod Security Standard forbids privilege escalation; remove it");
        }
        Some(false)
    } else {
        sc.allow_privilege_escalation
    };

    let capabilities = if privileged {
        None
    } else if restricted {
        Some(Capabilities {
            add: None,
            drop: Some(vec!["ALL".to_string()]),
        })
    } else {
        let mut drop = vec!["NET_RAW".to_string()];
        for c in sc.capabilities.iter().flat_map(|c| &c.drop) {
            let c = c.trim().to_ascii_uppercase();
            let c = c.strip_prefix("CAP_").map(str::to_string).unwrap_or(c);
            if !drop.contains(&c) {
                drop.push(c);
            }
        }
        Some(Capabilities {
            add: None,
            drop: Some(drop),
        })
    };

    SecurityContext {
        privileged: privileged.then_some(true),
        allow_privilege_escalation,
        capabilities,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_without_tags() {
        assert_eq!(
            image_without_tag("docker.io/plugins/docker:20"),
            "docker.io/plugins/docker"
        );
        assert_eq!(image_without_tag("registry:5000/a/b"), "registry:5000/a/b");
        assert_eq!(
            image_without_tag("registry:5000/a/b:1@sha256:00"),
            "registry:5000/a/b"
        );
        assert_eq!(image_without_tag("alpine"), "alpine");
    }
}
