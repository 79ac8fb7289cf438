//! The knobs a test turns: API failures (500, 429, slow answers), kubelet
//! failures (image pull, scheduling, OOM kill, cut log streams), access rules
//! for SelfSubjectAccessReview and RBAC, authentication, and the cap on grace
//! periods that keeps tests fast.
//!
//! Every knob is set through `&self` (interior mutability) so a test can turn
//! one while the cluster is running, from any task. Faults that should hit a
//! bounded number of requests count down and then stop on their own.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

/// Which API requests a fault applies to. `None` matches anything.
#[derive(Clone, Debug, Default)]
pub struct RequestMatch {
    /// Kubernetes verb: `create`, `get`, `list`, `watch`, `update`, `patch`,
    /// `delete`, `deletecollection`.
    pub verb: Option<String>,
    /// Resource, with the subresource after a slash: `pods`, `pods/log`, `secrets`.
    pub resource: Option<String>,
}

impl RequestMatch {
    pub fn any() -> RequestMatch {
        RequestMatch::default()
    }

    pub fn new(verb: &str, resource: &str) -> RequestMatch {
        RequestMatch {
            verb: Some(verb.into()),
            resource: Some(resource.into()),
        }
    }

    pub fn verb(verb: &str) -> RequestMatch {
        RequestMatch {
            verb: Some(verb.into()),
            resource: None,
        }
    }

    pub fn resource(resource: &str) -> RequestMatch {
        RequestMatch {
            verb: None,
            resource: Some(resource.into()),
        }
    }

    fn matches(&self, verb: &str, resource: &str) -> bool {
        self.verb.as_deref().is_none_or(|v| v == verb)
            && self.resource.as_deref().is_none_or(|r| r == resource)
    }
}

/// How a failed API request answers.
#[derive(Clone, Debug, PartialEq)]
pub enum ApiFailure {
    /// 500 `InternalError`, as an apiserver answers when etcd fails.
    InternalError,
    /// 429 `TooManyRequests` with `Retry-After`, as API Priority and Fairness answers.
    TooManyRequests { retry_after_secs: u64 },
}

#[derive(Clone, Debug)]
struct Counted<T> {
    matcher: RequestMatch,
    what: T,
    remaining: usize,
}

/// One access rule: the answer SelfSubjectAccessReview gives, and (when RBAC
/// is enforced) whether the request itself is allowed.
#[derive(Clone, Debug)]
struct AccessRule {
    namespace: Option<String>,
    verb: String,
    resource: String,
    subresource: String,
    allowed: bool,
}

#[derive(Default)]
struct State {
    api_failures: Vec<Counted<ApiFailure>>,
    slow: Vec<Counted<Duration>>,
    image_pull_failures: HashSet<String>,
    unschedulable: HashSet<String>,
    oom_kill: HashMap<String, Duration>,
    log_cuts: HashMap<String, (usize, usize)>,
    access: Vec<AccessRule>,
    enforce_rbac: bool,
    user: Option<String>,
    bearer_token: Option<String>,
    grace_cap: Option<Duration>,
    node_labels: BTreeMap<String, String>,
    image_users: HashMap<String, String>,
}

/// The fault knobs of one fake cluster. Get it from `FakeCluster::faults()`.
#[derive(Default)]
pub struct Faults {
    state: Mutex<State>,
}

/// The node's labels before any test changes them.
fn default_node_labels() -> BTreeMap<String, String> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    [
        ("kubernetes.io/arch", arch),
        ("kubernetes.io/hostname", "vm"),
        ("kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", arch),
        ("beta.kubernetes.io/os", "linux"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

impl Faults {
    pub(super) fn new() -> Faults {
        let faults = Faults::default();
        faults.lock().node_labels = default_node_labels();
        faults
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A test that panicked while holding the lock must not hide its own
        // failure behind a poisoned-mutex panic here.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ----- API -----

    /// The next `times` requests matching `matcher` fail with `failure`.
    pub fn fail_requests(&self, matcher: RequestMatch, failure: ApiFailure, times: usize) {
        self.lock().api_failures.push(Counted {
            matcher,
            what: failure,
            remaining: times,
        });
    }

    /// The next `times` requests matching `matcher` wait `delay` before being served.
    pub fn slow_requests(&self, matcher: RequestMatch, delay: Duration, times: usize) {
        self.lock().slow.push(Counted {
            matcher,
            what: delay,
            remaining: times,
        });
    }

    /// Removes every API failure and slowdown still pending.
    pub fn clear_api_faults(&self) {
        let mut s = self.lock();
        s.api_failures.clear();
        s.slow.clear();
    }

    pub(super) fn take_api_failure(&self, verb: &str, resource: &str) -> Option<ApiFailure> {
        take(&mut self.lock().api_failures, verb, resource)
    }

    pub(super) fn take_delay(&self, verb: &str, resource: &str) -> Option<Duration> {
        take(&mut self.lock().slow, verb, resource)
    }

    // ----- authentication and authorization -----

    /// Requests must carry `Authorization: Bearer <token>`; others get 401.
    pub fn require_bearer_token(&self, token: &str) {
        self.lock().bearer_token = Some(token.to_string());
    }

    pub(super) fn bearer_token(&self) -> Option<String> {
        self.lock().bearer_token.clone()
    }

    /// Sets the answer to a SelfSubjectAccessReview for `verb` on `resource`
    /// (`subresource` empty for none), in every namespace. Without a rule the
    /// answer is "allowed".
    pub fn set_access(&self, verb: &str, resource: &str, subresource: &str, allowed: bool) {
        self.set_access_rule(None, verb, resource, subresource, allowed);
    }

    /// The same, for one namespace only (takes precedence over `set_access`).
    pub fn set_access_in(
        &self,
        namespace: &str,
        verb: &str,
        resource: &str,
        subresource: &str,
        allowed: bool,
    ) {
        self.set_access_rule(Some(namespace), verb, resource, subresource, allowed);
    }

    fn set_access_rule(
        &self,
        ns: Option<&str>,
        verb: &str,
        resource: &str,
        subresource: &str,
        allowed: bool,
    ) {
        let mut s = self.lock();
        let ns = ns.map(str::to_string);
        s.access.retain(|r| {
            !(r.namespace == ns
                && r.verb == verb
                && r.resource == resource
                && r.subresource == subresource)
        });
        s.access.push(AccessRule {
            namespace: ns,
            verb: verb.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            allowed,
        });
    }

    /// When on, requests the access rules deny answer 403 Forbidden.
    pub fn enforce_rbac(&self, on: bool) {
        self.lock().enforce_rbac = on;
    }

    /// The user named in 403 messages (default `system:serviceaccount:ci:piculet`).
    pub fn set_user(&self, user: &str) {
        self.lock().user = Some(user.to_string());
    }

    pub(super) fn user(&self) -> String {
        self.lock()
            .user
            .clone()
            .unwrap_or_else(|| "system:serviceaccount:ci:piculet".into())
    }

    pub(super) fn access_allowed(
        &self,
        ns: Option<&str>,
        verb: &str,
        resource: &str,
        subresource: &str,
    ) -> bool {
        let s = self.lock();
        let matching = |r: &&AccessRule| {
            r.verb == verb && r.resource == resource && r.subresource == subresource
        };
        let in_ns = s
            .access
            .iter()
            .rev()
            .filter(matching)
            .find(|r| r.namespace.is_some() && r.namespace.as_deref() == ns);
        let any = s
            .access
            .iter()
            .rev()
            .filter(matching)
            .find(|r| r.namespace.is_none());
        in_ns.or(any).is_none_or(|r| r.allowed)
    }

    pub(super) fn rbac_enforced(&self) -> bool {
        self.lock().enforce_rbac
    }

    // ----- kubelet and scheduler -----

    /// Pulls of `image` (as written in the pod spec) fail: the container shows
    /// `ErrImagePull`, then `ImagePullBackOff`, alternating, as in recording 22.
    pub fn fail_image_pull(&self, image: &str) {
        self.lock().image_pull_failures.insert(image.to_string());
    }

    pub(super) fn image_pull_fails(&self, image: &str) -> bool {
        self.lock().image_pull_failures.contains(image)
    }

    /// The scheduler finds no node for the pod named `pod` (or any pod named
    /// `pod-…`, as piculet names a step's pod `<step>-<hash>`) (recording 26's
    /// message). A `nodeSelector` that the node's labels do not satisfy has the
    /// same effect without a knob.
    pub fn unschedulable(&self, pod: &str) {
        self.lock().unschedulable.insert(pod.to_string());
    }

    pub(super) fn is_unschedulable(&self, pod: &str) -> bool {
        self.lock().unschedulable.iter().any(|k| names_pod(k, pod))
    }

    /// The image `image` (as written in the pod spec) declares `user` in its
    /// config (`""` or `"0"`: root; `"1000"`; `"nobody"`), overriding the
    /// kubelet's table of well-known images.
    pub fn set_image_user(&self, image: &str, user: &str) {
        self.lock()
            .image_users
            .insert(image.to_string(), user.to_string());
    }

    pub(super) fn image_user(&self, image: &str) -> Option<String> {
        self.lock().image_users.get(image).cloned()
    }

    /// Sets a label on the node `vm` (nodeSelector matching).
    pub fn set_node_label(&self, key: &str, value: &str) {
        self.lock().node_labels.insert(key.into(), value.into());
    }

    pub(super) fn node_labels(&self) -> BTreeMap<String, String> {
        self.lock().node_labels.clone()
    }

    /// The containers of the pod named `pod` are OOM-killed `after` they start:
    /// SIGKILL, exit code 137, reason `OOMKilled`.
    pub fn oom_kill(&self, pod: &str, after: Duration) {
        self.lock().oom_kill.insert(pod.to_string(), after);
    }

    pub(super) fn oom_kill_after(&self, pod: &str) -> Option<Duration> {
        let s = self.lock();
        s.oom_kill
            .iter()
            .find(|(k, _)| names_pod(k, pod))
            .map(|(_, d)| *d)
    }

    /// The next `times` log streams of the pod named `pod` end after
    /// `after_lines` lines although the container still runs, as a broken
    /// connection to the kubelet looks to a client.
    pub fn cut_log_stream(&self, pod: &str, after_lines: usize, times: usize) {
        self.lock()
            .log_cuts
            .insert(pod.to_string(), (after_lines, times));
    }

    pub(super) fn take_log_cut(&self, pod: &str) -> Option<usize> {
        let mut s = self.lock();
        let entry = s
            .log_cuts
            .iter_mut()
            .find(|(k, _)| names_pod(k, pod))
            .map(|(_, e)| e)?;
        if entry.1 == 0 {
            return None;
        }
        entry.1 -= 1;
        Some(entry.0)
    }

    /// Grace periods (deletes, deadlines) last at most `cap`, so a test of a
    /// pod that ignores SIGTERM need not wait 30 s. The objects still show the
    /// grace period that was asked for.
    pub fn cap_grace_period(&self, cap: Duration) {
        self.lock().grace_cap = Some(cap);
    }

    pub(super) fn grace(&self, asked: Duration) -> Duration {
        match self.lock().grace_cap {
            Some(cap) => asked.min(cap),
            None => asked,
        }
    }
}

fn take<T: Clone>(rules: &mut Vec<Counted<T>>, verb: &str, resource: &str) -> Option<T> {
    let idx = rules
        .iter()
        .position(|r| r.remaining > 0 && r.matcher.matches(verb, resource))?;
    let rule = &mut rules[idx];
    rule.remaining -= 1;
    let what = rule.what.clone();
    if rule.remaining == 0 {
        rules.remove(idx);
    }
    Some(what)
}

/// Whether a knob set for `key` applies to the pod `pod`: its exact name, or
/// a pod named `key-…` (piculet's pods are `<step>-<hash>`).
fn names_pod(key: &str, pod: &str) -> bool {
    pod == key
        || pod
            .strip_prefix(key)
            .is_some_and(|rest| rest.starts_with('-') && !rest[1..].contains('-'))
}
