//! Reading a step's log file into [`OutputLine`]s, and the task that follows a step to its
//! end: tails the file, learns when the step's wrapper ended, drains and kills what is left
//! of its group, and reports the exit.
//!
//! Resuming after the lines already stored. The engine re-attaches with the time of the last
//! line it stored. Every piece read from a log gets a time unique within the attempt and
//! strictly increasing (whole microseconds, which both databases store exactly), and that
//! time is appended to the attempt's stamps file before the piece is sent: one line per read,
//! `first count first_at_us offset` (the pieces `first..first+count` have the times
//! `first_at_us + k`, and the first of them starts at byte `offset` of the log). A replica that
//! adopts the attempt finds the piece of that time, starts splitting at its read's offset (a
//! piece boundary, where [`LineSplitter`] starts afresh and so cuts exactly as before) and
//! skips up to and including it. Pieces read earlier keep their times; new ones get new times.
//!
//! One case is not exact: when secrets are masked, the engine holds back the end of a piece
//! without `\n` (a cut of a line over 64 KiB) until the next piece; if its replica dies
//! meanwhile, that held part of one piece is lost.

use std::io::{self, Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rustix::process::Signal;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use uuid::Uuid;

use super::super::lines::LineSplitter;
use super::super::{OutputLine, StepExit};
use super::process::{self, POLL};
use super::record::{self, Files};
use super::{State, lock};

/// How long output is still read after a step's main process exited, for what its background
/// processes write; then the group is killed. Bounded, so that a background process cannot
/// keep the step running.
pub(super) const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// Lines buffered between the reader and the engine; beyond that the reader waits (the step
/// does not: its output waits in the file).
pub(super) const OUTPUT_CAPACITY: usize = 1024;
const READ_BUFFER: usize = 64 * 1024;
/// The first wait after the log had nothing new, doubled while it stays idle up to
/// [`IDLE_MAX`]: a step printing steadily is read within about a millisecond, one that was
/// idle within 5 ms, for 200 empty reads a second while it stays idle.
const IDLE_MIN: Duration = Duration::from_millis(1);
const IDLE_MAX: Duration = Duration::from_millis(5);

/// One line of a stamps file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    first: u64,
    count: u64,
    first_at: i64,
    offset: u64,
}

/// Where reading a log starts, and how many pieces from there were already delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ResumeAt {
    offset: u64,
    piece: u64,
    skip_until: u64,
}

impl ResumeAt {
    pub(super) const START: ResumeAt = ResumeAt {
        offset: 0,
        piece: 0,
        skip_until: 0,
    };
}

/// The stamps of a file, and the length of its well-formed part.
fn load_stamps(path: &Path) -> (Vec<Stamp>, u64) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut stamps = Vec::new();
    let mut good = 0;
    // A line cut short by a crash is the last one; it is ignored (the pieces it would name
    // were never sent).
    for line in text.split_inclusive('\n') {
        let mut f = line.trim_end_matches('\n').split(' ');
        let mut next = || f.next().and_then(|v| v.parse::<i64>().ok());
        let (Some(first), Some(count), Some(first_at), Some(offset)) =
            (next(), next(), next(), next())
        else {
            break;
        };
        let (Ok(first), Ok(count), Ok(offset)) = (
            u64::try_from(first),
            u64::try_from(count),
            u64::try_from(offset),
        ) else {
            break;
        };
        if !line.ends_with('\n') || f.next().is_some() {
            break;
        }
        good += line.len() as u64;
        stamps.push(Stamp {
            first,
            count,
            first_at,
            offset,
        });
    }
    (stamps, good)
}

/// Where to resume after the piece stamped `after` (see the module's documentation).
fn resume_point(stamps: &[Stamp], after: Option<DateTime<Utc>>) -> ResumeAt {
    let Some(after) = after.map(|a| a.timestamp_micros()) else {
        return ResumeAt::START;
    };
    match stamps.iter().rev().find(|s| s.first_at <= after) {
        Some(s) => {
            let delivered = u64::try_from(after - s.first_at + 1)
                .unwrap_or(0)
                .min(s.count);
            ResumeAt {
                offset: s.offset,
                piece: s.first,
                skip_until: s.first + delivered,
            }
        }
        // Lines stored before anything was stamped cannot come from this attempt's file:
        // deliver everything rather than guess.
        None => ResumeAt::START,
    }
}

/// Reads a log file into pieces with their times.
pub(super) struct Tail {
    file: std::fs::File,
    /// The log's bytes read so far (the file offset).
    consumed: u64,
    splitter: LineSplitter,
    /// The index of the next piece to come out of the splitter.
    piece: u64,
    /// Pieces below this index were delivered by an earlier reader: not sent again.
    skip_until: u64,
    stamps: Vec<Stamp>,
    stamps_file: Option<std::fs::File>,
    /// The time of the last piece stamped, in microseconds.
    last_at: i64,
    buf: Vec<u8>,
}

impl Tail {
    /// A reader of an attempt's log from `at`. The stamps already written are kept and new
    /// ones appended.
    pub(super) fn open(files: &Files, after: Option<DateTime<Utc>>) -> io::Result<Tail> {
        let (stamps, good) = load_stamps(&files.stamps());
        let at = resume_point(&stamps, after);
        let mut file = std::fs::File::open(files.log())?;
        file.seek(io::SeekFrom::Start(at.offset))?;
        // Without its stamps file the output is still read; only a later adoption would
        // resume less exactly.
        let stamps_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(files.stamps())
            .and_then(|f| {
                // A line cut short by a crash goes, so that appended lines stay parseable.
                if f.metadata()?.len() > good {
                    f.set_len(good)?;
                }
                Ok(f)
            })
            .ok();
        let last_at = stamps
            .last()
            .map(|s| s.first_at + s.count as i64 - 1)
            .unwrap_or(i64::MIN);
        Ok(Tail {
            file,
            consumed: at.offset,
            splitter: LineSplitter::new(),
            piece: at.piece,
            skip_until: at.skip_until,
            stamps,
            stamps_file,
            last_at,
            buf: vec![0u8; READ_BUFFER],
        })
    }

    /// Reads what the file holds now, up to one buffer; sends its pieces. Returns the number
    /// of bytes read (0: nothing new).
    async fn read_some(&mut self, out: &mut Output) -> usize {
        // A read error on a regular file is not transient: it is taken as the end.
        let n = self.file.read(&mut self.buf).unwrap_or_default();
        if n > 0 {
            let start = self.consumed - self.splitter.pending_len() as u64;
            self.consumed += n as u64;
            let pieces = self.splitter.push_measured(&self.buf[..n]);
            self.deliver(start, pieces, out).await;
        }
        n
    }

    /// Reads to the end of what the file holds now.
    async fn read_all(&mut self, out: &mut Output) {
        while self.read_some(out).await > 0 {}
    }

    async fn finish(&mut self, out: &mut Output) {
        let start = self.consumed - self.splitter.pending_len() as u64;
        if let Some(rest) = std::mem::take(&mut self.splitter).finish() {
            let len = rest.len();
            self.deliver(start, vec![(rest, len)], out).await;
        }
    }

    /// The time of piece `index`: the one already stamped, or a new one.
    fn stamped(&self, index: u64) -> Option<i64> {
        // New pieces, the common case, are past the last stamp: no search.
        let last = self.stamps.last()?;
        if index >= last.first + last.count {
            return None;
        }
        let i = self.stamps.partition_point(|s| s.first <= index);
        let s = self.stamps.get(i.checked_sub(1)?)?;
        (index < s.first + s.count).then(|| s.first_at + (index - s.first) as i64)
    }

    async fn deliver(&mut self, mut offset: u64, pieces: Vec<(String, usize)>, out: &mut Output) {
        if pieces.is_empty() {
            return;
        }
        let mut timed = Vec::with_capacity(pieces.len());
        let mut new: Option<Stamp> = None;
        for (text, len) in pieces {
            let index = self.piece;
            self.piece += 1;
            let at = match self.stamped(index) {
                Some(at) => at,
                None => {
                    // One clock reading per read; each piece a microsecond after the last.
                    let stamp = new.get_or_insert_with(|| Stamp {
                        first: index,
                        count: 0,
                        first_at: Utc::now()
                            .timestamp_micros()
                            .max(self.last_at.saturating_add(1)),
                        offset,
                    });
                    stamp.count += 1;
                    stamp.first_at + stamp.count as i64 - 1
                }
            };
            self.last_at = self.last_at.max(at);
            offset += len as u64;
            if index >= self.skip_until {
                timed.push((at, text));
            }
        }
        if let Some(stamp) = new {
            // Written before the pieces are sent: a piece the engine may have stored always
            // has its time on file. A page-cache write; the record's fsync is what protects
            // against a host crash, which the step does not survive anyway.
            if let Some(file) = &mut self.stamps_file {
                let line = format!(
                    "{} {} {} {}\n",
                    stamp.first, stamp.count, stamp.first_at, stamp.offset
                );
                if file.write_all(line.as_bytes()).is_err() {
                    self.stamps_file = None;
                }
            }
            self.stamps.push(stamp);
        }
        for (at, text) in timed {
            let at = DateTime::from_timestamp_micros(at).unwrap_or_else(Utc::now);
            out.send(OutputLine { at, text }).await;
        }
    }
}

/// The sending side of a step's output. When the engine stops listening, the output is still
/// read (so that the stamps and the end stay right) but goes nowhere.
pub(super) struct Output {
    pub(super) tx: Option<mpsc::Sender<OutputLine>>,
}

impl Output {
    async fn send(&mut self, line: OutputLine) {
        if let Some(tx) = &self.tx
            && tx.send(line).await.is_err()
        {
            self.tx = None;
        }
    }
}

/// The step's wrapper, as the supervisor waits for it.
pub(super) enum Main {
    /// Started by this process: waited for, its status exact.
    Child(tokio::process::Child),
    /// Started by another replica (or an earlier piculet): watched through /proc, its status
    /// read from the exit file it writes.
    Adopted { pid: i32, start: Option<u64> },
}

/// How the wrapper ended, as far as it is known when it is gone.
enum Ended {
    Status(io::Result<std::process::ExitStatus>),
    Gone,
}

impl Main {
    /// Whether it ended, without waiting (for an adopted one, at most every [`POLL`]).
    fn try_ended(&mut self, checked: &mut Instant) -> Option<Ended> {
        match self {
            Main::Child(child) => match child.try_wait() {
                Ok(Some(status)) => Some(Ended::Status(Ok(status))),
                Ok(None) => None,
                Err(e) => Some(Ended::Status(Err(e))),
            },
            Main::Adopted { pid, start } => {
                if checked.elapsed() < POLL {
                    return None;
                }
                *checked = Instant::now();
                (!process::process_alive(*pid, *start)).then_some(Ended::Gone)
            }
        }
    }

    async fn ended(&mut self) -> Ended {
        match self {
            Main::Child(child) => Ended::Status(child.wait().await),
            Main::Adopted { pid, start } => {
                while process::process_alive(*pid, *start) {
                    tokio::time::sleep(POLL).await;
                }
                Ended::Gone
            }
        }
    }
}

/// The task that owns a running step attempt in this process.
pub(super) struct Supervisor {
    pub(super) step_id: Uuid,
    pub(super) pgid: i32,
    /// The start time of the group's leader, the wrapper (see [`process::proc_start`]).
    pub(super) start: Option<u64>,
    pub(super) state: Arc<Mutex<State>>,
    pub(super) out: Output,
    pub(super) tail: Tail,
    pub(super) exit_file: PathBuf,
}

impl Supervisor {
    pub(super) async fn run(
        mut self,
        mut main: Main,
        done: watch::Sender<bool>,
        exit: oneshot::Sender<StepExit>,
    ) {
        let mut idle = IDLE_MIN;
        let mut checked = Instant::now();
        let ended = loop {
            if self.tail.read_some(&mut self.out).await > 0 {
                idle = IDLE_MIN;
                // A step that writes faster than it is read must still be seen to end.
                if let Some(ended) = main.try_ended(&mut checked) {
                    break ended;
                }
                continue;
            }
            tokio::select! {
                ended = main.ended() => break ended,
                () = tokio::time::sleep(idle) => idle = (idle * 2).min(IDLE_MAX),
            }
        };
        // What its background processes write for a moment, as a container's would be until
        // its first process ends; then the group is killed.
        let deadline = Instant::now() + DRAIN_GRACE;
        loop {
            self.tail.read_all(&mut self.out).await;
            if !process::recorded_group_alive(self.pgid, self.start) || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let sent = {
            let mut state = lock(&self.state);
            // The wrapper is gone, and its group id stays in use while a member lives; but an
            // adopted attempt may have ended long ago, its id since given to a process that
            // leads a group of its own: that one is left alone.
            process::signal_recorded_group(self.pgid, self.start, Signal::KILL);
            state.steps.get_mut(&self.step_id).and_then(|entry| {
                entry.finished = true;
                entry.sent
            })
        };
        // What the killed processes wrote before they died is in the file once they are gone.
        process::wait_group_gone(self.pgid, self.start, DRAIN_GRACE).await;
        self.tail.read_all(&mut self.out).await;
        self.tail.finish(&mut self.out).await;
        // Closing the channel before the exit is reported: the engine reads the output to
        // its end, then awaits the exit.
        self.out.tx = None;
        let status = match ended {
            Ended::Status(status) => process::exit_of(status),
            Ended::Gone => match record::read_exit_file(&self.exit_file).await {
                Some(code) => process::exit_from_code(code),
                None => match sent {
                    Some(signal) => process::killed_by(signal.as_raw()),
                    None => StepExit::Error {
                        reason: "the step's wrapper process ended without recording the step's exit (was it killed from outside piculet?)".to_string(),
                    },
                },
            },
        };
        let _ = exit.send(status);
        let _ = done.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(us: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_micros(us)
    }

    #[test]
    fn the_resume_point_is_just_after_the_last_stored_piece() {
        let stamps = [
            Stamp {
                first: 0,
                count: 3,
                first_at: 100,
                offset: 0,
            },
            Stamp {
                first: 3,
                count: 2,
                first_at: 500,
                offset: 40,
            },
        ];
        assert_eq!(resume_point(&stamps, None), ResumeAt::START);
        let r = |piece, skip_until, offset| ResumeAt {
            offset,
            piece,
            skip_until,
        };
        assert_eq!(resume_point(&stamps, at(100)), r(0, 1, 0));
        assert_eq!(resume_point(&stamps, at(102)), r(0, 3, 0));
        // A time between two reads: everything of the first read was stored.
        assert_eq!(resume_point(&stamps, at(300)), r(0, 3, 0));
        assert_eq!(resume_point(&stamps, at(501)), r(3, 5, 40));
        assert_eq!(resume_point(&stamps, at(9_999)), r(3, 5, 40));
        assert_eq!(resume_point(&stamps, at(50)), ResumeAt::START);
    }

    #[test]
    fn a_stamps_line_cut_short_is_ignored() {
        let dir = std::env::temp_dir().join(format!("piculet-stamps-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        std::fs::write(&path, "0 2 10 0\n2 1 20 9\n3 4 3").unwrap();
        assert_eq!(
            load_stamps(&path).0,
            [
                Stamp {
                    first: 0,
                    count: 2,
                    first_at: 10,
                    offset: 0
                },
                Stamp {
                    first: 2,
                    count: 1,
                    first_at: 20,
                    offset: 9
                },
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
