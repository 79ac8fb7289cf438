//! Log lines: written in batches (one statement per batch, never one per line), read back in
//! order from any line number.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Pool, Store, StoreError, notify, on_pool};
use crate::model::LogLine;

/// Rows per statement on SQLite, under its limit of 32766 bound parameters.
const SQLITE_ROWS_PER_INSERT: usize = 5000;

/// Whether a fenced write was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    Stored,
    /// The writer no longer holds the workflow's lease: nothing was stored; the replica that
    /// holds it now reads the step's output on from the last line stored.
    LeaseLost,
}

#[derive(sqlx::FromRow)]
struct LineRow {
    number: i64,
    ts: DateTime<Utc>,
    text: String,
}

impl Store {
    /// Stores a batch of a step's lines in one transaction, then publishes it to followers
    /// (on Postgres, those of other replicas are notified by the transaction itself), if `owner`
    /// holds the lease of the step's workflow; otherwise stores nothing and answers
    /// [`Fenced::LeaseLost`].
    ///
    /// The fence keeps a replica that stalled past its lease from writing lines the adopting
    /// replica numbers too: on Postgres the batch holds the workflow's row `FOR SHARE`, so a
    /// claim (`FOR UPDATE SKIP LOCKED`) comes either before it (and the batch is refused) or
    /// after its commit (and the adopter resumes after its lines).
    pub async fn insert_log_lines(
        &self,
        step_id: Uuid,
        owner: &str,
        lines: Arc<[LogLine]>,
    ) -> Result<Fenced, StoreError> {
        self.write(async {
            if lines.is_empty() {
                return Ok(Fenced::Stored);
            }
            match &self.pool {
                Pool::Postgres(pool) => {
                    // One statement with the batch as three arrays, bound in binary and sent in
                    // one write. COPY parses faster, but its data and its end go out as two
                    // writes, and Nagle's algorithm meeting the server's delayed ACK held one
                    // batch in four for 40 ms (sqlx offers no TCP_NODELAY).
                    let numbers: Vec<i64> = lines.iter().map(|l| l.number).collect();
                    let stamps: Vec<DateTime<Utc>> = lines.iter().map(|l| l.at).collect();
                    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
                    // The notification for other replicas rides in the same statement, so
                    // in the same transaction: sent at its commit, never before.
                    let last = lines.last().map_or(0, |l| l.number);
                    let held = sqlx::query(
                        "WITH held AS (SELECT w.id FROM steps s \
                         JOIN workflows w ON w.id = s.workflow_id \
                         WHERE s.id = $1 AND w.lease_owner = $7 FOR SHARE OF w), \
                         stored AS (INSERT INTO log_lines (step_id, number, ts, text) \
                         SELECT $1, u.n, u.t, u.x \
                         FROM unnest($2::int8[], $3::timestamptz[], $4::text[]) AS u (n, t, x) \
                         WHERE EXISTS (SELECT 1 FROM held)) \
                         SELECT pg_notify($5, $6) FROM held",
                    )
                    .bind(step_id)
                    .bind(numbers)
                    .bind(stamps)
                    .bind(texts)
                    .bind(notify::CHANNEL)
                    .bind(notify::lines_payload(step_id, last, self.hub.origin()))
                    .bind(owner)
                    .fetch_optional(pool)
                    .await?;
                    if held.is_none() {
                        return Ok(Fenced::LeaseLost);
                    }
                }
                Pool::Sqlite(pool) => {
                    let mut tx = pool.begin().await?;
                    let held: Option<(i32,)> = sqlx::query_as(
                        "SELECT 1 FROM steps s JOIN workflows w ON w.id = s.workflow_id \
                         WHERE s.id = $1 AND w.lease_owner = $2",
                    )
                    .bind(step_id)
                    .bind(owner)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if held.is_none() {
                        return Ok(Fenced::LeaseLost);
                    }
                    for chunk in lines.chunks(SQLITE_ROWS_PER_INSERT) {
                        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                            "INSERT INTO log_lines (step_id, number, ts, text) ",
                        );
                        q.push_values(chunk, |mut row, line| {
                            row.push_bind(step_id)
                                .push_bind(line.number)
                                .push_bind(line.at)
                                .push_bind(line.text.as_str());
                        });
                        q.build().execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                }
            }
            self.hub.publish_lines(step_id, lines);
            Ok(Fenced::Stored)
        })
        .await
    }

    /// Up to `limit` lines after line `after`, in order.
    pub async fn log_lines(
        &self,
        step_id: Uuid,
        after: i64,
        limit: i64,
    ) -> Result<Vec<LogLine>, StoreError> {
        self.read(async {
            let rows: Vec<LineRow> = on_pool!(self, pool => {
                sqlx::query_as(
                    "SELECT number, ts, text FROM log_lines WHERE step_id = $1 AND number > $2 \
                     ORDER BY number LIMIT $3",
                )
                .bind(step_id)
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await?
            });
            Ok(rows
                .into_iter()
                .map(|r| LogLine {
                    number: r.number,
                    at: r.ts,
                    text: r.text,
                })
                .collect())
        })
        .await
    }

    /// How many bytes of a step's log are stored, and whether it holds the notice that it
    /// reached `PICULET_MAX_LOG_SIZE` (whose text begins with `limit_notice`): where the cap
    /// stands for a replica that adopts the step or runs it again. Reads the whole log (only
    /// the lengths on Postgres, where long texts are not decompressed to be measured); asked
    /// once per adopted or re-run step.
    pub async fn log_size(
        &self,
        step_id: Uuid,
        limit_notice: &str,
    ) -> Result<(u64, bool), StoreError> {
        let pattern = format!("{}%", limit_notice.replace(['%', '_'], ""));
        self.read(async {
            let (bytes, truncated): (Option<i64>, Option<i64>) = match &self.pool {
                Pool::Postgres(pool) => {
                    sqlx::query_as(
                        "SELECT SUM(octet_length(text))::int8, \
                                MAX(CASE WHEN text LIKE $2 THEN 1 ELSE 0 END)::int8 \
                         FROM log_lines WHERE step_id = $1",
                    )
                    .bind(step_id)
                    .bind(&pattern)
                    .fetch_one(pool)
                    .await?
                }
                Pool::Sqlite(pool) => {
                    sqlx::query_as(
                        "SELECT SUM(length(CAST(text AS BLOB))), \
                                MAX(CASE WHEN text LIKE $2 THEN 1 ELSE 0 END) \
                         FROM log_lines WHERE step_id = $1",
                    )
                    .bind(step_id)
                    .bind(&pattern)
                    .fetch_one(pool)
                    .await?
                }
            };
            Ok((
                u64::try_from(bytes.unwrap_or(0)).unwrap_or(0),
                truncated.unwrap_or(0) > 0,
            ))
        })
        .await
    }

    /// The last stored line of a step: where an adopted step's log resumes.
    pub async fn last_log_line(&self, step_id: Uuid) -> Result<Option<LogLine>, StoreError> {
        self.read(async {
            let row: Option<LineRow> = on_pool!(self, pool => {
                sqlx::query_as(
                    "SELECT number, ts, text FROM log_lines WHERE step_id = $1 \
                     ORDER BY number DESC LIMIT 1",
                )
                .bind(step_id)
                .fetch_optional(pool)
                .await?
            });
            Ok(row.map(|r| LogLine {
                number: r.number,
                at: r.ts,
                text: r.text,
            }))
        })
        .await
    }
}
