//! Volumes: the workflow's workspace PVC, a step's `volumes: ["claim:/path"]` (existing claims
//! the administrator allows by `PICULET_K8S_ALLOWED_CLAIMS`), and the administrator's volumes
//! of `PICULET_K8S_VOLUMES`, mounted into every pod. A pipeline never mounts a host path.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Volume,
    VolumeMount, VolumeResourceRequirements,
};

use super::names;
use super::policy::{RULE_FORMAT, RULE_KUBERNETES, Violations};
use super::render::Ctx;

/// The workspace PVC. It is the anchor of the workflow and so has no owner itself.
pub(crate) fn workspace_claim(ctx: &Ctx) -> PersistentVolumeClaim {
    let mut metadata = ctx.metadata(&ctx.names.workspace);
    metadata.owner_references = None;
    PersistentVolumeClaim {
        metadata,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec![
                if ctx.config.storage_rwx {
                    "ReadWriteMany"
                } else {
                    "ReadWriteOnce"
                }
                .to_string(),
            ]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    ctx.config.volume_size.to_k8s(),
                )])),
                ..Default::default()
            }),
            storage_class_name: ctx.config.storage_class.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The workspace volume of a pod.
pub(crate) fn workspace_volume(ctx: &Ctx) -> Volume {
    Volume {
        name: names::WORKSPACE_VOLUME.to_string(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: ctx.names.workspace.clone(),
            read_only: None,
        }),
        ..Default::default()
    }
}

/// A step's `volumes` entry: `claim:/path` or `claim:/path:ro` (also `:rw`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClaimMount {
    pub claim: String,
    pub path: String,
    pub read_only: bool,
}

/// Reads a `volumes` entry. A host path (`/var/run/docker.sock:/…`) is refused here: the
/// Docker-style bind mount has no place on Kubernetes, and hostPath from a pipeline would
/// break the baseline Pod Security Standard.
pub(crate) fn parse_claim(entry: &str) -> Result<ClaimMount, (&'static str, String)> {
    let parts: Vec<&str> = entry.split(':').collect();
    let (claim, path, mode) = match parts.as_slice() {
        [c, p] => (*c, *p, None),
        [c, p, m] => (*c, *p, Some(*m)),
        _ => {
            return Err((
                RULE_FORMAT,
                "is not a volume piculet can mount: write claim-name:/path or claim-name:/path:ro"
                    .to_string(),
            ));
        }
    };
    if claim.starts_with(['/', '.', '~']) {
        return Err((
            "PICULET_K8S_POD_SECURITY",
            "is a host path, which a pipeline cannot mount; use an existing PersistentVolumeClaim as claim-name:/path, or ask the administrator for a volume in PICULET_K8S_VOLUMES".to_string(),
        ));
    }
    if claim.is_empty() || claim.len() > 253 || !claim.split('.').all(names::is_dns_label) {
        return Err((
            RULE_KUBERNETES,
            format!(
                "does not name a PersistentVolumeClaim: \"{claim}\" must be lowercase letters, digits, '-' and '.'"
            ),
        ));
    }
    if !path.starts_with('/') {
        return Err((
            RULE_FORMAT,
            format!("has a relative mount path \"{path}\"; write an absolute path"),
        ));
    }
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(m) => {
            return Err((
                RULE_FORMAT,
                format!("has an unknown mode \"{m}\"; write ro or rw"),
            ));
        }
    };
    Ok(ClaimMount {
        claim: claim.to_string(),
        path: path.to_string(),
        read_only,
    })
}

/// The volumes and mounts of a step's `volumes` entries the administrator allows.
pub(crate) fn claim_volumes(
    ctx: &Ctx,
    step: &str,
    entries: &[String],
    v: &mut Violations,
) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let field = format!("volumes[{i}]");
        let m = match parse_claim(entry) {
            Ok(m) => m,
            Err((rule, problem)) => {
                v.push(step, &field, entry, rule, &problem);
                continue;
            }
        };
        let allowed = &ctx.config.allowed_claims;
        if !allowed.is_match(&m.claim) {
            let why = if allowed.is_empty() {
                "PICULET_K8S_ALLOWED_CLAIMS is empty".to_string()
            } else {
                format!(
                    "claim \"{}\" matches none of PICULET_K8S_ALLOWED_CLAIMS ({})",
                    m.claim,
                    allowed.patterns().join(", ")
                )
            };
            v.push(
                step,
                &field,
                entry,
                "PICULET_K8S_ALLOWED_CLAIMS",
                &format!("is not allowed: {why}; ask the administrator to allow the claim"),
            );
            continue;
        }
        let name = format!("claim-{i}");
        volumes.push(Volume {
            name: name.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: m.claim,
                read_only: m.read_only.then_some(true),
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name,
            mount_path: m.path,
            read_only: m.read_only.then_some(true),
            ..Default::default()
        });
    }
    (volumes, mounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_syntax() {
        assert_eq!(
            parse_claim("cache:/cache:ro"),
            Ok(ClaimMount {
                claim: "cache".into(),
                path: "/cache".into(),
                read_only: true
            })
        );
        assert_eq!(parse_claim("cache:/c").map(|m| m.read_only), Ok(false));
        assert_eq!(
            parse_claim("/var/run/docker.sock:/var/run/docker.sock").map_err(|e| e.0),
            Err("PICULET_K8S_POD_SECURITY")
        );
        assert_eq!(parse_claim("cache").map_err(|e| e.0), Err(RULE_FORMAT));
        assert_eq!(parse_claim("cache:rel").map_err(|e| e.0), Err(RULE_FORMAT));
        assert_eq!(
            parse_claim("Cache:/c").map_err(|e| e.0),
            Err(RULE_KUBERNETES)
        );
        assert_eq!(parse_claim("c:/c:rx").map_err(|e| e.0), Err(RULE_FORMAT));
    }
}
