//! The HTTP API under `/api/v1`: routing, the `Host` check, the body limit, authentication,
//! request ids and tracing. Handlers are thin: they parse, call the domain (CPU-heavy work in
//! [`cpu`]) and map errors once through [`error::ApiError`].

mod body;
pub mod cpu;
pub mod error;
mod events;
pub(crate) mod follow;
mod health;
pub mod host;
mod lint;
mod logs;
pub mod metrics;
pub mod openapi;
mod pipelines;
mod render;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sha2::{Digest, Sha256};

use crate::backend::Backend;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa_swagger_ui::SwaggerUi;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine::Control;
use crate::metrics_registry::Metrics;
use crate::secrets::SecretBox;
use crate::store::Store;
use error::ApiError;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every handler may use.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// Asked by `/readyz` whether it can run steps.
    pub backend: Arc<dyn Backend>,
    pub config: Arc<Config>,
    pub secret_box: SecretBox,
    /// Tells the engine of new work and cancels.
    pub control: Arc<Control>,
    /// Ends every open SSE stream when the server shuts down.
    pub shutdown: CancellationToken,
    /// Where parsing, validation, planning and rendering run (see [`cpu`]).
    pub cpu: cpu::CpuPool,
    /// The app's own metrics, rendered by `/metrics`.
    pub metrics: Metrics,
    /// The names this server answers to (see [`host`]).
    hosts: host::HostPolicy,
    tokens: Arc<BTreeSet<[u8; 32]>>,
}

impl AppState {
    pub fn new(
        store: Store,
        backend: Arc<dyn Backend>,
        config: Arc<Config>,
        secret_box: SecretBox,
        control: Arc<Control>,
        shutdown: CancellationToken,
        metrics: Metrics,
    ) -> Self {
        // Tokens are compared by digest, so the comparison time says nothing about a token.
        let tokens = config.api_tokens.iter().map(|t| digest(t)).collect();
        let cpu = cpu::CpuPool::new(
            config.max_planning,
            config.planning_queue_timeout,
            metrics.counter("piculet_planning_refused_total", &[]),
        );
        let hosts = host::HostPolicy::new(!config.api_tokens.is_empty(), &config.allowed_hosts);
        AppState {
            store,
            backend,
            config,
            secret_box,
            control,
            shutdown,
            cpu,
            metrics,
            hosts,
            tokens: Arc::new(tokens),
        }
    }

    /// The gauge of the event streams open.
    fn sse_clients(&self) -> ::metrics::Gauge {
        self.metrics.gauge("piculet_sse_clients", &[])
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Checks the bearer token when tokens are configured. Without tokens the server only listens
/// on loopback (see [`Config`]) and answers only loopback names (see [`host`]), and every local
/// caller is trusted.
async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.tokens.is_empty() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        None => ApiError::Unauthorized(
            "send Authorization: Bearer <token> with one of the tokens in PICULET_API_TOKENS",
        )
        .into_response(),
        Some(token) if !state.tokens.contains(&digest(token.trim())) => {
            ApiError::Unauthorized("the bearer token is not one of PICULET_API_TOKENS")
                .into_response()
        }
        Some(_) => next.run(request).await,
    }
}

/// Refuses a body announced (by its `Content-Length`) larger than the limit before anything
/// reads it. Reading is what makes hyper answer `Expect: 100-continue` with `100 Continue`, so
/// such a client hears 413 instead and sends nothing; any other client is spared sending
/// megabytes only to have them refused. A body without a length is held to the limit as it
/// is read ([`DefaultBodyLimit`]).
async fn refuse_oversized_body(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    use axum::body::HttpBody as _;
    let limit = state.config.max_body_size;
    if request.body().size_hint().lower() > limit as u64 {
        return ApiError::PayloadTooLarge(limit).into_response();
    }
    next.run(request).await
}

async fn no_route() -> ApiError {
    ApiError::NotFound("no such route; the API document is at /api/v1/openapi.json".into())
}

async fn no_method() -> ApiError {
    ApiError::MethodNotAllowed("this route does not take that method; see /api/v1/docs".into())
}

/// Ends every JSON answer (`application/json`, `application/problem+json`) with a newline, so
/// that `curl` leaves the shell prompt on a line of its own and a log of answers reads as one
/// answer per line. Only a body whose exact length is known is touched: JSON answers are built
/// whole in memory, and an event or log stream (never JSON) is not held back.
async fn json_newline(response: Response) -> Response {
    use axum::body::HttpBody as _;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            let v = v.trim();
            v.eq_ignore_ascii_case("application/json")
                || v.eq_ignore_ascii_case(error::PROBLEM_JSON)
        });
    let Some(length) = response.body().size_hint().exact() else {
        return response;
    };
    if !is_json || length == 0 {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, length as usize).await else {
        // An in-memory body cannot fail to be read; should one, its length no longer holds.
        return ApiError::Fault("a JSON answer could not be read back".into()).into_response();
    };
    let mut with_newline = Vec::with_capacity(bytes.len() + 1);
    with_newline.extend_from_slice(&bytes);
    if with_newline.last() != Some(&b'\n') {
        with_newline.push(b'\n');
    }
    // The length is the new body's, computed when the answer is written.
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(with_newline))
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let limit = state.config.max_body_size;
    let protected = Router::new()
        .route(
            "/pipelines",
            post(pipelines::create_pipeline).get(pipelines::list_pipelines),
        )
        .route("/pipelines/{id}", get(pipelines::get_pipeline))
        .route("/pipelines/{id}/cancel", post(pipelines::cancel_pipeline))
        .route("/pipelines/{id}/retry", post(pipelines::retry_pipeline))
        .route("/pipelines/{id}/events", get(events::get_pipeline_events))
        .route("/steps/{id}/logs", get(logs::get_step_logs))
        .route("/lint", post(lint::lint))
        .route("/render", post(render::render))
        .route("/metrics", get(metrics::metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let open = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    let api = protected
        .merge(open)
        .method_not_allowed_fallback(no_method)
        .with_state(state.clone());

    Router::new()
        .nest("/api/v1", api)
        .merge(
            // The refined document (see [`openapi`]), not utoipa's alone.
            SwaggerUi::new("/api/v1/docs").external_url_unchecked(
                "/api/v1/openapi.json",
                openapi::served(state.config.max_label_filters),
            ),
        )
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::Extension(body::BodyLimit(limit)))
        .layer(axum::Extension(body::BodyTimeout(
            state.config.body_timeout,
        )))
        // Before anything else looks at the request: a name not served, then a body too big.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_oversized_body,
        ))
        .layer(middleware::from_fn_with_state(state, host::check_host))
        .layer(middleware::map_response(json_newline))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let request_id = request
                        .headers()
                        .get(&REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        path = %request.uri().path(),
                        request_id = %request_id,
                    )
                })
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}
