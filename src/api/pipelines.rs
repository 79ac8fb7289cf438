//! `/pipelines`: submit, retry, list, get, cancel.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::body::{RawBody, parse_submission};
use super::cpu;
use super::error::{ApiError, Problem};
use crate::admission::{self, Rules};
use crate::model::{Pipeline, PipelineSummary, Status};
use crate::store::{Created, ListFilter, PipelineList};
use crate::submission::{MAX_LABEL_KEY_BYTES, MAX_LABEL_VALUE_BYTES, Submission};

const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Longest `Idempotency-Key`, in characters (visible ASCII).
pub const MAX_IDEMPOTENCY_KEY: usize = 255;
/// What an `Idempotency-Key` may hold, for the API document: visible ASCII, no space.
pub const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]+$";
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 200;

/// The length of a UUID in its hyphenated form, the only form the API writes.
const UUID_TEXT_LEN: usize = 36;

/// Parses an id as the API writes it (hyphenated, 36 characters), refusing anything else with
/// 400 rather than 404. The `uuid` crate would also take the braced, URN and bare-hex forms; the
/// document promises `format: uuid`, so those are refused like any other string that is not one.
pub fn parse_uuid(text: &str) -> Option<Uuid> {
    (text.len() == UUID_TEXT_LEN)
        .then(|| Uuid::parse_str(text).ok())
        .flatten()
}

/// Parses a path id, refusing what is not a UUID with 400 rather than 404.
pub fn parse_id(text: &str) -> Result<Uuid, ApiError> {
    parse_uuid(text).ok_or_else(|| ApiError::InvalidId(shortened(text)))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    // Visible ASCII only: a space or a control character in a key is more likely a client's
    // mistake than a key, and the document's pattern says the same.
    if bytes.is_empty()
        || bytes.len() > MAX_IDEMPOTENCY_KEY
        || !bytes.iter().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::InvalidHeader(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters \
             without spaces, e.g. a UUID"
        )));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// Submit a pipeline.
///
/// The body is a JSON submission, or one pipeline file sent as `application/yaml`. The
/// pipeline is validated and planned before anything is stored: a refused submission stores
/// nothing. With an `Idempotency-Key` already used for the same body, the pipeline created the
/// first time is returned (with `Idempotent-Replayed: true`); the same key with a different body
/// is refused with 422 `idempotency-key-reused`.
#[utoipa::path(
    post,
    path = "/api/v1/pipelines",
    tag = "pipelines",
    operation_id = "create_pipeline",
    request_body(content(
        (Submission = "application/json"),
        (String = "application/yaml", example = "steps:\n  - name: test\n    image: alpine\n    commands: [echo hello]\n")
    )),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried submission return the pipeline created the first time")),
    responses(
        (status = 201, description = "Created", body = Pipeline,
         headers(("Location" = String, description = "The pipeline's URL"))),
        (status = 400, description = "Malformed JSON or header", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within PICULET_BODY_TIMEOUT", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the size limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Neither JSON nor YAML", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid submission, refused by the Kubernetes policy or by the Kubernetes API server's validation (with the Kubernetes backend), or Idempotency-Key reused with another body", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Every planning slot stayed busy (`busy`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create_pipeline(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let read = move |_: &AppState| {
        let parsed = parse_submission(&headers, &body)?;
        Ok((parsed.submission, Some(parsed.request_hash)))
    };
    submit(&state, read, key, None).await
}

/// The one way a pipeline is submitted, by `POST /pipelines` and by a retry: the submission is
/// read and admitted on a planning slot (a refused one stores nothing), then stored, and the
/// engine woken. `read` gives the submission and, for a request's body, its hash, which an
/// `Idempotency-Key` is checked against.
async fn submit<F>(
    state: &AppState,
    read: F,
    key: Option<String>,
    retry_of: Option<Uuid>,
) -> Result<Response, ApiError>
where
    F: FnOnce(&AppState) -> Result<(Submission, Option<String>), ApiError> + Send + 'static,
{
    let work_state = state.clone();
    let admitted = cpu::run(state, move || {
        let admit = || {
            let (submission, hash) = read(&work_state)?;
            let rules = Rules::of(&work_state.config);
            let new = admission::admit(&submission, &rules, &work_state.secret_box)?;
            Ok::<_, ApiError>((new, hash))
        };
        // A refusal is serialized on the slot too: it lists every error.
        admit().map_err(|refused| Box::new(refused.into_response()))
    });
    let (mut new, hash) = match admitted.await? {
        Ok(admitted) => admitted,
        Err(refused) => return Ok(*refused),
    };
    new.idempotency = key.clone().zip(hash.clone());
    new.retry_of = retry_of;

    // Only a key finds an existing pipeline.
    let (pipeline, replayed) = match state.store.create_pipeline(new).await? {
        Created::New(p) => (p, false),
        Created::Existing {
            pipeline,
            request_hash,
        } => {
            if request_hash != hash {
                return Err(ApiError::IdempotencyKeyReused(key.unwrap_or_default()));
            }
            (pipeline, true)
        }
    };
    tracing::info!(pipeline_id = %pipeline.summary.id, replayed, retry_of = ?retry_of, "pipeline submitted");
    state.control.wake();
    let mut response = created(pipeline);
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

fn created(pipeline: Pipeline) -> Response {
    let location = format!("/api/v1/pipelines/{}", pipeline.summary.id);
    let mut response = (StatusCode::CREATED, Json(pipeline)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// Retry a pipeline.
///
/// Submits the same submission again, secrets included, as a new pipeline whose `retry_of`
/// names this one. Any pipeline may be retried, finished or not.
#[utoipa::path(
    post,
    path = "/api/v1/pipelines/{id}/retry",
    tag = "pipelines",
    operation_id = "retry_pipeline",
    params(("id" = Uuid, Path, description = "Pipeline id")),
    responses(
        (status = 201, description = "The new pipeline", body = Pipeline,
         headers(("Location" = String, description = "The new pipeline's URL"))),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such pipeline", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The submission no longer plans (the server's settings changed)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Every planning slot stayed busy (`busy`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn retry_pipeline(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let (kept, sealed) = state
        .store
        .pipeline_submission(id)
        .await?
        .ok_or_else(|| not_found(id))?;
    let read = move |state: &AppState| {
        let submission = Submission::restore(kept, sealed.as_deref(), &state.secret_box)
            .map_err(|e| ApiError::Internal(crate::store::StoreError::Corrupt(e)))?;
        Ok((submission, None))
    };
    submit(&state, read, None, Some(id)).await
}

/// Query of `GET /pipelines`; documented here, parsed by hand so that `status` and `label`
/// may repeat. The `label` pattern and item limit are set in [`super::openapi`], from the
/// same constants the parser uses.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ListQuery {
    /// Only these statuses; repeated (`status=queued&status=running`) or comma-separated
    /// (`status=queued,running`).
    #[param(style = Form, explode, inline)]
    status: Option<Vec<Status>>,
    /// Only pipelines with this label, as `key=value`; repeat for several (all must match), up
    /// to `PICULET_MAX_LABEL_FILTERS` (16 by default). Keys are at most 256 characters, values
    /// 1024, neither with NUL. The first label is the one the database scans by: list the
    /// rarest first.
    #[param(style = Form, explode)]
    label: Option<Vec<String>>,
    /// The `next_cursor` of the previous page.
    cursor: Option<Uuid>,
    /// Page size.
    #[param(minimum = 1, maximum = 200, default = 50)]
    limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PipelinePage {
    /// Newest first.
    pub items: Vec<PipelineSummary>,
    /// Pass as `cursor` to get the next page; null on the last page, also when it is exactly
    /// full.
    #[schema(value_type = Option<Uuid>)]
    pub next_cursor: Option<String>,
}

/// What a `label` filter may be, for the API document: the same rule as [`label_filter`].
pub fn label_filter_pattern() -> String {
    format!("^[^=\\u0000]{{1,{MAX_LABEL_KEY_BYTES}}}=[^\\u0000]{{0,{MAX_LABEL_VALUE_BYTES}}}$")
}

/// One `label=key=value` filter, checked: a key, and both within their lengths and free of NUL
/// (which no stored label holds, and Postgres cannot even compare). Lengths are counted in
/// characters, as the document's pattern counts them: a stored label is at most as many bytes,
/// so a longer filter could match nothing, and one of that many characters is still small.
fn label_filter(text: &str) -> Result<(String, String), ApiError> {
    let bad =
        |why: String| ApiError::InvalidQuery(format!("label filter {:?} {why}", shortened(text)));
    let Some((key, value)) = text.split_once('=').filter(|(k, _)| !k.is_empty()) else {
        return Err(bad("is not key=value".into()));
    };
    let key_chars = key.chars().count();
    if key_chars > MAX_LABEL_KEY_BYTES {
        return Err(bad(format!(
            "has a key of {key_chars} characters, over the limit of {MAX_LABEL_KEY_BYTES}"
        )));
    }
    let value_chars = value.chars().count();
    if value_chars > MAX_LABEL_VALUE_BYTES {
        return Err(bad(format!(
            "has a value of {value_chars} characters, over the limit of {MAX_LABEL_VALUE_BYTES}"
        )));
    }
    if text.contains('\0') {
        return Err(bad("contains a NUL character, which no label has".into()));
    }
    Ok((key.to_string(), value.to_string()))
}

/// The start of a text quoted in an answer: a refusal need not echo a long parameter whole.
fn shortened(text: &str) -> String {
    const SHOWN: usize = 64;
    match text.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Parses the query of a list; at most `max_labels` label filters.
fn list_filter(query: Option<&str>, max_labels: usize) -> Result<ListFilter, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| ApiError::InvalidQuery(format!("the query string is malformed: {e}")))?;
    let labels = pairs.iter().filter(|(name, _)| name == "label").count();
    if labels > max_labels {
        return Err(ApiError::InvalidQuery(format!(
            "{labels} label filters are more than the limit of {max_labels} \
             (PICULET_MAX_LABEL_FILTERS); filter on fewer labels"
        )));
    }
    let mut filter = ListFilter {
        statuses: BTreeSet::new(),
        labels: Vec::new(),
        before: None,
        limit: DEFAULT_PAGE,
    };
    for (name, value) in pairs {
        match name.as_str() {
            "status" => {
                // Exactly the names, as the document's enum has them: an empty or padded entry
                // is refused rather than read as no filter.
                for s in value.split(',') {
                    let status = Status::parse(s).ok_or_else(|| {
                        ApiError::InvalidQuery(format!(
                            "status {:?} is not one of {}",
                            shortened(s),
                            Status::ALL.map(Status::as_str).join(", ")
                        ))
                    })?;
                    filter.statuses.insert(status);
                }
            }
            "label" => filter.labels.push(label_filter(&value)?),
            "cursor" => {
                filter.before = Some(parse_uuid(&value).ok_or_else(|| {
                    ApiError::InvalidQuery(format!(
                        "cursor {:?} is not one this API returned; pass next_cursor as it came",
                        shortened(&value)
                    ))
                })?)
            }
            "limit" => {
                filter.limit = match value.parse::<u32>() {
                    Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
                    _ => {
                        return Err(ApiError::InvalidQuery(format!(
                            "limit {:?} is not a number from 1 to {MAX_PAGE}",
                            shortened(&value)
                        )));
                    }
                }
            }
            other => {
                return Err(ApiError::InvalidQuery(format!(
                    "unknown query parameter {:?}; use status, label, cursor or limit",
                    shortened(other)
                )));
            }
        }
    }
    Ok(filter)
}

/// List pipelines, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/pipelines",
    tag = "pipelines",
    operation_id = "list_pipelines",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of pipelines", body = PipelinePage),
        (status = 400, description = "Bad filter or cursor, or more label filters than PICULET_MAX_LABEL_FILTERS", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database did not answer within PICULET_DB_READ_TIMEOUT; retry after the Retry-After seconds", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("bearer" = []))
)]
pub async fn list_pipelines(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<PipelinePage>, ApiError> {
    let filter = list_filter(query.as_deref(), state.config.max_label_filters)?;
    let PipelineList { items, more } = state.store.list_pipelines(&filter).await?;
    let next_cursor = more
        .then(|| items.last().map(|p| p.id.to_string()))
        .flatten();
    Ok(Json(PipelinePage { items, next_cursor }))
}

/// Get a pipeline with its workflows and steps.
#[utoipa::path(
    get,
    path = "/api/v1/pipelines/{id}",
    tag = "pipelines",
    operation_id = "get_pipeline",
    params(("id" = Uuid, Path, description = "Pipeline id")),
    responses(
        (status = 200, description = "The pipeline", body = Pipeline),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such pipeline", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_pipeline(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Pipeline>, ApiError> {
    let id = parse_id(&id)?;
    state
        .store
        .get_pipeline(id)
        .await?
        .map(Json)
        .ok_or_else(|| not_found(id))
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("there is no pipeline {id}"))
}

/// Cancel a pipeline.
///
/// A queued pipeline, and its queued workflows and steps, become `canceled` at once; a running
/// one is stopped by the engine within the grace period. Idempotent: canceling a pipeline that
/// has finished (canceled or otherwise) changes nothing and answers 200 with it as it is.
#[utoipa::path(
    post,
    path = "/api/v1/pipelines/{id}/cancel",
    tag = "pipelines",
    operation_id = "cancel_pipeline",
    params(("id" = Uuid, Path, description = "Pipeline id")),
    responses(
        (status = 200, description = "The pipeline after the cancel", body = Pipeline),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such pipeline", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn cancel_pipeline(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Pipeline>, ApiError> {
    let id = parse_id(&id)?;
    let pipeline = state
        .store
        .cancel_pipeline(id)
        .await?
        .ok_or_else(|| not_found(id))?;
    state.control.cancel(id);
    tracing::info!(pipeline_id = %id, status = %pipeline.summary.status, "cancel requested");
    Ok(Json(pipeline))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(query: &str, max_labels: usize) -> String {
        match list_filter(Some(query), max_labels) {
            Err(ApiError::InvalidQuery(detail)) => detail,
            other => panic!("{query}: {other:?}"),
        }
    }

    #[test]
    fn list_query() {
        let f = list_filter(
            Some("status=queued,running&label=a%3Db&label=c=d&limit=10"),
            16,
        )
        .unwrap();
        assert_eq!(f.statuses.len(), 2);
        assert_eq!(
            f.labels,
            vec![("a".into(), "b".into()), ("c".into(), "d".into())]
        );
        assert_eq!(f.limit, 10);
        for bad in [
            "status=done",
            "label=x",
            "label==x",
            "limit=0",
            "limit=201",
            "cursor=7",
            "page=2",
        ] {
            refusal(bad, 16);
        }
    }

    #[test]
    fn ids_are_uuids_in_the_form_the_api_writes() {
        let id = "0193a5c4-6a5e-7cc0-a7e1-3f1b2f7d9e10";
        assert!(parse_id(id).is_ok());
        assert!(parse_id(&id.to_uppercase()).is_ok());
        for other in [
            "0193a5c46a5e7cc0a7e13f1b2f7d9e10",
            "{0193a5c4-6a5e-7cc0-a7e1-3f1b2f7d9e10}",
            "urn:uuid:0193a5c4-6a5e-7cc0-a7e1-3f1b2f7d9e10",
            "0193a5c4-6a5e-7cc0-a7e1-3f1b2f7d9e1g",
            "",
        ] {
            assert!(
                matches!(parse_id(other), Err(ApiError::InvalidId(_))),
                "{other}"
            );
            refusal(&format!("cursor={other}"), 16);
        }
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        let key = |value: &[u8]| {
            let mut headers = HeaderMap::new();
            headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_bytes(value).unwrap());
            idempotency_key(&headers)
        };
        assert_eq!(key(b"build-42").unwrap().as_deref(), Some("build-42"));
        let longest = vec![b'k'; MAX_IDEMPOTENCY_KEY];
        assert!(key(&longest).is_ok());
        for bad in [
            &b""[..],
            b"a b",
            b"tab\there",
            "caf\u{e9}".as_bytes(),
            &[b'k'; MAX_IDEMPOTENCY_KEY + 1],
        ] {
            assert!(
                matches!(key(bad), Err(ApiError::InvalidHeader(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(idempotency_key(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn status_filters_are_exact_names() {
        for bad in [
            "status=",
            "status=queued,",
            "status=%20queued",
            "status=Queued",
        ] {
            refusal(bad, 16);
        }
    }

    #[test]
    fn label_filters_are_bounded_in_number() {
        let query = |n: usize| vec!["label=team=red"; n].join("&");
        assert_eq!(list_filter(Some(&query(16)), 16).unwrap().labels.len(), 16);
        assert_eq!(
            refusal(&query(17), 16),
            "17 label filters are more than the limit of 16 (PICULET_MAX_LABEL_FILTERS); \
             filter on fewer labels"
        );
        assert!(list_filter(Some(&query(3)), 3).is_ok());
        assert!(refusal(&query(4), 3).starts_with("4 label filters are more than the limit of 3"));
    }

    #[test]
    fn label_filters_are_bounded_in_length() {
        let key = "k".repeat(MAX_LABEL_KEY_BYTES);
        let value = "v".repeat(MAX_LABEL_VALUE_BYTES);
        let f = list_filter(Some(&format!("label={key}={value}")), 16).unwrap();
        assert_eq!(f.labels, vec![(key.clone(), value.clone())]);

        let detail = refusal(&format!("label={key}k=v"), 16);
        assert!(
            detail.ends_with("has a key of 257 characters, over the limit of 256"),
            "{detail}"
        );
        let detail = refusal(&format!("label=k={value}v"), 16);
        assert!(
            detail.ends_with("has a value of 1025 characters, over the limit of 1024"),
            "{detail}"
        );
        assert!(
            detail.len() < 200,
            "the value is not echoed whole: {detail}"
        );
    }

    #[test]
    fn label_filters_refuse_nul() {
        let detail = refusal("label=team=re%00d", 16);
        assert_eq!(
            detail,
            "label filter \"team=re\\0d\" contains a NUL character, which no label has"
        );
    }

    #[test]
    fn refusals_quote_the_start_of_a_long_parameter() {
        let long = "x".repeat(10_000);
        for query in [
            format!("status={long}"),
            format!("cursor={long}"),
            format!("limit={long}"),
            format!("{long}=1"),
            format!("label={long}"),
        ] {
            let detail = refusal(&query, 16);
            assert!(detail.len() < 200, "{detail}");
            assert!(detail.contains(&format!("{}…", "x".repeat(64))), "{detail}");
        }
        assert_eq!(shortened("é".repeat(64).as_str()), "é".repeat(64));
        assert_eq!(shortened(&"é".repeat(65)), format!("{}…", "é".repeat(64)));
    }
}
