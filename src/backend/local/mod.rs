//! The local backend: runs a workflow's steps and services as processes on this host, in a
//! workspace directory per workflow (DESIGN §8). It owns the workspace layout under
//! `<data_dir>/workspaces/<workflow_id>`, the shell script each step runs, and the durable
//! files through which a step attempt outlives the replica that started it.
//!
//! It gives no isolation at all: a step can read and write anything the piculet user can.
//! It is for trying piculet out, development, and single-machine use by trusted users.
//! Replicas sharing the local backend must share a host and a data directory tree: a step
//! started by one is found, re-attached, stopped and cleaned up by another through its files.
//!
//! Layout of a workflow's root directory:
//! ```text
//! <data_dir>/workspaces/<workflow_id>/
//!     .piculet/<step_id>.<attempt>.*       the attempt's record, script, log, stamps and
//!                                          exit (see `record`)
//!     <workspace.base>/<workspace.path>/   the workspace: CI_WORKSPACE, steps' working dir
//! ```
//!
//! The seams: `launch` decides how a step runs (program, script, environment, directory),
//! with `clone` for the clone step's fetch; `workspace` owns the workflow's directories and
//! their removal; `process` spawns a step behind its start gate and knows process groups;
//! `record` owns the attempt's files; `output` reads the log into lines and follows a step
//! to its end. This file holds what the backend knows of the steps it follows and answers
//! the engine; `tests` runs steps through that interface.
//!
//! Every step runs in its own process group, so that stopping it (cancel, timeout, end of a
//! service) reaches every process it started, as stopping a container does. For the same
//! reason the group is killed once the step's main process has ended: in a container,
//! background processes die with the container's first process. Steps do not die with
//! piculet: they write to a file, not to a pipe piculet reads, and nothing kills them on exit.

mod clone;
mod launch;
mod output;
mod process;
mod record;
#[cfg(test)]
mod tests;
mod workspace;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, timeout, timeout_at};
use uuid::Uuid;

use super::{Backend, BackendError, Presence, StepExit, StepHandle, StepRun, WorkflowRun};
use launch::spawn_error;
use output::{Main, OUTPUT_CAPACITY, Output, Supervisor, Tail};
use process::POLL;
use record::{Files, Record, Recorded};
use rustix::process::Signal;
use workspace::{remove_dir_all, remove_file_if_any};

/// How long teardown waits for killed processes to be gone before removing the workspace.
const TEARDOWN_WAIT: Duration = Duration::from_secs(5);
/// The host variables a step inherits; everything else of piculet's environment (its
/// database URL, its tokens) stays out of the steps.
const HOST_VARIABLES: [&str; 4] = ["PATH", "HOME", "LANG", "TMPDIR"];

/// Runs steps as local processes. Cheap to share: the engine holds it behind an `Arc`.
pub struct LocalBackend {
    /// Absolute, so that `CI_WORKSPACE` is an absolute path whatever the current directory.
    data_dir: PathBuf,
    /// [`HOST_VARIABLES`] as piculet found them at start.
    host_env: Vec<(OsString, OsString)>,
    /// Where this replica's process ids mean something: written into every record, and
    /// compared with a record's before its ids are looked at or signalled.
    host: Option<record::Host>,
    state: Arc<Mutex<State>>,
}

/// What the backend knows of the steps this process follows. Every method may run
/// concurrently with any other, so this is behind a lock, never held across an `.await`.
#[derive(Default)]
struct State {
    steps: HashMap<Uuid, StepEntry>,
    /// Steps between the start of `start_step` (or `attach_step`) and their entry in
    /// `steps`: a second start of the same step meanwhile is refused, not run twice.
    starting: HashSet<Uuid>,
}

/// A step attempt this process follows: started here, or adopted.
struct StepEntry {
    workflow_id: Uuid,
    attempt: u32,
    /// The step's process group id (the pid of its wrapper).
    pgid: i32,
    /// Set under the lock when the supervising task killed the group after the main process
    /// ended. From then on the id is no longer ours and must never be signalled again; until
    /// then every signal is sent under the lock, so the two cannot cross.
    finished: bool,
    /// The last signal this process sent the group: how an adopted step ended when it was
    /// killed before its wrapper could write its exit.
    sent: Option<Signal>,
    /// Becomes `true` once the output is closed and the exit is known.
    done: watch::Receiver<bool>,
}

impl LocalBackend {
    /// A backend keeping its workspaces under `data_dir/workspaces`. A relative `data_dir` is
    /// taken relative to the current directory, now.
    pub fn new(data_dir: PathBuf) -> Self {
        let data_dir = std::path::absolute(&data_dir).unwrap_or(data_dir);
        let host_env = HOST_VARIABLES
            .iter()
            .filter_map(|name| std::env::var_os(name).map(|v| (OsString::from(name), v)))
            .collect();
        LocalBackend {
            data_dir,
            host_env,
            host: record::Host::current(),
            state: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

#[async_trait::async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn setup_workflow(&self, workflow: &WorkflowRun) -> Result<(), BackendError> {
        let workspace = self.workspace_dir(workflow)?;
        for dir in [self.state_dir(workflow.workflow_id), workspace] {
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| failed(format!("cannot create {}", dir.display()), e))?;
        }
        Ok(())
    }

    async fn start_step(
        &self,
        workflow: &WorkflowRun,
        step: &StepRun,
    ) -> Result<StepHandle, BackendError> {
        let launch = self.launch(workflow, step)?;
        let _reservation = self.reserve(step)?;
        let state_dir = self.state_dir(workflow.workflow_id);
        for dir in [&state_dir, &launch.dir] {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| failed(format!("cannot create {}", dir.display()), e))?;
        }
        let files = Files::new(&state_dir, step.step_id, step.attempt);
        match record::read_record(&files).await {
            Recorded::None => {}
            // Started before (by this replica before a restart, or by another): never again.
            Recorded::Some(_) | Recorded::Unreadable(_) => {
                return Err(BackendError::Failed(format!(
                    "attempt {} of step {:?} ({}) was already started on the local backend",
                    step.attempt, step.spec.name, step.step_id
                )));
            }
        }
        // Without a record the attempt never ran (its gate never opened): what an earlier
        // start left behind is not output of anything.
        for file in files.leftovers() {
            remove_file_if_any(&file).await;
        }
        process::check_program(&launch.program, &launch.env, &launch.dir)
            .map_err(|e| spawn_error(&step.spec, &launch.program, e))?;
        let mut args = launch.args;
        if let Some(script) = &launch.script {
            let path = files.script();
            tokio::fs::write(&path, script)
                .await
                .map_err(|e| failed(format!("cannot write {}", path.display()), e))?;
            args.push(path.to_string_lossy().into_owned());
        }
        // piculet's own lines go first into the log, so that whoever reads it sees them.
        let log = {
            use std::io::Write as _;
            let path = files.log();
            let mut log = std::fs::OpenOptions::new()
                .append(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| failed(format!("cannot create {}", path.display()), e))?;
            log.write_all(launch.notices.concat().as_bytes())
                .map_err(|e| failed(format!("cannot write {}", path.display()), e))?;
            log
        };
        let (child, gate) = process::spawn_gated(
            &launch.program,
            &args,
            &launch.env,
            &launch.dir,
            &log,
            &files.exit(),
        )
        .map_err(|e| spawn_error(&step.spec, "/bin/sh", e))?;
        drop(log);
        let Some(pgid) = child.id().and_then(|pid| i32::try_from(pid).ok()) else {
            return Err(BackendError::Failed(format!(
                "step {:?}: the process ended before its id was known",
                step.spec.name
            )));
        };
        // The record, durable before the step may run: a replica that finds no record knows
        // the step never ran. Dropping the gate on failure ends the waiting wrapper unrun.
        let proc_start = process::proc_start(pgid);
        let record = Record {
            step_id: step.step_id,
            attempt: step.attempt,
            pgid,
            proc_start,
            started_at: Utc::now(),
            host: self.host.clone(),
        };
        let written = {
            let files = files.clone();
            tokio::task::spawn_blocking(move || record::write_record(&files, &record))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e)))
        };
        if let Err(e) = written.and_then(|()| gate.open()) {
            // Reaped in the background; it exits at once without running anything.
            tokio::spawn(async move {
                let mut child = child;
                let _ = child.wait().await;
            });
            return Err(failed(
                format!("step {:?}: cannot record its start", step.spec.name),
                e,
            ));
        }
        let tail = Tail::open(&files, None)
            .map_err(|e| failed(format!("cannot read {}", files.log().display()), e))?;
        let group = (pgid, proc_start);
        Ok(self.supervise(workflow, step, group, files, tail, Main::Child(child)))
    }

    async fn stop_step(
        &self,
        workflow: &WorkflowRun,
        step_id: Uuid,
        grace: Duration,
    ) -> Result<(), BackendError> {
        let live = {
            let mut state = self.lock();
            match state.steps.get_mut(&step_id) {
                Some(e) if e.finished => return Ok(()),
                Some(e) => {
                    process::signal_group(e.pgid, Signal::TERM);
                    e.sent = Some(Signal::TERM);
                    Some(e.done.clone())
                }
                None => None,
            }
        };
        match live {
            Some(mut done) => {
                if timeout(grace, done.wait_for(|d| *d)).await.is_err() {
                    let mut state = self.lock();
                    if let Some(e) = state.steps.get_mut(&step_id).filter(|e| !e.finished) {
                        process::signal_group(e.pgid, Signal::KILL);
                        e.sent = Some(Signal::KILL);
                    }
                }
            }
            // Not followed by this process: a step left by a replica that died or restarted.
            None => {
                let state_dir = self.state_dir(workflow.workflow_id);
                for (id, attempt) in record::recorded_attempts(&state_dir).await {
                    if id != step_id {
                        continue;
                    }
                    let files = Files::new(&state_dir, id, attempt);
                    if let Recorded::Some(r) = record::read_record(&files).await {
                        let (pgid, start) = r.group(self.host.as_ref());
                        process::stop_group(pgid, start, grace).await;
                    }
                }
            }
        }
        Ok(())
    }

    async fn teardown_workflow(&self, workflow: &WorkflowRun) -> Result<(), BackendError> {
        self.remove(workflow.workflow_id).await
    }

    async fn running_steps(&self, workflow: &WorkflowRun) -> Result<Vec<Uuid>, BackendError> {
        let id = workflow.workflow_id;
        let mut running: Vec<Uuid> = self
            .lock()
            .steps
            .iter()
            .filter(|(_, e)| e.workflow_id == id && !e.finished)
            .map(|(step_id, _)| *step_id)
            .collect();
        // Attempts of other replicas (or of an earlier piculet) that run, or ended with their
        // exit on file: re-attached, they report how they ended. Only a step's last attempt
        // counts.
        let state_dir = self.state_dir(id);
        let mut latest: BTreeMap<Uuid, u32> = BTreeMap::new();
        for (step_id, attempt) in record::recorded_attempts(&state_dir).await {
            let last = latest.entry(step_id).or_default();
            *last = (*last).max(attempt);
        }
        for (step_id, attempt) in latest {
            let known = self.lock().steps.contains_key(&step_id);
            if !known
                && matches!(
                    self.probe_files(&state_dir, step_id, attempt).await,
                    Ok(Presence::Present)
                )
            {
                running.push(step_id);
            }
        }
        running.sort();
        running.dedup();
        Ok(running)
    }

    async fn probe_step(
        &self,
        workflow: &WorkflowRun,
        step_id: Uuid,
        attempt: u32,
    ) -> Result<Presence, BackendError> {
        if self
            .lock()
            .steps
            .get(&step_id)
            .is_some_and(|e| e.attempt == attempt)
        {
            return Ok(Presence::Present);
        }
        let state_dir = self.state_dir(workflow.workflow_id);
        self.probe_files(&state_dir, step_id, attempt).await
    }

    async fn attach_step(
        &self,
        workflow: &WorkflowRun,
        step: &StepRun,
        after: Option<DateTime<Utc>>,
    ) -> Result<StepHandle, BackendError> {
        let _reservation = self.reserve(step)?;
        let files = Files::new(
            &self.state_dir(workflow.workflow_id),
            step.step_id,
            step.attempt,
        );
        let record = match record::read_record(&files).await {
            Recorded::Some(r) => r,
            Recorded::None => {
                return Err(BackendError::Refused(format!(
                    "attempt {} of step {:?} never started on the local backend",
                    step.attempt, step.spec.name
                )));
            }
            Recorded::Unreadable(reason) => return Err(BackendError::Refused(reason)),
        };
        let state_dir = self.state_dir(workflow.workflow_id);
        if let Presence::Interrupted { reason } = self
            .probe_files(&state_dir, step.step_id, step.attempt)
            .await?
        {
            return Err(BackendError::Refused(reason));
        }
        let tail = Tail::open(&files, after)
            .map_err(|e| failed(format!("cannot read {}", files.log().display()), e))?;
        // Ids from before a restart of this host name nothing of the step's any more.
        let group = record.group(self.host.as_ref());
        let main = Main::Adopted {
            pid: group.0,
            start: group.1,
        };
        Ok(self.supervise(workflow, step, group, files, tail, main))
    }

    async fn managed_workflows(&self) -> Result<Vec<Uuid>, BackendError> {
        let dir = self.data_dir.join("workspaces");
        let mut found = Vec::new();
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(failed(format!("cannot list {}", dir.display()), e)),
        };
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| failed(format!("cannot list {}", dir.display()), e))?
        {
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| Uuid::parse_str(n).ok())
            {
                found.push(id);
            }
        }
        found.sort();
        Ok(found)
    }

    async fn remove_workflow(&self, workflow_id: Uuid) -> Result<(), BackendError> {
        self.remove(workflow_id).await
    }
}

impl LocalBackend {
    /// Claims a step id for `start_step` or `attach_step`. Until its supervisor is done, a
    /// step cannot start again in this process: it still runs, or its end is still being
    /// read.
    fn reserve(&self, step: &StepRun) -> Result<Reservation, BackendError> {
        let mut state = self.lock();
        let supervised = state
            .steps
            .get(&step.step_id)
            .is_some_and(|e| !*e.done.borrow());
        if supervised || !state.starting.insert(step.step_id) {
            return Err(BackendError::Failed(format!(
                "step {:?} ({}) is already running on the local backend",
                step.spec.name, step.step_id
            )));
        }
        Ok(Reservation {
            state: Arc::clone(&self.state),
            step_id: step.step_id,
        })
    }

    /// Follows a started or adopted attempt to its end in a task of its own. `group` is the
    /// attempt's process group id and the start time of its leader, the wrapper.
    fn supervise(
        &self,
        workflow: &WorkflowRun,
        step: &StepRun,
        (pgid, start): (i32, Option<u64>),
        files: Files,
        tail: Tail,
        main: Main,
    ) -> StepHandle {
        let (tx, rx) = mpsc::channel(OUTPUT_CAPACITY);
        let (done_tx, done_rx) = watch::channel(false);
        self.lock().steps.insert(
            step.step_id,
            StepEntry {
                workflow_id: workflow.workflow_id,
                attempt: step.attempt,
                pgid,
                finished: false,
                sent: None,
                done: done_rx,
            },
        );
        let (exit_tx, exit_rx) = oneshot::channel();
        let supervisor = Supervisor {
            step_id: step.step_id,
            pgid,
            start,
            state: Arc::clone(&self.state),
            out: Output { tx: Some(tx) },
            tail,
            exit_file: files.exit(),
        };
        tokio::spawn(supervisor.run(main, done_tx, exit_tx));
        let exit = async move {
            exit_rx.await.unwrap_or_else(|_| StepExit::Error {
                reason: "the local backend lost track of the step's process".to_string(),
            })
        }
        .boxed();
        StepHandle { output: rx, exit }
    }

    /// What the files say of an attempt this process does not follow (see [`Presence`]); an
    /// error when its record comes from where its processes cannot be seen (another host or
    /// pid namespace): it may be running there, and it must not run twice.
    async fn probe_files(
        &self,
        state_dir: &Path,
        step_id: Uuid,
        attempt: u32,
    ) -> Result<Presence, BackendError> {
        let files = Files::new(state_dir, step_id, attempt);
        let record = match record::read_record(&files).await {
            Recorded::None => return Ok(Presence::Absent),
            // Whether the attempt still runs, and as which processes, is unknown: running it
            // again could run it twice at once. The engine ends the step as an error.
            Recorded::Unreadable(reason) => {
                return Err(BackendError::Failed(format!(
                    "{reason}; whether attempt {attempt} still runs cannot be told, so it is not run again"
                )));
            }
            Recorded::Some(r) => r,
        };
        match record.seen_from(self.host.as_ref()) {
            record::Seen::Here => {}
            record::Seen::Elsewhere(reason) => return Err(BackendError::Failed(reason)),
            // Its processes died with the host; an exit written before is still its end.
            record::Seen::BeforeRestart => {
                return Ok(if record::read_exit(&files).await.is_some() {
                    Presence::Present
                } else {
                    Presence::Interrupted {
                        reason: format!("attempt {attempt} was lost when its host restarted"),
                    }
                });
            }
        }
        if tokio::fs::metadata(files.log()).await.is_err() {
            return Ok(Presence::Interrupted {
                reason: format!("the output file of attempt {attempt} is gone"),
            });
        }
        // Alive first, then the exit file: a wrapper found gone has written its exit, if it
        // was going to, before it ended.
        if process::process_alive(record.pgid, record.proc_start)
            || record::read_exit(&files).await.is_some()
        {
            return Ok(Presence::Present);
        }
        Ok(Presence::Interrupted {
            reason: format!(
                "attempt {attempt} ended without recording its exit: its processes were killed outside piculet, or its replica died before letting it run"
            ),
        })
    }

    /// Kills every process of a workflow, its own and those left by other replicas, and
    /// removes its directory.
    async fn remove(&self, id: Uuid) -> Result<(), BackendError> {
        let mut waiting = Vec::new();
        {
            let mut state = self.lock();
            for entry in state.steps.values_mut().filter(|e| e.workflow_id == id) {
                if !entry.finished {
                    process::signal_group(entry.pgid, Signal::KILL);
                    entry.sent = Some(Signal::KILL);
                    waiting.push(entry.done.clone());
                }
            }
            state.steps.retain(|_, e| e.workflow_id != id);
        }
        // Groups left by another replica or an earlier piculet; those this process follows
        // were handled above.
        let state_dir = self.state_dir(id);
        let mut others = Vec::new();
        for (step_id, attempt) in record::recorded_attempts(&state_dir).await {
            let Recorded::Some(r) =
                record::read_record(&Files::new(&state_dir, step_id, attempt)).await
            else {
                continue;
            };
            let (pgid, start) = r.group(self.host.as_ref());
            // Every attempt the workflow ever ran has a record, most of them long over: an id
            // since given to another process's group is left alone.
            if process::recorded_group_alive(pgid, start) {
                process::signal_recorded_group(pgid, start, Signal::KILL);
                others.push((pgid, start));
            }
        }
        // Removing the workspace while a dying process still writes into it could fail.
        let deadline = Instant::now() + TEARDOWN_WAIT;
        for mut done in waiting {
            let _ = timeout_at(deadline, done.wait_for(|d| *d)).await;
        }
        while others
            .iter()
            .any(|&(g, start)| process::recorded_group_alive(g, start))
            && Instant::now() < deadline
        {
            tokio::time::sleep(POLL).await;
        }
        remove_dir_all(self.workflow_root(id)).await
    }
}

/// Releases a step id claimed by [`LocalBackend::reserve`], whether the start succeeded
/// (the step is in `steps` by then) or failed.
struct Reservation {
    state: Arc<Mutex<State>>,
    step_id: Uuid,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        lock(&self.state).starting.remove(&self.step_id);
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every update under the lock is a single insert, flag or removal, so a panic elsewhere
    // cannot have left the state half-changed: a poisoned lock is still usable.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn failed(what: String, e: io::Error) -> BackendError {
    BackendError::Failed(format!("{what}: {e}"))
}
