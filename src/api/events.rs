//! `GET /pipelines/{id}/events`: every state change of a pipeline, its workflows and steps,
//! as a live SSE stream.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, Problem};
use super::follow::{self, Feed, Live, PAGE, Record};
use super::pipelines::parse_id;
use crate::hub::PipelineFeed;
use crate::model::{Event, Status, Subject};
use crate::store::{Store, StoreError};

impl Record for Event {
    const EVENT: Option<&'static str> = Some("status");

    fn seq(&self) -> i64 {
        self.seq
    }
}

/// The last event of a pipeline's event stream: the pipeline's final state.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"status": "failure", "reason": "step \"test\" failed"}))]
pub struct PipelineEnd {
    pub status: Status,
    /// Why it ended so, in words a person can act on; null on success.
    pub reason: Option<String>,
}

struct PipelineEvents {
    store: Store,
    pipeline_id: Uuid,
}

#[async_trait::async_trait]
impl Feed for PipelineEvents {
    type Item = PipelineFeed;
    type Record = Event;
    type End = PipelineEnd;

    async fn page(&self, after: i64) -> Result<Vec<Event>, StoreError> {
        self.store.events(self.pipeline_id, after, PAGE).await
    }

    async fn end(&self) -> Result<Option<PipelineEnd>, StoreError> {
        let pipeline = self.store.get_pipeline(self.pipeline_id).await?;
        Ok(pipeline
            .filter(|p| p.summary.status.is_finished())
            .map(|p| PipelineEnd {
                status: p.summary.status,
                reason: p.summary.reason,
            }))
    }

    fn live(&self, item: PipelineFeed) -> Live<Event> {
        match item {
            // Replaying from the database picks the final event up, then the end.
            PipelineFeed::Event(event)
                if event.subject == Subject::Pipeline && event.status.is_finished() =>
            {
                Live::End
            }
            PipelineFeed::Event(event) => Live::One(event),
            PipelineFeed::Stored { finished: true, .. } => Live::End,
            PipelineFeed::Stored { seq, .. } => Live::Stored(seq),
            PipelineFeed::Resync => Live::Resync,
        }
    }
}

/// Follow a pipeline's state changes.
///
/// A live SSE stream of `status` events, one per state change of the pipeline, its workflows
/// and its steps; each event's `id` is its sequence number, and `Last-Event-ID` resumes after
/// it. The stream ends with an `end` event once the pipeline has finished.
#[utoipa::path(
    get,
    path = "/api/v1/pipelines/{id}/events",
    tag = "pipelines",
    operation_id = "get_pipeline_events",
    params(
        ("id" = Uuid, Path, description = "Pipeline id"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event id (the `seq` of the last event received)"),
    ),
    responses(
        (status = 200, description = "Server-Sent Events: a `status` event (data: `Event`) per state change, then one `end` event (data: `PipelineEnd`) once the pipeline has finished; `: keep-alive` comments every 15 s meanwhile", content(
            (String = "text/event-stream"),
        )),
        (status = 400, description = "Malformed id or Last-Event-ID, or any query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such pipeline", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_pipeline_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    // As the log route refuses what it does not know: a parameter silently ignored would look
    // honoured.
    if uri.query().is_some_and(|q| !q.is_empty()) {
        return Err(ApiError::InvalidQuery(
            "this route takes no query parameters; resume a stream with the Last-Event-ID header"
                .into(),
        ));
    }
    let after = follow::last_event_id(&headers)?.unwrap_or(0);
    let rx = state.store.hub().subscribe_pipeline(id);
    if state.store.get_pipeline(id).await?.is_none() {
        return Err(ApiError::NotFound(format!("there is no pipeline {id}")));
    }
    Ok(follow::sse(
        PipelineEvents {
            store: state.store.clone(),
            pipeline_id: id,
        },
        rx,
        after,
        state.shutdown.clone(),
        state.sse_clients(),
    ))
}
