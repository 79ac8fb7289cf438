//! The one API error type, mapped once to RFC 9457 `application/problem+json`.
//!
//! Every `type` is a stable URN (`urn:piculet:problem:<slug>`); clients branch on it, people
//! read `detail`, which says what to change.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::k8s::PolicyViolation;
use crate::pipeline::Diagnostic;
use crate::store::StoreError;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not well-formed JSON (or not UTF-8).
    #[error("{0}")]
    MalformedBody(String),
    /// 415: neither JSON nor YAML.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 408: the body did not arrive within `PICULET_BODY_TIMEOUT`.
    #[error(
        "the request body did not arrive within {} (PICULET_BODY_TIMEOUT); send it at once",
        humantime::format_duration(*.0)
    )]
    BodyTimeout(std::time::Duration),
    /// 413: larger than `PICULET_MAX_BODY_SIZE`.
    #[error("the request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// 422: the submission or its pipeline is invalid; every error at once.
    #[error("{detail}")]
    Validation {
        detail: String,
        errors: Vec<Diagnostic>,
        warnings: Vec<Diagnostic>,
    },
    /// 422: the submission asks for what the administrator's Kubernetes policy does not allow.
    #[error("{} request{} of the submission {} not allowed by the administrator's policy; change the pipeline or ask the administrator", .0.len(), if .0.len() == 1 { "" } else { "s" }, if .0.len() == 1 { "is" } else { "are" })]
    Policy(Vec<PolicyViolation>),
    /// 422: an object the submission renders to would be refused by the Kubernetes API server
    /// (its validation); each violation names the step, the API server's field and rule, and
    /// where in the submission the value was written.
    #[error("{} field{} of the objects the submission renders to would be refused by the Kubernetes API server; change the pipeline where each violation points", .0.len(), if .0.len() == 1 { "" } else { "s" })]
    KubernetesInvalid(Vec<PolicyViolation>),
    /// 422: an `Idempotency-Key` already used for a different request.
    #[error(
        "Idempotency-Key {0:?} was already used for a different request; use a new key for a new submission"
    )]
    IdempotencyKeyReused(String),
    /// 400: a malformed header.
    #[error("{0}")]
    InvalidHeader(String),
    /// 400: a path id that is not a UUID.
    #[error("{0:?} is not a valid id; ids are UUIDs such as 0193a5c4-6a5e-7cc0-a7e1-3f1b2f7d9e10")]
    InvalidId(String),
    /// 400: a query parameter that cannot be understood.
    #[error("{0}")]
    InvalidQuery(String),
    /// 401: missing or wrong bearer token.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 405.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 503: a dependency (the database) does not answer.
    #[error("{0}")]
    Unavailable(String),
    /// 421: a `Host` this server does not answer to (see `api::host`).
    #[error("{0}")]
    MisdirectedRequest(String),
    /// 503: every planning slot stayed taken for the whole queue timeout.
    #[error(
        "all {slots} planning slot{} (PICULET_MAX_PLANNING) stayed busy for {}; retry after the \
         Retry-After seconds, or ask the administrator to raise PICULET_MAX_PLANNING or \
         PICULET_PLANNING_QUEUE_TIMEOUT",
        if *.slots == 1 { "" } else { "s" },
        humantime::format_duration(*.waited)
    )]
    Busy {
        slots: usize,
        waited: std::time::Duration,
        /// Seconds, for `Retry-After`.
        retry_after: u64,
    },
    /// 500: a fault of piculet's other than the store's (a panic in planning), logged.
    #[error("{0}")]
    Fault(String),
    /// 503: the database did not answer in time; the client may retry after `retry_after`
    /// seconds, by when the statements that crowded it out have ended or been stopped.
    #[error("{detail}")]
    DatabaseBusy { detail: String, retry_after: u64 },
    /// 500: a fault of piculet's, logged; the client sees no internals.
    #[error(transparent)]
    Internal(StoreError),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::TimedOut { limit, .. } => {
                tracing::warn!(error = %e, "request answered 503");
                ApiError::DatabaseBusy {
                    detail: e.to_string(),
                    retry_after: limit.as_secs_f64().ceil().max(1.0) as u64,
                }
            }
            e => ApiError::Internal(e),
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "urn:piculet:problem:validation-failed",
    "title": "The submission is invalid",
    "status": 422,
    "detail": "1 error in the submission: build /steps/0/comands: unknown key \"comands\", did you mean \"commands\"?",
    "errors": [{"config": "build", "pointer": "/steps/0/comands", "line": 4, "column": 5,
                "message": "unknown key \"comands\", did you mean \"commands\"?"}]
}))]
pub struct Problem {
    /// Stable identifier of the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What went wrong and what to change.
    pub detail: String,
    /// For validation problems: every error, with its place.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<Diagnostic>>,
    /// For validation problems: keys accepted but not honoured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<Diagnostic>>,
    /// For policy problems and what Kubernetes would refuse: each refused request, naming
    /// the step, the field, the value, the rule and where in the submission it was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub violations: Option<Vec<PolicyViolation>>,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::MalformedBody(_) => (
                StatusCode::BAD_REQUEST,
                "malformed-body",
                "The request body is malformed",
            ),
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported Content-Type",
            ),
            ApiError::BodyTimeout(_) => (
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                "The request body came too slowly",
            ),
            ApiError::PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "The request body is too large",
            ),
            ApiError::Validation { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation-failed",
                "The submission is invalid",
            ),
            ApiError::Policy(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "policy-violation",
                "The submission breaks the administrator's policy",
            ),
            ApiError::KubernetesInvalid(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "kubernetes-invalid",
                "Kubernetes would refuse an object of the submission",
            ),
            ApiError::IdempotencyKeyReused(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key reused with a different request",
            ),
            ApiError::InvalidHeader(_) => {
                (StatusCode::BAD_REQUEST, "invalid-header", "Invalid header")
            }
            ApiError::InvalidId(_) => (StatusCode::BAD_REQUEST, "invalid-id", "Invalid id"),
            ApiError::InvalidQuery(_) => (
                StatusCode::BAD_REQUEST,
                "invalid-query",
                "Invalid query parameter",
            ),
            ApiError::Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
            ),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            ApiError::Unavailable(_) | ApiError::DatabaseBusy { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            ApiError::MisdirectedRequest(_) => (
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected-request",
                "Host not served",
            ),
            ApiError::Busy { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "Too many submissions being planned",
            ),
            ApiError::Internal(_) | ApiError::Fault(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }

    pub fn problem(&self) -> Problem {
        let (status, slug, title) = self.parts();
        let detail = match self {
            ApiError::Internal(_) | ApiError::Fault(_) => {
                "piculet could not complete the request; the server log has the details, under this response's x-request-id".to_string()
            }
            other => other.to_string(),
        };
        let (errors, warnings) = match self {
            ApiError::Validation {
                errors, warnings, ..
            } => (Some(errors.clone()), Some(warnings.clone())),
            _ => (None, None),
        };
        Problem {
            kind: format!("urn:piculet:problem:{slug}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail,
            errors,
            warnings,
            violations: match self {
                ApiError::Policy(v) | ApiError::KubernetesInvalid(v) => Some(v.clone()),
                _ => None,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            // Logged here, once, inside the request's span.
            ApiError::Internal(e) => tracing::error!(error = %e, "request failed"),
            ApiError::Fault(e) => tracing::error!(error = %e, "request failed"),
            _ => {}
        }
        let problem = self.problem();
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let ApiError::Busy { retry_after, .. } | ApiError::DatabaseBusy { retry_after, .. } =
            &self
        {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"piculet\""),
            );
        }
        response
    }
}

impl From<crate::dry_run::Refusal> for ApiError {
    fn from(refusal: crate::dry_run::Refusal) -> Self {
        match refusal {
            crate::dry_run::Refusal::Invalid(report) => validation(report.errors, report.warnings),
            crate::dry_run::Refusal::Policy(violations) => ApiError::Policy(violations),
            crate::dry_run::Refusal::Kubernetes(violations) => {
                ApiError::KubernetesInvalid(violations)
            }
        }
    }
}

/// A validation problem from a report of errors. A single error is also said in the detail,
/// with its place, for clients that show only the detail.
pub fn validation(errors: Vec<Diagnostic>, warnings: Vec<Diagnostic>) -> ApiError {
    let detail = match errors.as_slice() {
        [one] => {
            let place: Vec<&str> = [one.config.as_str(), one.pointer.as_str()]
                .into_iter()
                .filter(|part| !part.is_empty() && *part != crate::submission::SUBMISSION)
                .collect();
            if place.is_empty() {
                format!("1 error in the submission: {}", one.message)
            } else {
                format!(
                    "1 error in the submission: {}: {}",
                    place.join(" "),
                    one.message
                )
            }
        }
        many => format!(
            "{} errors in the submission; fix each and submit again",
            many.len()
        ),
    };
    ApiError::Validation {
        detail,
        errors,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::QueryClass;

    #[test]
    fn a_database_timeout_is_503_with_retry_after_never_500() {
        let e = ApiError::from(StoreError::TimedOut {
            class: QueryClass::Read,
            limit: Duration::from_millis(2500),
        });
        let problem = e.problem();
        assert_eq!(problem.status, 503);
        assert_eq!(problem.kind, "urn:piculet:problem:unavailable");
        assert!(
            problem.detail.contains("PICULET_DB_READ_TIMEOUT"),
            "{}",
            problem.detail
        );
        let response = e.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);

        let short = ApiError::from(StoreError::TimedOut {
            class: QueryClass::Write,
            limit: Duration::from_millis(1),
        });
        assert_eq!(short.into_response().headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn other_store_errors_stay_internal() {
        let e = ApiError::from(StoreError::Corrupt("bad".into()));
        assert!(matches!(e, ApiError::Internal(_)));
        assert_eq!(e.problem().status, 500);
    }
}
