//! The simulated scheduler and kubelet of the single node `vm`.
//!
//! Each pod gets one task that moves it through the states the recordings
//! show: scheduled (or Unschedulable), ContainerCreating, then per container
//! ErrImagePull/ImagePullBackOff, InvalidImageName, CreateContainerConfigError
//! or a real local process running the container's `command`/`args` with its
//! `env` (Secrets resolved) in its `workingDir`; output goes to the log buffer
//! with timestamps; the exit code becomes the terminated state, and the phase
//! follows with the kubelet's lag (a container can be terminated while the
//! phase still says Running or Pending). Deletes honour the grace period with
//! PID 1 semantics (SIGTERM reaches the process only if it handles it, as in a
//! container where the shell is PID 1), then SIGKILL; deadlines, evictions and
//! OOM kills end pods as the kubelet does.

use std::collections::HashMap;
use std::io::BufRead;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Shared;
use super::logs::{LogBuffer, LogLine};
use super::objects::{self, POD_STATUS_ORDER, base64_decode, now_rfc3339};
use super::store::{Resource, reorder};

pub const NODE_NAME: &str = "vm";
pub const HOST_IP: &str = "192.0.2.2";

/// How fast the simulated control plane moves. The defaults keep tests quick
/// while keeping every intermediate state observable on a watch.
#[derive(Clone, Debug)]
pub struct KubeletTiming {
    /// Creation to the scheduling decision.
    pub schedule: Duration,
    /// Between two scheduling attempts of an unschedulable pod.
    pub schedule_retry: Duration,
    /// Scheduling to the kubelet's first status (ContainerCreating).
    pub admit: Duration,
    /// How long ContainerCreating lasts (sandbox and image pull).
    pub create: Duration,
    /// How long a started container runs before the kubelet reports Running; a
    /// process that ends sooner is never seen Running (recording 20).
    pub running_report: Duration,
    /// Between ErrImagePull and ImagePullBackOff, and between retries.
    pub pull_backoff: Duration,
    /// Between retries of a container whose config (Secret) is missing.
    pub config_retry: Duration,
    /// Between the status updates at the end of a pod (terminated, phase, podIP).
    pub status_gap: Duration,
    /// Creation of a PVC to its binding.
    pub pvc_bind: Duration,
}

impl Default for KubeletTiming {
    fn default() -> Self {
        KubeletTiming {
            schedule: Duration::from_millis(10),
            schedule_retry: Duration::from_millis(100),
            admit: Duration::from_millis(10),
            create: Duration::from_millis(50),
            running_report: Duration::from_millis(50),
            pull_backoff: Duration::from_millis(150),
            config_retry: Duration::from_millis(150),
            status_gap: Duration::from_millis(10),
            pvc_bind: Duration::from_millis(30),
        }
    }
}

/// What the API side tells a pod's kubelet task.
#[derive(Clone, Debug)]
pub enum Control {
    /// The pod got a deletionTimestamp (grace 0: it is already gone from the store).
    Delete {
        grace: i64,
        requested_at: DateTime<Utc>,
    },
    /// Node-pressure eviction.
    Evict { message: String },
}

/// The kubelet's registry of pod tasks and running process groups.
#[derive(Default)]
pub struct Kubelet {
    pods: Mutex<HashMap<String, mpsc::UnboundedSender<Control>>>,
    groups: Mutex<HashMap<i32, ()>>,
    /// Whether the kubelet process is down (recording 80): containers run on
    /// and their output is still written, but no status is reported and the
    /// API server cannot reach it for logs.
    down: tokio::sync::watch::Sender<bool>,
}

impl Kubelet {
    pub fn is_down(&self) -> bool {
        *self.down.borrow()
    }

    /// Stops (`true`) or starts (`false`) the kubelet process.
    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }

    pub fn subscribe_down(&self) -> tokio::sync::watch::Receiver<bool> {
        self.down.subscribe()
    }

    /// Returns once the kubelet is up.
    pub async fn wait_up(&self) {
        let mut rx = self.down.subscribe();
        let _ = rx.wait_for(|down| !*down).await;
    }

    fn send(&self, uid: &str, c: Control) {
        if let Some(tx) = self.pods.lock().unwrap_or_else(|e| e.into_inner()).get(uid) {
            let _ = tx.send(c);
        }
    }

    /// Kills every process group still running (the cluster is going away).
    pub fn kill_all(&self) {
        for pgid in self.groups.lock().unwrap_or_else(|e| e.into_inner()).keys() {
            kill_group(*pgid);
        }
    }
}

pub(super) fn notify_delete(shared: &Shared, uid: &str, grace: i64, requested_at: DateTime<Utc>) {
    shared.kubelet.send(
        uid,
        Control::Delete {
            grace,
            requested_at,
        },
    );
}

pub(super) fn evict(shared: &Shared, uid: &str, message: &str) {
    shared.kubelet.send(
        uid,
        Control::Evict {
            message: message.to_string(),
        },
    );
}

pub(super) fn start_pod(shared: &Arc<Shared>, pod: &Value) {
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (tx, rx) = mpsc::unbounded_channel();
    shared
        .kubelet
        .pods
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(uid.clone(), tx);
    let task = PodTask::new(shared.clone(), pod, rx);
    let shared = shared.clone();
    tokio::spawn(async move {
        task.run().await;
        shared
            .kubelet
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&uid);
    });
}

// ---------------------------------------------------------------------------
// Images

/// The fully qualified name containerd reports (`docker.io/library/busybox:1.36`).
pub fn normalize_image(image: &str) -> String {
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    let (repo, tag) = match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t)),
        _ => (name, None),
    };
    let first = repo.split('/').next().unwrap_or_default();
    let has_domain =
        repo.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_domain {
        repo.to_string()
    } else if repo.contains('/') {
        format!("docker.io/{repo}")
    } else {
        format!("docker.io/library/{repo}")
    };
    match (digest, tag) {
        (Some(d), _) => format!("{full}@{d}"),
        (None, Some(t)) => format!("{full}:{t}"),
        (None, None) => format!("{full}:latest"),
    }
}

/// The `User` of an image's config, as the kubelet reads it before starting a
/// container: a small table of well-known images, overridable per image with
/// `Faults::set_image_user`. Most CI images (busybox, alpine, golang, the
/// language images, woodpecker's plugins) set no user, which means root.
pub(super) fn image_user(shared: &Shared, image: &str) -> String {
    if let Some(user) = shared.faults.image_user(image) {
        return user;
    }
    let norm = normalize_image(image);
    let (repo, tag) = match norm.split('@').next().unwrap_or_default().rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r.to_string(), t.to_string()),
        _ => (norm.clone(), String::new()),
    };
    if repo.starts_with("gcr.io/distroless/") && tag.contains("nonroot") {
        return "65532".into();
    }
    if repo.starts_with("cgr.dev/chainguard/") {
        return "65532".into();
    }
    if repo == "docker.io/nginxinc/nginx-unprivileged" {
        return "101".into();
    }
    String::new()
}

/// The kubelet's `verifyRunAsNonRoot`: with `runAsNonRoot` in force (the
/// container's security context over the pod's), a container whose user
/// would be root is refused before it is created (recording 81). `user` is the
/// image's `User` (`""`, `"0"`, `"1000"`, `"1000:1000"`, `"nobody"`).
pub fn verify_run_as_non_root(
    pod_sc: &Value,
    container_sc: &Value,
    user: &str,
    pod: &str,
    container: &str,
) -> Result<(), String> {
    let effective = |key: &str| {
        let c = &container_sc[key];
        if c.is_null() {
            pod_sc[key].clone()
        } else {
            c.clone()
        }
    };
    if effective("runAsNonRoot") != Value::Bool(true) {
        return Ok(());
    }
    if let Some(uid) = effective("runAsUser").as_i64() {
        if uid == 0 {
            return Err(format!(
                "container's runAsUser breaks non-root policy (pod: \"{pod}\", container: {container})"
            ));
        }
        return Ok(());
    }
    let name = user.split(':').next().unwrap_or_default();
    match name.parse::<i64>() {
        _ if name.is_empty() => Err(format!(
            "container has runAsNonRoot and image will run as root (pod: \"{pod}\", container: {container})"
        )),
        Ok(0) => Err(format!(
            "container has runAsNonRoot and image will run as root (pod: \"{pod}\", container: {container})"
        )),
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "container has runAsNonRoot and image has non-numeric user ({name}), cannot verify user is non-root (pod: \"{pod}\", container: {container})"
        )),
    }
}

/// Why containerd would refuse the reference, or None when it parses.
fn invalid_image(image: &str) -> Option<String> {
    let name = image.split('@').next().unwrap_or_default();
    let (repo, tag) = match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t)),
        _ => (name, None),
    };
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.as_bytes()[0].is_ascii_alphanumeric()
            && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
    };
    let comps: Vec<&str> = repo.split('/').collect();
    let domain_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b))
    };
    let repo_ok = match comps.as_slice() {
        [one] => component_ok(one),
        [first, rest @ ..] => {
            (domain_ok(first)
                && (first.contains('.') || first.contains(':') || *first == "localhost")
                || component_ok(first))
                && rest.iter().all(|c| component_ok(c))
        }
        [] => false,
    };
    let tag_ok = tag.is_none_or(|t| {
        !t.is_empty()
            && t.len() <= 128
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            && t.as_bytes()[0] != b'.'
            && t.as_bytes()[0] != b'-'
    });
    if repo_ok && tag_ok && !image.trim().is_empty() {
        return None;
    }
    let why = if image.bytes().any(|b| b.is_ascii_uppercase()) {
        "invalid reference format: repository name must be lowercase"
    } else {
        "invalid reference format"
    };
    Some(format!(
        "Failed to apply default image tag \"{image}\": couldn't parse image name \"{image}\": {why}"
    ))
}

/// A stable fake digest for an image (the recorded one for busybox:1.36).
fn image_id(normalized: &str) -> String {
    let repo = normalized.split('@').next().unwrap_or_default();
    let repo = match repo.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => r,
        _ => repo,
    };
    if normalized == "docker.io/library/busybox:1.36" {
        return "docker.io/library/busybox@sha256:de010e897d82b5c524e8a170c5217be010b1fdc7fb5d95acc9ae1ac439feb2e2"
            .into();
    }
    format!("{repo}@sha256:{}", hex64(normalized))
}

fn hex64(seed: &str) -> String {
    // FNV-1a, stretched: only needs to look like a digest and be stable.
    let mut out = String::new();
    let mut h: u64 = 0xcbf29ce484222325;
    for round in 0..4u8 {
        for b in seed.bytes().chain([round]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
        out.push_str(&format!("{h:016x}"));
    }
    out
}

fn random_hex64() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

// ---------------------------------------------------------------------------
// Processes

fn kill_group(pgid: i32) {
    // SAFETY: killpg with a process group id we created; at worst it fails with ESRCH.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
}

/// Sends SIGTERM the way a container's PID 1 receives it: the kernel drops
/// signals a PID 1 has no handler for, so `sh -c "sleep 60"` ignores it
/// (recording 29, killed after the grace period) while a shell that traps TERM
/// runs its trap (29b). The local process is not PID 1, so the fake reads its
/// caught-signal mask and only signals when TERM is caught.
fn term_like_pid1(pid: i32) {
    let caught = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        })
        .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0);
    if caught {
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

/// Expands `$(VAR)` references in command and args, as the kubelet does.
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("$(") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find(')') {
            Some(j) => {
                let var = &after[..j];
                match env.iter().rev().find(|(k, _)| k == var) {
                    Some((_, v)) => out.push_str(v),
                    None => out.push_str(&rest[i..i + 3 + j]),
                }
                rest = &after[j + 1..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

struct Started {
    pid: i32,
}

/// Starts a container's process with stdout and stderr on one pipe (the log
/// merges them in order), in its own process group so the whole "container"
/// can be killed. A thread reads the output; another waits for the exit,
/// kills what is left of the group, waits for the reader, then reports.
fn spawn_process(
    shared: &Arc<Shared>,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    workdir: Option<PathBuf>,
    buffer: Arc<LogBuffer>,
    idx: usize,
    exits: mpsc::UnboundedSender<(usize, i32)>,
) -> Result<Started, String> {
    let (reader, writer) = std::io::pipe().map_err(|e| e.to_string())?;
    let writer2 = writer.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2))
        .process_group(0);
    if let Some(dir) = workdir {
        let _ = std::fs::create_dir_all(&dir);
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    // The Command holds the pipe's write ends; dropping it lets the reader see
    // EOF once the processes are gone.
    drop(cmd);
    let pid = child.id() as i32;
    shared
        .kubelet
        .groups
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(pid, ());
    let reader_thread = std::thread::spawn(move || {
        let mut r = std::io::BufReader::with_capacity(64 * 1024, reader);
        loop {
            let mut line = Vec::new();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let newline = line.last() == Some(&b'\n');
                    if newline {
                        line.pop();
                    }
                    buffer.push(LogLine {
                        time: Utc::now(),
                        text: line,
                        newline,
                    });
                }
            }
        }
        buffer
    });
    let shared = shared.clone();
    std::thread::spawn(move || {
        let code = match child.wait() {
            Ok(status) => status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(9)),
            Err(_) => 128 + 9,
        };
        // The container is gone: so is everything it started.
        kill_group(pid);
        shared
            .kubelet
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid);
        if let Ok(buffer) = reader_thread.join() {
            buffer.finish();
        }
        let _ = exits.send((idx, code));
    });
    Ok(Started { pid })
}

// ---------------------------------------------------------------------------
// The pod task

#[derive(Clone, Debug, PartialEq)]
enum CState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: String,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        started_at: String,
        finished_at: String,
    },
}

struct Ctr {
    name: String,
    spec: Value,
    state: CState,
    pulled: bool,
    container_id: Option<String>,
    pid: Option<i32>,
    oom: Arc<AtomicBool>,
    next_try: Option<Instant>,
    pull_failures: u32,
}

#[derive(Clone, Debug, PartialEq)]
enum Stop {
    Deleted,
    Deadline,
    Evicted(String),
}

struct Cond {
    status: &'static str,
    reason: Option<String>,
    message: Option<String>,
    since: String,
}

struct PodTask {
    shared: Arc<Shared>,
    ns: String,
    name: String,
    uid: String,
    spec: Value,
    ctl: mpsc::UnboundedReceiver<Control>,
    exit_tx: mpsc::UnboundedSender<(usize, i32)>,
    exit_rx: mpsc::UnboundedReceiver<(usize, i32)>,
    ctrs: Vec<Ctr>,
    conds: Vec<(&'static str, Cond)>,
    phase: &'static str,
    pod_reason: Option<(String, String)>,
    host: bool,
    start_time: Option<String>,
    pod_ip: String,
    show_ip: bool,
    /// When the kubelet reports Running (None: already reported or not started).
    report_at: Option<Instant>,
    deadline: Option<Instant>,
    deletion: Option<DateTime<Utc>>,
    stop: Option<Stop>,
    kill_at: Option<Instant>,
    gone: bool,
}

impl PodTask {
    fn new(shared: Arc<Shared>, pod: &Value, ctl: mpsc::UnboundedReceiver<Control>) -> PodTask {
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        let ctrs = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| Ctr {
                name: c["name"].as_str().unwrap_or_default().to_string(),
                spec: c.clone(),
                state: CState::Waiting {
                    reason: "ContainerCreating".into(),
                    message: None,
                },
                pulled: false,
                container_id: None,
                pid: None,
                oom: Arc::new(AtomicBool::new(false)),
                next_try: None,
                pull_failures: 0,
            })
            .collect();
        let n = shared.next_counter();
        PodTask {
            ns: pod["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            name: pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            uid: pod["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            spec: pod["spec"].clone(),
            shared,
            ctl,
            exit_tx,
            exit_rx,
            ctrs,
            conds: Vec::new(),
            phase: "Pending",
            pod_reason: None,
            host: false,
            start_time: None,
            pod_ip: format!("10.244.{}.{}", (n / 250) % 250, n % 250 + 2),
            show_ip: false,
            report_at: None,
            deadline: None,
            deletion: None,
            stop: None,
            kill_at: None,
            gone: false,
        }
    }

    fn timing(&self) -> &KubeletTiming {
        &self.shared.config.timing
    }

    fn set_cond(
        &mut self,
        ty: &'static str,
        status: &'static str,
        reason: Option<&str>,
        message: Option<String>,
    ) {
        let now = now_rfc3339();
        let reason = reason.map(str::to_string);
        match self.conds.iter_mut().find(|(t, _)| *t == ty) {
            Some((_, c)) => {
                if c.status != status {
                    c.since = now;
                }
                c.status = status;
                c.reason = reason;
                c.message = message;
            }
            None => self.conds.push((
                ty,
                Cond {
                    status,
                    reason,
                    message,
                    since: now,
                },
            )),
        }
        // Go order of the kubelet's conditions.
        let rank = |t: &str| {
            [
                "Initialized",
                "Ready",
                "ContainersReady",
                "PodScheduled",
                "DisruptionTarget",
            ]
            .iter()
            .position(|x| *x == t)
        };
        self.conds.sort_by_key(|(t, _)| rank(t));
    }

    fn container_status(&self, c: &Ctr) -> Value {
        let mut state = Map::new();
        match &c.state {
            CState::Waiting { reason, message } => {
                let mut w = Map::new();
                w.insert("reason".into(), json!(reason));
                if let Some(m) = message {
                    w.insert("message".into(), json!(m));
                }
                state.insert("waiting".into(), Value::Object(w));
            }
            CState::Running { started_at } => {
                state.insert("running".into(), json!({"startedAt": started_at}));
            }
            CState::Terminated {
                exit_code,
                reason,
                started_at,
                finished_at,
            } => {
                state.insert(
                    "terminated".into(),
                    json!({"exitCode": exit_code, "reason": reason, "startedAt": started_at, "finishedAt": finished_at, "containerID": c.container_id}),
                );
            }
        }
        let image = c.spec["image"].as_str().unwrap_or_default();
        let running = matches!(c.state, CState::Running { .. });
        // A container stays ready while the pod is being stopped (recording 28).
        let ready = running && self.report_at.is_none();
        let mut s = Map::new();
        s.insert("name".into(), json!(c.name));
        s.insert("state".into(), Value::Object(state));
        s.insert("lastState".into(), json!({}));
        s.insert("ready".into(), json!(ready));
        s.insert("restartCount".into(), json!(0));
        // The image is reported resolved only once a container was created
        // from it (recording 24 shows the spec's name for a config error).
        if c.container_id.is_some() {
            let norm = normalize_image(image);
            s.insert("imageID".into(), json!(image_id(&norm)));
            s.insert("image".into(), json!(norm));
        } else {
            s.insert("image".into(), json!(image));
            s.insert("imageID".into(), json!(""));
        }
        reorder(
            &mut s,
            &[
                "name",
                "state",
                "lastState",
                "ready",
                "restartCount",
                "image",
                "imageID",
            ],
        );
        if let Some(id) = &c.container_id {
            s.insert("containerID".into(), json!(id));
        }
        s.insert("started".into(), json!(running && self.report_at.is_none()));
        Value::Object(s)
    }

    fn status(&self) -> Value {
        let mut s = Map::new();
        s.insert("phase".into(), json!(self.phase));
        if !self.conds.is_empty() {
            let conds: Vec<Value> = self
                .conds
                .iter()
                .map(|(ty, c)| {
                    let mut m = Map::new();
                    m.insert("type".into(), json!(ty));
                    m.insert("status".into(), json!(c.status));
                    m.insert("lastProbeTime".into(), Value::Null);
                    m.insert("lastTransitionTime".into(), json!(c.since));
                    if let Some(r) = &c.reason {
                        m.insert("reason".into(), json!(r));
                    }
                    if let Some(msg) = &c.message {
                        m.insert("message".into(), json!(msg));
                    }
                    Value::Object(m)
                })
                .collect();
            s.insert("conditions".into(), json!(conds));
        }
        if let Some((reason, message)) = &self.pod_reason {
            s.insert("message".into(), json!(message));
            s.insert("reason".into(), json!(reason));
        }
        if self.host {
            s.insert("hostIP".into(), json!(HOST_IP));
        }
        if self.show_ip {
            s.insert("podIP".into(), json!(self.pod_ip));
            s.insert("podIPs".into(), json!([{"ip": self.pod_ip}]));
        }
        if let Some(t) = &self.start_time {
            s.insert("startTime".into(), json!(t));
        }
        if self.host {
            let cs: Vec<Value> = self.ctrs.iter().map(|c| self.container_status(c)).collect();
            s.insert("containerStatuses".into(), json!(cs));
        }
        Value::Object(s)
    }

    /// Writes the status (and `nodeName` once scheduled). False when the pod is
    /// gone or replaced by another with the same name.
    fn publish(&mut self) -> bool {
        if self.gone {
            return false;
        }
        let status = self.status();
        let scheduled = self
            .conds
            .iter()
            .any(|(t, c)| *t == "PodScheduled" && c.status == "True");
        let uid = self.uid.clone();
        let kubelet_owned = self.host;
        let result = self
            .shared
            .store()
            .update(Resource::Pods, &self.ns, &self.name, |o| {
                if o["metadata"]["uid"] != uid.as_str() {
                    return Err(super::api::ApiError::not_found(Resource::Pods, ""));
                }
                let qos = o["status"]["qosClass"].clone();
                let mut st = status;
                st["qosClass"] = qos;
                reorder(st.as_object_mut().expect("object"), POD_STATUS_ORDER);
                o["status"] = st;
                if scheduled && !o["spec"]["nodeName"].is_string() {
                    o["spec"]["nodeName"] = json!(NODE_NAME);
                    reorder(
                        o["spec"].as_object_mut().expect("object"),
                        &objects_spec_order(),
                    );
                }
                // The scheduler's binding leaves no managedFields entry; the
                // kubelet's first status write adds one (recording 11).
                if kubelet_owned {
                    add_kubelet_managed_fields(o);
                } else if !scheduled {
                    add_scheduler_managed_fields(o);
                }
                Ok(())
            });
        if result.is_err() {
            self.gone = true;
        }
        !self.gone
    }

    async fn pause(&mut self, d: Duration) -> bool {
        let until = Instant::now() + d;
        loop {
            tokio::select! {
                c = self.ctl.recv() => match c {
                    Some(c) => self.on_control(c),
                    None => return false,
                },
                _ = tokio::time::sleep_until(until) => return !self.gone,
            }
            if self.gone || self.stop.is_some() {
                return false;
            }
        }
    }

    fn on_control(&mut self, c: Control) {
        match c {
            Control::Delete {
                grace,
                requested_at,
            } => {
                self.deletion = Some(requested_at);
                if grace == 0 {
                    // The object is already gone; just stop everything.
                    self.gone = true;
                    self.kill_all();
                    return;
                }
                if self.stop.is_none() {
                    self.stop = Some(Stop::Deleted);
                    self.begin_kill(Duration::from_secs(grace as u64));
                }
            }
            Control::Evict { message } => {
                if self.stop.is_none() {
                    self.stop = Some(Stop::Evicted(message));
                    self.begin_kill(Duration::ZERO);
                }
            }
        }
    }

    fn begin_kill(&mut self, grace: Duration) {
        for c in &self.ctrs {
            if let Some(pid) = c.pid
                && matches!(c.state, CState::Running { .. })
            {
                term_like_pid1(pid);
            }
        }
        self.kill_at = Some(Instant::now() + self.shared.faults.grace(grace));
    }

    fn kill_all(&self) {
        for c in &self.ctrs {
            if let Some(pid) = c.pid
                && matches!(c.state, CState::Running { .. })
            {
                kill_group(pid);
            }
        }
    }

    /// The final delete the kubelet sends after the containers stopped: grace 0
    /// and deletionTimestamp moved back to the request time (recording 29).
    fn final_delete(&mut self) {
        if self.gone {
            return;
        }
        let Some(requested_at) = self.deletion else {
            return;
        };
        let uid = self.uid.clone();
        let mut store = self.shared.store();
        let ok = store
            .update(Resource::Pods, &self.ns, &self.name, |o| {
                if o["metadata"]["uid"] != uid.as_str() {
                    return Err(super::api::ApiError::not_found(Resource::Pods, ""));
                }
                o["metadata"]["deletionTimestamp"] = json!(objects::rfc3339(requested_at));
                o["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                Ok(())
            })
            .is_ok();
        if ok {
            let _ = store.remove(Resource::Pods, &self.ns, &self.name);
        }
        self.gone = true;
    }

    async fn run(mut self) {
        let timing = self.timing().clone();
        if !self.pause(timing.schedule).await {
            return;
        }
        // --- scheduling
        let mut last_msg = None;
        loop {
            match self.unschedulable_reason() {
                None => break,
                Some(msg) => {
                    if last_msg.as_ref() != Some(&msg) {
                        self.set_cond(
                            "PodScheduled",
                            "False",
                            Some("Unschedulable"),
                            Some(msg.clone()),
                        );
                        if !self.publish() {
                            return;
                        }
                        last_msg = Some(msg);
                    }
                    if !self.pause(timing.schedule_retry).await {
                        // An unscheduled pod is deleted at once by the API server.
                        return;
                    }
                }
            }
        }
        self.set_cond("PodScheduled", "True", None, None);
        if !self.publish() {
            return;
        }
        // The scheduler binds the pod; only a running kubelet admits it.
        self.shared.kubelet.wait_up().await;
        if !self.pause(timing.admit).await {
            self.finish_stopped().await;
            return;
        }
        // --- admitted: ContainerCreating
        self.host = true;
        self.start_time = Some(now_rfc3339());
        if let Some(ads) = self.spec["activeDeadlineSeconds"].as_u64() {
            self.deadline = Some(Instant::now() + Duration::from_secs(ads));
        }
        self.set_cond("Initialized", "True", None, None);
        self.set_ready_conditions();
        if !self.publish() {
            return;
        }
        let create = timing.create;
        for c in &mut self.ctrs {
            c.next_try = Some(Instant::now() + create);
        }
        self.main_loop().await;
    }

    fn unschedulable_reason(&self) -> Option<String> {
        const TAIL: &str =
            "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling..";
        if self.shared.faults.is_unschedulable(&self.name) {
            return Some(format!(
                "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. {TAIL}"
            ));
        }
        let labels = self.shared.faults.node_labels();
        if let Some(sel) = self.spec["nodeSelector"].as_object()
            && sel
                .iter()
                .any(|(k, v)| labels.get(k).map(String::as_str) != v.as_str())
        {
            return Some(format!(
                "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. {TAIL}"
            ));
        }
        let store = self.shared.store();
        for v in self.spec["volumes"].as_array().into_iter().flatten() {
            if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                match store.get(Resource::PersistentVolumeClaims, &self.ns, claim) {
                    None => {
                        return Some(format!(
                            "0/1 nodes are available: persistentvolumeclaim \"{claim}\" not found. {TAIL}"
                        ));
                    }
                    Some(pvc) if pvc["status"]["phase"] != "Bound" => {
                        return Some(format!(
                            "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims. {TAIL}"
                        ));
                    }
                    _ => {}
                }
            }
        }
        None
    }

    /// Ready and ContainersReady from the containers' states.
    fn set_ready_conditions(&mut self) {
        let all_terminated = self
            .ctrs
            .iter()
            .all(|c| matches!(c.state, CState::Terminated { .. }));
        let all_ok = self
            .ctrs
            .iter()
            .all(|c| matches!(c.state, CState::Terminated { exit_code: 0, .. }));
        if all_terminated || self.stop.is_some() {
            let succeeded = all_terminated && all_ok && self.stop.is_none();
            let reason = if succeeded {
                "PodCompleted"
            } else {
                "PodFailed"
            };
            self.set_cond(
                "Initialized",
                "True",
                if succeeded {
                    Some("PodCompleted")
                } else {
                    None
                },
                None,
            );
            self.set_cond("Ready", "False", Some(reason), None);
            self.set_cond("ContainersReady", "False", Some(reason), None);
            return;
        }
        let unready: Vec<String> = self
            .ctrs
            .iter()
            .filter(|c| !matches!(c.state, CState::Running { .. }) || self.report_at.is_some())
            .map(|c| c.name.clone())
            .collect();
        if unready.is_empty() {
            self.set_cond("Ready", "True", None, None);
            self.set_cond("ContainersReady", "True", None, None);
        } else {
            let msg = format!("containers with unready status: [{}]", unready.join(" "));
            self.set_cond(
                "Ready",
                "False",
                Some("ContainersNotReady"),
                Some(msg.clone()),
            );
            self.set_cond(
                "ContainersReady",
                "False",
                Some("ContainersNotReady"),
                Some(msg),
            );
        }
    }

    /// Tries to start container `i`: image, config, process. Returns whether
    /// its state changed.
    fn try_start(&mut self, i: usize) -> bool {
        let timing = self.timing().clone();
        // The sandbox exists from the first attempt on: the pod has its IP
        // even if no container ever starts (recordings 22–25).
        self.show_ip = true;
        let image = self.ctrs[i].spec["image"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let before = self.ctrs[i].state.clone();
        if let Some(msg) = invalid_image(&image) {
            // Waiting cannot help; the kubelet never retries it.
            self.ctrs[i].state = CState::Waiting {
                reason: "InvalidImageName".into(),
                message: Some(msg),
            };
            self.ctrs[i].next_try = None;
            return self.ctrs[i].state != before;
        }
        if !self.ctrs[i].pulled {
            if self.shared.faults.image_pull_fails(&image) {
                let norm = normalize_image(&image);
                let c = &mut self.ctrs[i];
                c.pull_failures += 1;
                // ErrImagePull on each real attempt, ImagePullBackOff between them.
                c.state = if c.pull_failures % 2 == 1 {
                    CState::Waiting {
                        reason: "ErrImagePull".into(),
                        message: Some(format!(
                            "failed to pull and unpack image \"{norm}\": failed to resolve reference \"{norm}\": {norm}: not found"
                        )),
                    }
                } else {
                    CState::Waiting {
                        reason: "ImagePullBackOff".into(),
                        message: Some(format!("Back-off pulling image \"{image}\"")),
                    }
                };
                c.next_try = Some(Instant::now() + timing.pull_backoff);
                return c.state != before;
            }
            self.ctrs[i].pulled = true;
        }
        let env = match self.resolve_env(i) {
            Ok(env) => env,
            Err(msg) => {
                let c = &mut self.ctrs[i];
                c.state = CState::Waiting {
                    reason: "CreateContainerConfigError".into(),
                    message: Some(msg),
                };
                c.next_try = Some(Instant::now() + timing.config_retry);
                return true;
            }
        };
        // After the environment, as the kubelet's generateContainerConfig
        // does: a missing Secret is reported before a root image.
        let user = image_user(&self.shared, &image);
        let pod_ref = format!("{}_{}({})", self.name, self.ns, self.uid);
        if let Err(msg) = verify_run_as_non_root(
            &self.spec["securityContext"],
            &self.ctrs[i].spec["securityContext"],
            &user,
            &pod_ref,
            &self.ctrs[i].name,
        ) {
            // The real kubelet retries it for good; the pod stays Pending.
            let c = &mut self.ctrs[i];
            let state = CState::Waiting {
                reason: "CreateContainerConfigError".into(),
                message: Some(msg),
            };
            let changed = c.state != state;
            c.state = state;
            c.next_try = Some(Instant::now() + timing.config_retry);
            return changed;
        }
        let spec = self.ctrs[i].spec.clone();
        let mut argv: Vec<String> = Vec::new();
        for key in ["command", "args"] {
            for a in spec[key].as_array().into_iter().flatten() {
                argv.push(expand(a.as_str().unwrap_or_default(), &env));
            }
        }
        if argv.is_empty() {
            // Images carry their own entrypoint; busybox's is `sh`.
            argv.push("sh".into());
        }
        let workdir = spec["workingDir"]
            .as_str()
            .map(|d| match &self.shared.config.fs_root {
                Some(root) => root.join(d.trim_start_matches('/')),
                None => PathBuf::from(d),
            });
        let buffer = self.shared.logs.buffer(&self.uid, &self.ctrs[i].name);
        let now = now_rfc3339();
        self.ctrs[i].container_id = Some(format!("containerd://{}", random_hex64()));
        self.ctrs[i].next_try = None;
        self.show_ip = true;
        match spawn_process(
            &self.shared,
            argv,
            env,
            workdir,
            buffer.clone(),
            i,
            self.exit_tx.clone(),
        ) {
            Ok(started) => {
                let c = &mut self.ctrs[i];
                c.pid = Some(started.pid);
                c.state = CState::Running { started_at: now };
                if let Some(after) = self.shared.faults.oom_kill_after(&self.name) {
                    let oom = c.oom.clone();
                    let pid = started.pid;
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        oom.store(true, Ordering::SeqCst);
                        kill_group(pid);
                    });
                }
                if self.phase == "Pending" {
                    if self.report_at.is_none() {
                        self.report_at = Some(Instant::now() + timing.running_report);
                    }
                    // Nothing to publish yet: the kubelet reports Running later.
                    return false;
                }
            }
            Err(e) => {
                // What runc reports when the executable cannot be started.
                buffer.finish();
                let c = &mut self.ctrs[i];
                c.state = CState::Terminated {
                    exit_code: 128,
                    reason: "StartError".into(),
                    started_at: now.clone(),
                    finished_at: now,
                };
                let _ = e;
            }
        }
        true
    }

    /// Cluster DNS, as far as this machine can have it: the fake runs no DNS
    /// server, so the kubelet writes what cluster DNS would answer this pod
    /// into a hosts file named by `FAKE_CLUSTER_HOSTS`, and a script resolves
    /// through it. The rules are the real ones: a pod with `hostname` and
    /// `subdomain` has the name `<hostname>.<subdomain>.<ns>.svc.<domain>`
    /// when a headless Service named like the subdomain selects it; short
    /// names resolve through the pod's search list (the ClusterFirst
    /// defaults, then `dnsConfig.searches`). Every pod's processes run on this
    /// machine, so each name resolves to 127.0.0.1.
    fn cluster_hosts(&self) -> String {
        let store = self.shared.store();
        let ns = &self.ns;
        let domain = "cluster.local";
        let mut searches = vec![
            format!("{ns}.svc.{domain}"),
            format!("svc.{domain}"),
            domain.to_string(),
        ];
        for d in self.spec["dnsConfig"]["searches"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(d) = d.as_str() {
                searches.push(d.to_string());
            }
        }
        let mut lines = String::new();
        for pod in store.iter(Resource::Pods, Some(ns)) {
            let (Some(host), Some(sub)) = (
                pod["spec"]["hostname"].as_str(),
                pod["spec"]["subdomain"].as_str(),
            ) else {
                continue;
            };
            let Some(svc) = store.get(Resource::Services, ns, sub) else {
                continue;
            };
            let headless = svc["spec"]["clusterIP"].as_str() == Some("None");
            let selects = svc["spec"]["selector"].as_object().is_some_and(|sel| {
                !sel.is_empty()
                    && sel
                        .iter()
                        .all(|(k, v)| pod["metadata"]["labels"][k.as_str()] == *v)
            });
            if !headless || !selects {
                continue;
            }
            let fqdn = format!("{host}.{sub}.{ns}.svc.{domain}");
            let mut names = vec![fqdn.clone()];
            for d in &searches {
                if let Some(short) = fqdn.strip_suffix(&format!(".{d}")) {
                    names.push(short.to_string());
                }
            }
            lines.push_str(&format!("127.0.0.1 {}\n", names.join(" ")));
        }
        // The file is written without holding the store: API requests do not wait on disk.
        drop(store);
        let dir = self
            .shared
            .config
            .fs_root
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("fake-k8s-hosts-{}", self.uid));
        let _ = std::fs::write(&path, lines);
        path.display().to_string()
    }

    /// The container's environment: the kubelet's service variables, then
    /// `envFrom`, then `env` (later wins), Secrets read from the store.
    fn resolve_env(&self, i: usize) -> Result<Vec<(String, String)>, String> {
        let spec = &self.ctrs[i].spec;
        let mut env: Vec<(String, String)> = vec![
            (
                "PATH".into(),
                std::env::var("PATH").unwrap_or_else(|_| {
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
                }),
            ),
            (
                "HOSTNAME".into(),
                self.spec["hostname"]
                    .as_str()
                    .unwrap_or(&self.name)
                    .to_string(),
            ),
            (
                "HOME".into(),
                std::env::var("HOME").unwrap_or_else(|_| "/root".into()),
            ),
            ("FAKE_CLUSTER_HOSTS".into(), self.cluster_hosts()),
            ("KUBERNETES_SERVICE_HOST".into(), "10.96.0.1".into()),
            ("KUBERNETES_SERVICE_PORT".into(), "443".into()),
            ("KUBERNETES_PORT".into(), "tcp://10.96.0.1:443".into()),
        ];
        let store = self.shared.store();
        let secret = |name: &str| store.get(Resource::Secrets, &self.ns, name).cloned();
        for from in spec["envFrom"].as_array().into_iter().flatten() {
            let prefix = from["prefix"].as_str().unwrap_or_default();
            if let Some(name) = from["secretRef"]["name"].as_str() {
                match secret(name) {
                    Some(s) => {
                        for (k, v) in s["data"].as_object().into_iter().flatten() {
                            let val =
                                base64_decode(v.as_str().unwrap_or_default()).unwrap_or_default();
                            env.push((
                                format!("{prefix}{k}"),
                                String::from_utf8_lossy(&val).into_owned(),
                            ));
                        }
                    }
                    None if from["secretRef"]["optional"].as_bool() == Some(true) => {}
                    None => return Err(format!("secret \"{name}\" not found")),
                }
            }
            if let Some(name) = from["configMapRef"]["name"].as_str()
                && from["configMapRef"]["optional"].as_bool() != Some(true)
            {
                return Err(format!("configmap \"{name}\" not found"));
            }
        }
        for e in spec["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap_or_default().to_string();
            if let Some(v) = e.get("value").and_then(Value::as_str) {
                let v = expand(v, &env);
                env.push((name, v));
                continue;
            }
            let from = &e["valueFrom"];
            if let Some(r) = from.get("secretKeyRef") {
                let sname = r["name"].as_str().unwrap_or_default();
                let key = r["key"].as_str().unwrap_or_default();
                let optional = r["optional"].as_bool() == Some(true);
                match secret(sname) {
                    None if optional => {}
                    None => return Err(format!("secret \"{sname}\" not found")),
                    Some(s) => match s["data"][key].as_str() {
                        Some(v) => {
                            let val = base64_decode(v).unwrap_or_default();
                            env.push((name, String::from_utf8_lossy(&val).into_owned()));
                        }
                        None if optional => {}
                        None => {
                            return Err(format!(
                                "couldn't find key {key} in Secret {}/{sname}",
                                self.ns
                            ));
                        }
                    },
                }
            } else if let Some(r) = from.get("configMapKeyRef") {
                if r["optional"].as_bool() != Some(true) {
                    return Err(format!(
                        "configmap \"{}\" not found",
                        r["name"].as_str().unwrap_or_default()
                    ));
                }
            } else if let Some(path) = from["fieldRef"]["fieldPath"].as_str() {
                let v = match path {
                    "metadata.name" => self.name.clone(),
                    "metadata.namespace" => self.ns.clone(),
                    "metadata.uid" => self.uid.clone(),
                    "spec.nodeName" => NODE_NAME.into(),
                    "spec.serviceAccountName" => self.spec["serviceAccountName"]
                        .as_str()
                        .unwrap_or("default")
                        .into(),
                    "status.podIP" => self.pod_ip.clone(),
                    "status.hostIP" => HOST_IP.into(),
                    _ => String::new(),
                };
                env.push((name, v));
            }
        }
        Ok(env)
    }

    async fn main_loop(&mut self) {
        loop {
            if self.gone {
                return;
            }
            if self.shared.kubelet.is_down() {
                // While the kubelet is down nothing is reported: a container
                // that ends meanwhile is seen to have ended once it is back.
                self.shared.kubelet.wait_up().await;
                continue;
            }
            // Start what is due.
            let now = Instant::now();
            let mut changed = false;
            if self.stop.is_none() {
                for i in 0..self.ctrs.len() {
                    if self.ctrs[i].next_try.is_some_and(|t| t <= now)
                        && matches!(self.ctrs[i].state, CState::Waiting { .. })
                    {
                        changed |= self.try_start(i);
                    }
                }
            }
            if self.report_at.is_some_and(|t| t <= now) {
                self.report_at = None;
                if self
                    .ctrs
                    .iter()
                    .any(|c| matches!(c.state, CState::Running { .. }))
                {
                    self.phase = "Running";
                }
                changed = true;
            }
            if self.deadline.is_some_and(|t| t <= now) && self.stop.is_none() {
                self.deadline = None;
                self.stop = Some(Stop::Deadline);
                let grace = self.spec["terminationGracePeriodSeconds"]
                    .as_u64()
                    .unwrap_or(30);
                self.begin_kill(Duration::from_secs(grace));
                changed = true;
            }
            if self.kill_at.is_some_and(|t| t <= now) {
                self.kill_at = None;
                self.kill_all();
            }
            let running = self
                .ctrs
                .iter()
                .any(|c| matches!(c.state, CState::Running { .. }));
            let all_terminated = self
                .ctrs
                .iter()
                .all(|c| matches!(c.state, CState::Terminated { .. }));
            if all_terminated || (self.stop.is_some() && !running) {
                self.terminate().await;
                return;
            }
            if changed {
                // A stop (delete, deadline) ends readiness before the containers end.
                if self.stop != Some(Stop::Deleted) {
                    self.set_ready_conditions();
                    if !self.publish() {
                        self.kill_all();
                        return;
                    }
                }
            }
            // Sleep until the next thing due.
            let next = self
                .ctrs
                .iter()
                .filter_map(|c| c.next_try)
                .chain(self.report_at)
                .chain(self.deadline)
                .chain(self.kill_at)
                .min();
            let sleep = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => futures::future::pending::<()>().await,
                }
            };
            tokio::select! {
                Some((i, code)) = self.exit_rx.recv() => self.on_exit(i, code).await,
                c = self.ctl.recv() => match c {
                    Some(c) => self.on_control(c),
                    None => { self.kill_all(); return; }
                },
                _ = sleep => {}
            }
        }
    }

    async fn on_exit(&mut self, i: usize, code: i32) {
        let finished_at = now_rfc3339();
        let oom = self.ctrs[i].oom.load(Ordering::SeqCst);
        let c = &mut self.ctrs[i];
        let started_at = match &c.state {
            CState::Running { started_at } => started_at.clone(),
            _ => finished_at.clone(),
        };
        let reason = match code {
            0 => "Completed",
            137 if oom => "OOMKilled",
            _ => "Error",
        };
        c.state = CState::Terminated {
            exit_code: code,
            reason: reason.into(),
            started_at,
            finished_at,
        };
        c.pid = None;
        let all_done = self
            .ctrs
            .iter()
            .all(|c| matches!(c.state, CState::Terminated { .. }));
        if self.stop.is_some() {
            // Stopping: the terminated state arrives together with the phase.
            return;
        }
        // Terminated before the kubelet ever reported Running: it never will.
        if all_done {
            self.report_at = None;
        }
        self.set_ready_conditions();
        self.publish();
    }

    /// The end of a pod: phase, then podIP again, then (if deleted) the final delete.
    async fn terminate(&mut self) {
        let gap = self.timing().status_gap;
        let all_ok = self
            .ctrs
            .iter()
            .all(|c| matches!(c.state, CState::Terminated { exit_code: 0, .. }));
        self.report_at = None;
        self.set_ready_conditions();
        if self.stop.is_none() {
            // Natural end: the containers' terminated states were published on exit.
            tokio::time::sleep(gap).await;
        }
        match &self.stop {
            Some(Stop::Deadline) => {
                self.pod_reason = Some((
                    "DeadlineExceeded".into(),
                    "Pod was active on the node longer than the specified deadline".into(),
                ));
            }
            Some(Stop::Evicted(msg)) => {
                let msg = msg.clone();
                self.set_cond(
                    "DisruptionTarget",
                    "True",
                    Some("TerminationByKubelet"),
                    Some(msg.clone()),
                );
                self.pod_reason = Some(("Evicted".into(), msg));
            }
            _ => {}
        }
        self.phase = if all_ok && self.stop.is_none() {
            "Succeeded"
        } else {
            "Failed"
        };
        // The first terminal status leaves out the pod IP; the next has it again.
        self.show_ip = false;
        if !self.publish() {
            return;
        }
        tokio::time::sleep(gap).await;
        self.show_ip = true;
        if !self.publish() {
            return;
        }
        if self.deletion.is_some() {
            self.final_delete();
            return;
        }
        // Wait for a delete (terminal pods are removed at once by the API).
        while let Some(c) = self.ctl.recv().await {
            if let Control::Delete { .. } = c {
                return;
            }
        }
    }

    /// A pod stopped before its containers were created.
    async fn finish_stopped(&mut self) {
        if self.gone {
            return;
        }
        match self.stop.clone() {
            Some(Stop::Deleted) => self.final_delete(),
            Some(_) => self.terminate().await,
            None => {}
        }
    }
}

fn objects_spec_order() -> Vec<&'static str> {
    vec![
        "volumes",
        "initContainers",
        "containers",
        "ephemeralContainers",
        "restartPolicy",
        "terminationGracePeriodSeconds",
        "activeDeadlineSeconds",
        "dnsPolicy",
        "nodeSelector",
        "serviceAccountName",
        "serviceAccount",
        "automountServiceAccountToken",
        "nodeName",
    ]
}

/// The kubelet's managedFields entry for `status` (added at its first update).
fn add_kubelet_managed_fields(o: &mut Value) {
    let Some(mf) = o["metadata"]["managedFields"].as_array_mut() else {
        return;
    };
    if mf.iter().any(|e| e["manager"] == "kubelet") {
        return;
    }
    mf.push(json!({
        "manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": now_rfc3339(),
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:status": {"f:conditions": {}, "f:containerStatuses": {}, "f:hostIP": {}, "f:phase": {}, "f:startTime": {}}},
        "subresource": "status",
    }));
}

/// The scheduler's entry when it writes an Unschedulable condition (recording
/// 26 lists it before the creator's).
fn add_scheduler_managed_fields(o: &mut Value) {
    let Some(mf) = o["metadata"]["managedFields"].as_array_mut() else {
        return;
    };
    if mf.iter().any(|e| e["manager"] == "kube-scheduler") {
        return;
    }
    mf.insert(
        0,
        json!({
            "manager": "kube-scheduler", "operation": "Update", "apiVersion": "v1", "time": now_rfc3339(),
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:status": {"f:conditions": {".": {}, "k:{\"type\":\"PodScheduled\"}": {
                ".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:message": {}, "f:reason": {}, "f:status": {}, "f:type": {}
            }}}},
            "subresource": "status",
        }),
    );
}
