//! Liveness and readiness probes; open without a token.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, Problem};

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
    #[schema(example = "0.1.0")]
    pub version: &'static str,
}

/// Liveness: the process serves requests.
#[utoipa::path(
    get,
    path = "/api/v1/healthz",
    tag = "operations",
    operation_id = "get_health",
    responses((status = 200, description = "Alive", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// Readiness: the database answers, and the backend can run steps (for Kubernetes: the API
/// answers and piculet holds every permission it uses in its namespace; a missing one is
/// named).
#[utoipa::path(
    get,
    path = "/api/v1/readyz",
    tag = "operations",
    operation_id = "get_readiness",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "The database does not answer, or the backend cannot run steps (the detail says why)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state.store.ping().await.map_err(|e| {
        tracing::warn!(error = %e, "readiness check failed");
        ApiError::Unavailable(format!("the database does not answer: {e}"))
    })?;
    state.backend.readiness().await.map_err(|reason| {
        tracing::warn!(%reason, "readiness check failed");
        ApiError::Unavailable(reason)
    })?;
    Ok(Json(Health {
        status: "ready",
        version: env!("CARGO_PKG_VERSION"),
    }))
}
