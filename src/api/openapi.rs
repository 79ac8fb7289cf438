//! The OpenAPI document, generated from the handlers and types by utoipa.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{error, events, health, lint, logs, metrics, pipelines, render};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "piculet",
        description = "Runs Woodpecker-style CI pipelines as Kubernetes pods or local processes, \
                       with status and live logs over REST and Server-Sent Events.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        pipelines::create_pipeline,
        pipelines::list_pipelines,
        pipelines::get_pipeline,
        pipelines::cancel_pipeline,
        pipelines::retry_pipeline,
        events::get_pipeline_events,
        logs::get_step_logs,
        lint::lint,
        render::render,
        health::healthz,
        health::readyz,
        metrics::metrics,
    ),
    components(schemas(error::Problem, crate::pipeline::Diagnostic, logs::LogEnd, crate::model::Event)),
    modifiers(&BearerAuth),
    tags(
        (name = "pipelines", description = "Submit, inspect, follow, cancel and retry pipelines"),
        (name = "logs", description = "Step logs, stored and live"),
        (name = "operations", description = "Probes and the API document")
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
    }
}

/// The document as checked in under `openapi/openapi.json` and printed by `piculet openapi`.
pub fn document() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}
