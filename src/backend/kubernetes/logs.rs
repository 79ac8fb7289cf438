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
use futures::{AsyncBufReadExt, AsyncReadExt};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::LogParams;
use tokio::sync::mpsc;

use super::client::Kube;
use crate::backend::OutputLine;
use crate::backend::lines::{LineSplitter, MAX_LINE};
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
    /// A long line whose first pieces were delivered when its stream broke: its timestamp and
    /// how many bytes of its text were delivered, so that the next read sends only the rest.
    partial: Option<(DateTime<Utc>, usize)>,
}

impl Cursor {
    /// A cursor for a step whose lines up to `after` are already stored.
    pub fn after(after: Option<DateTime<Utc>>) -> Cursor {
        Cursor {
            last: None,
            stored_until: after,
            delivered: 0,
            partial: None,
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
        self.partial = None;
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
    // One attempt: the caller retries an outage with its own, longer budget. The request is
    // boxed, so that the driver's task does not keep room for it while it reads the stream.
    match Box::pin(kube.call_once(|| pods.log_stream(pod, &params))).await {
        Ok(stream) => deliver(stream, follow, cursor, out, progress).await,
        Err(e) => StreamEnd::Failed(e),
    }
}

/// The longest read from the stream at once: a piece of a line plus its timestamp prefix.
/// A line is never held whole, so a container printing gigabytes without a newline costs
/// this much, not its size.
const SEGMENT: usize = MAX_LINE + 64;

/// The line being read: its timestamp, whether it is new, and its text so far.
struct OpenLine {
    at: DateTime<Utc>,
    /// False for a line delivered before (a resumed stream repeats a whole second) or one
    /// without a timestamp: the rest of it is read and dropped.
    new: bool,
    splitter: LineSplitter,
    /// Bytes of the text still to drop: delivered by an earlier stream that broke inside it.
    skip: usize,
    /// Bytes of the text delivered (including those dropped by `skip`).
    sent: usize,
}

/// Sends a log stream's new lines, cut into the pieces every backend delivers (a long line
/// comes whole under one timestamp, recording 44b).
///
/// A followed stream that ends inside a line leaves the rest of that line for the next read
/// (the connection may have broken in the middle of it); the cursor remembers how much of it
/// was sent, so the next read sends only the rest.
async fn deliver(
    mut stream: impl futures::AsyncBufRead + Unpin,
    follow: bool,
    cursor: &mut Cursor,
    out: &mpsc::Sender<OutputLine>,
    progress: &AtomicUsize,
) -> StreamEnd {
    let mut replay = cursor.restart();
    let mut line: Option<OpenLine> = None;
    // Grows with the longest segment read: a quiet stream holds nothing.
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let read = (&mut stream)
            .take(SEGMENT as u64)
            .read_until(b'\n', &mut buf)
            .await;
        let ended = match read {
            Ok(0) | Err(_) => true,
            Ok(_) => false,
        };
        if ended {
            if let Some(open) = line.take()
                && open.new
            {
                if follow {
                    // The rest comes with the next read: remember what was sent of it.
                    if open.sent > 0 {
                        cursor.partial = Some((open.at, open.sent));
                    }
                } else {
                    // An ended container's last line without `\n`.
                    if let Some(text) = open.splitter.finish()
                        && out.send(OutputLine { at: open.at, text }).await.is_err()
                    {
                        return StreamEnd::ReceiverGone;
                    }
                    cursor.delivered(open.at);
                }
            }
            return StreamEnd::Closed;
        }
        let complete = buf.ends_with(b"\n");
        let mut text: &[u8] = &buf;
        if line.is_none() {
            progress.fetch_add(1, Ordering::Relaxed);
            line = Some(match parse_head(&buf) {
                Some((at, offset)) => {
                    text = &buf[offset..];
                    let new = replay.is_new(at);
                    let skip = match cursor.partial {
                        Some((t, sent)) if new && t == at => sent,
                        _ => 0,
                    };
                    if new {
                        cursor.partial = None;
                    }
                    OpenLine {
                        at,
                        new,
                        splitter: LineSplitter::new(),
                        skip,
                        sent: skip,
                    }
                }
                None => OpenLine {
                    at: DateTime::<Utc>::MIN_UTC,
                    new: false,
                    splitter: LineSplitter::new(),
                    skip: 0,
                    sent: 0,
                },
            });
        }
        let open = line.as_mut().expect("a line is open");
        if open.new {
            let dropped = open.skip.min(text.len());
            open.skip -= dropped;
            for (piece, used) in open.splitter.push_measured(&text[dropped..]) {
                if out
                    .send(OutputLine {
                        at: open.at,
                        text: piece,
                    })
                    .await
                    .is_err()
                {
                    return StreamEnd::ReceiverGone;
                }
                open.sent += used;
            }
        }
        if complete {
            let open = line.take().expect("a line is open");
            if open.new {
                // The `\n` ended the splitter's last piece: nothing is pending.
                cursor.delivered(open.at);
            }
        }
    }
}

/// The timestamp at the start of a line and where its text begins (after the one space).
fn parse_head(segment: &[u8]) -> Option<(DateTime<Utc>, usize)> {
    // An RFC 3339 time with nanoseconds and an offset is at most 35 bytes.
    let head = &segment[..segment.len().min(40)];
    let space = head.iter().position(|&b| b == b' ');
    let stamp_end =
        space.unwrap_or_else(|| head.iter().position(|&b| b == b'\n').unwrap_or(head.len()));
    let stamp = std::str::from_utf8(&segment[..stamp_end]).ok()?;
    let at = DateTime::parse_from_rfc3339(stamp)
        .ok()?
        .with_timezone(&Utc);
    Some((at, space.map_or(stamp_end, |s| s + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn parses_the_timestamp_prefix_and_keeps_the_text_exact() {
        let line = b"2024-05-01T10:00:00.123456789Z  two spaces\n";
        let (at, offset) = parse_head(line).unwrap();
        assert_eq!(at, t("2024-05-01T10:00:00.123456789Z"));
        assert_eq!(&line[offset..], b" two spaces\n");
        let line = b"2024-05-01T10:00:00.1Z no newline";
        let (_, offset) = parse_head(line).unwrap();
        assert_eq!(&line[offset..], b"no newline");
        assert!(parse_head(b"not a time\n").is_none());
    }

    /// Runs [`deliver`] over `stream` and returns what it sent and how it ended.
    async fn read(stream: &[u8], follow: bool, cursor: &mut Cursor) -> Vec<OutputLine> {
        let (tx, mut rx) = mpsc::channel(1024);
        let end = deliver(
            futures::io::Cursor::new(stream.to_vec()),
            follow,
            cursor,
            &tx,
            &AtomicUsize::new(0),
        )
        .await;
        assert!(matches!(end, StreamEnd::Closed), "{end:?}");
        drop(tx);
        let mut lines = Vec::new();
        while let Some(line) = rx.recv().await {
            lines.push(line);
        }
        lines
    }

    fn stamped(lines: &[(&str, &str)]) -> Vec<u8> {
        lines
            .iter()
            .flat_map(|(at, text)| format!("{at} {text}").into_bytes())
            .collect()
    }

    #[tokio::test]
    async fn a_long_line_comes_in_bounded_pieces_under_its_timestamp() {
        let long = "x".repeat(3 * MAX_LINE + 10) + "\n";
        let stream = stamped(&[
            ("2024-05-01T10:00:00.1Z", &long),
            ("2024-05-01T10:00:00.2Z", "short\n"),
        ]);
        let mut cursor = Cursor::default();
        let lines = read(&stream, true, &mut cursor).await;
        assert_eq!(lines.len(), 5);
        assert!(lines.iter().all(|l| l.text.len() <= MAX_LINE + 1));
        let joined: String = lines[..4].iter().map(|l| l.text.as_str()).collect();
        assert_eq!(joined, long);
        assert!(
            lines[..4]
                .iter()
                .all(|l| l.at == t("2024-05-01T10:00:00.1Z"))
        );
        assert_eq!(lines[4].text, "short\n");
        assert_eq!(cursor.count(), 2);
    }

    #[tokio::test]
    async fn a_stream_broken_inside_a_long_line_resumes_with_the_rest_of_it() {
        let body = "y".repeat(2 * MAX_LINE + 100);
        // The first stream breaks inside the long line.
        let first = stamped(&[
            ("2024-05-01T10:00:00.1Z", "before\n"),
            ("2024-05-01T10:00:00.2Z", &body[..MAX_LINE + 500]),
        ]);
        let mut cursor = Cursor::default();
        let sent = read(&first, true, &mut cursor).await;
        assert_eq!(
            sent.len(),
            2,
            "the line so far, less what may be cut differently"
        );
        assert_eq!(sent[1].text.len(), MAX_LINE);
        // The resumed stream repeats the whole second, the long line complete this time.
        let whole = body.clone() + "\n";
        let second = stamped(&[
            ("2024-05-01T10:00:00.1Z", "before\n"),
            ("2024-05-01T10:00:00.2Z", &whole),
            ("2024-05-01T10:00:00.3Z", "after\n"),
        ]);
        let rest = read(&second, true, &mut cursor).await;
        let long: String = std::iter::once(&sent[1])
            .chain(&rest[..rest.len() - 1])
            .map(|l| l.text.as_str())
            .collect();
        assert_eq!(long, whole, "every byte of the line once");
        assert_eq!(sent[0].text, "before\n");
        assert_eq!(rest.last().unwrap().text, "after\n");
        assert_eq!(cursor.count(), 3);
    }

    #[tokio::test]
    async fn an_ended_containers_last_line_without_a_newline_is_delivered() {
        let stream = stamped(&[
            ("2024-05-01T10:00:00.1Z", "a\n"),
            ("2024-05-01T10:00:00.2Z", "end"),
        ]);
        let mut cursor = Cursor::default();
        let lines = read(&stream, false, &mut cursor).await;
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["a\n", "end"]);
        // Followed, the same stream leaves the unfinished line for the next read.
        let mut cursor = Cursor::default();
        let lines = read(&stream, true, &mut cursor).await;
        assert_eq!(lines.len(), 1);
        assert_eq!(cursor.count(), 1);
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
