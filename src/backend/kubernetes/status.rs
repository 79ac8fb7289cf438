//! What a pod's status says about its step, in the cluster's own words. Pure: the step driver
//! feeds it every pod the shared watch delivers and acts on the answer.
//!
//! The order of the checks matters. A pod that was evicted or preempted is lost even when its
//! container shows an exit code (the kubelet kills it with 137, or reports 0 for a container
//! it never saw end). A container's `terminated` state is trusted over the pod's phase, which
//! lags behind it (recording 20: terminated while the phase still says Running).

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use crate::k8s::names::CONTAINER;

/// A step's state as its pod shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodState {
    /// Not running yet. `reason` is what to tell the user if it never starts: the scheduler's
    /// message, the waiting container's reason.
    Waiting {
        reason: Option<String>,
    },
    /// It cannot start, and waiting will not help (a missing image, a missing Secret).
    StartFailed(String),
    Running,
    /// The container ended; `reason` only when it says more than the exit code (`OOMKilled`).
    Terminated {
        code: i32,
        reason: Option<String>,
    },
    /// The pod ended without its container ending on its own (evicted, preempted, failed
    /// before it started).
    Lost(String),
}

impl PodState {
    /// Whether nothing more will change for this step.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            PodState::StartFailed(_) | PodState::Terminated { .. } | PodState::Lost(_)
        )
    }
}

/// Waiting reasons after which the container will not start without someone changing the
/// image or the cluster. `ErrImagePull` is among them: the kubelet only retries it with
/// back-off, and the image rarely appears in the meantime.
const HOPELESS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Pod-level reasons for a pod that was ended from outside.
const LOST_REASONS: &[&str] = &[
    "Evicted",
    "Preempting",
    "Preempted",
    "NodeLost",
    "NodeShutdown",
    "Terminated",
    "UnexpectedAdmissionError",
    "OutOfcpu",
    "OutOfmemory",
    "OutOfpods",
];

/// Reads the state of the step container of `pod`.
pub fn pod_state(pod: &Pod) -> PodState {
    let Some(status) = &pod.status else {
        return PodState::Waiting { reason: None };
    };
    let phase = status.phase.as_deref().unwrap_or("Pending");
    let pod_reason = status.reason.as_deref().unwrap_or_default();
    let pod_message = status.message.as_deref().unwrap_or_default().trim();

    if LOST_REASONS.contains(&pod_reason) {
        return PodState::Lost(join(
            &format!("the pod was {}", pod_reason_words(pod_reason)),
            pod_message,
        ));
    }

    for init in status.init_container_statuses.iter().flatten() {
        if let Some(t) = init.state.as_ref().and_then(|s| s.terminated.as_ref())
            && t.exit_code != 0
        {
            let mut reason = format!(
                "init container {} failed with exit code {}",
                init.name, t.exit_code
            );
            if let Some(r) = t.reason.as_deref().filter(|r| *r != "Error") {
                reason.push_str(&format!(" ({r})"));
            }
            return PodState::StartFailed(join(&reason, t.message.as_deref().unwrap_or("")));
        }
        if let Some(failed) = hopeless(init, pod) {
            return PodState::StartFailed(format!("init container {}: {failed}", init.name));
        }
    }

    let step = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == CONTAINER)
        .or_else(|| status.container_statuses.iter().flatten().next());
    if let Some(c) = step {
        let state = c.state.as_ref();
        if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
            let reason = t
                .reason
                .as_deref()
                .filter(|r| !matches!(*r, "Error" | "Completed"))
                .map(str::to_string);
            return PodState::Terminated {
                code: t.exit_code,
                reason,
            };
        }
        if state.and_then(|s| s.running.as_ref()).is_some() {
            return PodState::Running;
        }
        if let Some(failed) = hopeless(c, pod) {
            return PodState::StartFailed(failed);
        }
    }

    if matches!(phase, "Failed" | "Succeeded") {
        // Ended without a terminated container: killed by its deadline before it started, or
        // failed in a way the kubelet did not attribute to the container.
        let what = if pod_reason.is_empty() {
            format!("the pod ended ({phase}) before its container ran")
        } else {
            format!("the pod ended ({pod_reason}) before its container ran")
        };
        return PodState::Lost(join(&what, pod_message));
    }

    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    });
    if let Some(c) = unschedulable {
        return PodState::Waiting {
            reason: Some(join("Unschedulable", c.message.as_deref().unwrap_or(""))),
        };
    }
    let waiting = step
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.as_deref())
        .map(|r| {
            let message = step
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.message.as_deref())
                .unwrap_or("");
            join(r, message)
        });
    PodState::Waiting { reason: waiting }
}

/// The start failure a waiting container shows, naming the image where the image is at fault.
fn hopeless(c: &ContainerStatus, pod: &Pod) -> Option<String> {
    let w = c.state.as_ref()?.waiting.as_ref()?;
    let reason = w.reason.as_deref()?;
    if !HOPELESS.contains(&reason) {
        return None;
    }
    let message = w.message.as_deref().unwrap_or("").trim();
    if reason.contains("Image") {
        // The image as the pod asks for it: what the user wrote, not containerd's expansion.
        let image = pod
            .spec
            .as_ref()
            .and_then(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
                    .find(|k| k.name == c.name)
            })
            .and_then(|k| k.image.clone())
            .unwrap_or_else(|| c.image.clone());
        return Some(join(
            &format!("{reason}: image \"{image}\" cannot be used"),
            message,
        ));
    }
    Some(join(reason, message))
}

fn pod_reason_words(reason: &str) -> String {
    match reason {
        "Evicted" => "evicted".into(),
        "Preempting" | "Preempted" => "preempted".into(),
        "NodeLost" => "lost with its node".into(),
        "NodeShutdown" | "Terminated" => "stopped by a node shutdown".into(),
        other => format!("ended by the kubelet ({other})"),
    }
}

fn join(head: &str, message: &str) -> String {
    let message = message.trim();
    if message.is_empty() {
        head.to_string()
    } else {
        format!("{head}: {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "build-1"},
            "spec": {"containers": [{"name": "step", "image": "busybox:1.36"}]},
            "status": status,
        }))
        .unwrap()
    }

    fn waiting(reason: &str, message: &str) -> serde_json::Value {
        json!({"phase": "Pending", "containerStatuses": [{
            "name": "step", "image": "docker.io/library/busybox:1.36", "imageID": "",
            "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": message}}}]})
    }

    #[test]
    fn a_new_pod_waits() {
        assert_eq!(
            pod_state(&pod(json!({"phase": "Pending"}))),
            PodState::Waiting { reason: None }
        );
        assert_eq!(
            pod_state(&pod(waiting("ContainerCreating", ""))),
            PodState::Waiting {
                reason: Some("ContainerCreating".into())
            }
        );
    }

    #[test]
    fn image_failures_name_the_image_at_once() {
        for reason in ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"] {
            assert_eq!(
                pod_state(&pod(waiting(
                    reason,
                    "Back-off pulling image \"busybox:1.36\""
                ))),
                PodState::StartFailed(format!(
                    "{reason}: image \"busybox:1.36\" cannot be used: Back-off pulling image \"busybox:1.36\""
                ))
            );
        }
    }

    #[test]
    fn a_missing_secret_is_named() {
        assert_eq!(
            pod_state(&pod(waiting(
                "CreateContainerConfigError",
                "secret \"piculet-abc-secrets\" not found"
            ))),
            PodState::StartFailed(
                "CreateContainerConfigError: secret \"piculet-abc-secrets\" not found".into()
            )
        );
    }

    #[test]
    fn unschedulable_waits_with_the_schedulers_message() {
        let p = pod(json!({"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."}]}));
        assert_eq!(
            pod_state(&p),
            PodState::Waiting {
                reason: Some("Unschedulable: 0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.".into())
            }
        );
    }

    #[test]
    fn a_terminated_container_wins_over_a_lagging_phase() {
        let p = pod(json!({"phase": "Running", "containerStatuses": [{
            "name": "step", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 3, "reason": "Error"}}}]}));
        assert_eq!(
            pod_state(&p),
            PodState::Terminated {
                code: 3,
                reason: None
            }
        );
    }

    #[test]
    fn oom_killed_is_kept_as_the_reason() {
        let p = pod(json!({"phase": "Failed", "containerStatuses": [{
            "name": "step", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}));
        assert_eq!(
            pod_state(&p),
            PodState::Terminated {
                code: 137,
                reason: Some("OOMKilled".into())
            }
        );
    }

    #[test]
    fn an_evicted_pod_is_lost_even_with_exit_code_zero() {
        let p = pod(json!({"phase": "Failed", "reason": "Evicted",
            "message": "The node was low on resource: memory. ",
            "containerStatuses": [{
            "name": "step", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}));
        assert_eq!(
            pod_state(&p),
            PodState::Lost("the pod was evicted: The node was low on resource: memory.".into())
        );
    }

    #[test]
    fn a_failed_init_container_fails_the_start() {
        let p = pod(json!({"phase": "Pending", "initContainerStatuses": [{
            "name": "setup", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 2, "reason": "Error"}}}]}));
        assert_eq!(
            pod_state(&p),
            PodState::StartFailed("init container setup failed with exit code 2".into())
        );
    }

    #[test]
    fn a_deadline_before_start_is_lost() {
        let p = pod(json!({"phase": "Failed", "reason": "DeadlineExceeded",
            "message": "Pod was active on the node longer than the specified deadline"}));
        assert_eq!(
            pod_state(&p),
            PodState::Lost("the pod ended (DeadlineExceeded) before its container ran: Pod was active on the node longer than the specified deadline".into())
        );
    }
}
