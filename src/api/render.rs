//! `POST /render`: the dry run.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::body::{RawBody, parse_submission};
use super::cpu;
use super::error::{ApiError, Problem};
use crate::dry_run::{self, Rendered};
use crate::submission::Submission;

/// Show the Kubernetes objects a submission would create.
///
/// The exact objects piculet would send to the API server — workspace PVC, Secrets, headless
/// Service, one Pod per service and step — with the administrator's policy applied and secret
/// values redacted, whatever backend this server runs. Nothing is stored or created. Object
/// names carry fresh ids, so they differ from the names of a real run. Every object is held to
/// the Kubernetes API server's validation; what it would refuse is a 422 that names the step,
/// the API server's field and rule, and the place in the submission.
#[utoipa::path(
    post,
    path = "/api/v1/render",
    tag = "pipelines",
    operation_id = "render_pipeline",
    request_body(content(
        (Submission = "application/json"),
        (String = "application/yaml")
    )),
    responses(
        (status = 200, description = "The objects, per workflow", body = Rendered),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within PICULET_BODY_TIMEOUT", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the size limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Neither JSON nor YAML", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid submission (`validation-failed`), refused by the policy (`policy-violation`), or an object the Kubernetes API server would refuse (`kubernetes-invalid`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Every planning slot stayed busy (`busy`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn render(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    // The objects are serialized there too: every pod of every workflow can be large.
    let work_state = state.clone();
    cpu::run(&state, move || {
        render_body(&work_state, &headers, &body).into_response()
    })
    .await
}

fn render_body(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Json<Rendered>, ApiError> {
    let parsed = parse_submission(headers, body)?;
    let rendered = dry_run::render(
        &parsed.submission,
        &state.config.platform,
        &state.config.limits,
        &state.config.kubernetes,
    )?;
    Ok(Json(rendered))
}
