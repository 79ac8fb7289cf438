//! `POST /lint`: validate a submission or a pipeline file without running or storing it.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::body::{RawBody, is_yaml, parse_submission};
use super::cpu;
use super::error::{ApiError, Problem};
use crate::admission::{self, Rules};
use crate::pipeline::Diagnostic;
use crate::submission::Submission;

#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "valid": false,
    "errors": [{"config": "pipeline", "pointer": "/steps/0", "line": 2, "column": 5,
                "message": "step \"build\" has no image"}],
    "warnings": [{"config": "pipeline", "pointer": "/steps/0/shm_size", "line": 4, "column": 5,
                  "message": "\"shm_size\" is a Docker-only option; piculet ignores it"}]
}))]
pub struct LintResult {
    /// True when there is no error; warnings do not count.
    pub valid: bool,
    pub errors: Vec<Diagnostic>,
    /// Keys piculet accepts but cannot honour.
    pub warnings: Vec<Diagnostic>,
}

/// Validate a submission or a pipeline file.
///
/// Takes the same bodies as `POST /pipelines` and answers 200 with every error and warning;
/// nothing is stored or run. With the Kubernetes backend, what the administrator's policy
/// refuses and what the Kubernetes API server would refuse in the objects the submission
/// renders to are errors too, at their places.
#[utoipa::path(
    post,
    path = "/api/v1/lint",
    tag = "pipelines",
    operation_id = "lint_pipeline",
    request_body(content(
        (Submission = "application/json"),
        (String = "application/yaml")
    )),
    responses(
        (status = 200, description = "The errors and warnings found", body = LintResult),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within PICULET_BODY_TIMEOUT", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the size limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Neither JSON nor YAML", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A JSON submission of the wrong shape", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Every planning slot stayed busy (`busy`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn lint(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    // The answer is serialized there too: a report of every error can be large.
    let work_state = state.clone();
    cpu::run(&state, move || {
        lint_body(&work_state, &headers, &body).into_response()
    })
    .await
}

fn lint_body(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Json<LintResult>, ApiError> {
    let parsed = match parse_submission(headers, body) {
        Ok(parsed) => parsed,
        // A pipeline file that is not text is an error of the file, reported as lint reports
        // every other error of a file; a JSON body of the wrong shape stays a 422.
        Err(ApiError::Validation {
            errors, warnings, ..
        }) if is_yaml(headers) => {
            return Ok(Json(LintResult {
                valid: false,
                errors,
                warnings,
            }));
        }
        Err(e) => return Err(e),
    };
    // With a Kubernetes backend, what a submission would be refused for: the policy's and the
    // API server's rules.
    let report = admission::lint(&parsed.submission, &Rules::of(&state.config));
    Ok(Json(LintResult {
        valid: report.errors.is_empty(),
        errors: report.errors,
        warnings: report.warnings,
    }))
}
