//! Log lines: written in batches (one statement per batch, never one per line), read back in
//! order from any line number.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Pool, Store, StoreError, on_pool};
use crate::model::LogLine;

/// Rows per statement on SQLite, under its limit of 32766 bound parameters.
const SQLITE_ROWS_PER_INSERT: usize = 5000;

/// Escapes text for COPY's text format.
fn copy_escape(text: &str, out: &mut String) {
    // The common case, a line with nothing to escape but its own newline, without a scan
    // character by character.
    let body = text.strip_suffix('\n').unwrap_or(text);
    if !body.contains(['\\', '\n', '\r', '\t']) {
        out.push_str(body);
        if body.len() != text.len() {
            out.push_str("\\n");
        }
        return;
    }
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
}

/// Writes timestamps as COPY reads them (`2024-05-01T10:00:00.123456Z`), formatting the
/// date and time once per second: the lines of a batch mostly share their second.
#[derive(Default)]
struct Timestamps {
    second: Option<i64>,
    prefix: String,
}

impl Timestamps {
    fn push(&mut self, at: DateTime<Utc>, out: &mut String) {
        if at.timestamp_subsec_nanos() >= 1_000_000_000 {
            // A leap second: chrono's own formatting.
            out.push_str(&at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
            return;
        }
        let second = at.timestamp();
        if self.second != Some(second) {
            self.second = Some(second);
            self.prefix = at.format("%Y-%m-%dT%H:%M:%S").to_string();
        }
        out.push_str(&self.prefix);
        let micros = at.timestamp_subsec_micros().min(999_999);
        let mut digits = [b'0'; 6];
        let mut n = micros;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        out.push('.');
        out.push_str(std::str::from_utf8(&digits).unwrap_or("000000"));
        out.push('Z');
    }
}

#[derive(sqlx::FromRow)]
struct LineRow {
    number: i64,
    ts: DateTime<Utc>,
    text: String,
}

impl Store {
    /// Stores a batch of a step's lines in one transaction, then publishes it to followers.
    pub async fn insert_log_lines(
        &self,
        step_id: Uuid,
        lines: Arc<[LogLine]>,
    ) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        match &self.pool {
            Pool::Postgres(pool) => {
                // COPY: the fastest way into Postgres, one round trip for the batch.
                let mut data = String::with_capacity(lines.iter().map(|l| l.text.len() + 80).sum());
                let step = step_id.to_string();
                let mut stamps = Timestamps::default();
                for line in lines.iter() {
                    use std::fmt::Write as _;
                    let _ = write!(data, "{step}\t{}\t", line.number);
                    stamps.push(line.at, &mut data);
                    data.push('\t');
                    copy_escape(&line.text, &mut data);
                    data.push('\n');
                }
                let mut conn = pool.acquire().await?;
                let mut copy = conn
                    .copy_in_raw("COPY log_lines (step_id, number, ts, text) FROM STDIN")
                    .await?;
                copy.send(data.as_bytes()).await?;
                copy.finish().await?;
            }
            Pool::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
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
        Ok(())
    }

    /// Up to `limit` lines after line `after`, in order.
    pub async fn log_lines(
        &self,
        step_id: Uuid,
        after: i64,
        limit: i64,
    ) -> Result<Vec<LogLine>, StoreError> {
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
    }

    /// The last stored line of a step: where an adopted step's log resumes.
    pub async fn last_log_line(&self, step_id: Uuid) -> Result<Option<LogLine>, StoreError> {
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
    }
}

#[cfg(test)]
mod tests {
    use super::{Timestamps, copy_escape};
    use chrono::{DateTime, Utc};

    #[test]
    fn timestamps_are_written_as_copy_reads_them() {
        let mut stamps = Timestamps::default();
        let mut out = String::new();
        for t in [
            "2024-05-01T10:00:00.000001Z",
            "2024-05-01T10:00:00.123456Z",
            "2024-05-01T10:00:01.999999Z",
            "2024-12-31T23:59:59Z",
        ] {
            let at: DateTime<Utc> = t.parse().unwrap();
            stamps.push(at, &mut out);
            out.push(' ');
        }
        assert_eq!(
            out,
            "2024-05-01T10:00:00.000001Z 2024-05-01T10:00:00.123456Z 2024-05-01T10:00:01.999999Z 2024-12-31T23:59:59.000000Z "
        );
    }

    #[test]
    fn copy_escapes_what_the_text_format_needs() {
        let escaped = |t: &str| {
            let mut out = String::new();
            copy_escape(t, &mut out);
            out
        };
        assert_eq!(escaped("plain line\n"), "plain line\\n");
        assert_eq!(escaped("no newline"), "no newline");
        assert_eq!(escaped("a\tb\\c\r\n"), "a\\tb\\\\c\\r\\n");
        assert_eq!(escaped("two\nlines\n"), "two\\nlines\\n");
    }
}
