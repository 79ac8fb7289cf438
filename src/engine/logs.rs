//! A step's output on its way to the database: masked, numbered, cut at the size cap, and
//! written in batches of at most about 128 KiB or 250 ms — one statement per batch.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::mask::Masker;
use crate::backend::OutputLine;
use crate::metrics_registry::Metrics;
use crate::model::LogLine;
use crate::store::{Fenced, Store};

const BATCH_BYTES: usize = 128 * 1024;
const BATCH_DELAY: Duration = Duration::from_millis(250);

/// What the pump stored, for metrics.
#[derive(Debug, Default, Clone, Copy)]
struct Pumped {
    lines: u64,
    bytes: u64,
    truncated: bool,
}

/// The start of the notice that ends a log at `PICULET_MAX_LOG_SIZE`.
pub const LIMIT_NOTICE: &str = "piculet: the log reached its limit of ";

/// What a step's log already holds when a pump begins: nothing for a first start, what
/// earlier attempts or replicas stored for an adopted or re-run step.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub bytes: u64,
    /// The log already ends at its limit: nothing more of the step is stored.
    pub truncated: bool,
}

/// Reads a step's output to its end (or until `stop`) and stores it; returns once every line
/// read is stored. One batch is written while the next is read, so that reading never waits on
/// the database longer than one write. The size cap counts what is `already` stored: it is the
/// step's, whichever replica or attempt wrote its lines.
#[allow(clippy::too_many_arguments)]
pub async fn pump(
    store: &Store,
    step_id: Uuid,
    owner: &str,
    masker: &Masker,
    max_bytes: usize,
    first_number: i64,
    already: Stored,
    mut output: mpsc::Receiver<OutputLine>,
    stop: CancellationToken,
    metrics: &Metrics,
) {
    let mut batch = Batch {
        step_id,
        masker,
        max_bytes,
        next: first_number,
        lines: Vec::new(),
        bytes: 0,
        stored_bytes: usize::try_from(already.bytes).unwrap_or(usize::MAX),
        done: Pumped {
            truncated: already.truncated,
            ..Pumped::default()
        },
        held: None,
    };
    let owner: std::sync::Arc<str> = owner.into();
    let mut deadline: Option<Instant> = None;
    let mut writing: Option<tokio::task::JoinHandle<()>> = None;
    // Grows only when lines come: a quiet step, which is most of them at any moment, holds
    // no room for 512.
    let mut received = Vec::new();
    loop {
        // Far enough away to never fire when no batch is waiting.
        let flush_at = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let flush = tokio::select! {
            // Whatever is waiting, in one wake-up: a step printing fast fills the channel.
            n = output.recv_many(&mut received, 512) => {
                if n == 0 {
                    break;
                }
                for line in received.drain(..) {
                    batch.accept(line);
                }
                if deadline.is_none() && !batch.lines.is_empty() {
                    deadline = Some(Instant::now() + BATCH_DELAY);
                }
                batch.bytes >= BATCH_BYTES
            },
            () = tokio::time::sleep_until(flush_at), if deadline.is_some() => true,
            // Abandoned (shutdown): store what was already read, leave the rest to whoever
            // adopts the step.
            () = stop.cancelled() => {
                while let Ok(line) = output.try_recv() {
                    batch.accept(line);
                }
                break;
            }
        };
        if flush {
            if let Some(previous) = writing.take() {
                let _ = previous.await;
            }
            let lines = batch.take();
            let store = store.clone();
            let owner = owner.clone();
            writing = Some(tokio::spawn(async move {
                write(&store, step_id, &owner, lines).await
            }));
            deadline = None;
        }
    }
    if let Some(previous) = writing.take() {
        let _ = previous.await;
    }
    batch.finish();
    let lines = batch.take();
    // Boxed: the pump lives as long as the step and mostly waits for lines.
    Box::pin(write(store, step_id, &owner, lines)).await;
    metrics
        .counter("piculet_log_lines_stored_total", &[])
        .increment(batch.done.lines);
    metrics
        .counter("piculet_log_bytes_stored_total", &[])
        .increment(batch.done.bytes);
}

/// The lines read and not yet written.
struct Batch<'a> {
    step_id: Uuid,
    masker: &'a Masker,
    max_bytes: usize,
    next: i64,
    lines: Vec<LogLine>,
    bytes: usize,
    stored_bytes: usize,
    done: Pumped,
    /// The unfinished end of a long line (a piece without `\n`), held back while secrets are
    /// masked, so that a secret split between two pieces is still found.
    held: Option<OutputLine>,
}

impl Batch<'_> {
    fn accept(&mut self, mut line: OutputLine) {
        if self.done.truncated {
            return; // drained, so that the step is never blocked on its pipe
        }
        if !self.masker.is_empty() {
            match self.held.take() {
                // The line went on: check the boundary, and keep back what may be the start
                // of a secret if it goes on further.
                Some(held) => {
                    line.text = held.text + &line.text;
                    if !line.text.ends_with('\n') {
                        let cut = self.masker.safe_cut(&line.text);
                        let rest = line.text.split_off(cut);
                        if !rest.is_empty() {
                            self.held = Some(OutputLine {
                                at: line.at,
                                text: rest,
                            });
                        }
                        if line.text.is_empty() {
                            return;
                        }
                    }
                }
                // A piece that may go on (or the last line, without `\n`): held whole until
                // the next piece or the end.
                None if !line.text.ends_with('\n') => {
                    self.held = Some(line);
                    return;
                }
                None => {}
            }
        }
        self.store(line);
    }

    /// The end of the output: what was held back is stored as it is.
    fn finish(&mut self) {
        if let Some(held) = self.held.take()
            && !self.done.truncated
            && !held.text.is_empty()
        {
            self.store(held);
        }
    }

    fn store(&mut self, line: OutputLine) {
        let mut text = self.masker.mask(line.text);
        if text.contains('\0') {
            // Postgres text cannot hold NUL; show where one was.
            text = text.replace('\0', "\u{FFFD}");
        }
        if self.stored_bytes.saturating_add(text.len()) > self.max_bytes {
            self.done.truncated = true;
            text = format!(
                "{LIMIT_NOTICE}{} bytes (PICULET_MAX_LOG_SIZE); further output of this step is discarded\n",
                self.max_bytes
            );
            tracing::info!(step_id = %self.step_id, "log truncated at its size limit");
        } else {
            self.stored_bytes += text.len();
            self.done.lines += 1;
            self.done.bytes += text.len() as u64;
        }
        self.bytes += text.len();
        self.lines.push(LogLine {
            number: self.next,
            at: line.at,
            text,
        });
        self.next += 1;
    }

    fn take(&mut self) -> Vec<LogLine> {
        self.bytes = 0;
        std::mem::take(&mut self.lines)
    }
}

/// Stores one line of piculet's own in a step's log (why a step starts over), numbered
/// `number`; the step's own output follows it.
pub async fn notice(store: &Store, step_id: Uuid, owner: &str, number: i64, text: String) {
    let line = LogLine {
        number,
        at: chrono::Utc::now(),
        text,
    };
    write(store, step_id, owner, vec![line]).await;
}

/// Writes a batch, retrying while the database is unreachable. A batch the database refuses
/// outright, or that still fails after about a minute, is given up with an error in the
/// server log rather than holding the step forever. A batch refused because this replica's
/// lease is gone is left to the replica that took the workflow over: it reads the step's output
/// on from the last line stored.
async fn write(store: &Store, step_id: Uuid, owner: &str, lines: Vec<LogLine>) {
    if lines.is_empty() {
        return;
    }
    let lines: std::sync::Arc<[LogLine]> = lines.into();
    // Twelve tries: eleven waits doubling from 100 ms up to 8 s, about 45 s in all (up to twice
    // that with the jitter, which keeps the steps of a replica from retrying in step after a
    // database blip).
    let mut waits = {
        use backon::BackoffBuilder as _;
        backon::ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(8))
            .with_max_times(11)
            .with_jitter()
            .build()
    };
    loop {
        match store.insert_log_lines(step_id, owner, lines.clone()).await {
            Ok(Fenced::Stored) => return,
            Ok(Fenced::LeaseLost) => {
                tracing::warn!(%step_id, lines = lines.len(), "the lease is gone: log lines left to the replica that took the workflow over");
                return;
            }
            Err(e) => {
                let refused = matches!(
                    &e,
                    crate::store::StoreError::Database(sqlx::Error::Database(_))
                );
                let wait = if refused { None } else { waits.next() };
                let Some(wait) = wait else {
                    tracing::error!(%step_id, error = %e, lines = lines.len(), "log lines could not be stored");
                    return;
                };
                tracing::warn!(%step_id, error = %e, "storing log lines failed; retrying");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn batch(masker: &Masker) -> Batch<'_> {
        Batch {
            step_id: Uuid::nil(),
            masker,
            max_bytes: usize::MAX,
            next: 1,
            lines: Vec::new(),
            bytes: 0,
            stored_bytes: 0,
            done: Pumped::default(),
            held: None,
        }
    }

    fn piece(text: &str) -> OutputLine {
        OutputLine {
            at: Utc::now(),
            text: text.to_string(),
        }
    }

    #[test]
    fn a_secret_split_between_two_pieces_of_a_long_line_is_masked() {
        let masker = Masker::new(["hunter2-secret"]);
        let mut b = batch(&masker);
        // A long line comes in pieces; the secret spans the boundary.
        b.accept(piece(&format!("{}hunter2-", "x".repeat(100))));
        b.accept(piece("secret and more\n"));
        b.accept(piece("next line\n"));
        b.finish();
        let texts: Vec<String> = b.take().into_iter().map(|l| l.text).collect();
        let all = texts.concat();
        assert_eq!(
            all,
            format!("{}******** and more\nnext line\n", "x".repeat(100))
        );
        assert!(texts.iter().all(|t| !t.contains("hunter2")), "{texts:?}");
    }

    #[test]
    fn a_secret_between_the_second_and_third_pieces_is_masked() {
        let masker = Masker::new(["hunter2-secret"]);
        let mut b = batch(&masker);
        b.accept(piece(&"a".repeat(200)));
        b.accept(piece(&format!("{}hunter2-s", "b".repeat(200))));
        b.accept(piece("ecret tail\n"));
        b.finish();
        let texts: Vec<String> = b.take().into_iter().map(|l| l.text).collect();
        assert_eq!(
            texts.concat(),
            format!("{}{}******** tail\n", "a".repeat(200), "b".repeat(200))
        );
        assert!(texts.iter().all(|t| !t.contains("hunter")), "{texts:?}");
        assert!(texts.iter().all(|t| !t.is_empty()), "{texts:?}");
    }

    #[test]
    fn an_unfinished_last_line_is_stored_at_the_end_whole() {
        let masker = Masker::new(["hunter2-secret"]);
        let mut b = batch(&masker);
        b.accept(piece("no newline at the end"));
        assert!(b.lines.is_empty(), "held while it may go on");
        b.finish();
        let texts: Vec<String> = b.take().into_iter().map(|l| l.text).collect();
        assert_eq!(texts, ["no newline at the end"]);
    }

    #[test]
    fn without_secrets_nothing_is_held() {
        let masker = Masker::new(std::iter::empty::<&str>());
        let mut b = batch(&masker);
        b.accept(piece("a piece of a long line"));
        assert_eq!(b.lines.len(), 1);
    }
}
