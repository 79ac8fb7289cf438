//! Following a step container's log with `timestamps=true`, and resuming a broken stream
//! without a gap or a duplicate.
//!
//! The kubelet filters `sinceTime` at whole seconds (recording 41c), so a resumed stream
//! starts at the second of the last line delivered and repeats what was already sent in that
//! second. [`Cursor`] remembers the last timestamp and how many lines carried it, and drops
//! exactly those on the way back.
//!
//! A stream that ends says nothing about the container: when the kubelet dies, the API server
//! ends an open follow exactly as it ends a finished log (recording 80), and answers new log
//! requests with 500 until the kubelet is back. The driver in the parent module decides from
//! the pod's status whether an end is an end; this module only reads, one request at a time,
//! and reports how the read ended.

use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, SubsecRound, Utc};
use futures::{AsyncBufReadExt, StreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::LogParams;
use tokio::sync::mpsc;

use super::client::Kube;
use crate::backend::OutputLine;
use crate::backend::lines::LineSplitter;
use crate::k8s::names::CONTAINER;

/// Where a log stream stands: what was delivered last.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Timestamp of the last line delivered, and how many delivered lines carried exactly it.
    last: Option<(DateTime<Utc>, usize)>,
    /// Lines at or before this time were stored before a restart (precision: microseconds,
    /// what the database keeps).
    stored_until: Option<DateTime<Utc>>,
    /// Lines delivered through this cursor, so that a caller can tell whether a read found
    /// anything new.
    delivered: u64,
}

impl Cursor {
    /// A cursor for a step whose lines up to `after` are already stored.
    pub fn after(after: Option<DateTime<Utc>>) -> Cursor {
        Cursor {
            last: None,
            stored_until: after,
            delivered: 0,
        }
    }

    /// The `sinceTime` to ask for: the whole second of the last line delivered.
    pub fn since(&self) -> Option<DateTime<Utc>> {
        self.last
            .map(|(t, _)| t)
            .or(self.stored_until)
            .map(|t| t.trunc_subsecs(0))
    }

    /// Starts reading a new stream: lines are compared against what was delivered.
    pub fn restart(&self) -> Replay {
        Replay {
            last: self.last,
            skip_at_last: self.last.map(|(_, n)| n).unwrap_or(0),
            stored_until: self.stored_until,
        }
    }

    /// How many lines were delivered through this cursor.
    pub fn count(&self) -> u64 {
        self.delivered
    }

    /// Records that a line with this timestamp was delivered.
    pub fn delivered(&mut self, at: DateTime<Utc>) {
        self.delivered += 1;
        self.last = match self.last {
            Some((t, n)) if t == at => Some((t, n + 1)),
            _ => Some((at, 1)),
        };
    }
}

/// The filter of one (re)opened stream.
#[derive(Debug)]
pub struct Replay {
    last: Option<(DateTime<Utc>, usize)>,
    skip_at_last: usize,
    stored_until: Option<DateTime<Utc>>,
}

impl Replay {
    /// Whether a line with this timestamp is new.
    pub fn is_new(&mut self, at: DateTime<Utc>) -> bool {
        if let Some(until) = self.stored_until
            && at.trunc_subsecs(6) <= until
        {
            return false;
        }
        match self.last {
            Some((t, _)) if at < t => false,
            Some((t, _)) if at == t && self.skip_at_last > 0 => {
                self.skip_at_last -= 1;
                false
            }
            _ => true,
        }
    }
}

/// Splits `2024-05-01T10:00:00.123456789Z text` into its time and text.
pub fn parse_line(line: &str) -> Option<(DateTime<Utc>, &str)> {
    let (stamp, text) = line.split_once(' ').unwrap_or((line, ""));
    let at = DateTime::parse_from_rfc3339(stamp)
        .ok()?
        .with_timezone(&Utc);
    Some((at, text))
}

/// How one stream ended.
#[derive(Debug)]
pub enum StreamEnd {
    /// The server closed it; the container may have ended or the connection broke.
    Closed,
    /// The engine stopped reading.
    ReceiverGone,
    /// The log cannot be read (the pod is gone, the container has not started).
    Failed(kube::Error),
}

/// Reads the log from the cursor on, sending new lines: following it while the container runs
/// (`follow`), or the whole rest of an ended container's log. Returns when the stream ends.
///
/// `progress` counts the lines read, so that a caller can tell a quiet stream from a busy one.
/// A followed stream that ends inside a line (no `\n` yet) leaves that line for the next
/// read: the connection may have broken in the middle of it.
pub async fn read_log(
    kube: &Kube,
    pods: &Api<Pod>,
    pod: &str,
    follow: bool,
    cursor: &mut Cursor,
    out: &mpsc::Sender<OutputLine>,
    progress: &AtomicUsize,
) -> StreamEnd {
    let params = LogParams {
        container: Some(CONTAINER.to_string()),
        follow,
        timestamps: true,
        since_time: cursor
            .since()
            .and_then(|t| jiff::Timestamp::from_second(t.timestamp()).ok()),
        ..LogParams::default()
    };
    // One attempt: the caller retries an outage with its own, longer budget.
    let stream = match kube.call_once(|| pods.log_stream(pod, &params)).await {
        Ok(s) => s,
        Err(e) => return StreamEnd::Failed(e),
    };
    let mut replay = cursor.restart();
    let mut lines = std::pin::pin!(split_lines(stream));
    while let Some(line) = lines.next().await {
        let Ok(raw) = line else {
            return StreamEnd::Closed;
        };
        progress.fetch_add(1, Ordering::Relaxed);
        if follow && !raw.ends_with(b"\n") {
            return StreamEnd::Closed;
        }
        let text = String::from_utf8_lossy(&raw);
        let Some((at, body)) = parse_line(&text) else {
            continue;
        };
        if !replay.is_new(at) {
            continue;
        }
        // A long line comes whole, under one timestamp (recording 44b); it is cut into the
        // pieces every backend delivers.
        let mut splitter = LineSplitter::new();
        let mut pieces = splitter.push(body.as_bytes());
        pieces.extend(splitter.finish());
        for text in pieces {
            if out.send(OutputLine { at, text }).await.is_err() {
                return StreamEnd::ReceiverGone;
            }
        }
        cursor.delivered(at);
    }
    StreamEnd::Closed
}

/// The stream's lines with their `\n` kept, so that the last line without one stays so.
fn split_lines(
    reader: impl futures::AsyncBufRead + Unpin,
) -> impl futures::Stream<Item = std::io::Result<Vec<u8>>> {
    futures::stream::unfold(Some(reader), |reader| async move {
        let mut reader = reader?;
        let mut buf = Vec::new();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) => None,
            Ok(_) => Some((Ok(buf), Some(reader))),
            Err(e) => Some((Err(e), None)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn parses_the_timestamp_prefix_and_keeps_the_text_exact() {
        let (at, text) = parse_line("2024-05-01T10:00:00.123456789Z  two spaces\n").unwrap();
        assert_eq!(at, t("2024-05-01T10:00:00.123456789Z"));
        assert_eq!(text, " two spaces\n");
        let (_, text) = parse_line("2024-05-01T10:00:00.1Z no newline").unwrap();
        assert_eq!(text, "no newline");
        assert!(parse_line("not a time\n").is_none());
    }

    #[test]
    fn resumes_at_the_whole_second_and_drops_what_was_delivered() {
        let mut c = Cursor::default();
        assert_eq!(c.since(), None);
        c.delivered(t("2024-05-01T10:00:00.5Z"));
        c.delivered(t("2024-05-01T10:00:01.25Z"));
        c.delivered(t("2024-05-01T10:00:01.25Z"));
        assert_eq!(c.since(), Some(t("2024-05-01T10:00:01Z")));

        // The resumed stream repeats the whole second 10:00:01.
        let mut r = c.restart();
        assert!(!r.is_new(t("2024-05-01T10:00:01.1Z")));
        assert!(!r.is_new(t("2024-05-01T10:00:01.25Z")));
        assert!(!r.is_new(t("2024-05-01T10:00:01.25Z")));
        // A third line with the same timestamp was not delivered yet.
        assert!(r.is_new(t("2024-05-01T10:00:01.25Z")));
        assert!(r.is_new(t("2024-05-01T10:00:01.3Z")));
    }

    #[test]
    fn after_a_restart_skips_what_the_database_holds_at_its_precision() {
        // Stored with microseconds: the line at .123456789 is the one stored as .123456.
        let c = Cursor::after(Some(t("2024-05-01T10:00:00.123456Z")));
        assert_eq!(c.since(), Some(t("2024-05-01T10:00:00Z")));
        let mut r = c.restart();
        assert!(!r.is_new(t("2024-05-01T10:00:00.1Z")));
        assert!(!r.is_new(t("2024-05-01T10:00:00.123456789Z")));
        assert!(r.is_new(t("2024-05-01T10:00:00.123457Z")));
    }
}
