//! The Kubernetes backend: each step and service a pod, as [`crate::k8s::render_workflow`]
//! renders it (what `POST /render` shows), watched through one shared watch per namespace,
//! its log followed with timestamps, and every object of a workflow deleted at its end.
//!
//! - [`client`]: connection, rate limits, retries;
//! - [`watch`]: the shared pod watch;
//! - [`status`]: what a pod's status means for its step (pure);
//! - [`logs`]: following and resuming a log stream (the resume rule is pure);
//! - [`access`]: the permission check behind `/readyz`.
//!
//! API calls per step: the pod create, the log stream (a second read when a stream ends while
//! the container ran, to catch what a broken stream missed), nothing to poll; the pods of a
//! workflow are deleted together with one `deletecollection` at its end.

pub mod access;
pub mod client;
pub mod logs;
pub mod status;
pub mod watch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt as _;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams, PropagationPolicy};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

use self::client::{Kube, describe, status_code};
use self::logs::{Cursor, StreamEnd, read_log};
use self::status::{PodState, pod_state};
use self::watch::{PodWatch, Seen};
use super::{Backend, BackendError, OutputLine, StepExit, StepHandle, StepRun, WorkflowRun};
use crate::k8s::labels::{PULL_POLICIES_ANNOTATION, STEP_ID, WORKFLOW_ID, managed_selector};
use crate::k8s::pod::{mounts_workspace, pin_to_node, set_environment};
use crate::k8s::{KubernetesConfig, RenderInput, RenderedWorkflow, render_workflow};
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

/// A workflow's objects as created, and what its steps learned.
struct WorkflowState {
    rendered: RenderedWorkflow,
    /// The pod of each started step.
    pods: Mutex<HashMap<Uuid, String>>,
    /// With a ReadWriteOnce workspace: the node the first pod landed on.
    node: tokio::sync::watch::Sender<Option<String>>,
    /// Whether a pod was created already (the next ones wait for its node when RWO).
    created_one: AtomicBool,
    /// Whether a step failed: failed workflows keep their objects when the administrator
    /// asks for it.
    failed: AtomicBool,
}

pub struct KubernetesBackend {
    kube: Kube,
    config: Arc<KubernetesConfig>,
    watch: Arc<PodWatch>,
    workflows: Mutex<HashMap<Uuid, Arc<WorkflowState>>>,
    access: access::AccessCache,
    /// `piculet_k8s_pod_create_delay_seconds` of the app's metrics.
    create_delay: metrics::Histogram,
}

fn failed(what: &str, e: &kube::Error) -> BackendError {
    BackendError::Failed(format!("{what}: {}", describe(e)))
}

fn is_conflict(e: &kube::Error) -> bool {
    status_code(e) == Some(409)
}

fn is_not_found(e: &kube::Error) -> bool {
    status_code(e) == Some(404)
}

/// Why a step failed whose pod vanished while its container ran.
const DELETED_RUNNING: &str = "the pod was deleted before its container ended";

/// The objects of one workflow: what it was labelled with when it was rendered.
fn workflow_objects(workflow_id: Uuid) -> ListParams {
    ListParams::default().labels(&format!(
        "{},{WORKFLOW_ID}={workflow_id}",
        managed_selector()
    ))
}

/// Delete at once, for what no one reads any more (an ended workflow, a pod that failed to
/// start, an orphan).
fn now() -> DeleteParams {
    DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    }
}

/// Deletes an object; one already gone is fine.
async fn delete_if_present<K>(
    kube: &Kube,
    api: &Api<K>,
    name: &str,
    params: &DeleteParams,
) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match kube.call(|| api.delete(name, params)).await {
        Err(e) if !is_not_found(&e) => Err(e),
        _ => Ok(()),
    }
}

impl KubernetesBackend {
    /// Connects to the cluster as configured; each pod create's delay is recorded in
    /// `create_delay`.
    pub async fn connect(
        config: KubernetesConfig,
        create_delay: metrics::Histogram,
    ) -> Result<KubernetesBackend, String> {
        let kube = Kube::connect(&config).await?;
        Ok(KubernetesBackend::new(kube, config, create_delay))
    }

    pub fn new(
        kube: Kube,
        config: KubernetesConfig,
        create_delay: metrics::Histogram,
    ) -> KubernetesBackend {
        let watch = Arc::new(PodWatch::new(kube.client.clone()));
        watch.ensure(&config.namespace);
        KubernetesBackend {
            access: access::AccessCache::default(),
            watch,
            kube,
            config: Arc::new(config),
            workflows: Mutex::new(HashMap::new()),
            create_delay,
        }
    }

    fn state(&self, workflow_id: Uuid) -> Result<Arc<WorkflowState>, BackendError> {
        self.workflows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&workflow_id)
            .cloned()
            .ok_or_else(|| BackendError::Failed("the workflow was not set up".into()))
    }

    fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.kube.client.clone(), namespace)
    }

    /// Creates an object, or finds the one an earlier attempt created.
    async fn create_or_get<K>(&self, api: &Api<K>, object: &K) -> Result<K, kube::Error>
    where
        K: kube::Resource
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let name = object.meta().name.clone().unwrap_or_default();
        let post = PostParams::default();
        let created = self.kube.call(|| api.create(&post, object)).await;
        match created {
            Err(e) if is_conflict(&e) => self.kube.call(|| api.get(&name)).await,
            other => other,
        }
    }

    /// The pod of a step, ready to create: the step's own built-ins set, pinned to the
    /// workspace's node when it is ReadWriteOnce. `attaching`: the pod exists already (an
    /// adoption), so nothing waits for a node; its own state will tell the node.
    async fn step_pod(
        &self,
        state: &WorkflowState,
        step: &StepRun,
        attaching: bool,
    ) -> Result<Pod, BackendError> {
        let is_service = step.spec.kind == StepKind::Service;
        let mut pod = state
            .rendered
            .pods
            .iter()
            .find(|p| p.step == step.spec.name && (p.kind == StepKind::Service) == is_service)
            .map(|p| p.pod.clone())
            .ok_or_else(|| {
                BackendError::Failed(format!("no pod was rendered for {}", step.spec.name))
            })?;
        set_environment(&mut pod, &step.env);
        // A pod without the workspace (`workspaceVolume: false`) runs wherever it is
        // scheduled, and does not choose the workspace's node either.
        let follows_workspace = state.rendered.read_write_once && mounts_workspace(&pod);
        if follows_workspace && attaching {
            if let Some(n) = state.node.borrow().clone() {
                pin_to_node(&mut pod, &n);
            }
        } else if follows_workspace {
            let mut node = state.node.subscribe();
            if state.created_one.swap(true, Ordering::SeqCst) {
                // The workspace can only be mounted on the node of the first pod: wait until
                // that one is scheduled.
                let wait = node.wait_for(Option::is_some);
                let n = match tokio::time::timeout(self.config.start_timeout, wait).await {
                    Ok(Ok(n)) => n.clone(),
                    _ => None,
                };
                let Some(n) = n else {
                    return Err(BackendError::Refused(format!(
                        "the workspace is ReadWriteOnce, and no pod of the workflow was \
                         scheduled to a node within {}",
                        humantime::format_duration(self.config.start_timeout)
                    )));
                };
                pin_to_node(&mut pod, &n);
            }
        }
        Ok(pod)
    }

    /// Follows a created pod: its log to the channel, then its exit.
    fn drive(
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

    /// Deletes every object of a workflow, found by its label: pods, Service, Secrets, then
    /// the workspace. For a workflow this replica did not set up (a failed setup, an orphan).
    async fn delete_workflow_objects(
        &self,
        namespace: &str,
        workflow_id: Uuid,
    ) -> Result<(), BackendError> {
        let list = workflow_objects(workflow_id);
        let client = self.kube.client.clone();
        let names = |items: Vec<ObjectMeta>| -> Vec<String> {
            items.into_iter().filter_map(|m| m.name).collect()
        };
        let services: Api<Service> = Api::namespaced(client.clone(), namespace);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client, namespace);
        let services_named = names(self.metadata(&services, &list).await?);
        let secrets_named = names(self.metadata(&secrets, &list).await?);
        let claims_named = names(self.metadata(&claims, &list).await?);
        self.delete_objects(
            namespace,
            workflow_id,
            &services_named,
            &secrets_named,
            &claims_named,
        )
        .await
    }

    /// Deletes the objects of a workflow this replica set up, by the names it rendered.
    async fn delete_rendered(
        &self,
        rendered: &RenderedWorkflow,
        workflow_id: Uuid,
    ) -> Result<(), BackendError> {
        let name = |m: &ObjectMeta| m.name.clone().unwrap_or_default();
        let secrets: Vec<String> = rendered.secrets.iter().map(|s| name(&s.metadata)).collect();
        self.delete_objects(
            &rendered.namespace,
            workflow_id,
            &[name(&rendered.service.metadata)],
            &secrets,
            &[name(&rendered.workspace.metadata)],
        )
        .await
    }

    /// The pods with one `deletecollection` (nothing is left to stop gently), then the
    /// Services, the Secrets, and the workspace claims (foreground, so that the garbage
    /// collector takes whatever was missed).
    async fn delete_objects(
        &self,
        namespace: &str,
        workflow_id: Uuid,
        services: &[String],
        secrets: &[String],
        claims: &[String],
    ) -> Result<(), BackendError> {
        let client = self.kube.client.clone();
        let pods = self.pods(namespace);
        let list = workflow_objects(workflow_id);
        let at_once = now();
        self.kube
            .call(|| pods.delete_collection(&at_once, &list))
            .await
            .map_err(|e| failed("deleting the pods", &e))?;
        let plain = DeleteParams::default();
        let service_api: Api<Service> = Api::namespaced(client.clone(), namespace);
        for name in services {
            self.delete_one(&service_api, name, &plain).await?;
        }
        let secret_api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        for name in secrets {
            self.delete_one(&secret_api, name, &plain).await?;
        }
        let foreground = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Foreground),
            ..DeleteParams::default()
        };
        let claim_api: Api<PersistentVolumeClaim> = Api::namespaced(client, namespace);
        for name in claims {
            self.delete_one(&claim_api, name, &foreground).await?;
        }
        Ok(())
    }

    /// The metadata of the objects a list selects.
    async fn metadata<K>(
        &self,
        api: &Api<K>,
        list: &ListParams,
    ) -> Result<Vec<ObjectMeta>, BackendError>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let objects = self
            .kube
            .call(|| api.list_metadata(list))
            .await
            .map_err(|e| failed("listing piculet's objects", &e))?;
        Ok(objects.items.into_iter().map(|o| o.metadata).collect())
    }

    async fn delete_one<K>(
        &self,
        api: &Api<K>,
        name: &str,
        params: &DeleteParams,
    ) -> Result<(), BackendError>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        delete_if_present(&self.kube, api, name, params)
            .await
            .map_err(|e| failed(&format!("deleting {name}"), &e))
    }

    /// Creates the workspace, the Secrets and the Service, and keeps what the steps need.
    async fn create_workflow_objects(
        &self,
        run: &WorkflowRun,
        mut rendered: RenderedWorkflow,
    ) -> Result<(), BackendError> {
        let ns = rendered.namespace.clone();
        let client = self.kube.client.clone();
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        let claim = self
            .create_or_get(&claims, &rendered.workspace)
            .await
            .map_err(|e| failed("creating the workspace volume", &e))?;
        let uid = claim.metadata.uid.clone().unwrap_or_default();
        rendered.set_owner_uid(&uid);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        for secret in &rendered.secrets {
            self.create_or_get(&secrets, secret)
                .await
                .map_err(|e| failed("creating the workflow's Secret", &e))?;
        }
        let services: Api<Service> = Api::namespaced(client, &ns);
        self.create_or_get(&services, &rendered.service)
            .await
            .map_err(|e| failed("creating the workflow's Service", &e))?;
        // With a ReadWriteOnce workspace, a workflow adopted after a restart keeps the node its
        // pods already run on.
        let (node, created_one) = if rendered.read_write_once {
            // Not knowing only costs the pinning of an adopted workflow: no reason to fail.
            self.workspace_node(&ns, run.workflow_id)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot tell the node of the workflow's pods");
                    (None, false)
                })
        } else {
            (None, false)
        };
        let state = Arc::new(WorkflowState {
            rendered,
            pods: Mutex::new(HashMap::new()),
            node: tokio::sync::watch::Sender::new(node),
            created_one: AtomicBool::new(created_one),
            failed: AtomicBool::new(false),
        });
        self.workflows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(run.workflow_id, state);
        Ok(())
    }

    /// The node a workflow's existing pods were scheduled to, and whether it has pods at all.
    async fn workspace_node(
        &self,
        namespace: &str,
        workflow_id: Uuid,
    ) -> Result<(Option<String>, bool), BackendError> {
        let params = workflow_objects(workflow_id);
        let pods = self.pods(namespace);
        let list = self
            .kube
            .call(|| pods.list(&params))
            .await
            .map_err(|e| failed("listing the workflow's pods", &e))?;
        let node = list
            .items
            .iter()
            .filter(|p| mounts_workspace(p))
            .find_map(|p| p.spec.as_ref()?.node_name.clone());
        // Pods without a node yet: the next pod waits for the node the first lands on, which
        // the watch reports once that pod is followed again.
        Ok((node.clone(), node.is_some()))
    }

    fn render(&self, run: &WorkflowRun) -> Result<RenderedWorkflow, BackendError> {
        let input = RenderInput {
            pipeline_id: run.pipeline_id,
            workflow_id: run.workflow_id,
            step_ids: run.step_ids.clone(),
            attempt: 1,
            namespace: run.namespace.clone(),
            workflow: run.plan.clone(),
            secrets: run.secrets.clone(),
            registries: run.registries.clone(),
            // Each step's built-ins are set when it starts.
            environment: Default::default(),
            redact_secrets: false,
        };
        render_workflow(&self.config, &input).map_err(|refused| {
            BackendError::Refused(
                refused
                    .violations()
                    .iter()
                    .map(|v| v.message.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })
    }
}

#[async_trait::async_trait]
impl Backend for KubernetesBackend {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    async fn setup_workflow(&self, run: &WorkflowRun) -> Result<(), BackendError> {
        let rendered = self.render(run)?;
        let ns = rendered.namespace.clone();
        self.watch.ensure(&ns);
        let created = self.create_workflow_objects(run, rendered).await;
        if created.is_err() {
            // Nothing half-made stays behind: the workflow ends here.
            if let Err(e) = self.delete_workflow_objects(&ns, run.workflow_id).await {
                tracing::warn!(error = %e, "removing a workflow that could not be set up failed");
            }
        }
        created
    }

    async fn start_step(
        &self,
        run: &WorkflowRun,
        step: &StepRun,
    ) -> Result<StepHandle, BackendError> {
        let state = self.state(run.workflow_id)?;
        let pod = self.step_pod(&state, step, false).await?;
        let ns = state.rendered.namespace.clone();
        let name = pod.metadata.name.clone().unwrap_or_default();
        // Subscribed before the create, so the pod's first states are not missed.
        let subscription = self.watch.subscribe(&ns, &name);
        let pods = self.pods(&ns);
        let post = PostParams::default();
        let first = AtomicBool::new(true);
        let created = self
            .kube
            .create_pod(|| {
                if first.swap(false, Ordering::Relaxed) {
                    // The engine's own delay: from runnable to the request leaving, past the
                    // rate limiter.
                    let delay = step.runnable_at.elapsed();
                    self.create_delay.record(delay.as_secs_f64());
                    tracing::debug!(
                        pod = %name,
                        create_delay_us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX),
                        "pod create request sent"
                    );
                }
                pods.create(&post, &pod)
            })
            .await;
        match created {
            Ok(_) => {}
            // The same step attempt was created before (a retried request, an adoption): the
            // name is deterministic, so the pod is this step's.
            Err(e) if is_conflict(&e) => {}
            Err(e) => {
                drop(subscription);
                self.watch.forget(&ns, &name);
                state.failed.store(true, Ordering::SeqCst);
                let reason = match status_code(&e) {
                    Some(403 | 422) => format!("the cluster refused the pod: {}", describe(&e)),
                    _ => format!("creating the pod failed: {}", describe(&e)),
                };
                return Err(BackendError::Refused(reason));
            }
        }
        state
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(step.step_id, name.clone());
        tracing::debug!(pod = %name, "pod created");
        Ok(self.drive(state, step, pod, subscription, Cursor::default(), false))
    }

    async fn stop_step(
        &self,
        run: &WorkflowRun,
        step_id: Uuid,
        grace: Duration,
    ) -> Result<(), BackendError> {
        let state = self.state(run.workflow_id)?;
        let Some(name) = state
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&step_id)
            .cloned()
        else {
            return Ok(());
        };
        let params = DeleteParams {
            grace_period_seconds: Some(u32::try_from(grace.as_secs()).unwrap_or(u32::MAX)),
            ..DeleteParams::default()
        };
        let pods = self.pods(&state.rendered.namespace);
        self.delete_one(&pods, &name, &params).await
    }

    async fn teardown_workflow(&self, run: &WorkflowRun) -> Result<(), BackendError> {
        let Some(state) = self
            .workflows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&run.workflow_id)
        else {
            return Ok(());
        };
        for name in state
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            self.watch.forget(&state.rendered.namespace, name);
        }
        if self.config.keep_failed_pods && state.failed.load(Ordering::SeqCst) {
            tracing::info!(
                namespace = %state.rendered.namespace,
                workspace = state.rendered.workspace.metadata.name.as_deref().unwrap_or_default(),
                "a step failed: the workflow's objects are kept for debugging \
                 (PICULET_K8S_KEEP_FAILED_PODS); delete the workspace claim to remove them"
            );
            return Ok(());
        }
        self.delete_rendered(&state.rendered, run.workflow_id).await
    }

    async fn running_steps(&self, run: &WorkflowRun) -> Result<Vec<Uuid>, BackendError> {
        // Called only for a workflow set up on this replica.
        let ns = self.state(run.workflow_id)?.rendered.namespace.clone();
        let pods = self
            .metadata(&self.pods(&ns), &workflow_objects(run.workflow_id))
            .await?;
        // A pod that ended while no replica followed it still holds its log and exit code:
        // it is re-attached too, and reports how it ended.
        Ok(pods
            .iter()
            .filter(|p| p.deletion_timestamp.is_none())
            .filter_map(|p| p.labels.as_ref()?.get(STEP_ID)?.parse().ok())
            .collect())
    }

    async fn attach_step(
        &self,
        run: &WorkflowRun,
        step: &StepRun,
        after: Option<DateTime<Utc>>,
    ) -> Result<StepHandle, BackendError> {
        let state = self.state(run.workflow_id)?;
        let pod = self.step_pod(&state, step, true).await?;
        let ns = state.rendered.namespace.clone();
        let name = pod.metadata.name.clone().unwrap_or_default();
        state
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(step.step_id, name.clone());
        let subscription = self.watch.subscribe(&ns, &name);
        Ok(self.drive(state, step, pod, subscription, Cursor::after(after), true))
    }

    async fn readiness(&self) -> Result<(), String> {
        self.access.check(&self.kube, &self.config.namespace).await
    }

    async fn managed_workflows(&self) -> Result<Vec<Uuid>, BackendError> {
        let client = self.kube.client.clone();
        let ns = &self.config.namespace;
        let list = ListParams::default().labels(&managed_selector());
        let mut objects = self.metadata(&self.pods(ns), &list).await?;
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
        objects.extend(self.metadata(&claims, &list).await?);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        objects.extend(self.metadata(&secrets, &list).await?);
        let services: Api<Service> = Api::namespaced(client, ns);
        objects.extend(self.metadata(&services, &list).await?);
        let ids: std::collections::BTreeSet<Uuid> = objects
            .iter()
            .filter_map(|m| m.labels.as_ref()?.get(WORKFLOW_ID)?.parse().ok())
            .collect();
        Ok(ids.into_iter().collect())
    }

    async fn remove_workflow(&self, workflow_id: Uuid) -> Result<(), BackendError> {
        self.delete_workflow_objects(&self.config.namespace, workflow_id)
            .await
    }
}

/// The task that follows one step's pod.
struct Driver {
    kube: Kube,
    /// The pod as created: created again with the next pull policy when a pull fails.
    pod: Pod,
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
        let listed = self
            .pod
            .metadata
            .annotations
            .as_ref()?
            .get(PULL_POLICIES_ANNOTATION)?;
        let policies: Vec<&str> = listed.split(',').collect();
        let current = self
            .pod
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
        if let Some(c) = self
            .pod
            .spec
            .as_mut()
            .and_then(|s| s.containers.first_mut())
        {
            c.image_pull_policy = Some(policy.to_string());
        }
        let post = PostParams::default();
        let pod = self.pod.clone();
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

    async fn follow(&mut self, mut cursor: Cursor, out: mpsc::Sender<OutputLine>) -> StepExit {
        // 1. Until the container starts, or cannot.
        let running_at_open = match self.wait_for_start().await {
            Ok(running) => running,
            Err(reason) => {
                self.discard().await;
                return StepExit::Error { reason };
            }
        };

        // 2. The log, followed and resumed while the container runs. A stream that ends looks
        // the same whether the container ended, the connection broke or the kubelet died
        // (recording 80): only the pod's status tells them apart. While it says the container
        // runs, an end is a break and the stream is resumed from the last timestamp; answers
        // that may succeed later (a 500 while the kubelet is away, a refused connection) are
        // retried with back-off for PICULET_K8S_LOG_RETRY_TIMEOUT. The log is complete only
        // once the container has terminated and a read past the last line finds nothing new.
        let mut live = running_at_open;
        let mut outage: Option<Outage> = None;
        let mut pause = Duration::from_millis(50);
        let mut final_reads = 0usize;
        let mut given_up: Option<String> = None;
        loop {
            // A followed stream the kubelet fails to close after the container ended must not
            // hold the step: once nothing has come for a while after the end, the rest is read
            // plainly.
            let progress = AtomicUsize::new(0);
            let stalled = {
                let mut seen = self.seen.clone();
                let progress = &progress;
                async move {
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
            };
            let before = cursor.count();
            let end = tokio::select! {
                end = read_log(&self.kube, &self.pods, &self.name, live, &mut cursor, &out, &progress) => end,
                () = stalled => {
                    tracing::warn!(pod = %self.name, "the log stream stayed open and quiet after the container ended; reading the rest");
                    StreamEnd::Closed
                }
            };
            match &end {
                StreamEnd::ReceiverGone => break,
                // The pod is gone: nothing more can be read; its status says how it ended.
                StreamEnd::Failed(e) if is_not_found(e) => break,
                StreamEnd::Failed(e) if client::retriable(e) => {
                    let outage = outage.get_or_insert_with(|| Outage::new(self.log_retry_timeout));
                    let Some(wait) = outage.next_wait() else {
                        given_up = Some(describe(e));
                        break;
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
                        given_up = Some(describe(e));
                        break;
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
                    break;
                }
                if final_reads >= FINAL_READS {
                    tracing::warn!(pod = %self.name, "reads of an ended container's log kept finding new lines; keeping what was read");
                    break;
                }
                continue;
            }
            // The watch may trail the stream's end by a moment, more so on a busy cluster.
            let ended = tokio::time::timeout(Duration::from_secs(1), async {
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
            .is_ok();
            if ended {
                live = false;
                continue;
            }
            tracing::info!(pod = %self.name, "the log stream ended while the container runs; resuming from the last line");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
        if let Some(error) = given_up {
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
