//! Container resources: a step's requests and limits, the administrator's defaults where the
//! step gives none, and the administrator's maxima, separately for step, service and clone
//! containers (as GitLab Runner's `cpu_request`, `cpu_request_overwrite_max_allowed`, …).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;

use super::policy::{RULE_KUBERNETES, Violations, option_field};
use super::quantity::Quantity;
use super::settings::{ResourcePolicy, env_name};
use crate::pipeline::{StepKind, StepSpec};

/// The setting prefix of a container class: `""`, `"service_"` or `"clone_"`.
pub(crate) fn class_prefix(kind: StepKind) -> &'static str {
    match kind {
        StepKind::Service => "service_",
        StepKind::Clone => "clone_",
        StepKind::Step | StepKind::Plugin => "",
    }
}

pub(crate) fn requirements(
    policy: &ResourcePolicy,
    step: &StepSpec,
    v: &mut Violations,
) -> Option<ResourceRequirements> {
    let prefix = class_prefix(step.kind);
    let asked = &step.backend_options.resources;
    let mut requests: BTreeMap<String, K8sQuantity> = BTreeMap::new();
    let mut limits: BTreeMap<String, K8sQuantity> = BTreeMap::new();

    // Resources piculet has no settings for (GPUs, hugepages) pass as the step gives them.
    for (name, q) in &asked.requests {
        requests.insert(name.clone(), K8sQuantity(q.clone()));
    }
    for (name, q) in &asked.limits {
        limits.insert(name.clone(), K8sQuantity(q.clone()));
    }

    for (resource, bounds) in policy.each() {
        let setting = |kind: &str| format!("{prefix}{}_{kind}", resource.replace('-', "_"));
        let mut check =
            |which: &str, asked: Option<&String>, max: &Option<Quantity>| -> Option<Quantity> {
                let text = asked?;
                let field = option_field(&format!("resources.{which}s.{resource}"));
                let q = match Quantity::parse(text) {
                    Ok(q) => q,
                    Err(m) => {
                        v.push(
                            &step.name,
                            &field,
                            text,
                            RULE_KUBERNETES,
                            &format!("is not allowed: {m}"),
                        );
                        return None;
                    }
                };
                if let Some(m) = max
                    && &q > m
                {
                    let rule = env_name(&setting(&format!("{which}_max")));
                    v.push(
                    &step.name,
                    &field,
                    text,
                    &rule,
                    &format!(
                        "is not allowed: it is above the maximum {m} of {rule}; ask for at most {m}"
                    ),
                );
                }
                Some(q)
            };
        let req = check("request", asked.requests.get(resource), &bounds.request_max);
        let lim = check("limit", asked.limits.get(resource), &bounds.limit_max);

        let limit = lim.clone().or_else(|| bounds.limit.clone());
        let mut request = req.clone().or_else(|| bounds.request.clone());
        if let (Some(r), Some(l)) = (&request, &limit)
            && r > l
        {
            if req.is_some() {
                let field = option_field(&format!("resources.requests.{resource}"));
                v.push(&step.name, &field, r.as_str(), RULE_KUBERNETES, &format!("is not allowed: it is above the limit {l}; a request cannot exceed its limit"));
            } else {
                // The default request is above the step's own limit: ask for the limit,
                // as Kubernetes does when only a limit is given.
                request = Some(l.clone());
            }
        }
        if let Some(r) = request {
            requests.insert(resource.to_string(), r.to_k8s());
        }
        if let Some(l) = limit {
            limits.insert(resource.to_string(), l.to_k8s());
        }
    }

    if requests.is_empty() && limits.is_empty() {
        return None;
    }
    Some(ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    })
}
