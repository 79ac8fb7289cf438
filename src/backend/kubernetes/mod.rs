//! The Kubernetes backend: each step and service a pod, as [`crate::k8s::render_workflow`]
//! renders it (what `POST /render` shows), watched through one shared watch per namespace,
//! its log followed with timestamps, and every object of a workflow deleted at its end.
//!
//! - [`client`]: connection, rate limits, retries;
//! - [`objects`]: a workflow's objects: rendered, created, deleted;
//! - [`driver`]: the task that follows one step's pod, from its start to its exit;
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
mod driver;
pub mod logs;
mod objects;
pub mod status;
pub mod watch;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use uuid::Uuid;

use self::client::{Kube, describe, status_code};
use self::logs::Cursor;
use self::objects::{WorkflowState, workflow_objects};
use self::watch::PodWatch;
use super::{Backend, BackendError, StepHandle, StepRun, WorkflowRun};
use crate::k8s::KubernetesConfig;
use crate::k8s::labels::{STEP_ID, WORKFLOW_ID, managed_selector};

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
        let ids: BTreeSet<Uuid> = objects
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
