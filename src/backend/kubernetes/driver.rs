//! The task that follows one step's pod: until its container starts, its log followed and
//! resumed while it runs and read once more after it ended, then its exit from the container's
//! status.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::Utc;
use futures::FutureExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::client::{self, Kube, describe};
use super::logs::{Cursor, StreamEnd, read_log};
use super::objects::{WorkflowState, delete_if_present, now};
use super::status::{PodState, pod_state};
use super::watch::{PodWatch, Seen};
use super::{KubernetesBackend, is_not_found};
use crate::backend::{OutputLine, StepExit, StepHandle, StepRun};
use crate::k8s::labels::PULL_POLICIES_ANNOTATION;
use crate::k8s::pod::mounts_workspace;
use crate::pipeline::StepKind;

/// How long a followed log stream may stay quiet after the container ended.
const STALLED_STREAM: Duration = Duration::from_secs(5);

/// At most this many reads of an ended container's log (see the driver's log loop).
const FINAL_READS: usize = 5;

/// A run of failed log reads: back-off between them, up to a deadline.
struct Outage {
    deadline: Instant,
    waits: backon::ExponentialBackoff,
}

impl Outage {
    fn new(budget: Duration) -> Outage {
        use backon::BackoffBuilder as _;
        Outage {
            deadline: Instant::now() + budget,
            waits: backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                // A kubelet restart takes seconds; reads at most 2 s apart catch its return
                // soon, and the client-side rate limiter bounds their sum over many steps.
                .with_max_delay(Duration::from_secs(2))
                .with_jitter()
                .without_max_times()
                .build(),
        }
    }

    /// The wait before the next read, or `None` once the budget is spent.
    fn next_wait(&mut self) -> Option<Duration> {
        let left = self.deadline.checked_duration_since(Instant::now())?;
        if left.is_zero() {
            return None;
        }
        Some(self.waits.next()?.min(left))
    }
}

/// Why a step failed whose pod vanished while its container ran.
const DELETED_RUNNING: &str = "the pod was deleted before its container ended";

impl KubernetesBackend {
    /// Follows a created pod: its log to the channel, then its exit.
    pub(super) fn drive(
        &self,
        state: Arc<WorkflowState>,
        step: &StepRun,
        pod: Pod,
        subscription: tokio::sync::watch::Receiver<Seen>,
        cursor: Cursor,
        adopted: bool,
    ) -> StepHandle {
        let namespace = state.rendered.namespace.clone();
        let name = pod.metadata.name.clone().unwrap_or_default();
        // Kept only where a failed pull may create it again: with its environment, the pod is
        // much of what a step would otherwise hold while it runs.
        let pod = pod
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(PULL_POLICIES_ANNOTATION))
            .then_some(pod);
        let (out_tx, out_rx) = mpsc::channel(1024);
        let (exit_tx, exit_rx) = oneshot::channel();
        let driver = Driver {
            kube: self.kube.clone(),
            pod,
            pods: self.pods(&namespace),
            watch: self.watch.clone(),
            namespace,
            name,
            seen: subscription,
            state,
            start_timeout: self.config.start_timeout,
            log_retry_timeout: self.config.log_retry_timeout,
            adopted,
            counts: step.spec.kind != StepKind::Service
                && !step.spec.detach
                && step.spec.failure.fails_workflow(),
        };
        let span = tracing::Span::current();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let exit = driver.run(cursor, out_tx).await;
                let _ = exit_tx.send(exit);
            },
            span,
        ));
        StepHandle {
            output: out_rx,
            exit: exit_rx
                .map(|r| {
                    r.unwrap_or(StepExit::Error {
                        reason: "the Kubernetes backend stopped following the step".into(),
                    })
                })
                .boxed(),
        }
    }
}

/// The task that follows one step's pod.
struct Driver {
    kube: Kube,
    /// The pod as created, created again with the next pull policy when a pull fails: kept
    /// only while the container has not started, and only when pull policies are listed.
    pod: Option<Pod>,
    pods: Api<Pod>,
    watch: Arc<PodWatch>,
    namespace: String,
    name: String,
    seen: tokio::sync::watch::Receiver<Seen>,
    state: Arc<WorkflowState>,
    start_timeout: Duration,
    /// How long log reads are retried through an outage (PICULET_K8S_LOG_RETRY_TIMEOUT).
    log_retry_timeout: Duration,
    /// Re-attached after a restart, rather than just created.
    adopted: bool,
    /// Whether the step's outcome counts for the workflow (not a service, a detached step
    /// or `failure: ignore`): what `PICULET_K8S_KEEP_FAILED_PODS` looks at.
    counts: bool,
}

/// What the watch last said, as a step state; `None` before the pod was seen.
enum Observed {
    NotYet,
    Pod(PodState),
    Gone,
}

impl Driver {
    fn observe(&mut self) -> Observed {
        let seen = self.seen.borrow_and_update().clone();
        match seen {
            Seen::NotYet => Observed::NotYet,
            Seen::Gone => Observed::Gone,
            Seen::Present(pod) => {
                // Only a pod that mounts the workspace tells where the workspace is.
                if let Some(node) = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .filter(|_| mounts_workspace(&pod))
                {
                    self.state.node.send_if_modified(|n| {
                        if n.is_none() {
                            *n = Some(node);
                            true
                        } else {
                            false
                        }
                    });
                }
                Observed::Pod(pod_state(&pod))
            }
        }
    }

    /// The pull policy to try after `reason`, a failed pull, when the administrator listed
    /// one after the pod's current policy.
    fn next_pull_policy(&self, reason: &str) -> Option<String> {
        if !(reason.starts_with("ErrImagePull") || reason.starts_with("ImagePullBackOff")) {
            return None;
        }
        let pod = self.pod.as_ref()?;
        let listed = pod
            .metadata
            .annotations
            .as_ref()?
            .get(PULL_POLICIES_ANNOTATION)?;
        let policies: Vec<&str> = listed.split(',').collect();
        let current = pod
            .spec
            .as_ref()?
            .containers
            .first()?
            .image_pull_policy
            .as_deref()?;
        let at = policies.iter().position(|p| *p == current)?;
        policies.get(at + 1).map(|p| p.to_string())
    }

    /// Deletes the pod and creates it again with another pull policy, as GitLab Runner does.
    async fn recreate(&mut self, policy: &str) -> Result<(), String> {
        tracing::info!(pod = %self.name, %policy, "the image pull failed; trying the next pull policy");
        delete_if_present(&self.kube, &self.pods, &self.name, &now())
            .await
            .map_err(|e| describe(&e))?;
        // The name is the step attempt's: the new pod can only be created once the old one
        // is gone.
        while !matches!(self.observe(), Observed::Gone) {
            if !self.changed().await {
                break;
            }
        }
        self.seen = self.watch.subscribe(&self.namespace, &self.name);
        let Some(pod) = self.pod.as_mut() else {
            return Err("the pod as created is no longer known".into());
        };
        if let Some(c) = pod.spec.as_mut().and_then(|s| s.containers.first_mut()) {
            c.image_pull_policy = Some(policy.to_string());
        }
        let post = PostParams::default();
        let pod = pod.clone();
        self.kube
            .create_pod(|| self.pods.create(&post, &pod))
            .await
            .map(|_| ())
            .map_err(|e| describe(&e))
    }

    /// Waits for the next change the watch reports; `false` when the watch dropped the pod.
    async fn changed(&mut self) -> bool {
        self.seen.changed().await.is_ok()
    }

    async fn run(mut self, cursor: Cursor, out: mpsc::Sender<OutputLine>) -> StepExit {
        let exit = self.follow(cursor, out).await;
        if self.counts && !matches!(exit, StepExit::Exited { code: 0, .. }) {
            self.state.failed.store(true, Ordering::SeqCst);
        }
        drop(self.seen);
        self.watch.forget(&self.namespace, &self.name);
        exit
    }

    /// Deletes the pod at once: it failed to start, and must not start later unobserved
    /// (the kubelet keeps retrying a pull, a Pending pod may still be scheduled).
    async fn discard(&self) {
        if let Err(e) = delete_if_present(&self.kube, &self.pods, &self.name, &now()).await {
            tracing::warn!(pod = %self.name, error = %describe(&e), "deleting a pod that failed to start failed");
        }
    }

    /// Until the container starts (`true`: it runs; `false`: it already ended), or cannot.
    async fn wait_for_start(&mut self) -> Result<bool, String> {
        const GONE: &str = "the pod was deleted before its container started";
        let deadline = Instant::now() + self.start_timeout;
        if self.adopted {
            // A pod the list does not show once the watch has read it is gone.
            self.watch.synced(&self.namespace).await;
        }
        let mut waiting_for: Option<String> = None;
        loop {
            match self.observe() {
                Observed::Pod(PodState::Running) => return Ok(true),
                Observed::Pod(PodState::Terminated { .. }) => return Ok(false),
                Observed::Pod(PodState::StartFailed(reason)) => {
                    match self.next_pull_policy(&reason) {
                        Some(policy) => {
                            self.recreate(&policy).await.map_err(|e| {
                                format!("{reason}; trying pull policy {policy}: {e}")
                            })?;
                            continue;
                        }
                        None => return Err(reason),
                    }
                }
                Observed::Pod(PodState::Lost(reason)) => return Err(reason),
                Observed::Pod(PodState::Waiting { reason }) => {
                    if reason.is_some() {
                        waiting_for = reason;
                    }
                }
                Observed::Gone => return Err(GONE.into()),
                Observed::NotYet if self.adopted => {
                    return Err("lost: the pod is gone from the cluster".into());
                }
                Observed::NotYet => {}
            }
            tokio::select! {
                alive = self.changed() => if !alive {
                    return Err(GONE.into());
                },
                () = tokio::time::sleep_until(deadline) => {
                    return Err(format!(
                        "the pod did not start within {}: {}",
                        humantime::format_duration(self.start_timeout),
                        waiting_for.unwrap_or_else(|| "it stayed Pending".into()),
                    ));
                }
            }
        }
    }

    async fn follow(&mut self, cursor: Cursor, out: mpsc::Sender<OutputLine>) -> StepExit {
        // 1. Until the container starts, or cannot. Boxed, as the API calls it may make are: the
        // task lives as long as the step runs, and its size is that of its largest state.
        let running_at_open = match Box::pin(self.wait_for_start()).await {
            Ok(running) => running,
            Err(reason) => {
                Box::pin(self.discard()).await;
                return StepExit::Error { reason };
            }
        };
        // Started: no pull can fail any more.
        self.pod = None;
        // 2. The log.
        if let Some(error) = self.read_to_end(cursor, running_at_open, &out).await {
            // Visible where the user reads the log, not only in the server's own logs.
            tracing::warn!(pod = %self.name, %error, "the rest of the log could not be read");
            let text = format!(
                "piculet: the rest of this log could not be read within {} \
                 (PICULET_K8S_LOG_RETRY_TIMEOUT): {error}",
                humantime::format_duration(self.log_retry_timeout)
            );
            let _ = out
                .send(OutputLine {
                    at: Utc::now(),
                    text,
                })
                .await;
        }
        drop(out);
        // 3. The exit, from the container's status.
        self.exit().await
    }

    /// The log, followed and resumed while the container runs; `Some(error)` when the rest of
    /// it was given up.
    ///
    /// A stream that ends looks the same whether the container ended, the connection broke or
    /// the kubelet died (recording 80): only the pod's status tells them apart. While it says
    /// the container runs, an end is a break and the stream is resumed from the last
    /// timestamp; answers that may succeed later (a 500 while the kubelet is away, a refused
    /// connection) are retried with back-off for PICULET_K8S_LOG_RETRY_TIMEOUT. The log is
    /// complete only once the container has terminated and a read past the last line finds
    /// nothing new.
    async fn read_to_end(
        &mut self,
        mut cursor: Cursor,
        running_at_open: bool,
        out: &mpsc::Sender<OutputLine>,
    ) -> Option<String> {
        let mut live = running_at_open;
        let mut outage: Option<Outage> = None;
        let mut pause = Duration::from_millis(50);
        let mut final_reads = 0usize;
        loop {
            let progress = AtomicUsize::new(0);
            let before = cursor.count();
            let end = tokio::select! {
                end = read_log(&self.kube, &self.pods, &self.name, live, &mut cursor, out, &progress) => end,
                () = stalled(self.seen.clone(), live, &progress) => {
                    tracing::warn!(pod = %self.name, "the log stream stayed open and quiet after the container ended; reading the rest");
                    StreamEnd::Closed
                }
            };
            match &end {
                StreamEnd::ReceiverGone => return None,
                // The pod is gone: nothing more can be read; its status says how it ended.
                StreamEnd::Failed(e) if is_not_found(e) => return None,
                StreamEnd::Failed(e) if client::retriable(e) => {
                    let outage = outage.get_or_insert_with(|| Outage::new(self.log_retry_timeout));
                    let Some(wait) = outage.next_wait() else {
                        return Some(describe(e));
                    };
                    tracing::info!(pod = %self.name, error = %describe(e), ?wait, "the log cannot be read now; retrying");
                    tokio::time::sleep(wait).await;
                    // The container may have ended meanwhile: then the rest is read plainly.
                    if live && !matches!(self.observe(), Observed::Pod(PodState::Running)) {
                        live = false;
                    }
                    continue;
                }
                StreamEnd::Failed(e) => {
                    if !live {
                        // A plain read of an ended container the server refuses for good.
                        return Some(describe(e));
                    }
                    tracing::debug!(pod = %self.name, error = %describe(e), "reading the log failed");
                }
                StreamEnd::Closed => outage = None,
            }
            if !live {
                // A read after the container ended: the log is complete once one found nothing
                // new. The file no longer grows, so the second read settles it; the bound only
                // guards against a server that keeps inventing lines.
                final_reads += 1;
                if cursor.count() == before {
                    return None;
                }
                if final_reads >= FINAL_READS {
                    tracing::warn!(pod = %self.name, "reads of an ended container's log kept finding new lines; keeping what was read");
                    return None;
                }
                continue;
            }
            if self.ended_soon().await {
                live = false;
                continue;
            }
            tracing::info!(pod = %self.name, "the log stream ended while the container runs; resuming from the last line");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// Whether the watch reports the container's end within a second: the watch may trail
    /// the stream's end by a moment, more so on a busy cluster.
    async fn ended_soon(&mut self) -> bool {
        tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                if !matches!(self.observe(), Observed::Pod(PodState::Running)) {
                    return;
                }
                if !self.changed().await {
                    return;
                }
            }
        })
        .await
        .is_ok()
    }

    /// The step's exit, once the container's status tells it.
    async fn exit(&mut self) -> StepExit {
        loop {
            match self.observe() {
                Observed::Pod(PodState::Terminated { code, reason }) => {
                    return StepExit::Exited { code, reason };
                }
                Observed::Pod(PodState::Lost(reason) | PodState::StartFailed(reason)) => {
                    return StepExit::Error { reason };
                }
                Observed::Gone => {
                    return StepExit::Error {
                        reason: DELETED_RUNNING.into(),
                    };
                }
                _ => {}
            }
            if !self.changed().await {
                return StepExit::Error {
                    reason: DELETED_RUNNING.into(),
                };
            }
        }
    }
}

/// Ends once a followed stream has stayed quiet for [`STALLED_STREAM`] after the container
/// ended: a stream the kubelet fails to close must not hold the step, so the rest is then read
/// plainly. Never ends for a plain read (`live` false). `progress` counts the lines read.
async fn stalled(mut seen: tokio::sync::watch::Receiver<Seen>, live: bool, progress: &AtomicUsize) {
    if !live {
        return std::future::pending().await;
    }
    loop {
        let ended = match &*seen.borrow_and_update() {
            Seen::Present(pod) => pod_state(pod).is_final(),
            _ => true,
        };
        if ended || seen.changed().await.is_err() {
            break;
        }
    }
    let mut last = progress.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(STALLED_STREAM).await;
        let now = progress.load(Ordering::Relaxed);
        if now == last {
            return;
        }
        last = now;
    }
}
