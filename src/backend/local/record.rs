//! The files of one step attempt in a workflow's state directory: what outlives the replica
//! that started the step, so that a restarted or adopting replica (same host, same data
//! directory tree) can tell whether the attempt ran, re-attach to it, or stop it.
//!
//! ```text
//! <root>/.piculet/<step_id>.<attempt>.json    the record: written and fsynced before the
//!                                             step's program may run (see process::Gate)
//! <root>/.piculet/<step_id>.<attempt>.sh      the script the step runs
//! <root>/.piculet/<step_id>.<attempt>.log     stdout and stderr, appended by the step itself
//! <root>/.piculet/<step_id>.<attempt>.stamps  the time of each piece read from the log
//! <root>/.piculet/<step_id>.<attempt>.exit    the exit status, written by the step's wrapper
//! ```
//!
//! The files stay until the workflow's teardown: an attempt that ended while no replica
//! watched is still reported, with its whole output and its real exit, by whoever adopts it.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The paths of one attempt's files.
#[derive(Clone, Debug)]
pub(super) struct Files {
    dir: PathBuf,
    stem: String,
}

impl Files {
    pub(super) fn new(state_dir: &Path, step_id: Uuid, attempt: u32) -> Self {
        Files {
            dir: state_dir.to_path_buf(),
            stem: format!("{step_id}.{attempt}"),
        }
    }

    fn with(&self, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", self.stem))
    }

    pub(super) fn record(&self) -> PathBuf {
        self.with("json")
    }
    pub(super) fn script(&self) -> PathBuf {
        self.with("sh")
    }
    pub(super) fn log(&self) -> PathBuf {
        self.with("log")
    }
    pub(super) fn stamps(&self) -> PathBuf {
        self.with("stamps")
    }
    pub(super) fn exit(&self) -> PathBuf {
        self.with("exit")
    }

    /// Every file of the attempt but the record: what a start that never got as far as its
    /// record leaves behind, and removes before starting again.
    pub(super) fn leftovers(&self) -> [PathBuf; 5] {
        [
            self.script(),
            self.log(),
            self.stamps(),
            self.exit(),
            self.with("exit.tmp"),
        ]
    }
}

/// What a replica needs to find a step attempt's processes again.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct Record {
    pub step_id: Uuid,
    pub attempt: u32,
    /// The process group, whose leader is the step's wrapper shell.
    pub pgid: i32,
    /// The wrapper's start time in clock ticks since boot (`/proc/<pid>/stat`), so that a pid
    /// reused by an unrelated process is not taken for the step; `None` without `/proc`.
    pub proc_start: Option<u64>,
    pub started_at: DateTime<Utc>,
    /// Where `pgid` and `proc_start` mean something; `None` in records of earlier versions,
    /// and without `/proc`.
    #[serde(default)]
    pub host: Option<Host>,
}

/// The host, boot and pid namespace a record's process ids belong to. Replicas must share
/// one host and one pid namespace; a data directory shared with another (a network file
/// system, a volume mounted into two containers) must not make one take another's pids for
/// its own.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct Host {
    pub name: String,
    pub boot_id: String,
    pub pid_ns: String,
}

impl Host {
    /// This process's, from `/proc`; `None` without it.
    pub(super) fn current() -> Option<Host> {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_string())
        };
        Some(Host {
            name: read("/proc/sys/kernel/hostname")?,
            boot_id: read("/proc/sys/kernel/random/boot_id")?,
            pid_ns: std::fs::read_link("/proc/self/ns/pid")
                .ok()?
                .to_string_lossy()
                .into_owned(),
        })
    }
}

/// Whether a record's process ids can be looked at from here.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Seen {
    /// Same boot and pid namespace (or a record that does not say).
    Here,
    /// Written on this host before it restarted: its processes are gone.
    BeforeRestart,
    /// Written where this replica cannot see the processes: whether they run is unknown.
    Elsewhere(String),
}

impl Record {
    pub(super) fn seen_from(&self, here: Option<&Host>) -> Seen {
        let (Some(there), Some(here)) = (&self.host, here) else {
            return Seen::Here;
        };
        if there.boot_id == here.boot_id && there.pid_ns == here.pid_ns {
            Seen::Here
        } else if there.name == here.name && there.boot_id != here.boot_id {
            Seen::BeforeRestart
        } else {
            Seen::Elsewhere(format!(
                "attempt {} was started on host {:?} (boot {}, {}), whose processes this replica on {:?} (boot {}, {}) cannot see: replicas using the local backend must share one host and pid namespace",
                self.attempt,
                there.name,
                there.boot_id,
                there.pid_ns,
                here.name,
                here.boot_id,
                here.pid_ns
            ))
        }
    }

    /// The process group to follow and signal from here: none when the record's ids name
    /// processes of another host or boot.
    pub(super) fn group(&self, here: Option<&Host>) -> (i32, Option<u64>) {
        match self.seen_from(here) {
            Seen::Here => (self.pgid, self.proc_start),
            Seen::BeforeRestart | Seen::Elsewhere(_) => (0, None),
        }
    }
}

/// Writes the record so that it survives a crash of this process or of the host: a
/// temporary file, fsynced, renamed into place, and the directory fsynced. Blocking.
pub(super) fn write_record(files: &Files, record: &Record) -> io::Result<()> {
    let path = files.record();
    let tmp = files.with("json.tmp");
    let body = serde_json::to_vec(record).map_err(io::Error::other)?;
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&body)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(&files.dir)?.sync_all()
}

/// What the record file of an attempt holds.
#[derive(Debug)]
pub(super) enum Recorded {
    /// No record: by the start gate, the attempt's program never ran.
    None,
    Some(Record),
    /// A record that cannot be read (a disk error, a hand-edited file): the attempt may have
    /// run, and nothing of it can be trusted.
    Unreadable(String),
}

pub(super) async fn read_record(files: &Files) -> Recorded {
    let path = files.record();
    match tokio::fs::read(&path).await {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Recorded::None,
        Err(e) => Recorded::Unreadable(format!("cannot read {}: {e}", path.display())),
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(record) => Recorded::Some(record),
            Err(e) => Recorded::Unreadable(format!("{} is not a record: {e}", path.display())),
        },
    }
}

/// The attempts that have a record in a state directory, as `(step_id, attempt)`.
pub(super) async fn recorded_attempts(state_dir: &Path) -> Vec<(Uuid, u32)> {
    let mut found = Vec::new();
    let Ok(mut entries) = tokio::fs::read_dir(state_dir).await else {
        return found;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        let Some((step, attempt)) = stem.split_once('.') else {
            continue;
        };
        if let (Ok(step), Ok(attempt)) = (Uuid::parse_str(step), attempt.parse::<u32>()) {
            found.push((step, attempt));
        }
    }
    found.sort();
    found
}

/// The exit status the wrapper wrote, if it did.
pub(super) async fn read_exit(files: &Files) -> Option<i32> {
    read_exit_file(&files.exit()).await
}

pub(super) async fn read_exit_file(path: &Path) -> Option<i32> {
    let text = tokio::fs::read_to_string(path).await.ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_record_round_trips_and_only_records_are_listed() {
        let dir = std::env::temp_dir().join(format!("piculet-record-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let step = Uuid::now_v7();
        let files = Files::new(&dir, step, 2);
        assert!(matches!(read_record(&files).await, Recorded::None));
        let record = Record {
            step_id: step,
            attempt: 2,
            pgid: 1234,
            proc_start: Some(99),
            started_at: Utc::now(),
            host: Host::current(),
        };
        write_record(&files, &record).unwrap();
        match read_record(&files).await {
            Recorded::Some(r) => assert_eq!(r, record),
            other => panic!("{other:?}"),
        }
        std::fs::write(files.log(), "x").unwrap();
        std::fs::write(dir.join("junk.json"), "{}").unwrap();
        assert_eq!(recorded_attempts(&dir).await, [(step, 2)]);
        std::fs::write(files.record(), "{not json").unwrap();
        assert!(matches!(read_record(&files).await, Recorded::Unreadable(_)));
        assert_eq!(read_exit(&files).await, None);
        std::fs::write(files.exit(), "3\n").unwrap();
        assert_eq!(read_exit(&files).await, Some(3));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
