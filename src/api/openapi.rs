//! The OpenAPI document, generated from the handlers and types by utoipa.

use std::collections::BTreeMap;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

use utoipa::openapi::{Content, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::{error, events, health, host, lint, logs, metrics, pipelines, render};

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
    modifiers(&BearerAuth, &MisdirectedRequest, &DatabaseTimeout),
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

/// Every operation but the probes is refused with 421 for a `Host` the server does not answer
/// to; said once here rather than on every handler.
struct MisdirectedRequest;

impl Modify for MisdirectedRequest {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let response = ResponseBuilder::new()
            .description(
                "A Host this server does not answer to: without API tokens, a name other than a \
                 loopback one or one of PICULET_ALLOWED_HOSTS",
            )
            .content(
                error::PROBLEM_JSON,
                Content::new(Some(Ref::from_schema_name("Problem"))),
            )
            .build();
        for_each_operation(openapi, &host::PROBES, |responses| {
            responses.insert("421".into(), response.clone().into());
        });
    }
}

/// Calls `f` with the responses of every operation whose path is not in `except`.
fn for_each_operation(
    openapi: &mut utoipa::openapi::OpenApi,
    except: &[&str],
    mut f: impl FnMut(&mut BTreeMap<String, RefOr<Response>>),
) {
    for (path, item) in openapi.paths.paths.iter_mut() {
        if except.contains(&path.as_str()) {
            continue;
        }
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            f(&mut operation.responses.responses);
        }
    }
}

/// Operations that never touch the database, so never answer its 503.
const WITHOUT_DATABASE: [&str; 3] = ["/api/v1/healthz", "/api/v1/lint", "/api/v1/render"];

/// Every operation that reads or writes the database answers 503 `unavailable` with
/// `Retry-After` when its statement runs past `PICULET_DB_READ_TIMEOUT` or
/// `PICULET_DB_WRITE_TIMEOUT`; said once here, and added to a 503 a handler documents already.
struct DatabaseTimeout;

const DATABASE_TIMEOUT: &str = "The database did not answer within PICULET_DB_READ_TIMEOUT or \
     PICULET_DB_WRITE_TIMEOUT (`unavailable`, with `Retry-After`)";

impl Modify for DatabaseTimeout {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let response = ResponseBuilder::new()
            .description(DATABASE_TIMEOUT)
            .content(
                error::PROBLEM_JSON,
                Content::new(Some(Ref::from_schema_name("Problem"))),
            )
            .build();
        for_each_operation(openapi, &WITHOUT_DATABASE, |responses| {
            match responses.get_mut("503") {
                Some(RefOr::T(existing)) if !existing.description.contains("database") => {
                    existing.description = format!(
                        "{}; or the database did not answer in time (`unavailable`, with \
                         `Retry-After`)",
                        existing.description
                    );
                }
                Some(_) => {}
                None => {
                    responses.insert("503".into(), response.clone().into());
                }
            }
        });
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
