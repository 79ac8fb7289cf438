//! The OpenAPI document, generated from the handlers and types by utoipa.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{error, health, lint, pipelines};

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
        lint::lint,
        health::healthz,
        health::readyz,
    ),
    components(schemas(error::Problem, crate::pipeline::Diagnostic)),
    modifiers(&BearerAuth),
    tags(
        (name = "pipelines", description = "Submit, inspect and cancel pipelines"),
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
