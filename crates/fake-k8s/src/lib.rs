//! A stateful fake Kubernetes API server (v1.28 wire behaviour) with a
//! simulated scheduler and kubelet, for testing piculet's Kubernetes backend
//! without a cluster.
//!
//! This crate owns the `FakeCluster` handle: start it, get a `kube::Client`
//! (in-process, no socket) or a base URL (real TCP), inspect objects, turn
//! fault knobs, act from outside (delete, evict, expire watches), and read the
//! request log. The other modules hold the parts: `store` (objects,
//! resourceVersions, history), `api` (routes, verbs, Status errors),
//! `objects` (validation, defaulting, admission, controllers), `validate`
//! (the API server's field rules, written apart from piculet's), `watch`,
//! `logs`, `kubelet` and `faults`.
//!
//! Every container runs as a real local process (`/bin/sh -c …` on this
//! machine, not in a container): logs and exit codes are real.

pub mod api;
pub mod faults;
pub mod kubelet;
pub mod logs;
pub mod objects;
pub mod store;
pub mod validate;
pub mod watch;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use tokio::sync::broadcast;

pub use faults::{ApiFailure, Faults, RequestMatch};
pub use kubelet::KubeletTiming;
pub use store::Resource;

/// Writes a kubeconfig that points at a fake served over TCP (`server`, from
/// [`FakeCluster::serve_tcp`]), for a client that connects as a real one would.
pub fn write_kubeconfig(path: &std::path::Path, server: &str) -> std::io::Result<()> {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters:\n- name: fake\n  cluster:\n    server: {server}\n\
             users:\n- name: fake\n  user:\n    token: fake-token\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n"
        ),
    )
}

/// How a fake cluster is set up.
#[derive(Clone, Debug, Default)]
pub struct FakeConfig {
    /// Pace of the simulated control plane.
    pub timing: KubeletTiming,
    /// When set, a container's absolute `workingDir` is taken relative to this
    /// directory (so `/workspace/src` need not exist on the machine).
    pub fs_root: Option<PathBuf>,
}

/// One request as the fake received it.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: String,
    /// The Kubernetes verb: `create`, `get`, `list`, `watch`, `update`,
    /// `patch`, `delete`, `deletecollection`.
    pub verb: String,
    /// `pods`, `secrets`, …; a subresource after a slash (`pods/log`).
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// For a create: the name of the object in the body.
    pub created: Option<String>,
    /// When the request arrived.
    pub at: chrono::DateTime<chrono::Utc>,
    /// The answer's status code (0 while it is being served).
    pub status: u16,
}

/// State shared by the HTTP side, the kubelet and the test handle.
struct Shared {
    config: FakeConfig,
    store: Mutex<store::Store>,
    logs: logs::LogStore,
    faults: Faults,
    kubelet: kubelet::Kubelet,
    requests: Mutex<Vec<RequestRecord>>,
    namespace_labels: Mutex<HashMap<String, BTreeMap<String, String>>>,
    watch_signals: broadcast::Sender<watch::WatchSignal>,
    counter: AtomicU64,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, store::Store> {
        // A panicking test must not poison the cluster for its other tasks.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record_request(&self, r: RequestRecord) -> usize {
        let mut reqs = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        reqs.push(r);
        reqs.len() - 1
    }

    fn set_request_status(&self, index: usize, status: u16) {
        if let Some(r) = self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(index)
        {
            r.status = status;
        }
    }

    fn next_counter(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    fn next_service_ip(&self) -> String {
        let n = self.next_counter();
        format!("10.96.{}.{}", (n / 250) % 250, n % 250 + 2)
    }

    fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        self.namespace_labels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(ns)
            .cloned()
            .unwrap_or_default()
    }
}

/// A running fake cluster. Dropping it kills every process its pods started.
pub struct FakeCluster {
    shared: Arc<Shared>,
    tcp: Mutex<Option<SocketAddr>>,
}

impl FakeCluster {
    /// Starts a cluster with the default (fast) timing. Needs a tokio runtime.
    pub fn start() -> FakeCluster {
        FakeCluster::start_with(FakeConfig::default())
    }

    pub fn start_with(config: FakeConfig) -> FakeCluster {
        let (watch_signals, _) = broadcast::channel(16);
        let shared = Arc::new(Shared {
            config,
            store: Mutex::new(store::Store::new()),
            logs: logs::LogStore::default(),
            faults: Faults::new(),
            kubelet: kubelet::Kubelet::default(),
            requests: Mutex::new(Vec::new()),
            namespace_labels: Mutex::new(HashMap::new()),
            watch_signals,
            counter: AtomicU64::new(0),
        });
        FakeCluster {
            shared,
            tcp: Mutex::new(None),
        }
    }

    /// The API server as an axum `Router`.
    pub fn router(&self) -> axum::Router {
        api::router(self.shared.clone())
    }

    /// A `kube::Client` talking to the router in process (no socket), with
    /// `default` as its default namespace.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.router(), "default")
    }

    /// Serves the API on `127.0.0.1:<free port>` too and returns its base URL
    /// (`http://127.0.0.1:PORT`). Calling it again returns the same URL.
    pub async fn serve_tcp(&self) -> std::io::Result<String> {
        if let Some(addr) = *self.tcp.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(format!("http://{addr}"));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let router = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(no_delay(listener), router).await;
        });
        *self.tcp.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
        Ok(format!("http://{addr}"))
    }

    /// The base URL if `serve_tcp` was called.
    pub fn base_url(&self) -> Option<String> {
        self.tcp
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|a| format!("http://{a}"))
    }

    /// The fault knobs.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    // ----- inspecting objects -----

    /// An object as stored (JSON, as the API would answer it).
    pub fn object(&self, resource: Resource, ns: &str, name: &str) -> Option<Value> {
        self.shared.store().get(resource, ns, name).cloned()
    }

    /// All objects of a resource in a namespace (`None`: all namespaces).
    pub fn objects(&self, resource: Resource, ns: Option<&str>) -> Vec<Value> {
        self.shared.store().list(resource, ns)
    }

    /// A pod, typed.
    pub fn pod(&self, ns: &str, name: &str) -> Option<Pod> {
        self.object(Resource::Pods, ns, name)
            .and_then(|v| serde_json::from_value(v).ok())
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().current_rv()
    }

    /// A container's log so far, as the plain log endpoint returns it.
    pub fn log(&self, ns: &str, pod: &str, container: &str) -> Option<String> {
        let uid = self.object(Resource::Pods, ns, pod)?["metadata"]["uid"]
            .as_str()?
            .to_string();
        Some(self.shared.logs.buffer(&uid, container).text())
    }

    /// Waits until the pod satisfies `cond` (polling the store); None on timeout
    /// or if it vanished for good.
    pub async fn wait_for_pod(
        &self,
        ns: &str,
        name: &str,
        timeout: Duration,
        cond: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(p) = self.object(Resource::Pods, ns, name)
                && cond(&p)
            {
                return Some(p);
            }
            if tokio::time::Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // ----- acting from outside -----

    /// Creates an object as a client would (defaults, validation and
    /// controllers apply), e.g. a Secret that a test pod reads.
    pub fn create(&self, resource: Resource, ns: &str, obj: Value) -> Result<Value, api::ApiError> {
        objects::create(&self.shared, resource, ns, obj, "fake-cluster").map(|(o, _)| o)
    }

    /// Deletes a pod from outside (another client, `kubectl delete`); `grace`
    /// None uses the pod's terminationGracePeriodSeconds.
    pub fn delete_pod(
        &self,
        ns: &str,
        name: &str,
        grace: Option<i64>,
    ) -> Result<Value, api::ApiError> {
        api::delete_pod(&self.shared, ns, name, grace)
    }

    /// Deletes any object from outside.
    pub fn delete(&self, resource: Resource, ns: &str, name: &str) -> Result<(), api::ApiError> {
        api::delete(&self.shared, resource, ns, name, None).map(|_| ())
    }

    /// Evicts a pod for node pressure: its processes are killed, it ends
    /// `Failed` with reason `Evicted` and stays in the store.
    pub fn evict_pod(&self, ns: &str, name: &str) -> bool {
        let Some(pod) = self.object(Resource::Pods, ns, name) else {
            return false;
        };
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
        kubelet::evict(
            &self.shared,
            uid,
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 51200Ki. ",
        );
        true
    }

    /// Forgets the change history (an etcd compaction plus watch-cache
    /// turnover): watches from an older resourceVersion get 410 Expired.
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    /// Compacts and ends every open watch with an ERROR 410 Expired event, so
    /// watchers must relist.
    pub fn expire_watches(&self) {
        self.compact();
        let _ = self.shared.watch_signals.send(watch::WatchSignal::Expire);
    }

    /// Ends every open watch normally (as a server-side timeout does).
    pub fn close_watches(&self) {
        let _ = self.shared.watch_signals.send(watch::WatchSignal::Close);
    }

    /// Kills the node's kubelet, as recording 80 does: every open log stream
    /// ends cleanly (200, a normal end, exactly like a finished log) although
    /// its container runs on; new log requests answer 500 (the API server's
    /// failed dial); no pod status changes are reported, so a container that
    /// ends meanwhile still shows as running. Containers keep running and
    /// their output is kept, so `sinceTime` finds it once the kubelet is back.
    pub fn stop_kubelet(&self) {
        self.shared.kubelet.set_down(true);
    }

    /// Starts the kubelet again: logs are served, held status changes are
    /// reported.
    pub fn start_kubelet(&self) {
        self.shared.kubelet.set_down(false);
    }

    /// [`FakeCluster::stop_kubelet`], then [`FakeCluster::start_kubelet`]
    /// after `outage`, in the background.
    pub fn restart_kubelet(&self, outage: Duration) {
        self.stop_kubelet();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(outage).await;
            shared.kubelet.set_down(false);
        });
    }

    /// Sets a label on a namespace, e.g. `pod-security.kubernetes.io/enforce`.
    pub fn set_namespace_label(&self, ns: &str, key: &str, value: &str) {
        self.shared
            .namespace_labels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(ns.to_string())
            .or_default()
            .insert(key.to_string(), value.to_string());
    }

    // ----- the request log -----

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Requests per verb (`"list"`, `"watch"`, …).
    pub fn verb_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for r in self.requests() {
            *counts.entry(r.verb).or_default() += 1;
        }
        counts
    }

    /// Requests with this verb on this resource (`"get"`, `"pods/log"`).
    pub fn count(&self, verb: &str, resource: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.verb == verb && r.resource == resource)
            .count()
    }

    pub fn clear_requests(&self) {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        self.shared.kubelet.kill_all();
        let _ = self.shared.watch_signals.send(watch::WatchSignal::Close);
    }
}

/// A listener whose connections send each write at once, as the real API server's do (Go sets
/// `TCP_NODELAY` on every connection). Without it, Nagle's algorithm holds a response's second
/// small write (a log's or a watch event's next chunk, a body's end) until the client's delayed
/// ACK, some 40 ms later.
pub fn no_delay(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt as _;
    listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    })
}
