//! A step's output on its way to the database: masked, numbered, cut at the size cap, and
//! written in batches of at most about 128 KiB or 250 ms — one statement per batch.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::mask::Masker;
use crate::backend::OutputLine;
use crate::model::LogLine;
use crate::store::Store;

const BATCH_BYTES: usize = 128 * 1024;
const BATCH_DELAY: Duration = Duration::from_millis(250);

/// What the pump did, for metrics and the step's record.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pumped {
    pub lines: u64,
    pub bytes: u64,
    pub truncated: bool,
}

/// Reads a step's output to its end (or until `stop`) and stores it; returns once every line
/// read is stored.
pub async fn pump(
    store: &Store,
    step_id: Uuid,
    masker: &Masker,
    max_bytes: usize,
    first_number: i64,
    mut output: mpsc::Receiver<OutputLine>,
    stop: CancellationToken,
) -> Pumped {
    let mut batch: Vec<LogLine> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut deadline: Option<Instant> = None;
    let mut next = first_number;
    let mut done = Pumped::default();
    let mut stored_bytes = 0usize;

    loop {
        // Far enough away to never fire when no batch is waiting.
        let flush_at = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let received = tokio::select! {
            line = output.recv() => Some(line),
            () = tokio::time::sleep_until(flush_at), if deadline.is_some() => None,
            // Abandoned (shutdown): store what was read, leave the rest to whoever adopts
            // the step.
            () = stop.cancelled() => Some(None),
        };
        match received {
            // The batch is old enough: write it.
            None => {
                write(store, step_id, &mut batch).await;
                batch_bytes = 0;
                deadline = None;
            }
            // The step's output ended.
            Some(None) => break,
            Some(Some(line)) => {
                if done.truncated {
                    continue; // keep draining so that the step is never blocked on its pipe
                }
                let text = masker.mask(line.text);
                if stored_bytes + text.len() > max_bytes {
                    done.truncated = true;
                    let notice = format!(
                        "piculet: the log reached its limit of {max_bytes} bytes (PICULET_MAX_LOG_SIZE); further output of this step is discarded\n"
                    );
                    batch.push(LogLine {
                        number: next,
                        at: line.at,
                        text: notice,
                    });
                    next += 1;
                    continue;
                }
                stored_bytes += text.len();
                batch_bytes += text.len();
                done.lines += 1;
                done.bytes += text.len() as u64;
                batch.push(LogLine {
                    number: next,
                    at: line.at,
                    text,
                });
                next += 1;
                if batch_bytes >= BATCH_BYTES {
                    write(store, step_id, &mut batch).await;
                    batch_bytes = 0;
                    deadline = None;
                } else if deadline.is_none() {
                    deadline = Some(Instant::now() + BATCH_DELAY);
                }
            }
        }
    }
    write(store, step_id, &mut batch).await;
    metrics::counter!("piculet_log_lines_stored_total").increment(done.lines);
    metrics::counter!("piculet_log_bytes_stored_total").increment(done.bytes);
    done
}

/// Writes and empties the batch, retrying while the database is unreachable: a line that was
/// read is never dropped.
async fn write(store: &Store, step_id: Uuid, batch: &mut Vec<LogLine>) {
    if batch.is_empty() {
        return;
    }
    let lines: std::sync::Arc<[LogLine]> = std::mem::take(batch).into();
    let mut delay = Duration::from_millis(100);
    loop {
        match store.insert_log_lines(step_id, lines.clone()).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(%step_id, error = %e, "storing log lines failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
