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
//! The seams: `process` spawns a step behind its start gate and knows process groups;
//! `record` owns the attempt's files; `output` reads the log into lines and follows a step
//! to its end. This file decides how a step runs (`launch`) and answers the engine.
//!
//! Every step runs in its own process group, so that stopping it (cancel, timeout, end of a
//! service) reaches every process it started, as stopping a container does. For the same
//! reason the group is killed once the step's main process has ended: in a container,
//! background processes die with the container's first process. Steps do not die with
//! piculet: they write to a file, not to a pipe piculet reads, and nothing kills them on exit.

mod output;
mod process;
mod record;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, timeout, timeout_at};
use uuid::Uuid;

use super::{Backend, BackendError, Presence, StepExit, StepHandle, StepRun, WorkflowRun};
use crate::pipeline::{DEFAULT_CLONE_IMAGE, EnvValue, SettingValue, StepKind, StepSpec, script};
use output::{Main, OUTPUT_CAPACITY, Output, Supervisor, Tail};
use process::POLL;
use record::{Files, Record, Recorded};
use rustix::process::Signal;

/// How long teardown waits for killed processes to be gone before removing the workspace.
const TEARDOWN_WAIT: Duration = Duration::from_secs(5);
/// The host variables a step inherits; everything else of piculet's environment (its
/// database URL, its tokens) stays out of the steps.
const HOST_VARIABLES: [&str; 4] = ["PATH", "HOME", "LANG", "TMPDIR"];
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

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

    /// The directory holding everything of a workflow.
    pub fn workflow_root(&self, workflow_id: Uuid) -> PathBuf {
        self.data_dir
            .join("workspaces")
            .join(workflow_id.to_string())
    }

    /// The workspace directory of a workflow: what steps see as `CI_WORKSPACE`, the plan's
    /// `workspace.base/workspace.path` under the workflow's root (`/woodpecker/src` →
    /// `<root>/woodpecker/src`).
    pub fn workspace_dir(&self, workflow: &WorkflowRun) -> Result<PathBuf, BackendError> {
        let ws = &workflow.plan.workspace;
        let root = self.workflow_root(workflow.workflow_id);
        let base = join_inside(&root, &root, &ws.base, "workspace.base")?;
        join_inside(&root, &base, &ws.path, "workspace.path")
    }

    fn state_dir(&self, workflow_id: Uuid) -> PathBuf {
        self.workflow_root(workflow_id).join(".piculet")
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Everything about how a step runs, decided before anything is started.
    fn launch(&self, workflow: &WorkflowRun, step: &StepRun) -> Result<Launch, BackendError> {
        let spec = &step.spec;
        let workspace = self.workspace_dir(workflow)?;
        let dir = match spec.directory.as_deref() {
            Some(d) if spec.kind == StepKind::Service && d.starts_with('/') => {
                return Err(BackendError::Refused(format!(
                    "the local backend cannot run service {:?} in {d:?}: a directory outside the workspace is a place in a container, and only the kubernetes backend has one; write a directory relative to the workspace",
                    spec.name
                )));
            }
            Some(d) if !d.is_empty() => join_inside(
                &self.workflow_root(workflow.workflow_id),
                &workspace,
                d,
                "directory",
            )?,
            _ => workspace.clone(),
        };

        let mut env: BTreeMap<OsString, OsString> = self.host_env.iter().cloned().collect();
        env.entry("PATH".into())
            .or_insert_with(|| DEFAULT_PATH.into());
        env.extend(step.env.iter().map(|(k, v)| (k.into(), v.into())));
        for (name, value) in &spec.environment {
            env.insert(
                name.into(),
                resolve_env(spec, value, &workflow.secrets)?.into(),
            );
        }
        // The engine passes the container path; scripts need the real one.
        env.insert("CI_WORKSPACE".into(), workspace.clone().into_os_string());

        let mut notices = Vec::new();
        let image_notice = |image: &str| {
            format!(
                "piculet: the local backend ignores image {image:?}; the step runs on this host\n"
            )
        };
        let body = match spec.kind {
            StepKind::Plugin => {
                return Err(BackendError::Refused(format!(
                    "the local backend cannot run plugin steps (step {:?}, image {:?}): run piculet with PICULET_BACKEND=kubernetes",
                    spec.name, spec.image
                )));
            }
            StepKind::Clone if spec.commands.is_empty() && spec.entrypoint.is_none() => {
                if !spec.image.is_empty() && spec.image != DEFAULT_CLONE_IMAGE {
                    notices.push(image_notice(&spec.image));
                }
                let clone = clone_plan(spec, &step.env, &workflow.secrets)?;
                notices.extend(clone.notices);
                env.extend(clone.env.into_iter().map(|(k, v)| (k.into(), v.into())));
                // A prompt for credentials would wait forever: nobody is there to answer.
                env.insert("GIT_TERMINAL_PROMPT".into(), "0".into());
                Body::Script(clone.commands)
            }
            StepKind::Step | StepKind::Service | StepKind::Clone => {
                if !spec.image.is_empty() {
                    notices.push(image_notice(&spec.image));
                }
                match spec.entrypoint.as_deref() {
                    Some([program, args @ ..]) => Body::Entrypoint {
                        program: program.clone(),
                        args: args.to_vec(),
                        commands: spec.commands.clone(),
                    },
                    _ if spec.commands.is_empty() => {
                        return Err(BackendError::Refused(format!(
                            "the local backend cannot run step {:?}: it has no commands, and an image's own entrypoint (image {:?}) only runs on the kubernetes backend",
                            spec.name, spec.image
                        )));
                    }
                    _ => Body::Script(spec.commands.clone()),
                }
            }
        };

        let (program, args, script) = match body {
            Body::Script(commands) => (
                "/bin/sh".to_string(),
                vec!["-e".to_string()],
                Some(script::commands(&commands)),
            ),
            Body::Entrypoint {
                program,
                args,
                commands,
            } => {
                if !commands.is_empty() {
                    // As Woodpecker does: the script for an entrypoint such as
                    // `script::CI_SCRIPT_COMMAND`.
                    env.insert(
                        script::CI_SCRIPT.into(),
                        script::ci_script(&commands).into(),
                    );
                }
                (program, args, None)
            }
        };
        Ok(Launch {
            program,
            args,
            script,
            env,
            dir,
            notices,
        })
    }
}

/// What a step runs: a script of commands, or a program of the user's choice.
enum Body {
    Script(Vec<String>),
    Entrypoint {
        program: String,
        args: Vec<String>,
        commands: Vec<String>,
    },
}

/// A step ready to be spawned.
struct Launch {
    program: String,
    /// The script's path is appended when there is a script.
    args: Vec<String>,
    script: Option<String>,
    env: BTreeMap<OsString, OsString>,
    dir: PathBuf,
    /// piculet's own lines, first in the step's output.
    notices: Vec<String>,
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

fn spawn_error(spec: &StepSpec, program: &str, e: io::Error) -> BackendError {
    match e.kind() {
        io::ErrorKind::NotFound => BackendError::Refused(format!(
            "step {:?}: {program:?} was not found on this host (the local backend runs steps on the host, not in their image)",
            spec.name
        )),
        io::ErrorKind::PermissionDenied => BackendError::Refused(format!(
            "step {:?}: {program:?} cannot be executed on this host: {e}",
            spec.name
        )),
        _ => BackendError::Failed(format!(
            "step {:?}: cannot start {program:?}: {e}",
            spec.name
        )),
    }
}

async fn remove_file_if_any(file: &Path) {
    // Best effort: a leftover file is overwritten or refused by the next start.
    let _ = tokio::fs::remove_file(file).await;
}

/// Removes a directory tree; absent is fine. Read-only directories (a Go module cache, for
/// one) are made writable first, since their entries cannot be removed otherwise.
async fn remove_dir_all(dir: PathBuf) -> Result<(), BackendError> {
    let result = tokio::task::spawn_blocking(move || {
        let mut last = Ok(());
        for _ in 0..3 {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => {
                    make_writable(&dir);
                    last = Err(failed(format!("cannot remove {}", dir.display()), e));
                }
            }
        }
        last
    })
    .await;
    result.unwrap_or_else(|e| Err(BackendError::Failed(format!("workspace removal: {e}"))))
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // symlink_metadata: never follow a link out of the workspace.
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mut perms = meta.permissions();
    perms.set_mode(perms.mode() | 0o700);
    let _ = std::fs::set_permissions(dir, perms);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            make_writable(&entry.path());
        }
    }
}

/// `base` joined with the relative form of `rel` (a leading `/` is dropped: a workspace base
/// such as `/woodpecker` is meant under the workflow's root), `..` resolved lexically and not
/// allowed to lead out of `root`.
fn join_inside(root: &Path, base: &Path, rel: &str, what: &str) -> Result<PathBuf, BackendError> {
    let mut path = base.to_path_buf();
    for component in Path::new(rel).components() {
        match component {
            Component::Normal(c) => path.push(c),
            Component::ParentDir => {
                path.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
        if !path.starts_with(root) {
            return Err(BackendError::Refused(format!(
                "{what} {rel:?} leads out of the workflow's directory"
            )));
        }
    }
    Ok(path)
}

fn resolve_env(
    spec: &StepSpec,
    value: &EnvValue,
    secrets: &BTreeMap<String, String>,
) -> Result<String, BackendError> {
    match value {
        EnvValue::Literal(v) => Ok(v.clone()),
        EnvValue::FromSecret(name) => secret(spec, name, secrets),
    }
}

fn secret(
    spec: &StepSpec,
    name: &str,
    secrets: &BTreeMap<String, String>,
) -> Result<String, BackendError> {
    secrets.get(name).cloned().ok_or_else(|| {
        BackendError::Refused(format!(
            "step {:?} uses secret {name:?}, which the submission does not provide",
            spec.name
        ))
    })
}

/// How the clone step runs with the host's `git`.
///
/// The values come from the pipeline's clone settings or the submission (validated there, see
/// [`crate::repo`]), but the script does not rely on it: each value is passed as a variable
/// rather than pasted into the script, so the shell never parses it, and after
/// `--end-of-options` (git 2.24 or later; an older git refuses the script instead), so git never
/// reads it as an option such as `--upload-pack=<command>`.
struct ClonePlan {
    commands: Vec<String>,
    /// The values the commands refer to.
    env: BTreeMap<String, String>,
    notices: Vec<String>,
}

const CLONE_SETTINGS: [&str; 4] = ["remote", "ref", "sha", "depth"];

fn clone_plan(
    spec: &StepSpec,
    ci_env: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
) -> Result<ClonePlan, BackendError> {
    let setting = |key: &str| -> Result<Option<String>, BackendError> {
        Ok(match spec.settings.get(key) {
            Some(SettingValue::Value(serde_json::Value::String(s))) => Some(s.clone()),
            Some(SettingValue::Value(serde_json::Value::Null)) | None => None,
            Some(SettingValue::Value(other)) => Some(other.to_string()),
            Some(SettingValue::FromSecret(name)) => Some(secret(spec, name, secrets)?),
        }
        .filter(|s| !s.is_empty()))
    };
    // A `clone:` section of the pipeline names no remote: the submission's variables do.
    let from_env = |key: &str| ci_env.get(key).filter(|s| !s.is_empty()).cloned();
    let remote = setting("remote")?
        .or_else(|| from_env("CI_REPO_CLONE_URL"))
        .ok_or_else(|| {
            BackendError::Refused(format!(
                "clone step {:?}: no repository to clone (neither a \"remote\" setting nor CI_REPO_CLONE_URL)",
                spec.name
            ))
        })?;
    let sha = setting("sha")?.or_else(|| from_env("CI_COMMIT_SHA"));
    let r#ref = setting("ref")?.or_else(|| from_env("CI_COMMIT_REF"));
    let depth = match setting("depth")? {
        None => 1,
        // The value is not repeated: it may come from a secret, and a reason is not masked.
        Some(d) => d.parse::<u32>().map_err(|_| {
            BackendError::Refused(format!(
                "clone step {:?}: setting \"depth\" must be a whole number",
                spec.name
            ))
        })?,
    };
    let depth_arg = if depth == 0 {
        String::new()
    } else {
        format!(" --depth={depth}")
    };

    let mut notices: Vec<String> = spec
        .settings
        .keys()
        .filter(|k| !CLONE_SETTINGS.contains(&k.as_str()))
        .map(|k| format!("piculet: the local backend ignores clone setting {k:?}\n"))
        .collect();
    let at = sha.as_deref().or(r#ref.as_deref()).unwrap_or("HEAD");
    notices.push(format!(
        "piculet: cloning {} at {at} with this host's git\n",
        redact_userinfo(&remote)
    ));

    let mut env = BTreeMap::from([("PICULET_CLONE_REMOTE".to_string(), remote)]);
    let mut commands = vec![
        "git init -q".to_string(),
        r#"git config --end-of-options remote.origin.url "$PICULET_CLONE_REMOTE""#.to_string(),
    ];
    match (sha, r#ref) {
        (Some(sha), r#ref) => {
            // Fetching a commit by its id needs the server's consent (GitHub and GitLab give
            // it); otherwise the whole ref is fetched, which holds the commit.
            let mut fetch =
                format!(r#"git fetch{depth_arg} --end-of-options origin "$PICULET_CLONE_SHA""#);
            if let Some(r#ref) = r#ref {
                fetch.push_str(r#" || git fetch --end-of-options origin "$PICULET_CLONE_REF""#);
                env.insert("PICULET_CLONE_REF".to_string(), r#ref);
            }
            env.insert("PICULET_CLONE_SHA".to_string(), sha);
            commands.push(fetch);
            // The trailing `--`: the commit is a revision, never a path.
            commands
                .push(r#"git checkout -q --end-of-options "$PICULET_CLONE_SHA" --"#.to_string());
        }
        (None, r#ref) => {
            env.insert(
                "PICULET_CLONE_REF".to_string(),
                r#ref.unwrap_or_else(|| "HEAD".to_string()),
            );
            commands.push(format!(
                r#"git fetch{depth_arg} --end-of-options origin "$PICULET_CLONE_REF""#
            ));
            commands.push("git checkout -q FETCH_HEAD".to_string());
        }
    }
    Ok(ClonePlan {
        commands,
        env,
        notices,
    })
}

/// `https://user:token@host/x` → `https://***@host/x`: a token in a clone URL is not
/// necessarily a submission secret, so the log masking would not catch it.
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::backend::OutputLine;
    use crate::pipeline::{Status, WorkflowPlan, Workspace};

    /// A directory removed at the end of the test, whatever happens.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!("piculet-local-{}", Uuid::now_v7()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            make_writable(&self.0);
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn spec(name: &str, commands: &[&str]) -> StepSpec {
        StepSpec {
            commands: commands.iter().map(|c| c.to_string()).collect(),
            ..StepSpec::new(name, StepKind::Step, "")
        }
    }

    fn workflow_run(secrets: &[(&str, &str)]) -> WorkflowRun {
        WorkflowRun {
            pipeline_id: Uuid::now_v7(),
            workflow_id: Uuid::now_v7(),
            plan: WorkflowPlan {
                name: "test".to_string(),
                matrix: BTreeMap::new(),
                platform: "linux/amd64".to_string(),
                workspace: Workspace::default(),
                labels: BTreeMap::new(),
                depends_on: Vec::new(),
                runs_on: vec![Status::Success],
                services: Vec::new(),
                steps: Vec::new(),
                dropped_steps: Vec::new(),
                concurrency: None,
            },
            secrets: secrets
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            step_ids: BTreeMap::new(),
            namespace: None,
            registries: Vec::new(),
        }
    }

    fn step_run(spec: StepSpec) -> StepRun {
        let env = [
            ("CI", "woodpecker"),
            ("CI_PIPELINE_ID", "42"),
            ("CI_STEP_NAME", spec.name.as_str()),
            ("CI_WORKSPACE", "/woodpecker/src"),
        ];
        StepRun {
            step_id: Uuid::now_v7(),
            attempt: 1,
            runnable_at: std::time::Instant::now(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            spec,
        }
    }

    struct Fixture {
        dir: TempDir,
        backend: LocalBackend,
        wf: WorkflowRun,
    }

    async fn fixture_with(secrets: &[(&str, &str)]) -> Fixture {
        let dir = TempDir::new();
        let backend = LocalBackend::new(dir.0.clone());
        let wf = workflow_run(secrets);
        backend.setup_workflow(&wf).await.expect("setup");
        Fixture { dir, backend, wf }
    }

    async fn fixture() -> Fixture {
        fixture_with(&[]).await
    }

    /// Every guard in these tests: a hung step fails the test instead of hanging it.
    const LIMIT: Duration = Duration::from_secs(30);

    async fn collect(handle: StepHandle) -> (Vec<String>, StepExit) {
        let StepHandle { mut output, exit } = handle;
        timeout(LIMIT, async move {
            let mut lines = Vec::new();
            while let Some(line) = output.recv().await {
                lines.push(line.text);
            }
            (lines, exit.await)
        })
        .await
        .expect("the step ended in time")
    }

    async fn run(f: &Fixture, spec: StepSpec) -> (Vec<String>, StepExit) {
        let handle = f
            .backend
            .start_step(&f.wf, &step_run(spec))
            .await
            .expect("start");
        collect(handle).await
    }

    /// Reads output until a line starting with each of `prefixes` was seen; returns the
    /// number after each prefix (a pid).
    async fn read_pids(output: &mut mpsc::Receiver<OutputLine>, prefixes: &[&str]) -> Vec<i32> {
        let mut pids = vec![None; prefixes.len()];
        timeout(LIMIT, async {
            while pids.iter().any(Option::is_none) {
                let line = output.recv().await.expect("output ended early").text;
                for (i, prefix) in prefixes.iter().enumerate() {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        pids[i] = rest.trim().parse::<i32>().ok();
                    }
                }
            }
        })
        .await
        .expect("pids printed in time");
        pids.into_iter().flatten().collect()
    }

    fn exited(code: i32) -> StepExit {
        StepExit::Exited { code, reason: None }
    }

    fn killed(signal: i32) -> StepExit {
        StepExit::Exited {
            code: 128 + signal,
            reason: Some(format!("killed by signal {signal}")),
        }
    }

    /// Gone, or a zombie (dead, waiting for a parent that may be slow to reap it).
    fn process_gone(pid: i32) -> bool {
        let Some(process) = rustix::process::Pid::from_raw(pid) else {
            return true;
        };
        if rustix::process::test_kill_process(process).is_err() {
            return true;
        }
        procfs::process::Process::new(pid)
            .and_then(|p| p.stat())
            .is_ok_and(|stat| matches!(stat.state, 'Z' | 'X'))
    }

    async fn wait_gone(pid: i32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !process_gone(pid) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
        true
    }

    #[tokio::test]
    async fn output_comes_line_by_line_with_stderr_in_order() {
        let f = fixture().await;
        let (lines, exit) = run(
            &f,
            spec(
                "build",
                &[
                    "echo out1; echo err1 >&2; echo out2; echo err2 >&2",
                    "echo 'it'\"'\"'s quoted \\ \"and\" $HOME-literal'",
                ],
            ),
        )
        .await;
        assert_eq!(
            lines,
            [
                "+ echo out1; echo err1 >&2; echo out2; echo err2 >&2\n",
                "out1\n",
                "err1\n",
                "out2\n",
                "err2\n",
                "+ echo 'it'\"'\"'s quoted \\ \"and\" $HOME-literal'\n",
                "it's quoted \\ \"and\" $HOME-literal\n",
            ]
        );
        assert_eq!(exit, exited(0));
    }

    #[tokio::test]
    async fn exit_codes_are_reported() {
        let f = fixture().await;
        assert_eq!(run(&f, spec("ok", &["true"])).await.1, exited(0));
        assert_eq!(run(&f, spec("three", &["exit 3"])).await.1, exited(3));
        // A finished step's files stay until the teardown: an adopting replica may still
        // have to report it. The exit file holds the real status.
        let state_dir = f.backend.state_dir(f.wf.workflow_id);
        let mut exits: Vec<String> = std::fs::read_dir(state_dir)
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "exit"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
            .collect();
        exits.sort();
        assert_eq!(exits, ["0\n", "3\n"]);
    }

    #[tokio::test]
    async fn the_first_failing_command_stops_the_step() {
        let f = fixture().await;
        let (lines, exit) = run(&f, spec("fail", &["echo a", "false", "echo never"])).await;
        assert_eq!(lines, ["+ echo a\n", "a\n", "+ false\n"]);
        assert_eq!(exit, exited(1));
    }

    #[tokio::test]
    async fn environment_has_ci_variables_literals_and_secrets() {
        let f = fixture_with(&[("token", "s3cr3t-value")]).await;
        let mut s = spec(
            "env",
            &[
                "echo \"$CI $CI_PIPELINE_ID $CI_STEP_NAME $LITERAL $FROM_SECRET\"",
                "echo \"$CI_WORKSPACE\"",
                "echo \"${CI_SCRIPT:-no script variable}\"",
            ],
        );
        s.environment = BTreeMap::from([
            ("LITERAL".to_string(), EnvValue::Literal("lit".to_string())),
            (
                "FROM_SECRET".to_string(),
                EnvValue::FromSecret("token".to_string()),
            ),
        ]);
        let (lines, exit) = run(&f, s).await;
        assert_eq!(exit, exited(0));
        let workspace = f.backend.workspace_dir(&f.wf).unwrap();
        assert_eq!(lines[1], "woodpecker 42 env lit s3cr3t-value\n");
        assert_eq!(lines[3], format!("{}\n", workspace.display()));
        assert_eq!(lines[5], "no script variable\n");
        // The echoed command shows the variable's name, never its value.
        let echoed: Vec<&String> = lines.iter().filter(|l| l.starts_with("+ ")).collect();
        assert_eq!(echoed.len(), 3);
        assert!(echoed.iter().all(|l| !l.contains("s3cr3t")), "{echoed:?}");
    }

    #[tokio::test]
    async fn the_host_environment_is_minimal() {
        let f = fixture().await;
        let (lines, _) = run(&f, spec("env", &["env | cut -d= -f1 | sort"])).await;
        let names: Vec<&str> = lines[1..].iter().map(|l| l.trim_end()).collect();
        for name in &names {
            assert!(
                HOST_VARIABLES.contains(name)
                    || name.starts_with("CI")
                    || ["PWD", "SHLVL", "_", "OLDPWD"].contains(name),
                "unexpected variable {name} in {names:?}"
            );
        }
        assert!(names.contains(&"PATH"));
    }

    #[tokio::test]
    async fn a_missing_secret_is_refused() {
        let f = fixture().await;
        let mut s = spec("env", &["true"]);
        s.environment =
            BTreeMap::from([("X".to_string(), EnvValue::FromSecret("absent".to_string()))]);
        match f.backend.start_step(&f.wf, &step_run(s)).await {
            Err(BackendError::Refused(m)) => assert!(m.contains("\"absent\""), "{m}"),
            other => panic!("expected a refusal, got {:?}", other.err()),
        }
    }

    #[tokio::test]
    async fn steps_run_in_the_workspace_and_their_directory() {
        let f = fixture().await;
        let workspace = f.backend.workspace_dir(&f.wf).unwrap();
        assert_eq!(
            workspace,
            f.backend
                .workflow_root(f.wf.workflow_id)
                .join("woodpecker/src")
        );
        let expected = std::fs::canonicalize(&workspace).unwrap();
        let (lines, _) = run(&f, spec("pwd", &["pwd -P"])).await;
        assert_eq!(lines[1], format!("{}\n", expected.display()));

        let mut s = spec("sub", &["pwd -P", "echo \"$CI_WORKSPACE\""]);
        s.directory = Some("sub/dir".to_string());
        let (lines, exit) = run(&f, s).await;
        assert_eq!(exit, exited(0));
        assert_eq!(
            lines[1],
            format!("{}\n", expected.join("sub/dir").display())
        );
        assert_eq!(lines[3], format!("{}\n", workspace.display()));
    }

    #[tokio::test]
    async fn paths_cannot_leave_the_workflow_directory() {
        let f = fixture().await;
        let mut s = spec("escape", &["true"]);
        s.directory = Some("../../../../etc".to_string());
        assert!(matches!(
            f.backend.start_step(&f.wf, &step_run(s)).await,
            Err(BackendError::Refused(_))
        ));
        let mut wf = f.wf.clone();
        wf.plan.workspace.path = "../../..".to_string();
        assert!(matches!(
            f.backend.setup_workflow(&wf).await,
            Err(BackendError::Refused(_))
        ));
        // Inside is fine, `..` included.
        let mut s = spec("sibling", &["pwd -P"]);
        s.directory = Some("../other".to_string());
        let (_, exit) = run(&f, s).await;
        assert_eq!(exit, exited(0));
    }

    #[tokio::test]
    async fn an_image_is_ignored_with_a_warning_first() {
        let f = fixture().await;
        let mut s = spec("go", &["echo hi"]);
        s.image = "golang:1.22".to_string();
        let (lines, exit) = run(&f, s).await;
        assert_eq!(
            lines,
            [
                "piculet: the local backend ignores image \"golang:1.22\"; the step runs on this host\n",
                "+ echo hi\n",
                "hi\n",
            ]
        );
        assert_eq!(exit, exited(0));
    }

    #[tokio::test]
    async fn plugin_steps_and_steps_without_commands_are_refused() {
        let f = fixture().await;
        let mut s = spec("publish", &[]);
        s.kind = StepKind::Plugin;
        s.image = "plugins/docker".to_string();
        match f.backend.start_step(&f.wf, &step_run(s)).await {
            Err(BackendError::Refused(m)) => {
                assert!(m.contains("plugin steps"), "{m}");
                assert!(m.contains("\"plugins/docker\""), "{m}");
                assert!(m.contains("PICULET_BACKEND=kubernetes"), "{m}");
            }
            other => panic!("expected a refusal, got {:?}", other.err()),
        }
        let mut s = spec("postgres", &[]);
        s.kind = StepKind::Service;
        s.image = "postgres:16".to_string();
        assert!(matches!(
            f.backend.start_step(&f.wf, &step_run(s)).await,
            Err(BackendError::Refused(_))
        ));
    }

    /// A service's absolute directory is a place in a container; on this host it would be a
    /// directory outside the workflow's, so it is refused rather than taken elsewhere.
    #[tokio::test]
    async fn a_service_in_an_absolute_directory_is_refused() {
        let f = fixture().await;
        let mut s = spec("cache", &["true"]);
        s.kind = StepKind::Service;
        s.directory = Some("/tmp/".to_string());
        match f.backend.start_step(&f.wf, &step_run(s)).await {
            Err(BackendError::Refused(m)) => {
                assert!(m.contains("\"/tmp/\""), "{m}");
                assert!(m.contains("kubernetes backend"), "{m}");
            }
            other => panic!("expected a refusal, got {:?}", other.err()),
        }
    }

    #[tokio::test]
    async fn an_entrypoint_gets_the_script_as_ci_script() {
        let f = fixture().await;
        let mut s = spec("custom", &["echo hi", "echo \"${CI_SCRIPT:-unset}\""]);
        s.entrypoint = Some(vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            "echo $CI_SCRIPT | base64 -d | /bin/sh -e".to_string(),
        ]);
        let (lines, exit) = run(&f, s).await;
        assert_eq!(
            lines,
            [
                "+ echo hi\n",
                "hi\n",
                "+ echo \"${CI_SCRIPT:-unset}\"\n",
                "unset\n"
            ]
        );
        assert_eq!(exit, exited(0));
    }

    #[tokio::test]
    async fn a_step_that_prints_nothing() {
        let f = fixture().await;
        let mut s = spec("quiet", &[]);
        s.entrypoint = Some(vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            "exit 0".to_string(),
        ]);
        let (lines, exit) = run(&f, s).await;
        assert!(lines.is_empty(), "{lines:?}");
        assert_eq!(exit, exited(0));
    }

    #[tokio::test]
    async fn a_missing_program_is_refused() {
        let f = fixture().await;
        let mut s = spec("missing", &[]);
        s.entrypoint = Some(vec!["/nonexistent/piculet-test-program".to_string()]);
        assert!(matches!(
            f.backend.start_step(&f.wf, &step_run(s)).await,
            Err(BackendError::Refused(_))
        ));
    }

    #[tokio::test]
    async fn a_mebibyte_of_output_comes_back_byte_exact() {
        let f = fixture().await;
        // Lines of many lengths, some far beyond the maximum, multi-byte characters cut
        // anywhere, `\r\n`, empty lines, and a last line without `\n`.
        let unit = "abcdefghij-é€🦀\r";
        let mut data = String::new();
        let lengths = [0, 1, 80, 5, 70_000, 200_000, 3, 65_536, 65_537, 131_071];
        let mut i = 0;
        while data.len() < (1 << 20) + 100_000 {
            let len = lengths[i % lengths.len()];
            let line: String = unit.chars().cycle().take(len).collect();
            data.push_str(&line);
            data.push('\n');
            i += 1;
        }
        data.push_str("last line without newline é");
        let workspace = f.backend.workspace_dir(&f.wf).unwrap();
        std::fs::write(workspace.join("data.txt"), &data).unwrap();

        let (lines, exit) = run(&f, spec("cat", &["cat data.txt"])).await;
        assert_eq!(exit, exited(0));
        assert_eq!(lines[0], "+ cat data.txt\n");
        let output = lines[1..].concat();
        assert_eq!(output.len(), data.len());
        assert!(output == data, "the output differs from the input");
        assert!(
            lines
                .iter()
                .all(|l| l.trim_end_matches('\n').len() <= super::super::lines::MAX_LINE)
        );
        assert_eq!(lines.last().unwrap(), "last line without newline é");
    }

    #[tokio::test]
    async fn stop_step_terminates_the_whole_group() {
        let f = fixture().await;
        let run = step_run(spec(
            "server",
            &[
                "echo \"leader $$\"",
                "sleep 1000 & echo \"child $!\"",
                "sh -c 'sleep 1000 & echo \"grandchild $!\"; wait' &",
                "wait",
            ],
        ));
        let mut handle = f.backend.start_step(&f.wf, &run).await.expect("start");
        // The lines arrive while the step runs.
        let pids = read_pids(&mut handle.output, &["leader ", "child ", "grandchild "]).await;
        assert_eq!(f.backend.running_steps(&f.wf).await.unwrap(), [run.step_id]);

        f.backend
            .stop_step(&f.wf, run.step_id, Duration::from_secs(10))
            .await
            .expect("stop");
        let (_, exit) = collect(handle).await;
        assert_eq!(exit, killed(Signal::TERM.as_raw()));
        for pid in pids {
            assert!(wait_gone(pid).await, "process {pid} survived the stop");
        }
        assert!(f.backend.running_steps(&f.wf).await.unwrap().is_empty());
        // Stopping a finished step, or an unknown one, does nothing.
        f.backend
            .stop_step(&f.wf, run.step_id, Duration::from_secs(1))
            .await
            .expect("stop again");
        f.backend
            .stop_step(&f.wf, Uuid::now_v7(), Duration::from_secs(1))
            .await
            .expect("stop unknown");
    }

    #[tokio::test]
    async fn stop_step_kills_after_the_grace_period() {
        let f = fixture().await;
        let run = step_run(spec(
            "stubborn",
            &[
                "trap '' TERM",
                "sleep 1000 & echo \"child $!\"",
                "echo \"leader $$\"",
                "wait",
            ],
        ));
        let mut handle = f.backend.start_step(&f.wf, &run).await.expect("start");
        let pids = read_pids(&mut handle.output, &["child ", "leader "]).await;
        f.backend
            .stop_step(&f.wf, run.step_id, Duration::from_millis(300))
            .await
            .expect("stop");
        let (_, exit) = collect(handle).await;
        assert_eq!(exit, killed(Signal::KILL.as_raw()));
        for pid in pids {
            assert!(wait_gone(pid).await, "process {pid} survived the kill");
        }
    }

    #[tokio::test]
    async fn a_background_process_holding_the_pipe_does_not_hold_the_step() {
        let f = fixture().await;
        let run = step_run(spec("leaky", &["sleep 1000 & echo \"child $!\""]));
        let mut handle = f.backend.start_step(&f.wf, &run).await.expect("start");
        let pids = read_pids(&mut handle.output, &["child "]).await;
        let (rest, exit) = collect(handle).await;
        assert!(rest.is_empty(), "{rest:?}");
        assert_eq!(exit, exited(0));
        assert!(wait_gone(pids[0]).await, "the background process survived");
    }

    #[tokio::test]
    async fn output_written_after_the_main_process_exits_is_kept_for_a_moment() {
        let f = fixture().await;
        let (lines, exit) = run(&f, spec("late", &["(sleep 0.1; echo late) &"])).await;
        assert_eq!(lines, ["+ (sleep 0.1; echo late) &\n", "late\n"]);
        assert_eq!(exit, exited(0));
    }

    #[tokio::test]
    async fn teardown_kills_services_and_removes_the_workspace() {
        let f = fixture().await;
        let mut s = spec(
            "database",
            &[
                "sleep 1000 & echo \"child $!\"",
                "echo \"leader $$\"",
                "wait",
            ],
        );
        s.kind = StepKind::Service;
        let run = step_run(s);
        let mut handle = f.backend.start_step(&f.wf, &run).await.expect("start");
        let pids = read_pids(&mut handle.output, &["child ", "leader "]).await;
        let root = f.backend.workflow_root(f.wf.workflow_id);
        std::fs::write(root.join("woodpecker/src/file"), "x").unwrap();
        // A read-only directory, as a Go module cache makes them.
        let ro = root.join("woodpecker/src/ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::write(ro.join("f"), "x").unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
        }

        f.backend.teardown_workflow(&f.wf).await.expect("teardown");
        let (_, exit) = collect(handle).await;
        assert_eq!(exit, killed(Signal::KILL.as_raw()));
        for pid in pids {
            assert!(wait_gone(pid).await, "process {pid} survived the teardown");
        }
        assert!(!root.exists(), "the workspace is still there");
        f.backend
            .teardown_workflow(&f.wf)
            .await
            .expect("teardown again");
        assert!(f.dir.0.join("workspaces").exists());
    }

    #[tokio::test]
    async fn after_a_restart_running_steps_are_found_and_stopped() {
        let f = fixture().await;
        let run = step_run(spec(
            "left-behind",
            &[
                "sleep 1000 & echo \"child $!\"",
                "echo \"leader $$\"",
                "wait",
            ],
        ));
        let mut handle = f.backend.start_step(&f.wf, &run).await.expect("start");
        let pids = read_pids(&mut handle.output, &["child ", "leader "]).await;

        // A second backend on the same data directory knows nothing but the files.
        let restarted = LocalBackend::new(f.dir.0.clone());
        restarted.setup_workflow(&f.wf).await.expect("setup again");
        assert_eq!(restarted.running_steps(&f.wf).await.unwrap(), [run.step_id]);
        assert_eq!(
            restarted.probe_step(&f.wf, run.step_id, 1).await.unwrap(),
            Presence::Present
        );
        restarted
            .stop_step(&f.wf, run.step_id, Duration::from_secs(5))
            .await
            .expect("stop");
        for pid in &pids {
            assert!(wait_gone(*pid).await, "process {pid} survived the stop");
        }
        let (_, exit) = collect(handle).await;
        assert_eq!(exit, killed(Signal::TERM.as_raw()));
        // Ended, its exit on file: still there to be reported, no longer running.
        let files = Files::new(&f.backend.state_dir(f.wf.workflow_id), run.step_id, 1);
        assert_eq!(record::read_exit(&files).await, Some(143));
        restarted.teardown_workflow(&f.wf).await.expect("teardown");
    }

    #[tokio::test]
    async fn starting_a_running_step_again_fails() {
        let f = fixture().await;
        let run = step_run(spec("once", &["echo started", "sleep 1000"]));
        // Two starts at once: one runs, the other is refused.
        let (first, second) = tokio::join!(
            f.backend.start_step(&f.wf, &run),
            f.backend.start_step(&f.wf, &run)
        );
        let mut handle = match (first, second) {
            (Ok(h), Err(BackendError::Failed(_))) | (Err(BackendError::Failed(_)), Ok(h)) => h,
            (a, b) => panic!("expected one start: {:?} / {:?}", a.err(), b.err()),
        };
        // Stopped once it runs (see `process` on a SIGTERM in the instant of its start).
        let started = timeout(LIMIT, async {
            while let Some(line) = handle.output.recv().await {
                if line.text == "started\n" {
                    return true;
                }
            }
            false
        });
        assert!(started.await.unwrap());
        assert!(matches!(
            f.backend.start_step(&f.wf, &run).await,
            Err(BackendError::Failed(_))
        ));
        f.backend
            .stop_step(&f.wf, run.step_id, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(collect(handle).await.1, killed(Signal::TERM.as_raw()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn steps_run_concurrently() {
        let f = Arc::new(fixture().await);
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let f = Arc::clone(&f);
                tokio::spawn(async move {
                    let name = format!("step-{i}");
                    run(&f, spec(&name, &["sleep 0.2", "echo \"$CI_STEP_NAME\""])).await
                })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            let (lines, exit) = task.await.unwrap();
            assert_eq!(exit, exited(0));
            assert_eq!(lines.last().unwrap(), &format!("step-{i}\n"));
        }
    }

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args([
                "-c",
                "user.name=piculet",
                "-c",
                "user.email=piculet@example.com",
            ])
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A repository with two commits; returns its path, the first commit and the branch ref.
    fn test_repo(dir: &Path) -> (PathBuf, String, String) {
        let repo = dir.join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "-q"]);
        std::fs::write(repo.join("hello.txt"), "hello\n").unwrap();
        git(&repo, &["add", "hello.txt"]);
        git(&repo, &["commit", "-q", "-m", "one"]);
        let first = git(&repo, &["rev-parse", "HEAD"]);
        std::fs::write(repo.join("second.txt"), "second\n").unwrap();
        git(&repo, &["add", "second.txt"]);
        git(&repo, &["commit", "-q", "-m", "two"]);
        let branch = git(&repo, &["symbolic-ref", "HEAD"]);
        (repo, first, branch)
    }

    fn clone_spec(settings: &[(&str, &str)]) -> StepSpec {
        let mut s = StepSpec::new("clone", StepKind::Clone, DEFAULT_CLONE_IMAGE);
        s.settings = settings
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    SettingValue::Value(serde_json::Value::String(v.to_string())),
                )
            })
            .collect();
        s
    }

    #[tokio::test]
    async fn the_clone_step_fetches_the_commit_with_the_hosts_git() {
        let f = fixture().await;
        let (repo, first, branch) = test_repo(&f.dir.0);
        let remote = repo.display().to_string();
        let s = clone_spec(&[("remote", &remote), ("ref", &branch), ("sha", &first)]);
        let (lines, exit) = run(&f, s).await;
        assert_eq!(exit, exited(0), "{lines:?}");
        assert!(lines[0].starts_with("piculet: cloning "), "{lines:?}");
        assert!(lines.contains(&"+ git init -q\n".to_string()), "{lines:?}");
        let workspace = f.backend.workspace_dir(&f.wf).unwrap();
        assert_eq!(
            std::fs::read_to_string(workspace.join("hello.txt")).unwrap(),
            "hello\n"
        );
        assert!(!workspace.join("second.txt").exists(), "checked out at sha");
        assert_eq!(git(&workspace, &["rev-parse", "HEAD"]), first);
        assert_eq!(git(&workspace, &["config", "remote.origin.url"]), remote);
    }

    #[tokio::test]
    async fn the_clone_step_fetches_a_ref_without_sha() {
        let f = fixture().await;
        let (repo, _, branch) = test_repo(&f.dir.0);
        let s = clone_spec(&[("remote", &repo.display().to_string()), ("ref", &branch)]);
        let (lines, exit) = run(&f, s).await;
        assert_eq!(exit, exited(0), "{lines:?}");
        let workspace = f.backend.workspace_dir(&f.wf).unwrap();
        assert!(workspace.join("second.txt").exists());
    }

    #[tokio::test]
    async fn a_failed_clone_fails_the_step() {
        let f = fixture().await;
        let missing = f.dir.0.join("no-such-repo").display().to_string();
        let (lines, exit) = run(&f, clone_spec(&[("remote", &missing), ("ref", "main")])).await;
        assert_ne!(exit, exited(0), "{lines:?}");
        let mut s = clone_spec(&[]);
        s.name = "custom-clone".to_string();
        assert!(matches!(
            f.backend.start_step(&f.wf, &step_run(s)).await,
            Err(BackendError::Refused(_))
        ));
    }

    /// Values that would run a command if git read them as options: the clone script must
    /// fail without running any, even if a submission's validation were bypassed (a setting
    /// from a secret is not validated at all).
    #[tokio::test]
    async fn hostile_clone_values_never_run_as_options() {
        let f = fixture().await;
        let (repo, first, branch) = test_repo(&f.dir.0);
        let bare = f.dir.0.join("bare.git");
        git(
            &f.dir.0,
            &[
                "clone",
                "-q",
                "--bare",
                &repo.display().to_string(),
                "bare.git",
            ],
        );
        let remote = bare.display().to_string();
        let marker = |name: &str| f.dir.0.join(name);
        let option = |name: &str| format!("--upload-pack=touch {}", marker(name).display());
        let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
            (
                "ref",
                vec![("remote", remote.clone()), ("ref", option("ref"))],
            ),
            (
                "sha",
                vec![("remote", remote.clone()), ("sha", option("sha"))],
            ),
            (
                "sha-then-ref",
                vec![
                    ("remote", remote.clone()),
                    ("sha", option("sha-then-ref")),
                    ("ref", option("sha-then-ref")),
                ],
            ),
            (
                "checkout",
                // A fetch that works, then a checkout of an option-like commit.
                vec![
                    ("remote", remote.clone()),
                    ("ref", branch.clone()),
                    ("sha", "--orphan=x".to_string()),
                ],
            ),
            (
                "remote",
                vec![("remote", option("remote")), ("ref", branch.clone())],
            ),
        ];
        for (name, settings) in cases {
            let settings: Vec<(&str, &str)> =
                settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (lines, exit) = run(&f, clone_spec(&settings)).await;
            assert_ne!(exit, exited(0), "{name}: {lines:?}");
            assert!(!marker(name).exists(), "{name}: the option ran: {lines:?}");
        }
        // The same script with ordinary values still clones from the bare repository.
        let s = clone_spec(&[("remote", &remote), ("ref", &branch), ("sha", &first)]);
        let (lines, exit) = run(&f, s).await;
        assert_eq!(exit, exited(0), "{lines:?}");
        let workspace = f.backend.workspace_dir(&f.wf).unwrap();
        assert_eq!(git(&workspace, &["rev-parse", "HEAD"]), first);
    }

    /// Without `--end-of-options` the same value does run: the test above would catch a script
    /// that lost it.
    #[test]
    fn the_hostile_ref_runs_when_git_reads_it_as_an_option() {
        let dir = TempDir::new();
        let (repo, _, _) = test_repo(&dir.0);
        let marker = dir.0.join("ran");
        let out = std::process::Command::new("git")
            .args(["fetch", &repo.display().to_string()])
            .arg(format!("--upload-pack=touch {}", marker.display()))
            .current_dir(&repo)
            .output()
            .expect("git");
        assert!(!out.status.success());
        assert!(marker.exists(), "{out:?}");
    }

    #[test]
    fn credentials_in_clone_urls_are_not_shown() {
        assert_eq!(
            redact_userinfo("https://user:tok@example.com/a/b.git"),
            "https://***@example.com/a/b.git"
        );
        assert_eq!(
            redact_userinfo("https://example.com/a@b.git"),
            "https://example.com/a@b.git"
        );
        assert_eq!(redact_userinfo("/srv/repo"), "/srv/repo");
    }

    /// Starts `run` on a backend in a runtime of its own, reads `lines` lines, and drops the
    /// runtime: the replica is gone (its tasks and its handle on the child with it), the step
    /// goes on. Returns the lines read.
    fn start_in_a_replica_that_dies(
        dir: &Path,
        wf: &WorkflowRun,
        run: &StepRun,
        lines: usize,
    ) -> Vec<OutputLine> {
        let (dir, wf, run) = (dir.to_path_buf(), wf.clone(), run.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let read = rt.block_on(async {
                let backend = LocalBackend::new(dir);
                backend.setup_workflow(&wf).await.expect("setup");
                let mut handle = backend.start_step(&wf, &run).await.expect("start");
                let mut read = Vec::new();
                timeout(LIMIT, async {
                    while read.len() < lines {
                        read.push(handle.output.recv().await.expect("output ended early"));
                    }
                })
                .await
                .expect("lines in time");
                read
            });
            drop(rt);
            read
        })
        .join()
        .expect("the first replica")
    }

    fn numbered(n: usize, pause: &str, code: i32) -> (StepSpec, Vec<String>) {
        let command =
            format!("for i in $(seq 1 {n}); do echo \"line $i\"; sleep {pause}; done; exit {code}");
        let mut expected = vec![format!("+ {command}\n")];
        expected.extend((1..=n).map(|i| format!("line {i}\n")));
        (spec("numbered", &[&command]), expected)
    }

    #[tokio::test]
    async fn a_new_replica_attaches_to_a_running_step_with_every_line_once() {
        let f = fixture().await;
        let (s, expected) = numbered(30, "0.03", 7);
        let run = step_run(s);
        let first = start_in_a_replica_that_dies(&f.dir.0, &f.wf, &run, 5);

        let adopter = LocalBackend::new(f.dir.0.clone());
        assert_eq!(
            adopter.probe_step(&f.wf, run.step_id, 1).await.unwrap(),
            Presence::Present
        );
        assert_eq!(adopter.running_steps(&f.wf).await.unwrap(), [run.step_id]);
        let after = first.last().map(|l| l.at);
        let handle = adopter
            .attach_step(&f.wf, &run, after)
            .await
            .expect("attach");
        let (rest, exit) = collect(handle).await;
        let mut all: Vec<String> = first.into_iter().map(|l| l.text).collect();
        assert!(
            !rest.is_empty() && rest.len() < expected.len(),
            "attached while it ran"
        );
        all.extend(rest);
        assert_eq!(all, expected);
        assert_eq!(exit, exited(7));
        // Attaching again, as a third replica would after the second died, resumes the same way.
        let third = LocalBackend::new(f.dir.0.clone());
        let handle = third.attach_step(&f.wf, &run, after).await.expect("attach");
        let (again, exit) = collect(handle).await;
        assert_eq!(again, expected[5..]);
        assert_eq!(exit, exited(7));
    }

    #[tokio::test]
    async fn a_new_replica_reports_a_step_that_ended_while_nobody_watched() {
        let f = fixture().await;
        let (s, expected) = numbered(20, "0.01", 3);
        let run = step_run(s);
        let first = start_in_a_replica_that_dies(&f.dir.0, &f.wf, &run, 3);
        let files = Files::new(&f.backend.state_dir(f.wf.workflow_id), run.step_id, 1);
        timeout(LIMIT, async {
            while record::read_exit(&files).await.is_none() {
                tokio::time::sleep(POLL).await;
            }
        })
        .await
        .expect("the step ended on its own");

        let adopter = LocalBackend::new(f.dir.0.clone());
        assert_eq!(
            adopter.probe_step(&f.wf, run.step_id, 1).await.unwrap(),
            Presence::Present
        );
        let handle = adopter
            .attach_step(&f.wf, &run, first.last().map(|l| l.at))
            .await
            .expect("attach");
        let (rest, exit) = collect(handle).await;
        let mut all: Vec<String> = first.into_iter().map(|l| l.text).collect();
        all.extend(rest);
        assert_eq!(all, expected);
        assert_eq!(exit, exited(3));

        // Killed by a signal while unwatched: still reads so.
        let run = step_run(spec("killed", &["echo before", "kill -9 $$"]));
        let first = start_in_a_replica_that_dies(&f.dir.0, &f.wf, &run, 2);
        let files = Files::new(&f.backend.state_dir(f.wf.workflow_id), run.step_id, 1);
        timeout(LIMIT, async {
            while record::read_exit(&files).await.is_none() {
                tokio::time::sleep(POLL).await;
            }
        })
        .await
        .expect("the step ended");
        let handle = adopter
            .attach_step(&f.wf, &run, first.last().map(|l| l.at))
            .await
            .expect("attach");
        let (rest, exit) = collect(handle).await;
        assert_eq!(rest, ["+ kill -9 $$\n"]);
        assert_eq!(exit, killed(Signal::KILL.as_raw()));
    }

    #[tokio::test]
    async fn an_attempt_without_record_is_absent_and_one_without_process_or_exit_interrupted() {
        let f = fixture().await;
        let step_id = Uuid::now_v7();
        assert_eq!(
            f.backend.probe_step(&f.wf, step_id, 1).await.unwrap(),
            Presence::Absent
        );
        // A record whose wrapper is gone without an exit file: a dead process's pid.
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        let pid = dead.id() as i32;
        dead.wait().unwrap();
        let files = Files::new(&f.backend.state_dir(f.wf.workflow_id), step_id, 1);
        record::write_record(
            &files,
            &Record {
                step_id,
                attempt: 1,
                pgid: pid,
                proc_start: None,
                started_at: Utc::now(),
                host: None,
            },
        )
        .unwrap();
        assert!(matches!(
            f.backend.probe_step(&f.wf, step_id, 1).await.unwrap(),
            Presence::Interrupted { .. }
        ));
        std::fs::write(files.log(), "some output\n").unwrap();
        let presence = f.backend.probe_step(&f.wf, step_id, 1).await.unwrap();
        assert!(
            matches!(&presence, Presence::Interrupted { reason } if reason.contains("without recording its exit")),
            "{presence:?}"
        );
        let mut run = step_run(spec("lost", &["true"]));
        run.step_id = step_id;
        assert!(matches!(
            f.backend.attach_step(&f.wf, &run, None).await,
            Err(BackendError::Refused(_))
        ));
        assert!(f.backend.running_steps(&f.wf).await.unwrap().is_empty());
        // Another attempt of the same step has nothing yet.
        assert_eq!(
            f.backend.probe_step(&f.wf, step_id, 2).await.unwrap(),
            Presence::Absent
        );
    }

    #[tokio::test]
    async fn a_recorded_attempt_is_never_started_again() {
        let f = fixture().await;
        let runs = f.dir.0.join("runs");
        let mut run = step_run(spec("once", &[&format!("echo ran >> {}", runs.display())]));
        let (_, exit) = collect(f.backend.start_step(&f.wf, &run).await.expect("start")).await;
        assert_eq!(exit, exited(0));
        // A restarted replica asked to start the same attempt refuses: it ran.
        let restarted = LocalBackend::new(f.dir.0.clone());
        assert!(matches!(
            restarted.start_step(&f.wf, &run).await,
            Err(BackendError::Failed(_))
        ));
        assert!(matches!(
            f.backend.start_step(&f.wf, &run).await,
            Err(BackendError::Failed(_))
        ));
        assert_eq!(std::fs::read_to_string(&runs).unwrap(), "ran\n");
        // The next attempt runs.
        run.attempt = 2;
        let (_, exit) = collect(restarted.start_step(&f.wf, &run).await.expect("start")).await;
        assert_eq!(exit, exited(0));
        assert_eq!(std::fs::read_to_string(&runs).unwrap(), "ran\nran\n");
    }

    #[tokio::test]
    async fn the_reaper_stops_a_dead_replicas_processes_and_removes_its_workspace() {
        let f = fixture().await;
        let run = step_run(spec(
            "left-behind",
            &[
                "sleep 1000 & echo \"child $!\"",
                "echo \"leader $$\"",
                "wait",
            ],
        ));
        let first = start_in_a_replica_that_dies(&f.dir.0, &f.wf, &run, 4);
        let pids: Vec<i32> = first
            .iter()
            .filter_map(|l| {
                l.text
                    .split_once(' ')
                    .and_then(|(_, p)| p.trim().parse().ok())
            })
            .collect();
        assert_eq!(pids.len(), 2, "{first:?}");
        let adopter = LocalBackend::new(f.dir.0.clone());
        assert_eq!(
            adopter.managed_workflows().await.unwrap(),
            [f.wf.workflow_id]
        );
        adopter
            .remove_workflow(f.wf.workflow_id)
            .await
            .expect("remove");
        for pid in pids {
            assert!(wait_gone(pid).await, "process {pid} survived the reaper");
        }
        assert!(!f.backend.workflow_root(f.wf.workflow_id).exists());
        assert!(adopter.managed_workflows().await.unwrap().is_empty());
    }

    /// A record outlives its processes: once an attempt's group is gone, its id may be reused
    /// by an unrelated process that leads a group of its own (another step, any shell job).
    /// Stopping the attempt, attaching to it, or removing its workflow must not kill that.
    #[tokio::test]
    async fn a_recorded_group_id_reused_by_another_process_is_never_signalled() {
        use std::os::unix::process::CommandExt as _;
        let f = fixture().await;
        // The unrelated process: leader of its own group, as every step is.
        let mut stranger = std::process::Command::new("sleep")
            .arg("1000")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = stranger.id() as i32;
        let start = process::proc_start(pid).expect("/proc");
        // An attempt that ended long ago while nobody watched, recorded with that id and the
        // start time of its own wrapper (another process, so another start time).
        let run = step_run(spec("ended-long-ago", &["true"]));
        let files = Files::new(&f.backend.state_dir(f.wf.workflow_id), run.step_id, 1);
        record::write_record(
            &files,
            &Record {
                step_id: run.step_id,
                attempt: 1,
                pgid: pid,
                proc_start: Some(start.saturating_sub(1)),
                started_at: Utc::now(),
                host: None,
            },
        )
        .unwrap();
        std::fs::write(files.log(), "done\n").unwrap();
        std::fs::write(files.exit(), "0\n").unwrap();
        let alive = |stranger: &mut std::process::Child| stranger.try_wait().unwrap().is_none();

        let adopter = LocalBackend::new(f.dir.0.clone());
        adopter
            .stop_step(&f.wf, run.step_id, Duration::from_millis(200))
            .await
            .unwrap();
        assert!(
            alive(&mut stranger),
            "stop_step killed an unrelated process"
        );

        let (lines, exit) = collect(
            adopter
                .attach_step(&f.wf, &run, None)
                .await
                .expect("attach"),
        )
        .await;
        assert_eq!((lines, exit), (vec!["done\n".to_string()], exited(0)));
        assert!(
            alive(&mut stranger),
            "the adopted attempt's end killed an unrelated process"
        );

        adopter.remove_workflow(f.wf.workflow_id).await.unwrap();
        assert!(
            alive(&mut stranger),
            "removing the workflow killed an unrelated process"
        );
        assert!(!f.backend.workflow_root(f.wf.workflow_id).exists());
        let _ = stranger.kill();
        let _ = stranger.wait();
    }

    /// A data directory shared with a replica on another host (or in another pid namespace, or
    /// before the host restarted): the pids its records name are not this replica's to see.
    /// A process of ours that happens to have that pid and start time is not the step, and the
    /// step may be running over there: never taken for present, never signalled, never run
    /// again blindly. After a restart of this same host it is gone for sure.
    #[tokio::test]
    async fn a_record_written_on_another_host_is_not_read_as_this_hosts() {
        use std::os::unix::process::CommandExt as _;
        let f = fixture().await;
        let mut stranger = std::process::Command::new("sleep")
            .arg("1000")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = stranger.id() as i32;
        let start = process::proc_start(pid).expect("/proc");
        let here = record::Host::current().expect("this host");
        let state_dir = f.backend.state_dir(f.wf.workflow_id);
        let write = |step_id: Uuid, name: &str, boot_id: &str| {
            let files = Files::new(&state_dir, step_id, 1);
            let json = serde_json::json!({
                "step_id": step_id, "attempt": 1, "pgid": pid, "proc_start": start,
                "started_at": Utc::now(),
                "host": {"name": name, "boot_id": boot_id, "pid_ns": "pid:[1]"},
            });
            std::fs::write(files.record(), json.to_string()).unwrap();
            std::fs::write(files.log(), "running over there\n").unwrap();
        };
        let elsewhere = Uuid::now_v7();
        write(
            elsewhere,
            "another-host",
            "00000000-0000-0000-0000-000000000000",
        );
        let rebooted = Uuid::now_v7();
        write(rebooted, &here.name, "00000000-0000-0000-0000-000000000000");

        let probed = f.backend.probe_step(&f.wf, elsewhere, 1).await;
        assert!(
            matches!(&probed, Err(BackendError::Failed(r)) if r.contains("another-host")),
            "{probed:?}"
        );
        assert_eq!(
            f.backend.probe_step(&f.wf, rebooted, 1).await.unwrap(),
            Presence::Interrupted {
                reason: "attempt 1 was lost when its host restarted".into()
            }
        );
        for step in [elsewhere, rebooted] {
            f.backend
                .stop_step(&f.wf, step, Duration::from_millis(200))
                .await
                .unwrap();
        }
        assert!(f.backend.running_steps(&f.wf).await.unwrap().is_empty());
        f.backend.remove_workflow(f.wf.workflow_id).await.unwrap();
        assert!(
            stranger.try_wait().unwrap().is_none(),
            "a process of this host was signalled for a step of another"
        );
        let _ = stranger.kill();
        let _ = stranger.wait();
    }

    /// A record that cannot be read (a disk error, a hand-edited file) hides whether the
    /// attempt still runs, and where: running it again could run it twice at once.
    #[tokio::test]
    async fn an_unreadable_record_is_not_an_interrupted_attempt() {
        let f = fixture().await;
        let step_id = Uuid::now_v7();
        let files = Files::new(&f.backend.state_dir(f.wf.workflow_id), step_id, 1);
        std::fs::write(files.record(), "{\"step_id\": ").unwrap();
        std::fs::write(files.log(), "still running, maybe\n").unwrap();
        let probed = f.backend.probe_step(&f.wf, step_id, 1).await;
        assert!(
            matches!(&probed, Err(BackendError::Failed(r)) if r.contains("is not a record")),
            "{probed:?}"
        );
    }

    /// Not a test: prints the output figures of the README's Performance section (run with
    /// `cargo test --release --lib backend::local::tests::output_figures -- --ignored --nocapture`).
    /// Throughput: a step printing 1,000,000 short lines, start to last line received.
    /// Latency: a step printing its own clock every 20 ms, each line's arrival minus that clock.
    #[tokio::test]
    #[ignore]
    async fn output_figures() {
        let f = fixture().await;
        let n = 1_000_000;
        let started = std::time::Instant::now();
        let handle = f
            .backend
            .start_step(
                &f.wf,
                &step_run(spec(
                    "seq",
                    &[&format!("seq -f 'log line %.0f of a noisy step' 1 {n}")],
                )),
            )
            .await
            .expect("start");
        let StepHandle { mut output, exit } = handle;
        let mut count = 0usize;
        while output.recv().await.is_some() {
            count += 1;
        }
        let took = started.elapsed();
        assert_eq!(exit.await, exited(0));
        println!(
            "throughput: {} lines in {:.3} s: {:.0} lines/s",
            count,
            took.as_secs_f64(),
            count as f64 / took.as_secs_f64()
        );
        let handle = f
            .backend
            .start_step(
                &f.wf,
                &step_run(spec(
                    "clock",
                    &["for i in $(seq 200); do date +%s%N; sleep 0.02; done"],
                )),
            )
            .await
            .expect("start");
        let StepHandle { mut output, exit } = handle;
        let mut delays = Vec::new();
        while let Some(line) = output.recv().await {
            let now = Utc::now().timestamp_nanos_opt().unwrap_or_default();
            if let Ok(printed) = line.text.trim().parse::<i64>() {
                delays.push((now - printed) as f64 / 1e6);
            }
        }
        assert_eq!(exit.await, exited(0));
        delays.sort_by(f64::total_cmp);
        let p = |q: f64| delays[((delays.len() - 1) as f64 * q) as usize];
        println!(
            "latency over {} lines: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            delays.len(),
            p(0.5),
            p(0.99),
            p(1.0)
        );
    }
}
