//! `GET /steps/{id}/logs`: a step's log as plain text, JSON lines, or a live SSE stream.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, Problem};
use super::follow::{self, Feed, Live, PAGE, Record};
use super::pipelines::parse_id;
use crate::hub::StepFeed;
use crate::model::{LogLine, Status};
use crate::store::{StepState, Store, StoreError};

pub const NDJSON: &str = "application/x-ndjson";

/// The last event of a log stream.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"status": "failure", "exit_code": 2, "reason": "exit code 2"}))]
pub struct LogEnd {
    pub status: Status,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
}

/// Query of `GET /steps/{id}/logs`; documented here, parsed by hand so that a bad value is a
/// problem like every other.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct LogQuery {
    /// Only lines after this line number (the SSE stream also honours `Last-Event-ID`, which
    /// wins).
    after: Option<u64>,
}

fn after_param(query: Option<&str>) -> Result<Option<i64>, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| ApiError::InvalidQuery(format!("the query string is malformed: {e}")))?;
    let mut after = None;
    for (name, value) in pairs {
        match name.as_str() {
            "after" => {
                after = Some(
                    value
                        .parse::<i64>()
                        .ok()
                        .filter(|n| *n >= 0)
                        .ok_or_else(|| {
                            ApiError::InvalidQuery(format!("after {value:?} is not a line number"))
                        })?,
                )
            }
            other => {
                return Err(ApiError::InvalidQuery(format!(
                    "unknown query parameter {other:?}; use after"
                )));
            }
        }
    }
    Ok(after)
}

impl Record for LogLine {
    const EVENT: Option<&'static str> = None;

    fn seq(&self) -> i64 {
        self.number
    }
}

struct StepLog {
    store: Store,
    step_id: Uuid,
}

#[async_trait::async_trait]
impl Feed for StepLog {
    type Item = StepFeed;
    type Record = LogLine;
    type End = LogEnd;

    async fn page(&self, after: i64) -> Result<Vec<LogLine>, StoreError> {
        self.store.log_lines(self.step_id, after, PAGE).await
    }

    async fn end(&self) -> Result<Option<LogEnd>, StoreError> {
        let step = self.store.step(self.step_id).await?;
        Ok(step
            .filter(|s| s.status.0.is_finished())
            .map(|step| LogEnd {
                status: step.status.0,
                exit_code: step.exit_code,
                reason: step.reason,
            }))
    }

    fn live(&self, item: StepFeed) -> Live<LogLine> {
        match item {
            StepFeed::Lines(lines) => Live::Items(lines),
            StepFeed::Stored(number) => Live::Stored(number),
            StepFeed::End => Live::End,
            StepFeed::Resync => Live::Resync,
        }
    }
}

/// Where to resume: `Last-Event-ID` (an SSE reconnect) wins over `?after=`.
fn resume_after(headers: &HeaderMap, query: Option<&str>) -> Result<i64, ApiError> {
    let after = after_param(query)?;
    Ok(follow::last_event_id(headers)?.unwrap_or(after.unwrap_or(0)))
}

enum Format {
    Sse,
    JsonLines,
    Text,
}

fn format(headers: &HeaderMap) -> Format {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains(follow::EVENT_STREAM) {
        Format::Sse
    } else if accept.contains(NDJSON)
        || accept.contains("application/jsonl")
        || accept.contains("application/json")
    {
        Format::JsonLines
    } else {
        Format::Text
    }
}

pub async fn find_step(store: &Store, id: Uuid) -> Result<StepState, ApiError> {
    store
        .step(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("there is no step {id}")))
}

/// A step's log.
///
/// With `Accept: text/event-stream`, a live stream: each line is an event whose `id` is its
/// line number and whose data is the line as JSON (`{number, at, text}`); a client that
/// reconnects with `Last-Event-ID` gets exactly the lines it missed. The stream ends with an
/// `end` event carrying the step's final status and exit code; keep-alive comments are sent
/// meanwhile. With `Accept: application/x-ndjson`, the stored lines as JSON lines; otherwise
/// the stored log as plain text, byte for byte as the step printed it (secrets masked).
#[utoipa::path(
    get,
    path = "/api/v1/steps/{id}/logs",
    tag = "logs",
    operation_id = "get_step_logs",
    params(
        ("id" = Uuid, Path, description = "Step id"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume an SSE stream after this line number"),
        LogQuery,
    ),
    responses(
        (status = 200, description = "The log: plain text; JSON lines, one `LogLine` per line; or Server-Sent Events, a `message` event (data: `LogLine`) per line, then one `end` event (data: `LogEnd`) once the step has finished, with `: keep-alive` comments every 15 s meanwhile", content(
            (String = "text/plain"),
            (String = "application/x-ndjson"),
            (String = "text/event-stream"),
        )),
        (status = 400, description = "Malformed id, Last-Event-ID or query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such step", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_step_logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let after = resume_after(&headers, query.as_deref())?;
    let format = format(&headers);
    // Subscribe before anything is read, so that nothing falls between replay and live.
    let rx = matches!(format, Format::Sse).then(|| state.store.hub().subscribe_step(id));
    find_step(&state.store, id).await?;
    let store = state.store.clone();
    Ok(match (format, rx) {
        (Format::Sse, Some(rx)) => follow::sse(
            StepLog { store, step_id: id },
            rx,
            after,
            state.shutdown.clone(),
            state.sse_clients(),
        ),
        (format, _) => {
            let json = matches!(format, Format::JsonLines);
            let pages = futures::stream::unfold(Some(after), move |cursor| {
                let store = store.clone();
                async move {
                    let after = cursor?;
                    match store.log_lines(id, after, PAGE * 10).await {
                        Ok(lines) if lines.is_empty() => None,
                        Ok(lines) => {
                            let next = lines.last().map(|l| l.number);
                            let mut chunk = String::new();
                            for line in &lines {
                                if json {
                                    chunk
                                        .push_str(&serde_json::to_string(line).unwrap_or_default());
                                    chunk.push('\n');
                                } else {
                                    chunk.push_str(&line.text);
                                }
                            }
                            Some((Ok::<_, std::io::Error>(chunk), next))
                        }
                        Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
                    }
                }
            });
            let mut response = Body::from_stream(pages).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(if json {
                    NDJSON
                } else {
                    "text/plain; charset=utf-8"
                }),
            );
            response
        }
    })
}
