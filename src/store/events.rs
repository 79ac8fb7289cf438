//! Events: every state change, stored in the transaction that makes it, replayed by the
//! events stream.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use super::{Store, StoreError, notify, on_pool};
use crate::model::{Event, Status, Subject};

/// An event before it has its sequence number.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub pipeline_id: Uuid,
    pub subject: Subject,
    pub id: Uuid,
    pub name: String,
    pub status: Status,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Payload {
    name: String,
    exit_code: Option<i32>,
    reason: Option<String>,
}

impl NewEvent {
    /// What the `payload` column holds.
    pub(crate) fn payload(&self) -> Json<Payload> {
        Json(Payload {
            name: self.name.clone(),
            exit_code: self.exit_code,
            reason: self.reason.clone(),
        })
    }

    /// The event as stored with sequence number `seq`.
    pub(crate) fn numbered(self, seq: i64) -> Event {
        Event {
            seq,
            pipeline_id: self.pipeline_id,
            subject: self.subject,
            id: self.id,
            name: self.name,
            status: self.status,
            exit_code: self.exit_code,
            reason: self.reason,
            at: self.at,
        }
    }
}

pub(crate) fn subject_text(s: Subject) -> &'static str {
    match s {
        Subject::Pipeline => "pipeline",
        Subject::Workflow => "workflow",
        Subject::Step => "step",
    }
}

/// Locks the pipeline's row for the rest of the caller's transaction. Every transaction that
/// records an event takes this lock first, so that events are numbered in commit order and
/// the transactions of one pipeline never wait on each other in a cycle.
pub(crate) async fn lock_pipeline<'c, E, DB>(
    executor: E,
    pipeline_id: Uuid,
) -> Result<(), sqlx::Error>
where
    DB: sqlx::Database,
    E: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'q> Uuid: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query::<DB>("UPDATE pipelines SET event_count = event_count WHERE id = $1")
        .bind(pipeline_id)
        .execute(executor)
        .await?;
    Ok(())
}

/// Inserts the event inside the caller's transaction (which holds the pipeline's lock) and
/// returns it with its number; on Postgres the transaction also notifies other replicas.
pub(crate) async fn insert_event<'c, DB>(
    tx: &mut sqlx::Transaction<'c, DB>,
    e: NewEvent,
) -> Result<Event, sqlx::Error>
where
    DB: sqlx::Database,
    for<'t> &'t mut <DB as sqlx::Database>::Connection: sqlx::Executor<'t, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'q> Uuid: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Json<Payload>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'r> i64: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let (seq,): (i64,) = if DB::NAME == <sqlx::Postgres as sqlx::Database>::NAME {
        // The notification for other replicas, sent at the commit of this transaction, is
        // built in the statement that numbers the event: no round trip of its own. The
        // notification goes in the select list, which is evaluated for the one row.
        let (before, after) = notify::event_payload_parts(e.pipeline_id, e.subject, e.id, e.status);
        sqlx::query_as::<DB, (i64,)>(
            "WITH counted AS (UPDATE pipelines SET event_count = event_count + 1 WHERE id = $1 \
             RETURNING event_count) \
             SELECT event_count, pg_notify($2, concat($3, event_count, $4)) FROM counted",
        )
        .bind(e.pipeline_id)
        .bind(notify::CHANNEL)
        .bind(before.as_str())
        .bind(after.as_str())
        .fetch_one(&mut **tx)
        .await?
    } else {
        sqlx::query_as::<DB, (i64,)>(
            "UPDATE pipelines SET event_count = event_count + 1 WHERE id = $1 \
             RETURNING event_count",
        )
        .bind(e.pipeline_id)
        .fetch_one(&mut **tx)
        .await?
    };
    insert_numbered_event(tx, e, seq).await
}

/// Inserts an event whose number the caller already took from `pipelines.event_count`.
pub(crate) async fn insert_numbered_event<'c, DB>(
    tx: &mut sqlx::Transaction<'c, DB>,
    e: NewEvent,
    seq: i64,
) -> Result<Event, sqlx::Error>
where
    DB: sqlx::Database,
    for<'t> &'t mut <DB as sqlx::Database>::Connection: sqlx::Executor<'t, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'q> Uuid: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Json<Payload>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query::<DB>(
        "INSERT INTO events (pipeline_id, seq, subject, subject_id, status, payload, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(e.pipeline_id)
    .bind(seq)
    .bind(subject_text(e.subject))
    .bind(e.id)
    .bind(e.status.as_str())
    .bind(e.payload())
    .bind(e.at)
    .execute(&mut **tx)
    .await?;
    Ok(e.numbered(seq))
}

#[derive(sqlx::FromRow)]
struct EventRow {
    seq: i64,
    pipeline_id: Uuid,
    subject: String,
    subject_id: Uuid,
    status: String,
    payload: Json<Payload>,
    created_at: DateTime<Utc>,
}

impl Store {
    /// The pipeline's events after number `after`, oldest first.
    pub async fn events(
        &self,
        pipeline_id: Uuid,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Event>, StoreError> {
        self.read(async {
            let rows: Vec<EventRow> = on_pool!(self, pool => {
                sqlx::query_as(
                    "SELECT seq, pipeline_id, subject, subject_id, status, payload, created_at \
                     FROM events WHERE pipeline_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                )
                .bind(pipeline_id)
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await?
            });
            rows.into_iter()
                .map(|r| {
                    let subject = match r.subject.as_str() {
                        "pipeline" => Subject::Pipeline,
                        "workflow" => Subject::Workflow,
                        "step" => Subject::Step,
                        other => {
                            return Err(StoreError::Corrupt(format!("unknown subject {other:?}")));
                        }
                    };
                    Ok(Event {
                        seq: r.seq,
                        pipeline_id: r.pipeline_id,
                        subject,
                        id: r.subject_id,
                        name: r.payload.0.name,
                        status: Status::parse(&r.status)
                            .ok_or_else(|| StoreError::Corrupt(format!("status {:?}", r.status)))?,
                        exit_code: r.payload.0.exit_code,
                        reason: r.payload.0.reason,
                        at: r.created_at,
                    })
                })
                .collect()
        })
        .await
    }
}
