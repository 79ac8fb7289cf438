//! The object store: every object the fake API server holds, the cluster-wide
//! resourceVersion counter, and the change history that watches replay from.
//!
//! Objects are kept as `serde_json::Value` (not typed structs) so that what a
//! client sent and what the server adds survive byte for byte, in the field
//! order the real API server uses, without k8s-openapi dropping or reordering
//! anything. One mutex guards everything: a change and its history entry are
//! written together, which is what makes "watch from resourceVersion R" exact.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::api::ApiError;

/// The resources the fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Pods,
    Secrets,
    Services,
    PersistentVolumeClaims,
    Events,
}

impl Resource {
    pub fn from_plural(plural: &str) -> Option<Resource> {
        Some(match plural {
            "pods" => Resource::Pods,
            "secrets" => Resource::Secrets,
            "services" => Resource::Services,
            "persistentvolumeclaims" => Resource::PersistentVolumeClaims,
            "events" => Resource::Events,
            _ => return None,
        })
    }

    /// The lowercase plural used in URLs and in `Status.details.kind` of 404/409/403.
    pub fn plural(self) -> &'static str {
        match self {
            Resource::Pods => "pods",
            Resource::Secrets => "secrets",
            Resource::Services => "services",
            Resource::PersistentVolumeClaims => "persistentvolumeclaims",
            Resource::Events => "events",
        }
    }

    /// The Kind used in objects and in `Status.details.kind` of 422.
    pub fn kind(self) -> &'static str {
        match self {
            Resource::Pods => "Pod",
            Resource::Secrets => "Secret",
            Resource::Services => "Service",
            Resource::PersistentVolumeClaims => "PersistentVolumeClaim",
            Resource::Events => "Event",
        }
    }
}

/// Watch event types as they appear on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change; what watches replay and receive live.
#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub resource: Resource,
    pub namespace: String,
    pub event: EventType,
    /// The object after the change (for DELETED: the last state, with the new RV).
    pub object: Value,
    /// The object before the change; a watch with a selector needs it to turn a
    /// MODIFIED that leaves (or enters) the selection into DELETED (or ADDED).
    pub prev: Option<Value>,
}

/// How many changes the history (the "watch cache") keeps before the oldest are
/// dropped; a watch from an RV older than what is kept gets 410 Expired.
const HISTORY_CAPACITY: usize = 10_000;

/// The first resourceVersion handed out. A real cluster is never at RV 1, and
/// starting higher lets a test ask for a too-old RV (the recordings use 10).
const FIRST_RV: u64 = 1000;

type Key = (Resource, String, String);

pub struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Change>>,
    /// Watches from an RV below this answer 410 Expired ("compaction" point).
    history_start: u64,
    tx: broadcast::Sender<Arc<Change>>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Store {
        let (tx, _) = broadcast::channel(8192);
        Store {
            rv: FIRST_RV,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_start: FIRST_RV,
            tx,
        }
    }

    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    pub fn history_start(&self) -> u64 {
        self.history_start
    }

    /// Forget the history up to now, as an etcd compaction plus a watch-cache
    /// eviction would: later watches from an older RV get 410 Expired.
    pub fn compact(&mut self) {
        self.history.clear();
        self.history_start = self.rv;
    }

    pub fn get(&self, resource: Resource, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&(resource, ns.to_string(), name.to_string()))
    }

    /// Objects of one resource, in one namespace (or all when `ns` is None),
    /// sorted by namespace then name as etcd's key order sorts them.
    pub fn list(&self, resource: Resource, ns: Option<&str>) -> Vec<Value> {
        self.iter(resource, ns).cloned().collect()
    }

    /// [`Store::list`] without copies, for controllers that only look.
    pub fn iter<'a>(
        &'a self,
        resource: Resource,
        ns: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .iter()
            .filter(move |((r, n, _), _)| *r == resource && ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v)
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn commit(&mut self, change: Change) {
        let change = Arc::new(change);
        self.history.push_back(change.clone());
        while self.history.len() > HISTORY_CAPACITY {
            if let Some(old) = self.history.pop_front() {
                self.history_start = old.rv;
            }
        }
        // Nobody listening is fine: the history still has it.
        let _ = self.tx.send(change);
    }

    /// Stores a new object (already defaulted and validated), filling in the
    /// metadata the server owns. 409 when the name is taken.
    pub fn create(
        &mut self,
        resource: Resource,
        ns: &str,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let key = (resource, ns.to_string(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(resource, &name));
        }
        let rv = self.next_rv();
        set_rv(&mut obj, rv);
        self.objects.insert(key, obj.clone());
        self.commit(Change {
            rv,
            resource,
            namespace: ns.to_string(),
            event: EventType::Added,
            object: obj.clone(),
            prev: None,
        });
        Ok(obj)
    }

    /// Changes an object in place; a new RV and a MODIFIED event when `f`
    /// changed anything. 404 when it does not exist. `f` may refuse with an error.
    pub fn update<F>(
        &mut self,
        resource: Resource,
        ns: &str,
        name: &str,
        f: F,
    ) -> Result<Value, ApiError>
    where
        F: FnOnce(&mut Value) -> Result<(), ApiError>,
    {
        let key = (resource, ns.to_string(), name.to_string());
        let Some(current) = self.objects.get(&key) else {
            return Err(ApiError::not_found(resource, name));
        };
        let prev = current.clone();
        let mut next = prev.clone();
        f(&mut next)?;
        if next == prev {
            return Ok(prev);
        }
        let rv = self.next_rv();
        set_rv(&mut next, rv);
        self.objects.insert(key, next.clone());
        self.commit(Change {
            rv,
            resource,
            namespace: ns.to_string(),
            event: EventType::Modified,
            object: next.clone(),
            prev: Some(prev),
        });
        Ok(next)
    }

    /// Removes an object for good; the DELETED event carries its last state.
    pub fn remove(&mut self, resource: Resource, ns: &str, name: &str) -> Result<Value, ApiError> {
        let key = (resource, ns.to_string(), name.to_string());
        let Some(mut obj) = self.objects.remove(&key) else {
            return Err(ApiError::not_found(resource, name));
        };
        let prev = obj.clone();
        let rv = self.next_rv();
        set_rv(&mut obj, rv);
        self.commit(Change {
            rv,
            resource,
            namespace: ns.to_string(),
            event: EventType::Deleted,
            object: obj.clone(),
            prev: Some(prev),
        });
        Ok(obj)
    }

    /// The changes after `rv` (exclusive) plus a receiver for everything later,
    /// taken under one lock so nothing falls between the two. `Err(start)` when
    /// `rv` is older than the history kept.
    #[allow(clippy::type_complexity)]
    pub fn subscribe_from(
        &self,
        rv: u64,
    ) -> Result<(Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>), u64> {
        if rv < self.history_start {
            return Err(self.history_start);
        }
        let replay = self.history.iter().filter(|c| c.rv > rv).cloned().collect();
        Ok((replay, self.tx.subscribe()))
    }

    /// A receiver for changes after now (for watches without an RV).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }
}

fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        reorder(meta, METADATA_ORDER);
    }
}

/// The order Go's ObjectMeta serialises its fields in.
pub const METADATA_ORDER: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// Puts the keys named in `order` first, in that order, the others after them
/// in their current order. The real server writes Go struct order; keeping it
/// makes the fake's answers diff cleanly against the recordings.
pub fn reorder(map: &mut Map<String, Value>, order: &[&str]) {
    let mut old = std::mem::take(map);
    for key in order {
        // shift_remove: plain remove swaps the last key in and scrambles the rest.
        if let Some(v) = old.shift_remove(*key) {
            map.insert((*key).to_string(), v);
        }
    }
    for (k, v) in old {
        map.insert(k, v);
    }
}

// ---------------------------------------------------------------------------
// Selectors

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed `labelSelector` (`a=b,c!=d,e in (x,y),f notin (z),g,!h`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector(Vec<LabelReq>);

impl LabelSelector {
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut reqs = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let req = if let Some(rest) = part.strip_prefix('!') {
                LabelReq::NotExists(rest.trim().to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                LabelReq::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                LabelReq::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                LabelReq::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, set)) = split_set(part, " notin ") {
                LabelReq::NotIn(k, set)
            } else if let Some((k, set)) = split_set(part, " in ") {
                LabelReq::In(k, set)
            } else if part.contains(' ') || part.contains('(') {
                return Err(format!("unable to parse requirement: {part:?}"));
            } else {
                LabelReq::Exists(part.to_string())
            };
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj["metadata"]["labels"].as_object();
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|req| match req {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, set) => get(k).is_some_and(|v| set.iter().any(|s| s == v)),
            LabelReq::NotIn(k, set) => get(k).is_none_or(|v| !set.iter().any(|s| s == v)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
        })
    }
}

/// Splits on commas that are not inside `( … )`.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn split_set(part: &str, op: &str) -> Option<(String, Vec<String>)> {
    let (k, rest) = part.split_once(op)?;
    let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
    let set = inner
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    Some((k.trim().to_string(), set))
}

/// A parsed `fieldSelector`: the fields the real server supports for the kinds
/// served here (`metadata.name`, `metadata.namespace`, `status.phase`,
/// `spec.nodeName`, `involvedObject.*`), with `=`, `==` and `!=`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<FieldSelector, String> {
        let mut reqs = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (field, eq, value) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                ));
            };
            reqs.push((field.trim().to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, eq, value)| {
            let mut cur = obj;
            for seg in field.split('.') {
                cur = &cur[seg];
            }
            let actual = match cur {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (actual == *value) == *eq
        })
    }
}
