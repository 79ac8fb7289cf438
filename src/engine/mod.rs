//! The engine: a pool of `PICULET_MAX_WORKFLOWS` workers that claim runnable workflows through
//! a lease, run them through the backend, and record every state change and log line.
//!
//! Claims wake on a local nudge (a submission on this replica) and poll as a fallback (work
//! submitted through another replica, expired leases to take over). A claim respects the
//! workflows' concurrency groups (see [`Store::claim_workflow`]); after each claim that found
//! nothing, and at each poll while every slot is taken, the workflows held back by their group
//! are marked as waiting (see [`Store::note_waiting`]). A running workflow's lease
//! is renewed by a keeper that also notices a cancel requested through another replica.
//!
//! Shutdown comes in two stages: at once no more work is claimed while the running workflows
//! go on for `PICULET_SHUTDOWN_GRACE`; then (or at a second signal) the rest is handed over:
//! the workers store the output read so far, leave their steps running in the backend and
//! give their leases up, so that whoever claims the workflows next adopts them at once.

mod logs;
pub mod mask;
mod schedule;
mod workflow;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::backend::Backend;
use crate::metrics_registry::Metrics;
use crate::run::{RegistryCredential, Run, Sealed};
use crate::secrets::SecretBox;
use crate::store::{ClaimedWorkflow, Store};

/// How the engine runs; from the configuration.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub max_workflows: usize,
    /// How long a claim holds without renewal.
    pub lease: Duration,
    /// The longest any step or pipeline may run.
    pub max_timeout: Duration,
    /// Between asking a step to stop and killing it.
    pub grace: Duration,
    pub max_log_bytes: usize,
    /// How often idle workers look for work they were not told about.
    pub poll: Duration,
    /// How many times a step is started, its first attempt included, when its attempts are
    /// interrupted (a replica died with them); then it ends as `error`.
    pub max_attempts: u32,
    /// After shutdown begins, how long running workflows go on here before they are handed
    /// over to another replica.
    pub shutdown_grace: Duration,
}

/// What the API tells the engine: new work, and cancels.
#[derive(Default)]
pub struct Control {
    wake: Notify,
    /// Per pipeline with workflows running here: its cancel token and how many workflows
    /// hold it.
    cancels: Mutex<HashMap<Uuid, (CancellationToken, usize)>>,
}

impl Control {
    /// New work was queued: an idle worker claims it now rather than at its next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// A cancel was recorded: the workflows of the pipeline running here stop now.
    pub fn cancel(&self, pipeline_id: Uuid) {
        if let Some((token, _)) = self.lock().get(&pipeline_id) {
            token.cancel();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, (CancellationToken, usize)>> {
        self.cancels.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn hold(&self, pipeline_id: Uuid) -> CancellationToken {
        let mut map = self.lock();
        let entry = map.entry(pipeline_id).or_default();
        entry.1 += 1;
        entry.0.clone()
    }

    fn release(&self, pipeline_id: Uuid) {
        let mut map = self.lock();
        if let Some(entry) = map.get_mut(&pipeline_id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                map.remove(&pipeline_id);
            }
        }
    }
}

/// Secret values of a run by name, opened from the store.
pub(crate) type Secrets = BTreeMap<String, String>;

pub(crate) struct Inner {
    /// The engine's own pool: API requests cannot take its connections.
    pub store: Store,
    pub backend: Arc<dyn Backend>,
    pub settings: EngineSettings,
    secret_box: SecretBox,
    control: Arc<Control>,
    /// The app's metrics: what the engine counts and times.
    pub metrics: Metrics,
    /// This replica's name in lease columns.
    owner: String,
    /// The workflows this replica's workers run: every other lease in its name is stray.
    held: Mutex<HashSet<Uuid>>,
}

impl Inner {
    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The worker pool; [`Engine::run`] drives it until shutdown.
pub struct Engine {
    inner: Arc<Inner>,
    /// Cancelled when the running workflows are to be handed over now.
    hand_over: CancellationToken,
}

impl Engine {
    pub fn new(
        store: Store,
        backend: Arc<dyn Backend>,
        secret_box: SecretBox,
        settings: EngineSettings,
        control: Arc<Control>,
        metrics: Metrics,
    ) -> Engine {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "piculet".into());
        Engine {
            inner: Arc::new(Inner {
                store,
                backend,
                settings,
                secret_box,
                control,
                metrics,
                owner: format!("{host}/{}", Uuid::now_v7()),
                held: Mutex::new(HashSet::new()),
            }),
            hand_over: CancellationToken::new(),
        }
    }

    /// Cancel to hand the running workflows over at once rather than at the end of the
    /// shutdown grace (a second signal).
    pub fn hand_over(&self) -> CancellationToken {
        self.hand_over.clone()
    }

    /// Claims and runs workflows until `shutdown`; then lets the running ones go on for the
    /// shutdown grace, hands what remains over (see the module docs) and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let Engine { inner, hand_over } = self;
        let slots = Arc::new(Semaphore::new(inner.settings.max_workflows));
        let mut workers: JoinSet<()> = JoinSet::new();
        tracing::info!(owner = %inner.owner, backend = inner.backend.name(), "engine started");
        // In the background: claiming must not wait for a slow listing. Objects of a workflow
        // claimed meanwhile are either not in the listing or counted as alive.
        workers.spawn({
            let inner = inner.clone();
            async move { reap(&inner).await }
        });
        // A claim whose answer was lost (a write timeout after its commit) may have left a
        // lease in this replica's name on a workflow nobody here runs.
        let mut strays = false;
        loop {
            if strays {
                strays = !release_strays(&inner).await;
            }
            // While every slot is taken, workflows still say when they wait for their
            // concurrency group.
            let permit = loop {
                tokio::select! {
                    permit = slots.clone().acquire_owned() => break permit.ok(),
                    () = tokio::time::sleep(inner.settings.poll) => note_waiting(&inner).await,
                    () = shutdown.cancelled() => break None,
                }
            };
            let Some(permit) = permit else { break };
            match inner
                .store
                .claim_workflow(&inner.owner, inner.settings.lease)
                .await
            {
                Ok(Some(claimed)) => {
                    inner.held().insert(claimed.workflow_id);
                    let inner = inner.clone();
                    let abandon = hand_over.child_token();
                    let span = tracing::info_span!(
                        "workflow",
                        pipeline_id = %claimed.pipeline_id,
                        workflow_id = %claimed.workflow_id,
                        workflow = %claimed.plan.name,
                    );
                    workers.spawn(
                        async move {
                            let workflow_id = claimed.workflow_id;
                            run_claimed(inner.clone(), claimed, abandon).await;
                            inner.held().remove(&workflow_id);
                            drop(permit);
                        }
                        .instrument(span),
                    );
                }
                Ok(None) => {
                    drop(permit);
                    note_waiting(&inner).await;
                    tokio::select! {
                        () = inner.control.wake.notified() => {},
                        () = tokio::time::sleep(inner.settings.poll) => {},
                        () = shutdown.cancelled() => break,
                    }
                }
                Err(e) => {
                    drop(permit);
                    strays = true;
                    tracing::warn!(error = %e, "claiming work failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(inner.settings.poll) => {},
                        () = shutdown.cancelled() => break,
                    }
                }
            }
            while workers.try_join_next().is_some() {}
        }
        // Claiming has stopped. The running workflows go on until the grace is over (or a
        // second signal), then their workers see the hand-over through their abandon tokens:
        // they store what they read, leave the steps running and give their leases up.
        if strays {
            release_strays(&inner).await;
        }
        let running = inner.held().len();
        if running > 0 {
            tracing::info!(
                running,
                grace = ?inner.settings.shutdown_grace,
                "no new work is claimed; running workflows go on until the grace is over, then they are handed over"
            );
        }
        let grace = tokio::time::sleep(inner.settings.shutdown_grace);
        tokio::pin!(grace);
        let mut handed = hand_over.is_cancelled();
        loop {
            tokio::select! {
                joined = workers.join_next() => if joined.is_none() { break },
                () = &mut grace, if !handed => {
                    tracing::info!(running = inner.held().len(), "the shutdown grace is over; handing the running workflows over");
                    hand_over.cancel();
                    handed = true;
                },
                // A second signal: handed over now.
                () = hand_over.cancelled(), if !handed => handed = true,
            }
        }
        tracing::info!("engine stopped");
    }
}

/// Marks the workflows that wait for their concurrency group (their reason and one event).
async fn note_waiting(inner: &Inner) {
    if let Err(e) = inner.store.note_waiting().await {
        tracing::warn!(error = %e, "marking the workflows that wait for their concurrency group failed");
    }
}

/// Gives up the stray leases of this replica; true when that worked.
async fn release_strays(inner: &Inner) -> bool {
    let keep = inner.held().clone();
    match inner.store.release_stray_claims(&inner.owner, &keep).await {
        Ok(n) => {
            if n > 0 {
                tracing::info!(
                    released = n,
                    "gave up leases of claims whose answers were lost"
                );
            }
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "giving up stray leases failed; trying again before the next claim");
            false
        }
    }
}

/// Removes what the backend still holds of workflows that are finished or unknown to the
/// database: left behind by a replica that died during a teardown, or by a deleted pipeline.
/// Workflows still queued or running are left to their owner (or to whoever takes them over).
async fn reap(inner: &Inner) {
    let managed = match inner.backend.managed_workflows().await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "the reaper cannot list the backend's objects");
            return;
        }
    };
    if managed.is_empty() {
        return;
    }
    let alive = match inner.store.unfinished_workflows().await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "the reaper cannot read the workflows");
            return;
        }
    };
    for workflow_id in managed.into_iter().filter(|id| !alive.contains(id)) {
        match inner.backend.remove_workflow(workflow_id).await {
            Ok(()) => {
                tracing::info!(%workflow_id, "reaped the objects of a finished or unknown workflow")
            }
            Err(e) => {
                tracing::warn!(%workflow_id, error = %e, "reaping a workflow's objects failed")
            }
        }
    }
}

/// Runs one claimed workflow with its lease keeper.
async fn run_claimed(inner: Arc<Inner>, claimed: ClaimedWorkflow, abandon: CancellationToken) {
    let workflow_id = claimed.workflow_id;
    let pipeline_id = claimed.pipeline_id;
    let opened = match open(&inner.secret_box, &claimed) {
        Ok(s) => s,
        Err(reason) => {
            tracing::error!(%reason, "cannot open the pipeline's submission");
            for s in claimed.steps.iter().filter(|s| !s.status.0.is_finished()) {
                let _ = Box::pin(inner.store.step_finished(
                    claimed.pipeline_id,
                    s.id,
                    &inner.owner,
                    crate::model::Status::Error,
                    None,
                    Some(reason.clone()),
                    chrono::Utc::now(),
                ))
                .await;
            }
            let _ = Box::pin(inner.store.workflow_finished(
                claimed.pipeline_id,
                workflow_id,
                &inner.owner,
                crate::model::Status::Error,
                Some(reason),
            ))
            .await;
            return;
        }
    };
    let cancel = inner.control.hold(pipeline_id);
    if claimed.cancel_requested {
        cancel.cancel();
    }
    let keeper_done = CancellationToken::new();
    let keeper = tokio::spawn(
        keep_lease(
            inner.clone(),
            workflow_id,
            cancel.clone(),
            abandon.clone(),
            keeper_done.clone(),
        )
        .in_current_span(),
    );

    workflow::run(
        inner.clone(),
        claimed,
        opened,
        cancel.clone(),
        abandon.clone(),
    )
    .await;

    keeper_done.cancel();
    let _ = keeper.await;
    if abandon.is_cancelled()
        && let Err(e) = Box::pin(inner.store.release_lease(workflow_id, &inner.owner)).await
    {
        tracing::warn!(error = %e, "giving the lease up failed; it expires by itself");
    }
    inner.control.release(pipeline_id);
}

/// Renews the lease while the workflow runs; cancels it when a cancel was requested, and
/// abandons it when another replica took it over.
async fn keep_lease(
    inner: Arc<Inner>,
    workflow_id: Uuid,
    cancel: CancellationToken,
    abandon: CancellationToken,
    done: CancellationToken,
) {
    let every = (inner.settings.lease / 3).min(Duration::from_secs(2));
    let lease = inner.settings.lease;
    // When the lease runs out as far as this replica can tell: from the moment each renewal
    // was sent, since the database counts from when it ran it.
    let mut expires = tokio::time::Instant::now() + lease;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {},
            () = done.cancelled() => return,
        }
        let sent = tokio::time::Instant::now();
        // A renewal still unanswered when the lease runs out has failed, however long the
        // database would let it take: another replica may take the workflow over from then.
        // Boxed, as every database call of the tasks that live as long as a workflow: such a
        // task's future is as large as its largest state, and it spends its life waiting.
        let renewal = Box::pin(inner.store.renew_lease(workflow_id, &inner.owner, lease));
        let outcome = tokio::time::timeout_at(expires, renewal).await;
        match outcome {
            Ok(Ok(state)) if !state.held => {
                tracing::warn!("the lease was taken over by another replica; leaving the workflow");
                abandon.cancel();
                return;
            }
            Ok(Ok(state)) => {
                expires = sent + lease;
                if state.cancel_requested {
                    cancel.cancel();
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "renewing the lease failed"),
            Err(_) => {}
        }
        // Past its expiry another replica may have taken the workflow over: two replicas must
        // never run it side by side.
        if tokio::time::Instant::now() >= expires {
            tracing::error!("the lease expired without renewal; leaving the workflow");
            abandon.cancel();
            return;
        }
    }
}

/// What a claimed workflow runs with besides its plan: the run its submission gave, and its
/// secret values and registry credentials, opened.
pub(crate) struct Opened {
    pub run: Run,
    pub secrets: Secrets,
    pub registries: Vec<RegistryCredential>,
}

fn open(secret_box: &SecretBox, claimed: &ClaimedWorkflow) -> Result<Opened, String> {
    let run = claimed.run.clone()?;
    let Sealed {
        secrets,
        registries,
    } = Sealed::open(secret_box, claimed.sealed_secrets.as_deref())?;
    Ok(Opened {
        run,
        secrets: secrets.into_iter().map(|s| (s.name, s.value)).collect(),
        registries,
    })
}
