//! A step's processes: how one is spawned so that it outlives piculet and runs only once its
//! record is durable, how its exit is known when piculet is not its parent, and how its
//! process group is found and signalled.
//!
//! A step runs under a small wrapper shell, the leader of the step's own process group:
//! 1. the wrapper first reads a go-ahead from its stdin, a pipe whose only writer is
//!    piculet ([`Gate`]). piculet writes it once the attempt's record is fsynced. If piculet
//!    dies before that, the pipe ends without it and the wrapper exits (125) without running
//!    anything: no record means the step never ran;
//! 2. it runs the step's program as its child, with stdin from `/dev/null` and stdout and
//!    stderr on the attempt's log file (`O_APPEND`, no pipe: nothing dies of SIGPIPE or
//!    blocks when no replica reads);
//! 3. it writes the program's exit status to the attempt's exit file (a temporary file
//!    renamed into place), for a replica that is not its parent, and exits with it.
//!
//! The wrapper catches SIGTERM, SIGINT and SIGHUP (a caught signal is reset to its default in
//! the program it starts, so the step sees them as usual) so that stopping the group still
//! lets it record how the step ended; SIGKILL ends it with the rest of the group. Its own
//! messages (a shell's `Killed` about its child) go to /dev/null, not into the step's log:
//! the program gets the log as stderr inside a subshell, whose redirection the wrapper's
//! message no longer sees.
//! One narrow race remains: a SIGTERM that arrives in the instant between the wrapper's fork
//! and the program's exec is taken by the wrapper's handler in the child and lost, and the
//! step is then killed when the stop's grace period ends, as a step ignoring SIGTERM is.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{self, Write as _};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use procfs::process::Stat;
use rustix::process::{Pid, Signal};
use tokio::time::Instant;

use super::super::StepExit;

/// The interval at which a process or group without a waiting parent is checked.
pub(super) const POLL: Duration = Duration::from_millis(50);

/// The wrapper, run as `sh -c WRAPPER piculet-step <exit file> <program> <args…>`.
const WRAPPER: &str = r#"IFS= read -r go || exit 125
[ "$go" = go ] || exit 125
exec </dev/null
trap : TERM INT HUP
exit_file=$1
shift
exec 3>&2 2>/dev/null
(exec "$@" 2>&3 3>&-)
code=$?
printf '%s\n' "$code" >"$exit_file.tmp" && command -p mv -f "$exit_file.tmp" "$exit_file"
exit "$code"
"#;

/// The write end of a started step's start gate. Dropping it without [`open`](Self::open)
/// (a failed start, or piculet's death, which closes it too) makes the step exit unrun.
pub(super) struct Gate(std::io::PipeWriter);

impl Gate {
    /// Lets the step run. Three bytes into an empty pipe: never blocks.
    pub(super) fn open(mut self) -> io::Result<()> {
        self.0.write_all(b"go\n")
    }
}

/// Spawns the wrapper for `program args` in a new process group, its output appended to
/// `log`. The step waits at its gate until [`Gate::open`].
pub(super) fn spawn_gated(
    program: &str,
    args: &[String],
    env: &BTreeMap<OsString, OsString>,
    dir: &Path,
    log: &std::fs::File,
    exit_file: &Path,
) -> io::Result<(tokio::process::Child, Gate)> {
    // Both ends are close-on-exec: a step spawned meanwhile by another task holds a copy only
    // between its fork and its exec, so the gate still ends when piculet does.
    let (reader, writer) = std::io::pipe()?;
    let mut command = tokio::process::Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(WRAPPER)
        .arg("piculet-step")
        .arg(exit_file)
        .arg(program)
        .args(args)
        .env_clear()
        .envs(env)
        .current_dir(dir)
        .stdin(Stdio::from(reader))
        // One open file description with O_APPEND for both: lines of stdout and stderr stay
        // in the order they were written.
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?)
        .process_group(0)
        // The step must outlive piculet: a dropped handle never kills it.
        .kill_on_drop(false);
    let child = command.spawn()?;
    // `command` holds a copy of the gate's read end; only the wrapper may keep one.
    drop(command);
    Ok((child, Gate(writer)))
}

/// Where `program` would be found by the wrapper's `"$@"`: a path with a `/` as it is, a
/// bare name on the step's `PATH`. An error when it cannot be run, so that a missing program
/// is refused at start as before, not reported as exit 127.
pub(super) fn check_program(
    program: &str,
    env: &BTreeMap<OsString, OsString>,
    dir: &Path,
) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |path: &Path| -> io::Result<()> {
        let meta = std::fs::metadata(path)?;
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "not an executable file",
            ))
        }
    };
    if program.contains('/') {
        return executable(&dir.join(program));
    }
    let path = env
        .get(&OsString::from("PATH"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "not found on PATH");
    for entry in path.split(':') {
        let candidate = dir
            .join(if entry.is_empty() { "." } else { entry })
            .join(program);
        match executable(&candidate) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// How a step ended, from its exit status as the wrapper saw it. A shell reports a program
/// killed by signal N as 128+N, so such a status is read as that signal (the wrapper cannot
/// tell it from a program exiting 128+N itself; the code is exact either way).
pub(super) fn exit_from_code(code: i32) -> StepExit {
    match code {
        129..=159 => StepExit::Exited {
            code,
            reason: Some(format!("killed by signal {}", code - 128)),
        },
        _ => StepExit::Exited { code, reason: None },
    }
}

/// How a step ended, from the wrapper's status when piculet is its parent.
pub(super) fn exit_of(status: io::Result<ExitStatus>) -> StepExit {
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => exit_from_code(code),
            (None, Some(signal)) => killed_by(signal),
            (None, None) => StepExit::Error {
                reason: format!("the step's process ended in an unknown way: {status}"),
            },
        },
        Err(e) => StepExit::Error {
            reason: format!("cannot wait for the step's process: {e}"),
        },
    }
}

pub(super) fn killed_by(signal: i32) -> StepExit {
    StepExit::Exited {
        code: 128 + signal,
        reason: Some(format!("killed by signal {signal}")),
    }
}

/// `pid` as an id that names one process (or group): never 0 or below, never init (1).
fn process_id(pid: i32) -> Option<Pid> {
    Pid::from_raw(pid).filter(|p| !p.is_init())
}

/// A group id that may be signalled: never piculet's own group or init's, whatever a record
/// says.
fn foreign_group(pgid: i32) -> Option<Pid> {
    process_id(pgid).filter(|&p| p != rustix::process::getpgrp())
}

/// Sends `signal` to a process group (see [`foreign_group`] for the ids never signalled).
pub(super) fn signal_group(pgid: i32, signal: Signal) {
    if let Some(group) = foreign_group(pgid) {
        // ESRCH (the group is gone) is the expected outcome of a race with its end.
        let _ = rustix::process::kill_process_group(group, signal);
    }
}

/// Whether a process group still has a live (non-zombie) member.
pub(super) fn group_alive(pgid: i32) -> bool {
    let exists = foreign_group(pgid)
        .is_some_and(|group| rustix::process::test_kill_process_group(group).is_ok());
    // A group of zombies also answers: when their parent (here, init after a restart) is slow
    // to reap them, they are still dead. /proc tells them apart; without it, trust kill.
    exists && group_has_live_member(pgid).unwrap_or(true)
}

/// Whether a group named by a record (`pgid`, and the start time of the wrapper that led it)
/// is still that attempt's and has a live member. A record outlives its processes: once they
/// are all gone the id is free, and an unrelated process may get it and lead a group of its
/// own (every step does, and so does any shell job), which must never be signalled for the
/// attempt. While the group has a member, its id is not handed out again (Linux keeps an id
/// in use while a group bears it), so a group whose leader is gone is still the attempt's; a
/// leader that lives is the attempt's only if it started when the record says.
pub(super) fn recorded_group_alive(pgid: i32, start: Option<u64>) -> bool {
    group_alive(pgid) && leader_matches(pgid, start)
}

/// Whether the process `pgid`, if there is one, is the one that started at `start`.
fn leader_matches(pgid: i32, start: Option<u64>) -> bool {
    match proc_stat(pgid) {
        Some(stat) => start.is_none_or(|s| s == stat.starttime),
        // No such process: the leader is gone (or there is no /proc to ask).
        None => true,
    }
}

/// Sends `signal` to a recorded group (see [`recorded_group_alive`]) unless its id now names
/// someone else's group.
pub(super) fn signal_recorded_group(pgid: i32, start: Option<u64>, signal: Signal) {
    if leader_matches(pgid, start) {
        signal_group(pgid, signal);
    }
}

/// A process's `/proc/<pid>/stat`: its state, group and start time.
fn proc_stat(pid: i32) -> Option<Stat> {
    procfs::process::Process::new(pid).ok()?.stat().ok()
}

/// Dead, waiting for its parent to reap it.
fn is_zombie(stat: &Stat) -> bool {
    matches!(stat.state, 'Z' | 'X')
}

fn group_has_live_member(pgid: i32) -> Option<bool> {
    let processes = procfs::process::all_processes().ok()?;
    Some(processes.flatten().any(|p| {
        p.stat()
            .is_ok_and(|stat| stat.pgrp == pgid && !is_zombie(&stat))
    }))
}

/// A process's start time (see [`super::record::Record::proc_start`]).
pub(super) fn proc_start(pid: i32) -> Option<u64> {
    proc_stat(pid).map(|stat| stat.starttime)
}

/// Whether the process `pid`, started at `start` when known, is alive and not a zombie.
pub(super) fn process_alive(pid: i32, start: Option<u64>) -> bool {
    let Some(process) = process_id(pid) else {
        return false;
    };
    match proc_stat(pid) {
        Some(stat) => !is_zombie(&stat) && start.is_none_or(|s| s == stat.starttime),
        None => {
            std::fs::metadata("/proc/self").is_err()
                && rustix::process::test_kill_process(process).is_ok()
        }
    }
}

/// Stops a recorded group (see [`recorded_group_alive`]) this process is not the parent of:
/// SIGTERM, then SIGKILL after `grace`. Returns the last signal sent, if any.
pub(super) async fn stop_group(pgid: i32, start: Option<u64>, grace: Duration) -> Option<Signal> {
    if !recorded_group_alive(pgid, start) {
        return None;
    }
    signal_recorded_group(pgid, start, Signal::TERM);
    let deadline = Instant::now() + grace;
    while recorded_group_alive(pgid, start) {
        if Instant::now() >= deadline {
            signal_recorded_group(pgid, start, Signal::KILL);
            return Some(Signal::KILL);
        }
        tokio::time::sleep(POLL).await;
    }
    Some(Signal::TERM)
}

/// Waits, up to `limit`, until a recorded group has no live member.
pub(super) async fn wait_group_gone(pgid: i32, start: Option<u64>, limit: Duration) {
    let deadline = Instant::now() + limit;
    while recorded_group_alive(pgid, start) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("piculet-gate-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn env() -> BTreeMap<OsString, OsString> {
        BTreeMap::from([("PATH".into(), "/usr/bin:/bin".into())])
    }

    /// The gate closed without its go-ahead (a failed start, or piculet killed before the
    /// record was durable, whose death closes the pipe the same way): nothing runs.
    #[tokio::test]
    async fn a_start_whose_gate_never_opens_never_runs() {
        let dir = temp_dir();
        let marker = dir.join("ran");
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let args = vec!["-c".to_string(), format!("touch {}", marker.display())];
        let (mut child, gate) =
            spawn_gated("/bin/sh", &args, &env(), &dir, &log, &dir.join("exit")).unwrap();
        // Still waiting at its gate: alive, nothing run.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!marker.exists());
        drop(gate);
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("the wrapper gives up")
            .unwrap();
        assert_eq!(status.code(), Some(125));
        assert!(!marker.exists(), "the program ran without its go-ahead");
        assert!(!dir.join("exit").exists());

        // The same start with the go-ahead runs, and records its exit.
        let (mut child, gate) =
            spawn_gated("/bin/sh", &args, &env(), &dir, &log, &dir.join("exit")).unwrap();
        gate.open().unwrap();
        let status = child.wait().await.unwrap();
        assert_eq!(status.code(), Some(0));
        assert!(marker.exists());
        assert_eq!(std::fs::read_to_string(dir.join("exit")).unwrap(), "0\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn the_wrapper_records_the_status_and_survives_a_terminate() {
        let dir = temp_dir();
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let args = vec!["-c".to_string(), "echo started; sleep 30".to_string()];
        let (mut child, gate) =
            spawn_gated("/bin/sh", &args, &env(), &dir, &log, &dir.join("exit")).unwrap();
        gate.open().unwrap();
        let pid = child.id().unwrap() as i32;
        let start = proc_start(pid);
        assert!(process_alive(pid, start));
        assert!(
            !process_alive(pid, start.map(|s| s + 1)),
            "another start time"
        );
        // Once the step printed, its group gets SIGTERM.
        // Only a guard against waiting forever: generous, so a loaded machine cannot fail it.
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::fs::read_to_string(dir.join("log")).unwrap_or_default() != "started\n" {
            assert!(Instant::now() < deadline, "the step did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        signal_group(pid, Signal::TERM);
        let status = child.wait().await.unwrap();
        assert_eq!(exit_of(Ok(status)), killed_by(Signal::TERM.as_raw()));
        assert_eq!(std::fs::read_to_string(dir.join("exit")).unwrap(), "143\n");
        assert!(!group_alive(pid));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn programs_are_checked_before_the_start() {
        let dir = temp_dir();
        assert!(check_program("sh", &env(), &dir).is_ok());
        assert!(check_program("/bin/sh", &env(), &dir).is_ok());
        let missing = check_program("/nonexistent/x", &env(), &dir).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            check_program("piculet-no-such-program", &env(), &dir)
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
        std::fs::write(dir.join("plain"), "x").unwrap();
        assert_eq!(
            check_program("./plain", &env(), &dir).unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
