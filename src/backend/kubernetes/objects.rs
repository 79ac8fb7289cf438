//! A workflow's objects: rendered once when it is set up, created (the workspace, the
//! Secrets, the Service; each step's pod when it starts), and deleted together at its end, or
//! found by their labels for a workflow this replica did not set up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams, PropagationPolicy};
use uuid::Uuid;

use super::client::Kube;
use super::{KubernetesBackend, failed, is_conflict, is_not_found};
use crate::backend::{BackendError, StepRun, WorkflowRun};
use crate::k8s::labels::{WORKFLOW_ID, managed_selector};
use crate::k8s::pod::{mounts_workspace, pin_to_node, set_environment};
use crate::k8s::{RenderInput, RenderedWorkflow, render_workflow};
use crate::pipeline::StepKind;

/// A workflow's objects as created, and what its steps learned.
pub(super) struct WorkflowState {
    pub(super) rendered: RenderedWorkflow,
    /// The pod of each started step.
    pub(super) pods: Mutex<HashMap<Uuid, String>>,
    /// With a ReadWriteOnce workspace: the node the first pod landed on.
    pub(super) node: tokio::sync::watch::Sender<Option<String>>,
    /// Whether a pod was created already (the next ones wait for its node when RWO).
    pub(super) created_one: AtomicBool,
    /// Whether a step failed: failed workflows keep their objects when the administrator
    /// asks for it.
    pub(super) failed: AtomicBool,
}

/// The objects of one workflow: what it was labelled with when it was rendered.
pub(super) fn workflow_objects(workflow_id: Uuid) -> ListParams {
    ListParams::default().labels(&format!(
        "{},{WORKFLOW_ID}={workflow_id}",
        managed_selector()
    ))
}

/// Delete at once, for what no one reads any more (an ended workflow, a pod that failed to
/// start, an orphan).
pub(super) fn now() -> DeleteParams {
    DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    }
}

/// Deletes an object; one already gone is fine.
pub(super) async fn delete_if_present<K>(
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
    /// Creates an object, or finds the one an earlier attempt created.
    pub(super) async fn create_or_get<K>(&self, api: &Api<K>, object: &K) -> Result<K, kube::Error>
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
    pub(super) async fn step_pod(
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

    /// Deletes every object of a workflow, found by its label: pods, Service, Secrets, then
    /// the workspace. For a workflow this replica did not set up (a failed setup, an orphan).
    pub(super) async fn delete_workflow_objects(
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
    pub(super) async fn delete_rendered(
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
    pub(super) async fn delete_objects(
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
    pub(super) async fn metadata<K>(
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

    pub(super) async fn delete_one<K>(
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
    pub(super) async fn create_workflow_objects(
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
    pub(super) async fn workspace_node(
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

    pub(super) fn render(&self, run: &WorkflowRun) -> Result<RenderedWorkflow, BackendError> {
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
