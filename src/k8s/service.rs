//! The workflow's headless Service. Every pod of the workflow names it as its `subdomain` and
//! has its step or service name as `hostname`, so `postgres` resolves (through the DNS search
//! entry piculet adds) from every step of this workflow, and from no other: two workflows in
//! one namespace each have their own `postgres`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServiceSpec};

use super::labels;
use super::render::Ctx;

/// The headless Service selecting the workflow's pods.
pub(crate) fn headless_service(ctx: &Ctx) -> Service {
    Service {
        metadata: ctx.metadata(&ctx.names.service),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            selector: Some(selector(ctx)),
            // Steps start as soon as services run; no service has a readiness probe, so do not
            // wait for readiness before publishing their names.
            publish_not_ready_addresses: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn selector(ctx: &Ctx) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::MANAGED_BY.to_string(), labels::MANAGER.to_string()),
        (
            labels::WORKFLOW_ID.to_string(),
            ctx.input.workflow_id.to_string(),
        ),
    ])
}

/// The DNS search entry through which pods reach each other by bare name.
pub(crate) fn search_domain(ctx: &Ctx) -> String {
    format!(
        "{}.{}.svc.{}",
        ctx.names.service, ctx.namespace, ctx.config.cluster_domain
    )
}
