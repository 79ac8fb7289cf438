//! One shared watch over piculet's pods, per namespace in use, feeding every running step: no
//! step polls. kube's watcher lists, then watches from the list's resourceVersion, and relists
//! when the server answers 410 Expired; a pod missing from a relist was deleted while the watch
//! was down and is reported gone.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Volume};
use kube::Api;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;

use crate::k8s::labels::managed_selector;

/// What the watch knows of one pod.
#[derive(Clone, Debug)]
pub enum Seen {
    /// Not (yet) seen on the watch.
    NotYet,
    /// Its latest state.
    Present(Arc<Pod>),
    /// Deleted.
    Gone,
}

#[derive(Default)]
struct Pods {
    by_name: HashMap<String, watch::Sender<Seen>>,
}

/// The watch of one namespace.
struct NamespaceWatch {
    pods: Mutex<Pods>,
    /// Whether the first list has been read: before, a pod not seen may still exist.
    synced: watch::Sender<bool>,
    task: std::sync::OnceLock<tokio::task::AbortHandle>,
}

impl NamespaceWatch {
    fn pods(&self) -> MutexGuard<'_, Pods> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for NamespaceWatch {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

/// The shared pod watches.
pub struct PodWatch {
    client: kube::Client,
    namespaces: Mutex<HashMap<String, Arc<NamespaceWatch>>>,
}

impl PodWatch {
    pub fn new(client: kube::Client) -> PodWatch {
        PodWatch {
            client,
            namespaces: Mutex::new(HashMap::new()),
        }
    }

    /// Starts the watch of a namespace now rather than at its first subscriber.
    pub fn ensure(&self, namespace: &str) {
        self.namespace(namespace);
    }

    fn namespace(&self, namespace: &str) -> Arc<NamespaceWatch> {
        let mut all = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = all.get(namespace) {
            return w.clone();
        }
        let w = Arc::new(NamespaceWatch {
            pods: Mutex::new(Pods::default()),
            synced: watch::Sender::new(false),
            task: std::sync::OnceLock::new(),
        });
        // The task holds the watch weakly: dropping the PodWatch ends it.
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let task = tokio::spawn(run(api, Arc::downgrade(&w), namespace.to_string()));
        let _ = w.task.set(task.abort_handle());
        all.insert(namespace.to_string(), w.clone());
        w
    }

    /// Follows one pod's state. Subscribe before creating the pod so that no change is missed.
    pub fn subscribe(&self, namespace: &str, pod: &str) -> watch::Receiver<Seen> {
        let ns = self.namespace(namespace);
        let mut pods = ns.pods();
        pods.by_name
            .entry(pod.to_string())
            .or_insert_with(|| watch::Sender::new(Seen::NotYet))
            .subscribe()
    }

    /// Waits until the namespace's first list has been read.
    pub async fn synced(&self, namespace: &str) {
        let mut synced = self.namespace(namespace).synced.subscribe();
        let _ = synced.wait_for(|s| *s).await;
    }

    /// Drops what is known of a pod once no step follows it.
    pub fn forget(&self, namespace: &str, pod: &str) {
        let ns = self.namespace(namespace);
        let mut pods = ns.pods();
        if let Some(tx) = pods.by_name.get(pod)
            && tx.receiver_count() == 0
        {
            pods.by_name.remove(pod);
        }
    }
}

/// Keeps of a watched pod what the steps read: its status, its node, the names of its volumes
/// (whether it mounts the workspace), and its containers' names and images (to name an image
/// that cannot be pulled). The watch holds every piculet pod of the namespace, each replaced
/// at each change, so the rest (environment, commands, managed fields: most of a pod) is
/// dropped as it arrives.
fn trim(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    let Some(spec) = pod.spec.take() else {
        return;
    };
    let named = |c: Container| Container {
        name: c.name,
        image: c.image,
        ..Container::default()
    };
    pod.spec = Some(PodSpec {
        node_name: spec.node_name,
        volumes: spec.volumes.map(|volumes| {
            volumes
                .into_iter()
                .map(|v| Volume {
                    name: v.name,
                    ..Volume::default()
                })
                .collect()
        }),
        containers: spec.containers.into_iter().map(named).collect(),
        init_containers: spec
            .init_containers
            .map(|c| c.into_iter().map(named).collect()),
        ..PodSpec::default()
    });
}

fn pod_name(pod: &Pod) -> Option<String> {
    pod.metadata.name.clone()
}

async fn run(api: Api<Pod>, ns: std::sync::Weak<NamespaceWatch>, namespace: String) {
    let config = watcher::Config::default().labels(&managed_selector());
    let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff().modify(trim));
    // The names of a (re)list, while it lasts.
    let mut listed: HashSet<String> = HashSet::new();
    let mut initial = false;
    while let Some(event) = events.next().await {
        let Some(ns) = ns.upgrade() else {
            return;
        };
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(%namespace, error = %e, "watching pods failed; retrying");
                continue;
            }
        };
        let mut pods = ns.pods();
        match event {
            Event::Init => {
                listed.clear();
                initial = true;
            }
            Event::InitApply(pod) | Event::Apply(pod) => {
                let Some(name) = pod_name(&pod) else { continue };
                if initial {
                    listed.insert(name.clone());
                }
                let seen = Seen::Present(Arc::new(pod));
                match pods.by_name.get(&name) {
                    Some(tx) => {
                        tx.send_replace(seen);
                    }
                    None => {
                        pods.by_name.insert(name, watch::Sender::new(seen));
                    }
                }
            }
            Event::Delete(pod) => {
                let Some(name) = pod_name(&pod) else { continue };
                if let Some(tx) = pods.by_name.remove(&name) {
                    tx.send_replace(Seen::Gone);
                }
            }
            Event::InitDone => {
                let listed = std::mem::take(&mut listed);
                // Pods seen before that the new list lacks were deleted in the meantime.
                let gone: Vec<String> = pods
                    .by_name
                    .iter()
                    .filter(|(name, tx)| {
                        matches!(*tx.borrow(), Seen::Present(..)) && !listed.contains(*name)
                    })
                    .map(|(name, _)| name.clone())
                    .collect();
                for name in gone {
                    if let Some(tx) = pods.by_name.remove(&name) {
                        tx.send_replace(Seen::Gone);
                    }
                }
                initial = false;
                ns.synced.send_replace(true);
            }
        }
    }
}
